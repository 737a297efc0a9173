// The training config's fields: one schema that drives parsing (files and
// flags), checking, defaults and the `--help` listing. Field names are the
// ones kohya sd-scripts and the A1111 Dreambooth extension users know.
import { SCHEDULE_NAMES, type ScheduleName } from "../engine/optim/index.js";
import { SAMPLER_NAMES, type SamplerName } from "../schedulers/index.js";

export type Method = "dreambooth" | "lora";
export type OptimizerName = "adamw" | "sgd";
export type MixedPrecision = "no" | "fp16" | "bf16";
export type SaveFormat = "ldm_safetensors" | "diffusers" | "lora";

export const METHODS: readonly Method[] = ["dreambooth", "lora"];
export const OPTIMIZERS: readonly OptimizerName[] = ["adamw", "sgd"];
export const MIXED_PRECISIONS: readonly MixedPrecision[] = ["no", "fp16", "bf16"];
export const SAVE_FORMATS: readonly SaveFormat[] = ["ldm_safetensors", "diffusers", "lora"];

export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout: number;
  unet: boolean;
  text_encoder: boolean;
  conv_rank: number;
  conv_alpha: number;
}

export interface ConceptConfig {
  instance_data_dir: string;
  instance_prompt: string;
  class_data_dir: string | null;
  class_prompt: string | null;
  num_class_images: number;
  class_guidance_scale: number;
  class_infer_steps: number;
  class_batch_size: number;
  repeats: number;
  caption_extension: string;
  shuffle_tags: boolean;
  keep_tokens: number;
}

export interface SaveConfig {
  every_n_epochs: number;
  every_n_steps: number;
  keep_last: number;
  formats: SaveFormat[];
  half: boolean;
  state: boolean;
}

export interface SampleConfig {
  every_n_steps: number;
  prompts: string[];
  negative: string;
  steps: number;
  cfg: number;
  sampler: SamplerName;
  seed: number;
}

export interface BucketingConfig {
  enabled: boolean;
  min: number;
  max: number;
  step: number;
}

/** A resolved training config: every field set, paths absolute, defaults filled in. */
export interface TrainConfig {
  model: string;
  workspace: string;
  tokenizer: string | null;
  method: Method;
  use_lora: boolean;
  output_dir: string;
  resolution: number;
  batch_size: number;
  epochs: number;
  max_steps: number;
  gradient_accumulation: number;
  learning_rate: number;
  text_encoder_lr: number;
  lr_scheduler: ScheduleName;
  lr_warmup_steps: number;
  lr_scheduler_num_cycles: number | null;
  lr_scheduler_power: number;
  lr_step_rules: string | null;
  optimizer: OptimizerName;
  weight_decay: number;
  mixed_precision: MixedPrecision;
  seed: number;
  train_text_encoder: boolean;
  prior_loss_weight: number;
  noise_offset: number;
  min_snr_gamma: number;
  clip_skip: number;
  cache_latents: boolean;
  gradient_checkpointing: boolean;
  max_grad_norm: number;
  lora: LoraConfig;
  concepts: ConceptConfig[];
  save: SaveConfig;
  sample: SampleConfig;
  bucketing: BucketingConfig;
}

export type Kind =
  | { t: "int"; min: number; max?: number; multipleOf?: number }
  /** `above`: exclusive lower bound; `min`/`max`/`below`: inclusive / exclusive. */
  | { t: "number"; min?: number; above?: number; max?: number; below?: number }
  | { t: "bool" }
  | { t: "string"; nonEmpty?: boolean; pattern?: RegExp; patternDoc?: string }
  /** A file or folder, resolved against the config file's folder (flags: the current folder). */
  | { t: "path" }
  /** A path, or the name of a workspace model. */
  | { t: "model" }
  | { t: "enum"; values: readonly string[]; refused?: Readonly<Record<string, string>> }
  | { t: "list"; of: Kind; unique?: boolean; nonEmpty?: boolean }
  | { t: "group"; fields: Schema }
  | { t: "objects"; fields: Schema };

export interface Field {
  kind: Kind;
  /** One line for the `--help` listing. */
  doc: string;
  /** The value when unset. Neither `default` nor `auto`: required. */
  default?: unknown;
  /** A default worked out from other fields (config.ts), described in words. */
  auto?: string;
  /** null is a value (JSON null; the flag value `none`). */
  nullable?: boolean;
}

