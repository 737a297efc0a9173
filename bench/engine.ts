// Engine benchmark: Atelier (libtorch through the addon) against PyTorch doing
// the same work in the same run; prints Atelier ÷ PyTorch per case (lower is
// better), since absolute times on the dev machines are noisy (docs/design.md §4).
// The PyTorch twin is bench/engine_ref.py, run as a child process that takes
// turns with this one, repetition by repetition, on the same pinned CPU; the
// ratio is the median of Atelier ÷ PyTorch over those neighbouring pairs, on
// wall-clock time and (CPU only) on process CPU time. See bench/RESULTS.md.
// Plumbing shared with bench/models.ts and bench/train.ts: bench/common.ts.
//
//   node dist/bench/engine.js [--threads N] [--device cpu|cuda] [--reps N]
//     [--warmup N] [--tiny-ops N] [--only a,b] [--cpus auto|none|LIST] [--python PATH] [--json]
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import {
  conv2d,
  defOp,
  disposeAll,
  getNumThreads,
  keep,
  linear,
  manualSeed,
  matmul,
  ones,
  randn,
  scaledDotProductAttention,
  scope,
  setNumThreads,
  type Tensor,
  zeros,
} from "../src/engine/index.js";
import {
  type BaseOptions,
  type ChildExit,
  type Fail,
  failer,
  jsonHead,
  LineChild,
  leakCheck,
  parseFlags,
  pinned,
  pinSelf,
  REPO,
  requireDevice,
  requirePython,
  SETUP_HINT,
  tableHeader,
  tableRow,
  versus,
} from "./common.js";

interface Options extends BaseOptions {
  tinyOps: number;
  only: string[];
}

const USAGE = `usage: node dist/bench/engine.js [options]
  --threads N     intra-op threads on both sides (default 1)
  --device D      cpu (default) or cuda
  --reps N        timed repetitions per case, taken in turns with PyTorch (default 21)
  --warmup N      untimed repetitions first (default 5)
  --tiny-ops N    ops per repetition in the dispatch-overhead cases (default 10000)
  --only a,b      run only these cases (matmul, conv, conv-eager, attention, attention-1024, tiny,
                  tiny-tensor, tiny-scope)
  --cpus C        pin both processes to the same CPUs: auto (default: the N least
                  busy CPUs for --threads N; none when N >= CPUs), none, or a
                  taskset list such as 1
  --python PATH   the PyTorch interpreter (default /usr/bin/python3)
  --json          print one JSON object on stdout (the table goes to stderr)`;

const fail: Fail = failer("bench/engine");

function parseArgs(argv: string[]): Options {
  const defaults: Options = {
    threads: 1,
    device: "cpu",
    reps: 21,
    warmup: 5,
    tinyOps: 10000,
    only: [],
    python: "/usr/bin/python3",
    json: false,
    cpus: "auto",
  };
  return parseFlags(argv, defaults, {
    usage: USAGE,
    fail,
    cpus: "auto, none or a CPU list",
    own(o, a, v) {
      if (a === "--tiny-ops") o.tinyOps = v.int(1);
      else if (a === "--only") o.only = (v.next() ?? "").split(",").filter(Boolean);
      else return false;
      return true;
    },
  });
}

// ---- the cases (keep in step with bench/engine_ref.py) -----------------------------

interface Case {
  /** Its name for --only. */
  key: string;
  /** The engine_ref.py case it is compared with (tiny-scope with tiny, conv-eager with conv). */
  ref: string;
  label: string;
  /** Runs --tiny-ops ops per repetition: also report µs per op. */
  perOp?: boolean;
  /** Makes the inputs; returns one repetition and a clean-up. */
  setup(device: string, o: Options): { step(): void; free(): void };
}

const sdpaFused = defOp("aten::scaled_dot_product_attention").exists();

/** Tensors outside every scope; each case's free() disposes them. */
function held(fn: () => Tensor): Tensor {
  return keep(scope(fn));
}

