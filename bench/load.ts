// Load benchmark (issue 17): loading an SD1.5-size single-file .safetensors
// (1130 tensors; 4.27 GB in fp32, 2.13 GB in fp16, written once with small
// random weights by bench/models_load.ts makeCheckpoint) against a raw read
// of the same file: 64 MiB fs.readSync chunks into one reused Buffer, so the
// raw read touches no fresh memory. Prints load ÷ raw per way of loading:
//   map     loadSafetensors: tensors ≥ 64 KiB map the file (native/file_tensor.cc)
//   read    loadSafetensors(…, { mmap: false }): pread into owned tensors
//   before  the loader before mapping: empty() + readSync into withBytes()
//   copy    memcpy from a mapping into owned tensors (MADV_SEQUENTIAL)
//   ckpt    loadCheckpoint (the LDM → diffusers key mapping, mapped)
//   cast    loadSafetensors(fp16 file, { dtype: "float32" })
// "pass" is a sum() over every loaded tensor right after: cost a loader left
// for later (page faults) shows there. bench/load_ref.py gives PyTorch's figures
// for the reference reader's way (a lazy private mapping, views per tensor);
// torch.load reads pickles, another format, and is not comparable.
//
//   node dist/bench/load.js [--sizes f32,f16] [--only map,read,…] [--reps N] [--warmup N]
//     [--cold] [--no-pass] [--dir DIR] [--python PATH | --no-ref] [--cleanup] [--json]
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readSync, rmSync, statSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import { disposeAll, empty, liveMappings, liveTensors, readFileTensor, type Tensor } from "../src/engine/index.js";
import { loadCheckpoint } from "../src/formats/checkpoint.js";
import { inspectSafetensors, loadSafetensors } from "../src/formats/safetensors.js";
import { failer, median, REPO } from "./common.js";
import { type Measured, meter } from "./models_common.js";
import { dropCaches, makeCheckpoint, rawRead } from "./models_load.js";

