// The optimizer-step core every training loop runs on — `atelier train`'s
// trainer and the shapes base recipe's stages: micro-batches under autocast,
// backward of loss / accumulation, then gradient clipping, the optimizer and
// LR-schedule steps and the after-step work (EMA), with the step's loss and
// named terms averaged over its micro-batches, and its speed and ETA.
import { autocast, type DType, scope, type Tensor } from "../engine/index.js";
import { clipGradNorm, type GroupHyper, type LRScheduler, type Optimizer } from "../engine/optim/index.js";

/** What one micro-batch's forward pass gives: the loss (0-d, with a graph) and named terms (null: absent here). */
export interface MicroLoss {
  loss: Tensor;
  terms?: Record<string, Tensor | null>;
}

export interface StepCoreOptions {
  optimizer: Optimizer<GroupHyper>;
  scheduler: LRScheduler;
  /** Micro-batches per optimizer step (default 1). */
  accumulation?: number;
  /** Gradient-norm clipping; 0 or unset = none. */
  maxGradNorm?: number;
  /** Forward passes under autocast to this dtype on this device (null: float32). */
  autocast?: { device: "cpu" | "cuda"; dtype: DType } | null;
  /** After each optimizer step, with its 0-based index (EMA, restoring frozen rows, …). */
  afterStep?: (step: number) => void;
  /** Names the loop in errors ("unet", "training"). */
  name?: string;
}

/** One optimizer step's figures: means over its micro-batches (a term over those that had it). */
export interface StepFigures {
  loss: number;
  terms: Record<string, number | null>;
  /** The LR of the first group during the step. */
  lr: number;
}

export class StepCore {
  readonly accumulation: number;
  #micro = 0;
  #loss = 0;
  #sums = new Map<string, { sum: number; count: number }>();

  constructor(readonly o: StepCoreOptions) {
    this.accumulation = o.accumulation ?? 1;
  }

  /** Runs one micro-batch's forward (`fn`) and backward; its tensors are freed here. */
  micro(fn: () => MicroLoss): void {
    const figures = scope(() => {
      const a = this.o.autocast;
      const r = a ? autocast(a.device, a.dtype, fn) : fn();
      r.loss.div(this.accumulation).backward();
      const terms: [string, number | null][] = Object.entries(r.terms ?? {}).map(([k, t]) => [k, t ? t.item() : null]);
      return { loss: r.loss.item(), terms };
    });
    if (!Number.isFinite(figures.loss)) {
      throw new Error(`${this.o.name ?? "training"}: the loss became ${figures.loss} (diverged, or non-finite input)`);
    }
    this.#loss += figures.loss;
    for (const [k, v] of figures.terms) {
      const s = this.#sums.get(k) ?? { sum: 0, count: 0 };
      if (v !== null) {
        s.sum += v;
        s.count++;
      }
      this.#sums.set(k, s);
    }
    this.#micro++;
  }

  /** Whether enough micro-batches ran for an optimizer step. */
  get ready(): boolean {
    return this.#micro >= this.accumulation;
  }

  /** Clips, steps the optimizer and the schedule, clears the gradients; `index` is the step's 0-based number. */
  step(index: number): StepFigures {
    const { optimizer, scheduler } = this.o;
    if (this.o.maxGradNorm && this.o.maxGradNorm > 0) {
      clipGradNorm(
        optimizer.paramGroups.flatMap((g) => g.params),
        this.o.maxGradNorm,
      );
    }
    const lr = optimizer.paramGroups[0].lr;
    optimizer.step();
    scheduler.step();
    optimizer.zeroGrad();
    this.o.afterStep?.(index);
    const n = this.#micro;
    const terms: Record<string, number | null> = {};
    for (const [k, s] of this.#sums) terms[k] = s.count ? s.sum / s.count : null;
    const figures = { loss: this.#loss / n, terms, lr };
    this.#micro = 0;
    this.#loss = 0;
    this.#sums = new Map();
    return figures;
  }
}

/** Steps per second and time left, over the steps of this call. */
export class StepClock {
  #start = performance.now();
  constructor(
    readonly total: number,
    readonly firstStep = 0,
  ) {}

  at(step: number): { itPerSec: number; etaSeconds: number; elapsedSeconds: number } {
    const elapsedSeconds = (performance.now() - this.#start) / 1000;
    const done = step - this.firstStep;
    const itPerSec = done > 0 && elapsedSeconds > 0 ? done / elapsedSeconds : 0;
    const etaSeconds = itPerSec > 0 ? (this.total - step) / itPerSec : Number.POSITIVE_INFINITY;
    return { itPerSec, etaSeconds, elapsedSeconds };
  }
}
