// Training-step benchmark: one LoRA step and one full Dreambooth step with
// prior preservation (1 instance + 1 class example, so the UNet sees batch 2,
// as diffusers' train_dreambooth.py concatenates them) at SD1.5 size, random
// weights, 64×64 latents (32×32 on CPU: see --latent), precomputed text
// embeddings (frozen text encoder),
// against PyTorch doing the same step (bench/train_ref.py) in the same run.
// Prints Atelier ÷ PyTorch per case (lower is better) and both sides' peak
// memory (docs/design.md §4). See bench/RESULTS.md, "bench/train".
//
// Each side of each case runs in a fresh process, one after the other (never
// two at once: a full step needs most of the machine's memory), so each peak
// RSS is that case's alone: Node's is this script with --worker. Options: --help.
// --check is bench/train_check.ts; what it shares with this file (the step, the
// child runner) is bench/train_common.ts, what all benchmarks share bench/common.ts.
import { fileURLToPath } from "node:url";
import { injectLora } from "../src/adapters/network.js";
import {
  disposeAll,
  Generator,
  getNumThreads,
  keep,
  manualSeed,
  ones,
  randn,
  releaseFreeMemory,
  scope,
  setNumThreads,
} from "../src/engine/index.js";
import { UNet2DConditionModel, type UNetConfig, unetPresets } from "../src/models/unet/index.js";
import { NoiseSchedule, SD15_SCHEDULER_CONFIG } from "../src/schedulers/index.js";
import { drawNoise } from "../src/train/losses.js";
import {
  type BaseOptions,
  type Json,
  jsonHead,
  leakCheck,
  maxRssMb,
  median,
  meminfoGiB,
  parseFlags,
  requireDevice,
  requirePython,
  say,
  tableHeader,
  tableRow,
  versus,
} from "./common.js";
import { checkMain } from "./train_check.js";
import {
  type ChildResult,
  fail,
  load1,
  makeOptimizer,
  memAvailableGiB,
  type OptimizerKind,
  pyUnet,
  REF_SCRIPT,
  resetPeak,
  runChild,
  type Savers,
  saverArgs,
  smapsSummary,
  statusMb,
  stepLoss,
  storeFrozen,
  underAutocast,
} from "./train_common.js";

const CASES = ["lora", "full"] as const;
type CaseKey = (typeof CASES)[number];

interface Options extends BaseOptions, Savers {
  quick: boolean;
  /** Latent side (null: 64 on CUDA, 32 on CPU, where 64 does not fit; see RESULTS.md). */
  latent: number | null;
  /** The UNet's batch: the instance example and batch − 1 class examples (default 2). */
  batch: number;
  check: boolean;
  only: CaseKey[];
  optimizer: "auto" | OptimizerKind;
  waitMem: number;
  worker: CaseKey | null;
  /** global.gc() after each step on the Atelier side (its worker runs with --expose-gc). */
  gc: boolean;
  /** Atelier side: malloc_trim after each step (releaseFreeMemory), to see what the heap keeps. */
  trim: boolean;
}

