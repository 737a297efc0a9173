// bench/models.ts case "load": an SD1.5-shaped single-file LDM .safetensors
// (written once, 4.27 GB in fp32), read by Atelier's loaders against a raw
// sequential read of the same file, with a cold and then a warm page cache.
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { dirname, join } from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import { disposeAll } from "../src/engine/index.js";
import { loadCheckpoint } from "../src/formats/checkpoint.js";
import { loadSafetensors } from "../src/formats/safetensors.js";
import { median } from "./common.js";
import { FIXTURES, fail, faultsNote, load1, type Measured, meter, type Row, row } from "./models_common.js";

const READ_CHUNK = 64 << 20;

interface KeyInfo {
  shape: number[];
  dtype: string;
}

/** Writes an SD1.5-shaped LDM single-file .safetensors with small random weights (tmp + rename). */
export function makeCheckpoint(path: string, dtype: "f32" | "f16", say: (s: string) => void): void {
  const spec = JSON.parse(readFileSync(join(FIXTURES, "models", "sd15_ldm_keys.json"), "utf8")) as {
    keys: Record<string, KeyInfo>;
  };
  const size = dtype === "f32" ? 4 : 2;
  let offset = 0;
  const entries: string[] = [];
  for (const [k, info] of Object.entries(spec.keys)) {
    const bytes = info.shape.reduce((a, b) => a * b, 1) * size;
    const v = { dtype: dtype === "f32" ? "F32" : "F16", shape: info.shape, data_offsets: [offset, offset + bytes] };
    entries.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    offset += bytes;
  }
  const text = Buffer.from(`{${entries.join(",")}}`);
  const header = Buffer.alloc(text.length + ((8 - (text.length % 8)) % 8), 0x20);
  text.copy(header);
  const total = 8 + header.length + offset;
  mkdirSync(dirname(path), { recursive: true });
  const free = statfsSync(dirname(path));
  if (free.bavail * free.bsize < total + (1 << 30)) {
    fail(`${dirname(path)} has ${(free.bavail * free.bsize) / 1e9} GB free; the checkpoint needs ${total / 1e9} GB`);
  }
  say(`load: writing ${path} (${(total / 1e9).toFixed(2)} GB, ${Object.keys(spec.keys).length} tensors)`);
  // One 64 MiB block of small random values (|w| < 0.01), written over and over.
  const block = Buffer.alloc(READ_CHUNK);
  if (dtype === "f32") {
    const f = new Float32Array(block.buffer, block.byteOffset, READ_CHUNK / 4);
    for (let i = 0; i < f.length; i++) f[i] = (Math.random() - 0.5) * 0.02;
  } else {
    // float16 bit patterns: random sign and mantissa, exponents 2^-14..2^-8
    const h = new Uint16Array(block.buffer, block.byteOffset, READ_CHUNK / 2);
    for (let i = 0; i < h.length; i++)
      h[i] =
        ((Math.random() < 0.5 ? 1 : 0) << 15) |
        ((1 + Math.floor(Math.random() * 7)) << 10) |
        Math.floor(Math.random() * 1024);
  }
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w");
  try {
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(header.length));
    writeSync(fd, prefix);
    writeSync(fd, header);
    for (let left = offset; left > 0; ) {
      const n = Math.min(left, READ_CHUNK);
      let done = 0;
      while (done < n) done += writeSync(fd, block, done, n - done);
      left -= n;
    }
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
}

/** Empties the page cache (root only); false where the sandbox does not allow it. */
export function dropCaches(): boolean {
  try {
    spawnSync("sync");
    writeFileSync("/proc/sys/vm/drop_caches", "3");
    return true;
  } catch {
    return false;
  }
}

export function rawRead(path: string, buf: Buffer): number {
  const fd = openSync(path, "r");
  let total = 0;
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, total);
      if (n === 0) break;
      total += n;
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

// dataView() ArrayBuffers hold the tensor memory after dispose() until V8 collects them, and V8
// does not see that memory: without a GC each 4 GB load stays resident (the reader reads
// through them). So after every load: dispose, gc(), one event-loop turn.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

async function release(value: unknown): Promise<void> {
  disposeAll(value);
  gc();
  await new Promise((r) => setImmediate(r));
}

/** What the load case takes from the command line. */
export interface LoadOptions {
  ckpt: string;
  ckptDtype: "f32" | "f16";
  warmup: number;
  loadReps: number;
}

export async function caseLoad(o: LoadOptions, say: (s: string) => void): Promise<Row[]> {
  if (!existsSync(o.ckpt)) makeCheckpoint(o.ckpt, o.ckptDtype, say);
  const bytes = statSync(o.ckpt).size;
  const canDrop = dropCaches();
  say(`load: ${o.ckpt}, ${(bytes / 1e9).toFixed(2)} GB, load ${load1()}`);
  if (!canDrop) say("load: cannot drop the page cache here; warm-cache numbers only");
  const buf = Buffer.allocUnsafe(READ_CHUNK);
  const methods: [string, () => Promise<Measured>][] = [
    [
      "raw",
      async () => {
        const read = meter();
        if (rawRead(o.ckpt, buf) !== bytes) fail("raw read: short read");
        return read();
      },
    ],
    [
      "loadSafetensors",
      async () => {
        const read = meter();
        const { tensors } = loadSafetensors(o.ckpt);
        const m = read();
        counts.set("loadSafetensors", tensors.size);
        await release(tensors);
        return m;
      },
    ],
    [
      "loadCheckpoint",
      async () => {
        const read = meter();
        const { components } = loadCheckpoint(o.ckpt);
        const m = read();
        counts.set(
          "loadCheckpoint",
          Object.values(components).reduce((s, m) => s + (m?.size ?? 0), 0),
        );
        await release(components);
        return m;
      },
    ],
  ];
  const counts = new Map<string, number>();
  const rows: Row[] = [];
  for (const cold of canDrop ? [true, false] : [false]) {
    const times = new Map<string, Measured[]>(methods.map(([k]) => [k, []]));
    if (!cold) rawRead(o.ckpt, buf); // into the page cache
    for (let round = -o.warmup; round < o.loadReps; round++) {
      // Rotate the order each round.
      for (let j = 0; j < methods.length; j++) {
        const [name, fn] = methods[(j + Math.max(round, 0)) % methods.length];
        if (cold) dropCaches();
        const m = await fn(); // the loaders' times leave out the release
        if (round >= 0) times.get(name)?.push(m);
      }
    }
    const raw = times.get("raw")!;
    const gbps = (rs: Measured[]) => `${(bytes / 1e9 / (median(rs.map((r) => r.ms)) / 1e3)).toFixed(2)} GB/s`;
    const state = cold ? "cold" : "warm";
    for (const name of ["loadSafetensors", "loadCheckpoint"]) {
      const a = times.get(name)!;
      const r = row(
        `load-${name}-${state}`,
        `${name} ${(bytes / 1e9).toFixed(2)} GB vs raw read, ${state} cache`,
        a,
        raw,
      );
      r.notes.push(
        `${counts.get(name)} tensors at ${gbps(a)}; raw fs.readSync 64 MiB chunks ${gbps(raw)}; ` +
          faultsNote(a, raw).replace("PyTorch", "raw read"),
      );
      rows.push(r);
    }
  }
  return rows;
}
