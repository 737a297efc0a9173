// What every model tool checks before writing (an output that is one of its
// inputs, or that exists, is refused first: nothing is overwritten by
// mistake), and writing a LoRA in kohya's layout with ss_* metadata.
import { existsSync, realpathSync, statSync } from "node:fs";
import { dirname, extname, resolve } from "node:path";
import { type DType, scope, type Tensor } from "../engine/index.js";
import { saveSafetensors } from "../formats/safetensors.js";
import { LoraToolError } from "./lora-math.js";

export { LoraToolError };

function canonical(p: string): string {
  const abs = resolve(p);
  try {
    return realpathSync(abs);
  } catch {
    try {
      return resolve(realpathSync(dirname(abs)), abs.slice(dirname(abs).length + 1));
    } catch {
      return abs;
    }
  }
}

/** Refuses an output path that is an input (or inside an input folder), exists (without overwrite), or has the wrong form. */
export function checkOutputPath(
  output: string,
  inputs: readonly string[],
  o: { layout?: "ldm" | "diffusers" | "lora"; overwrite?: boolean } = {},
): void {
  if (!output) throw new LoraToolError("no output path given");
  const out = canonical(output);
  for (const i of inputs) {
    const inp = canonical(i);
    if (out === inp || out.startsWith(`${inp}/`) || inp.startsWith(`${out}/`))
      throw new LoraToolError(`output ${output} is the input ${i}: write to another path (nothing was written)`);
  }
  const ext = extname(output).toLowerCase();
  if ([".ckpt", ".pt", ".pth", ".bin"].includes(ext))
    throw new LoraToolError(`${output}: Atelier never writes pickles (${ext}); write .safetensors`);
  if ((o.layout === "ldm" || o.layout === "lora") && ext !== ".safetensors")
    throw new LoraToolError(`${output}: a single-file output must end in .safetensors`);
  if (o.layout === "diffusers" && ext !== "")
    throw new LoraToolError(`${output}: a diffusers output is a folder; this looks like a file name`);
  if (existsSync(output) && !o.overwrite)
    throw new LoraToolError(`${output}: already exists; pass --overwrite to replace it (nothing was written)`);
  if (existsSync(output) && o.layout === "diffusers" && !statSync(output).isDirectory())
    throw new LoraToolError(`${output}: exists and is not a folder`);
}

const SAVE_DTYPES: Record<string, DType> = {
  fp32: "float32",
  float32: "float32",
  fp16: "float16",
  float16: "float16",
  bf16: "bfloat16",
  bfloat16: "bfloat16",
};

/** fp32/fp16/bf16 (or the dtype names) → a dtype; undefined keeps the input's. */
export function outputDType(d: string | undefined): DType | undefined {
  if (d === undefined) return undefined;
  const t = SAVE_DTYPES[d];
  if (!t) throw new LoraToolError(`precision ${JSON.stringify(d)}: use fp32, fp16 or bf16`);
  return t;
}

/** A LoRA in kohya's layout: module name → key → tensor. */
export type KohyaLora = Map<string, Map<string, Tensor>>;

/** ss_network_dim / ss_network_alpha: the common value, or "Dynamic". */
function common(values: number[]): string {
  const set = new Set(values);
  return set.size === 1 ? String([...set][0]) : "Dynamic";
}

/** Writes a kohya LoRA file (`<module>.lora_down.weight`, …) with kohya's ss_network_* metadata plus `extra`. */
export function saveKohyaLora(
  path: string,
  lora: KohyaLora,
  extra: Record<string, string> = {},
  o: { dtype?: DType; baseModelVersion?: "sd_v1" | "sd_v2" } = {},
): void {
  const dims: number[] = [];
  const alphas: number[] = [];
  const methods = new Set<string>();
  for (const m of lora.values()) {
    const down = m.get("lora_down.weight");
    if (down) {
      dims.push(down.size(0));
      const a = m.get("alpha");
      alphas.push(a ? scope(() => a.float().item()) : down.size(0));
    } else methods.add("lycoris");
  }
  const md: Record<string, string> = {
    ss_base_model_version: o.baseModelVersion ?? "sd_v1",
    ss_v2: o.baseModelVersion === "sd_v2" ? "True" : "False",
    ...extra,
    // the network's own shape always describes what is written
    ss_network_module: methods.size > 0 ? "lycoris.kohya" : "networks.lora",
    ss_network_dim: common(dims),
    ss_network_alpha: common(alphas),
  };
  // hashes of the input no longer describe the output
  for (const k of ["sshs_model_hash", "sshs_legacy_hash"]) delete md[k];
  scope(() => {
    const out = new Map<string, Tensor>();
    for (const [name, m] of lora)
      for (const [k, t] of m) {
        const cast = o.dtype && k !== "alpha" && t.dtype !== o.dtype && t.dtype !== "int64" ? t.to(o.dtype) : t;
        out.set(`${name}.${k}`, cast);
      }
    saveSafetensors(path, out, md);
  });
}
