// One txt2img call as 8-bit RGB pictures: generate, turn the [0, 1] images
// into bytes (toRgbBytes, diffusers' numpy_to_pil rounding), free the
// tensors. Everyone who wants pixels (the CLI, training samples, class
// images, eval, the shapes base's quality check, the demo) calls this, so no
// caller disposes txt2img's tensors by hand.
import { noGrad, scope, type Tensor } from "../engine/index.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import { type Txt2ImgOptions, type Txt2ImgResult, toRgbBytes, txt2img } from "./txt2img.js";

/** An 8-bit RGB picture, rows top to bottom, HWC. */
export interface RgbImage {
  width: number;
  height: number;
  channels: 3;
  data: Uint8Array;
}

export interface GenerateRgbOptions extends Txt2ImgOptions {
  /** Sees the final latents [B, C, h, w] (e.g. to save them) just before they are freed. */
  onLatents?: (latents: Tensor) => void;
}

export interface GenerateRgbResult {
  /** One picture per batch item, in batch order. */
  images: RgbImage[];
  /** The settings used, with defaults filled in (txt2img's). */
  settings: Txt2ImgResult["settings"];
}

/** txt2img, as RGB bytes; no tensor outlives the call (the live-tensor count is unchanged). */
export function generateRgb(model: StableDiffusion, o: GenerateRgbOptions): GenerateRgbResult {
  const { onLatents, ...options } = o;
  return noGrad(() =>
    scope(() => {
      const r = txt2img(model, options);
      try {
        onLatents?.(r.latents);
        const images = toRgbBytes(r.images).map((img): RgbImage => ({ ...img, channels: 3 }));
        return { images, settings: r.settings };
      } finally {
        // txt2img keep()s its latents, so the scope alone would not free them
        r.latents.dispose();
        r.images.dispose();
      }
    }),
  );
}
