// Counting fuzz results per target, merging counts from several processes,
// and printing them as one table (the CI test and bench/fuzz.ts share it).
import { BIG_ALLOCATION_BYTES, type CaseResult, caseRng, HANG_MS, runCase, type Target } from "./harness.js";

/** A case worth looking at: its index reruns it (with the run's seed and target). */
export interface Example {
  index: number;
  what: string;
}

export interface Tally {
  target: string;
  hasReference: boolean;
  cases: number;
  accepted: number;
  rejected: number;
  crashes: number;
  hangs: number;
  bigAllocations: number;
  leaks: number;
  /** Refusals whose message shows an internal value (undefined, NaN, [object …]). */
  unclear: number;
  acceptedInvalid: number;
  rejectedValid: number;
  /** Valid for the reference only through a form the reader refuses on purpose (see safetensors-oracle.ts). */
  deliberate: number;
  mismatches: number;
  slowestMs: number;
  slowestIndex: number;
  /** Counts by crash kind, by reference error code of accepted-invalid cases, … */
  byKind: Record<string, number>;
  /** The first few cases of each category. */
  examples: Record<string, Example[]>;
}

export function emptyTally(target: string, hasReference: boolean): Tally {
  return {
    target,
    hasReference,
    cases: 0,
    accepted: 0,
    rejected: 0,
    crashes: 0,
    hangs: 0,
    bigAllocations: 0,
    leaks: 0,
    unclear: 0,
    acceptedInvalid: 0,
    rejectedValid: 0,
    deliberate: 0,
    mismatches: 0,
    slowestMs: 0,
    slowestIndex: -1,
    byKind: {},
    examples: {},
  };
}

const EXAMPLES_KEPT = 3;

function note(t: Tally, category: string, r: CaseResult, what: string): void {
  const list = t.examples[category] ?? [];
  if (list.length < EXAMPLES_KEPT) list.push({ index: r.index, what });
  t.examples[category] = list;
}

function countKind(t: Tally, key: string): void {
  t.byKind[key] = (t.byKind[key] ?? 0) + 1;
}

const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;

/** Adds one case's result. */
export function record(t: Tally, r: CaseResult): void {
  t.cases++;
  if (r.status === "accepted") t.accepted++;
  else if (r.status === "rejected") t.rejected++;
  else {
    t.crashes++;
    countKind(t, `crash: ${r.kind}`);
    note(t, `crash: ${r.kind}`, r, r.message ?? "");
  }
  if (r.unclear) {
    t.unclear++;
    note(t, "unclear message", r, r.message ?? "");
  }
  if (r.ms > HANG_MS) {
    t.hangs++;
    note(t, "hang", r, `${r.ms.toFixed(0)} ms`);
  }
  if (r.ms > t.slowestMs) {
    t.slowestMs = r.ms;
    t.slowestIndex = r.index;
  }
  if (r.growthBytes > BIG_ALLOCATION_BYTES) {
    t.bigAllocations++;
    note(t, "big allocation", r, `${mb(r.growthBytes)}, ${r.status}`);
  }
  if (r.leakedTensors !== 0 || r.leakedFds !== 0) {
    t.leaks++;
    note(t, "leak", r, `${r.leakedTensors} tensors, ${r.leakedFds} fds, ${r.status}: ${r.message ?? ""}`);
  }
  const o = r.outcome;
  if (!o || r.status === "crash") return;
  if (o.reference === "invalid" && o.accepted) {
    t.acceptedInvalid++;
    countKind(t, `accepted-invalid: ${o.referenceCode}`);
    note(t, `accepted-invalid: ${o.referenceCode}`, r, o.referenceDetail ?? "");
  } else if (o.reference === "valid" && !o.accepted) {
    t.rejectedValid++;
    note(t, "rejected-valid", r, r.message ?? "");
  } else if (o.reference === "quirk" && !o.accepted) {
    t.deliberate++;
  }
  if (o.mismatch) {
    t.mismatches++;
    note(t, "mismatch", r, o.mismatch);
  }
}

