// The world the config tests share: a temporary project folder (a base file,
// instance and class folders, an empty workspace), one config as TOML and as
// JSON, and helpers to load configs from there and to expect a ConfigError.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, type LoadTrainConfigOptions, loadTrainConfig, type TrainConfig } from "../../src/train/config.js";
import { tempDir } from "../helpers.js";

export const dir = tempDir("atelier-config-");
export const sub = join(dir, "project");
for (const d of ["project/dog", "project/cat", "project/class", "elsewhere/imgs", "ws"]) {
  mkdirSync(join(dir, d), { recursive: true });
}
writeFileSync(join(sub, "base.safetensors"), "not really a checkpoint: the config does not load it");
const env = { ATELIER_WORKSPACE: join(dir, "ws") };
export const opts: LoadTrainConfigOptions = { env, cwd: join(dir, "elsewhere") };

const TOML = `
model = "base.safetensors"
output_dir = "out"
method = "lora"
learning_rate = 1e-4
resolution = 768
seed = 42
train_text_encoder = false

[lora]
rank = 16
alpha = 8.0
conv_rank = 4

[[concepts]]
instance_data_dir = "dog"
instance_prompt = "photo of sks dog"
class_data_dir = "class"
class_prompt = "photo of a dog"
num_class_images = 50

[[concepts]]
instance_data_dir = "cat"
instance_prompt = ""
repeats = 10
caption_extension = ".caption"

[save]
every_n_steps = 100
formats = ["lora", "ldm_safetensors"]

[sample]
every_n_steps = 50
prompts = ["photo of sks dog", "sks dog on the beach"]
sampler = "dpmpp_2m"
`;

const JSON_CONFIG = {
  model: "base.safetensors",
  output_dir: "out",
  method: "lora",
  learning_rate: 1e-4,
  resolution: 768,
  seed: 42,
  train_text_encoder: false,
  lora: { rank: 16, alpha: 8, conv_rank: 4 },
  concepts: [
    {
      instance_data_dir: "dog",
      instance_prompt: "photo of sks dog",
      class_data_dir: "class",
      class_prompt: "photo of a dog",
      num_class_images: 50,
    },
    { instance_data_dir: "cat", instance_prompt: "", repeats: 10, caption_extension: ".caption" },
  ],
  save: { every_n_steps: 100, formats: ["lora", "ldm_safetensors"] },
  sample: { every_n_steps: 50, prompts: ["photo of sks dog", "sks dog on the beach"], sampler: "dpmpp_2m" },
};

writeFileSync(join(sub, "cfg.toml"), TOML);
writeFileSync(join(sub, "cfg.json"), JSON.stringify(JSON_CONFIG, null, 2));

/** A minimal valid config object (paths relative to `sub`). */
export const minimal = (more: Record<string, unknown> = {}): Record<string, unknown> => ({
  model: "base.safetensors",
  output_dir: "out",
  concepts: [{ instance_data_dir: "dog", instance_prompt: "photo of sks dog" }],
  ...more,
});

export const load = (src: Record<string, unknown> | string | undefined, overrides: string[] = []): TrainConfig =>
  loadTrainConfig(src, overrides, { ...opts, baseDir: sub });

export function fails(fn: () => unknown, message: RegExp, field?: string): void {
  assert.throws(
    fn,
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `not a ConfigError: ${e}`);
      assert.match(e.message, message);
      if (field !== undefined) assert.equal(e.field, field);
      return true;
    },
    `no error matching ${message}`,
  );
}
