// Training end to end on a tiny checkpoint and images the test draws:
// Dreambooth with prior preservation (class images generated, loss split,
// loss falls), resume equals an uninterrupted run, LoRA files, artifacts.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { Generator, noGrad, randn, scope, tensor } from "../../src/engine/index.js";
import { encodePng } from "../../src/formats/png.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { encodePrompts } from "../../src/infer/prompt-encoding.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { NoiseSchedule } from "../../src/schedulers/index.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { train } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const root = tempDir("atelier-train-");
const ckpt = join(root, "base.safetensors");
const instanceDir = join(root, "instance");
const tokenizer = sharedFixture("tokenizer");
const quiet = { log: () => {}, progressOut: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream };

/** A 32×32 image: a square of `fg` on `bg`, at an offset. */
function squareImage(fg: number[], bg: number[], offset: number): Buffer {
  const data = new Uint8Array(32 * 32 * 3);
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const inside = x >= 8 + offset && x < 22 + offset && y >= 8 && y < 22;
      data.set(inside ? fg : bg, (y * 32 + x) * 3);
    }
  }
  return encodePng({ width: 32, height: 32, channels: 3, data });
}

before(() => {
  writeTinyCheckpoint(ckpt, 5);
  mkdirSync(instanceDir);
  for (let i = 0; i < 4; i++)
    writeFileSync(join(instanceDir, `img${i}.png`), squareImage([250, 220, 0], [200, 20, 20], i));
});

function config(out: string, extra: Record<string, unknown> = {}, overrides: string[] = []) {
  return loadTrainConfig(
    {
      model: ckpt,
      tokenizer,
      method: "dreambooth",
      output_dir: join(root, out),
      resolution: 32,
      batch_size: 1,
      max_steps: 6,
      learning_rate: 1e-3,
      seed: 3,
      train_text_encoder: false,
      cache_latents: false,
      concepts: [{ instance_data_dir: instanceDir, instance_prompt: "a sks square" }],
      save: { formats: ["ldm_safetensors"], state: false },
      ...extra,
    },
    overrides,
  );
}