const USAGE = `usage: node dist/bench/train.js [options]
  --threads N        intra-op threads on both sides (default 2)
  --device D         cpu (default) or cuda
  --checkpointing    gradient checkpointing on both sides (Atelier: gradient_checkpointing; PyTorch:
                     torch.utils.checkpoint around each resnet and transformer, as diffusers does)
  --mixed-precision M  no (default) or bf16: forward and loss under bf16 autocast on both sides
  --weight-dtype W   float32 (default) or bf16: frozen weights (the UNet under LoRA) stored in bf16 on
                     both sides (needs --mixed-precision bf16, as the trainer's weight_dtype does)
  --savers           all of them: --checkpointing --mixed-precision bf16 --weight-dtype bf16, and the
                     full step with 8-bit AdamW (unless --optimizer says otherwise)
  --gc               Atelier side: global.gc() after each step (node --expose-gc), to see what the
                     RSS kept between steps owes to JS wrappers not yet collected
  --trim             Atelier side: malloc_trim after each step (after the gc() of --gc), to see what
                     it owes to freed blocks the heap keeps for the next step (native/runtime.cc)
  --quick            a small UNet (SD1.5 layout, channels 32-64-128-128, 32×32 latents) to see that it works
  --latent N         latent side: N×N latents, 8N px images (default 64 on CUDA; 32 on CPU, where a full
                     step on 64×64 needs more memory than the 24 GiB machine has)
  --batch N          the UNet's batch: 1 instance + N−1 class examples (default 2; the GPU check runs 1/4/8)
  --check            only the equality check: tiny UNet, same weights and draws on both sides,
                     2 steps of each method, losses, every gradient and the updated weights compared
  --only a,b         run only these cases (${CASES.join(", ")})
  --reps N           timed steps per side and case, after the warm-up (default 3)
  --warmup N         untimed steps first (default 1)
  --optimizer O      full step's optimizer: auto (default: AdamW where the memory allows it,
                     else SGD without momentum), adamw, adamw8bit (bitsandbytes' algorithm; PyTorch:
                     scripts/record-optim-extra-reference.py AdamW8bit) or sgd; the LoRA step always uses AdamW
  --wait-mem S       wait up to S seconds for enough free memory before each process (default 600)
  --cpus C           pin both sides to these CPUs (a taskset list), or none (default)
  --python PATH      the PyTorch interpreter (default /usr/bin/python3)
  --json             print one JSON object on stdout (the table goes to stderr)`;

function parseArgs(argv: string[]): Options {
  const defaults: Options = {
    threads: 2,
    device: "cpu",
    quick: false,
    checkpointing: false,
    mixedPrecision: "no",
    weightDtype: "float32",
    gc: false,
    trim: false,
    latent: null,
    batch: 2,
    check: false,
    only: [...CASES],
    reps: 3,
    warmup: 1,
    optimizer: "auto",
    waitMem: 600,
    cpus: "none",
    python: "/usr/bin/python3",
    json: false,
    worker: null,
  };
  const caseKey = (v: string | undefined): CaseKey => {
    if (!(CASES as readonly string[]).includes(v ?? "")) fail(`unknown case '${v}' (${CASES.join(", ")})`);
    return v as CaseKey;
  };
  let savers = false;
  const o = parseFlags(argv, defaults, {
    usage: USAGE,
    fail,
    cpus: "a CPU list or none",
    own(o, a, v) {
      if (a === "--quick") o.quick = true;
      else if (a === "--checkpointing") o.checkpointing = true;
      else if (a === "--mixed-precision") {
        const m = v.next();
        if (m !== "no" && m !== "bf16") fail(`--mixed-precision expects no or bf16, got ${m}`);
        o.mixedPrecision = m;
      } else if (a === "--weight-dtype") {
        const w = v.next();
        if (w !== "float32" && w !== "bf16") fail(`--weight-dtype expects float32 or bf16, got ${w}`);
        o.weightDtype = w;
      } else if (a === "--savers") savers = true;
      else if (a === "--gc") o.gc = true;
      else if (a === "--trim") o.trim = true;
      else if (a === "--latent") o.latent = v.int(8);
      else if (a === "--batch") o.batch = v.int(1);
      else if (a === "--check") o.check = true;
      else if (a === "--only") o.only = (v.next() ?? "").split(",").filter(Boolean).map(caseKey);
      else if (a === "--optimizer") {
        const k = v.next();
        if (k !== "auto" && k !== "adamw" && k !== "adamw8bit" && k !== "sgd")
          fail(`--optimizer expects auto, adamw, adamw8bit or sgd, got ${k}`);
        o.optimizer = k;
      } else if (a === "--wait-mem") o.waitMem = v.int(0);
      else if (a === "--worker") o.worker = caseKey(v.next());
      else return false;
      return true;
    },
  });
  if (savers) {
    Object.assign(o, { checkpointing: true, mixedPrecision: "bf16", weightDtype: "bf16" });
    if (o.optimizer === "auto") o.optimizer = "adamw8bit";
  }
  if (o.weightDtype === "bf16" && o.mixedPrecision !== "bf16")
    fail(`--weight-dtype bf16 needs --mixed-precision bf16 (the forward runs under its autocast)`);
  return o;
}

