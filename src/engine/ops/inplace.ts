// In-place updates, for optimizers and buffers. Run them under noGrad() on
// leaves that require grad, as torch.optim does.
import { defOp } from "../dispatch.js";
import type { Generator } from "../random.js";
import { Tensor } from "../tensor.js";

const ops = {
  addT: defOp("aten::add_.Tensor"),
  addS: defOp("aten::add_.Scalar"),
  subT: defOp("aten::sub_.Tensor"),
  mulT: defOp("aten::mul_.Tensor"),
  mulS: defOp("aten::mul_.Scalar"),
  divT: defOp("aten::div_.Tensor"),
  divS: defOp("aten::div_.Scalar"),
  addcmul: defOp("aten::addcmul_"),
  addcdiv: defOp("aten::addcdiv_"),
  lerpS: defOp("aten::lerp_.Scalar"),
  zero: defOp("aten::zero_"),
  copy: defOp("aten::copy_"),
  fill: defOp("aten::fill_.Scalar"),
  clamp: defOp("aten::clamp_"),
  sqrt: defOp("aten::sqrt_"),
  uniform: defOp("aten::uniform_"),
  normal: defOp("aten::normal_"),
};

/** t += alpha·b */
export function add_(t: Tensor, b: Tensor | number, alpha = 1): Tensor {
  if (b instanceof Tensor) ops.addT.v(t.id, b.id, alpha);
  else ops.addS.v(t.id, b, alpha);
  return t;
}

/** t −= alpha·b */
export function sub_(t: Tensor, b: Tensor, alpha = 1): Tensor {
  ops.subT.v(t.id, b.id, alpha);
  return t;
}

export function mul_(t: Tensor, b: Tensor | number): Tensor {
  if (b instanceof Tensor) ops.mulT.v(t.id, b.id);
  else ops.mulS.v(t.id, b);
  return t;
}

export function div_(t: Tensor, b: Tensor | number): Tensor {
  if (b instanceof Tensor) ops.divT.v(t.id, b.id);
  else ops.divS.v(t.id, b);
  return t;
}

/** t += value·t1·t2 */
export function addcmul_(t: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor {
  ops.addcmul.v(t.id, t1.id, t2.id, value);
  return t;
}

/** t += value·t1/t2 */
export function addcdiv_(t: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor {
  ops.addcdiv.v(t.id, t1.id, t2.id, value);
  return t;
}

/** t += w·(end − t) */
export function lerp_(t: Tensor, end: Tensor, w: number): Tensor {
  ops.lerpS.v(t.id, end.id, w);
  return t;
}

export function zero_(t: Tensor): Tensor {
  ops.zero.v(t.id);
  return t;
}

/** Copies `src` into `t` (broadcasting, casting, across devices). */
export function copy_(t: Tensor, src: Tensor): Tensor {
  ops.copy.v(t.id, src.id);
  return t;
}

export function fill_(t: Tensor, value: number): Tensor {
  ops.fill.v(t.id, value);
  return t;
}

export function clamp_(t: Tensor, min: number | null, max: number | null = null): Tensor {
  ops.clamp.v(t.id, min, max);
  return t;
}

export function sqrt_(t: Tensor): Tensor {
  ops.sqrt.v(t.id);
  return t;
}

/** Fills with U(from, to) draws (torch.nn.init.uniform_). */
export function uniform_(t: Tensor, from = 0, to = 1, generator?: Generator): Tensor {
  ops.uniform.v(t.id, from, to, generator ? generator.id : null);
  return t;
}

/** Fills with N(mean, std²) draws (torch.nn.init.normal_). */
export function normal_(t: Tensor, mean = 0, std = 1, generator?: Generator): Tensor {
  ops.normal.v(t.id, mean, std, generator ? generator.id : null);
  return t;
}