function param(fn: () => Tensor): Tensor {
  return held(fn).requiresGrad_();
}

function clearGrads(ps: Tensor[]): void {
  for (const p of ps) p.grad = null;
}

/** Self-attention fwd+bwd of [2, L, 320] with 8 heads, as engine_ref.py case_attention. */
function attentionCase(key: string, L: number, note: string): Case {
  return {
    key,
    ref: key,
    label: `attention [2,${L},320] 8 heads${note} (fwd+bwd, ${sdpaFused ? "sdpa" : "math"})`,
    setup(device) {
      const [B, C, H] = [2, 320, 8];
      const D = C / H;
      const x = held(() => randn([B, L, C], { device }));
      const s = 1 / Math.sqrt(C);
      const [wq, wk, wv, wo] = [0, 1, 2, 3].map(() => param(() => randn([C, C], { device }).mul(s)));
      const bo = param(() => zeros([C], { device }));
      const params = [wq, wk, wv, wo, bo];
      const heads = (t: Tensor) => t.reshape(B, L, H, D).transpose(1, 2);
      return {
        step() {
          scope(() => {
            const [q, k, v] = [wq, wk, wv].map((w) => heads(linear(x, w)));
            const o = scaledDotProductAttention(q, k, v).transpose(1, 2).reshape(B, L, C);
            linear(o, wo, bo).sum().backward();
          });
          clearGrads(params);
        },
        free: () => disposeAll([x, ...params]),
      };
    },
  };
}

function caseList(): Case[] {
  return [
    {
      key: "matmul",
      ref: "matmul",
      label: "matmul 1024² @ 1024² (fwd)",
      setup(device) {
        const a = held(() => randn([1024, 1024], { device }));
        const b = held(() => randn([1024, 1024], { device }));
        return { step: () => matmul(a, b).dispose(), free: () => disposeAll([a, b]) };
      },
    },
    {
      key: "conv",
      ref: "conv",
      label: "conv2d 64→64 3×3 on 1×64×64² (fwd+bwd)",
      setup(device) {
        const x = held(() => randn([1, 64, 64, 64], { device }));
        const w = param(() => randn([64, 64, 3, 3], { device }).mul(0.05));
        const b = param(() => zeros([64], { device }));
        return {
          step() {
            scope(() => conv2d(x, w, b, { padding: 1 }).sum().backward());
            clearGrads([w, b]);
          },
          free: () => disposeAll([x, w, b]),
        };
      },
    },
    {
      key: "conv-eager",
      ref: "conv",
      label: "  same, conv output disposed before backward",
      setup(device) {
        const x = held(() => randn([1, 64, 64, 64], { device }));
        const w = param(() => randn([64, 64, 3, 3], { device }).mul(0.05));
        const b = param(() => zeros([64], { device }));
        return {
          step() {
            // Frees the conv output as soon as sum() is taken, as Python's refcount does.
            const y = conv2d(x, w, b, { padding: 1 });
            const s = y.sum();
            y.dispose();
            s.backward();
            s.dispose();
            clearGrads([w, b]);
          },
          free: () => disposeAll([x, w, b]),
        };
      },
    },
    attentionCase("attention", 256, ""),
    // SD1.5's first transformer level at a 32×32 latent: 2×8×1024×1024 scores (see "Attention slices" in
    // bench/RESULTS.md)
    attentionCase("attention-1024", 1024, ", SD1.5 level 1 at 32² latents"),
    {
      key: "tiny",
      ref: "tiny",
      label: "tiny ops: add(1) on [4], dispose each",
      perOp: true,
      setup(device, o) {
        const x = held(() => ones([4], { device }));
        const n = o.tinyOps;
        return {
          step() {
            for (let i = 0; i < n; i++) x.add(1).dispose();
          },
          free: () => x.dispose(),
        };
      },
    },
    {
      key: "tiny-tensor",
      ref: "tiny-tensor",
      label: "tiny ops: add(x) on [4], dispose each",
      perOp: true,
      setup(device, o) {
        const x = held(() => ones([4], { device }));
        const n = o.tinyOps;
        return {
          step() {
            for (let i = 0; i < n; i++) x.add(x).dispose();
          },
          free: () => x.dispose(),
        };
      },
    },
    {
      key: "tiny-scope",
      ref: "tiny",
      label: "tiny ops: add(1) on [4], scope per 100",
      perOp: true,
      setup(device, o) {
        const x = held(() => ones([4], { device }));
        const n = o.tinyOps;
        return {
          step() {
            for (let i = 0; i < n; i += 100) {
              const m = Math.min(100, n - i);
              scope(() => {
                for (let j = 0; j < m; j++) x.add(1);
              });
            }
          },
          free: () => x.dispose(),
        };
      },
    },
  ];
}

