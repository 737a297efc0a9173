// The optimizer-step core every training loop runs on — `atelier train`'s
// trainer and the shapes base recipe's stages: micro-batches under autocast,
// backward of loss / accumulation, then gradient clipping, the optimizer and
// LR-schedule steps and the after-step work (EMA), with the step's loss and
// named terms averaged over its micro-batches, and its speed and ETA.
import { autocast, type DType, scope, type Tensor } from "../engine/index.js";
import { clipGradNorm, type GroupHyper, gradNorm, type LRScheduler, type Optimizer } from "../engine/optim/index.js";
import type { GradScaler } from "./grad-scaler.js";

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
  /** Names of the optimizer's groups, for messages (default group 0, 1, …). */
  groupNames?: readonly string[];
  /**
   * A NaN or infinite loss, loss term or gradient: `stop` throws NonFiniteError before the optimizer step
   * (so nothing non-finite is ever stepped into the weights); `skip` drops that step's update.
   */
  onNonFinite?: "stop" | "skip";
  /**
   * float16 loss scaling: the loss is scaled before backward and the gradients unscaled before clipping;
   * a step whose gradients overflowed is skipped (not a fault) and the scale backs off.
   */
  gradScaler?: GradScaler | null;
}

/** A loss, loss term or gradient became NaN or infinite. */
export class NonFiniteError extends Error {
  override name = "NonFiniteError";
  constructor(
    message: string,
    /** The 1-based step it happened in. */
    readonly step: number,
  ) {
    super(message);
  }
}

/** One optimizer step's figures: means over its micro-batches (a term over those that had it). */
export interface StepFigures {
  loss: number;
  terms: Record<string, number | null>;
  /** The LR of the first group during the step. */
  lr: number;
  /** Set when the step's update was dropped (onNonFinite skip): what was non-finite. */
  skipped?: string;
  /** The skip was a float16 overflow that loss scaling handles (not a fault of the data or weights). */
  overflow?: boolean;
}

const show = (x: number) => (Number.isNaN(x) ? "NaN" : String(x));

export class StepCore {
  readonly accumulation: number;
  #micro = 0;
  #loss = 0;
  #sums = new Map<string, { sum: number; count: number }>();
  /** What made this step non-finite (skip mode), if anything. */
  #bad: string | null = null;

  readonly #params: Tensor[];

  constructor(readonly o: StepCoreOptions) {
    this.accumulation = o.accumulation ?? 1;
    this.#params = o.optimizer.paramGroups.flatMap((g) => g.params);
  }

  /**
   * Runs one micro-batch's forward (`fn`) and backward; its tensors are freed here.
   * `step` is the 0-based optimizer step it belongs to (for messages).
   */
  micro(fn: () => MicroLoss, step = 0): void {
    const figures = scope(() => {
      const a = this.o.autocast;
      const r = a ? autocast(a.device, a.dtype, fn) : fn();
      const loss = r.loss.item();
      const terms: [string, number | null][] = Object.entries(r.terms ?? {}).map(([k, t]) => [k, t ? t.item() : null]);
      const bad = terms.filter(([, v]) => v !== null && !Number.isFinite(v));
      const fault = !Number.isFinite(loss) || bad.length > 0;
      // never backpropagate a non-finite loss: its gradients would reach the weights
      if (!fault && !this.#bad) {
        const l = r.loss.div(this.accumulation);
        (this.o.gradScaler ? this.o.gradScaler.scaleLoss(l) : l).backward();
      }
      const what = fault
        ? `the loss is ${show(loss)}${bad.length ? ` (${bad.map(([k, v]) => `${k} ${show(v!)}`).join(", ")})` : ""}`
        : null;
      return { loss, terms, what };
    });
    if (figures.what) this.#fault(`${figures.what}`, step);
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

  #fault(what: string, step: number): void {
    const message = `${this.o.name ?? "training"}: step ${step + 1}: ${what}`;
    if ((this.o.onNonFinite ?? "stop") === "stop") {
      this.#reset();
      this.o.optimizer.zeroGrad();
      throw new NonFiniteError(`${message}; the weights were not updated with it`, step + 1);
    }
    this.#bad ??= what;
  }

  #reset(): void {
    this.#micro = 0;
    this.#loss = 0;
    this.#sums = new Map();
    this.#bad = null;
  }

  /** Whether micro-batches ran since the last optimizer step. */
  get pending(): boolean {
    return this.#micro > 0;
  }

  /** Whether enough micro-batches ran for an optimizer step. */
  get ready(): boolean {
    return this.#micro >= this.accumulation;
  }

  /** Clips, steps the optimizer and the schedule, clears the gradients; `index` is the step's 0-based number. */
  step(index: number): StepFigures {
    const { optimizer, scheduler, gradScaler } = this.o;
    let overflow: string | null = null;
    if (gradScaler && !this.#bad) {
      const scale = gradScaler.scale;
      if (!gradScaler.unscale(this.#params)) {
        overflow = `the gradients overflowed at loss scale ${scale} (float16 loss scaling; scale now ${scale * gradScaler.backoffFactor})`;
      }
      gradScaler.update(overflow !== null);
    }
    if (!this.#bad && !overflow) {
      const clip = this.o.maxGradNorm !== undefined && this.o.maxGradNorm > 0;
      // with clipping, the norm the clip computes anyway tells (and it refuses to scale by a non-finite one,
      // so the culprit can still be named); without, one extra pass over the gradients
      let finite = true;
      try {
        finite = Number.isFinite(
          clip
            ? clipGradNorm(this.#params, this.o.maxGradNorm!, 2, { errorIfNonfinite: true })
            : gradNorm(this.#params),
        );
      } catch (e) {
        if (!/non-finite/.test((e as Error).message)) throw e;
        finite = false;
      }
      if (!finite) this.#fault(this.#badGradients(), index);
    }
    const lr = optimizer.paramGroups[0].lr;
    const update = !this.#bad && !overflow;
    if (update) optimizer.step();
    scheduler.step();
    optimizer.zeroGrad();
    if (update) this.o.afterStep?.(index);
    const n = this.#micro;
    const terms: Record<string, number | null> = {};
    for (const [k, s] of this.#sums) terms[k] = s.count ? s.sum / s.count : null;
    const figures: StepFigures = { loss: this.#loss / n, terms, lr };
    if (this.#bad) figures.skipped = this.#bad;
    else if (overflow) Object.assign(figures, { skipped: overflow, overflow: true });
    this.#reset();
    return figures;
  }

  /** Which groups' gradients are non-finite (computed only when the total is). */
  #badGradients(): string {
    const names = this.o.optimizer.paramGroups.map((g, i) => {
      const norm = gradNorm(g.params);
      return Number.isFinite(norm) ? null : `${this.o.groupNames?.[i] ?? `group ${i}`} (norm ${show(norm)})`;
    });
    return `the gradients of ${names.filter((x) => x !== null).join(", ") || "the parameters"} are not finite`;
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
