// Runs the queue's jobs one at a time (one device), each in its own process:
// training in the trainer's child (startTrainerProcess), the rest in
// job-worker.js. It turns the trainer's events into queue rows and tells its
// listeners (the SSE streams). Pause = the trainer's stop command (it saves a
// resumable state); resume = queue it again with that state. A job a dead
// server or a killed worker left running is queued again and resumes from
// the newest state its run's manifest lists.
import { type ChildProcess, fork } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startTrainerProcess, type TrainConfig, type TrainerEvent } from "../index.js";
import type { FromWorker, WorkerJob } from "./job-worker.js";
import type { Job, JobEvent, JobQueue } from "./queue.js";
import { LAYOUT, relPath } from "./workspace-files.js";

const WORKER = fileURLToPath(new URL("./job-worker.js", import.meta.url));

/** A training job whose worker died this many times is failed instead of resumed again. */
export const MAX_ATTEMPTS = 3;

export interface RunnerOptions {
  /** The workers' environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
}

/**
 * The workers' environment: unless ATELIER_NUM_THREADS is set, a job's libtorch gets every
 * core but one, which stays the server's and its clients'. Measured (bench/studio_load, 50
 * clients, 2 cores): a trainer on both cores steps 15 % slower under the clients, on one core
 * 1 % faster — and on one core the tiny shapes step was faster alone too (29 vs 41 ms).
 */
export function workerEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  if (env.ATELIER_NUM_THREADS) return env;
  return { ...env, ATELIER_NUM_THREADS: String(Math.max(1, availableParallelism() - 1)) };
}

type Listener = (jobId: number, e: JobEvent | { type: "job"; job: Job }) => void;

interface Current {
  job: Job;
  wanted: "pause" | "cancel" | null;
  stop: () => void;
  kill: () => void;
}

type Artifact = { path: string; kind: string; step: number };

/** The newest artifact of `kind` in a manifest's list (the highest step). */
function newestArtifact(artifacts: readonly Artifact[], kind: string): Artifact | undefined {
  return artifacts.filter((a) => a.kind === kind).sort((a, b) => b.step - a.step)[0];
}

/** The newest state folder a run's manifest lists (absolute), with its step. */
export function newestState(outputDir: string): { path: string; step: number } | null {
  const file = join(outputDir, "manifest.json");
  if (!existsSync(file)) return null;
  try {
    const m = JSON.parse(readFileSync(file, "utf8")) as { artifacts: Artifact[] };
    const s = newestArtifact(m.artifacts, "state");
    return s && existsSync(join(outputDir, s.path)) ? { path: join(outputDir, s.path), step: s.step } : null;
  } catch {
    return null;
  }
}

/** Kills a previous server's worker, when that process is still one (a pid can be reused). */
function killOrphan(pid: number): void {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (/(remote-child|job-worker)\.js/.test(cmdline)) process.kill(pid, "SIGKILL");
  } catch {
    // gone already (or not Linux: then the orphan ends after its step by itself)
  }
}

export class JobRunner {
  readonly #listeners = new Set<Listener>();
  #current: Current | null = null;
  #closed = false;

  constructor(
    readonly root: string,
    readonly queue: JobQueue,
    readonly o: RunnerOptions = {},
  ) {}

  on(l: Listener): () => void {
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }

  get currentId(): number | null {
    return this.#current?.job.id ?? null;
  }

  /**
   * Queues again what a previous server left running, then starts the queue. Its worker may
   * still be finishing a step (an orphan stops after it): it is killed first, so that two
   * processes never write one run; the states its manifest lists are complete (atomic writes).
   */
  start(): void {
    for (const job of this.queue.running()) {
      if (job.worker_pid) killOrphan(job.worker_pid);
      this.#requeue(job, "the studio was restarted");
    }
    this.kick();
  }

  /** Starts the next queued job when none runs. */
  kick(): void {
    if (this.#current || this.#closed) return;
    const job = this.queue.next();
    if (!job) return;
    this.queue.start(job.id);
    const started = this.queue.get(job.id)!;
    this.#changed(started);
    const done = job.kind === "train" ? this.#train(started) : this.#worker(started);
    done
      .catch((e: Error) => this.#finish(started.id, "failed", { error: e.message }))
      .finally(() => {
        this.#current = null;
        setImmediate(() => this.kick());
      });
  }

  pause(id: number): void {
    const c = this.#current;
    if (c?.job.id === id) {
      c.wanted = "pause";
      c.stop();
    } else this.#finish(id, "paused");
  }

  cancel(id: number): void {
    const c = this.#current;
    if (c?.job.id === id) {
      c.wanted = "cancel";
      c.stop();
    } else this.#finish(id, "cancelled");
  }

  resume(id: number): void {
    this.queue.update(id, { status: "queued", ended: null, error: null });
    this.#changed(this.queue.get(id)!);
    this.kick();
  }

  /** Stops taking jobs and kills the worker (the job stays "running": the next start resumes it). */
  close(): void {
    this.#closed = true;
    this.#current?.kill();
  }

  #emit(jobId: number, e: JobEvent | { type: "job"; job: Job }): void {
    for (const l of this.#listeners) l(jobId, e);
  }

  #changed(job: Job): void {
    this.#emit(job.id, { type: "job", job });
  }

  #event(jobId: number, type: string, data: Record<string, unknown>): void {
    this.#emit(jobId, this.queue.addEvent(jobId, type, data));
  }

