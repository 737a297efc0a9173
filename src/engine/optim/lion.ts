// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
// the sign of an interpolation of momentum and gradient, as
// lucidrains/lion-pytorch (lion_pytorch/lion_pytorch.py, update_fn).
import { zerosLike } from "../ops/creation.js";
import { add_, mul_ } from "../ops/inplace.js";
import { add, mul, sign } from "../ops/math.js";
import type { Tensor } from "../tensor.js";
import {
  checkBetas,
  checkNonNegative,
  Optimizer,
  type ParamGroup,
  type ParamState,
  type ParamsInput,
} from "./optimizer.js";

export interface LionHyper {
  lr: number;
  betas: [number, number];
  weightDecay: number;
}

export type LionOptions = Partial<LionHyper>;

export class Lion extends Optimizer<LionHyper> {
  /** Defaults as lion-pytorch's: lr 1e-4, betas (0.9, 0.99), no weight decay. */
  constructor(params: ParamsInput<LionHyper>, options: LionOptions = {}) {
    super("Lion", params, {
      lr: options.lr ?? 1e-4,
      betas: options.betas ? [...options.betas] : [0.9, 0.99],
      weightDecay: options.weightDecay ?? 0,
    });
  }

  protected override validate(h: LionHyper): void {
    checkNonNegative("Lion", "learning rate", h.lr);
    checkBetas("Lion", h.betas, true);
    checkNonNegative("Lion", "weight_decay value", h.weightDecay);
  }

  protected override requiredState(): string[] {
    return ["exp_avg"];
  }

  protected override update(p: Tensor, grad: Tensor, g: ParamGroup<LionHyper>, st: ParamState): void {
    const [beta1, beta2] = g.betas;
    const expAvg = st.tensors.get("exp_avg") ?? this.setState(st, "exp_avg", zerosLike(p));
    mul_(p, 1 - g.lr * g.weightDecay);
    // update = sign(beta1·m + (1-beta1)·g): lion-pytorch's clone().mul_(beta1).add(grad, alpha=1-beta1).sign_().
    add_(p, sign(add(mul(expAvg, beta1), grad, 1 - beta1)), -g.lr);
    add_(mul_(expAvg, beta2), grad, 1 - beta2);
  }
}
