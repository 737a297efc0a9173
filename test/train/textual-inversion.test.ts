// Textual Inversion (src/train/methods/textual-inversion.ts): its config is
// checked, a shortened run on the tiny model moves the new word's vectors
// and lowers the loss, the saved A1111 .pt loads as an embedding, a resumed
// run equals an uninterrupted one (pivotal tuning's embedding-first runs too,
// on either side of embedding_steps), the text encoder stays bit-identical,
// and a word of the tokenizer's vocabulary is refused before anything runs.
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { loadEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { Generator, noGrad, randn, scope, type Tensor, tensor } from "../../src/engine/index.js";
import { AdamW } from "../../src/engine/optim/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { encodePrompts } from "../../src/infer/prompt-encoding.js";
import {
  disposeStableDiffusion,
  type LoadedStableDiffusion,
  loadStableDiffusion,
} from "../../src/models/stable-diffusion.js";
import { NoiseSchedule } from "../../src/schedulers/index.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { initVectors, textualInversion } from "../../src/train/methods/textual-inversion.js";
import { train } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();
const w = makeBaselineWorld();
after(() => w.dispose());
const quiet = { log: () => {}, progressOut: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream };

/** The world's i-th instance image as [1, 3, 32, 32] in [-1, 1]: a yellow square on red (baseline-runs.ts). */
function instanceImage(i: number): Tensor {
  const data = new Float32Array(3 * 32 * 32);
  for (let y = 0; y < 32; y++)
    for (let x = 0; x < 32; x++) {
      const inside = x >= 8 + i && x < 22 + i && y >= 8 && y < 22;
      const rgb = inside ? [250, 220, 0] : [200, 20, 20];
      for (let ch = 0; ch < 3; ch++) data[ch * 1024 + y * 32 + x] = rgb[ch] / 127.5 - 1;
    }
  return tensor(data, { shape: [1, 3, 32, 32] });
}

/** Denoising loss on the instance images at fixed noise and timesteps, the prompt naming the word with `vectors`. */
function evalLoss(model: LoadedStableDiffusion, vectors: Tensor): number {
  const ids = model.tokenizer.encodeTokens("zqx-square");
  const lookup = {
    findAt: (tokens: readonly number[], at: number) =>
      ids.every((id, i) => tokens[at + i] === id) ? { name: "zqx-square", vectors, length: ids.length } : undefined,
  };
  return noGrad(() =>
    scope(() => {
      const schedule = new NoiseSchedule(model.scheduler);
      const g = new Generator(123);
      const context = encodePrompts(model.textEncoder, model.tokenizer, ["a photo of a zqx-square, yellow"], {
        embeddings: lookup,
      });
      let total = 0;
      for (let i = 0; i < 4; i++) {
        const latents = model.vae.encodeToLatents(instanceImage(i), g);
        const noise = randn(latents.shape, { generator: g });
        for (const t of [100, 400, 700]) {
          const ts = tensor(BigInt64Array.from([BigInt(t)]));
          const pred = model.unet.forward(schedule.addNoise(latents, noise, ts), ts, context);
          total += pred.sub(noise).square().mean().item();
        }
      }
      g.dispose();
      return total / 12;
    }),
  );
}

const raw = (name: string, extra: Record<string, unknown> = {}) => ({
  model: w.ckpt,
  tokenizer: sharedFixture("tokenizer"),
  output_dir: join(w.root, name),
  method: "textual_inversion",
  resolution: 32,
  batch_size: 2,
  max_steps: 10,
  seed: 3,
  cache_latents: false,
  learning_rate: 0.1,
  textual_inversion: { token: "zqx-square", init_text: "square", vectors: 2 },
  concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "yellow" }],
  ...extra,
});