  #finish(id: number, status: Job["status"], o: { error?: string; result?: Record<string, unknown> } = {}): void {
    this.queue.finish(id, status, o);
    if (o.error) this.#event(id, "log", { level: "error", message: o.error });
    this.#changed(this.queue.get(id)!);
  }

  #requeue(job: Job, why: string): void {
    const outputDir = (job.params.config as TrainConfig | undefined)?.output_dir;
    const state = job.kind === "train" && outputDir ? newestState(outputDir) : null;
    if (job.attempts >= MAX_ATTEMPTS) {
      this.#finish(job.id, "failed", {
        error: `${why}; its worker stopped ${job.attempts} times, so it is not resumed`,
      });
      return;
    }
    this.queue.update(job.id, { status: "queued", resume_from: state?.path ?? null });
    this.#event(job.id, "log", {
      level: "warning",
      message: `${why}; ${state ? `resuming from the state of step ${state.step}` : "starting over"}`,
    });
  }

  async #train(job: Job): Promise<void> {
    const config = job.params.config as TrainConfig;
    const state = job.resume_from && existsSync(job.resume_from) ? job.resume_from : null;
    const from = state ? (newestState(config.output_dir)?.step ?? 0) : 0;
    if (state) this.#replayUpTo(job.id, config.output_dir, from);
    else {
      // nothing to resume from: a fresh run in a fresh folder (runs/ is the studio's own)
      rmSync(config.output_dir, { recursive: true, force: true });
      this.queue.dropEventsAfterStep(job.id, -1);
    }
    const trainer = startTrainerProcess(config, { resume: state ?? undefined, env: workerEnv(this.o.env) });
    const current: Current = {
      job,
      wanted: null,
      stop: () => trainer.stop(),
      kill: () => {
        if (trainer.pid) process.kill(trainer.pid, "SIGKILL");
      },
    };
    this.#current = current;
    trainer.on((e) => this.#trainerEvent(job.id, e));
    try {
      const running = trainer.run();
      this.queue.update(job.id, { worker_pid: trainer.pid ?? null });
      const r = await running;
      if (r.reason === "stopped") {
        if (current.wanted === "cancel") this.#finish(job.id, "cancelled");
        else {
          this.queue.update(job.id, { resume_from: r.resumeFrom });
          this.#finish(job.id, "paused");
        }
        return;
      }
      this.#finish(job.id, "done", { result: this.#publish(job, config) });
    } catch (e) {
      if (this.#closed) return; // the server is going down: the next start resumes it
      if (current.wanted === "cancel") return this.#finish(job.id, "cancelled");
      const message = (e as Error).message;
      if ((e as Error).name === "RunFinishedError") {
        // killed after the run's last state was saved, before the job was marked done: it is done
        this.#finish(job.id, "done", { result: this.#publish(job, config) });
        return;
      }
      if (/the trainer process \(pid \d+\) (was killed|exited)/.test(message)) {
        this.#requeue(this.queue.get(job.id)!, message.split(";")[0]);
        this.#changed(this.queue.get(job.id)!);
        return;
      }
      this.#finish(job.id, "failed", { error: message });
    }
  }

  /**
   * Before a resume: the job's record of steps and samples becomes the run's own, up to the
   * state (its loss log and manifest), so that steps a dying worker did while no studio listened
   * are in it, and those after the state (to be redone) are not.
   */
  #replayUpTo(id: number, outputDir: string, step: number): void {
    this.queue.dropEventsAfterStep(id, step);
    this.queue.dropEvents(id, "step");
    const log = join(outputDir, "logs", "loss.jsonl");
    const lines = existsSync(log) ? readFileSync(log, "utf8").split("\n").filter(Boolean) : [];
    for (const line of lines) {
      let r: { step: number; epoch: number; loss: number; lr: number };
      try {
        r = JSON.parse(line);
      } catch {
        continue; // a line cut by the kill
      }
      if (r.step <= step) this.queue.addEvent(id, "step", { step: r.step, epoch: r.epoch, loss: r.loss, lr: r.lr });
    }
    const seen = new Set(this.queue.events(id, 0, ["sample"]).map((e) => e.data.path));
    const m = JSON.parse(readFileSync(join(outputDir, "manifest.json"), "utf8")) as { artifacts: Artifact[] };
    for (const a of m.artifacts) {
      const path = relPath(this.root, join(outputDir, a.path));
      if (a.kind === "samples" && a.step <= step && !seen.has(path))
        this.queue.addEvent(id, "sample", { step: a.step, path });
    }
  }

  #trainerEvent(id: number, e: TrainerEvent): void {
    switch (e.type) {
      case "start":
        this.queue.update(id, { step: e.step, total: e.total });
        this.#event(id, "start", { step: e.step, total: e.total, method: e.method });
        return;
      case "step": {
        const eta = Number.isFinite(e.etaSeconds) ? e.etaSeconds : null;
        this.queue.update(id, { step: e.step, total: e.total, eta_seconds: eta });
        this.#event(id, "step", {
          step: e.step,
          total: e.total,
          epoch: e.epoch,
          loss: e.loss,
          lr: e.lr,
          it_per_sec: e.itPerSec,
          eta_seconds: eta,
        });
        return;
      }
      case "sample":
        this.#event(id, "sample", { step: e.step, path: relPath(this.root, e.path) });
        return;
      case "artifact":
        if (e.kind === "state") this.queue.update(id, { resume_from: e.path });
        this.#event(id, "artifact", { step: e.step, kind: e.kind, format: e.format, path: relPath(this.root, e.path) });
        return;
      case "log":
      case "warning":
        this.#event(id, "log", { level: e.type === "log" ? "info" : "warning", message: e.message });
        return;
      case "end":
        return;
    }
  }

  /**
   * A finished run's LoRA goes to models/Lora as JOBNAME.safetensors, its embedding to embeddings/ and
   * its hypernetwork to models/hypernetworks under their own names, where generation finds them.
   */
  #publish(job: Job, c: TrainConfig): Record<string, unknown> {
    const result: Record<string, unknown> = { output_dir: relPath(this.root, c.output_dir) };
    const m = JSON.parse(readFileSync(join(c.output_dir, "manifest.json"), "utf8")) as { artifacts: Artifact[] };
    // A LoRA is named after its job; an embedding's file stem is its prompt word and a
    // hypernetwork's its <hypernet:NAME> name, so both keep theirs.
    for (const [kind, folder, name] of [
      ["lora", LAYOUT.lora, () => `${job.name}.safetensors`],
      ["embedding", LAYOUT.embeddings, (a: Artifact) => basename(a.path)],
      ["hypernetwork", LAYOUT.hypernetworks, (a: Artifact) => basename(a.path)],
    ] as const) {
      const a = newestArtifact(m.artifacts, kind);
      if (!a) continue;
      const dest = join(this.root, folder, name(a));
      mkdirSync(join(this.root, folder), { recursive: true });
      copyFileSync(join(c.output_dir, a.path), dest);
      result[kind] = relPath(this.root, dest);
      const use = kind === "lora" ? `: <lora:${job.name}:1>` : "";
      this.#event(job.id, "log", {
        level: "info",
        message: `the ${kind === "lora" ? "LoRA" : kind} is in ${result[kind]}${use}`,
      });
    }
    return result;
  }

  #worker(job: Job): Promise<void> {
    return new Promise((resolve) => {
      const child: ChildProcess = fork(WORKER, [], {
        env: workerEnv(this.o.env),
        execArgv: process.execArgv.filter((a) => !/^--(test|experimental-test|watch)/.test(a)),
        serialization: "advanced",
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      });
      const current: Current = {
        job,
        wanted: null,
        stop: () => child.kill("SIGTERM"),
        kill: () => child.kill("SIGKILL"),
      };
      this.#current = current;
      this.queue.update(job.id, { worker_pid: child.pid ?? null });
      let settled = false;
      const settle = (status: Job["status"], o: { error?: string; result?: Record<string, unknown> }) => {
        if (settled) return;
        settled = true;
        if (!this.#closed) this.#finish(job.id, status, o);
        resolve();
      };
      child.on("message", (m: FromWorker) => {
        if (m.type === "progress") {
          this.queue.update(job.id, { step: m.step, total: m.total });
          this.#event(job.id, "progress", { step: m.step, total: m.total });
        } else if (m.type === "result") {
          const result: Record<string, unknown> = { ...m.result };
          for (const k of ["images", "low_res"]) {
            const paths = m.result[k] as string[] | undefined;
            if (paths) result[k] = paths.map((p) => relPath(this.root, p));
          }
          if (typeof m.result.output === "string") result.output = relPath(this.root, m.result.output);
          settle("done", { result });
        } else settle("failed", { error: m.message });
      });
      child.on("error", (e) => settle("failed", { error: e.message }));
      child.on("exit", (code, signal) => {
        if (current.wanted === "cancel") settle("cancelled", {});
        else
          settle("failed", { error: `the worker ${signal ? `was killed by ${signal}` : `exited with code ${code}`}` });
      });
      child.send({ type: "run", job: job.params.worker as WorkerJob });
    });
  }
}
