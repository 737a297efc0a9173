// The arithmetic the LoRA tools share: one kohya module's ΔW (LoRA/LoCon,
// LoHa, LoKr: the formulas of src/adapters/functional), and the truncated
// SVD + quantile clamp that kohya-ss/sd-scripts networks/extract_lora_from_models.py
// and networks/svd_merge_lora.py factor a ΔW with.

import { loraDeltaWeight, loraScale } from "../adapters/functional/lora.js";
import { lohaDeltaWeight, lohaRank, lokrDeltaWeight, lokrRank } from "../adapters/functional/lycoris.js";
import { ADAPTER_REGISTRY } from "../adapters/registry.js";
import { scope, svd, type Tensor, tensor } from "../engine/index.js";

export class LoraToolError extends Error {
  override name = "LoraToolError";
}

/** A module's tensors by kohya key (lora_down.weight, lora_up.weight, alpha, hada_w1_a, …). */
export type KohyaModule = Map<string, Tensor>;

/** The method of a module's keys: "lora", "loha", "lokr" (refuses what no method holds). */
export function methodOf(name: string, m: KohyaModule): string {
  const method = ADAPTER_REGISTRY.methodFor([...m.keys()]);
  if (typeof method === "string") throw new LoraToolError(`module ${name}: ${method}`);
  return method.name;
}

/** alpha as a number, or undefined when the module has none. */
export function alphaOf(m: KohyaModule): number | undefined {
  const a = m.get("alpha");
  return a ? scope(() => a.float().item()) : undefined;
}

/** A LoRA module's rank: lora_down's first dimension. */
export function loraRank(m: KohyaModule): number {
  const down = m.get("lora_down.weight");
  if (!down) throw new LoraToolError("not a LoRA/LoCon module (no lora_down.weight)");
  return down.size(0);
}

/**
 * ΔW of one module at multiplier 1, in float32 (or `dtype`), in `shape` (the layer's
 * weight shape; a LoRA's [r,in,1,1] factors on a Linear are squeezed, as
 * kohya's merge_lora.py does). Scale alpha/rank; no alpha means scale 1.
 */
export function moduleDelta(
  name: string,
  m: KohyaModule,
  shape: readonly number[],
  dtype: "float32" | "float64" = "float32",
): Tensor {
  const method = methodOf(name, m);
  const numel = shape.reduce((a, b) => a * b, 1);
  return scope(() => {
    const f = (k: string) => {
      const t = m.get(k);
      return t ? t.to(dtype) : null;
    };
    const alpha = alphaOf(m);
    let d: Tensor;
    if (method === "lora") {
      const down = f("lora_down.weight")!;
      const rank = down.size(0);
      d = loraDeltaWeight({ down, up: f("lora_up.weight")!, mid: f("lora_mid.weight") }, loraScale(alpha, rank));
    } else if (method === "loha") {
      const fs = {
        w1a: f("hada_w1_a")!,
        w1b: f("hada_w1_b")!,
        w2a: f("hada_w2_a")!,
        w2b: f("hada_w2_b")!,
        t1: f("hada_t1"),
        t2: f("hada_t2"),
      };
      d = lohaDeltaWeight(fs, loraScale(alpha, lohaRank(fs)), shape);
    } else if (method === "lokr") {
      const fs = {
        w1: f("lokr_w1"),
        w1a: f("lokr_w1_a"),
        w1b: f("lokr_w1_b"),
        w2: f("lokr_w2"),
        w2a: f("lokr_w2_a"),
        w2b: f("lokr_w2_b"),
        t2: f("lokr_t2"),
      };
      const rank = lokrRank(fs);
      d = lokrDeltaWeight(fs, rank === null ? 1 : loraScale(alpha, rank), shape);
    } else throw new LoraToolError(`module ${name}: ${method} cannot be merged`);
    if (d.numel !== numel)
      throw new LoraToolError(
        `module ${name}: its ΔW has shape [${d.shape}], the layer's weight is [${shape}] (a LoRA for another base model?)`,
      );
    return d.reshape(...shape);
  });
}

/** The layer's matrix view of a weight: [out, in·kh·kw] (kohya flattens 3×3 convs, squeezes 1×1). */
export function asMatrix(w: Tensor): Tensor {
  return w.reshape(w.size(0), -1);
}

