// Step time and peak memory of each LyCORIS algorithm (issue 14: "LoHa is
// memory-hungry"): Atelier's adapters (src/adapters/*) against PyTorch doing
// the same math on the same layers (bench/lycoris_ref.py). Four SD1.5-size
// layers — Linear 320→320 (attn to_q), Linear 768→320 (cross-attn to_k),
// Linear 1280→1280 (proj), Conv2d 320→320 3×3 (resnet) — are wrapped with
// one algorithm at rank 8 (conv rank 8), alpha = rank; one step is forward
// of the four, loss Σ mean(y²), backward, AdamW. lora wraps the linears only
// (kohya's LoRA without conv_dim), every other algorithm all four; dora is
// LoCon with weight_decompose. Each algorithm runs in a fresh process per
// side, one thread, so its peak RSS (VmHWM) is its own: "step MB" is VmHWM
// after the steps minus RSS once the layers and inputs exist (VmHWM reset
// there through /proc/self/clear_refs), "peak MB" the whole process's.
// The Atelier child prints the adapter tensors' shapes; the PyTorch child
// builds the same tensors from them.
//
//   nice -n 10 node dist/bench/lycoris.js [--reps N] [--warmup N] [--rounds N] [--python PATH]
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { AdapterMethod, AdapterModule, AdapterTarget } from "../src/adapters/adapter.js";
import { dora } from "../src/adapters/dora.js";
import { full } from "../src/adapters/full.js";
import { ia3 } from "../src/adapters/ia3.js";
import { loha } from "../src/adapters/loha.js";
import { lokr } from "../src/adapters/lokr.js";
import { lora } from "../src/adapters/lora.js";
import { layerKind, weightShape } from "../src/adapters/wrapped-layer.js";
import { AdamW, keep, manualSeed, randn, scope, setNumThreads, type Tensor } from "../src/engine/index.js";
import { Conv2d, type Forward, Linear, type Module } from "../src/nn/index.js";
import { REPO } from "./common.js";

const ALGOS = ["lora", "locon", "loha", "lokr", "dora", "ia3", "full"] as const;
type Algo = (typeof ALGOS)[number];
const RANK = 8;
const CONV_RANK = 8;
/** name, layer, input shape */
const LAYERS: [string, () => Linear | Conv2d, number[]][] = [
  ["linear_320_320", () => new Linear(320, 320, true), [4, 256, 320]],
  ["linear_768_320", () => new Linear(768, 320, false), [4, 77, 768]],
  ["linear_1280_1280", () => new Linear(1280, 1280, true), [4, 256, 1280]],
  ["conv_320_320_3x3", () => new Conv2d(320, 320, 3, { padding: 1, bias: true }), [2, 320, 32, 32]],
];

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1] : dflt;
};
const reps = Number(flag("reps", "5"));
const warmup = Number(flag("warmup", "2"));
const python = flag("python", "/usr/bin/python3");
const rounds = Number(flag("rounds", "2"));

