// Converting a checkpoint between layouts and dtypes: single-file LDM
// .safetensors (what A1111 and ComfyUI load) and diffusers folders.
import { extname } from "node:path";
import type { DType } from "../engine/index.js";
import { loadCheckpoint, saveCheckpoint } from "../formats/checkpoint.js";
import { findTokenizer } from "../models/clip/tokenizer.js";

export interface ConvertOptions {
  to?: "ldm" | "diffusers";
  dtype?: DType;
  /** A tokenizer folder to copy into a diffusers output (else the input's, if found). */
  tokenizerDir?: string;
  overwrite?: boolean;
}

export interface ConvertResult {
  layout: "ldm" | "diffusers";
  notes: string[];
}

export function convertCheckpoint(input: string, output: string, o: ConvertOptions = {}): ConvertResult {
  const ext = extname(output).toLowerCase();
  if ([".ckpt", ".pt", ".pth", ".bin"].includes(ext)) {
    throw new Error(
      `'${output}': Atelier never writes pickles (${ext}); write .safetensors (single file) or a folder (diffusers)`,
    );
  }
  const layout = o.to ?? (ext === ".safetensors" ? "ldm" : "diffusers");
  if (layout === "ldm" && extname(output).toLowerCase() !== ".safetensors") {
    throw new Error(`a single-file (ldm) output must end in .safetensors, got '${output}'`);
  }
  if (layout === "diffusers" && extname(output) !== "") {
    throw new Error(`a diffusers output is a folder; '${output}' looks like a file name`);
  }
  const { components, info } = loadCheckpoint(input, { dtype: o.dtype });
  const notes = [...info.notes];
  try {
    let tokenizerFrom: string | undefined;
    if (layout === "diffusers") {
      try {
        tokenizerFrom = findTokenizer({ kind: info.version, tokenizerDir: o.tokenizerDir, modelDir: input }).dir;
      } catch {
        notes.push("no tokenizer found to copy into the diffusers folder (use --tokenizer DIR)");
      }
    }
    saveCheckpoint(components, output, {
      layout,
      dtype: o.dtype,
      configs: info.configs,
      predictionType: info.predictionType,
      tokenizerFrom,
      overwrite: o.overwrite,
    });
  } finally {
    for (const sd of Object.values(components)) for (const t of sd?.values() ?? []) t.dispose();
  }
  return { layout, notes };
}
