// A1111's Checkpoint Merger as a streaming pass: weighted sum, add
// difference and a baked-in VAE give the formulas' tensors; keys without
// "model" and keys B lacks stay A's; different architectures and an output
// over an input are refused before anything is written.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeAll, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { mergeCheckpoints } from "../../src/tools/checkpoint-merger.js";
import { assertClose, checkLeaks, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-ckpt-merge-");
const [a, b, c] = ["a", "b", "c"].map((n) => join(dir, `${n}.safetensors`));
writeTinyCheckpoint(a, 1);
writeTinyCheckpoint(b, 2);
writeTinyCheckpoint(c, 3);

function expectEach(out: string, f: (k: string, x: Tensor, y: Tensor, z: Tensor) => Tensor): void {
  const [A, B, C, O] = [a, b, c, out].map((p) => loadSafetensors(p).tensors);
  try {
    assert.deepEqual([...O.keys()].sort(), [...A.keys()].sort());
    for (const [k, x] of A)
      scope(() => assertClose(O.get(k)!, f(k, x, B.get(k)!, C.get(k)!), { atol: 1e-6, rtol: 1e-6, what: k }));
  } finally {
    disposeAll([A, B, C, O]);
  }
}

test("weighted sum A·(1−M) + B·M and add difference A + (B − C)·M, key by key", () => {
  const ws = join(dir, "ws.safetensors");
  const r = mergeCheckpoints(a, ws, { mode: "weighted_sum", b, multiplier: 0.3 });
  assert.ok(r.merged > 300 && r.copied === 0, JSON.stringify(r));
  expectEach(ws, (_k, x, y) => x.mul(0.7).add(y, 0.3));
  const ad = join(dir, "ad.safetensors");
  mergeCheckpoints(a, ad, { mode: "add_difference", b, c, multiplier: 0.5 });
  expectEach(ad, (_k, x, y, z) => x.add(y.sub(z), 0.5));
});

test("bake a VAE (single-file names without the prefix); fp16 output", () => {
  const { tensors } = loadSafetensors(b);
  const vaePath = join(dir, "vae.safetensors");
  try {
    const vae = new Map(
      [...tensors].filter(([k]) => k.startsWith("first_stage_model.")).map(([k, t]) => [k.slice(18), t]),
    );
    saveSafetensors(vaePath, vae);
  } finally {
    disposeAll(tensors);
  }
  const out = join(dir, "vae-baked.safetensors");
  const r = mergeCheckpoints(a, out, { mode: "none", bakeVae: vaePath, dtype: "float16" });
  assert.ok(r.vaeBaked > 50);
  expectEach(out, (k, x, y) =>
    k.startsWith("first_stage_model.") ? y.to("float16").float() : x.to("float16").float(),
  );
});

test("different architectures, a missing B, an output over an input: clear errors, nothing written", () => {
  const { tensors } = loadSafetensors(b);
  const odd = join(dir, "odd.safetensors");
  try {
    const k = "model.diffusion_model.out.2.weight";
    tensors.get(k)!.dispose();
    tensors.set(
      k,
      scope(() => tensors.get("model.diffusion_model.input_blocks.0.0.weight")!.clone()),
    );
    saveSafetensors(odd, tensors);
  } finally {
    disposeAll(tensors);
  }
  const out = join(dir, "never.safetensors");
  assert.throws(() => mergeCheckpoints(a, out, { mode: "weighted_sum", b: odd }), /different architectures/);
  assert.throws(() => mergeCheckpoints(a, out, { mode: "add_difference", b }), /needs a model C/);
  assert.throws(() => mergeCheckpoints(a, out, { mode: "weighted_sum" }), /needs a model B/);
  const before = readFileSync(a);
  assert.throws(() => mergeCheckpoints(a, a, { mode: "weighted_sum", b, overwrite: true }), /is the input/);
  assert.deepEqual(readFileSync(a), before);
  assert.equal(existsSync(out), false);
});
