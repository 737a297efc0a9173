// atelier upscale: a picture ×4 with the latent upscaler (flags → library calls).
import { existsSync } from "node:fs";
import type { GenerateRgbOptions } from "../infer/generate-rgb.js";
import { checkImageOut, saveImages, saveLatent, saveUpscaled } from "../infer/save-images.js";
import { minUpscaleInput } from "../infer/upscale.js";
import { generateTwoStage, upscaleRgb } from "../infer/upscale-rgb.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import { checkNoiseLevel, disposeUpscaler, loadUpscaler } from "../models/upscaler/index.js";
import { loadImage } from "../train/data/image.js";
import { num, parse, required, str, UsageError } from "./args.js";

export const UPSCALE_SUMMARY =
  "--model UPSCALER --image IN.png --prompt TEXT [--negative --noise-level N --steps --cfg --seed --out]: ×4 upscale";

export async function upscaleCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      model: { type: "string" },
      image: { type: "string" },
      prompt: { type: "string" },
      negative: { type: "string" },
      "noise-level": { type: "string" },
      steps: { type: "string" },
      cfg: { type: "string" },
      seed: { type: "string" },
      tokenizer: { type: "string" },
      device: { type: "string" },
      out: { type: "string" },
    },
    { min: 0, max: 0, names: "only flags" },
  );
  const modelPath = required(values, "model");
  const imagePath = required(values, "image");
  const prompt = str(values, "prompt");
  if (prompt === undefined) throw new UsageError("--prompt is required");
  const options = {
    prompt,
    negative: str(values, "negative"),
    noiseLevel: num(values, "noise-level", { integer: true, min: 0 }),
    steps: num(values, "steps", { integer: true, min: 1, max: 1000 }),
    cfg: num(values, "cfg", { min: 0 }),
    seed: num(values, "seed", { integer: true, min: 0 }),
  };
  const out = str(values, "out") ?? "atelier-upscaled.png";
  checkImageOut(out);
  if (!existsSync(imagePath)) throw new UsageError(`--image ${imagePath}: no such file`);
  const image = await loadImage(imagePath);
  const model = loadUpscaler(modelPath, { device: str(values, "device"), tokenizerDir: str(values, "tokenizer") });
  try {
    // every input is checked before anything is written
    if (options.noiseLevel !== undefined) checkNoiseLevel(model, options.noiseLevel);
    const min = minUpscaleInput(model);
    if (image.width < min || image.height < min)
      throw new Error(
        `--image ${imagePath} is ${image.width}×${image.height}, smaller than the upscaler's ${min}×${min} input`,
      );
    const started = Date.now();
    const r = upscaleRgb(model, [{ ...image, channels: 3 }], {
      ...options,
      onStep: (i, n) =>
        process.stderr.write(process.stderr.isTTY ? `\rstep ${i}/${n}${i === n ? "\n" : ""}` : `step ${i}/${n}\n`),
    });
    const s = r.settings;
    const paths = saveUpscaled(r, out, model.name);
    console.log(
      `${image.width}×${image.height} → ${r.images[0].width}×${r.images[0].height}, seed ${s.seed}, noise level ${s.noiseLevel}, ${s.steps} steps, cfg ${s.cfg}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    for (const p of paths) console.log(`wrote ${p}`);
  } finally {
    disposeUpscaler(model);
  }
  return 0;
}

/** generate's flags for a second stage through a ×4 upscaler. */
export const UPSCALER_FLAGS = {
  upscaler: { type: "string" },
  "noise-level": { type: "string" },
  "upscaler-steps": { type: "string" },
  "upscaler-cfg": { type: "string" },
} as const;

/** `generate --upscaler MODEL`: the base's pictures, then ×4 through the upscaler; both written. */
export function generateWithUpscaler(
  base: StableDiffusion,
  values: Record<string, unknown>,
  options: GenerateRgbOptions,
  out: string,
  latentPath: string | undefined,
): number {
  const upscalerPath = str(values, "upscaler")!;
  const second = {
    noiseLevel: num(values, "noise-level", { integer: true, min: 0 }),
    steps: num(values, "upscaler-steps", { integer: true, min: 1, max: 1000 }),
    cfg: num(values, "upscaler-cfg", { min: 0 }),
  };
  const upscaler = loadUpscaler(upscalerPath, { device: base.device, tokenizerDir: str(values, "tokenizer") });
  try {
    const started = Date.now();
    const r = generateTwoStage(base, upscaler, {
      ...options,
      upscale: second,
      onStep: (i, n) => process.stderr.write(`step ${i}/${n}\n`),
      onLatents: latentPath ? (latents) => saveLatent(latents, latentPath) : undefined,
    });
    const lowOut = out.replace(/\.png$/i, "-base.png");
    const lowPaths = saveImages({ images: r.lowRes, settings: r.settings }, lowOut, base.name);
    const paths = saveUpscaled({ images: r.images, settings: r.upscaleSettings }, out, upscaler.name);
    const s = r.settings;
    const u = r.upscaleSettings;
    console.log(
      `seed ${s.seed}, ${s.width}×${s.height} → ${r.images[0].width}×${r.images[0].height}, noise level ${u.noiseLevel}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    for (const p of [...lowPaths, ...paths]) console.log(`wrote ${p}`);
    if (latentPath) console.log(`wrote ${latentPath}`);
  } finally {
    disposeUpscaler(upscaler);
  }
  return 0;
}