export type Schema = Readonly<Record<string, Field>>;

const int = (min: number, max?: number, multipleOf?: number): Kind => ({ t: "int", min, max, multipleOf });
const bool: Kind = { t: "bool" };
const path: Kind = { t: "path" };
const text: Kind = { t: "string" };

/** Optimizers people know from kohya / the Dreambooth extension that Atelier does not have. */
const REFUSED_OPTIMIZERS: Record<string, string> = {
  adamw8bit: "8-bit AdamW needs bitsandbytes' CUDA kernels, which Atelier does not have; use adamw",
  paged_adamw8bit: "8-bit AdamW needs bitsandbytes' CUDA kernels, which Atelier does not have; use adamw",
  lion: "Lion is not implemented; use adamw",
  lion8bit: "Lion is not implemented; use adamw",
  prodigy: "Prodigy is not implemented; use adamw",
  dadaptation: "D-Adaptation is not implemented; use adamw",
  dadaptadam: "D-Adaptation is not implemented; use adamw",
  adafactor: "Adafactor is not implemented; use adamw",
  sgdnesterov: "use sgd (Nesterov momentum is not exposed)",
};

const LORA: Schema = {
  rank: { kind: int(1, 1024), default: 4, doc: "LoRA rank (kohya network_dim)" },
  alpha: {
    kind: { t: "number", above: 0 },
    auto: "rank (scale 1)",
    doc: "LoRA alpha; the update is scaled by alpha/rank",
  },
  dropout: { kind: { t: "number", min: 0, below: 1 }, default: 0, doc: "dropout on the LoRA down projection's output" },
  unet: { kind: bool, default: true, doc: "put LoRA layers on the UNet" },
  text_encoder: { kind: bool, auto: "train_text_encoder", doc: "put LoRA layers on the text encoder" },
  conv_rank: {
    kind: int(0, 1024),
    default: 0,
    doc: "rank of LoRA on 3×3 convolutions (LoCon, kohya conv_dim); 0 = none",
  },
  conv_alpha: { kind: { t: "number", min: 0 }, auto: "conv_rank", doc: "alpha of the convolution LoRA" },
};

const CONCEPT: Schema = {
  instance_data_dir: { kind: path, doc: "folder of the subject's images (and their caption files)" },
  instance_prompt: {
    kind: text,
    doc: 'caption of images without a caption file, e.g. "photo of sks dog" ("" = captions only)',
  },
  class_data_dir: {
    kind: path,
    nullable: true,
    default: null,
    doc: "class images for prior preservation; missing ones are generated there",
  },
  class_prompt: { kind: text, nullable: true, default: null, doc: 'prompt of the class images, e.g. "photo of a dog"' },
  num_class_images: {
    kind: int(0),
    auto: "100 with a class_data_dir, else 0",
    doc: "class images wanted (generated up to this count)",
  },
  class_guidance_scale: {
    kind: { t: "number", min: 1, max: 50 },
    default: 7.5,
    doc: "guidance scale of class-image generation (A1111 Dreambooth's class_guidance_scale)",
  },
  class_infer_steps: {
    kind: int(1, 1000),
    default: 40,
    doc: "sampling steps of class-image generation (A1111 Dreambooth's class_infer_steps)",
  },
  class_batch_size: {
    kind: int(1, 256),
    default: 1,
    doc: "class images generated at once (diffusers train_dreambooth's --sample_batch_size)",
  },
  repeats: { kind: int(1, 10000), default: 1, doc: "times each image is seen per epoch (kohya's folder prefix)" },
  caption_extension: {
    kind: { t: "string", pattern: /^\.[^/\\]+$/, patternDoc: 'an extension starting with ".", e.g. ".txt"' },
    default: ".txt",
    doc: "extension of the caption file beside each image",
  },
  shuffle_tags: { kind: bool, default: false, doc: "shuffle comma-separated caption tags (kohya shuffle_caption)" },
  keep_tokens: { kind: int(0), default: 0, doc: "leading tags kept in place when shuffling" },
};