/**
 * torch.quantile(x, q) with linear interpolation, over all values; computed
 * in float64 on the CPU (torch lerps in float32: a difference far below the
 * fixture README's SVD tolerance).
 */
export function quantile(values: Float32Array | number[], q: number): number {
  const a = Float64Array.from(values).sort();
  if (a.length === 0) throw new LoraToolError("quantile of no values");
  const pos = q * (a.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, a.length - 1);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

export interface Factors {
  /** [out, r] = U_r·diag(S_r). */
  up: Tensor;
  /** [r, in·kh·kw] = Vh_r. */
  down: Tensor;
  /** Every singular value, descending. */
  S: number[];
}

/** The rank-r truncated SVD of a matrix [out, n]: up = U_r·diag(S_r), down = Vh_r (float32). */
export function truncatedSvd(mat: Tensor, rank: number): Factors {
  return scope(() => {
    const { U, S, Vh } = svd(mat.float());
    const s = S.toArray();
    const Sr = S.narrow(0, 0, rank);
    const up = U.narrow(1, 0, rank).mul(Sr.unsqueeze(0));
    const down = Vh.narrow(0, 0, rank);
    return { up: up.contiguous(), down: down.contiguous(), S: s };
  });
}

/**
 * kohya's clamp: hi = quantile(cat(up.flatten(), down.flatten()), q), both
 * clamped to [−hi, hi] (extract_lora_from_models.py, svd_merge_lora.py).
 * Returns new tensors and hi.
 */
export function clampFactors(f: { up: Tensor; down: Tensor }, q: number): { up: Tensor; down: Tensor; hi: number } {
  const values = [...f.up.toArray(), ...f.down.toArray()];
  const hi = quantile(values, q);
  return { up: f.up.clamp(-hi, hi), down: f.down.clamp(-hi, hi), hi };
}

/** A 0-d float32 alpha tensor (kohya's LoRAModule buffer). */
export function alphaTensor(v: number, dtype: "float32" | "int64" = "float32"): Tensor {
  return tensor(dtype === "int64" ? new BigInt64Array([BigInt(Math.round(v))]) : new Float32Array([v]), { shape: [] });
}

/** Factors in a layer's shape: up [out,r] (+[1,1] for a conv), down [r,in] or [r,in,kh,kw]. */
export function shapeFactors(up: Tensor, down: Tensor, weightShape: readonly number[]): { up: Tensor; down: Tensor } {
  if (weightShape.length === 4) {
    const [, inC, kh, kw] = weightShape;
    const r = down.size(0);
    return { up: up.reshape(up.size(0), r, 1, 1), down: down.reshape(r, inC, kh, kw) };
  }
  return { up, down };
}

export interface FactorizeOptions {
  /** kohya's clamp quantile (extract, svd merge: 0.99); none for resize. */
  clampQuantile?: number;
  /**
   * Flip each component to the sign of this reference's matching column of
   * up ([out, r]) before clamping: SVD signs are arbitrary, and the clamp
   * depends on them (tests against recorded factors).
   */
  signsLike?: Tensor;
}

export interface Factorized {
  /** [out, r], clamped when asked. */
  up: Tensor;
  /** [r, n], clamped when asked. */
  down: Tensor;
  /** Every singular value of the matrix, descending. */
  S: number[];
  /** The clamp threshold, when clamped. */
  hi?: number;
}

/** Rank-r factors of a matrix [out, n] by truncated SVD (kohya's lines: U_r·diag(S_r), Vh_r, optional clamp). */
export function factorize(mat: Tensor, rank: number, o: FactorizeOptions = {}): Factorized {
  return scope(() => {
    let { up, down, S } = truncatedSvd(mat, rank);
    if (o.signsLike) {
      const signs = up
        .mul(o.signsLike.reshape(up.size(0), rank))
        .sum(0)
        .toArray()
        .map((v) => (v < 0 ? -1 : 1));
      const s = tensor(Float32Array.from(signs));
      up = up.mul(s.unsqueeze(0));
      down = down.mul(s.unsqueeze(1));
    }
    if (o.clampQuantile === undefined) return { up, down, S };
    const c = clampFactors({ up, down }, o.clampQuantile);
    return { up: c.up, down: c.down, S, hi: c.hi };
  });
}
