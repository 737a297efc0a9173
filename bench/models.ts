// Model benchmark: whole-model work in Atelier against PyTorch doing the same
// in the same run (docs/design.md §4); prints Atelier ÷ PyTorch per case (lower is
// better). The PyTorch twin is bench/models_ref.py: a plain-torch SD1.x UNet,
// VAE decoder, CLIP text model and Euler loop with diffusers/transformers key
// names (diffusers is not installed); its --check proves the UNet equal to the
// diffusers fixture, and runs first.
//   unet     SD1.5-size UNet forward + backward (random weights, 64×64 latent)
//   txt2img  tiny UNet/VAE/CLIP txt2img, 20 Euler steps, CFG 7, same weights both sides
//   load     a ≥2 GB SD1.5 single-file .safetensors: loaders against a raw read
//            (bench/models_load.ts; shared pieces in bench/models_common.ts, and
//            with bench/engine.ts and bench/train.ts in bench/common.ts)
//
//   node dist/bench/models.js [--threads N] [--device cpu|cuda] [--quick] [--only a,b]
//     [--reps N] [--warmup N] [--t2i-reps N] [--load-reps N] [--ckpt PATH] [--ckpt-dtype f32|f16]
//     [--cleanup] [--cpus auto|none|LIST] [--python PATH] [--json]
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import {
  disposeAll,
  Generator,
  getNumThreads,
  keep,
  manualSeed,
  ones,
  randn,
  scope,
  setNumThreads,
  type Tensor,
} from "../src/engine/index.js";
import { saveSafetensors } from "../src/formats/safetensors.js";
import { tokenizePrompt } from "../src/infer/prompt-encoding.js";
import { latentScale, type StableDiffusion, txt2img } from "../src/infer/txt2img.js";
import { ClipTextModel, ClipTokenizer } from "../src/models/clip/index.js";
import { UNet2DConditionModel } from "../src/models/unet/index.js";
import { AutoencoderKL } from "../src/models/vae/index.js";
import type { InitOptions } from "../src/nn/index.js";
import { SD15_SCHEDULER_CONFIG } from "../src/schedulers/index.js";
import {
  type BaseOptions,
  type ChildExit,
  type Json,
  jsonHead,
  LineChild,
  leakCheck,
  maxRssMb,
  median,
  meminfoGiB,
  parseFlags,
  pinned,
  pinSelf,
  REPO,
  refExitHint,
  requireDevice,
  requirePython,
  say,
  tableHeader,
  tableRow,
  versus,
} from "./common.js";
import { FIXTURES, fail, faultsNote, load1, type Measured, meter, type Row, row } from "./models_common.js";
import { caseLoad } from "./models_load.js";

const CASES = ["unet", "txt2img", "load"] as const;
type CaseKey = (typeof CASES)[number];

interface Options extends BaseOptions {
  t2iReps: number;
  loadReps: number;
  only: CaseKey[];
  ckpt: string;
  ckptDtype: "f32" | "f16";
  cleanup: boolean;
}

const USAGE = `usage: node dist/bench/models.js [options]
  --threads N      intra-op threads on both sides (default 1)
  --device D       cpu (default) or cuda
  --quick          skip the SD1.5-size UNet case (minutes on 2 CPU cores)
  --only a,b       run only these cases (${CASES.join(", ")})
  --reps N         timed runs of the SD1.5 UNet case per side (default 3)
  --warmup N       untimed runs first, every case (default 1)
  --t2i-reps N     timed txt2img runs, taken in turns with PyTorch (default 5)
  --load-reps N    timed rounds of the checkpoint-load case (default 3)
  --ckpt PATH      the generated checkpoint (default $TMPDIR/atelier-bench/sd15_ldm_<dtype>.safetensors)
  --ckpt-dtype T   f32 (default, 4.3 GB) or f16 (2.1 GB)
  --cleanup        delete the generated checkpoint and exit
  --cpus C         pin both processes to the same CPUs: auto (default: the last
                   N CPUs for --threads N), none, or a taskset list such as 0
  --python PATH    the PyTorch interpreter (default /usr/bin/python3)
  --json           print one JSON object on stdout (the table goes to stderr)`;

