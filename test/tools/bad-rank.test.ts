// Bad ranks and outputs over inputs for extract, resize and SVD merge: each a
// clear error naming the value, checked before anything is written.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { Generator } from "../../src/engine/index.js";
import { extractLoraFromCheckpoints } from "../../src/tools/extract-lora.js";
import { combineLoraFiles } from "../../src/tools/lora-arithmetic.js";
import { resizeLoraFile } from "../../src/tools/resize-lora.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-bad-rank-");
const base = sharedFixture("models/sd_tiny_ldm_single_file.safetensors");
const out = join(dir, "out.safetensors");

/** A rank-2 LoRA trained-shape file on the tiny model, as Atelier writes it. */
function rank2Lora(): string {
  const m = tinyStableDiffusion(5);
  const net = injectLora(m, { rank: 2, alpha: 1, generator: new Generator(2) });
  const path = join(dir, "r2.safetensors");
  saveLora(path, net);
  net.remove();
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
  return path;
}

test("extract: dim 0, a dim above every layer's rank, output over an input — clear errors, nothing written", () => {
  const before = readFileSync(base);
  assert.throws(() => extractLoraFromCheckpoints(base, base, out, { dim: 0 }), /dim 0: must be a whole number ≥ 1/);
  assert.throws(() => extractLoraFromCheckpoints(base, base, out, { dim: 2.5 }), /dim 2\.5: must be a whole number/);
  assert.throws(
    () => extractLoraFromCheckpoints(base, base, out, { dim: 100000 }),
    /dim 100000 is above every layer's rank \(the largest min\(in, out\) is \d+\)/,
  );
  assert.throws(() => extractLoraFromCheckpoints(base, base, base, { dim: 4, overwrite: true }), /is the input/);
  assert.equal(existsSync(out), false);
  assert.deepEqual(readFileSync(base), before);
});

test("resize and SVD merge: rank 0, a rank above the LoRA's / every layer's, output over an input", () => {
  const lora = rank2Lora();
  const before = readFileSync(lora);
  assert.throws(() => resizeLoraFile(lora, out, { rank: 0 }), /rank 0: must be a whole number ≥ 1/);
  assert.throws(
    () => resizeLoraFile(lora, out, { rank: 3 }),
    /rank 3 is above the LoRA's own \(at most 2\): resizing only lowers ranks/,
  );
  assert.throws(() => resizeLoraFile(lora, lora, { rank: 1, overwrite: true }), /is the input/);
  const inputs = [{ path: lora, weight: 1 }];
  assert.throws(() => combineLoraFiles(inputs, out, { mode: "svd", rank: 0 }), /rank 0: must be a whole number ≥ 1/);
  assert.throws(
    () => combineLoraFiles(inputs, out, { mode: "svd", rank: 100000 }),
    /rank 100000 is above every layer's rank \(the largest min\(in, out\) is \d+\)/,
  );
  assert.throws(() => combineLoraFiles(inputs, lora, { mode: "concat", overwrite: true }), /is the input/);
  assert.equal(existsSync(out), false);
  assert.deepEqual(readFileSync(lora), before);
  // a valid rank still works, as a control
  combineLoraFiles(inputs, out, { mode: "svd", rank: 1 });
  assert.equal(existsSync(out), true);
});