// ---- the benchmark's settings ----------------------------------------------------------

/** --quick: SD1.5's layout (4 blocks, 2 layers, 8 heads, 768-wide context) at 1/10 of the width. */
const SMALL: UNetConfig = { ...unetPresets.sd15, blockOutChannels: [32, 64, 128, 128] };

/** What both sides run; the worker gets it through argv. */
interface StepSpec extends Savers {
  unet: UNetConfig;
  latent: number;
  /** Class (prior-preservation) examples next to the one instance example. */
  classBatch: number;
  optimizer: OptimizerKind;
  lr: number;
  rank: number;
  alpha: number;
}

const LR: Record<CaseKey, number> = { lora: 1e-4, full: 5e-6 }; // kohya's / diffusers' usual rates

// ---- the Atelier side (--worker) -----------------------------------------------------------

const rssMb = () => process.memoryUsage().rss / 2 ** 20;
const minorFaults = () => process.resourceUsage().minorPageFault;

interface StepRun {
  ms: number;
  /** Process CPU time (all threads): less sensitive than wall time to other processes on the CPUs. */
  cpu_ms: number;
  /** Minor page faults in forward, backward and the optimizer step. */
  faults: number[];
  forward_ms: number;
  backward_ms: number;
  optimizer_ms: number;
  loss: number;
  warmup: boolean;
  /** RSS once the step (and zeroGrad, and with --gc a global.gc()) is done: what is kept between steps. */
  rss_after_mb: number;
  /** The same before the global.gc() of --gc (without it: the same reading). */
  rss_before_gc_mb: number;
  /** With --gc/--trim: where the RSS lies (smaps) and V8's own figures, before, after the gc(), after the trim. */
  gc?: { before: Json; after_gc: Json; after: Json };
}

