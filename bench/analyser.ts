// Accuracy of the shapes-world analyser (src/shapes/analyser.ts) on the world's
// own images, clean and degraded the ways a VAE round trip or a sampler would,
// and on the Dreambooth subject. Prints percentages right per condition; the
// milliseconds are for reading the analysis cost only (noisy; nothing compares
// against them). The table in docs/shapes-world.md comes from:
//
//   node dist/bench/analyser.js [--n 2000] [--subject 300] [--seed 1] [--json]
import { analyse } from "../src/shapes/analyser.js";
import { addNoise, colourCast, downUp, gaussianBlur } from "../src/shapes/degrade.js";
import { WorldRng } from "../src/shapes/rng.js";
import { generateSubject, generateWorld, type Image, renderScene, type Scene, SHAPES } from "../src/shapes/world.js";

interface Options {
  n: number;
  subject: number;
  seed: number;
  json: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { n: 2000, subject: 300, seed: 1, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === "--n") o.n = num();
    else if (a === "--subject") o.subject = num();
    else if (a === "--seed") o.seed = num();
    else if (a === "--json") o.json = true;
    else throw new Error(`unknown argument ${a} (try --n, --subject, --seed, --json)`);
  }
  return o;
}

type Degrade = (img: Image, index: number, seed: number) => Image;
const noise = (img: Image, i: number, seed: number) => addNoise(img, 10, new WorldRng(seed, i, 2));

const CONDITIONS: [string, Degrade][] = [
  ["clean", (img) => img],
  ["blur σ1.5", (img) => gaussianBlur(img, 1.5)],
  ["noise σ10", noise],
  ["blur σ1.5 + noise σ10", (img, i, s) => noise(gaussianBlur(img, 1.5), i, s)],
  ["blur σ3", (img) => gaussianBlur(img, 3)],
  ["colour cast ±20", (img, i, s) => colourCast(img, 20, new WorldRng(s, i, 3))],
  ["down-up ×4", (img) => downUp(img, 4)],
  ["down-up ×8", (img) => downUp(img, 8)],
  ["down-up ×8 + noise σ10", (img, i, s) => noise(downUp(img, 8), i, s)],
];

interface Row {
  condition: string;
  shape: number;
  colour: number;
  background: number;
  notFound: number;
  msPerImage: number;
  /** true shape → analysed shape → count */
  confusion: Record<string, Record<string, number>>;
}

interface SubjectRow {
  condition: string;
  star: number;
  yellow: number;
  redDot: number;
  anyDot: number;
  /** World images (not the subject) in which a dot was reported. */
  worldFalseDots: number;
}

const pct = (k: number, n: number): number => (n === 0 ? 0 : Math.round((1000 * k) / n) / 10);

function measureWorld(
  name: string,
  f: Degrade,
  scenes: Scene[],
  images: Image[],
  seed: number,
): Row & { dots: number } {
  const confusion: Row["confusion"] = {};
  let [shape, colour, background, notFound, dots, ms] = [0, 0, 0, 0, 0, 0];
  scenes.forEach((s, i) => {
    const img = f(images[i], i, seed);
    const t0 = performance.now();
    const a = analyse(img);
    ms += performance.now() - t0;
    shape += +(a.shape === s.shape);
    colour += +(a.colour === s.colour);
    background += +(a.background === s.background);
    notFound += +!a.found;
    dots += +(a.dot !== null);
    confusion[s.shape] ??= {};
    const row = confusion[s.shape];
    row[a.shape ?? "none"] = (row[a.shape ?? "none"] ?? 0) + 1;
  });
  const n = scenes.length;
  return {
    condition: name,
    shape: pct(shape, n),
    colour: pct(colour, n),
    background: pct(background, n),
    notFound: pct(notFound, n),
    msPerImage: Math.round((1000 * ms) / Math.max(1, n)) / 1000,
    confusion,
    dots,
  };
}

function measureSubject(name: string, f: Degrade, scenes: Scene[], seed: number): Omit<SubjectRow, "worldFalseDots"> {
  let [star, yellow, redDot, anyDot] = [0, 0, 0, 0];
  scenes.forEach((s, i) => {
    const a = analyse(f(renderScene(s), i, seed + 1));
    star += +(a.shape === "star");
    yellow += +(a.colour === "yellow");
    redDot += +(a.dot === "red");
    anyDot += +(a.dot !== null);
  });
  const n = scenes.length;
  return {
    condition: name,
    star: pct(star, n),
    yellow: pct(yellow, n),
    redDot: pct(redDot, n),
    anyDot: pct(anyDot, n),
  };
}

function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, c) => Math.max(...cells.map((r) => r[c].length)));
  const line = (r: string[]) =>
    `| ${r.map((v, c) => (c === 0 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join(" | ")} |`;
  return [
    line(head),
    `|${widths.map((w, c) => (c === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`,
    ...cells.slice(1).map(line),
  ].join("\n");
}

function main(): void {
  const o = parseArgs(process.argv.slice(2));
  const scenes = generateWorld(o.seed, o.n);
  const images = scenes.map((s) => renderScene(s));
  const subject = generateSubject(o.seed, o.subject);
  const rows: Row[] = [];
  const subjectRows: SubjectRow[] = [];
  for (const [name, f] of CONDITIONS) {
    const { dots, ...row } = measureWorld(name, f, scenes, images, o.seed);
    rows.push(row);
    subjectRows.push({ ...measureSubject(name, f, subject, o.seed), worldFalseDots: pct(dots, o.n) });
  }
  if (o.json) {
    console.log(JSON.stringify({ options: o, world: rows, subject: subjectRows }, null, 1));
    return;
  }
  console.log(`shapes-world analyser: ${o.n} world scenes and ${o.subject} subject scenes, seed ${o.seed}, 64×64\n`);
  console.log(
    table(
      ["condition", "shape %", "colour %", "background %", "not found %", "ms/image"],
      rows.map((r) => [
        r.condition,
        r.shape.toFixed(1),
        r.colour.toFixed(1),
        r.background.toFixed(1),
        r.notFound.toFixed(1),
        r.msPerImage.toFixed(2),
      ]),
    ),
  );
  for (const r of rows.filter((r) => r.shape < 99)) {
    console.log(`\nshape confusion, ${r.condition} (rows: true shape; columns: analysed)\n`);
    const cols = [...SHAPES, "none"];
    console.log(
      table(
        ["", ...cols],
        SHAPES.map((s) => [s, ...cols.map((c) => r.confusion[s]?.[c] ?? 0)]),
      ),
    );
  }
  console.log("\nsubject (a yellow star with a red dot), and dots reported on world images\n");
  console.log(
    table(
      ["condition", "star %", "yellow %", "red dot %", "any dot %", "world: false dot %"],
      subjectRows.map((r) => [
        r.condition,
        r.star.toFixed(1),
        r.yellow.toFixed(1),
        r.redDot.toFixed(1),
        r.anyDot.toFixed(1),
        r.worldFalseDots.toFixed(1),
      ]),
    ),
  );
}

main();
