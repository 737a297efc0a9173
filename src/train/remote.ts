// A trainer whose run happens in a child process (the same Trainer API as
// createTrainer): every op of the native addon runs synchronously on the
// thread that calls it, and the addon's tables (tensors, ops, generators) are
// process-global, so a step in this thread blocks it for the whole step and a
// worker_thread would race the main thread on those tables. A forked process
// keeps the caller's event loop free (a server, the studio) and a crash or an
// OOM kill of the run ends only the run. Measurements: docs/trainer-threads.md.
//
// Protocol (Node's IPC channel, `serialization: "advanced"` so Infinity and
// nested data cross unchanged): the child says "ready" once its modules and
// the addon are loaded; the parent sends the config and resume folder, then
// commands; the child forwards every trainer event, then the result or the
// error. The child exits when the parent disconnects (remote-child.ts).
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { TrainConfig } from "./config.js";
import type { Trainer, TrainerCommand, TrainerEvent, TrainerListener, TrainerResult } from "./events.js";

/** Parent → child. */
export type ToTrainerProcess =
  | { type: "init"; config: TrainConfig; resume?: string }
  | { type: "command"; command: TrainerCommand };

/** Child → parent. */
export type FromTrainerProcess =
  | { type: "ready" }
  | { type: "event"; event: TrainerEvent }
  | { type: "result"; result: TrainerResult }
  | { type: "error"; message: string; name?: string; stack?: string; code?: string };

export interface TrainerProcessOptions {
  /** A state folder (OUTPUT_DIR/state-…): the run continues exactly where it stopped. */
  resume?: string;
  /** Aborting it is the stop command. */
  signal?: AbortSignal;
  /** Node flags of the child (default: this process's, less the test runner's and --watch). */
  execArgv?: string[];
  /** The child's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
}

/**
 * A Trainer running in another process. A command takes effect after the step during which
 * the child receives it, which is often one step later than in this thread.
 */
export interface TrainerProcess extends Trainer {
  /** The child's process id, once run() has started it. */
  readonly pid: number | undefined;
}

/** The compiled child next to this file (dist/src/train/remote-child.js). */
const CHILD = fileURLToPath(new URL("./remote-child.js", import.meta.url));

/** How much of the child's stderr a crash report quotes. */
const STDERR_TAIL = 2000;

/** A trainer for this config whose run happens in a child process; nothing starts until `run()`. */
export function startTrainerProcess(config: TrainConfig, options: TrainerProcessOptions = {}): TrainerProcess {
  return new RemoteTrainer(config, options);
}

/** This process's Node flags, less those that would make the child a test runner or a watcher. */
function defaultExecArgv(): string[] {
  return process.execArgv.filter((a) => !/^--(test|experimental-test|watch)/.test(a));
}

/** The Error the parent throws for the child's error: the child's message, name, code and stack. */
function childError(m: FromTrainerProcess & { type: "error" }, pid: number | undefined): Error {
  const e = new Error(m.message) as Error & { code?: string };
  if (m.name && m.name !== "Error") e.name = m.name;
  if (m.code !== undefined) e.code = m.code;
  if (m.stack) e.stack = `${m.stack}\n    (in the trainer process, pid ${pid})`;
  return e;
}

class RemoteTrainer implements TrainerProcess {
  readonly #listeners = new Set<TrainerListener>();
  /** Commands given before the child said it was ready, in order, each once. */
  readonly #queued: TrainerCommand[] = [];
  #child: ChildProcess | null = null;
  #ready = false;
  #settled = false;
  #running: Promise<TrainerResult> | null = null;
  #stderr = "";

  constructor(
    readonly config: TrainConfig,
    readonly o: TrainerProcessOptions,
  ) {
    o.signal?.addEventListener("abort", () => this.stop(), { once: true });
    if (o.signal?.aborted) this.stop();
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  on(listener: TrainerListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  stop(): void {
    this.#command("stop");
  }

  saveNow(): void {
    this.#command("save");
  }

  sampleNow(): void {
    this.#command("sample");
  }

  run(): Promise<TrainerResult> {
    this.#running ??= new Promise((resolve, reject) => this.#start(resolve, reject));
    return this.#running;
  }

  #command(command: TrainerCommand): void {
    if (this.#settled) return;
    const child = this.#child;
    if (this.#ready && child?.connected) child.send({ type: "command", command } satisfies ToTrainerProcess);
    else if (!this.#queued.includes(command)) this.#queued.push(command);
  }

  #start(resolve: (r: TrainerResult) => void, reject: (e: Error) => void): void {
    const settle = (f: () => void) => {
      if (this.#settled) return;
      this.#settled = true;
      f();
    };
    const fail = (e: Error) => settle(() => reject(e));
    const child = fork(CHILD, [], {
      execArgv: this.o.execArgv ?? defaultExecArgv(),
      env: this.o.env ?? process.env,
      serialization: "advanced",
      stdio: ["ignore", "inherit", "pipe", "ipc"],
    });
    this.#child = child;
    // The child's stderr goes on to ours; its tail explains a crash.
    child.stderr?.on("data", (d: Buffer) => {
      process.stderr.write(d);
      this.#stderr = (this.#stderr + d.toString()).slice(-STDERR_TAIL);
    });
    child.on("error", (e) => {
      fail(e);
      child.kill("SIGKILL");
    });
    child.on("message", (m: FromTrainerProcess) => {
      if (this.#settled) return;
      switch (m.type) {
        case "ready": {
          this.#ready = true;
          const init: ToTrainerProcess = { type: "init", config: this.config, resume: this.o.resume };
          try {
            child.send(init);
            for (const command of this.#queued.splice(0)) child.send({ type: "command", command });
          } catch (e) {
            fail(e as Error);
            child.kill("SIGKILL");
          }
          return;
        }
        case "event":
          try {
            for (const l of this.#listeners) l(m.event);
          } catch (e) {
            // A listener's error ends the run, as it does in this thread (trainer.ts).
            fail(e as Error);
            child.kill("SIGTERM");
          }
          return;
        case "result":
          settle(() => resolve(m.result));
          return;
        case "error":
          fail(childError(m, child.pid));
          return;
      }
    });
    // "close" comes after the exit and the end of stderr, so the tail is complete.
    child.on("close", (code, signal) => {
      if (this.#settled) return;
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      const tail = this.#stderr.trim().split("\n").slice(-5).join("\n");
      fail(
        new Error(
          `the trainer process (pid ${child.pid}) ${how} before the run ended` +
            (signal === "SIGKILL" ? " (killed, or out of memory)" : "") +
            (tail ? `; its last output:\n${tail}` : ""),
        ),
      );
    });
  }
}
