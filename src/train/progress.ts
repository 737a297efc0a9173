// What a run shows while it trains: a progress line (step, it/s, loss, ETA)
// and logs/loss.jsonl with one line per optimizer step.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

export interface StepRecord {
  step: number;
  epoch: number;
  loss: number;
  instance_loss: number;
  prior_loss: number | null;
  lr: number;
}

/** Appends a JSON line per step; a resumed run first drops lines past its step. */
export class LossLog {
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
  }

  truncateAfter(step: number): void {
    if (!existsSync(this.path)) return;
    const kept = readFileSync(this.path, "utf8")
      .split("\n")
      .filter((l) => l.trim() && (JSON.parse(l) as StepRecord).step <= step);
    writeFileSync(this.path, kept.map((l) => `${l}\n`).join(""));
  }

  append(r: StepRecord): void {
    appendFileSync(this.path, `${JSON.stringify(r)}\n`);
  }

  read(): StepRecord[] {
    if (!existsSync(this.path)) return [];
    return readFileSync(this.path, "utf8")
      .split("\n")
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as StepRecord);
  }
}

function duration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
}

/** One line, redrawn in place on a terminal; a line every `everySeconds` otherwise (logs, CI). */
export class ProgressBar {
  #start = Date.now();
  #lastPrint = 0;
  #firstStep: number;

  constructor(
    readonly total: number,
    startStep = 0,
    readonly out: NodeJS.WriteStream = process.stderr,
    readonly everySeconds = 10,
  ) {
    this.#firstStep = startStep;
  }

  line(step: number, loss: number, lr: number): string {
    const elapsed = (Date.now() - this.#start) / 1000;
    const done = step - this.#firstStep;
    const rate = done > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (this.total - step) / rate : Number.POSITIVE_INFINITY;
    const width = 20;
    const filled = Math.round((step / this.total) * width);
    return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] step ${step}/${this.total} | ${rate.toFixed(2)} it/s | loss ${loss.toFixed(4)} | lr ${lr.toExponential(2)} | ETA ${duration(eta)}`;
  }

  update(step: number, loss: number, lr: number): void {
    const text = this.line(step, loss, lr);
    if (this.out.isTTY) {
      this.out.write(`\r${text}${step === this.total ? "\n" : ""}`);
    } else if (Date.now() - this.#lastPrint >= this.everySeconds * 1000 || step === this.total) {
      this.#lastPrint = Date.now();
      this.out.write(`${text}\n`);
    }
  }
}