const fail = failer("bench/load");
const say = (s: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${s}`);

const o = {
  sizes: ["f32", "f16"] as ("f32" | "f16")[],
  only: null as string[] | null,
  reps: 3,
  warmup: 1,
  cold: false,
  pass: true,
  dir: join(process.env.TMPDIR ?? tmpdir(), "atelier-bench"),
  python: "/usr/bin/python3" as string | null,
  cleanup: false,
  json: false,
  one: null as [string, string] | null,
};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => process.argv[++i] ?? fail(`${a} needs a value`);
  if (a === "--sizes") o.sizes = next().split(",") as ("f32" | "f16")[];
  else if (a === "--only") o.only = next().split(",");
  else if (a === "--reps") o.reps = Number(next());
  else if (a === "--warmup") o.warmup = Number(next());
  else if (a === "--cold") o.cold = true;
  else if (a === "--no-pass") o.pass = false;
  else if (a === "--dir") o.dir = next();
  else if (a === "--python") o.python = next();
  else if (a === "--no-ref") o.python = null;
  else if (a === "--cleanup") o.cleanup = true;
  else if (a === "--json") o.json = true;
  else if (a === "--one") o.one = [next(), next()];
  else fail(`unknown flag ${a}`);
}
if (o.sizes.some((s) => s !== "f32" && s !== "f16")) fail("--sizes takes f32 and/or f16");
if (!(o.reps >= 1 && o.warmup >= 0)) fail("--reps must be ≥ 1 and --warmup ≥ 0");

// Freed tensor memory must really go before the next load (bench/RESULTS.md, bench/models finding 1).
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

/** The loader before file mapping (src/formats/safetensors.ts at 99fcd92): readSync into an empty tensor. */
function loadBefore(path: string): Map<string, Tensor> {
  const { tensors } = inspectSafetensors(path);
  const fd = openSync(path, "r");
  const out = new Map<string, Tensor>();
  try {
    for (const [name, info] of tensors) {
      const t = empty(info.shape, { dtype: info.dtype });
      out.set(name, t);
      if (info.byteLength === 0) continue;
      t.withBytes((bytes) => {
        for (let done = 0; done < bytes.byteLength; ) {
          const n = readSync(fd, bytes, done, Math.min(1 << 30, bytes.byteLength - done), info.offset + done);
          if (n === 0) throw new Error(`${path}: short read`);
          done += n;
        }
      });
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function loadCopied(path: string): Map<string, Tensor> {
  const { tensors } = inspectSafetensors(path);
  const fd = openSync(path, "r");
  const out = new Map<string, Tensor>();
  try {
    for (const [name, i] of tensors)
      out.set(name, readFileTensor(fd, i.offset, i.byteLength, i.shape, i.dtype, "copy"));
  } finally {
    closeSync(fd);
  }
  return out;
}

type Loader = (path: string) => unknown;
const LOADERS: Record<string, Loader> = {
  map: (p) => loadSafetensors(p).tensors,
  read: (p) => loadSafetensors(p, { mmap: false }).tensors,
  before: loadBefore,
  copy: loadCopied,
  ckpt: (p) => loadCheckpoint(p).components,
  cast: (p) => loadSafetensors(p, { dtype: "float32" }).tensors,
};

function everyTensor(v: unknown, out: Tensor[] = []): Tensor[] {
  if (v instanceof Map) for (const x of v.values()) everyTensor(x, out);
  else if (v && typeof v === "object" && "sum" in v) out.push(v as Tensor);
  else if (v && typeof v === "object") for (const x of Object.values(v)) everyTensor(x, out);
  return out;
}

interface Result {
  file: string;
  bytes: number;
  method: string;
  load: Measured[];
  pass: Measured[];
}

/** One load (and pass) in this process, which the parent started for it alone. */
async function one(method: string, path: string): Promise<void> {
  const bytes = statSync(path).size;
  const live = [liveTensors(), liveMappings()];
  const start = meter();
  let value: unknown;
  if (method === "raw") {
    if (rawRead(path, Buffer.allocUnsafe(64 << 20)) !== bytes) fail(`${path}: short raw read`);
  } else value = LOADERS[method](path);
  const load = start();
  const summed = meter();
  if (o.pass) for (const t of everyTensor(value)) t.sum().dispose();
  const pass = summed();
  disposeAll(value);
  gc();
  await new Promise((r) => setImmediate(r));
  if (liveTensors() !== live[0] || liveMappings() !== live[1])
    fail(`${method}: ${liveTensors() - live[0]} tensors, ${liveMappings() - live[1]} mappings left after dispose`, 1);
  console.log(JSON.stringify({ load, pass }));
}

// Each load runs in a fresh process, as a model loads at start-up: after a
// first load, glibc's heap holds the freed pages and the next load into owned
// memory takes none of the first-touch faults (bench/RESULTS.md, bench/models).
function inChild(method: string, path: string): { load: Measured; pass: Measured } {
  const argv = [process.argv[1], "--one", method, path, ...(o.pass ? [] : ["--no-pass"])];
  const r = spawnSync(process.execPath, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (r.status !== 0) fail(`${method} on ${path}: exit ${r.status ?? r.signal}`, 1);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

function bench(path: string, size: "f32" | "f16"): Result[] {
  const bytes = statSync(path).size;
  const names = Object.keys(LOADERS).filter(
    (k) => (o.only === null || o.only.includes(k)) && (k !== "cast" || size === "f16"),
  );
  const methods = ["raw", ...names];
  const load = new Map<string, Measured[]>(methods.map((m) => [m, []]));
  const pass = new Map<string, Measured[]>(methods.map((m) => [m, []]));
  const buf = Buffer.allocUnsafe(64 << 20);
  for (let round = -o.warmup; round < o.reps; round++) {
    for (let j = 0; j < methods.length; j++) {
      const m = methods[(j + Math.max(round, 0)) % methods.length]; // rotate the order each round
      // Warm: the whole file in the page cache again (a load into owned memory may have pushed some out).
      if (o.cold && !dropCaches()) fail("--cold needs root (echo 3 > /proc/sys/vm/drop_caches)");
      if (!o.cold) rawRead(path, buf);
      const r = inChild(m, path);
      if (round < 0) continue;
      load.get(m)?.push(r.load);
      pass.get(m)?.push(r.pass);
      say(`${size} ${m}: ${(r.load.ms / 1e3).toFixed(3)} s (+${(r.pass.ms / 1e3).toFixed(3)} s pass)`);
    }
  }
  return methods.map((m) => ({ file: size, bytes, method: m, load: load.get(m)!, pass: pass.get(m)! }));
}

function reference(path: string): Record<string, number[] | string> | null {
  if (o.python === null) return null;
  if (!existsSync(o.python)) {
    say(`no ${o.python}: no PyTorch figures`);
    return null;
  }
  const argv = [join(REPO, "bench", "load_ref.py"), path, "--reps", String(o.reps), "--warmup", String(o.warmup)];
  const r = spawnSync(o.python, o.cold ? [...argv, "--drop"] : argv, { encoding: "utf8" });
  if (r.status !== 0) {
    say(`PyTorch reference failed (exit ${r.status}): ${r.stderr.trim().split("\n").pop()}`);
    return null;
  }
  return JSON.parse(r.stdout);
}

if (o.one) {
  await one(...o.one);
  process.exit(0);
}
const ms = (rs: Measured[], k: keyof Measured = "ms") => median(rs.map((r) => r[k]));
const results: { file: string; results: Result[]; ref: Record<string, number[] | string> | null }[] = [];
say(`load average ${loadavg()[0].toFixed(2)}, ${o.cold ? "cold" : "warm"} page cache, ${o.reps} reps`);
for (const size of o.sizes) {
  const path = join(o.dir, `load-sd15-${size}.safetensors`);
  if (!existsSync(path)) makeCheckpoint(path, size, say);
  const rs = bench(path, size);
  const ref = reference(path);
  results.push({ file: path, results: rs, ref });
  if (o.cleanup) rmSync(path, { force: true });
}
say(`load average ${loadavg()[0].toFixed(2)} at the end`);

if (o.json) {
  console.log(JSON.stringify({ node: process.version, cold: o.cold, results }, null, 1));
} else {
  console.log(
    `${"file / method".padEnd(22)}${"load s".padStart(9)}${"÷ raw".padStart(8)}${"cpu s".padStart(8)}` +
      `${"faults".padStart(10)}${"pass s".padStart(9)}${"faults".padStart(10)}`,
  );
  for (const { results: rs, ref } of results) {
    const raw = ms(rs[0].load);
    for (const r of rs) {
      const label = `${r.file} ${(r.bytes / 1e9).toFixed(2)} GB ${r.method}`;
      const p = r.method === "raw" ? "" : (ms(r.pass) / 1e3).toFixed(3);
      const pf = r.method === "raw" ? "" : ms(r.pass, "faults").toFixed(0);
      console.log(
        `${label.padEnd(22)}${(ms(r.load) / 1e3).toFixed(3).padStart(9)}${(ms(r.load) / raw).toFixed(3).padStart(8)}` +
          `${(ms(r.load, "cpu_ms") / 1e3).toFixed(3).padStart(8)}${ms(r.load, "faults").toFixed(0).padStart(10)}${p.padStart(9)}${pf.padStart(10)}`,
      );
    }
    if (ref) {
      const m = (k: string) => median(ref[k] as number[]);
      const pyRaw = m("raw");
      for (const k of ["raw", "ref_lazy", "ref_touched"]) {
        console.log(
          `${`  PyTorch ${k}`.padEnd(22)}${(m(k) / 1e3).toFixed(3).padStart(9)}${(m(k) / pyRaw).toFixed(3).padStart(8)}`,
        );
      }
    }
  }
}