function parseArgs(argv: string[]): Options {
  const defaults: Options = {
    threads: 1,
    device: "cpu",
    reps: 3,
    warmup: 1,
    t2iReps: 5,
    loadReps: 3,
    only: [...CASES],
    ckpt: "",
    ckptDtype: "f32",
    cleanup: false,
    python: "/usr/bin/python3",
    cpus: "auto",
    json: false,
  };
  let quick = false;
  const o = parseFlags(argv, defaults, {
    usage: USAGE,
    fail,
    cpus: "auto, none or a CPU list",
    own(o, a, v) {
      if (a === "--quick") quick = true;
      else if (a === "--only") {
        const list = (v.next() ?? "").split(",").filter(Boolean);
        for (const c of list) if (!(CASES as readonly string[]).includes(c)) fail(`--only: unknown case '${c}'`);
        o.only = list as CaseKey[];
      } else if (a === "--t2i-reps") o.t2iReps = v.int(1);
      else if (a === "--load-reps") o.loadReps = v.int(1);
      else if (a === "--ckpt") o.ckpt = v.next() ?? fail("--ckpt expects a path");
      else if (a === "--ckpt-dtype") {
        const d = v.next();
        if (d !== "f32" && d !== "f16") fail(`--ckpt-dtype expects f32 or f16, got ${d}`);
        o.ckptDtype = d;
      } else if (a === "--cleanup") o.cleanup = true;
      else return false;
      return true;
    },
  });
  if (quick) o.only = o.only.filter((c) => c !== "unet");
  o.ckpt ||= join(tmpdir(), "atelier-bench", `sd15_ldm_${o.ckptDtype}.safetensors`);
  return o;
}

// ---- helpers --------------------------------------------------------------------------

const REF_SCRIPT = join(REPO, "bench", "models_ref.py");

/**
 * Pins this process (all its threads) to the CPUs the reference gets too, as
 * bench/engine.ts does; "auto" takes the LAST N CPUs (engine.ts the first), so
 * the two benchmarks run at the same time do not share a CPU.
 */
function pinCpus(o: Options): string | null {
  if (o.cpus === "none") return null;
  const n = availableParallelism();
  if (o.cpus === "auto" && o.threads > n) return null;
  const list = o.cpus === "auto" ? (o.threads === 1 ? `${n - 1}` : `${n - o.threads}-${n - 1}`) : o.cpus;
  return pinSelf(list, "bench/models");
}

function refCommand(o: Options, cpus: string | null, args: string[]): [string, string[]] {
  requirePython(o.python, fail);
  return pinned(cpus, o.python, [REF_SCRIPT, "--threads", String(o.threads), "--device", o.device, ...args]);
}

function refFailure(code: number | null, stderr: string): never {
  refExitHint(code, fail);
  return fail(`PyTorch reference exited (${code})\n${stderr}`, 1);
}

/** Runs models_ref.py to completion; its stdout is one JSON object. */
function runRef(o: Options, cpus: string | null, args: string[]): Json {
  const [cmd, argv] = refCommand(o, cpus, args);
  const r = spawnSync(cmd, argv, { env: process.env, encoding: "utf8", maxBuffer: 1 << 26 });
  const line = r.stdout?.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as Json;
  } catch {
    return refFailure(r.status, `${r.stderr}${r.stdout}`);
  }
}

/** models_ref.py --serve: one command line in, one JSON line out; its death ends this process too. */
class RefServer {
  readonly #child: LineChild;

  constructor(o: Options, cpus: string | null, args: string[]) {
    this.#child = new LineChild(...refCommand(o, cpus, args));
  }

  async #reply(line: Promise<string>): Promise<Json> {
    let text: string;
    try {
      text = await line;
    } catch (e) {
      return refFailure((e as ChildExit).code, (e as ChildExit).stderr);
    }
    try {
      return JSON.parse(text) as Json;
    } catch {
      return { error: `unexpected output: ${text}` };
    }
  }

  /** The first line (ready). */
  hello(): Promise<Json> {
    return this.#reply(this.#child.next());
  }

  async request(cmd: string): Promise<Json> {
    const r = await this.#reply(this.#child.send(cmd));
    if (r.error) fail(`PyTorch reference: ${r.error}`, 1);
    return r;
  }

  /** Ends the child and waits until it has exited (and freed its memory). */
  close(): Promise<void> {
    return this.#child.close();
  }
}

// ---- case 1: SD1.5 UNet forward + backward -------------------------------------------------

const availableGiB = () => meminfoGiB("MemAvailable");

// One side peaks at ~10.3 GiB (weights, grads, activations) and keeps ~5.8 GiB between runs
// (weights + allocator caches): taking turns needs both at once.
const UNET_TURNS_GIB = 17.5;

interface RunMs extends Measured {
  forward_ms: number;
  backward_ms: number;
  forward_cpu_ms: number;
  backward_cpu_ms: number;
}

