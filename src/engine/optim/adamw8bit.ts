// AdamW with 8-bit block-wise quantised states, as bitsandbytes' AdamW8bit
// (bitsandbytes/optim/adamw.py, Optimizer2State with block_wise=True; update
// csrc/kernels.cu kOptimizerStatic8bit2StateBlockwise): the first moment is
// stored with the signed dynamic map, the second with the unsigned one, per
// block of 2048 with its absmax; parameters under min_8bit_size (4096
// values) keep 32-bit states (kOptimizer32bit2State), as bitsandbytes does.
// The update follows the kernels: weight decay after the Adam step, the
// bias corrections folded into the step size and eps, float32 scalars.

import type { DType } from "../dtype.js";
import { zeros, zerosLike } from "../ops/creation.js";
import { add_, addcdiv_, addcmul_, mul_ } from "../ops/inplace.js";
import { add, sqrt } from "../ops/math.js";
import { reshape } from "../ops/shape.js";
import { keep, scope } from "../scope.js";
import type { Tensor } from "../tensor.js";
import { BLOCK_SIZE, dequantize, fromBlocks, type QuantMap, quantize, quantMap, toBlocks } from "./blockwise-quant.js";
import {
  checkBetas,
  checkNonNegative,
  Optimizer,
  type ParamGroup,
  type ParamState,
  type ParamsInput,
} from "./optimizer.js";

export interface AdamW8bitHyper {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Parameters with fewer values keep float32 states (bitsandbytes' min_8bit_size). */
  min8bitSize: number;
}

export type AdamW8bitOptions = Partial<AdamW8bitHyper>;

const f32 = Math.fround;

export class AdamW8bit extends Optimizer<AdamW8bitHyper> {
  #maps: { signed: QuantMap; unsigned: QuantMap } | null = null;

  /** Defaults as bitsandbytes': lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2. */
  constructor(params: ParamsInput<AdamW8bitHyper>, options: AdamW8bitOptions = {}) {
    super("AdamW8bit", params, {
      lr: options.lr ?? 1e-3,
      betas: options.betas ? [...options.betas] : [0.9, 0.999],
      eps: options.eps ?? 1e-8,
      weightDecay: options.weightDecay ?? 1e-2,
      min8bitSize: options.min8bitSize ?? 4096,
    });
  }

  protected override validate(h: AdamW8bitHyper): void {
    checkNonNegative("AdamW8bit", "learning rate", h.lr);
    checkNonNegative("AdamW8bit", "epsilon value", h.eps);
    checkBetas("AdamW8bit", h.betas);
    checkNonNegative("AdamW8bit", "weight_decay value", h.weightDecay);
    if (!Number.isInteger(h.min8bitSize) || h.min8bitSize < 0) {
      throw new Error(`AdamW8bit: invalid min_8bit_size: ${h.min8bitSize} (must be an integer >= 0)`);
    }
  }

  #quantised(p: Tensor): boolean {
    const g = this.paramGroups.find((x) => x.params.includes(p));
    return p.numel >= (g?.min8bitSize ?? 4096);
  }

  protected override requiredState(): string[] {
    return ["state1", "state2"];
  }

  protected override stateLayout(name: string, p: Tensor): { shape: readonly number[]; dtype: DType } {
    if (name === "absmax1" || name === "absmax2") {
      return { shape: [Math.ceil(p.numel / BLOCK_SIZE)], dtype: "float32" };
    }
    return { shape: p.shape, dtype: this.#quantised(p) ? "uint8" : "float32" };
  }

  #getMaps(): { signed: QuantMap; unsigned: QuantMap } {
    if (!this.#maps) {
      const made = scope(() => ({ signed: quantMap(true), unsigned: quantMap(false) }));
      for (const m of [made.signed, made.unsigned]) {
        keep(m.code);
        keep(m.mids);
      }
      this.#maps = made;
    }
    return this.#maps;
  }

