// The one trainer every method runs on (after OneTrainer's GenericTrainer
// driven by TrainCallbacks / TrainCommands): data → the method's step →
// the shared step core (loop.ts), with events for listeners (step, sample,
// artifact, log, warning, end) and commands between steps (stop, save now,
// sample now). Listeners and commands are plain data, so the same API runs
// in another process (remote.ts). `train()` is the promise-only form.
import { join } from "node:path";
import type { TrainConfig } from "./config.js";
import { disposeBatch } from "./data/index.js";
import { diffusionMicroLoss } from "./diffusion-step.js";
import type { Trainer, TrainerCommand, TrainerEvent, TrainerListener, TrainerResult } from "./events.js";
import { GradScaler } from "./grad-scaler.js";
import { NonFiniteError, StepClock, StepCore } from "./loop.js";
import { RunManifest } from "./manifest.js";
import { LossLog, ProgressBar, type StepRecord } from "./progress.js";
import {
  DiskFullError,
  diskFull,
  epochTag,
  isDiskFull,
  newestGood,
  stepTag,
  writeArtifacts,
  writeSamples,
} from "./run-artifacts.js";
import { openRun, type RunParts } from "./run-setup.js";
import type { Progress } from "./state.js";

export type { Trainer, TrainerCommand, TrainerEvent, TrainerListener, TrainerResult } from "./events.js";

export interface CreateTrainerOptions {
  /** A state folder (OUTPUT_DIR/state-…): the run continues exactly where it stopped. */
  resume?: string;
  /** Aborting it is the stop command. */
  signal?: AbortSignal;
}

/** A trainer for this config, in this thread; nothing runs until `run()`. */
export function createTrainer(config: TrainConfig, o: CreateTrainerOptions = {}): Trainer {
  return new LocalTrainer(config, o);
}

/** With on_nan skip, this many non-finite steps in a row end the run: the weights or the data are broken. */
export const MAX_SKIPPED_IN_A_ROW = 5;

/** Lets timers, I/O and commands in between two steps (a step itself holds the thread). */
const yieldToEventLoop = () => new Promise<void>((r) => setImmediate(r));

class LocalTrainer implements Trainer {
  readonly #listeners = new Set<TrainerListener>();
  readonly #pending = new Set<TrainerCommand>();
  #running: Promise<TrainerResult> | null = null;
  /** The last step done, for messages. */
  #step = 0;

  readonly #onAbort = () => this.stop();