/** Sums tallies of one target (from several processes or runs). */
export function merge(a: Tally, b: Tally): Tally {
  const out: Tally = { ...a, byKind: { ...a.byKind }, examples: {} };
  for (const k of [
    "cases",
    "accepted",
    "rejected",
    "crashes",
    "hangs",
    "bigAllocations",
    "leaks",
    "unclear",
    "acceptedInvalid",
    "rejectedValid",
    "deliberate",
    "mismatches",
  ] as const) {
    out[k] = a[k] + b[k];
  }
  if (b.slowestMs > a.slowestMs) [out.slowestMs, out.slowestIndex] = [b.slowestMs, b.slowestIndex];
  for (const [k, v] of Object.entries(b.byKind)) out.byKind[k] = (out.byKind[k] ?? 0) + v;
  for (const k of new Set([...Object.keys(a.examples), ...Object.keys(b.examples)])) {
    out.examples[k] = [...(a.examples[k] ?? []), ...(b.examples[k] ?? [])].slice(0, EXAMPLES_KEPT);
  }
  return out;
}

export interface FuzzOptions {
  seed: number;
  /** Case indices [from, to). */
  from?: number;
  to: number;
  /** Called before each case (the long run records progress here, to name a case that never returns). */
  beforeCase?: (index: number) => void;
  /** Called after each case, with the counts so far. */
  afterCase?: (r: CaseResult, t: Tally) => void;
  /** Stop before a case once this time (ms since the epoch) has passed. */
  until?: number;
  /** Indices not to run (cases that hung or killed an earlier process). */
  skip?: ReadonlySet<number>;
}

/** The input of case `index`: a seed as it is for the first indices, then a generated one. */
export function caseInput<I>(target: Target<I>, seeds: readonly I[], seed: number, index: number): I {
  return index < seeds.length ? seeds[index] : target.generate(caseRng(seed, target.name, index), seeds);
}

/** Runs cases [from, to) of a target and counts them. */
export function fuzz<I>(target: Target<I>, o: FuzzOptions): Tally {
  const seeds = target.seeds();
  const t = emptyTally(target.name, target.hasReference);
  for (let i = o.from ?? 0; i < o.to; i++) {
    if (o.until !== undefined && Date.now() > o.until) break;
    if (o.skip?.has(i)) continue;
    o.beforeCase?.(i);
    const r = runCase(target, caseInput(target, seeds, o.seed, i), i);
    record(t, r);
    o.afterCase?.(r, t);
  }
  return t;
}

/** The results as a Markdown table, one row per target. */
export function table(tallies: readonly Tally[]): string {
  const head =
    "| target | cases | accepted | crashes | hangs (>5 s) | big allocations (>1 GB) | leaks | unclear messages | accepted-invalid | rejected-valid | refused on purpose | mismatches | slowest case |";
  const rule = `|${" --- |".repeat(13)}`;
  const ref = (t: Tally, n: number) => (t.hasReference ? String(n) : "—");
  const rows = tallies.map(
    (t) =>
      `| ${t.target} | ${t.cases} | ${t.accepted} | ${t.crashes} | ${t.hangs} | ${t.bigAllocations} | ${t.leaks} | ${t.unclear} | ` +
      `${ref(t, t.acceptedInvalid)} | ${ref(t, t.rejectedValid)} | ${ref(t, t.deliberate)} | ${ref(t, t.mismatches)} | ` +
      `${t.slowestMs.toFixed(1)} ms (#${t.slowestIndex}) |`,
  );
  return [head, rule, ...rows].join("\n");
}

/** The categories behind the counts, with example case indices. */
export function details(tallies: readonly Tally[]): string {
  const out: string[] = [];
  for (const t of tallies) {
    const kinds = Object.entries(t.byKind).sort((a, b) => b[1] - a[1]);
    const cats = Object.entries(t.examples);
    if (kinds.length === 0 && cats.length === 0) continue;
    out.push(`${t.target}:`);
    for (const [k, n] of kinds) out.push(`  ${k}: ${n}`);
    for (const [k, list] of cats) {
      for (const e of list) out.push(`  e.g. ${k} #${e.index}: ${e.what.replace(/\s+/g, " ").slice(0, 200)}`);
    }
  }
  return out.join("\n");
}
