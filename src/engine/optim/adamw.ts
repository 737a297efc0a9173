// Adam with decoupled weight decay: torch.optim.AdamW, single-tensor path
// (pytorch/torch/optim/adamw.py, _single_tensor_adamw, 1.13, capturable=False).

import { zerosLike } from "../ops/creation.js";
import { add_, addcdiv_, addcmul_, copy_, mul_ } from "../ops/inplace.js";
import { div, maximum, neg, sqrt } from "../ops/math.js";
import type { Tensor } from "../tensor.js";
import { checkNonNegative, Optimizer, type ParamGroup, type ParamState, type ParamsInput } from "./optimizer.js";

export interface AdamWHyper {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  amsgrad: boolean;
  maximize: boolean;
}

export type AdamWOptions = Partial<AdamWHyper>;

export class AdamW extends Optimizer<AdamWHyper> {
  /** Defaults as torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2. */
  constructor(params: ParamsInput<AdamWHyper>, options: AdamWOptions = {}) {
    super("AdamW", params, {
      lr: options.lr ?? 1e-3,
      betas: options.betas ? [...options.betas] : [0.9, 0.999],
      eps: options.eps ?? 1e-8,
      weightDecay: options.weightDecay ?? 1e-2,
      amsgrad: options.amsgrad ?? false,
      maximize: options.maximize ?? false,
    });
  }

  protected override validate(h: AdamWHyper): void {
    checkNonNegative("AdamW", "learning rate", h.lr);
    checkNonNegative("AdamW", "epsilon value", h.eps);
    if (!Array.isArray(h.betas) || h.betas.length !== 2) {
      throw new Error(`AdamW: betas must be two numbers, got ${JSON.stringify(h.betas)}`);
    }
    h.betas.forEach((b, i) => {
      if (typeof b !== "number" || !(b >= 0 && b < 1)) {
        throw new Error(`AdamW: invalid beta parameter at index ${i}: ${b} (must be in [0, 1))`);
      }
    });
    checkNonNegative("AdamW", "weight_decay value", h.weightDecay);
  }

  protected override requiredState(g: ParamGroup<AdamWHyper>): string[] {
    return g.amsgrad ? ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"] : ["exp_avg", "exp_avg_sq"];
  }

  protected override update(p: Tensor, grad: Tensor, g: ParamGroup<AdamWHyper>, st: ParamState): void {
    const { lr, eps, weightDecay, amsgrad } = g;
    const [beta1, beta2] = g.betas;
    const gr = g.maximize ? neg(grad) : grad;
    const expAvg = st.tensors.get("exp_avg") ?? this.setState(st, "exp_avg", zerosLike(p));
    const expAvgSq = st.tensors.get("exp_avg_sq") ?? this.setState(st, "exp_avg_sq", zerosLike(p));

    // Decoupled weight decay, before the Adam update (torch multiplies even by 1).
    mul_(p, 1 - lr * weightDecay);
    add_(mul_(expAvg, beta1), gr, 1 - beta1);
    addcmul_(mul_(expAvgSq, beta2), gr, gr, 1 - beta2);

    const step = st.step;
    const biasCorrection1 = 1 - beta1 ** step;
    const biasCorrection2 = 1 - beta2 ** step;
    const stepSize = lr / biasCorrection1;
    const biasCorrection2Sqrt = Math.sqrt(biasCorrection2);

    let second = expAvgSq;
    if (amsgrad) {
      // The running maximum of the second moment normalizes instead.
      const maxSq = st.tensors.get("max_exp_avg_sq") ?? this.setState(st, "max_exp_avg_sq", zerosLike(p));
      copy_(maxSq, maximum(maxSq, expAvgSq));
      second = maxSq;
    }
    const denom = add_(div(sqrt(second), biasCorrection2Sqrt), eps);
    addcdiv_(p, expAvg, denom, -stepSize);
  }
}