const SAVE: Schema = {
  every_n_epochs: { kind: int(0), default: 0, doc: "save every N epochs; 0 = only at the end" },
  every_n_steps: { kind: int(0), default: 0, doc: "save every N steps; 0 = only at the end" },
  keep_last: { kind: int(0), default: 0, doc: "intermediate saves kept (older ones deleted); 0 = all" },
  formats: {
    kind: { t: "list", of: { t: "enum", values: SAVE_FORMATS }, unique: true, nonEmpty: true },
    auto: '["ldm_safetensors"] for dreambooth, ["lora"] when training LoRA',
    doc: "ldm_safetensors (A1111/ComfyUI), diffusers (folder), lora (kohya file); for LoRA runs the first two are the merged model",
  },
  half: { kind: bool, default: false, doc: "save weights as fp16" },
  state: { kind: bool, default: false, doc: "also save the optimizer state and step, to resume" },
};

const SAMPLE: Schema = {
  every_n_steps: { kind: int(0), default: 0, doc: "sample images every N steps; 0 = never during training" },
  prompts: { kind: { t: "list", of: text }, default: [], doc: "prompts to sample" },
  negative: { kind: text, default: "", doc: "negative prompt" },
  steps: { kind: int(1, 1000), default: 20, doc: "sampling steps" },
  cfg: { kind: { t: "number", min: 0, max: 50 }, default: 7, doc: "classifier-free guidance scale" },
  sampler: {
    kind: { t: "enum", values: SAMPLER_NAMES },
    auto: "the workspace model's scheduler, else euler_a",
    doc: "sampler",
  },
  seed: { kind: int(0, 2 ** 32 - 1), auto: "seed", doc: "seed of the sample images" },
};

const BUCKETING: Schema = {
  enabled: { kind: bool, default: false, doc: "aspect-ratio buckets instead of square crops" },
  min: { kind: int(64, 8192, 8), default: 256, doc: "smallest bucket side" },
  max: { kind: int(64, 8192, 8), default: 1024, doc: "largest bucket side" },
  step: { kind: int(8, 1024, 8), default: 64, doc: "bucket sides are multiples of this" },
};

