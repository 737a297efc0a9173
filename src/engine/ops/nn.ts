// Neural-network functions: convolutions, norms, activations, attention, losses.
import { defOp } from "../dispatch.js";
import { scope } from "../scope.js";
import type { Tensor } from "../tensor.js";
import { ones } from "./creation.js";
import { matmul } from "./linalg.js";
import { logicalNot, maskedFill, mul } from "./math.js";
import { cat, narrow, transpose } from "./shape.js";

const ops = {
  conv2d: defOp("aten::conv2d"),
  convTranspose2d: defOp("aten::conv_transpose2d.input"),
  groupNorm: defOp("aten::group_norm"),
  layerNorm: defOp("aten::layer_norm"),
  softmax: defOp("aten::softmax.int"),
  logSoftmax: defOp("aten::log_softmax.int"),
  gelu: defOp("aten::gelu"),
  dropout: defOp("aten::dropout"),
  embedding: defOp("aten::embedding"),
  nearest: defOp("aten::upsample_nearest2d.vec"),
  nearestExact: defOp("aten::_upsample_nearest_exact2d.vec"),
  bilinear: defOp("aten::upsample_bilinear2d.vec"),
  constantPad: defOp("aten::constant_pad_nd"),
  reflectionPad: defOp("aten::reflection_pad2d"),
  replicationPad: defOp("aten::replication_pad2d"),
  sdpa: defOp("aten::scaled_dot_product_attention"),
  mseLoss: defOp("aten::mse_loss"),
  sigmoid: defOp("aten::sigmoid"),
  tanh: defOp("aten::tanh"),
  relu: defOp("aten::relu"),
  silu: defOp("aten::silu"),
};

export const sigmoid = (x: Tensor): Tensor => ops.sigmoid.t(x.id);
export const tanh = (x: Tensor): Tensor => ops.tanh.t(x.id);
export const relu = (x: Tensor): Tensor => ops.relu.t(x.id);
/** x·sigmoid(x) */
export const silu = (x: Tensor): Tensor => ops.silu.t(x.id);

export interface Conv2dOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  dilation?: number | [number, number];
  groups?: number;
}

export const conv2d = (x: Tensor, weight: Tensor, bias?: Tensor | null, o: Conv2dOptions = {}): Tensor =>
  ops.conv2d.t(x.id, weight.id, bias ? bias.id : null, o.stride ?? 1, o.padding ?? 0, o.dilation ?? 1, o.groups ?? 1);

export interface ConvTranspose2dOptions extends Conv2dOptions {
  outputPadding?: number | [number, number];
}

export const convTranspose2d = (x: Tensor, weight: Tensor, bias?: Tensor | null, o: ConvTranspose2dOptions = {}) =>
  ops.convTranspose2d.t(
    x.id,
    weight.id,
    bias ? bias.id : null,
    o.stride ?? 1,
    o.padding ?? 0,
    o.outputPadding ?? 0,
    o.groups ?? 1,
    o.dilation ?? 1,
  );

/**
 * Norm weights in the input's dtype. libtorch 1.13's CPU group_norm/layer_norm
 * refuse a bf16 input with float32 weights (what autocast hands them after a
 * bf16 conv/linear, and PyTorch 1.13 fails the same way); casting the small
 * weights keeps the activation in bf16, as torch ≥ 2.0's mixed-dtype kernels
 * do (output in the input's dtype). The cast is on the graph: gradients reach
 * the float32 weights.
 */
function normWith<T>(
  x: Tensor,
  weight: Tensor | null | undefined,
  bias: Tensor | null | undefined,
  fn: (w: number | null, b: number | null) => T,
): T {
  const dtype = x.dtype;
  const mixed = (weight && weight.dtype !== dtype) || (bias && bias.dtype !== dtype);
  if (!mixed) return fn(weight ? weight.id : null, bias ? bias.id : null);
  return scope(() => {
    const w = weight ? (weight.dtype === dtype ? weight : weight.to(dtype)) : null;
    const b = bias ? (bias.dtype === dtype ? bias : bias.to(dtype)) : null;
    return fn(w ? w.id : null, b ? b.id : null);
  });
}