async function caseUnet(o: Options, cpus: string | null, say: (s: string) => void): Promise<Row> {
  const device = o.device;
  const turns = device !== "cpu" || availableGiB() >= UNET_TURNS_GIB;
  say(`unet: ${turns ? "taking turns" : `one side after the other (${availableGiB().toFixed(1)} GiB available)`}`);
  const rssBefore = maxRssMb();
  manualSeed(0);
  const unet = new UNet2DConditionModel("sd15", { device });
  const params = unet.parameters();
  const x = keep(scope(() => randn([1, 4, 64, 64], { device })));
  const ctx = keep(scope(() => randn([1, 77, 768], { device })));
  const probe = device === "cpu" ? null : keep(ones([1], { device }));
  const sync = () => void probe?.item();
  const atelier = async (): Promise<RunMs> => {
    const read = meter();
    let fwd: Measured | null = null;
    scope(() => {
      const loss = unet.forward(x, 500, ctx).mean();
      sync();
      fwd = read();
      loss.backward();
      sync();
    });
    const r = read();
    const f = fwd as unknown as Measured;
    for (const p of params) p.grad = null;
    return {
      ...r,
      forward_ms: f.ms,
      backward_ms: r.ms - f.ms,
      forward_cpu_ms: f.cpu_ms,
      backward_cpu_ms: r.cpu_ms - f.cpu_ms,
    };
  };
  // Started at once when taking turns, else after Atelier's model is freed.
  const ref: { server: RefServer | null } = { server: null };
  const startRef = async () => {
    ref.server = new RefServer(o, cpus, ["--case", "unet-train", "--serve"]);
    await ref.server.hello();
  };
  const pytorch = async (): Promise<RunMs> => (await ref.server!.request("run")) as unknown as RunMs;
  const a: RunMs[] = [];
  const p: RunMs[] = [];
  const show = (side: string, r: RunMs) =>
    say(`  ${side} ${(r.ms / 1e3).toFixed(1)} s (cpu ${(r.cpu_ms / 1e3).toFixed(1)} s), load ${load1()}`);
  let atelierRss = 0;
  let stats: Json = {};
  try {
    if (turns) {
      await startRef();
      for (let i = 0; i < o.warmup; i++) {
        show("Atelier warm-up", await atelier());
        show("PyTorch warm-up", await pytorch());
      }
      // Turns, swapping who goes first each round, so both see the same load.
      for (let i = 0; i < o.reps; i++) {
        const first = i % 2 === 0 ? atelier : pytorch;
        const second = i % 2 === 0 ? pytorch : atelier;
        const r1 = await first();
        const r2 = await second();
        const [ra, rp] = i % 2 === 0 ? [r1, r2] : [r2, r1];
        a.push(ra);
        p.push(rp);
        show("Atelier", ra);
        show("PyTorch", rp);
      }
    } else {
      for (let i = 0; i < o.warmup; i++) show("Atelier warm-up", await atelier());
      for (let i = 0; i < o.reps; i++) {
        a.push(await atelier());
        show("Atelier", a[a.length - 1]);
      }
    }
    atelierRss = maxRssMb();
  } finally {
    disposeAll([x, ctx, probe]);
    unet.dispose();
  }
  try {
    if (!turns) {
      await startRef();
      for (let i = 0; i < o.warmup; i++) show("PyTorch warm-up", await pytorch());
      for (let i = 0; i < o.reps; i++) {
        p.push(await pytorch());
        show("PyTorch", p[p.length - 1]);
      }
    }
    stats = await ref.server!.request("result");
  } finally {
    await ref.server?.close();
  }
  const r = row("unet", "SD1.5 UNet fwd+bwd, 64² latent, batch 1", a, p);
  const part = (k: keyof RunMs) => {
    const [ma, mp] = [median(a.map((t) => t[k])), median(p.map((t) => t[k]))];
    return `${(ma / 1e3).toFixed(1)} s vs ${(mp / 1e3).toFixed(1)} s (${(ma / mp).toFixed(3)})`;
  };
  const paired = median(a.map((t, i) => t.ms / p[i].ms));
  r.notes.push(
    `wall: forward ${part("forward_ms")}, backward ${part("backward_ms")}; paired ratios' median ${paired.toFixed(3)}`,
  );
  r.notes.push(`cpu: forward ${part("forward_cpu_ms")}, backward ${part("backward_cpu_ms")}`);
  r.notes.push(faultsNote(a, p));
  r.notes.push(
    `peak RSS: Atelier ${(atelierRss / 1024).toFixed(2)} GiB (${(rssBefore / 1024).toFixed(2)} before the model), ` +
      `PyTorch ${((stats.maxrss_mb as number) / 1024).toFixed(2)} GiB; ${params.length} tensors, ` +
      `${((stats.params as number) / 1e6).toFixed(1)}M params; ${turns ? "runs taken in turns" : "one side after the other"}`,
  );
  Object.assign(r, {
    atelier_maxrss_mb: atelierRss,
    pytorch_maxrss_mb: stats.maxrss_mb,
    turns,
  });
  return r;
}

