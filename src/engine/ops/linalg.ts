// Matrix products and the decompositions the LoRA tools need (svd, qr, kron).
import { defOp, ids } from "../dispatch.js";
import type { Tensor } from "../tensor.js";

const ops = {
  matmul: defOp("aten::matmul"),
  mm: defOp("aten::mm"),
  bmm: defOp("aten::bmm"),
  baddbmm: defOp("aten::baddbmm"),
  linear: defOp("aten::linear"),
  einsum: defOp("aten::einsum"),
  outer: defOp("aten::outer"),
  svd: defOp("aten::linalg_svd"),
  qr: defOp("aten::linalg_qr"),
  kron: defOp("aten::kron"),
};

export const matmul = (a: Tensor, b: Tensor): Tensor => ops.matmul.t(a.id, b.id);
export const mm = (a: Tensor, b: Tensor): Tensor => ops.mm.t(a.id, b.id);
export const bmm = (a: Tensor, b: Tensor): Tensor => ops.bmm.t(a.id, b.id);
/** beta·input + alpha·(b1 @ b2), batched. With beta = 0 the input is ignored, NaNs included. */
export const baddbmm = (input: Tensor, b1: Tensor, b2: Tensor, beta = 1, alpha = 1): Tensor =>
  ops.baddbmm.t(input.id, b1.id, b2.id, beta, alpha);
/** x @ weightᵀ + bias, as torch.nn.functional.linear. */
export const linear = (x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor =>
  ops.linear.t(x.id, weight.id, bias ? bias.id : null);
export const einsum = (equation: string, ...operands: Tensor[]): Tensor => ops.einsum.t(equation, ids(operands));
export const outer = (a: Tensor, b: Tensor): Tensor => ops.outer.t(a.id, b.id);
export const kron = (a: Tensor, b: Tensor): Tensor => ops.kron.t(a.id, b.id);

/** A = U·diag(S)·Vh (torch.linalg.svd); reduced by default, as LoRA extraction uses. */
export function svd(a: Tensor, fullMatrices = false): { U: Tensor; S: Tensor; Vh: Tensor } {
  const [U, S, Vh] = ops.svd.ts(a.id, fullMatrices);
  return { U, S, Vh };
}

/** A = Q·R (torch.linalg.qr). */
export function qr(a: Tensor, mode: "reduced" | "complete" | "r" = "reduced"): { Q: Tensor; R: Tensor } {
  const [Q, R] = ops.qr.ts(a.id, mode);
  return { Q, R };
}