export const groupNorm = (
  x: Tensor,
  groups: number,
  weight?: Tensor | null,
  bias?: Tensor | null,
  eps = 1e-5,
): Tensor => normWith(x, weight, bias, (w, b) => ops.groupNorm.t(x.id, groups, w, b, eps));

export const layerNorm = (
  x: Tensor,
  normalizedShape: readonly number[],
  weight?: Tensor | null,
  bias?: Tensor | null,
  eps = 1e-5,
): Tensor => normWith(x, weight, bias, (w, b) => ops.layerNorm.t(x.id, normalizedShape as number[], w, b, eps));

export const softmax = (x: Tensor, dim: number): Tensor => ops.softmax.t(x.id, dim);
export const logSoftmax = (x: Tensor, dim: number): Tensor => ops.logSoftmax.t(x.id, dim);

/** GELU; "tanh" is the approximation diffusers' GELU(approximate="tanh") uses. */
export const gelu = (x: Tensor, approximate: "none" | "tanh" = "none"): Tensor => ops.gelu.t(x.id, approximate);

/** x·sigmoid(1.702·x), the activation of OpenAI's CLIP (transformers "quick_gelu"). */
export const quickGelu = (x: Tensor): Tensor => scope(() => mul(x, sigmoid(mul(x, 1.702))));

/** Zeroes elements with probability p and scales the rest by 1/(1−p), when training. */
export const dropout = (x: Tensor, p: number, training = true): Tensor => ops.dropout.t(x.id, p, training);

/** Rows of `weight` picked by integer `indices`. */
export const embedding = (weight: Tensor, indices: Tensor): Tensor => ops.embedding.t(weight.id, indices.id);

export interface InterpolateOptions {
  size?: [number, number];
  scaleFactor?: number | [number, number];
  mode?: "nearest" | "nearest-exact" | "bilinear";
  alignCorners?: boolean;
}

/** Resizes NCHW images, as torch.nn.functional.interpolate. */
export function interpolate(x: Tensor, o: InterpolateOptions): Tensor {
  if ((o.size === undefined) === (o.scaleFactor === undefined)) {
    throw new Error("interpolate: give exactly one of size and scaleFactor");
  }
  const size = o.size ?? null;
  const scales =
    o.scaleFactor === undefined
      ? null
      : typeof o.scaleFactor === "number"
        ? [o.scaleFactor, o.scaleFactor]
        : o.scaleFactor;
  switch (o.mode ?? "nearest") {
    case "nearest":
      return ops.nearest.t(x.id, size, scales);
    case "nearest-exact":
      return ops.nearestExact.t(x.id, size, scales);
    case "bilinear":
      return ops.bilinear.t(x.id, size, o.alignCorners ?? false, scales);
    default:
      throw new Error(`interpolate: unknown mode '${o.mode}'`);
  }
}

/** Pads the last dimensions; `pad` lists (before, after) pairs from the last dimension back. */
export function pad(
  x: Tensor,
  padding: readonly number[],
  mode: "constant" | "reflect" | "replicate" = "constant",
  value = 0,
) {
  if (mode === "constant") return ops.constantPad.t(x.id, padding as number[], value);
  if (padding.length !== 4) throw new Error(`pad: mode '${mode}' takes 4 padding values (2-D), got ${padding.length}`);
  return mode === "reflect"
    ? ops.reflectionPad.t(x.id, padding as number[])
    : ops.replicationPad.t(x.id, padding as number[]);
}

export interface AttentionOptions {
  /** Boolean (true = attend) or additive float mask, broadcastable to [..., L, S]. */
  mask?: Tensor | null;
  dropout?: number;
  causal?: boolean;
  /** Defaults to 1/sqrt(head dim). */
  scale?: number;
  /** Use the plain formula even where libtorch has a fused kernel (for tests). */
  forceMath?: boolean;
}

let sdpaTakesScale: boolean | undefined;

