// Training-step benchmark: one LoRA step and one full Dreambooth step with
// prior preservation (1 instance + 1 class example, so the UNet sees batch 2,
// as diffusers' train_dreambooth.py concatenates them) at SD1.5 size, random
// weights, 64×64 latents (32×32 on CPU: see --latent), precomputed text
// embeddings (frozen text encoder),
// against PyTorch doing the same step (bench/train_ref.py) in the same run.
// Prints Atelier ÷ PyTorch per case (lower is better) and both sides' peak
// memory (DESIGN.md §4). See bench/RESULTS.md, "bench/train".
//
// Each side of each case runs in a fresh process, one after the other (never
// two at once: a full step needs most of the machine's memory), so each peak
// RSS is that case's alone: Node's is this script with --worker. Options: --help.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { injectLora } from "../src/adapters/network.js";
import {
  AdamW,
  checkDevice,
  disposeAll,
  Generator,
  getNumThreads,
  keep,
  liveTensors,
  manualSeed,
  noGrad,
  type Optimizer,
  ones,
  randn,
  SGD,
  scope,
  setNumThreads,
  type Tensor,
  torchVersion,
} from "../src/engine/index.js";
import { loadSafetensors, saveSafetensors } from "../src/formats/safetensors.js";
import { UNet2DConditionModel, type UNetConfig, unetPresets } from "../src/models/unet/index.js";
import { NoiseSchedule, SD15_SCHEDULER_CONFIG } from "../src/schedulers/index.js";
import { diffusionLoss, drawNoise, type LossTerms } from "../src/train/losses.js";

const CASES = ["lora", "full"] as const;
type CaseKey = (typeof CASES)[number];
type OptimizerKind = "adamw" | "sgd";

interface Options {
  threads: number;
  device: string;
  quick: boolean;
  /** Latent side (null: 64 on CUDA, 32 on CPU, where 64 does not fit; see RESULTS.md). */
  latent: number | null;
  check: boolean;
  only: CaseKey[];
  reps: number;
  warmup: number;
  optimizer: "auto" | OptimizerKind;
  waitMem: number;
  cpus: string;
  python: string;
  json: boolean;
  worker: CaseKey | null;
}

const USAGE = `usage: node dist/bench/train.js [options]
  --threads N        intra-op threads on both sides (default 2)
  --device D         cpu (default) or cuda
  --quick            a small UNet (SD1.5 layout, channels 32-64-128-128, 32×32 latents) to see that it works
  --latent N         latent side: N×N latents, 8N px images (default 64 on CUDA; 32 on CPU, where a full
                     step on 64×64 needs more memory than the 24 GiB machine has)
  --check            only the equality check: tiny UNet, same weights and draws on both sides,
                     2 steps of each method, losses, every gradient and the updated weights compared
  --only a,b         run only these cases (${CASES.join(", ")})
  --reps N           timed steps per side and case, after the warm-up (default 3)
  --warmup N         untimed steps first (default 1)
  --optimizer O      full step's optimizer: auto (default: AdamW where the memory allows it,
                     else SGD without momentum), adamw or sgd; the LoRA step always uses AdamW
  --wait-mem S       wait up to S seconds for enough free memory before each process (default 600)
  --cpus C           pin both sides to these CPUs (a taskset list), or none (default)
  --python PATH      the PyTorch interpreter (default /usr/bin/python3)
  --json             print one JSON object on stdout (the table goes to stderr)`;