/** --worker: one case on the Atelier side, in this fresh process; returns what is printed. */
function worker(caseKey: CaseKey, spec: StepSpec, o: Options): Json {
  setNumThreads(o.threads);
  const device = o.device;
  manualSeed(0);
  const t0 = performance.now();
  const unet = new UNet2DConditionModel(spec.unet, { device }).train().setGradientCheckpointing(spec.checkpointing);
  const network = caseKey === "lora" ? injectLora({ unet }, { rank: spec.rank, alpha: spec.alpha }) : null;
  const params = network ? network.trainableParameters() : unet.parameters();
  const frozenCast = storeFrozen(spec, unet); // before the optimizer, as src/train/run-setup.ts
  const optimizer = makeOptimizer(spec.optimizer, params, spec.lr);
  const buildS = (performance.now() - t0) / 1e3;
  const schedule = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
  const gen = new Generator(1);
  const b = 1 + spec.classBatch;
  const [latents, context] = keep(
    scope(() => [
      randn([b, 4, spec.latent, spec.latent], { generator: gen }).to(device),
      randn([b, 77, spec.unet.crossAttentionDim], { generator: gen }).to(device),
    ]),
  );
  // On CUDA, reading one element back waits for the queued work.
  const probe = device === "cpu" ? null : keep(ones([1], { device }));
  const sync = () => void probe?.item();
  const rssModel = rssMb();
  // The steps' own peak: building (float32, then cast by --weight-dtype) can peak higher than a
  // step with bf16 weights; VmHWM is reset here (and in train_ref.py at the same point).
  const buildPeak = statusMb("VmHWM");
  resetPeak();
  const smapsModel = o.gc || o.trim ? smapsSummary() : null;
  const runs: StepRun[] = [];
  let peakSampled = rssModel;
  const sample = () => {
    peakSampled = Math.max(peakSampled, rssMb());
  };
  for (let i = 0; i < o.warmup + o.reps; i++) {
    const f0 = minorFaults();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let t1 = t0;
    let f1 = f0;
    const loss = scope(() => {
      const { noise, timesteps } = drawNoise(latents, schedule.numTrainTimesteps, { generator: gen });
      const terms = underAutocast(spec, device, () => stepLoss(unet, schedule, latents, context, noise, timesteps));
      const value = terms.loss.item();
      t1 = performance.now();
      f1 = minorFaults();
      sample();
      terms.loss.backward();
      sync();
      sample();
      return value;
    });
    const t2 = performance.now();
    const f2 = minorFaults();
    optimizer.step();
    optimizer.zeroGrad();
    sync();
    const t3 = performance.now();
    sample();
    const rssBeforeGc = rssMb();
    const where = () => ({ ...smapsSummary(), ...process.memoryUsage() });
    const before = o.gc || o.trim ? where() : null;
    if (o.gc) (globalThis as { gc?: () => void }).gc!();
    const afterGc = before ? where() : null;
    if (o.trim) releaseFreeMemory();
    const c = process.cpuUsage(c0);
    const r: StepRun = {
      ms: t3 - t0,
      cpu_ms: (c.user + c.system) / 1e3,
      faults: [f1 - f0, f2 - f1, minorFaults() - f2],
      forward_ms: t1 - t0,
      backward_ms: t2 - t1,
      optimizer_ms: t3 - t2,
      loss,
      warmup: i < o.warmup,
      rss_after_mb: rssMb(),
      rss_before_gc_mb: rssBeforeGc,
      ...(before ? { gc: { before, after_gc: afterGc!, after: where() } } : {}),
    };
    runs.push(r);
    console.error(
      `  Atelier ${caseKey} ${r.warmup ? "warm-up" : "step"} ${(r.ms / 1e3).toFixed(1)} s ` +
        `(cpu ${(r.cpu_ms / 1e3).toFixed(1)}; fwd ${(r.forward_ms / 1e3).toFixed(1)}, bwd ${(r.backward_ms / 1e3).toFixed(1)}, ` +
        `opt ${(r.optimizer_ms / 1e3).toFixed(2)}), RSS after ${(r.rss_after_mb / 1024).toFixed(2)} GiB` +
        `${o.gc || o.trim ? ` (${(r.rss_before_gc_mb / 1024).toFixed(2)} before ${o.gc ? "gc()" : ""}${o.trim ? " trim" : ""})` : ""}, load ${load1().toFixed(2)}`,
    );
  }
  const out = {
    case: caseKey,
    runs,
    median_ms: median(timedRuns(runs).map((r) => r.ms)),
    median_cpu_ms: median(timedRuns(runs).map((r) => r.cpu_ms)),
    params: unet.parameterCount(),
    trainable: params.reduce((n, p) => n + p.numel, 0),
    trainable_tensors: params.length,
    lora_modules: network?.modules.length ?? 0,
    optimizer: spec.optimizer,
    frozen_cast: frozenCast,
    build_s: buildS,
    rss_model_mb: rssModel,
    ...(smapsModel ? { smaps_model: smapsModel } : {}),
    rss_sampled_peak_mb: peakSampled, // after forward, backward and the optimizer step
    maxrss_mb: maxRssMb(),
    vmhwm_mb: statusMb("VmHWM"),
    vmhwm_build_mb: buildPeak,
    threads: getNumThreads(),
  };
  optimizer.dispose();
  network?.remove();
  unet.dispose();
  disposeAll([latents, context, probe]);
  gen.dispose();
  return out;
}

const timedRuns = (runs: unknown) => (runs as StepRun[]).filter((r) => !r.warmup);

// ---- child processes ---------------------------------------------------------------------

const memTotalGiB = () => meminfoGiB("MemTotal");

/**
 * Host memory one side of a case needs at most (GiB). Measured at SD1.5 size
 * on CPU (PyTorch, LoRA, 2 examples): 2.15 GiB over the weights at 32×32
 * latents, 6.11 at 48×48, i.e. per example 0.85 GiB × area (convs, norms,
 * GEGLU) + 0.23 GiB × area² (the [heads, HW, HW] attention maps), area =
 * (side/32)². A full step keeps more activations (every layer's input, for
 * its weight gradient) and holds the gradients, AdamW also its 2 moments.
 */
