// .ckpt/.pt files that claim more memory than they hold: a zip bomb, a
// storage declaring a terabyte, a tensor whose zero strides would expand a
// few bytes into gigabytes, overlapping zip entries. Each is refused quickly,
// before anything of that size is allocated, with a message naming the entry
// or tensor. Legit expansions and DEFLATE entries still load.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { test } from "node:test";
import { deflateRawSync } from "node:zlib";
import { disposeAll } from "../../src/engine/index.js";
import { CkptError, loadCkpt, openCkpt } from "../../src/formats/ckpt.js";
import { inflatedBudget, MAX_DEFLATE_RATIO, MIN_INFLATED_BUDGET, ZipFile } from "../../src/formats/zip.js";
import { caseFiles, checkLeaks } from "../helpers.js";
import { bytesOf, stateDictPickle, type TensorSpec, torchZip, writeZip } from "./torch-builder.js";

checkLeaks();

const tmpFile = caseFiles("atelier-ckpt-limits-");

function write(data: Uint8Array): string {
  const p = tmpFile("x.ckpt");
  writeFileSync(p, data);
  return p;
}

/** Refused with a CkptError naming the file and matching `pattern`, in well under a second. */
function refused(fn: () => unknown, path: string, pattern: RegExp): void {
  const start = Date.now();
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof CkptError, `${e.name}: ${e.message}`);
    assert.ok(e.message.includes(path), `the message names the file: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
  assert.ok(Date.now() - start < 1000, `took ${Date.now() - start} ms`);
}

const spec = (o: Partial<TensorSpec>): TensorSpec => ({
  name: "w",
  key: "0",
  storage: "FloatStorage",
  numel: 4,
  offset: 0,
  shape: [4],
  stride: [1],
  ...o,
});

const four = bytesOf(new Float32Array([1, 2, 3, 4]));

test("a zip bomb: a few bytes declared to inflate to 2.5 GB is refused before allocating", () => {
  const numel = 625_000_000; // 2.5 GB of float32
  const pkl = stateDictPickle([spec({ numel, shape: [numel] })]);
  const zeros = new Uint8Array(64 * 1024);
  const path = write(
    writeZip([
      { name: "archive/data.pkl", data: pkl },
      { name: "archive/data/0", data: zeros, deflate: true, declaredSize: numel * 4 },
    ]),
  );
  refused(
    () => openCkpt(path),
    path,
    /entry archive\/data\/0 declares 2500000000 bytes inflated from \d+: more than DEFLATE can produce \(at most 1032:1/,
  );
});

test("a storage declaring a terabyte is refused, never reaching the allocator", () => {
  const numel = 250_000_000_000; // 1 TB of float32
  const pkl = stateDictPickle([spec({ numel, shape: [numel] })]);
  // The zip's directory claims the terabyte (ZIP64).
  const bomb = write(
    writeZip([
      { name: "archive/data.pkl", data: pkl },
      { name: "archive/data/0", data: new Uint8Array(4096), deflate: true, declaredSize: numel * 4 },
    ]),
  );
  refused(() => openCkpt(bomb), bomb, /entry archive\/data\/0 declares 1000000000000 bytes inflated/);
  // Only the pickle claims it: the entry holds 16 bytes.
  const liar = write(torchZip(pkl, new Map([["0", four]])));
  refused(
    () => loadCkpt(liar),
    liar,
    /storage 0 is declared as 250000000000 float32 elements \(1000000000000 bytes\), but its entry archive\/data\/0 holds 16 bytes/,
  );
});

test("zero strides expanding one stored element to 3.6 GB are refused by tensor name", () => {
  const pkl = stateDictPickle([spec({ name: "big", numel: 1, shape: [30000, 30000], stride: [0, 0] })]);
  const path = write(torchZip(pkl, new Map([["0", bytesOf(new Float32Array([7]))]])));
  refused(
    () => loadCkpt(path),
    path,
    /tensor "big" \[30000,30000\] \(strides \[0,0\], offset 0\) repeats the 1 elements of storage 0 into 900000000: its copy would take 3600000000 bytes, more than the file's \d+ bytes/,
  );
  // info() still answers without reading.
  const f = openCkpt(path);
  try {
    assert.deepEqual(f.info("big").shape, [30000, 30000]);
  } finally {
    f.close();
  }
});

test("small expansions load, and all of them together may not exceed the file", () => {
  const pkl = stateDictPickle([
    spec({ name: "e1", numel: 2, shape: [3, 2], stride: [0, 1] }),
    spec({ name: "e2", numel: 2, shape: [3, 2], stride: [0, 1] }),
  ]);
  const path = write(torchZip(pkl, new Map([["0", bytesOf(new Float32Array([1, 2]))]])));
  const { tensors } = loadCkpt(path);
  try {
    assert.deepEqual(tensors.get("e1")!.toArray(), [1, 2, 1, 2, 1, 2]);
    assert.deepEqual(tensors.get("e2")!.toArray(), [1, 2, 1, 2, 1, 2]);
  } finally {
    disposeAll(tensors);
  }
  // Each expansion is small, but 200 of them take more than the file.
  const many = Array.from({ length: 200 }, (_, i) =>
    spec({ name: `e${i}`, numel: 2, shape: [100, 2], stride: [0, 1] }),
  );
  const big = write(torchZip(stateDictPickle(many), new Map([["0", bytesOf(new Float32Array([1, 2]))]])));
  refused(() => loadCkpt(big), big, /tensor "e\d+" .* repeats .*\(after \d+ bytes of other expanded tensors\)/);
});

test("a view past its storage, or a huge offset or stride, is refused before reading", () => {
  const storages = new Map([["0", four]]);
  const cases: [Partial<TensorSpec>, RegExp][] = [
    [{ offset: 2 ** 40 }, /needs 1099511627780 elements of storage 0, which holds 4/],
    [{ shape: [2, 2], stride: [2 ** 50, 1] }, /needs 1125899906842626 elements/],
    [{ shape: [5] }, /needs 5 elements of storage 0, which holds 4/],
  ];
  for (const [o, re] of cases) {
    const path = write(torchZip(stateDictPickle([spec(o)]), storages));
    refused(() => loadCkpt(path), path, re);
  }
});

test("entries that overlap in the file (one body counted twice) are refused at open", () => {
  const pkl = stateDictPickle([spec({})]);
  const path = write(
    writeZip([
      { name: "archive/data.pkl", data: pkl },
      { name: "archive/data/0", data: four },
      { name: "archive/data/1", data: four, declaredOffset: 0 },
    ]),
  );
  refused(() => openCkpt(path), path, /entries archive\/data.pkl and archive\/data\/1 overlap in the file/);
});

test("a DEFLATE stream longer than its entry declares stops at the declared size", () => {
  const data = new Uint8Array(100_000).fill(1);
  const zip = writeZip([{ name: "x", data, deflate: true, declaredSize: 50_000 }]);
  const path = write(zip);
  const z = ZipFile.open(path);
  try {
    assert.throws(() => z.read(z.get("x")!), /entry x: inflates to more than the 50000 bytes the directory declares/);
  } finally {
    z.close();
  }
  // The bound itself: real DEFLATE stays under it.
  const zeros = Buffer.alloc(10_000_000);
  assert.ok(zeros.length <= deflateRawSync(zeros, { level: 9 }).length * MAX_DEFLATE_RATIO);
});

test("entries within DEFLATE's 1032:1 bound that would inflate a small file past its budget are refused", () => {
  // A legal stream can reach 1032:1 (a few MB of zeros, say), so the bound
  // alone lets a 400 KB file ask for 400 MB. The archive-wide budget (64× the
  // file, at least 256 MiB) stops it at the directory, before inflating.
  const numel = 100_000_000; // 400 MB of float32
  const pkl = stateDictPickle([spec({ numel, shape: [numel] })]);
  const noise = randomBytes(400_000); // incompressible
  const path = write(
    writeZip([
      { name: "archive/data.pkl", data: pkl },
      { name: "archive/data/0", data: noise, deflate: true, declaredSize: numel * 4 },
    ]),
  );
  refused(
    () => openCkpt(path),
    path,
    /inflate to more than 268435456 bytes \(entry archive\/data\/0 .*likely zip bomb/,
  );
  assert.equal(inflatedBudget(10 * 2 ** 30), 640 * 2 ** 30, "large files get 64× their size");
  assert.equal(inflatedBudget(1000), MIN_INFLATED_BUDGET);
});