function fail(message: string, code = 2): never {
  console.error(`bench/train: ${message}`);
  process.exit(code);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    threads: 2,
    device: "cpu",
    quick: false,
    latent: null,
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
  const int = (flag: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) fail(`${flag} expects an integer >= ${min}, got ${v}`);
    return n;
  };
  const caseKey = (v: string | undefined): CaseKey => {
    if (!(CASES as readonly string[]).includes(v ?? "")) fail(`unknown case '${v}' (${CASES.join(", ")})`);
    return v as CaseKey;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string | undefined => argv[++i];
    if (a === "--threads") o.threads = int(a, next(), 1);
    else if (a === "--device") o.device = next() ?? fail("--device expects cpu or cuda");
    else if (a === "--quick") o.quick = true;
    else if (a === "--latent") o.latent = int(a, next(), 8);
    else if (a === "--check") o.check = true;
    else if (a === "--only") o.only = (next() ?? "").split(",").filter(Boolean).map(caseKey);
    else if (a === "--reps") o.reps = int(a, next(), 1);
    else if (a === "--warmup") o.warmup = int(a, next(), 0);
    else if (a === "--optimizer") {
      const v = next();
      if (v !== "auto" && v !== "adamw" && v !== "sgd") fail(`--optimizer expects auto, adamw or sgd, got ${v}`);
      o.optimizer = v;
    } else if (a === "--wait-mem") o.waitMem = int(a, next(), 0);
    else if (a === "--cpus") o.cpus = next() ?? fail("--cpus expects a CPU list or none");
    else if (a === "--python") o.python = next() ?? fail("--python expects a path");
    else if (a === "--json") o.json = true;
    else if (a === "--worker") o.worker = caseKey(next());
    else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else fail(`unknown option '${a}'\n${USAGE}`);
  }
  return o;
}

// ---- the benchmark's settings ----------------------------------------------------------

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const REF_SCRIPT = join(REPO, "bench", "train_ref.py");
const SETUP_HINT = "run `bash scripts/setup.sh --with-reference` to install Debian's python3-torch";

/** --quick: SD1.5's layout (4 blocks, 2 layers, 8 heads, 768-wide context) at 1/10 of the width. */
const SMALL: UNetConfig = { ...unetPresets.sd15, blockOutChannels: [32, 64, 128, 128] };

/** What both sides run; the worker gets it through argv. */
interface StepSpec {
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
const PRIOR_LOSS_WEIGHT = 1;

/** The UNet config in train_ref.py's terms; refuses what its plain-torch UNet does not build. */
function pyUnet(c: UNetConfig): Record<string, unknown> {
  const plain =
    typeof c.attentionHeadDim === "number" &&
    c.numAttentionHeads === undefined &&
    !c.useLinearProjection &&
    (c.transformerLayersPerBlock ?? 1) === 1 &&
    c.normNumGroups === 32 &&
    c.inChannels === 4 &&
    c.outChannels === 4;
  if (!plain) fail("train_ref.py builds SD1.x-style UNets only");
  return {
    block_out: c.blockOutChannels,
    layers: c.layersPerBlock,
    heads: c.attentionHeadDim,
    ctx_dim: c.crossAttentionDim,
    down: c.downBlockTypes.map((t) => (t === "CrossAttnDownBlock2D" ? "A" : "R")),
    up: c.upBlockTypes.map((t) => (t === "CrossAttnUpBlock2D" ? "A" : "R")),
  };
}

// ---- one training step (what src/train/trainer.ts does per batch) ----------------------

/** noisy = addNoise(latents); loss = instance MSE + w · prior MSE of the epsilon prediction. */
function stepLoss(
  unet: UNet2DConditionModel,
  schedule: NoiseSchedule,
  latents: Tensor,
  context: Tensor,
  noise: Tensor,
  timesteps: Tensor,
): LossTerms {
  const isClass = Array.from({ length: latents.size(0) }, (_, i) => i > 0);
  const noisy = schedule.addNoise(latents, noise, timesteps);
  const prediction = unet.forward(noisy, timesteps, context);
  const target = schedule.target(latents, noise, timesteps);
  return diffusionLoss(prediction, target, isClass, { priorLossWeight: PRIOR_LOSS_WEIGHT });
}

function makeOptimizer(kind: OptimizerKind, params: Tensor[], lr: number): Optimizer<{ lr: number }> {
  // diffusers' AdamW settings: betas (0.9, 0.999), weight decay 1e-2, eps 1e-8
  if (kind === "adamw") return new AdamW(params, { lr, betas: [0.9, 0.999], weightDecay: 1e-2, eps: 1e-8 });
  return new SGD(params, { lr }); // no momentum: no optimizer state
}

/** A line of /proc/self/status in MiB (VmRSS, VmHWM), or null. */
function statusMb(field: string, pid: number | "self" = "self"): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

const rssMb = () => process.memoryUsage().rss / 2 ** 20;
const minorFaults = () => process.resourceUsage().minorPageFault;
const load1 = () => loadavg()[0];

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
}

