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

/**
 * LyCORIS lycoris/functional/general.py factorization: dimension = m·n with
 * m ≤ n. A positive factor that divides the dimension is used as is;
 * otherwise the most balanced split whose smaller part is ≤ factor (−1: any).
 */
export function factorization(dimension: number, factor = -1): [number, number] {
  if (factor > 0 && dimension % factor === 0) {
    const m = factor;
    const n = dimension / factor;
    return m > n ? [n, m] : [m, n];
  }
  const limit = factor < 0 ? dimension : factor;
  let m = 1;
  let n = dimension;
  const length = m + n;
  while (m < n) {
    let next = m + 1;
    while (dimension % next !== 0) next++;
    const nextN = dimension / next;
    if (next + nextN > length || next > limit) break;
    m = next;
    n = nextN;
  }
  return m > n ? [n, m] : [m, n];
}

/** The factor shapes LyCORIS' LokrModule gives a layer (lycoris/modules/lokr.py __init__). */
export interface LokrLayout {
  /** w1: [out_l, in_m], low-rank (w1_a [out_l, r], w1_b [r, in_m]) when decomposed. */
  w1: { full: boolean; out: number; in: number };
  /** w2: [out_k, in_n(, kh, kw)], as w2_a @ w2_b (or Tucker) when low-rank. */
  w2: { full: boolean; tucker: boolean; out: number; in: number };
  /** Both full: LyCORIS forces alpha = rank (scale 1). */
  scaleOne: boolean;
}

export function lokrLayout(
  shape: readonly number[],
  o: { rank: number; factor: number; decomposeBoth: boolean; useTucker: boolean },
): LokrLayout {
  const [outDim, inDim, ...kernel] = shape;
  const [inM, inN] = factorization(inDim, o.factor);
  const [outL, outK] = factorization(outDim, o.factor);
  const w1Full = !(o.decomposeBoth && o.rank < Math.max(outL, inM) / 2);
  const w2Full = o.rank >= Math.max(outK, inN) / 2;
  const tucker = !w2Full && o.useTucker && kernel.some((k) => k !== 1);
  return {
    w1: { full: w1Full, out: outL, in: inM },
    w2: { full: w2Full, tucker, out: outK, in: inN },
    scaleOne: w1Full && w2Full,
  };
}

/** float32 machine epsilon, what LyCORIS adds to DoRA's norm (torch.finfo(float32).eps). */
export const DORA_EPS = 1.1920928955078125e-7;

/** ‖W[o]‖₂ over every dimension but the first, kept as [out, 1(, 1, 1)] (LyCORIS wd_on_out). */
export function rowNorms(w: Tensor): Tensor {
  return scope(() =>
    w
      .reshape(w.size(0), -1)
      .norm(2, 1, true)
      .reshape(w.size(0), ...w.shape.slice(1).map(() => 1)),
  );
}

/** ‖W[:, i]‖₂ over every dimension but the second, kept as [1, in(, 1, 1)] (LyCORIS wd_on_out=False, A1111's axis). */
export function columnNorms(w: Tensor): Tensor {
  return scope(() =>
    w
      .transpose(0, 1)
      .reshape(w.size(1), -1)
      .norm(2, 1, true)
      .reshape(1, w.size(1), ...w.shape.slice(2).map(() => 1)),
  );
}

/** Whether a dora_scale normalises output rows ([out, 1, …]) rather than input columns ([1, in, …]). */
export function doraOnOutput(doraScale: Tensor, weightShape: readonly number[]): boolean {
  return doraScale.size(0) === weightShape[0] && doraScale.numel === weightShape[0] && !(weightShape[0] === 1);
}

/**
 * DoRA's ΔW (LyCORIS weight_decompose): V = W0 + ΔW, W' = V · dora_scale /
 * (‖V‖ + ε), the norm over output rows (wd_on_out, dora_scale [out, 1, …])
 * or input columns (dora_scale [1, in, …], the axis A1111's
 * extensions-builtin/Lora/network.py apply_weight_decompose normalises and
 * the one ComfyUI's comfy/weight_adapter/base.py weight_decompose takes
 * from V), returned as W' − W0 (float32, float64 for a float64 W0). The
 * multiplier then scales this whole difference, W0 + m·(W' − W0), as A1111
 * and ComfyUI do; LyCORIS 3.2 instead adds ΔW in full at every multiplier.
 */
export function doraDeltaWeight(w0: Tensor, delta: Tensor, doraScale: Tensor): Tensor {
  return scope(() => {
    const dt = w0.dtype === "float64" ? "float64" : "float32";
    const base = w0.to(dt);
    const v = base.add(delta.to(dt));
    const norms = doraOnOutput(doraScale, w0.shape) ? rowNorms(v) : columnNorms(v);
    const s = doraScale.to(dt).div(norms.add(DORA_EPS));
    return v.mul(s).sub(base);
  });
}

/** (IA)³ ΔW = W0 · w per output row ([out] or [1, out, 1, 1]), or per input column when on_input (ia3.py make_weight). */
export function ia3DeltaWeight(w0: Tensor, w: Tensor, onInput: boolean): Tensor {
  return scope(() => {
    const ones = w0.shape.slice(2).map(() => 1);
    const v = w.reshape(-1);
    const scale = onInput ? v.reshape(1, v.size(0), ...ones) : v.reshape(v.size(0), 1, ...ones);
    const dt = w0.dtype === "float64" ? "float64" : "float32";
    return w0.to(dt).mul(scale.to(dt));
  });
}
