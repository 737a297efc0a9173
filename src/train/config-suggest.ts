// "Did you mean …?" for unknown config fields: the closest field name by edit
// distance, a field of the same name in another table, or the field that
// another trainer's name (kohya sd-scripts, diffusers, the Dreambooth
// extension) stands for.
import { configSchema, FOREIGN_NAMES, type Schema } from "./config-schema.js";

/** Optimal-string-alignment distance (a transposition costs 1). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

function allNames(schema: Schema = configSchema(), prefix = ""): string[] {
  const out: string[] = [];
  for (const [name, f] of Object.entries(schema)) {
    out.push(`${prefix}${name}`);
    if (f.kind.t === "group") out.push(...allNames(f.kind.fields, `${prefix}${name}.`));
    if (f.kind.t === "objects") out.push(...allNames(f.kind.fields, `${prefix}${name}[].`));
  }
  return out;
}

/** "; did you mean …?" for an unknown dotted name, or "". */
export function suggest(name: string): string {
  const generic = name.replace(/\[\d+\]/g, "[]");
  const leaf = generic.split(".").pop()!;
  const foreign = Object.hasOwn(FOREIGN_NAMES, leaf) ? FOREIGN_NAMES[leaf] : undefined;
  const other = `; did you mean "${foreign}"? (${leaf} is its name in other trainers)`;
  if (foreign && !generic.includes(".")) return other;
  let best = "";
  let bestScore = Number.POSITIVE_INFINITY;
  for (const cand of allNames()) {
    let score = Math.min(distance(generic, cand), distance(generic.replace(/_/g, "."), cand));
    if (cand.split(".").pop() === leaf) score = Math.min(score, 0.5);
    if (score < bestScore) [best, bestScore] = [cand, score];
  }
  const limit = Math.max(1, Math.min(3, Math.floor(leaf.length / 3)));
  if (bestScore <= limit) return `; did you mean "${best}"?`;
  return foreign ? other : "";
}
