// atelier generate / convert / inspect end to end on a tiny checkpoint that the
// test writes itself, plus bad input: every failure names its cause.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { saveEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { Generator, noGrad, normal_, zeros } from "../../src/engine/index.js";
import { readPngText } from "../../src/formats/png.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG, writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-cli-");
const ckpt = join(dir, "tiny.safetensors");
const tokenizer = sharedFixture("tokenizer");

before(() => writeTinyCheckpoint(ckpt, 5));

function latent(path: string): number[] {
  const { tensors } = loadSafetensors(path);
  const t = tensors.get("latent")!;
  const values = t.toArray();
  t.dispose();
  return values;
}

const gen = (seed: number, name: string, ...more: string[]) =>
  cli(
    "generate",
    "--model",
    ckpt,
    "--tokenizer",
    tokenizer,
    "--prompt",
    "a red star, (blue background:1.2)",
    "--steps",
    "3",
    "--seed",
    String(seed),
    "--out",
    join(dir, `${name}.png`),
    "--save-latent",
    join(dir, `${name}.safetensors`),
    "--width",
    "16",
    "--height",
    "16",
    ...more,
  );

test("generate: same seed gives the same latent, another seed another; PNGs carry A1111 parameters", async () => {
  const a = await gen(7, "a");
  assert.equal(a.code, 0, a.err);
  assert.match(a.err, /^step 1\/3\n\s*step 2\/3\n\s*step 3\/3/m, "not a terminal: one line per step");
  const b = await gen(7, "b");
  const c = await gen(8, "c");
  assert.equal(b.code + c.code, 0);
  assert.deepEqual(latent(join(dir, "b.safetensors")), latent(join(dir, "a.safetensors")));
  assert.notDeepEqual(latent(join(dir, "c.safetensors")), latent(join(dir, "a.safetensors")));
  const text = readPngText(readFileSync(join(dir, "a.png"))).parameters;
  assert.match(
    text,
    /^a red star, \(blue background:1\.2\)\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 16x16, Model: tiny$/,
  );
});

test("generate: a batch writes one PNG per image", async () => {
  const r = await gen(1, "batch", "--batch", "2", "--sampler", "dpmpp_2m_karras", "--width", "24");
  assert.equal(r.code, 0, r.err);
  assert.ok(existsSync(join(dir, "batch-0.png")) && existsSync(join(dir, "batch-1.png")));
});

test("generate: bad flags and files are refused with a message naming them", async () => {
  const cases: [string[], RegExp][] = [
    [["generate", "--prompt", "x"], /--model is required/],
    [["generate", "--model", ckpt, "--tokenizer", tokenizer], /--prompt is required/],
    [
      ["generate", "--model", ckpt, "--prompt", "x", "--steps", "abc"],
      /--steps must be an integer >= 1 and <= 1000, got 'abc'/,
    ],
    [["generate", "--model", ckpt, "--prompt", "x", "--sampler", "plms"], /--sampler must be one of ddpm, ddim/],
    [["generate", "--model", ckpt, "--prompt", "x", "--bogus", "1"], /Unknown option '--bogus'/],
    [["generate", "--model", join(dir, "missing.safetensors"), "--prompt", "x"], /no such file/],
    [["generate", "--model", ckpt, "--prompt", "x", "--tokenizer", dir], /tokenizer/i],
    [
      ["generate", "--model", ckpt, "--prompt", "x", "--tokenizer", tokenizer, "--width", "17"],
      /width must be a positive multiple of 2/,
    ],
    [["generate", "--model", ckpt, "--prompt", "x", "--tokenizer", tokenizer, "--device", "cuda:7"], /cuda/],
  ];
  for (const [argv, message] of cases) {
    const r = await cli(...argv);
    assert.notEqual(r.code, 0, argv.join(" "));
    assert.match(r.err, message, argv.join(" "));
  }
});

test("generate: a missing --prompt, like every flag mistake, is a usage error: exit 2 and a message naming the flag", async () => {
  const usage: [string[], RegExp][] = [
    [["generate", "--model", ckpt, "--tokenizer", tokenizer], /^atelier generate: --prompt is required$/],
    [["generate", "--prompt", "x"], /^atelier generate: --model is required$/],
    [["generate", "--model", ckpt, "--prompt", "x", "--steps", "0"], /^atelier generate: --steps must be an integer/],
    [["generate", "--model", ckpt, "--prompt", "x", "extra"], /^atelier generate: expected only flags, got 1/],
  ];
  for (const [argv, message] of usage) {
    const r = await cli(...argv);
    assert.equal(r.code, 2, argv.join(" "));
    assert.match(r.err, message, argv.join(" "));
    assert.equal(r.out, "", argv.join(" "));
  }
});

