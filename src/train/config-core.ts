// The fields of the training config that every method shares (the methods
// add their own sections: see methods/). Field names are the ones kohya
// sd-scripts and the A1111 Dreambooth extension users know. The method and
// save-format names come from the method registry, which is why the schema
// is made by a function: this file imports no method.
import { SCHEDULE_NAMES } from "../engine/optim/index.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { f, type Infer } from "./config-fields.js";

export const OPTIMIZERS = ["adamw", "adamw8bit", "lion", "prodigy", "adafactor", "sgd"] as const;
export const MIXED_PRECISIONS = ["no", "fp16", "bf16"] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];
export type MixedPrecision = (typeof MIXED_PRECISIONS)[number];

/** Optimizers people know from kohya / the Dreambooth extension that Atelier does not have. */
const REFUSED_OPTIMIZERS: Record<string, string> = {
  paged_adamw8bit: "paged optimizers (CUDA unified memory) are not implemented; use adamw8bit",
  pagedadamw8bit: "paged optimizers (CUDA unified memory) are not implemented; use adamw8bit",
  lion8bit: "8-bit Lion is not implemented; use lion",
  dadaptation: "D-Adaptation is not implemented; use adamw",
  dadaptadam: "D-Adaptation is not implemented; use adamw",
  sgdnesterov: "use sgd (Nesterov momentum is not exposed)",
};

const text = f.text({ doc: "" });

export const CONCEPT_FIELDS = {
  instance_data_dir: f.path({ doc: "folder of the subject's images (and their caption files)" }),
  instance_prompt: f.text({
    doc: 'caption of images without a caption file, e.g. "photo of sks dog" ("" = captions only)',
  }),
  class_data_dir: f.nullable(f.path({ doc: "class images for prior preservation; missing ones are generated there" }), {
    default: null,
  }),
  class_prompt: f.nullable(f.text({ doc: 'prompt of the class images, e.g. "photo of a dog"' }), { default: null }),
  num_class_images: f.int({
    min: 0,
    auto: "100 with a class_data_dir, else 0",
    doc: "class images wanted (generated up to this count)",
  }),
  class_guidance_scale: f.number({
    min: 1,
    max: 50,
    default: 7.5,
    doc: "guidance scale of class-image generation (A1111 Dreambooth's class_guidance_scale)",
  }),
  class_infer_steps: f.int({
    min: 1,
    max: 1000,
    default: 40,
    doc: "sampling steps of class-image generation (A1111 Dreambooth's class_infer_steps)",
  }),
  class_batch_size: f.int({
    min: 1,
    max: 256,
    default: 1,
    doc: "class images generated at once (diffusers train_dreambooth's --sample_batch_size)",
  }),
  repeats: f.int({ min: 1, max: 10000, default: 1, doc: "times each image is seen per epoch (kohya's folder prefix)" }),
  caption_extension: f.text({
    pattern: /^\.[^/\\]+$/,
    patternDoc: 'an extension starting with ".", e.g. ".txt"',
    default: ".txt",
    doc: "extension of the caption file beside each image",
  }),
  shuffle_tags: f.bool({ default: false, doc: "shuffle comma-separated caption tags (kohya shuffle_caption)" }),
  keep_tokens: f.int({ min: 0, default: 0, doc: "leading tags kept in place when shuffling" }),
};

const saveFields = (formats: readonly string[]) => ({
  every_n_epochs: f.int({ min: 0, default: 0, doc: "save every N epochs; 0 = only at the end" }),
  every_n_steps: f.int({ min: 0, default: 0, doc: "save every N steps; 0 = only at the end" }),
  keep_last: f.int({ min: 0, default: 0, doc: "intermediate saves kept (older ones deleted); 0 = all" }),
  formats: f.list(f.oneOf(formats, { doc: "" }), {
    unique: true,
    nonEmpty: true,
    auto: "the method's default format",
    doc: "ldm_safetensors (A1111/ComfyUI), diffusers (folder), lora (kohya file); for LoRA runs the first two are the merged model",
  }),
  half: f.bool({ default: false, doc: "save weights as fp16" }),
  state: f.bool({ default: false, doc: "also save the optimizer state and step, to resume" }),
});