// ---- the PyTorch side: engine_ref.py --serve, one JSON request per line ---------------

interface RefInfo {
  torch: string;
  threads: number;
  device: string;
  attention: string;
}

type Reply = { error?: string; samples_ms?: number[]; cpu_ms?: number[]; faults?: number[] } & Partial<RefInfo>;

/** engine_ref.py --serve, one JSON request per line; failures reject (main closes it and exits). */
class Reference {
  readonly #child: LineChild;
  readonly #python: string;

  constructor(o: Options, cpus: string | null) {
    requirePython(o.python, fail);
    const script = join(REPO, "bench", "engine_ref.py");
    const args = [script, "--serve", "--threads", String(o.threads), "--device", o.device];
    args.push("--tiny-ops", String(o.tinyOps));
    this.#python = o.python;
    this.#child = new LineChild(...pinned(cpus, o.python, args));
  }

  /** The child's exit as an Error with `code` (4: no CUDA; main exits 2 then). */
  #exitError(e: ChildExit): Error {
    const code = e.code ?? 1;
    const msg =
      code === 3
        ? `PyTorch reference: ${this.#python} cannot import torch; ${SETUP_HINT}`
        : code === 127
          ? `PyTorch reference: cannot run ${this.#python} (${e.why || "exit 127"}); ${SETUP_HINT}`
          : code === 4
            ? `the PyTorch at ${this.#python} has no CUDA; point --python at a CUDA build of PyTorch`
            : `PyTorch reference exited (${code}) ${e.why}\n${e.stderr}`;
    return Object.assign(new Error(msg), { code });
  }

  async #reply(line: Promise<string>): Promise<Reply> {
    let text: string;
    try {
      text = await line;
    } catch (e) {
      throw this.#exitError(e as ChildExit);
    }
    try {
      return JSON.parse(text) as Reply;
    } catch {
      throw new Error(`PyTorch reference printed: ${text}`);
    }
  }

  /** The info line the script prints first. */
  hello(): Promise<Reply> {
    return this.#reply(this.#child.next());
  }

  async request(req: object): Promise<Reply> {
    const r = await this.#reply(this.#child.send(JSON.stringify(req)));
    if (r.error) throw new Error(`PyTorch reference: ${r.error}`);
    return r;
  }

  /** Wall-clock ms, CPU ms and minor page faults of each repetition. */
  async run(key: string, reps: number): Promise<{ wall: number[]; cpu: number[]; faults: number[] }> {
    const r = await this.request({ cmd: "run", case: key, reps });
    return { wall: r.samples_ms ?? [], cpu: r.cpu_ms ?? [], faults: r.faults ?? [] };
  }

  close(): void {
    void this.#child.close(); // ends its stdin: engine_ref.py then exits (nothing waits for it)
  }
}

// ---- timing ------------------------------------------------------------------------

/** The q-quantile (0.5: the median), interpolated. */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return lo + 1 < s.length ? s[lo] + (s[lo + 1] - s[lo]) * (pos - lo) : s[lo];
}

const median = (xs: number[]): number => quantile(xs, 0.5);

