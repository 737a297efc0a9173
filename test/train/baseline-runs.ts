// Tiny training runs whose per-step losses were recorded with the trainer as
// it was before the redesign of issue 10 (test/fixtures/trainer_baseline.json,
// written by `node dist/test/train/baseline-runs.js --record`): the trainer
// must keep giving exactly these numbers. One run per method shape:
// Dreambooth with prior preservation (class images generated), LoRA with
// LoCon and min-SNR, Dreambooth + LoRA with the text encoder, gradient
// accumulation and a warm-up/cosine schedule.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { encodePng } from "../../src/formats/png.js";
import { loadTrainConfig, type TrainConfig } from "../../src/train/config.js";
import { sharedFixture, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

export const BASELINE_FILE = join(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "test",
  "fixtures",
  "trainer_baseline.json",
);

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

export interface BaselineWorld {
  root: string;
  ckpt: string;
  instanceDir: string;
  dispose(): void;
}

/** A tiny checkpoint and four instance images in a fresh temporary folder. */
export function makeBaselineWorld(): BaselineWorld {
  const root = tempDir("atelier-baseline-");
  const ckpt = join(root, "base.safetensors");
  const instanceDir = join(root, "instance");
  writeTinyCheckpoint(ckpt, 5);
  mkdirSync(instanceDir);
  for (let i = 0; i < 4; i++)
    writeFileSync(join(instanceDir, `img${i}.png`), squareImage([250, 220, 0], [200, 20, 20], i));
  return { root, ckpt, instanceDir, dispose: () => rmSync(root, { recursive: true, force: true }) };
}

/** The raw configs of the recorded runs (output folders inside the world). */
export function baselineConfigs(w: BaselineWorld): Record<string, TrainConfig> {
  const common = {
    model: w.ckpt,
    tokenizer: sharedFixture("tokenizer"),
    resolution: 32,
    batch_size: 1,
    seed: 3,
    cache_latents: false,
    save: { state: false },
  };
  const concept = { instance_data_dir: w.instanceDir, instance_prompt: "a sks square" };
  const raw: Record<string, Record<string, unknown>> = {
    dreambooth_prior: {
      ...common,
      method: "dreambooth",
      max_steps: 5,
      learning_rate: 1e-3,
      train_text_encoder: false,
      prior_loss_weight: 0.5,
      concepts: [{ ...concept, class_data_dir: join(w.root, "class"), class_prompt: "a square", num_class_images: 2 }],
      save: { formats: ["ldm_safetensors"], state: false },
    },
    lora_locon: {
      ...common,
      method: "lora",
      max_steps: 5,
      learning_rate: 2e-3,
      min_snr_gamma: 5,
      noise_offset: 0.05,
      lora: { rank: 4, alpha: 2, conv_rank: 2 },
      train_text_encoder: false,
      concepts: [concept],
      save: { formats: ["lora"], state: false },
    },
    dreambooth_lora_te: {
      ...common,
      method: "dreambooth",
      use_lora: true,
      max_steps: 4,
      gradient_accumulation: 2,
      learning_rate: 1e-3,
      text_encoder_lr: 5e-4,
      lr_scheduler: "cosine",
      lr_warmup_steps: 1,
      train_text_encoder: true,
      concepts: [concept],
      save: { formats: ["lora"], state: false },
    },
  };
  const out: Record<string, TrainConfig> = {};
  for (const [name, r] of Object.entries(raw)) out[name] = loadTrainConfig({ ...r, output_dir: join(w.root, name) });
  return out;
}

export type Baseline = Record<string, { loss: number; lr: number; terms: Record<string, number | null> }[]>;

export function readBaseline(file: string = BASELINE_FILE): Baseline {
  return JSON.parse(readFileSync(file, "utf8")) as Baseline;
}

/** Records the baseline with the old `train()` API (run once, before the redesign). */
async function record(): Promise<void> {
  const { train } = await import("../../src/train/trainer.js");
  const w = makeBaselineWorld();
  const out: Baseline = {};
  try {
    for (const [name, c] of Object.entries(baselineConfigs(w))) {
      const quiet = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;
      // biome-ignore lint/suspicious/noExplicitAny: the pre-redesign API
      const r = await (train as any)(c, { log: () => {}, progressOut: quiet });
      out[name] = r.losses.map((s: Record<string, number>) => ({
        loss: s.loss,
        lr: s.lr,
        terms: { instance_loss: s.instance_loss, prior_loss: s.prior_loss },
      }));
    }
  } finally {
    w.dispose();
  }
  writeFileSync(BASELINE_FILE, `${JSON.stringify(out, null, 1)}\n`);
  console.log(`wrote ${BASELINE_FILE}`);
}

if (process.argv.includes("--record")) await record();