test("generate --lora-dir (repeatable): <lora:NAME:w> applies the LoRA; a missing name lists where it looked", async () => {
  const loras = join(dir, "loras");
  const empty = join(dir, "no-loras");
  mkdirSync(loras, { recursive: true });
  mkdirSync(empty, { recursive: true });
  // a LoRA for the tiny model's layers, with nonzero up factors
  const g = new Generator(21);
  const unet = new UNet2DConditionModel("tiny", { generator: g });
  const textEncoder = new ClipTextModel(TINY_TEXT_CONFIG, { generator: g });
  const net = injectLora({ unet, textEncoder }, { rank: 4, convRank: 2, generator: g });
  noGrad(() => {
    for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.3, g);
  });
  saveLora(join(loras, "shiny.safetensors"), net);
  net.remove();
  unet.dispose();
  textEncoder.dispose();
  g.dispose();

  const withLora = (name: string, tag: string, ...more: string[]) =>
    cli(
      "generate",
      "--model",
      ckpt,
      "--tokenizer",
      tokenizer,
      "--prompt",
      `a red star ${tag}`,
      "--steps",
      "2",
      "--seed",
      "3",
      "--width",
      "16",
      "--height",
      "16",
      "--out",
      join(dir, `${name}.png`),
      "--save-latent",
      join(dir, `${name}.safetensors`),
      ...more,
    );
  const plain = await withLora("lora-off", "");
  const on = await withLora("lora-on", "<lora:shiny:1>", "--lora-dir", empty, "--lora-dir", loras);
  const zero = await withLora("lora-zero", "<lora:shiny:0>", "--lora-dir", loras);
  assert.equal(plain.code + on.code + zero.code, 0, on.err);
  assert.notDeepEqual(latent(join(dir, "lora-on.safetensors")), latent(join(dir, "lora-off.safetensors")));
  assert.deepEqual(latent(join(dir, "lora-zero.safetensors")), latent(join(dir, "lora-off.safetensors")));
  assert.match(readPngText(readFileSync(join(dir, "lora-on.png"))).parameters, /^a red star <lora:shiny:1>\n/);
  const missing = await withLora("lora-missing", "<lora:nope:0.5>", "--lora-dir", loras);
  assert.notEqual(missing.code, 0);
  assert.match(missing.err, /LoRA 'nope' not found: looked for nope\{\.safetensors,\.pt,\.ckpt,\.bin\} in .*loras/);
});

