// Plumbing shared by the benchmarks that race Atelier against a PyTorch twin
// (bench/engine.ts, bench/models.ts, bench/train.ts): exits, the common flags,
// the reference process (where it is, how it is pinned, what its exit codes
// mean, the one-line-per-request protocol), medians, memory, the ratio table
// and the head of the --json output. Each script keeps what it alone does.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { checkDevice, liveTensors, torchVersion } from "../src/engine/index.js";

/** The repository root (this file runs as dist/bench/common.js). */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));

export type Json = Record<string, unknown>;

// ---- exits and options -------------------------------------------------------------------

/** Prints `<script>: message` on stderr and exits (code 2: a usage error, 1: a failure). */
export type Fail = (message: string, code?: number) => never;

/** The fail() of one script; declare it as `const fail: Fail = …` so TS sees it never returns. */
export function failer(script: string): Fail {
  return (message, code = 2) => {
    console.error(`${script}: ${message}`);
    process.exit(code);
  };
}

/** The flags every benchmark takes (defaults differ per script). */
export interface BaseOptions {
  threads: number;
  device: string;
  reps: number;
  warmup: number;
  python: string;
  cpus: string;
  json: boolean;
}

/** What a script's own flags read their values with. */
export interface FlagValues {
  /** The next argument: the current flag's value. */
  next(): string | undefined;
  /** The next argument as an integer >= min; exits otherwise. */
  int(min: number): number;
}

export interface FlagSpec<O> {
  usage: string;
  fail: Fail;
  /** How --cpus is explained when its value is missing. */
  cpus: string;
  /** Parses one of the script's own flags into `o`; false where `flag` is not one. */
  own(o: O, flag: string, v: FlagValues): boolean;
}

/** Parses argv into `o` (which holds the defaults): the shared flags, then the script's own. */
export function parseFlags<O extends BaseOptions>(argv: string[], o: O, spec: FlagSpec<O>): O {
  const { fail } = spec;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string | undefined => argv[++i];
    const int = (min: number): number => {
      const v = next();
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) fail(`${a} expects an integer >= ${min}, got ${v}`);
      return n;
    };
    if (a === "--threads") o.threads = int(1);
    else if (a === "--device") o.device = next() ?? fail("--device expects cpu or cuda");
    else if (a === "--reps") o.reps = int(1);
    else if (a === "--warmup") o.warmup = int(0);
    else if (a === "--python") o.python = next() ?? fail("--python expects a path");
    else if (a === "--cpus") o.cpus = next() ?? fail(`--cpus expects ${spec.cpus}`);
    else if (a === "--json") o.json = true;
    else if (a === "--help" || a === "-h") {
      console.log(spec.usage);
      process.exit(0);
    } else if (!spec.own(o, a, { next, int })) fail(`unknown option '${a}'\n${spec.usage}`);
  }
  return o;
}

/** Exits where this libtorch cannot use `device` (cuda without a GPU or a CUDA build). */
export function requireDevice(device: string, fail: Fail): void {
  try {
    checkDevice(device);
  } catch (e) {
    fail(`--device ${device}: ${(e as Error).message}. Run it on a machine with an NVIDIA GPU and a CUDA libtorch.`);
  }
}