const SAMPLE_FIELDS = {
  every_n_steps: f.int({ min: 0, default: 0, doc: "sample images every N steps; 0 = never during training" }),
  prompts: f.list(text, { default: [], doc: "prompts to sample" }),
  negative: f.text({ default: "", doc: "negative prompt" }),
  steps: f.int({ min: 1, max: 1000, default: 20, doc: "sampling steps" }),
  cfg: f.number({ min: 0, max: 50, default: 7, doc: "classifier-free guidance scale" }),
  sampler: f.oneOf(SAMPLER_NAMES, { auto: "the workspace model's scheduler, else euler_a", doc: "sampler" }),
  seed: f.int({ min: 0, max: 2 ** 32 - 1, auto: "seed", doc: "seed of the sample images" }),
  embeddings_dir: f.list(f.path({ doc: "an embeddings folder" }), {
    default: [],
    doc: "embedding folders whose words the sample prompts may use (A1111's --embeddings-dir)",
  }),
  hypernetwork_dir: f.list(f.path({ doc: "a hypernetworks folder" }), {
    default: [],
    doc: "folders for the sample prompts' <hypernet:NAME:m> tags (A1111's --hypernetwork-dir)",
  }),
};

const BUCKETING_FIELDS = {
  enabled: f.bool({ default: false, doc: "aspect-ratio buckets instead of square crops" }),
  min: f.int({ min: 64, max: 8192, multipleOf: 8, default: 256, doc: "smallest bucket side" }),
  max: f.int({ min: 64, max: 8192, multipleOf: 8, default: 1024, doc: "largest bucket side" }),
  step: f.int({ min: 8, max: 1024, multipleOf: 8, default: 64, doc: "bucket sides are multiples of this" }),
};

/** What the shared fields need to know of the registered methods. */
export interface MethodSummary {
  name: string;
  formats: readonly string[];
  defaultLearningRate: number;
}

