// Exponential moving average of trained weights (diffusers' EMAModel in
// src/diffusers/training_utils.py, get_decay without its power warm-up):
// after the optimizer step t (0-based), shadow ← shadow + (1 − d)(param −
// shadow) with d = 0 at t = 0 (the average starts at the weights) and
// d = min(decay, (1 + t) / (10 + t)) after, so the average follows the
// weights closely at first. The shapes base recipe and `ema_decay` runs share it.
import { copy_, keep, lerp_, noGrad, type Tensor } from "../engine/index.js";

export class Ema {
  readonly shadow: Tensor[];

  constructor(
    readonly params: readonly Tensor[],
    readonly decay: number,
  ) {
    if (!(decay >= 0 && decay < 1)) throw new Error(`EMA decay must be in [0, 1), got ${decay}`);
    // clone under noGrad: no graph, and a detach() alias of the parameter would change with it
    this.shadow = noGrad(() => params.map((p) => keep(p.clone())));
  }

  /** The decay used after optimizer step `step` (0-based). */
  decayAt(step: number): number {
    return step <= 0 ? 0 : Math.min(this.decay, (1 + step) / (10 + step));
  }

  update(step: number): void {
    const w = 1 - this.decayAt(step);
    noGrad(() => {
      for (let i = 0; i < this.params.length; i++) lerp_(this.shadow[i], this.params[i], w);
    });
  }

  /** Exchanges the weights and their averages in place (twice = as before): saving and sampling use the averages. */
  swap(): void {
    noGrad(() => {
      for (let i = 0; i < this.params.length; i++) {
        const t = this.params[i].clone();
        copy_(this.params[i], this.shadow[i]);
        copy_(this.shadow[i], t);
        t.dispose();
      }
    });
  }

  /** Runs `fn` with the averages in the parameters, then puts the weights back. */
  withAverages<T>(fn: () => T): T {
    this.swap();
    try {
      return fn();
    } finally {
      this.swap();
    }
  }

  /** Writes the averages into the parameters for good and frees them. */
  apply(): void {
    noGrad(() => {
      for (let i = 0; i < this.params.length; i++) copy_(this.params[i], this.shadow[i]);
    });
    this.dispose();
  }

  /** Copies saved averages in (resume). */
  load(saved: readonly Tensor[]): void {
    if (saved.length !== this.shadow.length) {
      throw new Error(`the saved EMA has ${saved.length} tensors, this run ${this.shadow.length}`);
    }
    noGrad(() => {
      for (let i = 0; i < saved.length; i++) copy_(this.shadow[i], saved[i]);
    });
  }

  dispose(): void {
    for (const t of this.shadow) if (!t.disposed) t.dispose();
  }
}