/** Progress on stderr, time-stamped (stdout holds the table or the JSON). */
export const say = (s: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${s}`);

/** Call the result at the end: warns if tensors made since were not disposed. */
export function leakCheck(script: string): () => void {
  const start = liveTensors();
  return () => {
    const leaked = liveTensors() - start;
    if (leaked !== 0) console.error(`${script}: warning: ${leaked} tensor(s) leaked`);
  };
}

// ---- the PyTorch reference process ---------------------------------------------------------

export const SETUP_HINT = "run `bash scripts/setup.sh --with-reference` to install Debian's python3-torch";

/** Exits (code 1) where the PyTorch interpreter is not there. */
export function requirePython(python: string, fail: Fail): void {
  if (!existsSync(python)) fail(`PyTorch reference: ${python} not found; ${SETUP_HINT}`, 1);
}

/** Exits with a hint for the reference scripts' own codes (3: no torch, 4: no CUDA); returns for others. */
export function refExitHint(code: number | null, fail: Fail): void {
  if (code === 3) fail(`PyTorch reference: ${SETUP_HINT}`, 1);
  if (code === 4) fail("the PyTorch reference has no CUDA; point --python at a CUDA build of PyTorch", 2);
}

/** `cmd argv`, run under `taskset -c cpus` where cpus is given. */
export function pinned(cpus: string | null, cmd: string, argv: string[]): [string, string[]] {
  return cpus ? ["taskset", ["-c", cpus, cmd, ...argv]] : [cmd, argv];
}

/**
 * Pins this process (all its threads) to the CPUs `list` (a taskset list), so
 * that it and the reference it starts see the same CPUs; null, with a warning,
 * where taskset fails.
 */
export function pinSelf(list: string, script: string): string | null {
  const r = spawnSync("taskset", ["-a", "-cp", list, String(process.pid)], { encoding: "utf8" });
  if (r.status !== 0) {
    console.error(`${script}: warning: cannot pin to CPUs ${list} (${r.error?.message ?? r.stderr.trim()})`);
    return null;
  }
  return list;
}

/** Why a LineChild stopped answering: its exit code (null: a signal; 127: it did not start). */
export class ChildExit extends Error {
  constructor(
    readonly code: number | null,
    readonly why: string,
    readonly stderr: string,
  ) {
    super(`child exited (${code}) ${why}`);
  }
}

/**
 * A child that answers each line on its stdin with one line on its stdout
 * (engine_ref.py --serve, models_ref.py --serve); lines go to the waiting
 * callers in order. Once it has exited, every pending and later reply rejects
 * with a ChildExit. Parsing the lines is the caller's: each script reports bad
 * output its own way.
 */
export class LineChild {
  readonly #child: ChildProcess;
  readonly #waiting: { resolve(line: string): void; reject(e: ChildExit): void }[] = [];
  readonly #exited: Promise<void>;
  #stderr = "";
  #exit: ChildExit | null = null;

  constructor(cmd: string, argv: string[]) {
    // Same environment, so the same OpenMP settings (native.ts sets OMP_WAIT_POLICY).
    this.#child = spawn(cmd, argv, { env: process.env, stdio: ["pipe", "pipe", "pipe"] });
    this.#child.stderr?.on("data", (d) => {
      this.#stderr += d;
    });
    createInterface({ input: this.#child.stdout!, crlfDelay: Number.POSITIVE_INFINITY }).on("line", (line) =>
      this.#waiting.shift()?.resolve(line),
    );
    this.#child.stdin?.on("error", () => {}); // a dead child is reported by "exit"
    this.#exited = new Promise((resolve) => {
      this.#child.on("error", (e) => {
        this.#stop(e.message.includes("ENOENT") ? 127 : 1, e.message);
        resolve();
      });
      this.#child.on("exit", (code) => {
        this.#stop(code, "");
        resolve();
      });
    });
  }

  #stop(code: number | null, why: string): void {
    this.#exit = new ChildExit(code, why, this.#stderr);
    for (const w of this.#waiting.splice(0)) w.reject(this.#exit);
  }

  /** The next line the child prints (the first: its hello). */
  next(): Promise<string> {
    if (this.#exit) return Promise.reject(this.#exit);
    return new Promise((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  /** Sends one request line; resolves to the line that answers it. */
  send(line: string): Promise<string> {
    const reply = this.next();
    this.#child.stdin?.write(`${line}\n`);
    return reply;
  }

  /** Ends the child's stdin; resolves once it has exited (and freed its memory). */
  close(): Promise<void> {
    this.#child.stdin?.end();
    return this.#exited;
  }
}

// ---- numbers ---------------------------------------------------------------------------------

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Peak resident set of this process so far, MiB (getrusage ru_maxrss). */
export const maxRssMb = () => process.resourceUsage().maxRSS / 1024;

/** A line of /proc/meminfo in GiB (Infinity where there is none). */
export function meminfoGiB(field: "MemAvailable" | "MemTotal"): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync("/proc/meminfo", "utf8"));
    return m ? Number(m[1]) / 2 ** 20 : Number.POSITIVE_INFINITY;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

// ---- output ----------------------------------------------------------------------------------

/** The start of each benchmark's first line: both sides' versions. */
export const versus = (torch: unknown) =>
  `Atelier (libtorch ${torchVersion()}, node ${process.version}) vs PyTorch ${torch}`;

/** The fields every --json output starts with, in this order. */
export const jsonHead = (torch: unknown, o: { device: string; threads: number }) => ({
  libtorch: torchVersion(),
  torch,
  node: process.version,
  device: o.device,
  threads: o.threads,
});

/** One row of the ratio table (Atelier ÷ PyTorch; lower is better). */
export interface TableRow {
  label: string;
  atelier_ms: number;
  pytorch_ms: number;
  ratio: number;
  cpu_ratio: number;
  spread?: number;
}

export interface TableLayout {
  /** The case column's width. */
  width: number;
  /** Decimals of the ms columns. */
  digits: number;
  /** A ± column (the spread of paired ratios). */
  spread?: boolean;
  /** The cpu ratio column (left blank where false: on CUDA the CPU mostly waits). */
  cpu: boolean;
}

export function tableHeader(t: TableLayout): string {
  return (
    `${"case".padEnd(t.width)}${"atelier ms".padStart(12)}${"pytorch ms".padStart(12)}${"ratio".padStart(8)}` +
    `${t.spread ? "±".padStart(7) : ""}${(t.cpu ? "cpu ratio" : "").padStart(11)}`
  );
}

export function tableRow(r: TableRow, t: TableLayout): string {
  return (
    `${r.label.padEnd(t.width)}${r.atelier_ms.toFixed(t.digits).padStart(12)}${r.pytorch_ms.toFixed(t.digits).padStart(12)}` +
    `${r.ratio.toFixed(3).padStart(8)}${t.spread ? (r.spread ?? 0).toFixed(3).padStart(7) : ""}` +
    `${(t.cpu ? r.cpu_ratio.toFixed(3) : "").padStart(11)}`
  );
}