type Json = Record<string, unknown>;

/** --worker: one case on the Atelier side, in this fresh process; returns what is printed. */
function worker(caseKey: CaseKey, spec: StepSpec, o: Options): Json {
  setNumThreads(o.threads);
  const device = o.device;
  manualSeed(0);
  const t0 = performance.now();
  const unet = new UNet2DConditionModel(spec.unet, { device }).train();
  const network = caseKey === "lora" ? injectLora({ unet }, { rank: spec.rank, alpha: spec.alpha }) : null;
  const params = network ? network.trainableParameters() : unet.parameters();
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
      const terms = stepLoss(unet, schedule, latents, context, noise, timesteps);
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
    };
    runs.push(r);
    console.error(
      `  Atelier ${caseKey} ${r.warmup ? "warm-up" : "step"} ${(r.ms / 1e3).toFixed(1)} s ` +
        `(cpu ${(r.cpu_ms / 1e3).toFixed(1)}; fwd ${(r.forward_ms / 1e3).toFixed(1)}, bwd ${(r.backward_ms / 1e3).toFixed(1)}, ` +
        `opt ${(r.optimizer_ms / 1e3).toFixed(2)}), load ${load1().toFixed(2)}`,
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
    build_s: buildS,
    rss_model_mb: rssModel,
    rss_sampled_peak_mb: peakSampled, // after forward, backward and the optimizer step
    maxrss_mb: process.resourceUsage().maxRSS / 1024,
    vmhwm_mb: statusMb("VmHWM"),
    threads: getNumThreads(),
  };
  optimizer.dispose();
  network?.remove();
  unet.dispose();
  disposeAll([latents, context, probe]);
  gen.dispose();
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const timedRuns = (runs: unknown) => (runs as StepRun[]).filter((r) => !r.warmup);

// ---- child processes ---------------------------------------------------------------------

/** A line of /proc/meminfo in GiB (Infinity where there is none). */
function meminfoGiB(field: "MemAvailable" | "MemTotal"): number {
  const m =
    existsSync("/proc/meminfo") &&
    new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync("/proc/meminfo", "utf8"));
  return m ? Number(m[1]) / 2 ** 20 : Number.POSITIVE_INFINITY;
}
const memAvailableGiB = () => meminfoGiB("MemAvailable");
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
  const copies = caseKey === "lora" ? 1 : spec.optimizer === "adamw" ? 4 : 2;
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

interface ChildResult {
  json: Json;
  /** The parent's own samples while the child ran: its VmRSS each second, load, free memory. */
  sampled_peak_rss_mb: number;
  load: number[];
  min_mem_available_gib: number;
  wall_s: number;
}

/** Runs a child to completion, passing its stderr through; its last stdout line is JSON. */
function runChild(cmd: string, argv: string[], o: Options, what: string): Promise<ChildResult> {
  const [c, a] = o.cpus === "none" ? [cmd, argv] : ["taskset", ["-c", o.cpus, cmd, ...argv]];
  const t0 = performance.now();
  const child: ChildProcess = spawn(c, a, { env: process.env, stdio: ["ignore", "pipe", "inherit"] });
  let last = "";
  createInterface({ input: child.stdout!, crlfDelay: Infinity }).on("line", (line) => {
    if (line.trim()) last = line;
  });
  let peak = 0;
  const load: number[] = [load1()];
  let minMem = memAvailableGiB();
  const timer = setInterval(() => {
    if (child.pid !== undefined) peak = Math.max(peak, statusMb("VmRSS", child.pid) ?? 0);
    minMem = Math.min(minMem, memAvailableGiB());
  }, 1000);
  const loadTimer = setInterval(() => load.push(load1()), 10_000);
  return new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      clearInterval(timer);
      clearInterval(loadTimer);
      load.push(load1());
      let json: Json | null = null;
      try {
        json = JSON.parse(last) as Json;
      } catch {
        // handled below
      }
      if (code !== 0 || json === null) {
        if (code === 3) fail(`PyTorch reference: ${SETUP_HINT}`, 1);
        if (code === 4) fail("the PyTorch reference has no CUDA; point --python at a CUDA build of PyTorch", 2);
        fail(`${what} exited (${signal ?? code})${signal === "SIGKILL" ? ": out of memory?" : ""}`, 1);
      }
      const wall = (performance.now() - t0) / 1e3;
      resolve({ json, sampled_peak_rss_mb: peak, load, min_mem_available_gib: minMem, wall_s: wall });
    });
  });
}