function needGiB(caseKey: CaseKey, spec: StepSpec, device: string, params: number): number {
  const paramGiB = (params * 4) / 2 ** 30;
  if (device !== "cpu") return 2 + paramGiB; // the host holds little more than a copy of the weights
  // weights + gradients, + 2 float32 moments (AdamW) or 2 bytes a value (8-bit AdamW)
  const copies = caseKey === "lora" ? 1 : spec.optimizer === "adamw" ? 4 : spec.optimizer === "adamw8bit" ? 2.5 : 2;
  const area = (spec.latent / 32) ** 2;
  const width = spec.unet.blockOutChannels[0] / 320;
  const perExample = 0.85 * area * width + 0.23 * area ** 2;
  const activations = (1 + spec.classBatch) * perExample * (caseKey === "full" ? 1.3 : 1);
  return 0.4 + copies * paramGiB + activations + 0.5;
}

async function waitForMemory(need: number, o: Options, say: (s: string) => void): Promise<void> {
  const until = Date.now() + o.waitMem * 1e3;
  for (let told = false; memAvailableGiB() < need; told = true) {
    const have = `${memAvailableGiB().toFixed(1)} GiB available`;
    if (Date.now() > until) fail(`${need.toFixed(1)} GiB of memory needed, ${have} after ${o.waitMem} s`);
    if (!told) say(`waiting for ${need.toFixed(1)} GiB free (${have} now)`);
    await new Promise((r) => setTimeout(r, 5000));
  }
}

/** What both children take; the step's settings go to Python as flags, to the worker as --spec JSON. */
function commonArgs(o: Options): string[] {
  return ["--threads", String(o.threads), "--device", o.device, "--warmup", String(o.warmup), "--reps", String(o.reps)];
}

function pythonArgs(spec: StepSpec): string[] {
  return ["--unet", JSON.stringify(pyUnet(spec.unet)), "--latent", String(spec.latent)]
    .concat(["--class-batch", String(spec.classBatch), "--optimizer", spec.optimizer, "--lr", String(spec.lr)])
    .concat(["--rank", String(spec.rank), "--alpha", String(spec.alpha)])
    .concat(saverArgs(spec));
}

function runPython(caseKey: CaseKey, spec: StepSpec, o: Options): Promise<ChildResult> {
  requirePython(o.python, fail);
  const argv = [REF_SCRIPT, "--case", caseKey, ...pythonArgs(spec), ...commonArgs(o)];
  return runChild(o.python, argv, o, "PyTorch reference");
}

function runAtelier(caseKey: CaseKey, spec: StepSpec, o: Options): Promise<ChildResult> {
  const argv = [fileURLToPath(import.meta.url), "--worker", caseKey, "--spec", JSON.stringify(spec)];
  if (o.gc) argv.unshift("--expose-gc");
  if (o.gc) argv.push("--gc");
  if (o.trim) argv.push("--trim");
  return runChild(process.execPath, [...argv, ...commonArgs(o)], o, "Atelier worker");
}

// ---- main -------------------------------------------------------------------------------------

interface Row {
  key: CaseKey;
  label: string;
  atelier_ms: number;
  pytorch_ms: number;
  ratio: number;
  /** The same on process CPU time. */
  cpu_ratio: number;
  atelier: Json;
  pytorch: Json;
  atelier_child: Omit<ChildResult, "json">;
  pytorch_child: Omit<ChildResult, "json">;
}

const OPT_LABEL: Record<OptimizerKind, string> = { adamw: "AdamW", adamw8bit: "8-bit AdamW", sgd: "SGD" };

function saversLabel(s: Savers, key: CaseKey): string {
  const on = [
    s.checkpointing ? "checkpointing" : "",
    s.mixedPrecision === "bf16" ? "bf16 autocast" : "",
    s.weightDtype === "bf16" && key === "lora" ? "bf16 frozen weights" : "",
  ].filter(Boolean);
  return on.length ? `, ${on.join(" + ")}` : "";
}

