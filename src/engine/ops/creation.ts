// Creating tensors: from data, filled, ranges and random draws.
import { defOp } from "../dispatch.js";
import { type DType, dtypeCode, dtypeOfArray } from "../dtype.js";
import { native } from "../native.js";
import type { Generator } from "../random.js";
import { Tensor } from "../tensor.js";

export interface TensorOptions {
  dtype?: DType;
  device?: string;
  requiresGrad?: boolean;
}

export interface RandomOptions extends TensorOptions {
  generator?: Generator;
}

const ops = {
  zeros: defOp("aten::zeros"),
  ones: defOp("aten::ones"),
  full: defOp("aten::full"),
  empty: defOp("aten::empty.memory_format"),
  arange: defOp("aten::arange.start_step"),
  linspace: defOp("aten::linspace"),
  rand: defOp("aten::rand.generator"),
  randn: defOp("aten::randn.generator"),
  randint: defOp("aten::randint.low_generator"),
  zerosLike: defOp("aten::zeros_like"),
  onesLike: defOp("aten::ones_like"),
  fullLike: defOp("aten::full_like"),
  eye: defOp("aten::eye.m"),
  to: defOp("aten::to.device"),
};

function finish(t: Tensor, o: TensorOptions | undefined): Tensor {
  if (o?.requiresGrad) native.setRequiresGrad(t.id, true);
  return t;
}

function code(o: TensorOptions | undefined, fallback: DType = "float32"): number {
  return dtypeCode(o?.dtype ?? fallback);
}

function checkShape(shape: readonly number[], what: string): number[] {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new Error(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  return shape as number[];
}

type Nested = number | boolean | Nested[];

function flatten(data: Nested, shape: number[], out: number[], depth: number): void {
  if (Array.isArray(data)) {
    if (shape.length === depth) shape.push(data.length);
    else if (shape[depth] !== data.length) throw new Error("tensor(): ragged nested array");
    for (const d of data) flatten(d, shape, out, depth + 1);
  } else {
    if (shape.length !== depth) throw new Error("tensor(): ragged nested array");
    out.push(Number(data));
  }
}

/**
 * A tensor holding a copy of `data`: a typed array (with `shape`, default 1-D)
 * or nested JS arrays of numbers. Nested arrays default to float32.
 */
export function tensor(data: ArrayBufferView | Nested, o: TensorOptions & { shape?: readonly number[] } = {}): Tensor {
  let t: Tensor;
  if (ArrayBuffer.isView(data)) {
    const dtype = o.dtype ?? dtypeOfArray(data);
    const elems = data.byteLength / (data as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    const shape = checkShape(o.shape ?? [elems], "tensor()");
    const natural = dtypeOfArray(data);
    t = new Tensor(native.fromData(data, shape, dtypeCode(natural)));
    if (dtype !== natural) t = swap(t, t.to(dtype));
  } else {
    const shape: number[] = [];
    const flat: number[] = [];
    flatten(data, shape, flat, 0);
    const want = o.shape ? checkShape(o.shape, "tensor()") : shape;
    t = new Tensor(native.fromData(Float64Array.from(flat), want, dtypeCode("float64")));
    t = swap(t, t.to(o.dtype ?? "float32"));
  }
  if (o.device && o.device !== "cpu") t = swap(t, t.to(o.device));
  return finish(t, o);
}

function swap(old: Tensor, fresh: Tensor): Tensor {
  if (fresh !== old) old.dispose();
  return fresh;
}

export function zeros(shape: readonly number[], o?: TensorOptions): Tensor {
  return finish(ops.zeros.t(checkShape(shape, "zeros"), code(o), null, o?.device), o);
}

export function ones(shape: readonly number[], o?: TensorOptions): Tensor {
  return finish(ops.ones.t(checkShape(shape, "ones"), code(o), null, o?.device), o);
}

export function full(shape: readonly number[], value: number, o?: TensorOptions): Tensor {
  return finish(ops.full.t(checkShape(shape, "full"), value, code(o), null, o?.device), o);
}

/** Uninitialised memory: only for buffers that are written before they are read. */
export function empty(shape: readonly number[], o?: TensorOptions): Tensor {
  return finish(ops.empty.t(checkShape(shape, "empty"), code(o), null, o?.device), o);
}

/** [start, end) in steps of `step`; int64 when all three are integers, as torch.arange. */
export function arange(start: number, end?: number, step = 1, o?: TensorOptions): Tensor {
  const [s, e] = end === undefined ? [0, start] : [start, end];
  const ints = Number.isInteger(s) && Number.isInteger(e) && Number.isInteger(step);
  return finish(ops.arange.t(s, e, step, code(o, ints ? "int64" : "float32"), null, o?.device), o);
}

export function linspace(start: number, end: number, steps: number, o?: TensorOptions): Tensor {
  return finish(ops.linspace.t(start, end, steps, code(o), null, o?.device), o);
}

export function rand(shape: readonly number[], o?: RandomOptions): Tensor {
  return finish(ops.rand.t(checkShape(shape, "rand"), o?.generator?.id ?? null, code(o), null, o?.device), o);
}

/** N(0, 1) draws; with a CPU Generator, the same numbers as torch.randn(shape, generator=g). */
export function randn(shape: readonly number[], o?: RandomOptions): Tensor {
  return finish(ops.randn.t(checkShape(shape, "randn"), o?.generator?.id ?? null, code(o), null, o?.device), o);
}

/** Integers in [low, high), int64 by default. */
export function randint(low: number, high: number, shape: readonly number[], o?: RandomOptions): Tensor {
  return finish(
    ops.randint.t(low, high, checkShape(shape, "randint"), o?.generator?.id ?? null, code(o, "int64"), null, o?.device),
    o,
  );
}

export function zerosLike(t: Tensor, o?: TensorOptions): Tensor {
  return finish(ops.zerosLike.t(t.id, o?.dtype ? dtypeCode(o.dtype) : null, null, o?.device), o);
}

export function onesLike(t: Tensor, o?: TensorOptions): Tensor {
  return finish(ops.onesLike.t(t.id, o?.dtype ? dtypeCode(o.dtype) : null, null, o?.device), o);
}

export function fullLike(t: Tensor, value: number, o?: TensorOptions): Tensor {
  return finish(ops.fullLike.t(t.id, value, o?.dtype ? dtypeCode(o.dtype) : null, null, o?.device), o);
}

/** N(0, 1) noise shaped, typed and placed like `t`. */
export function randnLike(t: Tensor, o?: RandomOptions): Tensor {
  return randn(t.shape, { dtype: t.dtype, device: t.device, ...o });
}

/** The n×m identity (m defaults to n). */
export function eye(n: number, m = n, o?: TensorOptions): Tensor {
  return finish(ops.eye.t(n, m, code(o), null, o?.device), o);
}

/** Moves and/or casts; returns `t` itself (a new handle) when nothing changes. */
export function toDevice(t: Tensor, device: string, dtype?: DType): Tensor {
  return ops.to.t(t.id, device, dtypeCode(dtype ?? t.dtype));
}
