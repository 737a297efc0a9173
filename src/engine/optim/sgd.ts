// Stochastic gradient descent with momentum, dampening, weight decay and
// Nesterov momentum: torch.optim.SGD, single-tensor path
// (pytorch/torch/optim/sgd.py, _single_tensor_sgd, 1.13).
import { add_, mul_ } from "../ops/inplace.js";
import { add, neg } from "../ops/math.js";
import { clone } from "../ops/shape.js";
import type { Tensor } from "../tensor.js";
import { checkNonNegative, Optimizer, type ParamGroup, type ParamState, type ParamsInput } from "./optimizer.js";

export interface SGDHyper {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  maximize: boolean;
}

/** SGD's options: `lr` is required, as in torch. */
export type SGDOptions = Pick<SGDHyper, "lr"> & Partial<SGDHyper>;

export class SGD extends Optimizer<SGDHyper> {
  constructor(params: ParamsInput<SGDHyper>, options: SGDOptions) {
    super("SGD", params, {
      lr: options?.lr,
      momentum: options?.momentum ?? 0,
      dampening: options?.dampening ?? 0,
      weightDecay: options?.weightDecay ?? 0,
      nesterov: options?.nesterov ?? false,
      maximize: options?.maximize ?? false,
    });
  }

  protected override validate(h: SGDHyper): void {
    checkNonNegative("SGD", "learning rate", h.lr);
    checkNonNegative("SGD", "momentum value", h.momentum);
    checkNonNegative("SGD", "weight_decay value", h.weightDecay);
    if (typeof h.dampening !== "number" || !Number.isFinite(h.dampening)) {
      throw new Error(`SGD: invalid dampening: ${h.dampening}`);
    }
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) {
      throw new Error("SGD: Nesterov momentum requires a momentum and zero dampening");
    }
  }

  protected override update(p: Tensor, grad: Tensor, g: ParamGroup<SGDHyper>, st: ParamState): void {
    let d = g.maximize ? neg(grad) : grad;
    if (g.weightDecay !== 0) d = add(d, p, g.weightDecay);
    if (g.momentum !== 0) {
      let buf = st.tensors.get("momentum_buffer");
      // The first buffer is a copy of the (decayed) gradient, without dampening.
      if (!buf) buf = this.setState(st, "momentum_buffer", clone(d));
      else add_(mul_(buf, g.momentum), d, 1 - g.dampening);
      d = g.nesterov ? add(d, buf, g.momentum) : buf;
    }
    add_(p, d, -g.lr);
  }
}
