// What the base model's training stages share: the trainer's step core
// (src/train/loop.ts) with AdamW, linear warm-up then cosine decay and
// gradient clipping, the trainer's progress line and its loss-log format
// (JSON lines as OUTPUT_DIR/logs/loss.jsonl: step, epoch, loss, terms, lr).
import { AdamW, LRScheduler, type Tensor } from "../../engine/index.js";
import { StepClock, StepCore } from "../../train/loop.js";
import { LossLog, type LossRecord, progressLine } from "../../train/progress.js";
import type { StageSettings } from "./recipe.js";

export interface StageLoop {
  name: string;
  settings: StageSettings;
  /** Parameter groups: parameters and their learning rate. */
  groups: { params: Tensor[]; lr: number }[];
  maxGradNorm?: number;
  /** The loss of step `i` (0-based; a 0-d tensor with a graph) and named parts to log. */
  loss(step: number): { loss: Tensor; parts?: Record<string, Tensor> };
  /** After each optimizer step, with its 0-based index (EMA updates). */
  afterStep?(step: number): void;
  /** JSON-lines file the per-step records are written to (started afresh). */
  logFile?: string;
  log?: (line: string) => void;
}

/** One step of a stage (1-based, as the trainer's loss log). */
export type StageRecord = LossRecord;

/** Runs the loop; returns the per-step records. */
export function runStage(s: StageLoop): StageRecord[] {
  const { steps, warmup } = s.settings;
  const optimizer = new AdamW(
    s.groups.map((g) => ({ params: g.params, lr: g.lr })),
    { lr: s.groups[0].lr, weightDecay: 1e-2 },
  );
  const scheduler = new LRScheduler(optimizer, "cosine", { warmupSteps: warmup, trainingSteps: steps });
  const core = new StepCore({ optimizer, scheduler, maxGradNorm: s.maxGradNorm, afterStep: s.afterStep, name: s.name });
  const log = s.logFile ? new LossLog<StageRecord>(s.logFile) : null;
  log?.clear();
  const clock = new StepClock(steps);
  const records: StageRecord[] = [];
  try {
    for (let i = 0; i < steps; i++) {
      core.micro(() => {
        const { loss, parts } = s.loss(i);
        return { loss, terms: parts };
      });
      const f = core.step(i);
      const record = { step: i + 1, epoch: 0, loss: f.loss, ...f.terms, lr: f.lr } as StageRecord;
      records.push(record);
      log?.append(record);
      if (s.log && (i % 25 === 0 || i === steps - 1)) {
        const recent = records.slice(-25);
        const mean = recent.reduce((a, r) => a + r.loss, 0) / recent.length;
        s.log(progressLine({ step: i + 1, total: steps, loss: mean, lr: f.lr, ...clock.at(i + 1) }, s.name));
      }
    }
  } finally {
    optimizer.dispose();
  }
  return records;
}