/**
 * Per repetition: wall-clock ms; the process's CPU ms (immune to other
 * processes taking the CPU); minor page faults (freed memory touched again).
 */
interface Samples {
  atelier: number[];
  pytorch: number[];
  atelierCpu: number[];
  pytorchCpu: number[];
  atelierFaults: number[];
  pytorchFaults: number[];
}

/** Process CPU time in ms (all threads). */
const cpuNow = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
};

/**
 * Times one case on both sides, taking turns repetition by repetition (and
 * swapping who goes first each round), so both see the same machine load.
 */
async function timeCase(c: Case, o: Options, ref: Reference): Promise<Samples> {
  const { step, free } = c.setup(o.device, o);
  // On CUDA, reading one element back waits for the queued kernels.
  const probe = o.device === "cpu" ? null : held(() => ones([1], { device: o.device }));
  const sync = probe ? () => void probe.item() : () => {};
  const s: Samples = { atelier: [], pytorch: [], atelierCpu: [], pytorchCpu: [], atelierFaults: [], pytorchFaults: [] };
  const one = (): void => {
    const f0 = process.resourceUsage().minorPageFault;
    const c0 = cpuNow();
    const t0 = performance.now();
    step();
    sync();
    s.atelier.push(performance.now() - t0);
    s.atelierCpu.push(cpuNow() - c0);
    s.atelierFaults.push(process.resourceUsage().minorPageFault - f0);
  };
  const theirs = async (): Promise<void> => {
    const r = await ref.run(c.ref, 1);
    s.pytorch.push(...r.wall);
    s.pytorchCpu.push(...r.cpu);
    s.pytorchFaults.push(...r.faults);
  };
  try {
    await ref.request({ cmd: "setup", case: c.ref });
    for (let i = 0; i < o.warmup; i++) one();
    await ref.run(c.ref, o.warmup);
    for (const k of Object.keys(s) as (keyof Samples)[]) s[k].length = 0;
    for (let i = 0; i < o.reps; i++) {
      if (i % 2 === 0) one();
      await theirs();
      if (i % 2 === 1) one();
    }
    await ref.request({ cmd: "free", case: c.ref });
  } finally {
    free();
    probe?.dispose();
  }
  return s;
}

/** Busy jiffies per CPU from /proc/stat (Linux), or null. */
function cpuBusy(): number[] | null {
  try {
    return readFileSync("/proc/stat", "utf8")
      .split("\n")
      .filter((l) => /^cpu\d+ /.test(l))
      .map((l) => {
        const f = l.trim().split(/\s+/).slice(1).map(Number);
        return f.reduce((a, b) => a + b, 0) - f[3] - (f[4] ?? 0); // all but idle and iowait
      });
  } catch {
    return null;
  }
}

/** The `n` CPUs least busy over the next 300 ms, as a taskset list. */
async function idlestCpus(n: number): Promise<string> {
  const before = cpuBusy();
  await new Promise((r) => setTimeout(r, 300));
  const after = cpuBusy();
  if (!before || !after || after.length !== before.length) return n === 1 ? "0" : `0-${n - 1}`;
  return after
    .map((b, i) => ({ i, busy: b - before[i] }))
    .sort((a, b) => a.busy - b.busy || a.i - b.i)
    .slice(0, n)
    .map((c) => c.i)
    .sort((a, b) => a - b)
    .join(",");
}

/**
 * Pins this process (all its threads) to the CPUs the reference gets too:
 * on the shared 2-vCPU VMs one vCPU is often ~2× slower than the other for
 * seconds (other work on it; see bench/RESULTS.md); on the same CPUs both
 * sides see that alike. `auto` picks the CPUs least busy just now.
 */
async function pinCpus(o: Options): Promise<string | null> {
  if (o.cpus === "none") return null;
  if (o.cpus === "auto" && o.threads >= availableParallelism()) return null;
  const list = o.cpus === "auto" ? await idlestCpus(o.threads) : o.cpus;
  return pinSelf(list, "bench/engine");
}