const gib = (mb: unknown) => `${((mb as number) / 1024).toFixed(2)} GiB`;
const secs = (ms: number) => (ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1e3).toFixed(1)} s`);

function describe(r: Row): string[] {
  const [a, p] = [r.atelier, r.pytorch];
  const med = (j: Json, f: (s: StepRun) => number) => median(timedRuns(j.runs).map(f));
  const part = (k: "forward" | "backward" | "optimizer") => {
    const [x, y] = [a, p].map((j) => med(j, (s) => s[`${k}_ms`]));
    return `${k} ${secs(x)} vs ${secs(y)} (${(x / y).toFixed(3)})`;
  };
  const samples = (j: Json, k: "ms" | "cpu_ms") =>
    timedRuns(j.runs)
      .map((s) => (s[k] / 1e3).toFixed(1))
      .join(", ");
  const faults = (j: Json) => [0, 1, 2].map((i) => `${(med(j, (s) => s.faults[i]) / 1e3).toFixed(0)}k`).join("/");
  return [
    `${part("forward")}, ${part("backward")}, ${part("optimizer")}`,
    `minor page faults per step, forward/backward/optimizer: Atelier ${faults(a)}, PyTorch ${faults(p)}`,
    `steps (s): Atelier ${samples(a, "ms")}; PyTorch ${samples(p, "ms")}; ` +
      `CPU time (s): Atelier ${samples(a, "cpu_ms")}; PyTorch ${samples(p, "cpu_ms")}`,
    `peak RSS in the steps (VmHWM, reset after building): Atelier ${gib(a.vmhwm_mb)}, PyTorch ${gib(p.vmhwm_mb)}; ` +
      `building's peak ${gib(a.vmhwm_build_mb)} vs ${gib(p.vmhwm_build_mb)}; RSS after building ${gib(a.rss_model_mb)} vs ${gib(p.rss_model_mb)}`,
    `peak RSS sampled each second by the parent: Atelier ${gib(r.atelier_child.sampled_peak_rss_mb)}, ` +
      `PyTorch ${gib(r.pytorch_child.sampled_peak_rss_mb)}; Atelier's own samples between phases ${gib(a.rss_sampled_peak_mb)}`,
    `${((a.params as number) / 1e6).toFixed(1)}M UNet params, ${((a.trainable as number) / 1e6).toFixed(2)}M trained ` +
      `in ${a.trainable_tensors} tensors (PyTorch ${p.trainable_tensors})` +
      `${r.key === "lora" ? `, ${a.lora_modules} LoRA modules (PyTorch ${p.lora_modules})` : ""}; ${a.optimizer}; ` +
      `losses ${(a.runs as StepRun[]).map((s) => s.loss.toFixed(4)).join(" ")} vs ` +
      `${(p.runs as StepRun[]).map((s) => s.loss.toFixed(4)).join(" ")}`,
    `load average during the runs: Atelier ${fmtLoad(r.atelier_child.load)}, PyTorch ${fmtLoad(r.pytorch_child.load)}; ` +
      `least memory available ${Math.min(r.atelier_child.min_mem_available_gib, r.pytorch_child.min_mem_available_gib).toFixed(1)} GiB`,
  ];
}

