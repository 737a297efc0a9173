// What the base model's training stages share: a step loop with AdamW, linear
// warm-up then cosine decay, gradient clipping, a progress line and a loss log
// (JSON lines, as the trainer's logs/loss.jsonl).
import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { AdamW, clipGradNorm, LRScheduler, noGrad, scope, type Tensor } from "../../engine/index.js";
import type { StageSettings } from "./recipe.js";

export interface StageLoop {
  name: string;
  settings: StageSettings;
  /** Parameter groups: parameters and their learning rate. */
  groups: { params: Tensor[]; lr: number }[];
  maxGradNorm?: number;
  /** The loss of step `i` (a 0-d tensor with a graph) and named parts to log. */
  loss(step: number): { loss: Tensor; parts?: Record<string, Tensor> };
  /** After each optimizer step (EMA updates). */
  afterStep?(step: number): void;
  /** JSON-lines file the per-step losses are appended to. */
  logFile?: string;
  log?: (line: string) => void;
}

export interface StageRecord {
  step: number;
  loss: number;
  lr: number;
  [part: string]: number;
}

/** Runs the loop; returns the per-step records. */
export function runStage(s: StageLoop): StageRecord[] {
  const { steps, warmup } = s.settings;
  const optimizer = new AdamW(
    s.groups.map((g) => ({ params: g.params, lr: g.lr })),
    { lr: s.groups[0].lr, weightDecay: 1e-2 },
  );
  const scheduler = new LRScheduler(optimizer, "cosine", { warmupSteps: warmup, trainingSteps: steps });
  if (s.logFile) {
    mkdirSync(dirname(s.logFile), { recursive: true });
    writeFileSync(s.logFile, "");
  }
  const records: StageRecord[] = [];
  const start = performance.now();
  try {
    for (let step = 0; step < steps; step++) {
      const record = scope(() => {
        const { loss, parts } = s.loss(step);
        loss.backward();
        const r: StageRecord = { step, loss: loss.item(), lr: optimizer.paramGroups[0].lr };
        for (const [k, v] of Object.entries(parts ?? {})) r[k] = noGrad(() => v.item());
        return r;
      });
      if (!Number.isFinite(record.loss)) throw new Error(`${s.name}: the loss became ${record.loss} at step ${step}`);
      if (s.maxGradNorm)
        clipGradNorm(
          s.groups.flatMap((g) => g.params),
          s.maxGradNorm,
        );
      optimizer.step();
      optimizer.zeroGrad();
      scheduler.step();
      s.afterStep?.(step);
      records.push(record);
      if (s.logFile) appendFileSync(s.logFile, `${JSON.stringify(record)}\n`);
      if (s.log && (step % 25 === 0 || step === steps - 1)) s.log(progressLine(s.name, records, steps, start));
    }
  } finally {
    optimizer.dispose();
  }
  return records;
}

function progressLine(name: string, records: StageRecord[], steps: number, start: number): string {
  const done = records.length;
  const recent = records.slice(-25);
  const mean = recent.reduce((a, r) => a + r.loss, 0) / recent.length;
  const elapsed = (performance.now() - start) / 1000;
  const eta = (elapsed / done) * (steps - done);
  return `${name}: step ${done}/${steps}  loss ${mean.toFixed(4)}  ${elapsed.toFixed(0)} s, ${eta.toFixed(0)} s left`;
}
