// What a running trainer tells its listeners, and what they can ask of it
// (after OneTrainer's TrainCallbacks / TrainCommands): the CLI's progress
// line, the studio and tests are all listeners of these events. Everything
// here is plain data, so the same events cross a thread or process boundary
// unchanged (see remote.ts).
import type { ArtifactKind } from "./manifest.js";

/** One optimizer step: the loss (mean over its micro-batches), its named terms, the LR, speed and ETA. */
export interface StepEvent {
  type: "step";
  step: number;
  total: number;
  epoch: number;
  loss: number;
  /** Named loss terms (instance_loss, prior_loss, …); null where a term had no samples in the step. */
  terms: Record<string, number | null>;
  lr: number;
  /** Optimizer steps per second over this call's steps. */
  itPerSec: number;
  /** Seconds left at that rate (Infinity before the first step). */
  etaSeconds: number;
}

export type TrainerEvent =
  | { type: "start"; total: number; step: number; method: string; outputDir: string }
  | StepEvent
  | { type: "sample"; step: number; path: string }
  | { type: "artifact"; step: number; kind: ArtifactKind; path: string; format: string }
  | { type: "log"; message: string }
  | { type: "warning"; message: string }
  | {
      type: "end";
      /** done: reached the last step; stopped: a stop command (a resumable state was saved first). */
      reason: "done" | "stopped";
      steps: number;
      outputDir: string;
      /** The state folder a stopped run can resume from (null when none was saved). */
      resumeFrom: string | null;
    };

export type TrainerListener = (e: TrainerEvent) => void;

/** Commands a listener can send; each takes effect between two optimizer steps. */
export type TrainerCommand = "stop" | "save" | "sample";

/** What a run returns when it ends. */
export interface TrainerResult {
  reason: "done" | "stopped";
  steps: number;
  outputDir: string;
  resumeFrom: string | null;
}

/** A run, started or not: in this thread (createTrainer) or in another process (startTrainerProcess). */
export interface Trainer {
  /** Runs to the end (or to a stop command); resolves with the result, rejects with the run's error. */
  run(): Promise<TrainerResult>;
  /** Ends the run after the current step, saving a resumable state first. */
  stop(): void;
  /** Writes the method's artifacts (and state, when save.state) after the current step. */
  saveNow(): void;
  /** Writes a sample grid after the current step (needs sample.prompts). */
  sampleNow(): void;
  /** Adds a listener; returns a function that removes it. */
  on(listener: TrainerListener): () => void;
}
