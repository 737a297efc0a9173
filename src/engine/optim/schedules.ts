// Learning-rate schedules as in diffusers' get_scheduler
// (huggingface/diffusers, src/diffusers/optimization.py): each is a LambdaLR
// lambda, the multiplier of a group's base lr at a step. The formulas keep
// diffusers' integer arithmetic and max(1, …) guards.
import type { GroupHyper, Optimizer } from "./optimizer.js";

export const SCHEDULE_NAMES = [
  "linear",
  "cosine",
  "cosine_with_restarts",
  "polynomial",
  "constant",
  "constant_with_warmup",
  "piecewise_constant",
] as const;

export type ScheduleName = (typeof SCHEDULE_NAMES)[number];

/** step → multiplier of the base lr (LambdaLR's lr_lambda). */
export type Schedule = (step: number) => number;

export interface ScheduleOptions {
  /** Steps of linear warm-up from 0 (all but constant and piecewise_constant). */
  warmupSteps?: number;
  /** Total training steps (linear, cosine, cosine_with_restarts, polynomial). */
  trainingSteps?: number;
  /** Cosine periods (cosine: 0.5, a half cosine) or hard restarts (cosine_with_restarts: 1). */
  numCycles?: number;
  /** polynomial: the decay's power (default 1). */
  power?: number;
  /** polynomial: the lr reached at trainingSteps (default 1e-7). */
  lrEnd?: number;
  /** polynomial: the optimizer's lr, needed to turn lrEnd into a multiplier (diffusers reads optimizer.defaults["lr"]). */
  baseLr?: number;
  /** piecewise_constant: "1:10,0.1:20,0.01" = ×1 before step 10, ×0.1 before 20, then ×0.01. */
  stepRules?: string;
}

const warmup = (s: number, w: number): number => s / Math.max(1, w);

function count(name: string, key: string, v: number | undefined): number {
  if (v === undefined) throw new Error(`lrSchedule("${name}"): requires ${key}`);
  if (!Number.isInteger(v) || v < 0) throw new Error(`lrSchedule("${name}"): ${key} must be an integer >= 0, got ${v}`);
  return v;
}

function finite(name: string, key: string, v: number): number {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new Error(`lrSchedule("${name}"): ${key} must be a finite number, got ${v}`);
  }
  return v;
}

/** get_piecewise_constant_schedule's rule parsing: "value:steps,…,lastValue". */
function piecewise(rules: string | undefined): Schedule {
  if (typeof rules !== "string" || rules.trim() === "") {
    throw new Error('lrSchedule("piecewise_constant"): requires stepRules, e.g. "1:10,0.1:20,0.01"');
  }
  const bad = (part: string) =>
    new Error(`lrSchedule("piecewise_constant"): bad rule "${part}" in "${rules}" (want "value:steps,…,lastValue")`);
  const parts = rules.split(",");
  const byStep = new Map<number, number>();
  for (const part of parts.slice(0, -1)) {
    const pieces = part.split(":");
    if (pieces.length !== 2) throw bad(part);
    const [value, steps] = [Number(pieces[0]), Number(pieces[1])];
    if (pieces[0].trim() === "" || pieces[1].trim() === "" || !Number.isFinite(value) || !Number.isInteger(steps)) {
      throw bad(part);
    }
    byStep.set(steps, value); // a repeated step overrides, as in the Python dict
  }
  const lastPart = parts[parts.length - 1];
  const last = Number(lastPart);
  if (lastPart.trim() === "" || !Number.isFinite(last)) throw bad(lastPart);
  const sorted = [...byStep.keys()].sort((a, b) => a - b);
  return (s) => {
    for (const k of sorted) if (s < k) return byStep.get(k)!;
    return last;
  };
}

/**
 * The multiplier schedule `name` (one of SCHEDULE_NAMES). warmupSteps larger
 * than trainingSteps is allowed, as in diffusers.
 */