const fmtLoad = (xs: number[]) =>
  `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)} (mean ${(xs.reduce((s, x) => s + x, 0) / xs.length).toFixed(2)})`;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const specAt = argv.indexOf("--spec");
  const spec = specAt >= 0 ? (JSON.parse(argv.splice(specAt, 2)[1]) as StepSpec) : null;
  const o = parseArgs(argv);
  if (o.worker) {
    if (!spec) fail("--worker needs --spec");
    if (o.gc && !(globalThis as { gc?: unknown }).gc) fail("--gc needs node --expose-gc");
    console.log(JSON.stringify(worker(o.worker, spec, o)));
    return;
  }
  requireDevice(o.device, fail);
  const out = o.json ? console.error : console.log;
  const leaks = leakCheck("bench/train");

  if (o.check) return checkMain(o, out);

  const unet = o.quick ? SMALL : unetPresets.sd15;
  const latent = o.latent ?? (o.quick || o.device === "cpu" ? 32 : 64);
  const shell = new UNet2DConditionModel(unet, { mode: "empty" });
  const params = shell.parameterCount();
  shell.dispose();
  const base: StepSpec = {
    unet,
    latent,
    classBatch: o.batch - 1,
    optimizer: "adamw",
    lr: 0,
    rank: 4,
    alpha: 1,
    checkpointing: o.checkpointing,
    mixedPrecision: o.mixedPrecision,
    weightDtype: o.weightDtype,
  };
  // What fits on this machine when the others hold little (2 GiB left to them and the system).
  const room = memTotalGiB() - 2;
  let fullOptimizer: OptimizerKind = o.optimizer === "auto" ? "adamw" : o.optimizer;
  if (o.optimizer === "auto" && o.only.includes("full")) {
    const need = needGiB("full", { ...base, optimizer: "adamw" }, o.device, params);
    if (need > room) fullOptimizer = "sgd";
    say(`full step: ${fullOptimizer} (AdamW needs ~${need.toFixed(1)} GiB, the machine ${memTotalGiB().toFixed(1)})`);
  }
  const specOf = (key: CaseKey): StepSpec => ({
    ...base,
    optimizer: key === "lora" ? "adamw" : fullOptimizer,
    lr: LR[key],
  });
  const skipped: string[] = [];
  const cases = o.only.filter((key) => {
    const need = needGiB(key, specOf(key), o.device, params);
    if (need <= room) return true;
    skipped.push(
      `${key}: skipped, needs ~${need.toFixed(1)} GiB and this machine has ${memTotalGiB().toFixed(1)} GiB; try a smaller --latent`,
    );
    say(skipped[skipped.length - 1]);
    return false;
  });
  const loadStart = load1();
  const rows: Row[] = [];
  for (const [i, key] of cases.entries()) {
    const spec = specOf(key);
    const need = needGiB(key, spec, o.device, params);
    // alternate who goes first, so that neither side always meets the same load
    const order = i % 2 === 0 ? (["pytorch", "atelier"] as const) : (["atelier", "pytorch"] as const);
    const res: Partial<Record<"atelier" | "pytorch", ChildResult>> = {};
    for (const side of order) {
      await waitForMemory(need, o, say);
      say(`${key}: ${side}, load ${load1().toFixed(2)}, ${memAvailableGiB().toFixed(1)} GiB available`);
      res[side] = await (side === "atelier" ? runAtelier(key, spec, o) : runPython(key, spec, o));
    }
    const { json: a, ...ac } = res.atelier!;
    const { json: p, ...pc } = res.pytorch!;
    const label =
      key === "lora"
        ? `LoRA rank ${spec.rank} step (AdamW), base frozen`
        : `full Dreambooth step (${OPT_LABEL[spec.optimizer]}), all params`;
    rows.push({
      key,
      label: `${label}${saversLabel(spec, key)}, ${o.quick ? "small" : "SD1.5"} UNet, [${1 + spec.classBatch},4,${latent},${latent}]`,
      atelier_ms: a.median_ms as number,
      pytorch_ms: p.median_ms as number,
      ratio: (a.median_ms as number) / (p.median_ms as number),
      cpu_ratio: (a.median_cpu_ms as number) / (p.median_cpu_ms as number),
      atelier: a,
      pytorch: p,
      atelier_child: ac,
      pytorch_child: pc,
    });
  }
  const loadEnd = load1();
  if (rows.length === 0) {
    for (const line of skipped) out(line);
    fail("no case could run here");
  }
  const first = rows[0].pytorch;
  out(
    `${versus(first.torch)} (${first.attention} attention) — ` +
      `${o.device}, ${o.threads} thread(s) each, CPUs ${o.cpus}; load average ${loadStart.toFixed(2)} → ${loadEnd.toFixed(2)}`,
  );
  const layout = { width: 76, digits: 0, cpu: true };
  out(tableHeader(layout));
  for (const r of rows) {
    out(tableRow(r, layout));
    for (const n of describe(r)) out(`    ${n}`);
  }
  for (const line of skipped) out(line);
  leaks();
  if (o.json) {
    console.log(
      JSON.stringify({
        ...jsonHead(first.torch, o),
        load_average: [loadStart, loadEnd],
        rows,
        skipped,
      }),
    );
  }
}

await main();
