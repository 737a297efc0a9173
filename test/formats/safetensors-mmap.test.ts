// Tensors read by mapping the file (native/file_tensor.cc): the same bytes as
// the file (and so as the reader before it) for every fixture, by both ways of
// reading; writable and independent copies; freed mappings; and the file
// changing under the reader: truncated, rewritten in place, renamed over.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync, truncateSync, writeSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { liveMappings, liveTensors, ones, scope, type Tensor, tensor } from "../../src/engine/index.js";
import {
  inspectSafetensors,
  loadSafetensors,
  openSafetensors,
  SafetensorsError,
  saveSafetensors,
} from "../../src/formats/safetensors.js";
import { caseFiles, checkLeaks, repoRoot } from "../helpers.js";

checkLeaks();

const tmpFile = caseFiles("atelier-safetensors-mmap-");

const bytesOf = (t: Tensor): Buffer => t.withBytes((b) => Buffer.from(b));
const sumOf = (t: Tensor): number => scope(() => t.to("float64").sum().item());

function disposeAll(m: Map<string, Tensor>): void {
  for (const t of m.values()) t.dispose();
}

/** Saves tensors made for the file, then frees them. */
function save(path: string, tensors: Record<string, Tensor>): void {
  try {
    saveSafetensors(path, tensors);
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
}

/**
 * Live mappings once the event loop has turned: a withBytes() view holds the
 * storage until Node runs its finalizer on the next turn, even when detached.
 */
async function mappingsLeft(): Promise<number> {
  await new Promise((r) => setImmediate(r));
  return liveMappings();
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".safetensors"))
    .map((f) => join(dir, f))
    .sort();
}

/** A file of one float32 tensor `w` = 0, 1, 2, …, n − 1 (large enough to be mapped). */
function bigFile(path: string, n = 100_000): void {
  save(path, { w: tensor(Float32Array.from({ length: n }, (_, i) => i)) });
}

test("every fixture: mapped and read tensors hold the file's bytes; casts agree; nothing stays mapped", async () => {
  const files = [
    ...filesUnder(join(repoRoot, "test", "fixtures")),
    ...filesUnder(join(repoRoot, "..", "shared", "fixtures")),
    ...filesUnder(join(repoRoot, "..", "shared", "realworld")),
  ];
  assert.ok(files.length >= 20, `only ${files.length} fixture files found`);
  let mappedFiles = 0;
  for (const path of files) {
    const file = readFileSync(path);
    const { tensors: infos } = inspectSafetensors(path);
    const mapped = loadSafetensors(path);
    if (liveMappings() > 0) mappedFiles++;
    const read = loadSafetensors(path, { mmap: false });
    try {
      for (const [name, info] of infos) {
        const want = file.subarray(info.offset, info.offset + info.byteLength);
        assert.ok(bytesOf(mapped.tensors.get(name)!).equals(want), `${path}: ${name} (mapped)`);
        assert.ok(bytesOf(read.tensors.get(name)!).equals(want), `${path}: ${name} (read)`);
      }
    } finally {
      disposeAll(mapped.tensors);
      disposeAll(read.tensors);
    }
    assert.equal(await mappingsLeft(), 0, path);
    // fp16/bf16 → fp32, the cast path of loadCheckpoint({ dtype })
    const a = loadSafetensors(path, { dtype: "float32" });
    const b = loadSafetensors(path, { dtype: "float32", mmap: false });
    try {
      for (const [name, t] of a.tensors)
        assert.ok(bytesOf(t).equals(bytesOf(b.tensors.get(name)!)), `${path}: ${name}`);
    } finally {
      disposeAll(a.tensors);
      disposeAll(b.tensors);
    }
  }
  assert.ok(mappedFiles >= 5, `only ${mappedFiles} fixture files had a tensor large enough to map`);
});