test("generate --embeddings-dir / --hypernetwork-dir: the prompt's word resolves from the folder; a missing folder, a word clash and a width mismatch fail naming the file", async () => {
  const good = join(dir, "embeddings");
  const narrow = join(dir, "embeddings-narrow");
  const clash = join(dir, "embeddings-clash");
  for (const d of [good, narrow, clash]) mkdirSync(d, { recursive: true });
  const g = new Generator(5);
  const emb = (shape: number[]) => noGrad(() => normal_(zeros(shape), 0, 1, g));
  for (const [path, shape] of [
    [join(good, "zqxv-style.pt"), [2, TINY_TEXT_CONFIG.hiddenSize]],
    [join(narrow, "zqxv-style.pt"), [2, TINY_TEXT_CONFIG.hiddenSize + 8]],
    [join(clash, "star.pt"), [1, TINY_TEXT_CONFIG.hiddenSize]],
  ] as const) {
    const t = emb([...shape]);
    saveEmbeddingFile(path, t);
    t.dispose();
  }
  g.dispose();
  const run = (name: string, prompt: string, ...more: string[]) =>
    cli(
      "generate",
      "--model",
      ckpt,
      "--tokenizer",
      tokenizer,
      "--prompt",
      prompt,
      "--steps",
      "2",
      "--seed",
      "3",
      "--width",
      "16",
      "--height",
      "16",
      "--out",
      join(dir, `${name}.png`),
      "--save-latent",
      join(dir, `${name}.safetensors`),
      ...more,
    );
  const plain = await run("emb-off", "a red zqxv-style star");
  const on = await run("emb-on", "a red zqxv-style star", "--embeddings-dir", good);
  const unused = await run("emb-unused", "a red zqxv-style star", "--embeddings-dir", clash);
  assert.equal(plain.code + on.code, 0, on.err);
  assert.notDeepEqual(latent(join(dir, "emb-on.safetensors")), latent(join(dir, "emb-off.safetensors")));
  // the clashing word is refused, so the prompt that uses 'star' fails naming star.pt
  assert.notEqual(unused.code, 0);
  assert.match(unused.err, /star\.pt: the embedding word 'star' is a word of the tokenizer's vocabulary/);
  const wide = await run("emb-wide", "a red zqxv-style star", "--embeddings-dir", narrow);
  assert.notEqual(wide.code, 0);
  assert.match(
    wide.err,
    new RegExp(`embeddings-narrow.zqxv-style\\.pt: embedding width ${TINY_TEXT_CONFIG.hiddenSize + 8} does not fit`),
  );
  const missing = await run("emb-missing", "a red star", "--embeddings-dir", join(dir, "no-such-embeddings"));
  assert.notEqual(missing.code, 0);
  assert.match(missing.err, /embeddings folder .*no-such-embeddings does not exist/);
  const noHyper = await run("hn-missing", "a red star <hypernet:x:1>", "--hypernetwork-dir", join(dir, "no-such-hn"));
  assert.notEqual(noHyper.code, 0);
  assert.match(noHyper.err, /hypernetwork folder .*no-such-hn does not exist/);
  for (const n of ["emb-wide", "emb-missing", "hn-missing", "emb-unused"])
    assert.equal(existsSync(join(dir, `${n}.png`)), false, n);
});

test("convert: LDM → diffusers → LDM keeps every weight; fp16 halves it", async () => {
  const folder = join(dir, "tiny-diffusers");
  const back = join(dir, "back.safetensors");
  const half = join(dir, "half.safetensors");
  for (const argv of [
    ["convert", ckpt, folder, "--tokenizer", tokenizer],
    ["convert", folder, back],
    ["convert", ckpt, half, "--dtype", "fp16"],
  ]) {
    const r = await cli(...argv);
    assert.equal(r.code, 0, r.err);
  }
  assert.ok(existsSync(join(folder, "model_index.json")) && existsSync(join(folder, "tokenizer", "vocab.json")));
  const a = loadSafetensors(ckpt).tensors;
  const b = loadSafetensors(back).tensors;
  const h = loadSafetensors(half).tensors;
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [k, t] of a) assert.deepEqual(b.get(k)!.toArray(), t.toArray(), k);
  assert.equal(h.get("model.diffusion_model.input_blocks.0.0.weight")!.dtype, "float16");
  for (const m of [a, b, h]) for (const t of m.values()) t.dispose();
  const bad = await cli("convert", ckpt, join(dir, "x.ckpt"));
  assert.match(bad.err, /never writes pickles \(\.ckpt\)/);
});

test("inspect: reads a checkpoint, JSON too; refuses malicious and truncated files with a reason", async () => {
  const text = await cli("inspect", ckpt);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /kind {10}sd-checkpoint/);
  assert.match(text.out, /Stable Diffusion 1\.x, epsilon prediction/);
  const json = JSON.parse((await cli("inspect", ckpt, "--json")).out);
  assert.equal(json.kind, "sd-checkpoint");
  assert.deepEqual(json.problems, []);
  assert.ok(json.components.unet > 0 && json.components.vae > 0 && json.components.textEncoder > 0);

  const truncated = join(dir, "truncated.safetensors");
  writeFileSync(truncated, readFileSync(ckpt).subarray(0, 5000));
  const t = await cli("inspect", truncated);
  assert.equal(t.code, 1);
  assert.match(t.err, /truncated\.safetensors: .*(truncat|past the end|shorter)/i);

  // A pickle whose only global is os.system: refused by name, never run.
  const marker = join(dir, "pwned");
  const cmd = Buffer.from(`touch ${marker}`);
  const pickle = Buffer.concat([
    Buffer.from([0x80, 0x02]),
    Buffer.from("cos\nsystem\n", "latin1"),
    Buffer.from([0x58]),
    Buffer.from(new Uint32Array([cmd.length]).buffer),
    cmd,
    Buffer.from([0x85, 0x52, 0x2e]),
  ]);
  const evil = join(dir, "evil.ckpt");
  writeFileSync(evil, pickle);
  const e = await cli("inspect", evil);
  assert.equal(e.code, 1);
  assert.match(e.err, /os\.system/);
  assert.equal(existsSync(marker), false);
});

test("inspect: a kohya LoRA from another tool is described", async () => {
  const r = await cli("inspect", sharedFixture("../realworld/sd1/kohya_lora_locon_sd15.safetensors"), "--json");
  if (r.code !== 0 && /no such file/.test(r.err)) return; // the realworld set may name it differently
  assert.equal(r.code, 0, r.err);
  assert.match(JSON.parse(r.out).kind, /lora|lycoris/);
});

after(() => {});
