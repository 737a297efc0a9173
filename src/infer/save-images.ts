// Writing generated images: PNGs with A1111's "parameters" chunk, atomically,
// and the final latent as safetensors.
import { basename, extname } from "node:path";
import type { Tensor } from "../engine/index.js";
import { writeAll, writeFileAtomic } from "../formats/atomic-write.js";
import { a1111Parameters, encodePng } from "../formats/png.js";
import { saveSafetensors } from "../formats/safetensors.js";
import type { GenerateRgbResult } from "./generate-rgb.js";
import type { UpscaleRgbResult } from "./upscale-rgb.js";

/** A1111's names for our samplers, for the parameters text. */
export const A1111_SAMPLER_NAMES: Record<string, string> = {
  ddpm: "DDPM",
  ddim: "DDIM",
  euler: "Euler",
  euler_a: "Euler a",
  dpmpp_2m: "DPM++ 2M",
  dpmpp_2m_karras: "DPM++ 2M Karras",
};

/** `out.png` for one image; `out-0.png`, `out-1.png`, … for a batch. */
export function imagePaths(out: string, count: number): string[] {
  if (count === 1) return [out];
  const ext = extname(out) || ".png";
  const stem = out.slice(0, out.length - extname(out).length);
  return Array.from({ length: count }, (_, i) => `${stem}-${i}${ext}`);
}

/** Throws unless `out` names a .png file (checked before generating, so a bad name costs no run). */
export function checkImageOut(out: string): void {
  if (extname(out).toLowerCase() !== ".png") throw new Error(`--out must name a .png file, got '${basename(out)}'`);
}

/** A1111's PNG `parameters` text for the settings of one txt2img call (the batch size when > 1). */
export function parametersText(s: GenerateRgbResult["settings"], modelName: string): string {
  return a1111Parameters({
    prompt: s.prompt,
    negative: s.negative,
    steps: s.steps,
    sampler: A1111_SAMPLER_NAMES[s.sampler] ?? s.sampler,
    cfg: s.cfg,
    seed: s.seed,
    width: s.width,
    height: s.height,
    model: modelName,
    clipSkip: s.clipSkip,
    extra: s.batch > 1 ? { "Batch size": s.batch } : {},
  });
}

export function saveImages(result: GenerateRgbResult, out: string, modelName: string): string[] {
  checkImageOut(out);
  const s = result.settings;
  const text = parametersText(s, modelName);
  const paths = imagePaths(out, s.batch);
  result.images.forEach((img, i) => {
    const png = encodePng(img, { parameters: text });
    writeFileAtomic(paths[i], (fd) => writeAll(fd, png));
  });
  return paths;
}

/** A1111's parameters text for an upscale, with the noise level and the input size. */
export function upscaleParameters(s: UpscaleRgbResult["settings"], size: [number, number], model: string): string {
  return a1111Parameters({
    prompt: s.prompt,
    negative: s.negative,
    steps: s.steps,
    sampler: s.sampler === "ddim" ? "DDIM" : s.sampler,
    cfg: s.cfg,
    seed: s.seed,
    width: size[0],
    height: size[1],
    model,
    extra: { "Noise level": s.noiseLevel },
  });
}

/** Writes the upscaled pictures as PNGs (out.png, or out-0.png, … for several). */
export function saveUpscaled(r: UpscaleRgbResult, out: string, model: string): string[] {
  const paths = imagePaths(out, r.images.length);
  r.images.forEach((img, i) => {
    const png = encodePng(img, { parameters: upscaleParameters(r.settings, [img.width, img.height], model) });
    writeFileAtomic(paths[i], (fd) => writeAll(fd, png));
  });
  return paths;
}

/** The final latent under the key `latent`, for tests and tools. */
export function saveLatent(latent: Tensor, path: string): void {
  saveSafetensors(path, { latent }, { format: "pt" });
}