/** The denoising loss of a checkpoint on the instance images, with fixed noise and timesteps. */
function evalLoss(path: string): number {
  const model = loadStableDiffusion(path, { tokenizerDir: tokenizer });
  try {
    return noGrad(() =>
      scope(() => {
        const schedule = new NoiseSchedule(model.scheduler);
        const g = new Generator(123);
        let total = 0;
        const context = encodePrompts(model.textEncoder, model.tokenizer, ["a sks square"]);
        for (let i = 0; i < 4; i++) {
          const x = instanceImage(i);
          const latents = model.vae.encodeToLatents(x, g);
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
  } finally {
    disposeStableDiffusion(model);
  }
}

/** The i-th instance image as [1, 3, 32, 32] in [-1, 1], drawn the same way as the PNGs. */
function instanceImage(i: number) {
  const data = new Float32Array(3 * 32 * 32);
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const inside = x >= 8 + i && x < 22 + i && y >= 8 && y < 22;
      const rgb = inside ? [250, 220, 0] : [200, 20, 20];
      for (let c = 0; c < 3; c++) data[c * 1024 + y * 32 + x] = (rgb[c] / 255) * 2 - 1;
    }
  }
  return tensor(data, { shape: [1, 3, 32, 32] });
}

test("Dreambooth with prior preservation: class images generated, loss split per step, artifacts, loss falls", async () => {
  const classDir = join(root, "class");
  const c = config("db", {
    max_steps: 12,
    prior_loss_weight: 0.5,
    concepts: [
      {
        instance_data_dir: instanceDir,
        instance_prompt: "a sks square",
        class_data_dir: classDir,
        class_prompt: "a square",
        num_class_images: 2,
      },
    ],
    save: { formats: ["ldm_safetensors"], every_n_steps: 4, keep_last: 1, state: false },
    sample: { every_n_steps: 6, prompts: ["a sks square", "a square"], steps: 2 },
  });
  const r = await train(c, quiet);
  assert.equal(r.steps, 12);
  assert.equal(readdirSync(classDir).filter((f) => f.endsWith(".png")).length, 2, "class images generated");
  assert.equal(r.losses.length, 12);
  for (const s of r.losses) {
    assert.ok(s.prior_loss !== null, "every batch holds a class example");
    assert.ok(Math.abs(s.loss - (s.instance_loss + 0.5 * s.prior_loss!)) < 1e-5, "loss = instance + 0.5·prior");
  }
  const kinds = r.manifest.artifacts.map((a) => `${a.kind}:${a.path}`);
  assert.ok(kinds.includes("checkpoint:model.safetensors"), kinds.join(", "));
  assert.equal(r.manifest.artifacts.filter((a) => a.kind === "checkpoint").length, 1, "keep_last 1 pruned the others");
  assert.equal(existsSync(join(c.output_dir, "model-step000004.safetensors")), false);
  assert.ok(existsSync(join(c.output_dir, "samples", "step-000006.png")));
  assert.ok(existsSync(join(c.output_dir, "logs", "loss.jsonl")));
  const before = evalLoss(ckpt);
  const after = evalLoss(join(c.output_dir, "model.safetensors"));
  assert.ok(after < before, `denoising loss on the subject fell: ${before.toFixed(4)} → ${after.toFixed(4)}`);
});

test("resume from a saved state continues exactly: the loss sequence equals an uninterrupted run", async () => {
  const whole = await train(config("whole"), quiet);
  const part = await train(config("part", { save: { formats: ["ldm_safetensors"], state: true } }), {
    ...quiet,
    stopAfter: 3,
  });
  assert.equal(part.steps, 3);
  const state = join(part.outputDir, "state-step000003");
  assert.ok(existsSync(join(state, "state.json")));
  const resumed = await train(config("part", { save: { formats: ["ldm_safetensors"], state: true } }), {
    ...quiet,
    resume: state,
  });
  assert.equal(resumed.steps, 6);
  assert.deepEqual(
    resumed.losses.map((s) => s.loss),
    whole.losses.map((s) => s.loss),
  );
  const a = loadSafetensors(join(whole.outputDir, "model.safetensors")).tensors;
  const b = loadSafetensors(join(resumed.outputDir, "model.safetensors")).tensors;
  for (const [k, t] of a) assert.deepEqual(b.get(k)!.toArray(), t.toArray(), k);
  for (const m of [a, b]) for (const t of m.values()) t.dispose();
});

test("a corrupt image is skipped and named in a warning; a folder with none usable stops with a clear error", async () => {
  const dir = join(root, "mixed");
  mkdirSync(dir);
  writeFileSync(join(dir, "good.png"), squareImage([0, 0, 250], [250, 250, 250], 0));
  writeFileSync(join(dir, "broken.png"), Buffer.from("this is not a png"));
  const messages: string[] = [];
  const r = await train(
    config("mixed", { max_steps: 1, concepts: [{ instance_data_dir: dir, instance_prompt: "a sks square" }] }),
    { ...quiet, log: (m) => messages.push(m) },
  );
  assert.equal(r.steps, 1);
  assert.ok(
    messages.some((m) => m.includes("broken.png")),
    messages.join("\n"),
  );
  const empty = join(root, "empty");
  mkdirSync(empty);
  writeFileSync(join(empty, "broken.png"), Buffer.from("nope"));
  await assert.rejects(
    train(config("empty", { concepts: [{ instance_data_dir: empty, instance_prompt: "x" }] }), quiet),
    /no usable image|empty/i,
  );
});

test("LoRA: method lora and Dreambooth with use_lora write the same kind of kohya file; a merged checkpoint too", async () => {
  const lora = await train(
    config("lora", { method: "lora", max_steps: 3, learning_rate: 1e-3, save: { formats: ["lora"], state: false } }),
    quiet,
  );
  const dbLora = await train(
    config("db-lora", {
      use_lora: true,
      max_steps: 3,
      learning_rate: 1e-3,
      save: { formats: ["lora", "ldm_safetensors"], state: false },
    }),
    quiet,
  );
  const a = loadSafetensors(join(lora.outputDir, "lora.safetensors"));
  const b = loadSafetensors(join(dbLora.outputDir, "lora.safetensors"));
  try {
    const keys = [...a.tensors.keys()].sort();
    assert.deepEqual([...b.tensors.keys()].sort(), keys);
    assert.ok(
      keys.length > 0 &&
        keys.every((k) => /^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$/.test(k)),
    );
    for (const md of [a.metadata, b.metadata]) {
      assert.equal(md.ss_network_module, "networks.lora");
      assert.equal(md.ss_base_model_version, "sd_v1");
      assert.equal(md.ss_steps, "3");
    }
    const ups = [...a.tensors].filter(([k]) => k.endsWith("lora_up.weight"));
    assert.ok(
      scope(() => ups.some(([, t]) => t.abs().max().item() > 0)),
      "training moved the zero-initialised up weights",
    );
  } finally {
    for (const f of [a, b]) for (const t of f.tensors.values()) t.dispose();
  }
  const merged = loadSafetensors(join(dbLora.outputDir, "lora-merged.safetensors")).tensors;
  const base = loadSafetensors(ckpt).tensors;
  try {
    assert.deepEqual([...merged.keys()].sort(), [...base.keys()].sort());
    const k = [...merged.keys()].find((x) => x.includes("attn1.to_q.weight"))!;
    assert.notDeepEqual(merged.get(k)!.toArray(), base.get(k)!.toArray(), "the LoRA is merged into the saved weights");
  } finally {
    for (const m of [merged, base]) for (const t of m.values()) t.dispose();
  }
});

test("LyCORIS through the trainer: LoHa from kohya network_args (method lora) and DoRA-LoKr (Dreambooth use_lora)", async () => {
  const loha = await train(
    config("loha", {
      method: "lora",
      max_steps: 2,
      learning_rate: 1e-3,
      lora: { network_args: ["algo=loha", "conv_dim=2", "conv_alpha=1", "train_norm=True"] },
      save: { formats: ["lora"], state: false },
    }),
    quiet,
  );
  const lokr = await train(
    config("dora-lokr", {
      use_lora: true,
      max_steps: 2,
      learning_rate: 1e-3,
      lora: { algo: "lokr", factor: 4, weight_decompose: true },
      save: { formats: ["lora"], state: false },
    }),
    quiet,
  );
  const a = loadSafetensors(join(loha.outputDir, "lora.safetensors"));
  const b = loadSafetensors(join(lokr.outputDir, "lora.safetensors"));
  try {
    for (const f of [a, b]) assert.equal(f.metadata.ss_network_module, "lycoris.kohya");
    assert.equal(JSON.parse(a.metadata.ss_network_args).algo, "loha");
    assert.equal(JSON.parse(a.metadata.ss_network_args).conv_dim, "2");
    assert.ok([...a.tensors.keys()].some((k) => k.includes("resnets") && k.endsWith(".hada_w2_a")));
    const moved = [...a.tensors].filter(([k]) => k.endsWith(".hada_w2_a"));
    assert.ok(
      scope(() => moved.some(([, t]) => t.abs().max().item() > 0)),
      "training moved the zero-initialised hada_w2_a",
    );
    // train_norm: the blocks' norms trained as LyCORIS norm modules, saved in the norm's shape
    const norms = [...a.tensors].filter(([k]) => k.endsWith(".w_norm") || k.endsWith(".b_norm"));
    assert.ok(norms.some(([k]) => k.includes("resnets") && k.endsWith("_norm1.w_norm")));
    assert.ok(
      scope(() => norms.every(([, t]) => t.ndim === 1) && norms.some(([, t]) => t.abs().max().item() > 0)),
      "training moved the zero-initialised norm deltas",
    );
    assert.equal(JSON.parse(a.metadata.ss_network_args).train_norm, "True");
    assert.ok([...b.tensors.keys()].some((k) => k.endsWith(".dora_scale")));
    assert.ok([...b.tensors.keys()].some((k) => k.endsWith(".lokr_w1")));
  } finally {
    for (const f of [a, b]) for (const t of f.tensors.values()) t.dispose();
  }
});
