// The Tensor: a handle to a libtorch tensor owned on the C++ side.
// Methods are thin conveniences over the functions in ops/ (which hold the
// docs); every result is a new Tensor owned by the innermost scope.
import { type DType, dtypeName, type TypedArray, typedArrayView } from "./dtype.js";
import { native, type TensorId } from "./native.js";
import * as creation from "./ops/creation.js";
import * as inplace from "./ops/inplace.js";
import * as la from "./ops/linalg.js";
import * as m from "./ops/math.js";
import * as nn from "./ops/nn.js";
import * as sh from "./ops/shape.js";
import { OWNED, type Owned, track } from "./scope.js";

type Operand = Tensor | number;
type Dims = number | readonly number[];

export class Tensor implements Owned {
  readonly [OWNED] = true;
  #id: TensorId;
  /** Set by keep(): no scope disposes this tensor. */
  kept = false;

  /** Wraps a tensor id the addon returned; the new Tensor owns it. */
  constructor(id: TensorId) {
    this.#id = id;
    track(this);
  }

  get id(): TensorId {
    if (this.#id < 0) throw new Error("use of a disposed tensor");
    return this.#id;
  }

  get disposed(): boolean {
    return this.#id < 0;
  }

  /** Frees the native tensor now (its storage goes when no view shares it). */
  dispose(): void {
    if (this.#id >= 0) {
      native.free(this.#id);
      this.#id = -1;
    }
  }

  get shape(): number[] {
    return native.shape(this.id);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get dtype(): DType {
    return dtypeName(native.dtype(this.id));
  }

  get device(): string {
    return native.meta(this.id)[2];
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  size(dim: number): number {
    const s = this.shape;
    const d = dim < 0 ? s.length + dim : dim;
    if (d < 0 || d >= s.length) throw new Error(`size(${dim}): tensor has ${s.length} dimensions`);
    return s[d];
  }

  toString(): string {
    const [dtype, shape, device, rg] = native.meta(this.id);
    return `Tensor(${dtypeName(dtype)}[${shape.join(", ")}] on ${device}${rg ? ", requires grad" : ""})`;
  }

  // ---- data out --------------------------------------------------------------

  /** The single value of a one-element tensor. */
  item(): number {
    return Number(native.item(this.id));
  }

  /** A copy of the elements in row-major order, in the dtype's typed array (f16/bf16: raw bits). */
  toTypedArray(): TypedArray {
    const t = this.#cpuContiguous();
    try {
      return t.withBytes((bytes) => typedArrayView(t.dtype, bytes.slice().buffer));
    } finally {
      if (t !== this) t.dispose();
    }
  }

  /** The elements as plain numbers (float16/bfloat16 converted through float32). */
  toArray(): number[] {
    if (this.dtype === "float16" || this.dtype === "bfloat16") {
      const f = this.to("float32");
      try {
        return f.toArray();
      } finally {
        f.dispose();
      }
    }
    return Array.from(this.toTypedArray() as ArrayLike<number | bigint>, Number);
  }

  /**
   * Runs `fn` over the bytes of a contiguous CPU tensor, with no copy (reads
   * and writes go to the tensor). The view is detached when `fn` returns, so
   * it never keeps a disposed tensor's memory alive.
   */
  withBytes<T>(fn: (bytes: Uint8Array) => T): T {
    const buffer = native.dataView(this.id);
    try {
      return fn(new Uint8Array(buffer));
    } finally {
      if (buffer.byteLength > 0) native.releaseView(buffer);
    }
  }

  #cpuContiguous(): Tensor {
    const onCpu = this.device === "cpu";
    if (onCpu && sh.isContiguous(this)) return this;
    const moved = onCpu ? this : creation.toDevice(this, "cpu");
    const c = sh.contiguous(moved);
    if (moved !== this) moved.dispose();
    return c;
  }

  // ---- autograd ---------------------------------------------------------------

  get requiresGrad(): boolean {
    return native.meta(this.id)[3];
  }

  /** Marks a leaf as a parameter whose gradient backward() accumulates. */
  requiresGrad_(on = true): this {
    native.setRequiresGrad(this.id, on);
    return this;
  }

  get isLeaf(): boolean {
    return native.isLeaf(this.id);
  }

  /** The accumulated gradient (a new handle each time; dispose it), or null. */
  get grad(): Tensor | null {
    const g = native.grad(this.id);
    return g === null ? null : new Tensor(g);
  }

  set grad(g: Tensor | null) {
    native.setGrad(this.id, g ? g.id : null);
  }

  /** Keeps .grad on a non-leaf too. */
  retainGrad(): this {
    native.retainGrad(this.id);
    return this;
  }

  /** Backpropagates from this tensor; `gradient` is required unless it has one element. */
  backward(gradient?: Tensor, o: { retainGraph?: boolean; createGraph?: boolean } = {}): void {
    native.backward([this.id], [gradient ? gradient.id : null], o.retainGraph ?? false, o.createGraph ?? false);
  }

  detach(): Tensor {
    return sh.detach(this);
  }

  // ---- conversion ---------------------------------------------------------------

  /** Casts to a dtype and/or moves to a device ("cpu", "cuda", "cuda:1"). */
  to(target: DType | string, dtype?: DType): Tensor {
    if (isDType(target)) return sh.toDtype(this, target);
    return creation.toDevice(this, target, dtype);
  }

  float(): Tensor {
    return sh.toDtype(this, "float32");
  }

  cpu(): Tensor {
    return creation.toDevice(this, "cpu");
  }

  // ---- shape ----------------------------------------------------------------------

  reshape(...shape: number[]): Tensor {
    return sh.reshape(this, shape);
  }
  view(...shape: number[]): Tensor {
    return sh.view(this, shape);
  }
  permute(...dims: number[]): Tensor {
    return sh.permute(this, dims);
  }
  transpose(d0: number, d1: number): Tensor {
    return sh.transpose(this, d0, d1);
  }
  /** Transposes the last two dimensions. */
  get mT(): Tensor {
    return sh.transpose(this, -2, -1);
  }
  flatten(startDim = 0, endDim = -1): Tensor {
    return sh.flatten(this, startDim, endDim);
  }
  squeeze(dim?: number): Tensor {
    return sh.squeeze(this, dim);
  }
  unsqueeze(dim: number): Tensor {
    return sh.unsqueeze(this, dim);
  }
  expand(...shape: number[]): Tensor {
    return sh.expand(this, shape);
  }
  contiguous(): Tensor {
    return sh.contiguous(this);
  }
  clone(): Tensor {
    return sh.clone(this);
  }
  chunk(chunks: number, dim = 0): Tensor[] {
    return sh.chunk(this, chunks, dim);
  }
  split(size: number | readonly number[], dim = 0): Tensor[] {
    return sh.split(this, size, dim);
  }
  narrow(dim: number, start: number, length: number): Tensor {
    return sh.narrow(this, dim, start, length);
  }
  slice(dim: number, start: number | null, end: number | null, step = 1): Tensor {
    return sh.slice(this, dim, start, end, step);
  }
  select(dim: number, i: number): Tensor {
    return sh.select(this, dim, i);
  }
  repeat(...times: number[]): Tensor {
    return sh.repeat(this, times);
  }
  tril(diagonal = 0): Tensor {
    return sh.tril(this, diagonal);
  }
  triu(diagonal = 0): Tensor {
    return sh.triu(this, diagonal);
  }

  // ---- arithmetic -------------------------------------------------------------------

  add(b: Operand, alpha = 1): Tensor {
    return m.add(this, b, alpha);
  }
  sub(b: Operand, alpha = 1): Tensor {
    return m.sub(this, b, alpha);
  }
  mul(b: Operand): Tensor {
    return m.mul(this, b);
  }
  div(b: Operand): Tensor {
    return m.div(this, b);
  }
  pow(e: Operand): Tensor {
    return m.pow(this, e);
  }
  neg(): Tensor {
    return m.neg(this);
  }
  exp(): Tensor {
    return m.exp(this);
  }
  log(): Tensor {
    return m.log(this);
  }
  sqrt(): Tensor {
    return m.sqrt(this);
  }
  rsqrt(): Tensor {
    return m.rsqrt(this);
  }
  abs(): Tensor {
    return m.abs(this);
  }
  square(): Tensor {
    return m.square(this);
  }
  clamp(min: number | null, max: number | null = null): Tensor {
    return m.clamp(this, min, max);
  }
  eq(b: Operand): Tensor {
    return m.eq(this, b);
  }
  lt(b: Operand): Tensor {
    return m.lt(this, b);
  }
  gt(b: Operand): Tensor {
    return m.gt(this, b);
  }
  maskedFill(mask: Tensor, value: number): Tensor {
    return m.maskedFill(this, mask, value);
  }
  matmul(b: Tensor): Tensor {
    return la.matmul(this, b);
  }

  // ---- reductions ---------------------------------------------------------------------

  sum(dim?: Dims, o?: m.ReduceOptions): Tensor {
    return m.sum(this, dim, o);
  }
  mean(dim?: Dims, o?: m.ReduceOptions): Tensor {
    return m.mean(this, dim, o);
  }
  max(dim?: Dims, keepdim = false): Tensor {
    return m.max(this, dim, keepdim);
  }
  min(dim?: Dims, keepdim = false): Tensor {
    return m.min(this, dim, keepdim);
  }
  argmax(dim?: number, keepdim = false): Tensor {
    return m.argmax(this, dim, keepdim);
  }
  norm(p = 2, dim?: Dims, keepdim = false): Tensor {
    return m.norm(this, p, dim, keepdim);
  }

  // ---- activations ----------------------------------------------------------------------

  sigmoid(): Tensor {
    return nn.sigmoid(this);
  }
  tanh(): Tensor {
    return nn.tanh(this);
  }
  relu(): Tensor {
    return nn.relu(this);
  }
  silu(): Tensor {
    return nn.silu(this);
  }
  softmax(dim: number): Tensor {
    return nn.softmax(this, dim);
  }

  // ---- in place (return this) --------------------------------------------------------------

  add_(b: Operand, alpha = 1): this {
    inplace.add_(this, b, alpha);
    return this;
  }
  mul_(b: Operand): this {
    inplace.mul_(this, b);
    return this;
  }
  zero_(): this {
    inplace.zero_(this);
    return this;
  }
  copy_(src: Tensor): this {
    inplace.copy_(this, src);
    return this;
  }
  fill_(value: number): this {
    inplace.fill_(this, value);
    return this;
  }
}

const DTYPES = new Set<string>([
  "uint8",
  "int8",
  "int16",
  "int32",
  "int64",
  "float16",
  "float32",
  "float64",
  "bool",
  "bfloat16",
]);

function isDType(s: string): s is DType {
  return DTYPES.has(s);
}
