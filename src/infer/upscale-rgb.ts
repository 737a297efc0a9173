// Upscaling as 8-bit RGB pictures, and two-stage generation (the base model,
// then the ×4 upscaler, as the Dreambooth paper's cascade): pictures in,
// pictures out, every tensor freed (the live-tensor count is unchanged).
import { cat, noGrad, scope, type Tensor, tensor } from "../engine/index.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import { checkNoiseLevel, notAnUpscaler, type Upscaler } from "../models/upscaler/index.js";
import { type GenerateRgbOptions, type GenerateRgbResult, generateRgb, type RgbImage } from "./generate-rgb.js";
import { extractNetworks } from "./prompt-parser.js";
import { toRgbBytes } from "./txt2img.js";
import { minUpscaleInput, type UpscaleOptions, type UpscaleResult, upscale } from "./upscale.js";

/** Pictures of one size → [B, 3, H, W] in [0, 1] (what the pipeline takes: uint8 / 255). */
export function rgbToTensor(images: readonly RgbImage[]): Tensor {
  if (images.length === 0) throw new Error("no pictures to upscale");
  const { width, height } = images[0];
  for (const img of images) {
    if (img.width !== width || img.height !== height)
      throw new Error(
        `pictures to upscale together must share a size: ${img.width}×${img.height} vs ${width}×${height}`,
      );
  }
  return scope(() =>
    cat(
      images.map((img) =>
        tensor(img.data, { shape: [height, width, 3] })
          .float()
          .div(255)
          .permute(2, 0, 1)
          .unsqueeze(0),
      ),
    ),
  );
}

export interface UpscaleRgbResult {
  images: RgbImage[];
  settings: UpscaleResult["settings"];
}

/** Upscales pictures ×4 (each to 4·width × 4·height). */
export function upscaleRgb(model: Upscaler, images: readonly RgbImage[], o: UpscaleOptions): UpscaleRgbResult {
  return noGrad(() =>
    scope(() => {
      const r = upscale(model, rgbToTensor(images), o);
      try {
        return {
          images: toRgbBytes(r.images).map((img): RgbImage => ({ ...img, channels: 3 })),
          settings: r.settings,
        };
      } finally {
        r.latents.dispose();
        r.images.dispose();
      }
    }),
  );
}

/** The upscaler's own settings in a two-stage call (the prompt, negative and seed are the base's). */
export type SecondStageOptions = Omit<UpscaleOptions, "prompt" | "negative" | "seed" | "onStep">;

/**
 * Checks that `upscaler` can follow `base`: it is a ×4 upscaler, and the
 * base's pictures (width × height) are big enough for it. Called before any
 * work, so a bad pairing costs nothing.
 */
export function checkPairing(
  base: StableDiffusion,
  upscaler: Upscaler,
  size: { width: number; height: number },
  noiseLevel?: number,
): void {
  const why = notAnUpscaler(upscaler);
  if (why) throw new Error(`--upscaler ${upscaler.name} is not a ×4 upscaler: ${why}`);
  if (notAnUpscaler(base) === null)
    throw new Error(`the base model ${base.name} is itself an upscaler, not a text-to-image model`);
  const min = minUpscaleInput(upscaler);
  if (size.width < min || size.height < min)
    throw new Error(
      `the base's ${size.width}×${size.height} pictures are smaller than the upscaler's ${min}×${min} input`,
    );
  // The upscaler's config sample_size is the low-res size it was trained on; a base whose pictures are
  // many times larger or smaller is of another family (an SD base with a tiny upscaler, or the reverse).
  const trained = upscaler.unet.config.sampleSize;
  const ratio = Math.max(size.width, size.height) / trained;
  if (ratio > MAX_FAMILY_RATIO || ratio < 1 / MAX_FAMILY_RATIO)
    throw new Error(
      `the base's ${size.width}×${size.height} pictures do not fit the upscaler ${upscaler.name}, trained on ${trained}×${trained} inputs: a base of another family (ratio ${ratio.toFixed(2)}, the limit is ${MAX_FAMILY_RATIO}×)`,
    );
  if (noiseLevel !== undefined) checkNoiseLevel(upscaler, noiseLevel);
}

/** How far the base's picture size may be from the upscaler's training input (either way). */
export const MAX_FAMILY_RATIO = 8;

export interface TwoStageResult extends GenerateRgbResult {
  /** The base's pictures, before the upscaler. */
  lowRes: RgbImage[];
  upscaleSettings: UpscaleResult["settings"];
}

/** Text → the base's pictures → the upscaler's ×4 pictures, with the same prompt, negative and seed. */
export function generateTwoStage(
  base: StableDiffusion,
  upscaler: Upscaler,
  o: GenerateRgbOptions & { upscale?: SecondStageOptions },
): TwoStageResult {
  const { upscale: second, ...first } = o;
  const scale = 2 ** (base.vae.config.blockOutChannels.length - 1);
  const size = base.unet.config.sampleSize * scale;
  checkPairing(base, upscaler, { width: o.width ?? size, height: o.height ?? size }, second?.noiseLevel);
  const low = generateRgb(base, first);
  const up = upscaleRgb(upscaler, low.images, {
    ...second,
    // <lora:…> tags are the base's business
    prompt: extractNetworks(low.settings.prompt).prompt,
    negative: extractNetworks(low.settings.negative).prompt,
    seed: low.settings.seed,
  });
  return { images: up.images, settings: low.settings, lowRes: low.images, upscaleSettings: up.settings };
}
