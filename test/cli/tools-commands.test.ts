// The model-tool commands end to end on the tiny model: extract a LoRA from
// two checkpoints, resize it, combine, merge it back, merge checkpoints,
// rescue and check; bad flags and inputs are errors that name what was wrong.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeAll } from "../../src/engine/index.js";
import { loadCheckpoint, saveCheckpoint } from "../../src/formats/checkpoint.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { tinyTokenizerDir, writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-tools-cli-");
const [a, b] = ["a", "b"].map((n) => join(dir, `${n}.safetensors`));
writeTinyCheckpoint(a, 1);
writeTinyCheckpoint(b, 2);
const p = (n: string) => join(dir, n);

test("extract-lora reads diffusers folders as it reads single files (the same LoRA, bit for bit)", async () => {
  // a folder's component loaded inside a module's scope was freed with it: the second UNet module failed
  const [fa, fb] = ["fa", "fb"].map(p);
  for (const [file, folder] of [
    [a, fa],
    [b, fb],
  ]) {
    const ck = loadCheckpoint(file);
    const o = { layout: "diffusers" as const, configs: ck.info.configs, tokenizerFrom: tinyTokenizerDir() };
    saveCheckpoint(ck.components, folder, o);
    disposeAll(ck.components);
  }
  const single = await cli("extract-lora", a, b, p("single.safetensors"), "--dim", "4", "--conv-dim", "2");
  const folders = await cli("extract-lora", fa, fb, p("folders.safetensors"), "--dim", "4", "--conv-dim", "2");
  assert.equal(folders.code, 0, folders.err);
  assert.equal(single.code, 0, single.err);
  const [x, y] = ["single", "folders"].map((n) => loadSafetensors(p(`${n}.safetensors`)).tensors);
  try {
    assert.deepEqual([...y.keys()].sort(), [...x.keys()].sort());
    for (const [k, t] of x) assert.deepEqual(y.get(k)!.toArray(), t.toArray(), k);
  } finally {
    disposeAll([x, y]);
  }
});

test("extract → resize → lora-math → merge-lora → check, and merge-checkpoints", async () => {
  let r = await cli("extract-lora", a, b, p("x.safetensors"), "--dim", "4", "--conv-dim", "2");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /truncated SVD/);
  r = await cli("resize-lora", p("x.safetensors"), p("x2.safetensors"), "--rank", "2");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /4 → 2 {2}kept fro/);
  r = await cli(
    "resize-lora",
    p("x.safetensors"),
    p("x3.safetensors"),
    "--rank",
    "4",
    "--dynamic",
    "sv_fro",
    "--param",
    "0.9",
  );
  assert.equal(r.code, 0, r.err);
  r = await cli(
    "lora-math",
    p("sum.safetensors"),
    "--lora",
    `${p("x.safetensors")}:0.5`,
    "--lora",
    `${p("x2.safetensors")}:-0.25`,
  );
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /concat/);
  r = await cli(
    "lora-math",
    p("svd.safetensors"),
    "--lora",
    p("x.safetensors"),
    "--lora",
    p("x2.safetensors"),
    "--rank",
    "3",
  );
  assert.equal(r.code, 0, r.err);
  r = await cli("merge-lora", a, p("m.safetensors"), "--lora", `${p("svd.safetensors")}:0.7`, "--dtype", "fp16");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /streamed/);
  r = await cli("check", p("x.safetensors"));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /A1111 \(built-in Lora extension\) +loads/);
  r = await cli("merge-checkpoints", a, p("ws.safetensors"), "--b", b, "--multiplier", "0.25");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /weighted_sum/);
  r = await cli(
    "rescue",
    join(sharedFixture(".."), "realworld/sd1/diffusers_unet_dot_lora_r4_flower.safetensors"),
    p("flower.safetensors"),
  );
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /alpha = rank added to 128/);
});

test("bad flags and inputs: rank 0, a missing --lora, output over an input, a bad precision", async () => {
  let r = await cli("extract-lora", a, b, p("bad.safetensors"), "--dim", "0");
  assert.equal(r.code, 2);
  assert.match(r.err, /--dim must be an integer >= 1/);
  r = await cli("resize-lora", p("x.safetensors"), p("bad.safetensors"), "--rank", "0");
  assert.notEqual(r.code, 0);
  assert.match(r.err, /rank 0: must be a whole number ≥ 1/);
  r = await cli("resize-lora", p("x.safetensors"), p("bad.safetensors"), "--rank", "99");
  assert.match(r.err, /above the LoRA's own/);
  r = await cli("extract-lora", a, b, p("bad.safetensors"), "--dim", "500");
  assert.match(r.err, /above every layer's rank/);
  r = await cli("merge-lora", a, p("bad.safetensors"));
  assert.equal(r.code, 2);
  assert.match(r.err, /--lora/);
  r = await cli("merge-lora", a, a, "--lora", p("x.safetensors"), "--overwrite");
  assert.match(r.err, /is the input/);
  r = await cli("merge-lora", a, p("bad.safetensors"), "--lora", p("x.safetensors"), "--dtype", "fp8");
  assert.match(r.err, /--dtype: precision "fp8"/);
  assert.equal(existsSync(p("bad.safetensors")), false);
});
