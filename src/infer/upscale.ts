// Latent ×4 upscaling, as diffusers v0.19.3's StableDiffusionUpscalePipeline
// does it (huggingface/diffusers
// src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py,
// `__call__`): the image in [0, 1] → 2x−1, noised by the low-res scheduler at
// `noise_level` (its noise drawn first from the seeded CPU generator, with the
// image's shape); latents of the image's own size drawn next; each step feeds
// cat([latents, noised image]) to the UNet with the noise level as class
// label, guided over [uncond, cond]; the VAE decodes latents / scaling_factor.
import { cat, Generator, keep, noGrad, randn, scope, type Tensor, tensor } from "../engine/index.js";
import { checkNoiseLevel, notAnUpscaler, type Upscaler } from "../models/upscaler/index.js";
import { createSampler, NoiseSchedule, type Sampler } from "../schedulers/index.js";
import { encodePrompts } from "./prompt-encoding.js";
import { decodeToImages } from "./txt2img.js";

export interface UpscaleOptions {
  prompt: string;
  negative?: string;
  /** DDIM steps (diffusers' default 75). */
  steps?: number;
  /** Guidance scale (diffusers' default 9). */
  cfg?: number;
  /** How much the low-resolution image is noised, 0..max_noise_level (diffusers' default 20). */
  noiseLevel?: number;
  seed?: number;
  /** The sampler (default the model's own DDIM). */
  sampler?: string;
  /** DDIM eta (default 0). */
  eta?: number;
  onStep?: (i: number, total: number) => void;
}

export interface UpscaleResult {
  /** The final latents [B, 4, h, w] (the input image's size). */
  latents: Tensor;
  /** Images [B, 3, 4h, 4w] in [0, 1], float32 on the CPU. */
  images: Tensor;
  settings: Required<Omit<UpscaleOptions, "onStep">>;
}

/** The smallest side the UNet takes: one pixel per latent at its deepest level. */
export function minUpscaleInput(model: Upscaler): number {
  return 2 ** (model.unet.config.blockOutChannels.length - 1);
}

/** The settings with diffusers' defaults, checked against the model and the image [B, 3, h, w]. */
export function resolveUpscale(model: Upscaler, image: Tensor, o: UpscaleOptions): UpscaleResult["settings"] {
  const why = notAnUpscaler(model);
  if (why) throw new Error(`the upscaler model is not a ×4 upscaler: ${why}`);
  const s = {
    prompt: o.prompt,
    negative: o.negative ?? "",
    steps: o.steps ?? 75,
    cfg: o.cfg ?? 9,
    noiseLevel: o.noiseLevel ?? 20,
    seed: o.seed ?? Math.floor(Math.random() * 2 ** 32),
    sampler: o.sampler ?? "ddim",
    eta: o.eta ?? 0,
  };
  if (typeof s.prompt !== "string") throw new Error("prompt must be a string");
  if (!(Number.isInteger(s.steps) && s.steps >= 1 && s.steps <= 1000))
    throw new Error(`steps must be an integer in 1..1000, got ${s.steps}`);
  if (!(Number.isFinite(s.cfg) && s.cfg >= 0)) throw new Error(`cfg must be a number >= 0, got ${s.cfg}`);
  if (!(Number.isSafeInteger(s.seed) && s.seed >= 0))
    throw new Error(`seed must be a non-negative integer, got ${s.seed}`);
  checkNoiseLevel(model, s.noiseLevel);
  if (image.ndim !== 4 || image.size(1) !== 3)
    throw new Error(`the image to upscale must be [B, 3, H, W], got [${image.shape}]`);
  const min = minUpscaleInput(model);
  const [h, w] = [image.size(2), image.size(3)];
  if (h < min || w < min)
    throw new Error(`the image to upscale is ${w}×${h}; this upscaler needs at least ${min}×${min} pixels`);
  return s;
}

/** The low-resolution image noised for the UNet: low_res_scheduler.add_noise(2x−1, noise, level). */
export function noiseLowRes(model: Upscaler, image01: Tensor, noise: Tensor, levels: readonly number[]): Tensor {
  const schedule = new NoiseSchedule(model.lowResScheduler);
  for (const l of levels) checkNoiseLevel(model, l);
  return scope(() => schedule.addNoise(image01.mul(2).sub(1), noise, levels));
}

/** The noise levels as the UNet's class labels [n] (int64, on the model's device). */
export function noiseLabels(model: Upscaler, level: number, n: number): Tensor {
  return tensor(
    BigInt64Array.from({ length: n }, () => BigInt(level)),
    { device: model.device },
  );
}

/**
 * One guided model output: the UNet on cat([latents ×2, noised ×2]) (uncond
 * first), then uncond + cfg·(cond − uncond). `context` holds the negative
 * rows then the prompt rows when cfg ≠ 1.
 */
export function upscaleModelOutput(
  model: Upscaler,
  sampler: Sampler,
  latents: Tensor,
  t: number,
  noised: Tensor,
  context: Tensor,
  level: number,
  cfg: number,
): Tensor {
  return scope(() => {
    const guided = cfg !== 1;
    const input = sampler.scaleModelInput(guided ? cat([latents, latents]) : latents, t);
    const x = cat([input, guided ? cat([noised, noised]) : noised], 1);
    const out = model.unet.forward(x, t, context, noiseLabels(model, level, x.size(0)));
    if (!guided) return out;
    const [uncond, cond] = out.chunk(2);
    return uncond.add(cond.sub(uncond), cfg);
  });
}

/** Upscales `image` ([B, 3, h, w] in [0, 1]) ×4; the returned tensors are the caller's to dispose. */
export function upscale(model: Upscaler, image: Tensor, o: UpscaleOptions): UpscaleResult {
  const settings = resolveUpscale(model, image, o);
  const { cfg, steps, noiseLevel } = settings;
  const sampler = createSampler(settings.sampler, model.scheduler, { eta: settings.eta });
  const dtype = model.unet.parameters()[0].dtype;
  const batch = image.size(0);
  try {
    return noGrad(() =>
      scope(() => {
        const guided = cfg !== 1;
        const prompts = guided
          ? [...Array(batch).fill(settings.negative), ...Array(batch).fill(settings.prompt)]
          : Array(batch).fill(settings.prompt);
        const context = encodePrompts(model.textEncoder, model.tokenizer, prompts, { padId: 0 }).to(
          model.device,
          dtype,
        );
        const generator = new Generator(settings.seed);
        const lowResNoise = randn(image.shape, { generator });
        const noised = noiseLowRes(model, image.to("cpu", "float32"), lowResNoise, [noiseLevel]).to(
          model.device,
          dtype,
        );
        sampler.setTimesteps(steps);
        const shape = [batch, model.vae.config.latentChannels, image.size(2), image.size(3)];
        let latents = scope(() => randn(shape, { generator }).to(model.device, dtype).mul(sampler.initNoiseSigma));
        for (const [i, t] of sampler.timesteps.entries()) {
          const next = keep(
            scope(() => {
              const out = upscaleModelOutput(model, sampler, latents, t, noised, context, noiseLevel, cfg);
              return sampler.step(out, t, latents, generator).prevSample;
            }),
          );
          latents.dispose();
          latents = next;
          o.onStep?.(i + 1, steps);
        }
        generator.dispose();
        const images = decodeToImages(model.vae, latents);
        return { latents, images, settings };
      }),
    );
  } finally {
    sampler.dispose();
  }
}