export const CONFIG_SCHEMA: Schema = {
  model: {
    kind: { t: "model" },
    doc: "base model: a .safetensors/.ckpt file, a diffusers folder, or a workspace model (create-model)",
  },
  workspace: { kind: path, auto: "$ATELIER_WORKSPACE, else ./atelier-workspace", doc: "where model names are found" },
  tokenizer: {
    kind: path,
    nullable: true,
    default: null,
    doc: "CLIP tokenizer folder; default: the model's tokenizer/, $ATELIER_TOKENIZER, the HF hub cache",
  },
  method: { kind: { t: "enum", values: METHODS }, default: "dreambooth", doc: "dreambooth (full weights) or lora" },
  use_lora: {
    kind: bool,
    auto: "true for method lora, else false",
    doc: "Dreambooth training LoRA weights (the A1111 extension's Use LoRA); same as method lora",
  },
  output_dir: { kind: path, doc: "where checkpoints, samples and the resolved config are written" },
  resolution: { kind: int(8, 8192, 8), default: 512, doc: "training image side in pixels (multiple of 8)" },
  batch_size: { kind: int(1, 4096), default: 1, doc: "images per step" },
  epochs: { kind: int(1), default: 100, doc: "passes over the images × repeats (A1111: steps per image)" },
  max_steps: { kind: int(0), default: 0, doc: "stop after this many optimizer steps; 0 = epochs decide" },
  gradient_accumulation: { kind: int(1, 4096), default: 1, doc: "batches per optimizer step" },
  learning_rate: {
    kind: { t: "number", above: 0, max: 1 },
    auto: "2e-6 (dreambooth), 1e-4 when training LoRA",
    doc: "learning rate (the UNet's)",
  },
  text_encoder_lr: {
    kind: { t: "number", above: 0, max: 1 },
    auto: "learning_rate",
    doc: "learning rate of the text encoder",
  },
  lr_scheduler: {
    kind: { t: "enum", values: SCHEDULE_NAMES },
    default: "constant",
    doc: "learning-rate schedule (diffusers get_scheduler names)",
  },
  lr_warmup_steps: { kind: int(0), default: 0, doc: "steps of linear warm-up" },
  lr_scheduler_num_cycles: {
    kind: { t: "number", above: 0 },
    nullable: true,
    default: null,
    doc: "cosine: periods (default 0.5); cosine_with_restarts: restarts (default 1)",
  },
  lr_scheduler_power: { kind: { t: "number", above: 0 }, default: 1, doc: "polynomial: the decay's power" },
  lr_step_rules: {
    kind: { t: "string", nonEmpty: true },
    nullable: true,
    default: null,
    doc: 'piecewise_constant: "1:10,0.1:20,0.01" = ×1 before step 10, ×0.1 before 20, then ×0.01',
  },
  optimizer: {
    kind: { t: "enum", values: OPTIMIZERS, refused: REFUSED_OPTIMIZERS },
    default: "adamw",
    doc: "adamw or sgd",
  },
  weight_decay: { kind: { t: "number", min: 0, max: 1 }, auto: "0.01 for adamw, 0 for sgd", doc: "weight decay" },
  mixed_precision: {
    kind: { t: "enum", values: MIXED_PRECISIONS },
    default: "no",
    doc: "autocast dtype of forward passes: no, fp16 or bf16",
  },
  seed: {
    kind: int(0, 2 ** 32 - 1),
    auto: "random, recorded in the resolved config",
    doc: "seed of everything random",
  },
  train_text_encoder: { kind: bool, default: true, doc: "train the text encoder too" },
  prior_loss_weight: {
    kind: { t: "number", min: 0 },
    default: 1,
    doc: "weight of the class (prior-preservation) loss",
  },
  noise_offset: { kind: { t: "number", min: 0, max: 1 }, default: 0, doc: "noise offset (0.05–0.1 darkens/brightens)" },
  min_snr_gamma: { kind: { t: "number", min: 0 }, default: 0, doc: "min-SNR loss weighting gamma; 0 = off, 5 usual" },
  clip_skip: { kind: int(1, 24), default: 1, doc: "text encoder layer used, from the end (A1111 clip skip)" },
  cache_latents: { kind: bool, default: true, doc: "encode images with the VAE once, before training" },
  gradient_checkpointing: { kind: bool, default: false, doc: "recompute activations in backward to save memory" },
  max_grad_norm: { kind: { t: "number", min: 0 }, default: 1, doc: "gradient norm clipping; 0 = none" },
  lora: { kind: { t: "group", fields: LORA }, doc: "LoRA settings (method lora or use_lora)" },
  concepts: { kind: { t: "objects", fields: CONCEPT }, doc: "what to learn: one entry per subject" },
  save: { kind: { t: "group", fields: SAVE }, doc: "what to save, when" },
  sample: { kind: { t: "group", fields: SAMPLE }, doc: "sample images during training" },
  bucketing: { kind: { t: "group", fields: BUCKETING }, doc: "aspect-ratio bucketing" },
};

/**
 * Names from kohya sd-scripts (and the Dreambooth extension) → the field here,
 * so that a config copied from there gets a useful "did you mean".
 */
export const FOREIGN_NAMES: Readonly<Record<string, string>> = {
  pretrained_model_name_or_path: "model",
  train_data_dir: "concepts[].instance_data_dir",
  reg_data_dir: "concepts[].class_data_dir",
  train_batch_size: "batch_size",
  max_train_steps: "max_steps",
  max_train_epochs: "epochs",
  gradient_accumulation_steps: "gradient_accumulation",
  unet_lr: "learning_rate",
  optimizer_type: "optimizer",
  network_dim: "lora.rank",
  network_alpha: "lora.alpha",
  network_dropout: "lora.dropout",
  network_train_unet_only: "lora.text_encoder (false)",
  network_train_text_encoder_only: "lora.unet (false)",
  conv_dim: "lora.conv_rank",
  shuffle_caption: "concepts[].shuffle_tags",
  keep_tokens: "concepts[].keep_tokens",
  caption_extension: "concepts[].caption_extension",
  save_every_n_epochs: "save.every_n_epochs",
  save_every_n_steps: "save.every_n_steps",
  save_last_n_epochs: "save.keep_last",
  save_last_n_steps: "save.keep_last",
  save_model_as: "save.formats",
  save_precision: "save.half",
  save_state: "save.state",
  sample_every_n_steps: "sample.every_n_steps",
  sample_prompts: "sample.prompts",
  sample_sampler: "sample.sampler",
  enable_bucket: "bucketing.enabled",
  min_bucket_reso: "bucketing.min",
  max_bucket_reso: "bucketing.max",
  bucket_reso_steps: "bucketing.step",
  lr_scheduler_type: "lr_scheduler",
  lr_warmup: "lr_warmup_steps",
  stop_text_encoder_training: "train_text_encoder",
  with_prior_preservation: "concepts[].class_data_dir",
  instance_data_dir: "concepts[].instance_data_dir",
  instance_prompt: "concepts[].instance_prompt",
  class_data_dir: "concepts[].class_data_dir",
  class_prompt: "concepts[].class_prompt",
  num_class_images: "concepts[].num_class_images",
  lr: "learning_rate",
  lora_rank: "lora.rank",
  lora_alpha: "lora.alpha",
  lora_unet_rank: "lora.rank",
  lora_txt_rank: "lora.rank",
  train_unet: "lora.unet",
};