/** The shared fields, with the registry's method names, save formats and learning-rate defaults. */
export function coreSchema(specs: readonly MethodSummary[]) {
  const methods = specs.map((s) => s.name);
  const formats = [...new Set(specs.flatMap((s) => s.formats))];
  const lrs = specs.map((s) => `${s.defaultLearningRate.toExponential()} (${s.name})`).join(", ");
  return {
    model: f.model({
      doc: "base model: a .safetensors/.ckpt file, a diffusers folder, or a workspace model (create-model)",
    }),
    workspace: f.path({ auto: "$ATELIER_WORKSPACE, else ./atelier-workspace", doc: "where model names are found" }),
    tokenizer: f.nullable(
      f.path({ doc: "CLIP tokenizer folder; default: the model's tokenizer/, $ATELIER_TOKENIZER, the HF hub cache" }),
      { default: null },
    ),
    method: f.oneOf(methods, { default: "dreambooth", doc: `training method: ${methods.join(", ")}` }),
    output_dir: f.path({ doc: "where checkpoints, samples and the resolved config are written" }),
    resolution: f.int({
      min: 8,
      max: 8192,
      multipleOf: 8,
      default: 512,
      doc: "training image side in pixels (multiple of 8)",
    }),
    batch_size: f.int({ min: 1, max: 4096, default: 1, doc: "images per step" }),
    epochs: f.int({ min: 1, default: 100, doc: "passes over the images × repeats (A1111: steps per image)" }),
    max_steps: f.int({ min: 0, default: 0, doc: "stop after this many optimizer steps; 0 = epochs decide" }),
    gradient_accumulation: f.int({ min: 1, max: 4096, default: 1, doc: "batches per optimizer step" }),
    learning_rate: f.number({
      above: 0,
      max: 1,
      auto: `the method's: ${lrs}`,
      doc: "learning rate (the UNet's)",
    }),
    text_encoder_lr: f.number({ above: 0, max: 1, auto: "learning_rate", doc: "learning rate of the text encoder" }),
    lr_scheduler: f.oneOf(SCHEDULE_NAMES, {
      default: "constant",
      doc: "learning-rate schedule (diffusers get_scheduler names)",
    }),
    lr_warmup_steps: f.int({ min: 0, default: 0, doc: "steps of linear warm-up" }),
    lr_scheduler_num_cycles: f.nullable(
      f.number({ above: 0, doc: "cosine: periods (default 0.5); cosine_with_restarts: restarts (default 1)" }),
      { default: null },
    ),
    lr_scheduler_power: f.number({ above: 0, default: 1, doc: "polynomial: the decay's power" }),
    lr_step_rules: f.nullable(
      f.text({
        nonEmpty: true,
        doc: 'piecewise_constant: "1:10,0.1:20,0.01" = ×1 before step 10, ×0.1 before 20, then ×0.01',
      }),
      { default: null },
    ),
    optimizer: f.oneOf(OPTIMIZERS, {
      refused: REFUSED_OPTIMIZERS,
      anyCase: true,
      default: "adamw",
      doc: "kohya's optimizer_type, any case: AdamW, AdamW8bit (bitsandbytes' 8-bit states), Lion, Prodigy, Adafactor, SGD",
    }),
    optimizer_args: f.list(f.text({ nonEmpty: true, doc: "" }), {
      default: [],
      doc: 'kohya\'s optimizer_args: "key=value" with the optimizer\'s python names, e.g. ["betas=0.9,0.99", "relative_step=False"]',
    }),
    weight_decay: f.number({
      min: 0,
      max: 1,
      auto: "0.01 for adamw and adamw8bit, else 0 (or optimizer_args' weight_decay)",
      doc: "weight decay",
    }),
    mixed_precision: f.oneOf(MIXED_PRECISIONS, {
      default: "no",
      doc: "autocast dtype of forward passes: no, fp16 or bf16",
    }),
    weight_dtype: f.oneOf(["float32", "fp16", "bf16"] as const, {
      default: "float32",
      doc: "storage of the frozen weights (the UNet under an adapter, the VAE, an untrained text encoder), as OneTrainer's weight_dtype; fp16/bf16 need the same mixed_precision",
    }),
    full_fp16: f.bool({
      default: false,
      doc: "kohya's full_fp16: the trained weights themselves in float16 (needs mixed_precision fp16)",
    }),
    full_bf16: f.bool({
      default: false,
      doc: "kohya's full_bf16: the trained weights themselves in bfloat16 (needs mixed_precision bf16)",
    }),
    seed: f.int({
      min: 0,
      max: 2 ** 32 - 1,
      auto: "random, recorded in the resolved config",
      doc: "seed of everything random",
    }),
    train_text_encoder: f.bool({ default: true, doc: "train the text encoder too" }),
    prior_loss_weight: f.number({ min: 0, default: 1, doc: "weight of the class (prior-preservation) loss" }),
    noise_offset: f.number({ min: 0, max: 1, default: 0, doc: "noise offset (0.05–0.1 darkens/brightens)" }),
    min_snr_gamma: f.number({ min: 0, default: 0, doc: "min-SNR loss weighting gamma; 0 = off, 5 usual" }),
    clip_skip: f.int({ min: 1, max: 24, default: 1, doc: "text encoder layer used, from the end (A1111 clip skip)" }),
    cache_latents: f.bool({ default: true, doc: "encode images with the VAE once, before training" }),
    gradient_checkpointing: f.bool({ default: false, doc: "recompute activations in backward to save memory" }),
    max_grad_norm: f.number({ min: 0, default: 1, doc: "gradient norm clipping; 0 = none" }),
    on_nan: f.oneOf(["stop", "skip"] as const, {
      default: "stop",
      doc: "a NaN/Inf loss or gradient: stop (the newest saved state stays good) or skip that step's update",
    }),
    ema_decay: f.number({
      min: 0,
      below: 1,
      default: 0,
      doc: "exponential moving average of the trained weights (saved instead of them); 0 = off, 0.999 usual",
    }),
    concepts: f.objects(CONCEPT_FIELDS, "what to learn: one entry per subject"),
    save: f.group(saveFields(formats), "what to save, when"),
    sample: f.group(SAMPLE_FIELDS, "sample images during training"),
    bucketing: f.group(BUCKETING_FIELDS, "aspect-ratio bucketing"),
  };
}

/** The resolved shared part of a config: what every method's code can read. */
export type CoreConfig = Infer<ReturnType<typeof coreSchema>>;
export type ConceptConfig = CoreConfig["concepts"][number];
export type SaveConfig = CoreConfig["save"];
export type SampleConfig = CoreConfig["sample"];
export type BucketingConfig = CoreConfig["bucketing"];

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
  network_module: "lora.algo",
  network_args: "lora.network_args",
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
