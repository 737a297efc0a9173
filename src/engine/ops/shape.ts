// Views and data movement: reshape, permute, concatenate, split, index, cast.
import { defOp, ids } from "../dispatch.js";
import { type DType, dtypeCode } from "../dtype.js";
import { native } from "../native.js";
import type { Tensor } from "../tensor.js";

const ops = {
  reshape: defOp("aten::reshape"),
  view: defOp("aten::view"),
  permute: defOp("aten::permute"),
  transpose: defOp("aten::transpose.int"),
  cat: defOp("aten::cat"),
  stack: defOp("aten::stack"),
  split: defOp("aten::split.Tensor"),
  splitSizes: defOp("aten::split_with_sizes"),
  chunk: defOp("aten::chunk"),
  narrow: defOp("aten::narrow"),
  indexSelect: defOp("aten::index_select"),
  gather: defOp("aten::gather"),
  scatterAdd: defOp("aten::scatter_add"),
  index: defOp("aten::index.Tensor"),
  expand: defOp("aten::expand"),
  flatten: defOp("aten::flatten.using_ints"),
  contiguous: defOp("aten::contiguous"),
  squeeze: defOp("aten::squeeze"),
  squeezeDim: defOp("aten::squeeze.dim"),
  unsqueeze: defOp("aten::unsqueeze"),
  slice: defOp("aten::slice.Tensor"),
  select: defOp("aten::select.int"),
  repeat: defOp("aten::repeat"),
  repeatInterleave: defOp("aten::repeat_interleave.self_int"),
  clone: defOp("aten::clone"),
  detach: defOp("aten::detach"),
  flip: defOp("aten::flip"),
  roll: defOp("aten::roll"),
  tril: defOp("aten::tril"),
  triu: defOp("aten::triu"),
  toDtype: defOp("aten::to.dtype"),
};

export const reshape = (t: Tensor, shape: readonly number[]): Tensor => ops.reshape.t(t.id, shape as number[]);
export const view = (t: Tensor, shape: readonly number[]): Tensor => ops.view.t(t.id, shape as number[]);
export const permute = (t: Tensor, dims: readonly number[]): Tensor => ops.permute.t(t.id, dims as number[]);
export const transpose = (t: Tensor, d0: number, d1: number): Tensor => ops.transpose.t(t.id, d0, d1);
export const cat = (ts: readonly Tensor[], dim = 0): Tensor => ops.cat.t(ids(ts), dim);
export const stack = (ts: readonly Tensor[], dim = 0): Tensor => ops.stack.t(ids(ts), dim);

/** Pieces of `size` along `dim` (the last may be smaller), or pieces of the given sizes. */
export function split(t: Tensor, size: number | readonly number[], dim = 0): Tensor[] {
  return typeof size === "number" ? ops.split.ts(t.id, size, dim) : ops.splitSizes.ts(t.id, size as number[], dim);
}

export const chunk = (t: Tensor, chunks: number, dim = 0): Tensor[] => ops.chunk.ts(t.id, chunks, dim);
export const narrow = (t: Tensor, dim: number, start: number, length: number): Tensor =>
  ops.narrow.t(t.id, dim, start, length);
export const indexSelect = (t: Tensor, dim: number, index: Tensor): Tensor => ops.indexSelect.t(t.id, dim, index.id);
export const gather = (t: Tensor, dim: number, index: Tensor): Tensor => ops.gather.t(t.id, dim, index.id);
export const scatterAdd = (t: Tensor, dim: number, index: Tensor, src: Tensor): Tensor =>
  ops.scatterAdd.t(t.id, dim, index.id, src.id);

/** Advanced indexing, t[i0, i1, …]: null keeps a dimension whole. */
export const index = (t: Tensor, indices: readonly (Tensor | null)[]): Tensor =>
  ops.index.t(
    t.id,
    indices.map((i) => (i ? i.id : null)),
  );

export const expand = (t: Tensor, shape: readonly number[]): Tensor => ops.expand.t(t.id, shape as number[]);
export const flatten = (t: Tensor, startDim = 0, endDim = -1): Tensor => ops.flatten.t(t.id, startDim, endDim);
export const contiguous = (t: Tensor): Tensor => ops.contiguous.t(t.id);
export const isContiguous = (t: Tensor): boolean => native.meta(t.id)[4];
export const squeeze = (t: Tensor, dim?: number): Tensor =>
  dim === undefined ? ops.squeeze.t(t.id) : ops.squeezeDim.t(t.id, dim);
export const unsqueeze = (t: Tensor, dim: number): Tensor => ops.unsqueeze.t(t.id, dim);

/** t[start:end:step] along `dim`; negative bounds count from the end. */
export const slice = (t: Tensor, dim: number, start: number | null, end: number | null, step = 1): Tensor =>
  ops.slice.t(t.id, dim, start, end, step);

export const select = (t: Tensor, dim: number, i: number): Tensor => ops.select.t(t.id, dim, i);
export const repeat = (t: Tensor, times: readonly number[]): Tensor => ops.repeat.t(t.id, times as number[]);
export const repeatInterleave = (t: Tensor, repeats: number, dim?: number): Tensor =>
  ops.repeatInterleave.t(t.id, repeats, dim ?? null);
export const clone = (t: Tensor): Tensor => ops.clone.t(t.id);
/** The same data, cut from the autograd graph. */
export const detach = (t: Tensor): Tensor => ops.detach.t(t.id);
export const flip = (t: Tensor, dims: readonly number[]): Tensor => ops.flip.t(t.id, dims as number[]);
export const roll = (t: Tensor, shifts: readonly number[], dims: readonly number[]): Tensor =>
  ops.roll.t(t.id, shifts as number[], dims as number[]);
export const tril = (t: Tensor, diagonal = 0): Tensor => ops.tril.t(t.id, diagonal);
export const triu = (t: Tensor, diagonal = 0): Tensor => ops.triu.t(t.id, diagonal);
export const toDtype = (t: Tensor, dtype: DType): Tensor => ops.toDtype.t(t.id, dtypeCode(dtype));
