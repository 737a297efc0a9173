// The latent ×4 upscaler (stabilityai/stable-diffusion-x4-upscaler) as
// diffusers v0.19.3's StableDiffusionUpscalePipeline holds it
// (huggingface/diffusers src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py):
// a UNet on cat([noisy latents, noised low-res image]) with the noise level as
// its class label, a VAE with its own scaling factor (0.08333), an SD2-style
// text encoder, the main scheduler (v-prediction) and the low-res scheduler
// that noises the image, bounded by max_noise_level. The networks are the
// unet/ and vae/ models with the config fields the upscaler sets.
import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { readJson } from "../../formats/diffusers-folder.js";
import { loadSchedulerConfig, type SchedulerConfigInput } from "../../schedulers/index.js";
import {
  disposeStableDiffusion,
  type LoadedStableDiffusion,
  type LoadStableDiffusionOptions,
  loadStableDiffusion,
  type StableDiffusion,
} from "../stable-diffusion.js";

/** The real model's main scheduler (its scheduler/scheduler_config.json; LDM x4-upscaling.yaml: linear 1e-4 → 2e-2, v). */
export const X4_SCHEDULER_CONFIG: Readonly<SchedulerConfigInput> = Object.freeze({
  _class_name: "DDIMScheduler",
  beta_schedule: "scaled_linear",
  beta_start: 0.0001,
  beta_end: 0.02,
  num_train_timesteps: 1000,
  prediction_type: "v_prediction",
  steps_offset: 1,
  clip_sample: false,
  set_alpha_to_one: false,
});

/** The real model's low_res_scheduler (a DDPM over the same betas; LDM ImageConcatWithNoiseAugmentation). */
export const X4_LOW_RES_SCHEDULER_CONFIG: Readonly<SchedulerConfigInput> = Object.freeze({
  _class_name: "DDPMScheduler",
  beta_schedule: "scaled_linear",
  beta_start: 0.0001,
  beta_end: 0.02,
  num_train_timesteps: 1000,
  clip_sample: false,
  variance_type: "fixed_small",
});

/** model_index.json's max_noise_level of the real model (LDM: max_noise_level 350). */
export const X4_MAX_NOISE_LEVEL = 350;

/** The image channels the UNet reads beside the latents. */
export const LOW_RES_CHANNELS = 3;

export interface Upscaler extends StableDiffusion {
  /** The DDPM config whose add_noise noises the low-resolution image. */
  lowResScheduler: SchedulerConfigInput;
  /** The highest noise level the UNet's class embedding was trained for. */
  maxNoiseLevel: number;
}

export interface LoadedUpscaler extends Upscaler, Pick<LoadedStableDiffusion, "info"> {}

/** Why a loaded model is not a ×4 upscaler, or null when it is one. */
export function notAnUpscaler(m: StableDiffusion): string | null {
  const c = m.unet.config;
  const latent = m.vae.config.latentChannels;
  if (c.numClassEmbeds === undefined)
    return "its UNet has no class embedding for the noise level (num_class_embeds is unset)";
  if (c.inChannels !== latent + LOW_RES_CHANNELS)
    return `its UNet reads ${c.inChannels} channels, not ${latent} latent + ${LOW_RES_CHANNELS} image channels`;
  return null;
}

/** Whether `m` is a ×4 upscaler. */
export function isUpscaler(m: StableDiffusion): m is Upscaler {
  return "maxNoiseLevel" in m && "lowResScheduler" in m;
}

/**
 * Loads a ×4 upscaler from a diffusers folder (model_index.json's
 * max_noise_level, scheduler/ and low_res_scheduler/) or a single-file LDM
 * checkpoint (the real model's schedulers and max noise level; v-prediction
 * unless the caller or the file says otherwise). Loading is strict; a model
 * that is not an upscaler is refused, saying why.
 */
