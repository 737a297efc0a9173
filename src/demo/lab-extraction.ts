// How much of a full fine-tune a LoRA extracted from it keeps (issue 16's
// "extraction measured on a real Dreambooth pair"): `extract-lora` of a tuned
// model against its base at several ranks, with and without kohya's 0.99
// clamp, read two ways — the per-module relative error of ΔW (what the SVD
// keeps of the modules kohya's LoRA covers) and the pictures: the mean
// absolute pixel difference between the tuned model's samples and the base +
// extracted LoRA's, as a share of the tuned model's own difference from the
// base (same prompts and seeds; 0 = the tuned model's pictures, 1 = no
// better than the base). The pictures also see what no LoRA module covers
// (norms, biases, conv_in/out, embeddings) and 3×3 convs capped at rank
// in_channels, as kohya's extract_lora_from_models.py caps them.
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { generateRgb } from "../infer/generate-rgb.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { extractLoraFromCheckpoints } from "../tools/extract-lora.js";

export interface ExtractionRow {
  dim: number;
  /** kohya's clamp quantile, or null (Atelier's default: the plain truncated SVD). */
  clampQuantile: number | null;
  modules: number;
  medianRelError: number;
  worstRelError: number;
  /** Mean |tuned − (base + LoRA)| per pixel channel ÷ mean |tuned − base|. */
  pictureGap: number;
}

export interface ExtractionOptions {
  dims?: number[];
  clampQuantiles?: (number | null)[];
  prompts?: string[];
  seeds?: number[];
  steps?: number;
  /** Picture side in pixels (default: the model's own). */
  size?: number;
  /** Tokenizer folder (default: the base's own `tokenizer/`). */
  tokenizerDir?: string;
  /** Where the extracted LoRAs are written (one folder per row). */
  work: string;
}

function samples(path: string, o: ExtractionOptions, tokenizerDir: string, lora?: { dir: string; name: string }) {
  const m = loadStableDiffusion(path, { tokenizerDir });
  try {
    return (o.prompts ?? ["a sks star"]).flatMap((p) =>
      (o.seeds ?? [1000, 1001, 1002, 1003]).map(
        (seed) =>
          generateRgb(m, {
            prompt: lora ? `${p} <lora:${lora.name}:1>` : p,
            steps: o.steps ?? 20,
            cfg: 5,
            seed,
            sampler: "ddim",
            width: o.size,
            height: o.size,
            loraDirs: lora ? [lora.dir] : undefined,
          }).images[0].data,
      ),
    );
  } finally {
    disposeStableDiffusion(m);
  }
}

function meanAbsDiff(a: Uint8Array[], b: Uint8Array[]): number {
  let sum = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++)
    for (let j = 0; j < a[i].length; j++) {
      sum += Math.abs(a[i][j] - b[i][j]);
      n++;
    }
  return sum / n;
}

/** One row per (dim, clamp): the extracted LoRA's module errors and how close its pictures come to the tuned model's. */
export function measureExtraction(base: string, tuned: string, o: ExtractionOptions): ExtractionRow[] {
  const tokenizerDir = o.tokenizerDir ?? join(base, "tokenizer");
  const tunedPictures = samples(tuned, o, tokenizerDir);
  const reference = meanAbsDiff(tunedPictures, samples(base, o, tokenizerDir));
  if (reference === 0) throw new Error(`extraction: ${tuned} draws the same pictures as ${base}; nothing to extract`);
  const rows: ExtractionRow[] = [];
  for (const dim of o.dims ?? [4, 8, 16, 32])
    for (const clampQuantile of o.clampQuantiles ?? [null, 0.99]) {
      const name = `extract-${dim}${clampQuantile === null ? "" : `-clamp${clampQuantile}`}`;
      const dir = join(o.work, name);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      const r = extractLoraFromCheckpoints(base, tuned, join(dir, `${name}.safetensors`), {
        dim,
        convDim: dim,
        clampQuantile,
      });
      const errors = r.modules.map((m) => m.relError).sort((a, b) => a - b);
      const pictures = samples(base, o, tokenizerDir, { dir, name });
      rows.push({
        dim,
        clampQuantile,
        modules: r.modules.length,
        medianRelError: errors[errors.length >> 1],
        worstRelError: errors[errors.length - 1],
        pictureGap: meanAbsDiff(pictures, tunedPictures) / reference,
      });
    }
  return rows;
}
