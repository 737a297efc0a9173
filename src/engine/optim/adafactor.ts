// Adafactor (Shazeer & Stern 2018): factored second moments, relative step
// sizes, update clipping; as huggingface/transformers
// src/transformers/optimization.py (class Adafactor), float32 parameters.

import type { DType } from "../dtype.js";
import { zeros, zerosLike } from "../ops/creation.js";
import { add_, clamp_, div_, mul_ } from "../ops/inplace.js";
import { add, div, mean, mul, norm, rsqrt, square } from "../ops/math.js";
import { unsqueeze } from "../ops/shape.js";
import type { Tensor } from "../tensor.js";
import { checkNonNegative, Optimizer, type ParamGroup, type ParamState, type ParamsInput } from "./optimizer.js";

export interface AdafactorHyper {
  /** The external learning rate; unused when relativeStep (transformers' lr=None). */
  lr: number;
  /** Regularisers of the squared gradient and of the parameter scale. */
  eps: [number, number];
  clipThreshold: number;
  decayRate: number;
  /** First-moment coefficient; null = no first moment (the default). */
  beta1: number | null;
  weightDecay: number;
  scaleParameter: boolean;
  relativeStep: boolean;
  warmupInit: boolean;
}

export type AdafactorOptions = Partial<AdafactorHyper>;

const factored = (shape: readonly number[]) => shape.length >= 2;

export class Adafactor extends Optimizer<AdafactorHyper> {
  /** Defaults as transformers': relative step, scaled by the parameter's RMS, no first moment. */
  constructor(params: ParamsInput<AdafactorHyper>, options: AdafactorOptions = {}) {
    const relativeStep = options.relativeStep ?? true;
    super("Adafactor", params, {
      lr: options.lr ?? 0,
      eps: options.eps ? [...options.eps] : [1e-30, 1e-3],
      clipThreshold: options.clipThreshold ?? 1,
      decayRate: options.decayRate ?? -0.8,
      beta1: options.beta1 ?? null,
      weightDecay: options.weightDecay ?? 0,
      scaleParameter: options.scaleParameter ?? true,
      relativeStep,
      warmupInit: options.warmupInit ?? false,
    });
  }

  protected override validate(h: AdafactorHyper): void {
    checkNonNegative("Adafactor", "learning rate", h.lr);
    if (!h.relativeStep && !(h.lr > 0)) {
      throw new Error("Adafactor: relative_step=False needs a learning rate > 0");
    }
    if (h.warmupInit && !h.relativeStep) throw new Error("Adafactor: warmup_init=True requires relative_step=True");
    if (!Array.isArray(h.eps) || h.eps.length !== 2) {
      throw new Error(`Adafactor: eps must be two numbers, got ${JSON.stringify(h.eps)}`);
    }
    h.eps.forEach((e, i) => {
      checkNonNegative("Adafactor", `eps[${i}]`, e);
    });
    checkNonNegative("Adafactor", "clip_threshold", h.clipThreshold);
    if (typeof h.decayRate !== "number" || !(h.decayRate < 0)) {
      throw new Error(`Adafactor: invalid decay_rate: ${h.decayRate} (must be < 0)`);
    }
    if (h.beta1 !== null && (typeof h.beta1 !== "number" || !(h.beta1 >= 0 && h.beta1 < 1))) {
      throw new Error(`Adafactor: invalid beta1: ${h.beta1} (must be in [0, 1) or null)`);
    }
    checkNonNegative("Adafactor", "weight_decay value", h.weightDecay);
  }

  protected override requiredState(g: ParamGroup<AdafactorHyper>): string[] {
    return g.beta1 !== null ? ["exp_avg"] : [];
  }

  protected override stateLayout(name: string, p: Tensor): { shape: readonly number[]; dtype: DType } {
    const s = p.shape;
    if (name === "exp_avg_sq_row") return { shape: s.slice(0, -1), dtype: "float32" };
    if (name === "exp_avg_sq_col") return { shape: [...s.slice(0, -2), s[s.length - 1]], dtype: "float32" };
    return { shape: s, dtype: p.dtype };
  }

  protected override update(p: Tensor, grad: Tensor, g: ParamGroup<AdafactorHyper>, st: ParamState): void {
    const shape = grad.shape;
    const isFactored = factored(shape);
    const step = st.step;
    // _rms(p) = p.norm(2) / numel ** 0.5, a float32 0-d tensor.
    const rmsOf = (t: Tensor) => div(norm(t), t.numel ** 0.5);
    const paramRms = rmsOf(p);
    let relStep = g.lr;
    if (g.relativeStep) relStep = Math.min(g.warmupInit ? 1e-6 * step : 1e-2, 1 / Math.sqrt(step));
    // lr = max(eps2, RMS) * rel_step: a tensor when the RMS wins (python's max keeps the first of equals).
    const lr: Tensor | number =
      g.scaleParameter && paramRms.item() > g.eps[1]
        ? mul(paramRms, relStep)
        : (g.scaleParameter ? g.eps[1] : 1) * relStep;

    const beta2t = 1 - step ** g.decayRate;
    let upd = add(square(grad), g.eps[0]);
    if (isFactored) {
      const row = st.tensors.get("exp_avg_sq_row") ?? this.setState(st, "exp_avg_sq_row", zeros(shape.slice(0, -1)));
      const col =
        st.tensors.get("exp_avg_sq_col") ??
        this.setState(st, "exp_avg_sq_col", zeros([...shape.slice(0, -2), shape[shape.length - 1]]));
      add_(mul_(row, beta2t), mean(upd, -1), 1 - beta2t);
      add_(mul_(col, beta2t), mean(upd, -2), 1 - beta2t);
      // _approx_sq_grad: rsqrt(row / row.mean(-1)) ⊗ rsqrt(col).
      const rFactor = unsqueeze(rsqrt(div(row, mean(row, -1, { keepdim: true }))), -1);
      const cFactor = rsqrt(unsqueeze(col, -2));
      upd = mul_(mul(rFactor, cFactor), grad);
    } else {
      const sq = st.tensors.get("exp_avg_sq") ?? this.setState(st, "exp_avg_sq", zerosLike(grad));
      add_(mul_(sq, beta2t), upd, 1 - beta2t);
      upd = mul_(rsqrt(sq), grad);
    }
    div_(upd, clamp_(div(rmsOf(upd), g.clipThreshold), 1));
    mul_(upd, lr);
    if (g.beta1 !== null) {
      const expAvg = st.tensors.get("exp_avg") ?? this.setState(st, "exp_avg", zerosLike(grad));
      add_(mul_(expAvg, g.beta1), upd, 1 - g.beta1);
      upd = expAvg;
    }
    if (g.weightDecay !== 0) {
      // alpha = -weight_decay * lr, a float32 product when lr is a tensor.
      const alpha = typeof lr === "number" ? -g.weightDecay * lr : mul(lr, -g.weightDecay).item();
      add_(p, p, alpha);
    }
    add_(p, upd, -1);
  }
}