  protected override update(p: Tensor, grad: Tensor, g: ParamGroup<AdamW8bitHyper>, st: ParamState): void {
    const [beta1, beta2] = g.betas;
    const step = st.step;
    // The kernels' float32 scalars: correction1 = 1 - beta1^t, correction2 = sqrt(1 - beta2^t).
    const correction1 = f32(1 - f32(f32(beta1) ** step));
    const correction2 = f32(Math.sqrt(f32(1 - f32(f32(beta2) ** step))));
    const stepSize = f32(f32(-f32(g.lr) * correction2) / correction1);
    const epsTerm = f32(correction2 * f32(g.eps));
    const n = p.numel;
    // (1 - beta) as the kernels' float arithmetic gives it.
    const a1 = f32(1 - f32(beta1));
    const a2 = f32(1 - f32(beta2));

    if (!this.#quantised(p)) {
      const s1 = st.tensors.get("state1") ?? this.setState(st, "state1", zerosLike(p));
      const s2 = st.tensors.get("state2") ?? this.setState(st, "state2", zerosLike(p));
      add_(mul_(s1, beta1), grad, a1);
      addcmul_(mul_(s2, beta2), grad, grad, a2);
      this.#apply(p, s1, s2, stepSize, epsTerm, g);
      return;
    }

    const maps = this.#getMaps();
    const blocks = Math.ceil(n / BLOCK_SIZE);
    const zerosOf = (dtype: DType, shape: readonly number[]) => zeros(shape, { dtype, device: p.device });
    const c1 = st.tensors.get("state1") ?? this.setState(st, "state1", zerosOf("uint8", p.shape));
    const c2 = st.tensors.get("state2") ?? this.setState(st, "state2", zerosOf("uint8", p.shape));
    const m1 = st.tensors.get("absmax1") ?? this.setState(st, "absmax1", zerosOf("float32", [blocks]));
    const m2 = st.tensors.get("absmax2") ?? this.setState(st, "absmax2", zerosOf("float32", [blocks]));

    const g2 = toBlocks(reshape(grad, [-1]), n);
    const s1 = dequantize(c1, m1, maps.signed, n);
    const s2 = dequantize(c2, m2, maps.unsigned, n);
    add_(mul_(s1, beta1), g2, a1);
    addcmul_(mul_(s2, beta2), g2, g2, a2);
    g2.dispose();
    // The parameter moves with the unquantised new moments, then they are stored in 8 bits; each
    // float32 moment is freed once quantised (the step's peak is one parameter's temporaries).
    scope(() =>
      this.#apply(p, reshape(fromBlocks(s1, n), p.shape), reshape(fromBlocks(s2, n), p.shape), stepSize, epsTerm, g),
    );
    const q1 = quantize(s1, maps.signed, n, true);
    s1.dispose();
    const q2 = quantize(s2, maps.unsigned, n, false);
    s2.dispose();
    this.setState(st, "state1", reshape(q1.codes, p.shape));
    this.setState(st, "state2", reshape(q2.codes, p.shape));
    this.setState(st, "absmax1", q1.absmax);
    this.setState(st, "absmax2", q2.absmax);
  }

  /** p += step_size · s1 / (sqrt(s2) + correction2·eps); then p *= 1 - lr·wd. */
  #apply(p: Tensor, s1: Tensor, s2: Tensor, stepSize: number, epsTerm: number, g: ParamGroup<AdamW8bitHyper>) {
    // the denominator's two float32 copies are freed before the moments are quantised
    scope(() => {
      addcdiv_(p, s1, add(sqrt(s2), epsTerm), stepSize);
    });
    if (g.weightDecay > 0) mul_(p, f32(1 - f32(f32(g.lr) * f32(g.weightDecay))));
  }

  override dispose(): void {
    if (this.#maps) {
      for (const m of [this.#maps.signed, this.#maps.unsigned]) {
        m.code.dispose();
        m.mids.dispose();
      }
      this.#maps = null;
    }
    super.dispose();
  }
}