// ---- case 2: tiny txt2img -------------------------------------------------------------------

const T2I = { prompt: "a photograph of an astronaut riding a horse", steps: 20, cfg: 7, seed: 42, size: 64 };

const TINY_TEXT = {
  vocabSize: 49408,
  hiddenSize: 32,
  intermediateSize: 37,
  numLayers: 2,
  numHeads: 4,
  maxPositions: 77,
  hiddenAct: "quick_gelu",
  layerNormEps: 1e-5,
} as const;

/** The tiny random model of test/infer/txt2img.test.ts, drawn on the CPU, then moved to `device`. */
function tinyModel(device: string): StableDiffusion {
  const generator = new Generator(3);
  const make = (init: InitOptions) => ({
    unet: new UNet2DConditionModel("tiny", init).eval(),
    vae: new AutoencoderKL("tiny", init).eval(),
    textEncoder: new ClipTextModel(TINY_TEXT, init).eval(),
  });
  let parts = make({ generator });
  generator.dispose();
  if (device !== "cpu") {
    const moved = make({ mode: "empty", device });
    moved.unet.loadStateDict(parts.unet.stateDict());
    moved.vae.loadStateDict(parts.vae.stateDict());
    moved.textEncoder.loadStateDict(parts.textEncoder.stateDict());
    for (const m of Object.values(parts)) m.dispose();
    parts = moved;
  }
  return {
    ...parts,
    tokenizer: ClipTokenizer.fromDir(join(FIXTURES, "tokenizer")),
    scheduler: SD15_SCHEDULER_CONFIG,
    kind: "sd1",
    device,
    name: "tiny",
  };
}

