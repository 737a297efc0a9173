// Prodigy (Mishchenko & Defazio 2023): Adam whose step size d is estimated
// on the fly; as konstmish/prodigy prodigyopt/prodigy.py (single process, no
// FSDP). d and its running sums are shared by all groups (group 0's rule)
// and saved with the groups' hyper-parameters, so a resume is exact.
import { noGrad } from "../autograd.js";
import type { DType } from "../dtype.js";
import { zeros } from "../ops/creation.js";
import { add_, addcdiv_, addcmul_, mul_ } from "../ops/inplace.js";
import { matmul } from "../ops/linalg.js";
import { abs, add, sqrt, sub, sum } from "../ops/math.js";
import { clone, flatten, slice } from "../ops/shape.js";
import { scope } from "../scope.js";
import type { Tensor } from "../tensor.js";
import {
  checkBetas,
  checkNonNegative,
  Optimizer,
  type ParamGroup,
  type ParamState,
  type ParamsInput,
} from "./optimizer.js";

export interface ProdigyHyper {
  lr: number;
  betas: [number, number];
  /** Coefficient of the running sums behind d; null = sqrt(beta2). */
  beta3: number | null;
  eps: number;
  weightDecay: number;
  /** AdamW-style decoupled weight decay (else added to the gradient). */
  decouple: boolean;
  useBiasCorrection: boolean;
  /** Leave the lr out of the denominator's sum (for lr warm-up). */
  safeguardWarmup: boolean;
  d0: number;
  dCoef: number;
  /** Largest growth of d per step; null = unlimited (prodigy's inf). */
  growthRate: number | null;
  /** Statistics of d from every slice_p-th entry only. */
  sliceP: number;
  // The running estimate (prodigy keeps these in the groups too).
  d: number;
  dMax: number;
  dNumerator: number;
  k: number;
}

export type ProdigyOptions = Partial<Omit<ProdigyHyper, "d" | "dMax" | "dNumerator" | "k">>;

export class Prodigy extends Optimizer<ProdigyHyper> {
  /** Defaults as prodigy's: lr 1, betas (0.9, 0.999), d0 1e-6, decoupled decay 0. */
  constructor(params: ParamsInput<ProdigyHyper>, options: ProdigyOptions = {}) {
    const d0 = options.d0 ?? 1e-6;
    if (options.lr !== undefined && !(options.lr > 0)) {
      throw new Error(`Prodigy: invalid learning rate: ${options.lr} (must be > 0)`);
    }
    super("Prodigy", params, {
      lr: options.lr ?? 1,
      betas: options.betas ? [...options.betas] : [0.9, 0.999],
      beta3: options.beta3 ?? null,
      eps: options.eps ?? 1e-8,
      weightDecay: options.weightDecay ?? 0,
      decouple: options.decouple ?? true,
      useBiasCorrection: options.useBiasCorrection ?? false,
      safeguardWarmup: options.safeguardWarmup ?? false,
      d0,
      dCoef: options.dCoef ?? 1,
      growthRate: options.growthRate ?? null,
      sliceP: options.sliceP ?? 1,
      d: d0,
      dMax: d0,
      dNumerator: 0,
      k: 0,
    });
  }

  /** The current step-size estimate d (group 0's). */
  get d(): number {
    return this.paramGroups[0].d;
  }

