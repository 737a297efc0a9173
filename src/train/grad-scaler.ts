// Dynamic loss scaling for float16 training, as PyTorch's GradScaler
// (pytorch/pytorch torch/cuda/amp/grad_scaler.py): the loss is multiplied by
// the scale before backward, the gradients divided by it before the step; a
// step whose gradients overflowed is skipped and the scale backs off, and
// after `growthInterval` good steps in a row it grows.
import { gradNorm, mul_, scope, type Tensor } from "../engine/index.js";

export interface GradScalerOptions {
  /** Default 2^16. */
  initScale?: number;
  /** Default 2. */
  growthFactor?: number;
  /** Default 0.5. */
  backoffFactor?: number;
  /** Good steps before the scale grows (default 2000). */
  growthInterval?: number;
}

/** What a resumed run needs to go on with the same scale. */
export interface GradScalerState {
  scale: number;
  growthTracker: number;
}

export class GradScaler {
  scale: number;
  growthTracker = 0;
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;

  constructor(o: GradScalerOptions = {}) {
    this.scale = o.initScale ?? 2 ** 16;
    this.growthFactor = o.growthFactor ?? 2;
    this.backoffFactor = o.backoffFactor ?? 0.5;
    this.growthInterval = o.growthInterval ?? 2000;
    const positive = (v: number, what: string) => {
      if (!(v > 0) || !Number.isFinite(v)) throw new Error(`GradScaler: ${what} must be a positive number, got ${v}`);
    };
    positive(this.scale, "initScale");
    positive(this.growthFactor, "growthFactor");
    positive(this.backoffFactor, "backoffFactor");
    if (!Number.isInteger(this.growthInterval) || this.growthInterval < 1) {
      throw new Error(`GradScaler: growthInterval must be a positive integer, got ${this.growthInterval}`);
    }
  }

  /** loss · scale (backpropagate this one). */
  scaleLoss(loss: Tensor): Tensor {
    return loss.mul(this.scale);
  }

  /** Divides the gradients by the scale in place; false when any is NaN or infinite (the step must be skipped). */
  unscale(params: readonly Tensor[]): boolean {
    const inv = Math.fround(1 / this.scale); // torch multiplies by the float32 reciprocal
    scope(() => {
      for (const p of params) {
        const g = p.grad;
        if (g) mul_(g, inv);
      }
    });
    return Number.isFinite(gradNorm(params));
  }

  /** After each step: back off on an overflow, grow after growthInterval good steps. */
  update(overflowed: boolean): void {
    if (overflowed) {
      this.scale *= this.backoffFactor;
      this.growthTracker = 0;
      return;
    }
    this.growthTracker++;
    if (this.growthTracker === this.growthInterval) {
      this.scale *= this.growthFactor;
      this.growthTracker = 0;
    }
  }

  state(): GradScalerState {
    return { scale: this.scale, growthTracker: this.growthTracker };
  }

  load(s: GradScalerState): void {
    if (!(s.scale > 0) || !Number.isInteger(s.growthTracker) || s.growthTracker < 0) {
      throw new Error(`GradScaler: bad saved state ${JSON.stringify(s)}`);
    }
    this.scale = s.scale;
    this.growthTracker = s.growthTracker;
  }
}
