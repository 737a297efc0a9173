// Shortened shapes-world runs of the lab's Textual Inversion, hypernetwork and
// pivotal-tuning rows (src/demo/lab-embeddings.ts, issue 15), through the same
// experiment code as `atelier lab`: each learns the subject (a yellow star with
// a red dot) measurably. The base never draws the subject's yellow for
// "a sks star" or "a sks-ti star" (0 of 16 samples in docs/lab.md), so the
// margin, 0.5 (4 of 8 samples), is far above chance; the 300-step lab rows
// measured yellow 0.88 (TI), yellow + red dot 0.38 + 0.81 (hypernetwork) and
// yellow 0.69 (pivotal). Identity itself is no test of TI: it never learns
// the dot (docs/lab.md, claim 5). 150 steps; 48 s of CPU for all three.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import type { EmbeddingDatabase } from "../../src/adapters/embeddings.js";
import { evalSubjectOf, runExperiment, withExperimentModel, writeSubject } from "../../src/demo/experiment.js";
import { SECOND_SUBJECT } from "../../src/demo/lab.js";
import { embeddingSpecs, TI_WORD } from "../../src/demo/lab-embeddings.js";
import { generateRgb } from "../../src/infer/generate-rgb.js";
import {
  disposeStableDiffusion,
  loadStableDiffusion,
  type StableDiffusion,
} from "../../src/models/stable-diffusion.js";
import { analyse } from "../../src/shapes/analyser.js";
import { shapesBasePath } from "../../src/shapes/base-path.js";
import { DEFAULT_SUBJECT } from "../../src/shapes/world.js";
import { checkLeaks, tempDir } from "../helpers.js";

const STEPS = 150;
const SAMPLES = 8;

const root = tempDir("atelier-lab-emb-");
const base = loadStableDiffusion(shapesBasePath());
after(() => {
  disposeStableDiffusion(base);
  rmSync(root, { recursive: true, force: true });
});
checkLeaks();

/** Shares of yellow objects and of red dots among SAMPLES samples of "a WORD star" (the eval's seeds and sampler). */
function shares(m: StableDiffusion, word: string, embeddings?: EmbeddingDatabase): { colour: number; dot: number } {
  const { images } = generateRgb(m, {
    prompt: `a ${word} star`,
    seed: 1000,
    batch: SAMPLES,
    steps: 20,
    cfg: 5,
    sampler: "ddim",
    ...(embeddings ? { embeddings } : {}),
  });
  const a = images.map((img) => analyse(img));
  const share = (f: (x: (typeof a)[number]) => boolean) => a.filter(f).length / a.length;
  return { colour: share((x) => x.colour === "yellow"), dot: share((x) => x.dot === "red") };
}

const data = join(root, "data");
const sks = writeSubject(join(data, "sks"), "sks", DEFAULT_SUBJECT, 8, 7);
const zwx = writeSubject(join(data, "zwx"), "zwx", SECOND_SUBJECT, 8, 8);
const specs = embeddingSpecs(data, sks, zwx, {
  steps: STEPS,
  batch: 4,
  seed: 1,
  learningRate: 2e-4,
  trainTextEncoder: true,
});
const spec = (name: string) => specs.find((s) => s.name === name)!;

async function learnt(
  name: string,
): Promise<{ mine: { colour: number; dot: number }; base: { colour: number; dot: number } }> {
  const s = spec(name);
  assert.equal(evalSubjectOf(s.subjects[0]).className, "star");
  const result = await runExperiment(s, { base: shapesBasePath(), out: root, quiet: true });
  const word = s.subjects[0].token;
  const mine = withExperimentModel(result, base, (m, emb) => shares(m, word, emb));
  return { mine, base: shares(base, word) };
}

test("Textual Inversion learns the subject's yellow for its new word (base: never)", async () => {
  assert.equal(spec("ti").subjects[0].token, TI_WORD);
  const { mine, base: b } = await learnt("ti");
  assert.ok(mine.colour >= b.colour + 0.5, `yellow share ${mine.colour} vs the base's ${b.colour}`);
});

test("a hypernetwork learns the subject: yellow or its red dot well above the base's", async () => {
  const { mine, base: b } = await learnt("hypernet");
  const [m, o] = [mine.colour + mine.dot, b.colour + b.dot];
  assert.ok(m >= o + 0.5, `yellow + red-dot shares ${mine.colour} + ${mine.dot} vs the base's ${b.colour} + ${b.dot}`);
});

test("pivotal tuning (embedding + LoRA) learns the subject's yellow", async () => {
  const { mine, base: b } = await learnt("pivotal");
  assert.ok(mine.colour >= b.colour + 0.5, `yellow share ${mine.colour} vs the base's ${b.colour}`);
});