export function loadUpscaler(path: string, o: LoadStableDiffusionOptions = {}): LoadedUpscaler {
  if (!existsSync(path)) throw new Error(`upscaler ${path}: no such file or folder`);
  const folder = statSync(path).isDirectory();
  const model = loadStableDiffusion(path, {
    ...o,
    predictionType: o.predictionType ?? (folder ? undefined : "v_prediction"),
    // a single file does not say the training input size: x4-upscaling.yaml's unet image_size 128
    overrides: folder ? o.overrides : { ...o.overrides, unet: { sampleSize: 128, ...o.overrides?.unet } },
  });
  try {
    return { ...model, ...upscalerExtras(path, model) };
  } catch (e) {
    disposeStableDiffusion(model);
    throw e;
  }
}

/**
 * What makes a loaded model (from `path`) an upscaler: its schedulers and
 * max_noise_level (read from the diffusers folder; the real model's for a
 * single file). Throws, saying why, when the model is not a ×4 upscaler.
 */
export function upscalerExtras(
  path: string,
  model: LoadedStableDiffusion,
): Pick<Upscaler, "scheduler" | "lowResScheduler" | "maxNoiseLevel"> {
  const why = notAnUpscaler(model);
  if (why) throw new Error(`${path} is not a ×4 upscaler: ${why}`);
  const folder = existsSync(path) && statSync(path).isDirectory();
  const dir = folder ? path : dirname(path);
  const index = folder && existsSync(join(dir, "model_index.json")) ? readJson(join(dir, "model_index.json")) : {};
  const max = index.max_noise_level ?? X4_MAX_NOISE_LEVEL;
  const classes = model.unet.config.numClassEmbeds ?? 0;
  if (!Number.isInteger(max) || (max as number) < 0 || (max as number) >= classes)
    throw new Error(`${path}: max_noise_level ${JSON.stringify(max)} is not an integer in [0, ${classes})`);
  const lowResPath = join(dir, "low_res_scheduler", "scheduler_config.json");
  const lowRes = folder && existsSync(lowResPath) ? loadSchedulerConfig(lowResPath) : X4_LOW_RES_SCHEDULER_CONFIG;
  const scheduler = folder ? model.scheduler : { ...X4_SCHEDULER_CONFIG, prediction_type: model.info.predictionType };
  return { scheduler, lowResScheduler: { ...lowRes }, maxNoiseLevel: max as number };
}

/**
 * Makes a diffusers folder saved from an upscaler's weights (formats'
 * saveCheckpoint writes a StableDiffusionPipeline) an upscaler pipeline
 * again: its model_index.json class, max_noise_level and low_res_scheduler
 * entry, and both scheduler configs.
 */
export function completeUpscalerFolder(
  dir: string,
  u: Pick<Upscaler, "scheduler" | "lowResScheduler" | "maxNoiseLevel">,
): void {
  const indexPath = join(dir, "model_index.json");
  const index = readJson(indexPath);
  const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
  const clean = (c: SchedulerConfigInput) =>
    Object.fromEntries(Object.entries(c).filter(([k]) => k !== "_diffusers_version"));
  index._class_name = "StableDiffusionUpscalePipeline";
  index.max_noise_level = u.maxNoiseLevel;
  index.scheduler = ["diffusers", String(u.scheduler._class_name ?? "DDIMScheduler")];
  index.low_res_scheduler = ["diffusers", String(u.lowResScheduler._class_name ?? "DDPMScheduler")];
  mkdirSync(join(dir, "low_res_scheduler"), { recursive: true });
  writeFileSync(join(dir, "scheduler", "scheduler_config.json"), json(clean(u.scheduler)));
  writeFileSync(join(dir, "low_res_scheduler", "scheduler_config.json"), json(clean(u.lowResScheduler)));
  writeFileSync(indexPath, json(index));
}

/** Checks a noise level against the model: an integer in [0, maxNoiseLevel]. */
export function checkNoiseLevel(m: Pick<Upscaler, "maxNoiseLevel">, level: number): number {
  if (!Number.isInteger(level) || level < 0 || level > m.maxNoiseLevel)
    throw new Error(
      `noise level must be an integer in 0..${m.maxNoiseLevel} (the upscaler's max_noise_level), got ${level}`,
    );
  return level;
}

export { disposeStableDiffusion as disposeUpscaler };