/**
 * softmax(q·kᵀ·scale + mask)·v over [..., L, E] queries and [..., S, E] keys,
 * as torch.nn.functional.scaled_dot_product_attention. libtorch ≥ 2.0 runs its
 * fused kernels (flash / memory-efficient on GPUs); older ones run the same
 * formula step by step.
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions = {}): Tensor {
  if (!o.forceMath && ops.sdpa.exists()) {
    sdpaTakesScale ??= ops.sdpa.schema().includes("scale");
    if (o.scale === undefined || sdpaTakesScale) {
      const args = [q.id, k.id, v.id, o.mask ? o.mask.id : null, o.dropout ?? 0, o.causal ?? false];
      return o.scale === undefined ? ops.sdpa.t(...args) : ops.sdpa.t(...args, o.scale);
    }
  }
  return mathAttention(q, k, v, o);
}

/**
 * Score elements one query slice may hold (default 2^22: 16 MiB of float32
 * scores). Bigger slices are slow: 2^24 elements are 64 MiB, the mmap
 * threshold the addon sets (native/runtime.cc), so each slice is a fresh
 * mapping that page-faults on every call, and the size costs beyond that:
 * [2, 8, 1024, 40] attention took 684 ms with 2^24 (482 with glibc's mmap
 * off) and 65 ms with 2^22 on the 2-core VM (bench/RESULTS.md "Attention slices").
 */
let sliceElements = 1 << 22;

/**
 * Caps the scores the math attention path holds at once: queries go in slices
 * of rows so one slice's [..., rows, S] scores stay under `elements`
 * (diffusers' sliced attention; Infinity: one slice). Returns the old cap.
 */
export function setAttentionSliceElements(elements: number): number {
  if (!(elements >= 1)) throw new Error(`attention slice: elements must be at least 1, got ${elements}`);
  const old = sliceElements;
  sliceElements = elements;
  return old;
}

/**
 * The math path without score-sized copies: q is scaled (not the scores), the
 * masked scores replace the raw ones, and the scores are freed once the
 * softmax has them, so a slice holds one scores-sized buffer (two for a moment).
 */
function mathAttention(q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions): Tensor {
  return scope(() => {
    const shape = q.shape;
    const L = shape[shape.length - 2];
    const S = k.shape[k.shape.length - 2];
    const scale = o.scale ?? 1 / Math.sqrt(shape[shape.length - 1]);
    const batch = shape.slice(0, -2).reduce((a, b) => a * b, 1);
    const rows = Math.max(1, Math.min(L, Math.floor(sliceElements / Math.max(1, batch * S))));
    const qs = mul(q, scale);
    const kt = transpose(k, -2, -1);
    if (rows >= L) return attendRows(qs, kt, v, 0, L, S, o);
    const parts: Tensor[] = [];
    for (let r0 = 0; r0 < L; r0 += rows) {
      const n = Math.min(rows, L - r0);
      parts.push(scope(() => attendRows(narrow(qs, -2, r0, n), kt, v, r0, L, S, o)));
    }
    return cat(parts, -2);
  });
}

/** softmax(q·kᵀ + mask)·v for the query rows r0 … r0 + rows of q (q already scaled). */
function attendRows(q: Tensor, kt: Tensor, v: Tensor, r0: number, L: number, S: number, o: AttentionOptions): Tensor {
  const rows = q.shape[q.shape.length - 2];
  let scores = matmul(q, kt);
  const fill = (s: Tensor, keep: Tensor): Tensor => {
    const out = maskedFill(s, logicalNot(keep), Number.NEGATIVE_INFINITY);
    s.dispose();
    return out;
  };
  if (o.causal) scores = fill(scores, ones([rows, S], { dtype: "bool", device: q.device }).tril(r0));
  if (o.mask) {
    const m = o.mask.ndim >= 2 && o.mask.size(-2) === L && L > 1 ? narrow(o.mask, -2, r0, rows) : o.mask;
    if (m.dtype === "bool") {
      scores = fill(scores, m);
    } else {
      const masked = scores.add(m);
      scores.dispose();
      scores = masked;
    }
  }
  let weights = softmax(scores, -1);
  scores.dispose(); // softmax's backward keeps its output, not its input
  if (o.dropout) weights = dropout(weights, o.dropout, true);
  return matmul(weights, v);
}

/** Mean (default), sum or element-wise squared error. */
export function mseLoss(a: Tensor, b: Tensor, reduction: "mean" | "sum" | "none" = "mean"): Tensor {
  return ops.mseLoss.t(a.id, b.id, { none: 0, mean: 1, sum: 2 }[reduction]);
}