/** Words for a kind, as the listing and the errors say it. */
export function kindText(k: Kind): string {
  switch (k.t) {
    case "int": {
      const parts = [`integer >= ${k.min}`];
      if (k.max !== undefined) parts.push(`<= ${k.max}`);
      if (k.multipleOf) parts.push(`multiple of ${k.multipleOf}`);
      return parts.join(", ");
    }
    case "number": {
      const parts: string[] = [];
      if (k.above !== undefined) parts.push(`> ${k.above}`);
      if (k.min !== undefined) parts.push(`>= ${k.min}`);
      if (k.below !== undefined) parts.push(`< ${k.below}`);
      if (k.max !== undefined) parts.push(`<= ${k.max}`);
      return `number${parts.length ? ` ${parts.join(", ")}` : ""}`;
    }
    case "bool":
      return "true|false";
    case "string":
      return k.patternDoc ?? (k.nonEmpty ? "non-empty text" : "text");
    case "path":
      return "path";
    case "model":
      return "path or model name";
    case "enum":
      return k.values.join("|");
    case "list":
      return `list of ${kindText(k.of)}`;
    case "group":
      return "group";
    case "objects":
      return "list of tables";
  }
}

export interface FieldInfo {
  /** Dotted name; list entries as `concepts[].x`. */
  name: string;
  type: string;
  /** The default as JSON, or its rule in words; "required" when there is none. */
  default: string;
  doc: string;
}

/** Every leaf field with its type, default and doc line (for help texts and the UI). */
export function configFields(schema: Schema = CONFIG_SCHEMA, prefix = ""): FieldInfo[] {
  const out: FieldInfo[] = [];
  for (const [name, f] of Object.entries(schema)) {
    const full = `${prefix}${name}`;
    if (f.kind.t === "group") out.push(...configFields(f.kind.fields, `${full}.`));
    else if (f.kind.t === "objects") out.push(...configFields(f.kind.fields, `${full}[].`));
    else {
      const d = f.default !== undefined ? JSON.stringify(f.default) : (f.auto ?? "required");
      out.push({ name: full, type: kindText(f.kind), default: d, doc: f.doc });
    }
  }
  return out;
}

/** The `--help` listing of the config fields and of the override syntax. */
export function describeConfig(): string {
  const rows = configFields();
  const width = Math.max(...rows.map((r) => r.name.length)) + 2;
  const lines = [
    "Training config fields (JSON or TOML file; each also a flag):",
    "  --FIELD VALUE or --FIELD=VALUE; nested: --lora.rank 8; concepts: --concepts.0.instance_prompt TEXT",
    "  (index = count adds a concept); lists: repeat the flag (--sample.prompts A --sample.prompts B;",
    "  the first replaces the file's list) or give JSON (--save.formats '[\"lora\"]', --concepts '[{…}]');",
    "  booleans: --cache_latents, --cache_latents false; null: --tokenizer none. '-' may stand for '_'.",
    "",
  ];
  for (const r of rows) {
    lines.push(`  ${r.name.padEnd(width)}${r.doc}`);
    lines.push(`  ${"".padEnd(width)}${r.type}; ${r.default === "required" ? "required" : `default ${r.default}`}`);
  }
  return lines.join("\n");
}