test("a mapped tensor is writable, independent of a second read of it, and never changes the file", async () => {
  const path = tmpFile();
  bigFile(path);
  const before = readFileSync(path);
  const f = openSafetensors(path);
  const [a, b] = [f.get("w"), f.get("w")];
  f.close();
  try {
    assert.equal(liveMappings(), 2);
    a.withBytes((bytes) => bytes.fill(0));
    assert.equal(sumOf(a), 0);
    assert.equal(sumOf(b), (99_999 * 100_000) / 2);
    assert.ok(readFileSync(path).equals(before));
    // A view keeps the mapping after the tensor it came from is freed.
    const view = b.reshape(1000, 100);
    b.dispose();
    assert.equal(await mappingsLeft(), 2);
    assert.equal(sumOf(view), (99_999 * 100_000) / 2);
    view.dispose();
    assert.equal(await mappingsLeft(), 1);
  } finally {
    a.dispose();
    if (!b.disposed) b.dispose();
  }
  assert.equal(await mappingsLeft(), 0);
});

test("a tensor not aligned to its element size is read instead of mapped", async () => {
  const path = tmpFile();
  const n = 50_000;
  const header = Buffer.from(
    JSON.stringify({
      a: { dtype: "U8", shape: [1], data_offsets: [0, 1] },
      w: { dtype: "F32", shape: [n], data_offsets: [1, 1 + 4 * n] },
    }).padEnd(200, " "),
  );
  const data = Buffer.alloc(1 + 4 * n);
  for (let i = 0; i < n; i++) data.writeFloatLE(i, 1 + 4 * i);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.length));
  const fd = openSync(path, "w");
  for (const b of [prefix, header, data]) writeSync(fd, b);
  closeSync(fd);
  const { tensors } = loadSafetensors(path);
  try {
    assert.equal(await mappingsLeft(), 0);
    assert.ok(bytesOf(tensors.get("w")!).equals(data.subarray(1)));
  } finally {
    disposeAll(tensors);
  }
});

test("a file truncated or rewritten in place while it is read fails with a clear error, and frees what it read", () => {
  for (const mmap of [true, false]) {
    const path = tmpFile();
    save(path, { a: ones([40_000]), b: ones([40_000]), c: ones([40_000]) });
    const live = [liveTensors(), liveMappings()];
    // The filter runs before each tensor is read: cut the file after the first.
    let seen = 0;
    const cut = () => {
      if (seen++ === 1) truncateSync(path, 200_000);
      return true;
    };
    assert.throws(
      () => loadSafetensors(path, { filter: cut, mmap }),
      (e: Error) =>
        e instanceof SafetensorsError &&
        /tensor "[bc]": (unexpected end of file|the file changed on disk since it was opened)/.test(e.message),
    );
    assert.deepEqual([liveTensors(), liveMappings()], live);
    // The same size, other bytes (a writer that truncates, then writes): the stamp check.
    save(path, { a: ones([40_000]), b: ones([40_000]) });
    const f = openSafetensors(path);
    const fd = openSync(path, "r+");
    writeSync(fd, Buffer.alloc(16), 0, 16, 300_000);
    closeSync(fd);
    assert.throws(() => f.get("b", { mmap }), /tensor "b": the file changed on disk since it was opened/);
    f.close();
  }
});

test("a file renamed over during a load: the load reads the old file to the end", () => {
  const path = tmpFile();
  bigFile(path);
  const want = readFileSync(path);
  const f = openSafetensors(path);
  save(path, { w: ones([100_000]) }); // the atomic save renames a new file over it
  const w = f.get("w");
  f.close();
  try {
    assert.ok(bytesOf(w).equals(want.subarray(want.length - 400_000)));
  } finally {
    w.dispose();
  }
});

test("cut short while its tensors are mapped: the process dies of SIGBUS, saying why", () => {
  // Not guardable: the next touch of a lost page raises SIGBUS, in whatever op touches it.
  const path = tmpFile();
  bigFile(path, 1_000_000);
  const engine = fileURLToPath(new URL("../../src/engine/index.js", import.meta.url));
  const formats = fileURLToPath(new URL("../../src/formats/safetensors.js", import.meta.url));
  const script = `
    const { loadSafetensors } = await import(${JSON.stringify(formats)});
    await import(${JSON.stringify(engine)});
    const { truncateSync } = await import("node:fs");
    const { tensors } = loadSafetensors(${JSON.stringify(path)});
    truncateSync(${JSON.stringify(path)}, 0);
    console.log(tensors.get("w").sum().item());`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.signal, "SIGBUS", `exit ${r.status}, stderr: ${r.stderr}`);
  assert.match(r.stderr, /atelier: SIGBUS reading a memory-mapped file.*truncated or rewritten in place/);
});