  protected override validate(h: ProdigyHyper): void {
    if (!(h.d0 > 0) || !Number.isFinite(h.d0)) throw new Error(`Prodigy: invalid d0 value: ${h.d0} (must be > 0)`);
    // A group may have lr 0 (it is left out of the estimate of d); the default must be > 0, as prodigy's.
    checkNonNegative("Prodigy", "learning rate", h.lr);
    if (!(h.eps > 0) || !Number.isFinite(h.eps))
      throw new Error(`Prodigy: invalid epsilon value: ${h.eps} (must be > 0)`);
    checkBetas("Prodigy", h.betas);
    if (h.beta3 !== null && (typeof h.beta3 !== "number" || !(h.beta3 >= 0 && h.beta3 < 1))) {
      throw new Error(`Prodigy: invalid beta3: ${h.beta3} (must be in [0, 1) or null)`);
    }
    checkNonNegative("Prodigy", "weight_decay value", h.weightDecay);
    checkNonNegative("Prodigy", "d_coef", h.dCoef);
    if (h.growthRate !== null && !(h.growthRate >= 1)) {
      throw new Error(`Prodigy: invalid growth_rate: ${h.growthRate} (must be >= 1, or null for unlimited)`);
    }
    if (!Number.isInteger(h.sliceP) || h.sliceP < 1) {
      throw new Error(`Prodigy: invalid slice_p: ${h.sliceP} (must be an integer >= 1)`);
    }
    for (const [name, v] of [
      ["d", h.d],
      ["d_max", h.dMax],
      ["d_numerator", h.dNumerator],
      ["k", h.k],
    ] as const) {
      if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`Prodigy: invalid ${name}: ${v}`);
    }
  }

  protected override requiredState(): string[] {
    return ["s", "p0", "exp_avg", "exp_avg_sq"];
  }

  protected override stateLayout(name: string, p: Tensor): { shape: readonly number[]; dtype: DType } {
    const sliceP = this.paramGroups.find((g) => g.params.includes(p))?.sliceP ?? 1;
    if (name === "s" || name === "p0") return { shape: [Math.ceil(p.numel / sliceP)], dtype: p.dtype };
    return { shape: p.shape, dtype: p.dtype };
  }

  protected override update(): void {
    throw new Error("Prodigy: update() is not used (step() does both passes)");
  }

  /** prodigy.py's step(): a pass that estimates d from every parameter, then the Adam pass with it. */
  override step(): void {
    if (this.disposed) throw new Error("Prodigy: the optimizer was disposed");
    for (const group of this.paramGroups) this.validate(group);
    noGrad(() => this.#step());
  }

  #step(): void {
    const groups = this.paramGroups as ParamGroup<ProdigyHyper>[];
    const g0 = groups[0];
    const [beta1, beta2] = g0.betas;
    const beta3 = g0.beta3 ?? Math.sqrt(beta2);
    const k = g0.k;
    let d = g0.d;
    let dMax = g0.dMax;
    const lr = Math.max(...groups.map((g) => g.lr));
    const biasCorrection = g0.useBiasCorrection ? (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) : 1;
    const dlr = d * lr * biasCorrection;
    const growthRate = g0.growthRate ?? Number.POSITIVE_INFINITY;
    let dNumerator = g0.dNumerator * beta3;
    let dDenom = 0;
    let lastD0 = g0.d0;

    for (const group of groups) {
      if (group.lr !== lr && group.lr !== 0) {
        throw new Error("Prodigy: different lr values in different parameter groups are only supported for 0");
      }
      lastD0 = group.d0;
      const { d0, sliceP } = group;
      for (const p of group.params) {
        scope(() => {
          let grad = p.grad;
          if (grad === null) return;
          if (group.weightDecay !== 0 && !group.decouple) grad = add(grad, p, group.weightDecay);
          const st = this.#stateOf(p, sliceP);
          const t = st.tensors;
          if (group.lr > 0) {
            const slicedGrad = this.#sliced(grad, sliceP);
            const moved = sub(t.get("p0")!, this.#sliced(p, sliceP));
            dNumerator += (d / d0) * dlr * matmul(slicedGrad, moved).item();
            add_(mul_(t.get("exp_avg")!, beta1), grad, d * (1 - beta1));
            addcmul_(mul_(t.get("exp_avg_sq")!, beta2), grad, grad, d * d * (1 - beta2));
            const s = t.get("s")!;
            add_(mul_(s, beta3), slicedGrad, group.safeguardWarmup ? (d / d0) * d : (d / d0) * dlr);
            dDenom += sum(abs(s)).item();
          }
        });
      }
    }
    // No progress made (no gradients, or all zero): prodigy returns before changing anything else.
    if (dDenom === 0) return;
    if (lr > 0) {
      const dHat = (g0.dCoef * dNumerator) / dDenom;
      if (d === lastD0) d = Math.max(d, dHat);
      dMax = Math.max(dMax, dHat);
      d = Math.min(dMax, d * growthRate);
    }
    for (const group of groups) {
      group.dNumerator = dNumerator;
      group.d = d;
      group.dMax = dMax;
      for (const p of group.params) {
        scope(() => {
          if (p.grad === null) return;
          const st = this.state.get(p)!;
          st.step += 1;
          const denom = add_(sqrt(st.tensors.get("exp_avg_sq")!), d * group.eps);
          if (group.weightDecay !== 0 && group.decouple) add_(p, p, -group.weightDecay * dlr);
          addcdiv_(p, st.tensors.get("exp_avg")!, denom, -dlr);
        });
      }
      group.k = group.k + 1;
    }
  }

  #sliced(t: Tensor, sliceP: number): Tensor {
    const flat = flatten(t);
    return sliceP === 1 ? flat : slice(flat, 0, null, null, sliceP);
  }

  #stateOf(p: Tensor, sliceP: number): ParamState {
    let st = this.state.get(p);
    if (!st) {
      st = { step: 0, tensors: new Map() };
      this.state.set(p, st);
      const n = Math.ceil(p.numel / sliceP);
      this.setState(st, "s", zeros([n], { dtype: p.dtype, device: p.device }));
      this.setState(st, "p0", clone(this.#sliced(p, sliceP)));
      this.setState(st, "exp_avg", zeros(p.shape, { dtype: p.dtype, device: p.device }));
      this.setState(st, "exp_avg_sq", zeros(p.shape, { dtype: p.dtype, device: p.device }));
    }
    return st;
  }
}