  constructor(
    readonly config: TrainConfig,
    readonly o: CreateTrainerOptions,
  ) {
    o.signal?.addEventListener("abort", this.#onAbort, { once: true });
    if (o.signal?.aborted) this.stop();
  }

  on(listener: TrainerListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  stop(): void {
    this.#pending.add("stop");
  }

  saveNow(): void {
    this.#pending.add("save");
  }

  sampleNow(): void {
    this.#pending.add("sample");
  }

  run(): Promise<TrainerResult> {
    this.#running ??= this.#run();
    return this.#running;
  }

  #emit(e: TrainerEvent): void {
    for (const l of this.#listeners) l(e);
  }

  #take(command: TrainerCommand): boolean {
    return this.#pending.delete(command);
  }

  async #run(): Promise<TrainerResult> {
    try {
      const p = await openRun(this.config, {
        resume: this.o.resume,
        log: (message) => this.#emit({ type: "log", message }),
        warn: (message) => this.#emit({ type: "warning", message }),
      });
      try {
        return await this.#loop(p);
      } catch (e) {
        if (e instanceof NonFiniteError) throw withNewestGood(e, p);
        // the loss log or the manifest can meet a full disk before a save does
        if (isDiskFull(e) && !(e instanceof DiskFullError)) throw diskFull(p, this.#step, e as Error, "writing");
        throw e;
      } finally {
        p.dispose();
      }
    } finally {
      this.o.signal?.removeEventListener("abort", this.#onAbort);
    }
  }

  async #loop(p: RunParts): Promise<TrainerResult> {
    const { c, total } = p;
    let progress: Progress = p.progress;
    this.#emit({ type: "start", total, step: progress.step, method: p.method.name, outputDir: c.output_dir });
    const core = new StepCore({
      optimizer: p.optimizer,
      scheduler: p.scheduler,
      accumulation: c.gradient_accumulation,
      maxGradNorm: c.max_grad_norm,
      autocast: p.autocast,
      gradScaler: p.autocast?.dtype === "float16" ? new GradScaler() : null,
      onNonFinite: c.on_nan,
      groupNames: p.method.groups().map((g) => g.name),
      afterStep: (i) => {
        p.method.afterStep?.(i);
        p.ema?.update(i);
      },
    });
    const clock = new StepClock(total, progress.step);
    // What was written at which step: a command right after a scheduled save or sample repeats nothing.
    let saved = { step: -1, state: false, artifacts: false };
    let sampledAt = -1;
    let stateDir: string | null = null;
    const save = (tag: string, o: { state: boolean; artifacts?: boolean }) => {
      const again = saved.step === progress.step;
      const artifacts = (o.artifacts ?? true) && !(again && saved.artifacts);
      const state = o.state && !(again && saved.state);
      if (!artifacts && !state) return;
      for (const a of writeArtifacts(p, progress, tag, { artifacts, state })) {
        if (a.kind === "state") stateDir = a.path;
        this.#emit({ type: "artifact", step: progress.step, ...a });
      }
      saved = {
        step: progress.step,
        state: state || (again && saved.state),
        artifacts: artifacts || (again && saved.artifacts),
      };
    };
    const sample = () => {
      if (sampledAt === progress.step) return;
      sampledAt = progress.step;
      const path = writeSamples(p, progress);
      if (path) this.#emit({ type: "sample", step: progress.step, path });
      else this.#emit({ type: "warning", message: "no sample image written: sample.prompts is empty" });
    };
    let skippedInARow = 0;
    /** Finishes an optimizer step: records it, tells the listeners, samples and saves on schedule. */
    const finishStep = (epoch: number, batchIndex: number) => {
      const figures = core.step(progress.step);
      progress = { step: progress.step + 1, epoch, batchInEpoch: batchIndex };
      this.#step = progress.step;
      if (figures.skipped) {
        if (!figures.overflow) skippedInARow++;
        this.#emit({ type: "warning", message: `step ${progress.step}: ${figures.skipped}; its update was skipped` });
        if (skippedInARow >= MAX_SKIPPED_IN_A_ROW) {
          throw new NonFiniteError(
            `${skippedInARow} steps in a row were not finite (the last: ${figures.skipped}): the weights or the data are broken`,
            progress.step,
          );
        }
      } else {
        skippedInARow = 0;
        p.lossLog.append({
          step: progress.step,
          epoch,
          loss: figures.loss,
          ...figures.terms,
          lr: figures.lr,
        } as StepRecord);
      }
      const { itPerSec, etaSeconds } = clock.at(progress.step);
      this.#emit({ type: "step", step: progress.step, total, epoch, ...figures, itPerSec, etaSeconds });
      if (c.sample.every_n_steps > 0 && progress.step % c.sample.every_n_steps === 0) sample();
      if (progress.step < total && c.save.every_n_steps > 0 && progress.step % c.save.every_n_steps === 0) {
        save(stepTag(progress.step), { state: c.save.state });
      }
    };
    // A stop that came during set-up: nothing trained, nothing to save.
    let stopped = this.#take("stop");
    outer: for (let epoch = progress.epoch; !stopped; epoch++) {
      if (c.max_steps <= 0 && epoch >= c.epochs) break;
      let batchIndex = epoch === progress.epoch ? progress.batchInEpoch : 0;
      for await (const batch of p.dataset.epochBatches(epoch, { startStep: batchIndex })) {
        try {
          core.micro(() => diffusionMicroLoss(p, batch), progress.step);
        } finally {
          disposeBatch(batch);
        }
        batchIndex++;
        if (!core.ready) continue;
        finishStep(epoch, batchIndex);
        if (progress.step >= total) break outer;
        await yieldToEventLoop();
        if (this.#take("sample")) sample();
        if (this.#take("save")) save(stepTag(progress.step), { state: c.save.state });
        if (this.#take("stop")) {
          stopped = true;
          break outer;
        }
      }
      // An epoch's last micro-batches make a step of their own (accelerate syncs at the end of the data).
      if (core.pending) {
        finishStep(epoch, batchIndex);
        if (progress.step >= total) break;
      }
      // the epoch is done: the next one starts at its first batch
      progress = { ...progress, epoch: epoch + 1, batchInEpoch: 0 };
      const epochsDone = epoch + 1;
      if (c.save.every_n_epochs > 0 && epochsDone % c.save.every_n_epochs === 0 && progress.step < total) {
        save(epochTag(epochsDone), { state: c.save.state });
      }
    }
    let resumeFrom: string | null = null;
    if (stopped) {
      // A stop always leaves a resumable state, whatever save.state says (none when nothing trained).
      if (progress.step > p.progress.step) {
        save(stepTag(progress.step), { state: true });
        resumeFrom = stateDir;
      } else resumeFrom = this.o.resume ?? null;
    } else {
      save("", { state: c.save.state });
      const due = c.sample.every_n_steps > 0 && progress.step % c.sample.every_n_steps !== 0;
      if (due || this.#take("sample")) sample();
    }
    const result: TrainerResult = {
      reason: stopped ? "stopped" : "done",
      steps: progress.step,
      outputDir: c.output_dir,
      resumeFrom,
    };
    this.#emit({ type: "end", ...result });
    return result;
  }
}

/** The error, saying what of the run is still good: the newest state and artifacts the manifest lists. */
function withNewestGood(e: NonFiniteError, p: RunParts): NonFiniteError {
  const out = new NonFiniteError(`${e.message}; ${newestGood(p, "resume from it with a lower learning_rate")}`, e.step);
  out.stack = e.stack;
  return out;
}

// ---- the promise-only form ----------------------------------------------------------------

export interface TrainOptions {
  /** A state folder written by save.state (or a stop): the run continues exactly where it stopped. */
  resume?: string;
  /** Messages for the user (logs and warnings). */
  log?: (message: string) => void;
  /** Where the progress line goes (default stderr). */
  progressOut?: NodeJS.WriteStream;
  /** Stop (saving a resumable state) after this many optimizer steps of this call. */
  stopAfter?: number;
  signal?: AbortSignal;
}

export interface TrainResult {
  reason: "done" | "stopped";
  steps: number;
  outputDir: string;
  resumeFrom: string | null;
  losses: StepRecord[];
  manifest: RunManifest;
}

/** Runs a config to its end with a progress line; the trainer's events become log lines. */
export async function train(config: TrainConfig, o: TrainOptions = {}): Promise<TrainResult> {
  const log = o.log ?? ((m: string) => console.error(m));
  const trainer = createTrainer(config, { resume: o.resume, signal: o.signal });
  let bar: ProgressBar | undefined;
  let steps = 0;
  trainer.on((e) => {
    if (e.type === "log" || e.type === "warning") log(e.message);
    else if (e.type === "start") bar = new ProgressBar(e.total, o.progressOut);
    else if (e.type === "step") {
      bar?.update(e);
      if (o.stopAfter !== undefined && ++steps >= o.stopAfter) trainer.stop();
    }
  });
  const r = await trainer.run();
  return {
    ...r,
    losses: new LossLog(join(r.outputDir, "logs", "loss.jsonl")).read(),
    manifest: new RunManifest(r.outputDir),
  };
}