async function caseTxt2img(o: Options, cpus: string | null, say: (s: string) => void): Promise<Row> {
  say(`txt2img: load ${load1()}`);
  const model = tinyModel(o.device);
  const dir = mkdtempSync(join(tmpdir(), "atelier-bench-t2i-"));
  const te = model.textEncoder.config;
  try {
    // The same weights for PyTorch, and the token ids Atelier makes (PyTorch has no tokenizer).
    const weights = new Map<string, Tensor>();
    const parts: [string, Map<string, Tensor>][] = [
      ["unet.", model.unet.stateDict()],
      ["vae.", model.vae.stateDict()],
      ["te.", model.textEncoder.stateDict()],
    ];
    for (const [prefix, sd] of parts) {
      for (const [k, t] of sd) {
        if (prefix !== "vae." || k.startsWith("decoder.") || k.startsWith("post_quant_conv."))
          weights.set(prefix + k, t);
      }
    }
    saveSafetensors(join(dir, "weights.safetensors"), weights);
    const ids = ["", T2I.prompt].map((p) => {
      const { chunks } = tokenizePrompt(model.tokenizer, p);
      if (chunks.length !== 1 || chunks[0].multipliers.some((m) => m !== 1))
        fail("txt2img: the prompt must be one plain chunk");
      return chunks[0].tokens;
    });
    // What Atelier's timed runs spend tokenizing, which PyTorch's do not.
    const tTok = performance.now();
    for (let i = 0; i < 100; i++) for (const p of ["", T2I.prompt]) tokenizePrompt(model.tokenizer, p);
    const tokenizeMs = (performance.now() - tTok) / 100;
    const spec = {
      weights: join(dir, "weights.safetensors"),
      ids,
      steps: T2I.steps,
      cfg: T2I.cfg,
      seed: T2I.seed,
      width: T2I.size,
      height: T2I.size,
      scale: latentScale(model.vae),
      scaling_factor: model.vae.scalingFactor,
      text_encoder: {
        vocab: te.vocabSize,
        hidden: te.hiddenSize,
        inner: te.intermediateSize,
        layers: te.numLayers,
        heads: te.numHeads,
      },
      vae: { block_out: model.vae.config.blockOutChannels, layers: model.vae.config.layersPerBlock },
    };
    writeFileSync(join(dir, "spec.json"), JSON.stringify(spec));

    const opts = {
      prompt: T2I.prompt,
      negative: "",
      sampler: "euler",
      steps: T2I.steps,
      cfg: T2I.cfg,
      seed: T2I.seed,
      width: T2I.size,
      height: T2I.size,
    };
    let last: { latents: number[]; images: number[] } = { latents: [], images: [] };
    const one = (): Measured => {
      const read = meter();
      const r = txt2img(model, opts);
      const m = read(); // images come back on the CPU: the work is done
      last = { latents: r.latents.toArray(), images: r.images.toArray() };
      disposeAll([r.latents, r.images]);
      return m;
    };
    const ref = new RefServer(o, cpus, ["--case", "txt2img", "--spec", join(dir, "spec.json"), "--serve"]);
    const a: Measured[] = [];
    const p: Measured[] = [];
    try {
      await ref.hello();
      for (let i = 0; i < o.warmup; i++) {
        one();
        await ref.request("run");
      }
      // Turns, swapping who goes first each round, so both see the same load.
      for (let i = 0; i < o.t2iReps; i++) {
        if (i % 2 === 0) a.push(one());
        p.push((await ref.request("run")) as unknown as Measured);
        if (i % 2 === 1) a.push(one());
      }
      const res = await ref.request("result");
      const diff = (x: number[], y: number[]) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
      const r = row("txt2img", `tiny txt2img ${T2I.size}² image, ${T2I.steps} Euler steps, CFG ${T2I.cfg}`, a, p);
      const dl = diff(last.latents, res.latents as number[]);
      const di = diff(last.images, res.images as number[]);
      r.notes.push(`same weights, ids and seed: max |Δ| latents ${dl.toExponential(2)}, images ${di.toExponential(2)}`);
      r.notes.push(`Atelier's runs include tokenizing both prompts: ${tokenizeMs.toFixed(3)} ms`);
      r.notes.push(faultsNote(a, p));
      Object.assign(r, { max_abs_diff_latents: dl, max_abs_diff_images: di });
      return r;
    } finally {
      await ref.close();
    }
  } finally {
    model.unet.dispose();
    model.vae.dispose();
    model.textEncoder.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- main ------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.cleanup) {
    for (const p of [o.ckpt, `${o.ckpt}.tmp-${process.pid}`]) rmSync(p, { force: true });
    console.log(`bench/models: removed ${o.ckpt}`);
    return;
  }
  requireDevice(o.device, fail);
  const out = o.json ? console.error : console.log;
  const leaks = leakCheck("bench/models");
  const cpus = pinCpus(o);
  setNumThreads(o.threads);

  // The twin's UNet must be diffusers' (the fixture) before any timing means anything.
  const check = runRef(o, cpus, ["--check"]);
  const checkLine =
    `PyTorch twin check (tiny UNet fixture → out.sample): max |Δ| ${(check.max_abs_diff as number).toExponential(2)}, ` +
    `t=500 ${(check.max_abs_diff_t500 as number).toExponential(2)} (tolerance 1e-5): ${check.ok ? "OK" : "FAILED"}`;
  if (!check.ok) fail(checkLine, 1);

  const loadStart = load1();
  const rows: Row[] = [];
  // txt2img first: after the UNet case this process's allocator keeps gigabytes of
  // touched memory, which spares Atelier the page faults a fresh PyTorch pays.
  if (o.only.includes("txt2img")) rows.push(await caseTxt2img(o, cpus, say));
  if (o.only.includes("unet")) rows.push(await caseUnet(o, cpus, say));
  if (o.only.includes("load")) rows.push(...(await caseLoad(o, say)));
  const loadEnd = load1();

  out(
    `${versus(check.torch)} — ${o.device}, ` +
      `${getNumThreads()}/${check.threads} thread(s) on CPUs ${cpus ?? "any"}; load average ${loadStart} → ${loadEnd}`,
  );
  out(checkLine);
  const layout = { width: 58, digits: 1, cpu: true };
  out(tableHeader(layout));
  for (const r of rows) {
    out(tableRow(r, layout));
    for (const n of r.notes) out(`    ${n}`);
  }
  if (rows.some((r) => r.key.startsWith("load-")))
    out("(load rows: the PyTorch column is Node's raw sequential read of the same file)");
  leaks();
  if (o.json) {
    console.log(
      JSON.stringify({
        ...jsonHead(check.torch, o),
        cpus,
        load_average: [loadStart, loadEnd],
        check,
        rows,
      }),
    );
  }
}

await main();