function statusMb(field: string): number {
  const m = readFileSync("/proc/self/status", "utf8").match(new RegExp(`${field}:\\s+(\\d+) kB`));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The method and options of one layer (src/adapters/network-algo.ts plan, alpha = rank). */
function methodFor(algo: Algo, conv: boolean): { method: AdapterMethod<unknown>; options: unknown } | null {
  const rank = conv ? CONV_RANK : RANK;
  const common = { rank, alpha: rank };
  const m = (method: unknown, options: unknown) => ({ method: method as AdapterMethod<unknown>, options });
  switch (algo) {
    case "lora":
      return conv ? null : m(lora, common);
    case "locon":
      return m(lora, common);
    case "loha":
      return m(loha, common);
    case "lokr":
      return m(lokr, common);
    case "dora":
      return m(dora, { inner: "lora", ...common });
    case "ia3":
      return m(ia3, {});
    case "full":
      return m(full, {});
  }
}

interface ChildResult {
  step_ms: number;
  peak_mb: number;
  step_mb: number;
  layers: { name: string; kind: string; weight: number[]; input: number[]; tensors: Record<string, number[]> | null }[];
}

function child(algo: Algo): ChildResult {
  setNumThreads(1);
  manualSeed(0);
  const layers = LAYERS.map(([name, make, input]) => {
    const layer = make();
    layer.requiresGrad_(false);
    return { name, layer, x: keep(randn(input)), input };
  });
  const rssBase = statusMb("VmRSS");
  writeFileSync("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
  const mods: (Module & Forward)[] = [];
  const params: Tensor[] = [];
  const spec: ChildResult["layers"] = [];
  for (const { name, layer, input } of layers) {
    const kind = layerKind(layer);
    const plan = methodFor(algo, kind !== "linear");
    if (!plan) {
      mods.push(layer);
      spec.push({ name, kind, weight: weightShape(layer), input, tensors: null });
      continue;
    }
    const target: AdapterTarget = { name, path: name, component: "unet", kind, weightShape: weightShape(layer) };
    const m: AdapterModule = plan.method.create(target, layer, plan.options);
    mods.push(m);
    params.push(...m.trainableParameters());
    const tensors: Record<string, number[]> = {};
    for (const [k, t] of m.adapterTensors()) if (k !== "alpha" && k !== "on_input") tensors[k] = [...t.shape];
    spec.push({ name, kind, weight: weightShape(layer), input, tensors });
  }
  const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.01 });
  const times: number[] = [];
  for (let i = 0; i < warmup + reps; i++) {
    const t0 = process.hrtime.bigint();
    scope(() => {
      let loss: Tensor | null = null;
      for (let j = 0; j < mods.length; j++) {
        const l = mods[j].forward(layers[j].x).square().mean();
        loss = loss ? loss.add(l) : l;
      }
      loss!.backward();
    });
    opt.step();
    opt.zeroGrad();
    if (i >= warmup) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const peak = statusMb("VmHWM");
  return { step_ms: median(times), peak_mb: peak, step_mb: peak - rssBase, layers: spec };
}

if (args[0] === "--child") {
  console.log(JSON.stringify(child(args[1] as Algo)));
} else {
  const self = fileURLToPath(import.meta.url);
  type Side = { step_ms: number; peak_mb: number; step_mb: number };
  const runs: Record<string, { a: Side; p: Side }[]> = Object.fromEntries(ALGOS.map((a) => [a, []]));
  // Rounds run every algorithm on both sides in turn, so that a change of machine load hits both;
  // each column is the median over the rounds, each ratio the median of the rounds' ratios.
  for (let round = 0; round < rounds; round++)
    for (const algo of ALGOS) {
      const out = execFileSync(
        process.execPath,
        [self, "--child", algo, "--reps", String(reps), "--warmup", String(warmup)],
        { encoding: "utf8", maxBuffer: 1 << 24 },
      );
      const a = JSON.parse(out.trim().split("\n").pop()!) as ChildResult;
      const spec = JSON.stringify({ algo, reps, warmup, layers: a.layers });
      const pout = execFileSync(python, [join(REPO, "bench", "lycoris_ref.py"), spec], {
        encoding: "utf8",
        maxBuffer: 1 << 24,
      });
      const p = JSON.parse(pout.trim().split("\n").pop()!) as Side;
      runs[algo].push({ a, p });
      console.error(
        `round ${round + 1} ${algo}: Atelier ${a.step_ms.toFixed(1)} ms, PyTorch ${p.step_ms.toFixed(1)} ms`,
      );
    }
  console.log(
    `LyCORIS step (forward + backward + AdamW) on Linear 320→320, 768→320, 1280→1280 and Conv2d 320→320 3×3, rank ${RANK}, conv rank ${CONV_RANK}, alpha = rank; 1 thread, median of ${reps} steps after ${warmup}, ${rounds} alternating rounds; one process per algorithm, side and round`,
  );
  console.log(
    "| algo | Atelier ms | PyTorch ms | ratio | Atelier step MB | PyTorch step MB | ratio | Atelier peak MB | PyTorch peak MB | ratio |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const algo of ALGOS) {
    const rs = runs[algo];
    const med = (f: (x: { a: Side; p: Side }) => number) => median(rs.map(f));
    const cells = [
      med((x) => x.a.step_ms).toFixed(1),
      med((x) => x.p.step_ms).toFixed(1),
      med((x) => x.a.step_ms / x.p.step_ms).toFixed(2),
      med((x) => x.a.step_mb).toFixed(1),
      med((x) => x.p.step_mb).toFixed(1),
      med((x) => x.a.step_mb / x.p.step_mb).toFixed(2),
      med((x) => x.a.peak_mb).toFixed(0),
      med((x) => x.p.peak_mb).toFixed(0),
      med((x) => x.a.peak_mb / x.p.peak_mb).toFixed(2),
    ];
    console.log(`| ${algo} | ${cells.join(" | ")} |`);
  }
}