/** What both children take; the step's settings go to Python as flags, to the worker as --spec JSON. */
function commonArgs(o: Options): string[] {
  return ["--threads", String(o.threads), "--device", o.device, "--warmup", String(o.warmup), "--reps", String(o.reps)];
}

function pythonArgs(spec: StepSpec): string[] {
  return ["--unet", JSON.stringify(pyUnet(spec.unet)), "--latent", String(spec.latent)]
    .concat(["--class-batch", String(spec.classBatch), "--optimizer", spec.optimizer, "--lr", String(spec.lr)])
    .concat(["--rank", String(spec.rank), "--alpha", String(spec.alpha)]);
}

function runPython(caseKey: CaseKey, spec: StepSpec, o: Options): Promise<ChildResult> {
  if (!existsSync(o.python)) fail(`PyTorch reference: ${o.python} not found; ${SETUP_HINT}`, 1);
  const argv = [REF_SCRIPT, "--case", caseKey, ...pythonArgs(spec), ...commonArgs(o)];
  return runChild(o.python, argv, o, "PyTorch reference");
}

function runAtelier(caseKey: CaseKey, spec: StepSpec, o: Options): Promise<ChildResult> {
  const argv = [fileURLToPath(import.meta.url), "--worker", caseKey, "--spec", JSON.stringify(spec)];
  return runChild(process.execPath, [...argv, ...commonArgs(o)], o, "Atelier worker");
}

// ---- the equality check ---------------------------------------------------------------------

const CHECK = { latent: 16, steps: 2, seed: 7, lr: { full: 1e-3, lora: 1e-3 }, rank: 4, alpha: 1 };

interface Diff {
  /** max |a − b| over every element of every tensor compared. */
  maxAbs: number;
  /** The largest max |a − b| / max |b| of one tensor (b: PyTorch's). */
  maxRel: number;
  worst: string;
  tensors: number;
}

function compare(mine: Map<string, Tensor>, theirs: Map<string, Tensor>, prefix: string): Diff {
  const d: Diff = { maxAbs: 0, maxRel: 0, worst: "", tensors: 0 };
  for (const [k, a] of mine) {
    const b = theirs.get(prefix + k);
    if (!b) fail(`check: PyTorch wrote no ${prefix + k}`, 1);
    scope(() => {
      const abs = a.sub(b.to(a.device)).abs().max().item();
      const scale = b.abs().max().item();
      const rel = scale > 0 ? abs / scale : abs;
      d.maxAbs = Math.max(d.maxAbs, abs);
      if (rel >= d.maxRel) [d.maxRel, d.worst] = [rel, k];
      d.tensors++;
    });
  }
  return d;
}

