// What a run shows while it trains: a progress line (step, it/s, loss, ETA)
// and a loss log (logs/loss.jsonl) with one JSON line per optimizer step,
// for `atelier train` and the shapes base recipe alike.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/** One line of a loss log: the step, its epoch, the loss, its named terms, the LR. */
export interface LossRecord {
  step: number;
  epoch: number;
  loss: number;
  lr: number;
  [term: string]: number | null;
}

/** A diffusion run's line: the instance and prior-preservation terms (and any a method adds). */
export interface StepRecord extends LossRecord {
  instance_loss: number;
  prior_loss: number | null;
}

/** Appends a JSON line per step; a resumed run first drops lines past its step. */
export class LossLog<R extends LossRecord = StepRecord> {
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
  }

  truncateAfter(step: number): void {
    if (!existsSync(this.path)) return;
    const kept = this.#lines().filter((l) => (JSON.parse(l) as LossRecord).step <= step);
    writeFileSync(this.path, kept.map((l) => `${l}\n`).join(""));
  }

  /** The log's lines; a last one cut short (a kill or a full disk mid-append) is dropped. */
  #lines(): string[] {
    const lines = readFileSync(this.path, "utf8")
      .split("\n")
      .filter((l) => l.trim());
    const last = lines.at(-1);
    if (last !== undefined) {
      try {
        JSON.parse(last);
      } catch {
        lines.pop();
      }
    }
    return lines;
  }

  /** Starts the log afresh. */
  clear(): void {
    writeFileSync(this.path, "");
  }

  append(r: R): void {
    appendFileSync(this.path, `${JSON.stringify(r)}\n`);
  }

  read(): R[] {
    if (!existsSync(this.path)) return [];
    return this.#lines().map((l) => JSON.parse(l) as R);
  }
}

function duration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
}

/** What a progress line shows of a step (the trainer's step event has all of it). */
export interface StepProgress {
  step: number;
  total: number;
  loss: number;
  lr: number;
  itPerSec: number;
  etaSeconds: number;
}

/** The one progress line of every loop: step, speed, loss, LR, time left — with a bar, or after the loop's name. */
export function progressLine(e: StepProgress, name = ""): string {
  const width = 20;
  const filled = Math.max(0, Math.min(width, Math.round((e.step / e.total) * width)));
  const head = name ? `${name}: ` : `[${"#".repeat(filled)}${"-".repeat(width - filled)}] `;
  return `${head}step ${e.step}/${e.total} | ${e.itPerSec.toFixed(2)} it/s | loss ${e.loss.toFixed(4)} | lr ${e.lr.toExponential(2)} | ETA ${duration(e.etaSeconds)}`;
}

/** The progress line on a terminal (redrawn in place), else a line every `everySeconds` (logs, CI). */
export class ProgressBar {
  #lastPrint = 0;

  constructor(
    readonly total: number,
    readonly out: NodeJS.WriteStream = process.stderr,
    readonly everySeconds = 10,
  ) {}

  update(e: StepProgress): void {
    const text = progressLine(e);
    if (this.out.isTTY) {
      this.out.write(`\r${text}${e.step === this.total ? "\n" : ""}`);
    } else if (Date.now() - this.#lastPrint >= this.everySeconds * 1000 || e.step === this.total) {
      this.#lastPrint = Date.now();
      this.out.write(`${text}\n`);
    }
  }
}
