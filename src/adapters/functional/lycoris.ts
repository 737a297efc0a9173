// LoHa and LoKr ΔW, pure functions (KohakuBlueleaf/LyCORIS
// lycoris/functional/loha.py, lokr.py, general.py; the same formulas as
// AUTOMATIC1111 extensions-builtin/Lora/network_hada.py, network_lokr.py).
// Only the "forward" semantics are implemented: ΔW as the module's forward
// applies it (LyCORIS 3.2's get_diff_weight, used by its merge tools,
// applies the scale a second time for LoHa and LoKr).
import { einsum, kron, scope, type Tensor } from "../../engine/index.js";

/** general.py rebuild_tucker: W[p, r, …] = Σ t[i, j, …]·wa[i, p]·wb[j, r]. */
export function rebuildTucker(t: Tensor, wa: Tensor, wb: Tensor): Tensor {
  return einsum("ijhw,ip,jr->prhw", t, wa, wb);
}

export interface LohaFactors {
  w1a: Tensor;
  w1b: Tensor;
  w2a: Tensor;
  w2b: Tensor;
  /** Tucker cores [r, r, kh, kw]; with them w?a is [r, out] and w?b [r, in]. */
  t1?: Tensor | null;
  t2?: Tensor | null;
}

/** LoHa rank: hada_w1_b's first dimension (network_hada.py `self.dim`). */
export function lohaRank(f: LohaFactors): number {
  return f.w1b.size(0);
}

/** ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · scale, reshaped to `shape` (loha.py diff_weight). */
export function lohaDeltaWeight(f: LohaFactors, scale: number, shape: readonly number[]): Tensor {
  return scope(() => {
    const w1 = f.t1 ? rebuildTucker(f.t1, f.w1a, f.w1b) : f.w1a.matmul(f.w1b);
    const w2 = f.t2 ? rebuildTucker(f.t2, f.w2a, f.w2b) : f.w2a.matmul(f.w2b);
    return w1
      .mul(w2)
      .mul(scale)
      .reshape(...shape);
  });
}

export interface LokrFactors {
  w1?: Tensor | null;
  w1a?: Tensor | null;
  w1b?: Tensor | null;
  w2?: Tensor | null;
  w2a?: Tensor | null;
  w2b?: Tensor | null;
  /** Tucker core of w2 [r, r, kh, kw]; with it w2a is [r, out₂] and w2b [r, in₂]. */
  t2?: Tensor | null;
}

/** The rank that alpha divides: w1b's or w2b's first dimension; null when both factors are full (scale 1). */
export function lokrRank(f: LokrFactors): number | null {
  if (f.w1b) return f.w1b.size(0);
  if (f.w2b) return f.w2b.size(0);
  return null;
}

/**
 * ΔW = kron(w1, w2) · scale, reshaped to `shape` (lokr.py make_kron /
 * diff_weight; network_lokr.py make_kron). w2 may be 2-D over a flattened
 * [in·kh·kw] axis (older files) or 4-D; w1 is always 2-D.
 */
export function lokrDeltaWeight(f: LokrFactors, scale: number, shape: readonly number[]): Tensor {
  return scope(() => {
    const w1 = f.w1 ?? need(f.w1a, "lokr_w1_a").matmul(need(f.w1b, "lokr_w1_b"));
    let w2: Tensor;
    if (f.w2) w2 = f.w2;
    else if (f.t2) w2 = rebuildTucker(f.t2, need(f.w2a, "lokr_w2_a"), need(f.w2b, "lokr_w2_b"));
    else {
      const b = need(f.w2b, "lokr_w2_b");
      w2 = need(f.w2a, "lokr_w2_a").matmul(b.reshape(b.size(0), -1));
    }
    const a = w2.ndim === 4 ? w1.reshape(w1.size(0), w1.size(1), 1, 1) : w1;
    return kron(a, w2.contiguous())
      .mul(scale)
      .reshape(...shape);
  });
}

function need(t: Tensor | null | undefined, name: string): Tensor {
  if (!t) throw new Error(`LoKr: ${name} is missing`);
  return t;
}
