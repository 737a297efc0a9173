// Which checkpoint weight each module of a set of LoRA files changes, and by
// how much: W' = W + Σ weight·ΔW (kohya-ss/sd-scripts networks/merge_lora.py
// merge_to_sd_model; negative weights subtract). Modules are matched by
// kohya's names (`lora_unet_` / `lora_te_` + the diffusers module path with
// dots as underscores) and every shape is checked before anything is
// written: a LoRA for another base model (SD1 on SD2) is refused by its
// shapes, not merged in part.

import { loadLoraFile } from "../adapters/lora-file.js";
import { kohyaName, PREFIX } from "../adapters/targets.js";
import { type DType, disposeAll, isFloating, scope, type Tensor } from "../engine/index.js";
import { type KohyaModule, LoraToolError, methodOf, moduleDelta } from "./lora-math.js";

export type AdaptedComponent = "unet" | "textEncoder";

/** A checkpoint weight a module can change: its component, diffusers key and shape. */
export interface LayerWeight {
  component: AdaptedComponent;
  key: string;
  shape: readonly number[];
}

/** A LoRA file and the multiplier it is merged with. */
export interface WeightedLora {
  path: string;
  weight: number;
}

export interface LoadedLora extends WeightedLora {
  modules: Map<string, KohyaModule>;
}

export interface Contribution {
  lora: string;
  module: string;
  tensors: KohyaModule;
  weight: number;
}

export interface MergePlan {
  /** `component:key` → what is added to it. */
  byKey: Map<string, Contribution[]>;
  /** Modules of the files that match no weight of the checkpoint (only with skipUnmatched). */
  skipped: string[];
  /** Per file: how many of its modules are merged. */
  counts: { path: string; weight: number; modules: number }[];
}

export const planKey = (component: AdaptedComponent, key: string): string => `${component}:${key}`;

/** kohya module name → the weight it adapts, for every 2-D/4-D `.weight` of the UNet and text encoder. */
export function layerWeights(shapes: Partial<Record<AdaptedComponent, Map<string, readonly number[]>>>) {
  const out = new Map<string, LayerWeight>();
  for (const component of ["unet", "textEncoder"] as const) {
    for (const [key, shape] of shapes[component] ?? []) {
      if (!key.endsWith(".weight") || (shape.length !== 2 && shape.length !== 4)) continue;
      out.set(kohyaName(PREFIX[component], key.slice(0, -".weight".length)), { component, key, shape });
    }
  }
  return out;
}

/** Reads LoRA files (any format Atelier loads, as kohya modules), checking weights are finite numbers. */
export function loadLoras(loras: readonly WeightedLora[]): LoadedLora[] {
  const out: LoadedLora[] = [];
  try {
    for (const l of loras) {
      if (!Number.isFinite(l.weight)) throw new LoraToolError(`${l.path}: weight ${l.weight} is not a finite number`);
      out.push({ ...l, modules: loadLoraFile(l.path).modules });
    }
    return out;
  } catch (e) {
    disposeLoras(out);
    throw e;
  }
}

export function disposeLoras(loras: readonly LoadedLora[]): void {
  for (const l of loras) disposeAll([...l.modules.values()].map((m) => [...m.values()]));
}

/** Why a module's ΔW cannot have `shape`, or null when it fits. Cheap: reads factor shapes only. */
export function shapeProblem(name: string, m: KohyaModule, shape: readonly number[]): string | null {
  const method = methodOf(name, m);
  const out = shape[0];
  const rest = shape.slice(1).reduce((a, b) => a * b, 1);
  const s = (k: string) => m.get(k)?.shape;
  let got: [number, number] | null = null;
  if (method === "lora") {
    const up = s("lora_up.weight")!;
    const down = s("lora_down.weight")!;
    const mid = s("lora_mid.weight");
    const kernel = mid ? mid.slice(2) : down.slice(2);
    got = [up[0], down[1] * kernel.reduce((a, b) => a * b, 1)];
    if (kernel.length === 2 && shape.length === 4 && kernel.join() !== shape.slice(2).join() && rest === got[1])
      got = null;
  } else if (method === "loha") {
    const w1a = s("hada_w1_a")!;
    const w1b = s("hada_w1_b")!;
    const t1 = s("hada_t1");
    got = t1 ? [w1a[1], w1b[1] * t1[2] * t1[3]] : [w1a[0], w1b[1]];
  } else if (method === "lokr") {
    const w1 = s("lokr_w1") ?? [s("lokr_w1_a")![0], s("lokr_w1_b")![1]];
    const w2 = s("lokr_w2");
    const t2 = s("lokr_t2");
    const w2o = w2 ? w2[0] : t2 ? s("lokr_w2_a")![1] : s("lokr_w2_a")![0];
    const w2b = s("lokr_w2_b");
    const w2i = w2
      ? w2.slice(1).reduce((a, b) => a * b, 1)
      : t2
        ? w2b![1] * t2[2] * t2[3]
        : w2b!.slice(1).reduce((a, b) => a * b, 1);
    got = [w1[0] * w2o, w1[1] * w2i];
  }
  if (!got) return `its kernel does not fit the layer's [${shape}]`;
  if (got[0] === out && got[1] === rest) return null;
  const layer = shape.length > 2 ? `[${shape}] (as a matrix [${out}, ${rest}])` : `[${out}, ${rest}]`;
  return `its ΔW is [${got[0]}, ${got[1]}], the layer's weight is ${layer} (${baseGuess(got, [out, rest])})`;
}

