// Gradient clipping by total norm: torch.nn.utils.clip_grad_norm_
// (pytorch/torch/nn/utils/clip_grad.py, 1.13), op for op.
import { noGrad } from "../autograd.js";
import { defOp } from "../dispatch.js";
import { toDevice } from "../ops/creation.js";
import { mul_ } from "../ops/inplace.js";
import { abs, add, clamp, isfinite, max, mul, reciprocal } from "../ops/math.js";
import { stack } from "../ops/shape.js";
import { scope } from "../scope.js";
import { Tensor } from "../tensor.js";

// torch.norm(x, p) with no dim runs aten::norm over every dimension, not linalg_vector_norm.
const normOp = defOp("aten::norm.ScalarOpt_dim");
const pNorm = (t: Tensor, p: number): Tensor => normOp.t(t.id, p, [...t.shape.keys()], false);

/** The total `normType` norm of these gradients as one vector (0-d, on the first one's device). */
function normOf(grads: readonly Tensor[], normType: number): Tensor {
  const device = grads[0].device;
  if (normType === Number.POSITIVE_INFINITY) {
    const norms = grads.map((g) => toDevice(max(abs(g)), device));
    return norms.length === 1 ? norms[0] : max(stack(norms));
  }
  return pNorm(stack(grads.map((g) => toDevice(pNorm(g, normType), device))), normType);
}

/** The total 2-norm of the gradients of `params` without changing them (0 without any); NaN or Infinity when one is. */
export function gradNorm(params: readonly Tensor[]): number {
  return noGrad(() =>
    scope(() => {
      const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
      return grads.length === 0 ? 0 : normOf(grads, 2).item();
    }),
  );
}

export interface ClipOptions {
  /** Throw when the total norm is NaN or infinite instead of scaling by it. */
  errorIfNonfinite?: boolean;
}

/**
 * Scales the gradients of `params` in place so that their total `normType`
 * norm (all gradients as one vector) is at most `maxNorm`, and returns the
 * total norm before clipping. Params without a grad are left out; with none,
 * returns 0. `normType` may be Infinity (the largest magnitude).
 */
export function clipGradNorm(
  params: Tensor | readonly Tensor[],
  maxNorm: number,
  normType = 2,
  o: ClipOptions = {},
): number {
  if (typeof maxNorm !== "number" || !(maxNorm >= 0)) {
    throw new Error(`clipGradNorm: maxNorm must be a number >= 0, got ${maxNorm}`);
  }
  if (typeof normType !== "number" || Number.isNaN(normType)) {
    throw new Error(`clipGradNorm: normType must be a number or Infinity, got ${normType}`);
  }
  const list = params instanceof Tensor ? [params] : params;
  return noGrad(() =>
    scope(() => {
      const grads = list.map((p) => p.grad).filter((g): g is Tensor => g !== null);
      if (grads.length === 0) return 0;
      const total = normOf(grads, normType);
      if (o.errorIfNonfinite && !isfinite(total).item()) {
        throw new Error(
          `clipGradNorm: the total norm of order ${normType} of the gradients is non-finite, so it cannot be clipped`,
        );
      }
      // max_norm / (total + 1e-6) is reciprocal(total + 1e-6) * max_norm in torch (Tensor.__rtruediv__).
      const coef = clamp(mul(reciprocal(add(total, 1e-6)), maxNorm), null, 1.0);
      for (const g of grads) mul_(g, toDevice(coef, g.device));
      return total.item();
    }),
  );
}
