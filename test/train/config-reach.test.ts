// Every field of the config schema reaches the code that uses it: tiny runs
// whose configs between them set every field get a config that records each
// field the trainer (and the methods, the data layer, saving, sampling)
// reads; every leaf of the schema must be read. Writing the config as JSON
// (config.json) or into a file's metadata does not count, and nothing may copy the
// config wholesale (a spread would read every field and prove nothing).
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { configFields, loadTrainConfig, type TrainConfig } from "../../src/train/config.js";
import { createTrainer } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();

const w = makeBaselineWorld();
after(() => w.dispose());

interface Reads {
  read: Set<string>;
  /** Objects whose keys were listed (Object.keys, a spread): a wholesale copy. */
  listed: Set<string>;
}

/** Reads that only copy a value into a file's metadata (kohya's ss_* keys) do not count as using it. */
const copiesOnly = /\btrainMetadata\b/;

function note(r: Reads, path: string): void {
  if (r.read.has(path)) return;
  if (!copiesOnly.test(new Error().stack ?? "")) r.read.add(path);
}

/** The config behind a proxy that records the dotted path (`concepts[].repeats`) of every leaf read. */
function tracked<T extends object>(value: T, path: string, r: Reads): T {
  return new Proxy(value, {
    get(target, key, receiver) {
      if (key === "toJSON") return () => target; // JSON.stringify reads the plain object
      const v = Reflect.get(target, key, receiver);
      if (typeof key === "symbol") return v;
      if (Array.isArray(target)) {
        if (/^\d+$/.test(key) && typeof v === "object" && v !== null) return tracked(v, `${path}[]`, r);
        note(r, path); // any use of a list of values reads the list
        return v;
      }
      const here = path ? `${path}.${key}` : key;
      if (typeof v === "object" && v !== null) return tracked(v, here, r);
      note(r, here);
      return v;
    },
    ownKeys(target) {
      if (!Array.isArray(target)) r.listed.add(path || "(the config)");
      return Reflect.ownKeys(target);
    },
  });
}

const concept = { instance_data_dir: w.instanceDir, instance_prompt: "a sks square" };
const common = {
  model: w.ckpt,
  tokenizer: sharedFixture("tokenizer"),
  resolution: 32,
  seed: 3,
  sample: {
    prompts: ["a sks square"],
    steps: 1,
    every_n_steps: 2,
    negative: "blurry",
    cfg: 5,
    sampler: "ddim",
    seed: 9,
  },
};

/** Between them these set every field (a field only some methods read is set for one of those). */
const runs: Record<string, Record<string, unknown>> = {
  dreambooth: {
    ...common,
    method: "dreambooth",
    max_steps: 4,
    batch_size: 2,
    gradient_accumulation: 2,
    learning_rate: 1e-4,
    text_encoder_lr: 5e-5,
    train_text_encoder: true,
    lr_scheduler: "cosine_with_restarts",
    lr_warmup_steps: 1,
    lr_scheduler_num_cycles: 2,
    optimizer: "sgd",
    weight_decay: 0.001,
    mixed_precision: "fp16", // read, then refused on the CPU with a warning (bf16 autocast: issue 12)
    prior_loss_weight: 0.7,
    noise_offset: 0.05,
    min_snr_gamma: 5,
    clip_skip: 2,
    cache_latents: true,
    gradient_checkpointing: true,
    max_grad_norm: 0.5,
    ema_decay: 0.99,
    concepts: [
      {
        ...concept,
        class_data_dir: join(w.root, "reach-class"),
        class_prompt: "a square",
        num_class_images: 2,
        class_guidance_scale: 3,
        class_infer_steps: 2,
        class_batch_size: 2,
        repeats: 2,
        caption_extension: ".caption",
        shuffle_tags: true,
        keep_tokens: 1,
      },
    ],
    save: {
      every_n_steps: 2,
      every_n_epochs: 1,
      keep_last: 1,
      formats: ["ldm_safetensors", "diffusers"],
      half: true,
      state: true,
    },
  },
  lora: {
    ...common,
    method: "lora",
    max_steps: 0,
    epochs: 1,
    lr_scheduler: "polynomial",
    lr_scheduler_power: 2,
    train_text_encoder: true,
    lora: { rank: 2, alpha: 1, dropout: 0.1, unet: true, conv_rank: 2, conv_alpha: 1 },
    concepts: [concept],
    save: { formats: ["lora", "ldm_safetensors"] },
  },
  // bucketing needs resolution >= 64, where a step of the tiny model costs ~4 s: one step only
  buckets: {
    ...common,
    method: "lora",
    resolution: 64,
    max_steps: 1,
    bucketing: { enabled: true, min: 64, max: 128, step: 64 },
    concepts: [concept],
  },
  // stage 2 on the fixtures' tiny ×4 upscaler: 32² pictures, an 8² low-res input
  dreambooth_upscaler: {
    model: sharedFixture("upscaler"),
    tokenizer: sharedFixture("tokenizer"),
    resolution: 32,
    seed: 3,
    method: "dreambooth_upscaler",
    max_steps: 1,
    upscaler: { noise_level: 30, lora_rank: 2, lora_alpha: 1 },
    concepts: [concept],
    save: { formats: ["lora", "diffusers"] },
  },
  textual_inversion: {
    ...common,
    method: "textual_inversion",
    max_steps: 1,
    textual_inversion: {
      token: "zqx-sq",
      init_text: "square",
      vectors: 2,
      templates: ["a [name], [filewords]"],
      lora_rank: 2,
      lora_lr: 1e-4,
      bundle: true,
    },
    concepts: [concept],
    save: { formats: ["embedding_pt", "embedding_safetensors"] },
  },
  hypernetwork: {
    ...common,
    method: "hypernetwork",
    max_steps: 1,
    hypernetwork: {
      name: "hn",
      sizes: [32, 64],
      layer_structure: [1, 1.5, 1],
      activation: "swish",
      weight_init: "XavierNormal",
      layer_norm: true,
      use_dropout: true,
      last_layer_dropout: true,
      activate_output: true,
    },
    concepts: [concept],
  },
  piecewise: {
    ...common,
    use_lora: true,
    max_steps: 2,
    lr_scheduler: "piecewise_constant",
    lr_step_rules: "1:1,0.5",
    concepts: [concept],
  },
};

test("every schema field is read by the run it configures", async () => {
  const r: Reads = { read: new Set(), listed: new Set() };
  for (const [name, raw] of Object.entries(runs)) {
    const c = loadTrainConfig({ ...raw, output_dir: join(w.root, `reach-${name}`), workspace: join(w.root, "ws") });
    const trainer = createTrainer(tracked(c, "", r) as TrainConfig);
    const result = await trainer.run();
    assert.equal(result.reason, "done", name);
  }
  const leaves = configFields().map((f) => f.name);
  const unread = leaves.filter((n) => !r.read.has(n));
  assert.deepEqual(unread, [], `fields no code read: ${unread.join(", ")}`);
  assert.deepEqual([...r.listed], [], "the config was copied wholesale somewhere");
});