/**
 * The text-conditioning width tells SD 1.x from SD 2.x: 768 (CLIP ViT-L/14,
 * SD 1.x's cross_attention_dim and text width) against 1024 (OpenCLIP ViT-H,
 * SD 2.x's), as in the models' diffusers configs (unet/config.json
 * cross_attention_dim, text_encoder/config.json hidden_size).
 */
const BASE_BY_WIDTH: Record<number, string> = { 768: "SD 1.x", 1024: "SD 2.x" };

function baseGuess(lora: readonly number[], layer: readonly number[]): string {
  for (const i of [1, 0]) {
    const a = BASE_BY_WIDTH[lora[i]];
    const b = BASE_BY_WIDTH[layer[i]];
    if (a && b && a !== b) return `a LoRA for ${a} on an ${b} checkpoint: SD1 on SD2 and SD2 on SD1 do not mix`;
  }
  return "a LoRA for another base model?";
}

/**
 * Matches every module of every file to a weight. A module that matches no
 * weight is an error (kohya's merge skips it with a log line: pass
 * skipUnmatched for that); a shape that does not fit always is.
 */
export function planMerge(
  loras: readonly LoadedLora[],
  weights: Map<string, LayerWeight>,
  o: { skipUnmatched?: boolean } = {},
): MergePlan {
  const byKey = new Map<string, Contribution[]>();
  const skipped: string[] = [];
  const counts: MergePlan["counts"] = [];
  for (const l of loras) {
    const unmatched: string[] = [];
    let n = 0;
    for (const [name, tensors] of l.modules) {
      const w = weights.get(name);
      if (!w) {
        unmatched.push(name);
        continue;
      }
      const problem = shapeProblem(name, tensors, w.shape);
      if (problem) throw new LoraToolError(`${l.path}: module ${name}: ${problem}`);
      const k = planKey(w.component, w.key);
      const list = byKey.get(k) ?? [];
      list.push({ lora: l.path, module: name, tensors, weight: l.weight });
      byKey.set(k, list);
      n++;
    }
    if (unmatched.length > 0 && (!o.skipUnmatched || n === 0))
      throw new LoraToolError(
        `${l.path}: ${unmatched.length} of ${l.modules.size} modules match no layer of the checkpoint` +
          `${n === 0 ? " (none does: a LoRA for another model?)" : " (pass skipUnmatched / --skip-unmatched to merge the rest, as kohya does)"}` +
          `: ${unmatched.slice(0, 3).join(", ")}${unmatched.length > 3 ? ", …" : ""}`,
      );
    skipped.push(...unmatched.map((u) => `${l.path}: ${u}`));
    counts.push({ path: l.path, weight: l.weight, modules: n });
  }
  return { byKey, skipped, counts };
}

/** W + Σ weight·ΔW computed in float32 (float64 for a float64 W), returned in `dtype` (default W's own). */
export function mergedWeight(w: Tensor, contributions: readonly Contribution[], dtype?: DType): Tensor {
  return scope(() => {
    const compute = w.dtype === "float64" ? "float64" : "float32";
    let acc = w.to(compute);
    for (const c of contributions) acc = acc.add(moduleDelta(c.module, c.tensors, w.shape, compute), c.weight);
    const want = dtype && isFloating(w.dtype) ? dtype : w.dtype;
    return acc.to(want);
  });
}