test("the config: A1111's defaults, and the token and text-encoder mistakes named", () => {
  const c = loadTrainConfig(raw("cfg"));
  assert.equal(loadTrainConfig({ ...raw("cfg"), learning_rate: undefined }).learning_rate, 5e-3);
  assert.deepEqual(c.save.formats, ["embedding_pt"]);
  assert.equal(c.train_text_encoder, false);
  assert.match(c.textual_inversion.templates[0], /\[name\].*\[filewords\]/);
  const bad = (extra: Record<string, unknown>, message: RegExp) =>
    assert.throws(() => loadTrainConfig(raw("cfg", extra)), message);
  bad({ textual_inversion: { token: "" } }, /textual_inversion\.token is empty/);
  bad({ textual_inversion: { token: "my word" } }, /holds prompt syntax or spaces/);
  bad({ textual_inversion: { token: "(x)" } }, /holds prompt syntax/);
  bad({ train_text_encoder: true }, /trains only the new word's vectors/);
  bad({ textual_inversion: { token: "x-y", templates: ["a photo"] } }, /no template line holds \[name\]/);
  bad({ method: "dreambooth" }, /textual_inversion\.token.*method is not textual_inversion/);
});

test("a word of the tokenizer's vocabulary is refused before anything runs or is written", async () => {
  const c = loadTrainConfig(raw("clash", { textual_inversion: { token: "star" } }));
  await assert.rejects(train(c, quiet), /'star' is a word of the tokenizer's vocabulary.*diffusers refuses/);
  assert.ok(!existsSync(c.output_dir) || readdirSync(c.output_dir).every((f) => !f.endsWith(".pt")));
});

test("a shortened run learns the word: its vectors move from the init text's, the loss falls, A1111's .pt is saved", async () => {
  const c = loadTrainConfig(raw("run", { save: { formats: ["embedding_pt", "embedding_safetensors"] } }));
  const r = await train(c, quiet);
  assert.equal(r.steps, 10);
  const pt = loadEmbeddingFile(join(c.output_dir, "zqx-square.pt"));
  const st = loadEmbeddingFile(join(c.output_dir, "zqx-square.safetensors"));
  const model = loadStableDiffusion(w.ckpt, { tokenizerDir: sharedFixture("tokenizer") });
  try {
    assert.equal(pt.layout, "a1111");
    assert.equal(pt.sdCheckpointName, "base");
    assert.deepEqual(pt.vectors.shape, [2, 32]);
    assert.deepEqual(st.vectors.toArray(), pt.vectors.toArray());
    const init = initVectors(model, "square", 2);
    const moved = scope(() => pt.vectors.sub(init).abs().max().item());
    const [base, learned] = [evalLoss(model, init), evalLoss(model, pt.vectors)];
    init.dispose();
    assert.ok(moved > 1e-3, `the vectors moved by ${moved}`);
    // the tiny random model's text conditioning moves its loss little: the margin is 1e-4 (measured 2.7e-4)
    assert.ok(learned < base - 1e-4, `the denoising loss with the word fell: ${base} → ${learned}`);
  } finally {
    pt.vectors.dispose();
    st.vectors.dispose();
    disposeStableDiffusion(model);
  }
  assert.ok(r.losses.every((s) => Number.isFinite(s.loss)));
});

test("resume from a saved state continues exactly; only the new vectors train, the text encoder is bit-identical", async () => {
  const whole = await train(loadTrainConfig(raw("whole", { max_steps: 4 })), quiet);
  const cfg = raw("part", { max_steps: 4, save: { formats: ["embedding_pt"], state: true } });
  await train(loadTrainConfig(cfg), { ...quiet, stopAfter: 2 });
  const resumed = await train(loadTrainConfig(cfg), { ...quiet, resume: join(w.root, "part", "state-step000002") });
  assert.deepEqual(
    resumed.losses.map((s) => s.loss),
    whole.losses.map((s) => s.loss),
  );
  const a = loadEmbeddingFile(join(w.root, "whole", "zqx-square.pt"));
  const b = loadEmbeddingFile(join(w.root, "part", "zqx-square.pt"));
  assert.deepEqual(b.vectors.toArray(), a.vectors.toArray());
  a.vectors.dispose();
  b.vectors.dispose();

  // The method on a model: a few optimiser steps move only its vectors.
  const model = loadStableDiffusion(w.ckpt, { tokenizerDir: sharedFixture("tokenizer") });
  const c = loadTrainConfig(raw("direct"));
  const generator = new Generator(1);
  const method = textualInversion.create(c, { model, generator, log: () => {} });
  const before = new Map([...model.textEncoder.stateDict()].map(([k, t]) => [k, t.clone()]));
  try {
    const [group] = method.groups();
    assert.equal(group.params.length, 1);
    const opt = new AdamW([group.params[0]], { lr: 0.05 });
    const start = group.params[0].clone();
    for (let i = 0; i < 3; i++) {
      scope(() => {
        const timesteps = tensor(BigInt64Array.from([500n, 20n]));
        const context = method.encodeText!({ prompts: ["yellow", "red"], timesteps } as never);
        context.pow(2).mean().backward();
      });
      opt.step();
      opt.zeroGrad();
    }
    assert.ok(scope(() => group.params[0].sub(start).abs().max().item()) > 1e-3, "the vectors trained");
    start.dispose();
    opt.dispose?.();
    for (const [k, t] of model.textEncoder.stateDict())
      assert.deepEqual(t.toArray(), before.get(k)!.toArray(), `text encoder ${k} changed`);
  } finally {
    for (const t of before.values()) t.dispose();
    method.dispose();
    generator.dispose();
    disposeStableDiffusion(model);
  }
});

test("pivotal tuning: a UNet LoRA trains with the embedding; the LoRA file bundles it as bundle_emb.*", async () => {
  const c = loadTrainConfig(
    raw("pivotal", {
      max_steps: 3,
      textual_inversion: { token: "zqx-square", lora_rank: 2, lora_lr: 1e-2, bundle: true },
    }),
  );
  assert.throws(
    () => loadTrainConfig(raw("pivotal", { textual_inversion: { token: "zqx-square", bundle: true } })),
    /bundle needs a LoRA/,
  );
  await train(c, quiet);
  const emb = loadEmbeddingFile(join(c.output_dir, "zqx-square.pt"));
  const { tensors, metadata } = loadSafetensors(join(c.output_dir, "zqx-square-lora.safetensors"));
  try {
    assert.equal(metadata.ss_network_dim, "2");
    assert.deepEqual(tensors.get("bundle_emb.zqx-square.string_to_param.*")!.toArray(), emb.vectors.toArray());
    const ups = [...tensors].filter(([k]) => k.startsWith("lora_unet_") && k.endsWith("lora_up.weight"));
    assert.ok(ups.length > 0);
    const moved = Math.max(...ups.map(([, t]) => scope(() => t.abs().max().item())));
    assert.ok(moved > 0, "the LoRA's up weights (zero at the start) trained");
  } finally {
    emb.vectors.dispose();
    for (const t of tensors.values()) t.dispose();
  }
});

test("pivotal tuning, embedding first: the LoRA stays bit-identical for embedding_steps, then moves", async () => {
  const c = loadTrainConfig(
    raw("pivotal-first", {
      max_steps: 4,
      save: { formats: ["embedding_pt"], every_n_steps: 1, keep_last: 0, state: false },
      textual_inversion: { token: "zqx-square", lora_rank: 2, lora_lr: 1e-2, embedding_steps: 2 },
    }),
  );
  assert.throws(
    () => loadTrainConfig(raw("pivotal-bad", { textual_inversion: { token: "zqx-square", embedding_steps: 2 } })),
    /embedding_steps needs a LoRA/,
  );
  await train(c, quiet);
  const read = (tag: string) => {
    const { tensors } = loadSafetensors(join(c.output_dir, `zqx-square${tag}-lora.safetensors`));
    const out = new Map([...tensors].filter(([k]) => k.startsWith("lora_unet_")).map(([k, t]) => [k, t.toArray()]));
    for (const t of tensors.values()) t.dispose();
    return out;
  };
  const emb = (tag: string) => {
    const e = loadEmbeddingFile(join(c.output_dir, `zqx-square${tag}.pt`));
    const v = e.vectors.toArray();
    e.vectors.dispose();
    return v;
  };
  const [s1, s2, s4] = ["-step000001", "-step000002", ""].map(read);
  assert.ok(s1.size > 0);
  assert.deepEqual(s2, s1, "the LoRA did not change during the embedding-only steps");
  for (const [k, v] of s1)
    if (k.endsWith("lora_up.weight"))
      assert.ok(
        v.every((x) => x === 0),
        `${k} starts at zero`,
      );
  assert.notDeepEqual(emb("-step000002"), emb("-step000001"), "the embedding trained meanwhile");
  const moved = [...s4].filter(([k, v]) => k.endsWith("lora_up.weight") && v.some((x) => x !== 0));
  assert.ok(moved.length > 0, "after embedding_steps the LoRA trains");
});

test("pivotal tuning, embedding first: resumed before and after the embedding_steps boundary, the run is the uninterrupted one", async () => {
  const settings = {
    max_steps: 4,
    save: { formats: ["embedding_pt"], state: true, every_n_steps: 1, keep_last: 0 },
    textual_inversion: { token: "zqx-square", lora_rank: 2, lora_lr: 1e-2, embedding_steps: 2 },
  };
  const whole = await train(loadTrainConfig(raw("first-whole", settings)), quiet);
  const files = (name: string) => {
    const out = new Map<string, number[]>();
    const lora = loadSafetensors(join(w.root, name, "zqx-square-lora.safetensors")).tensors;
    for (const [k, t] of lora) if (k.startsWith("lora_unet_")) out.set(k, t.toArray());
    for (const t of lora.values()) t.dispose();
    const e = loadEmbeddingFile(join(w.root, name, "zqx-square.pt"));
    out.set("embedding", e.vectors.toArray());
    e.vectors.dispose();
    return out;
  };
  const expected = files("first-whole");
  // step 1: the LoRA still frozen when it resumes; step 3: past the boundary, the LoRA trainable from the start
  for (const stop of [1, 3]) {
    const name = `first-part${stop}`;
    await train(loadTrainConfig(raw(name, settings)), { ...quiet, stopAfter: stop });
    const tag = `state-step${String(stop).padStart(6, "0")}`;
    const resumed = await train(loadTrainConfig(raw(name, settings)), { ...quiet, resume: join(w.root, name, tag) });
    assert.deepEqual(
      resumed.losses.map((s) => s.loss),
      whole.losses.map((s) => s.loss),
      `resumed at step ${stop}: the same losses`,
    );
    assert.deepEqual(files(name), expected, `resumed at step ${stop}: the same LoRA and embedding, bit for bit`);
  }
});