/** Tiny UNet, same weights, LoRA init and draws on both sides: 2 steps of each method compared. */
async function runCheck(o: Options, say: (s: string) => void): Promise<Json> {
  setNumThreads(o.threads);
  const dir = mkdtempSync(join(tmpdir(), "atelier-bench-train-"));
  const input = join(dir, "in.safetensors");
  const output = join(dir, "out.safetensors");
  const config = unetPresets.tiny;
  const spec = { ...CHECK, unet: pyUnet(config), optimizer: "adamw", prior_loss_weight: PRIOR_LOSS_WEIGHT };
  const schedule = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
  try {
    // The inputs: weights, LoRA init, latents, context and every step's draws.
    scope(() => {
      const g = new Generator(3);
      const unet = new UNet2DConditionModel(config, { generator: g });
      const net = injectLora({ unet }, { rank: CHECK.rank, alpha: CHECK.alpha, generator: g });
      // lora_up starts at zero (so lora_down's first gradient is 0); small random values test more
      noGrad(() => {
        for (const [k, t] of net.stateDict())
          if (k.endsWith("lora_up.weight")) t.copy_(randn(t.shape, { generator: g }).mul(0.01));
      });
      const tensors = new Map<string, Tensor>();
      for (const [k, t] of net.stateDict()) if (!k.endsWith(".alpha")) tensors.set(`lora.${k}`, t);
      for (const [k, t] of unet.namedParameters()) tensors.set(`unet.${k}`, t);
      const latents = randn([2, 4, CHECK.latent, CHECK.latent], { generator: g });
      tensors.set("latents", latents);
      tensors.set("context", randn([2, 77, config.crossAttentionDim], { generator: g }));
      const draws = new Generator(CHECK.seed);
      for (const method of ["full", "lora"]) {
        for (let k = 0; k < CHECK.steps; k++) {
          const { noise, timesteps } = drawNoise(latents, schedule.numTrainTimesteps, { generator: draws });
          tensors.set(`${method}.noise${k}`, noise);
          tensors.set(`${method}.timesteps${k}`, timesteps);
        }
      }
      saveSafetensors(input, tensors, { spec: JSON.stringify(spec) });
      net.remove();
      unet.dispose();
      g.dispose();
      draws.dispose();
    });
    say(`check: PyTorch (${o.python}) on ${input}`);
    const argv = [REF_SCRIPT, "--check", input, output, "--threads", String(o.threads), "--device", o.device];
    const ref = (await runChild(o.python, argv, o, "PyTorch reference")).json;
    const { tensors: theirs } = loadSafetensors(output);
    const { tensors: src } = loadSafetensors(input);
    const results: Json = { torch: ref.torch, lora_modules: ref.lora_modules };
    let ok = true;
    try {
      for (const method of ["full", "lora"] as const) {
        scope(() => {
          const unet = new UNet2DConditionModel(config, { mode: "empty", device: o.device }).train();
          // clones: loading keeps the given storage, and the steps change it in place
          const weights = new Map(
            [...src].filter(([k]) => k.startsWith("unet.")).map(([k, t]) => [k.slice(5), t.clone()] as const),
          );
          unet.loadStateDict(weights);
          let named: Map<string, Tensor>;
          let network = null;
          if (method === "lora") {
            network = injectLora({ unet }, { rank: CHECK.rank, alpha: CHECK.alpha });
            named = new Map([...network.stateDict()].filter(([k]) => !k.endsWith(".alpha")));
            noGrad(() => {
              for (const [k, t] of named) t.copy_(src.get(`lora.${k}`)!);
            });
          } else {
            named = unet.namedParameters();
          }
          const optimizer = makeOptimizer("adamw", [...named.values()], CHECK.lr[method]);
          const latents = src.get("latents")!.to(o.device);
          const context = src.get("context")!.to(o.device);
          const steps: Json[] = [];
          for (let k = 0; k < CHECK.steps; k++) {
            scope(() => {
              const noise = src.get(`${method}.noise${k}`)!.to(o.device);
              const timesteps = src.get(`${method}.timesteps${k}`)!.to(o.device);
              const terms = stepLoss(unet, schedule, latents, context, noise, timesteps);
              terms.loss.backward();
              const mine = [terms.loss, terms.instance, terms.prior!].map((t) => t.item());
              const py = theirs.get(`${method}.loss${k}`)!.toArray();
              const lossRel = Math.max(...mine.map((v, i) => Math.abs(v - py[i]) / Math.abs(py[i])));
              const grads = new Map([...named].map(([n, p]) => [n, p.grad!]));
              const g = compare(grads, theirs, `${method}.grad${k}.`);
              const rng = ref[`${method}.rng_match${k}`] === true;
              ok &&= lossRel <= 1e-5 && g.maxRel <= 1e-4 && rng;
              steps.push({ loss: mine[0], pytorch_loss: py[0], loss_rel_diff: lossRel, grads: g, rng_match: rng });
              optimizer.step();
              optimizer.zeroGrad();
            });
          }
          const p = compare(named, theirs, `${method}.param.`);
          // one Adam step moves every weight by about ±lr; equal updates agree far below that
          ok &&= p.maxAbs <= CHECK.lr[method] * 1e-2;
          results[method] = { steps, params_after: p, trainable_tensors: named.size };
          optimizer.dispose();
          network?.remove();
          unet.dispose();
        });
      }
    } finally {
      disposeAll([theirs, src]);
    }
    results.ok = ok;
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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
    `peak RSS (VmHWM): Atelier ${gib(a.vmhwm_mb)}, PyTorch ${gib(p.vmhwm_mb)} ` +
      `(ru_maxrss ${gib(p.maxrss_mb)}); after building the model: ${gib(a.rss_model_mb)} vs ${gib(p.rss_model_mb)}`,
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
    console.log(JSON.stringify(worker(o.worker, spec, o)));
    return;
  }
  try {
    checkDevice(o.device);
  } catch (e) {
    fail(`--device ${o.device}: ${(e as Error).message}. Run it on a machine with an NVIDIA GPU and a CUDA libtorch.`);
  }
  const out = o.json ? console.error : console.log;
  const say = (s: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${s}`);
  const startLive = liveTensors();

  if (o.check) {
    const r = await runCheck(o, say);
    out(`equality check, tiny UNet (libtorch ${torchVersion()} vs PyTorch ${r.torch}): ${r.ok ? "OK" : "FAILED"}`);
    const e = (x: number) => x.toExponential(1);
    for (const m of ["full", "lora"] as const) {
      const x = r[m] as { steps: (Json & { grads: Diff })[]; params_after: Diff };
      out(`${m}:`);
      for (const [k, st] of x.steps.entries()) {
        const g = st.grads;
        out(
          `  step ${k + 1}: loss ${st.loss} vs ${st.pytorch_loss} (rel ${e(st.loss_rel_diff as number)}), ` +
            `${g.tensors} grads max |Δ| ${e(g.maxAbs)}, max rel ${e(g.maxRel)}${g.maxRel > 0 ? ` (${g.worst})` : ""}` +
            `${st.rng_match ? "" : ", RNG DIFFERS"}`,
        );
      }
      const p = x.params_after;
      out(`  weights after ${CHECK.steps} AdamW steps: max |Δ| ${e(p.maxAbs)} (max rel ${e(p.maxRel)})`);
    }
    if (o.json) console.log(JSON.stringify(r));
    if (!r.ok) process.exit(1);
    return;
  }

  const unet = o.quick ? SMALL : unetPresets.sd15;
  const latent = o.latent ?? (o.quick || o.device === "cpu" ? 32 : 64);
  const shell = new UNet2DConditionModel(unet, { mode: "empty" });
  const params = shell.parameterCount();
  shell.dispose();
  const base: StepSpec = { unet, latent, classBatch: 1, optimizer: "adamw", lr: 0, rank: 4, alpha: 1 };
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
        : `full Dreambooth step (${spec.optimizer === "adamw" ? "AdamW" : "SGD"}), all params`;
    rows.push({
      key,
      label: `${label}, ${o.quick ? "small" : "SD1.5"} UNet, [${1 + spec.classBatch},4,${latent},${latent}]`,
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
    `Atelier (libtorch ${torchVersion()}, node ${process.version}) vs PyTorch ${first.torch} (${first.attention} attention) — ` +
      `${o.device}, ${o.threads} thread(s) each, CPUs ${o.cpus}; load average ${loadStart.toFixed(2)} → ${loadEnd.toFixed(2)}`,
  );
  out(
    `${"case".padEnd(76)}${"atelier ms".padStart(12)}${"pytorch ms".padStart(12)}${"ratio".padStart(8)}` +
      `${"cpu ratio".padStart(11)}`,
  );
  for (const r of rows) {
    out(
      `${r.label.padEnd(76)}${r.atelier_ms.toFixed(0).padStart(12)}${r.pytorch_ms.toFixed(0).padStart(12)}` +
        `${r.ratio.toFixed(3).padStart(8)}${r.cpu_ratio.toFixed(3).padStart(11)}`,
    );
    for (const n of describe(r)) out(`    ${n}`);
  }
  for (const line of skipped) out(line);
  const leaked = liveTensors() - startLive;
  if (leaked !== 0) console.error(`bench/train: warning: ${leaked} tensor(s) leaked`);
  if (o.json) {
    console.log(
      JSON.stringify({
        libtorch: torchVersion(),
        torch: first.torch,
        node: process.version,
        device: o.device,
        threads: o.threads,
        load_average: [loadStart, loadEnd],
        rows,
        skipped,
      }),
    );
  }
}

await main();
