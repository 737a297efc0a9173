// Pieces of bench/train.ts that its equality check (bench/train_check.ts) uses
// too: the exit, the step both run (loss, optimizer), the UNet config in
// train_ref.py's terms, and the runner of the child processes (each side of
// each case, and the check's PyTorch side, runs in one).
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { AdamW, AdamW8bit, autocast, type Optimizer, SGD, type Tensor } from "../src/engine/index.js";
import type { UNet2DConditionModel, UNetConfig } from "../src/models/unet/index.js";
import type { NoiseSchedule } from "../src/schedulers/index.js";
import { diffusionLoss, type LossTerms } from "../src/train/losses.js";
import { storeWeights } from "../src/train/weight-precision.js";
import { type Fail, failer, type Json, meminfoGiB, pinned, REPO, refExitHint } from "./common.js";

export const fail: Fail = failer("bench/train");

export const REF_SCRIPT = join(REPO, "bench", "train_ref.py");

export type OptimizerKind = "adamw" | "adamw8bit" | "sgd";

/**
 * The memory savers both sides apply (bench/train.ts flags; train_ref.py does the same):
 * the forward and loss under bf16 autocast (mixed_precision = "bf16"), the frozen weights
 * stored in bf16 (weight_dtype = "bf16": the UNet under LoRA; a full step has none frozen),
 * gradient checkpointing of each resnet and transformer. 8-bit AdamW is an OptimizerKind.
 */
export interface Savers {
  mixedPrecision: "no" | "bf16";
  weightDtype: "float32" | "bf16";
  checkpointing: boolean;
}

/** weight_dtype as the trainer applies it (src/train/weight-precision.ts): frozen parameters cast. */
export function storeFrozen(s: Savers, unet: UNet2DConditionModel): number {
  if (s.weightDtype === "float32") return 0;
  const c = { weight_dtype: s.weightDtype, mixed_precision: s.mixedPrecision, full_fp16: false, full_bf16: false };
  return storeWeights(c, [unet]).frozen;
}

/** `fn` under the autocast of mixed_precision, as src/train/loop.ts runs a micro-batch. */
export function underAutocast<T>(s: Savers, device: string, fn: () => T): T {
  if (s.mixedPrecision === "no") return fn();
  return autocast(device === "cpu" ? "cpu" : "cuda", "bfloat16", fn);
}

/** The savers' flags for train_ref.py. */
export function saverArgs(s: Savers): string[] {
  return ["--mixed-precision", s.mixedPrecision, "--weight-dtype", s.weightDtype].concat(
    s.checkpointing ? ["--checkpointing"] : [],
  );
}

export const PRIOR_LOSS_WEIGHT = 1;

/** The UNet config in train_ref.py's terms; refuses what its plain-torch UNet does not build. */
export function pyUnet(c: UNetConfig): Record<string, unknown> {
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
export function stepLoss(
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

export function makeOptimizer(kind: OptimizerKind, params: Tensor[], lr: number): Optimizer<{ lr: number }> {
  // diffusers' AdamW settings: betas (0.9, 0.999), weight decay 1e-2, eps 1e-8
  if (kind === "adamw") return new AdamW(params, { lr, betas: [0.9, 0.999], weightDecay: 1e-2, eps: 1e-8 });
  // bitsandbytes' AdamW8bit with the same settings (block-wise states, min_8bit_size 4096)
  if (kind === "adamw8bit") return new AdamW8bit(params, { lr, betas: [0.9, 0.999], weightDecay: 1e-2, eps: 1e-8 });
  return new SGD(params, { lr }); // no momentum: no optimizer state
}

/** A line of /proc/self/status in MiB (VmRSS, VmHWM), or null. */
export function statusMb(field: string, pid: number | "self" = "self"): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Where a process's resident memory lies (MiB), from /proc/PID/smaps: the brk heap, anonymous
 * mappings (large malloc blocks, thread arenas, libtorch's big buffers), file-backed ones
 * (libraries, mapped weights), the rest ([stack], vdso); and the largest anonymous mappings.
 */
export function smapsSummary(pid: number | "self" = "self"): Json {
  const out = { heap_mb: 0, anon_mb: 0, file_mb: 0, other_mb: 0, anon_top_mb: [] as number[], anon_count: 0 };
  let kind: "heap_mb" | "anon_mb" | "file_mb" | "other_mb" = "other_mb";
  const anon: number[] = [];
  try {
    for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
      const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
      if (head) {
        const name = head[1];
        kind = name === "[heap]" ? "heap_mb" : name === "" ? "anon_mb" : name.startsWith("/") ? "file_mb" : "other_mb";
        continue;
      }
      const rss = /^Rss:\s+(\d+) kB/.exec(line);
      if (!rss) continue;
      const mb = Number(rss[1]) / 1024;
      out[kind] += mb;
      if (kind === "anon_mb") anon.push(mb);
    }
  } catch {
    return out;
  }
  out.anon_count = anon.length;
  out.anon_top_mb = anon
    .sort((x, y) => y - x)
    .slice(0, 8)
    .map((x) => Math.round(x));
  return out;
}

/** Resets this process's VmHWM to its RSS now (Linux: "5" to /proc/self/clear_refs); false where refused. */
export function resetPeak(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

export const load1 = () => loadavg()[0]; // a number here (bench/models_common.ts: its 2-decimal text)
export const memAvailableGiB = () => meminfoGiB("MemAvailable");

// ---- child processes ---------------------------------------------------------------------

export interface ChildResult {
  json: Json;
  /** The parent's own samples while the child ran: its VmRSS each second, load, free memory. */
  sampled_peak_rss_mb: number;
  load: number[];
  min_mem_available_gib: number;
  wall_s: number;
}

/** Runs a child to completion, passing its stderr through; its last stdout line is JSON. */
export function runChild(cmd: string, argv: string[], o: { cpus: string }, what: string): Promise<ChildResult> {
  const [c, a] = pinned(o.cpus === "none" ? null : o.cpus, cmd, argv);
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
        refExitHint(code, fail);
        fail(`${what} exited (${signal ?? code})${signal === "SIGKILL" ? ": out of memory?" : ""}`, 1);
      }
      const wall = (performance.now() - t0) / 1e3;
      resolve({ json, sampled_peak_rss_mb: peak, load, min_mem_available_gib: minMem, wall_s: wall });
    });
  });
}