export function lrSchedule(name: string, o: ScheduleOptions = {}): Schedule {
  if (!(SCHEDULE_NAMES as readonly string[]).includes(name)) {
    throw new Error(`unknown lr schedule "${name}"; valid: ${SCHEDULE_NAMES.join(", ")}`);
  }
  const n = name as ScheduleName;
  if (n === "constant") return () => 1;
  if (n === "piecewise_constant") return piecewise(o.stepRules);
  const w = count(n, "warmupSteps", o.warmupSteps);
  if (n === "constant_with_warmup") return (s) => (s < w ? s / Math.max(1.0, w) : 1.0);
  const t = count(n, "trainingSteps", o.trainingSteps);

  switch (n) {
    case "linear":
      return (s) => (s < w ? warmup(s, w) : Math.max(0.0, (t - s) / Math.max(1, t - w)));
    case "cosine": {
      const cycles = finite(n, "numCycles", o.numCycles ?? 0.5);
      return (s) => {
        if (s < w) return warmup(s, w);
        const progress = (s - w) / Math.max(1, t - w);
        return Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * cycles * 2.0 * progress)));
      };
    }
    case "cosine_with_restarts": {
      const cycles = finite(n, "numCycles", o.numCycles ?? 1);
      return (s) => {
        if (s < w) return warmup(s, w);
        const progress = (s - w) / Math.max(1, t - w);
        if (progress >= 1.0) return 0.0;
        return Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * ((cycles * progress) % 1.0))));
      };
    }
    case "polynomial": {
      const lrEnd = finite(n, "lrEnd", o.lrEnd ?? 1e-7);
      const power = finite(n, "power", o.power ?? 1.0);
      if (o.baseLr === undefined) throw new Error(`lrSchedule("${n}"): requires baseLr (the optimizer's lr)`);
      const lrInit = finite(n, "baseLr", o.baseLr);
      if (!(lrInit > lrEnd))
        throw new Error(`lrSchedule("${n}"): lrEnd (${lrEnd}) must be smaller than baseLr (${lrInit})`);
      // diffusers divides by trainingSteps − warmupSteps at step == trainingSteps (ZeroDivisionError there).
      if (t === w) throw new Error(`lrSchedule("${n}"): warmupSteps must differ from trainingSteps (both ${t})`);
      return (s) => {
        if (s < w) return warmup(s, w);
        if (s > t) return lrEnd / lrInit; // LambdaLR multiplies by the base lr
        const pctRemaining = 1 - (s - w) / (t - w);
        return ((lrInit - lrEnd) * pctRemaining ** power + lrEnd) / lrInit;
      };
    }
  }
  throw new Error(`unknown lr schedule "${name}"`);
}

export interface LRSchedulerState {
  step: number;
}

/**
 * Sets each group's lr to its base lr × schedule(step), as torch's LambdaLR:
 * at construction for step 0, then once per `step()` (call it after
 * optimizer.step()). The base lr is the group's `initialLr`, taken from its lr
 * by the first scheduler, so a scheduler made after a resume keeps the
 * original base.
 */
export class LRScheduler {
  readonly optimizer: Optimizer<GroupHyper>;
  readonly schedule: Schedule;
  readonly baseLrs: number[];
  #step = 0;

  /** `schedule`: a name from SCHEDULE_NAMES with its options, or a multiplier function. */
  constructor(optimizer: Optimizer<GroupHyper>, schedule: string | Schedule, options: ScheduleOptions = {}) {
    this.optimizer = optimizer;
    for (const g of optimizer.paramGroups) g.initialLr ??= g.lr;
    this.baseLrs = optimizer.paramGroups.map((g) => g.initialLr!);
    this.schedule =
      typeof schedule === "function" ? schedule : lrSchedule(schedule, { baseLr: optimizer.defaults.lr, ...options });
    this.#apply();
  }

  /** Steps taken (LambdaLR's last_epoch). */
  get lastStep(): number {
    return this.#step;
  }

  /** Advances one step and writes the new lrs. */
  step(): void {
    this.#step += 1;
    this.#apply();
  }

  /** The lrs the groups have now. */
  lastLr(): number[] {
    return this.optimizer.paramGroups.map((g) => g.lr);
  }

  stateDict(): LRSchedulerState {
    return { step: this.#step };
  }

  loadStateDict(state: LRSchedulerState): void {
    const s = state?.step;
    if (!Number.isInteger(s) || s < 0) throw new Error(`LRScheduler.loadStateDict: bad step ${s}`);
    this.#step = s;
    this.#apply();
  }

  #apply(): void {
    const groups = this.optimizer.paramGroups;
    if (groups.length !== this.baseLrs.length) {
      throw new Error(
        `LRScheduler: the optimizer has ${groups.length} groups, the scheduler knew ${this.baseLrs.length}`,
      );
    }
    const m = this.schedule(this.#step);
    if (!Number.isFinite(m)) throw new Error(`LRScheduler: the schedule gave ${m} at step ${this.#step}`);
    groups.forEach((g, i) => {
      g.lr = this.baseLrs[i] * m;
    });
  }
}