// ---- main ----------------------------------------------------------------------------

interface Row {
  key: string;
  label: string;
  atelier_ms: number;
  pytorch_ms: number;
  /** Median over repetitions of Atelier ÷ the PyTorch repetition next to it. */
  ratio: number;
  /** Half the interquartile range of those paired ratios: the noise. */
  spread: number;
  ratio_of_medians: number;
  /** The same paired median on process CPU time (CPU only): immune to time slicing. */
  cpu_ratio: number;
  /** Median minor page faults per repetition. */
  atelier_faults: number;
  pytorch_faults: number;
  atelier_us_per_op?: number;
  pytorch_us_per_op?: number;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  requireDevice(o.device, fail);
  const cases = caseList().filter((c) => o.only.length === 0 || o.only.includes(c.key));
  if (cases.length === 0) fail(`--only matches no case (${caseList().map((c) => c.key)})`);
  const leaks = leakCheck("bench/engine");
  const cpus = await pinCpus(o);
  setNumThreads(o.threads);
  manualSeed(0);

  const ref = new Reference(o, cpus);
  const samples = new Map<string, Samples>();
  let info: Reply;
  try {
    info = await ref.hello();
    const ours = sdpaFused ? "sdpa" : "math";
    if (info.attention !== ours) {
      console.error(`bench/engine: warning: attention runs ${ours} here, ${info.attention} in PyTorch`);
    }
    for (const c of cases) samples.set(c.key, await timeCase(c, o, ref));
  } catch (e) {
    return fail((e as Error).message, (e as { code?: number }).code === 4 ? 2 : 1);
  } finally {
    ref.close();
  }

  const rows: Row[] = cases.map((c) => {
    const s = samples.get(c.key)!;
    const [a, p] = [median(s.atelier), median(s.pytorch)];
    // Slow phases on the shared VMs last seconds (up to 2-4×, see
    // bench/RESULTS.md), so each repetition is compared with its neighbour.
    const paired = s.atelier.map((t, i) => t / s.pytorch[i]);
    const pairedCpu = s.atelierCpu.map((t, i) => t / s.pytorchCpu[i]);
    const row: Row = {
      key: c.key,
      label: c.label,
      atelier_ms: a,
      pytorch_ms: p,
      ratio: median(paired),
      spread: (quantile(paired, 0.75) - quantile(paired, 0.25)) / 2,
      ratio_of_medians: a / p,
      cpu_ratio: median(pairedCpu),
      atelier_faults: median(s.atelierFaults),
      pytorch_faults: median(s.pytorchFaults),
    };
    if (c.perOp) {
      row.atelier_us_per_op = (a * 1e3) / o.tinyOps;
      row.pytorch_us_per_op = (p * 1e3) / o.tinyOps;
    }
    return row;
  });

  const out = o.json ? console.error : console.log;
  // On CUDA the CPU mostly waits, so CPU time says nothing there.
  const cpuCol = o.device === "cpu";
  out(
    `${versus(info.torch)} — ${o.device}, ` +
      `${getNumThreads()}/${info.threads} thread(s) on CPUs ${cpus ?? "any"}, ${o.reps} turns after ${o.warmup} warm-up`,
  );
  const layout = { width: 46, digits: 3, spread: true, cpu: cpuCol };
  out(tableHeader(layout));
  for (const r of rows) {
    const perOp =
      r.atelier_us_per_op === undefined
        ? ""
        : `   (${r.atelier_us_per_op.toFixed(2)} vs ${r.pytorch_us_per_op?.toFixed(2)} µs/op)`;
    out(`${tableRow(r, layout)}${perOp}`);
  }
  leaks();
  if (o.json) {
    console.log(
      JSON.stringify({
        ...jsonHead(info.torch, o),
        cpus,
        reps: o.reps,
        warmup: o.warmup,
        tiny_ops: o.tinyOps,
        rows,
        samples_ms: Object.fromEntries(samples),
      }),
    );
  }
}

await main();
