// safetensors reading and writing: round trips of every dtype, the shared
// fixtures and real-world files, and atomic replacement. Malformed files:
// safetensors-malformed.test.ts.
import assert from "node:assert/strict";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { BYTES, cudaAvailable, ones, scope, type Tensor, tensor, zeros } from "../../src/engine/index.js";
import { writeAll, writeFileAtomic, writeTextAtomic } from "../../src/formats/atomic-write.js";
import {
  inspectSafetensors,
  loadSafetensors,
  openSafetensors,
  SafetensorsError,
  saveSafetensors,
} from "../../src/formats/safetensors.js";
import { assertClose, caseFiles, checkLeaks, repoRoot, sharedFixture } from "../helpers.js";

checkLeaks();

const tmpFile = caseFiles("atelier-safetensors-");

const rawBytes = (t: Tensor): Buffer => {
  const a = t.toTypedArray();
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
};

function disposeMap(m: Map<string, Tensor> | Record<string, Tensor>): void {
  for (const t of m instanceof Map ? m.values() : Object.values(m)) t.dispose();
}

/** One tensor of every supported dtype, with edge values, odd sizes to stress alignment. */
function everyDtype(): Record<string, Tensor> {
  const f32 = new Float32Array([1.5, -0, Number.POSITIVE_INFINITY, Number.NaN, 3.4e38, 1e-45, -7.25]);
  return {
    f32: tensor(f32),
    f64: tensor(new Float64Array([Math.PI, -0, 1e308, 5e-324, Number.NaN]), { shape: [5, 1] }),
    f16: tensor(new Float32Array([1, 0.1, 65504, -2, 6e-8]), { dtype: "float16" }),
    bf16: tensor(new Float32Array([1, 0.1, 3e38, -2, 1e-30, 7]), { dtype: "bfloat16", shape: [2, 3] }),
    i64: tensor(new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, 999n])),
    i32: tensor(new Int32Array([-(2 ** 31), 2 ** 31 - 1, 0])),
    i16: tensor(new Int16Array([-32768, 32767, 5])),
    i8: tensor(new Int8Array([-128, 127, 0, 1, 2])),
    u8: tensor(new Uint8Array([0, 255, 7])),
    bool: tensor(new Uint8Array([0, 1, 1, 0, 1]), { dtype: "bool" }),
  };
}

test("every dtype round-trips bit-exactly, each tensor aligned to its element size", () => {
  const path = tmpFile();
  const src = everyDtype();
  try {
    saveSafetensors(path, src);
    const { tensors, metadata } = loadSafetensors(path);
    try {
      assert.deepEqual(metadata, {});
      assert.deepEqual([...tensors.keys()].sort(), Object.keys(src).sort());
      for (const [name, t] of Object.entries(src)) {
        const back = tensors.get(name)!;
        assert.equal(back.dtype, t.dtype, name);
        assert.deepEqual(back.shape, t.shape, name);
        assert.ok(rawBytes(back).equals(rawBytes(t)), `${name}: bytes differ`);
      }
    } finally {
      disposeMap(tensors);
    }
    const info = inspectSafetensors(path).tensors;
    const headerEnd = 8 + readFileSync(path).readUInt32LE(0);
    for (const [name, i] of info) assert.equal((i.offset - headerEnd) % BYTES[i.dtype], 0, `${name} misaligned`);
  } finally {
    disposeMap(src);
  }
});

test("the header: compact JSON, __metadata__ first, dtype then byte order of names, padded with spaces to 8", () => {
  const path = tmpFile();
  const src = {
    b: zeros([3], { dtype: "float16" }),
    "10": zeros([1]),
    "9": zeros([1]),
    a: zeros([1], { dtype: "int64" }),
  };
  try {
    saveSafetensors(path, src, { z: "1", a: "2" });
  } finally {
    disposeMap(src);
  }
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = bytes.subarray(8, 8 + n).toString("utf8");
  assert.match(
    text,
    /^\{"__metadata__":\{"a":"2","z":"1"\},"a":\{"dtype":"I64","shape":\[1\],"data_offsets":\[0,8\]\},/,
  );
  assert.deepEqual(
    [...text.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]),
    ["a", "10", "9", "b"],
  );
  assert.match(text, /\} *$/);
  assert.equal(bytes.length, 8 + n + 8 + 4 + 4 + 6);
});

test("0-d scalars and empty tensors round-trip", () => {
  const path = tmpFile();
  const src = {
    scalar: tensor(new Float32Array([42.5]), { shape: [] }),
    scalarI64: tensor(new BigInt64Array([-3n]), { shape: [] }),
    empty: zeros([0]),
    empty3: zeros([2, 0, 3], { dtype: "float16" }),
    emptyBool: zeros([0, 4], { dtype: "bool" }),
  };
  try {
    saveSafetensors(path, src);
    const f = openSafetensors(path);
    try {
      assert.deepEqual([f.info("scalar").shape, f.info("scalar").byteLength], [[], 4]);
      for (const [name, t] of Object.entries(src)) {
        const back = f.get(name);
        assert.deepEqual(back.shape, t.shape, name);
        assert.equal(back.dtype, t.dtype, name);
        assert.ok(rawBytes(back).equals(rawBytes(t)), name);
        back.dispose();
      }
      assert.equal(f.info("empty3").byteLength, 0);
    } finally {
      f.close();
    }
  } finally {
    disposeMap(src);
  }
});

test("metadata round-trips (unicode, empty values); a file without it reads as {}", () => {
  const path = tmpFile();
  const meta = { format: "pt", ss_network_dim: "4", note: 'caf\u00e9 \u{1f600} "quoted"\n', empty: "" };
  const t = ones([2]);
  try {
    saveSafetensors(path, new Map([["w", t]]), meta);
    assert.deepEqual(inspectSafetensors(path).metadata, meta);
    saveSafetensors(path, { w: t });
    assert.deepEqual(inspectSafetensors(path).metadata, {});
    assert.doesNotMatch(readFileSync(path).toString("latin1"), /__metadata__/);
  } finally {
    t.dispose();
  }
});

test("non-contiguous inputs (transposed, expanded, strided slices) are written in row-major order", () => {
  const path = tmpFile();
  const base = tensor(
    Float32Array.from({ length: 12 }, (_, i) => i),
    { shape: [3, 4] },
  );
  const row = tensor(new Float32Array([1, 2]));
  const src = { t: base.transpose(0, 1), e: row.expand(3, 2), s: base.slice(1, 0, null, 2) };
  try {
    saveSafetensors(path, src);
    const { tensors } = loadSafetensors(path);
    try {
      for (const [name, t] of Object.entries(src)) {
        assert.deepEqual(tensors.get(name)!.shape, t.shape, name);
        assert.deepEqual(tensors.get(name)!.toArray(), t.toArray(), name);
      }
      assert.deepEqual(tensors.get("t")!.toArray(), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
    } finally {
      disposeMap(tensors);
    }
  } finally {
    disposeMap(src);
    base.dispose();
    row.dispose();
  }
});

test("unet_tiny.safetensors: 208 F32 tensors, 792,964 parameters", () => {
  const f = openSafetensors(sharedFixture("models/unet_tiny.safetensors"));
  try {
    const keys = f.keys();
    assert.equal(keys.length, 208);
    assert.equal(f.size, 208);
    let params = 0;
    for (const k of keys) {
      const i = f.info(k);
      assert.equal(i.dtype, "float32", k);
      params += i.shape.reduce((a, b) => a * b, 1);
    }
    assert.equal(params, 792_964);
    assert.deepEqual(f.info("conv_in.weight").shape, [32, 4, 3, 3]);
    assert.equal(f.metadata.format, "pt");
    const w = f.get("conv_in.weight");
    assert.deepEqual(w.shape, [32, 4, 3, 3]);
    assert.ok(w.toArray().some((v) => v !== 0));
    w.dispose();
  } finally {
    f.close();
  }
});

test("unet_tiny_f16 loaded as float32 matches unet_tiny within f16 rounding", () => {
  const f32 = loadSafetensors(sharedFixture("models/unet_tiny.safetensors"));
  const f16 = loadSafetensors(sharedFixture("models/unet_tiny_f16.safetensors"), { dtype: "float32" });
  try {
    assert.equal(f16.tensors.size, 208);
    assert.deepEqual(
      inspectSafetensors(sharedFixture("models/unet_tiny_f16.safetensors")).tensors.get("conv_in.bias")?.dtype,
      "float16",
    );
    for (const [name, ref] of f32.tensors) {
      const got = f16.tensors.get(name)!;
      assert.equal(got.dtype, "float32", name);
      assertClose(got, ref, { rtol: 1e-3, atol: 1e-7, what: name });
    }
  } finally {
    disposeMap(f32.tensors);
    disposeMap(f16.tensors);
  }
});

test("unet_tiny_io.safetensors: I64 and F64 tensors keep their dtype under a float load dtype", () => {
  const path = sharedFixture("models/unet_tiny_io.safetensors");
  const f = openSafetensors(path);
  try {
    const ts = f.get("in.timestep");
    assert.equal(ts.dtype, "int64");
    assert.deepEqual(ts.shape, [2]);
    assert.deepEqual(ts.toArray(), [999, 10]);
    ts.dispose();
    assert.equal(f.info("out.sample_f64").dtype, "float64");
    assert.equal(f.info("loss").dtype, "float64");
  } finally {
    f.close();
  }
  const { tensors } = loadSafetensors(path, { dtype: "float16", filter: (k) => k.startsWith("in.") || k === "loss" });
  try {
    assert.deepEqual([...tensors.keys()].sort(), [
      "in.R",
      "in.encoder_hidden_states",
      "in.sample",
      "in.timestep",
      "loss",
    ]);
    assert.equal(tensors.get("in.timestep")!.dtype, "int64");
    assert.equal(tensors.get("in.sample")!.dtype, "float16");
    assert.equal(tensors.get("loss")!.dtype, "float16");
  } finally {
    disposeMap(tensors);
  }
});

test("re-saving a reference-written single-dtype file gives the same data bytes and the same header", () => {
  const src = sharedFixture("models/unet_tiny_f16.safetensors");
  const path = tmpFile();
  const { tensors, metadata } = loadSafetensors(src);
  try {
    saveSafetensors(path, tensors, metadata);
  } finally {
    disposeMap(tensors);
  }
  const split = (b: Buffer) => {
    const n = Number(b.readBigUInt64LE(0));
    return { header: JSON.parse(b.subarray(8, 8 + n).toString()), data: b.subarray(8 + n) };
  };
  const a = split(readFileSync(src));
  const b = split(readFileSync(path));
  assert.deepEqual(b.header, a.header);
  assert.ok(b.data.equals(a.data), "data sections differ");
});

test("get(): dtype and device conversion, keys(), has(), unknown names, closed files", () => {
  const f = openSafetensors(sharedFixture("models/unet_tiny_io.safetensors"));
  try {
    assert.ok(f.keys().includes("in.timestep"));
    assert.ok(f.has("loss") && !f.has("nope"));
    const ref = f.get("in.sample");
    const f64 = f.get("in.sample", { dtype: "float64", device: "cpu" });
    assert.equal(f64.dtype, "float64");
    assert.equal(f64.device, "cpu");
    assertClose(f64, ref, { atol: 0, rtol: 0 });
    const tsf = f.get("in.timestep", { dtype: "float32" });
    assert.deepEqual([tsf.dtype, tsf.toArray()], ["float32", [999, 10]]);
    if (cudaAvailable()) {
      const g = f.get("in.sample", { device: "cuda", dtype: "float16" });
      assert.match(g.device, /^cuda/);
      assert.equal(g.dtype, "float16");
      scope(() => assertClose(g.cpu().float(), ref, { rtol: 1e-3, atol: 1e-6 }));
      g.dispose();
    }
    for (const t of [ref, f64, tsf]) t.dispose();
    assert.throws(() => f.get("in.sample", { device: "tpu" }), /unknown device 'tpu'/);
    assert.throws(
      () => f.get("nope"),
      (e: Error) => {
        assert.ok(e instanceof SafetensorsError);
        assert.match(e.message, /unet_tiny_io\.safetensors: no tensor named "nope" \(the file holds 22: "grad\./);
        return true;
      },
    );
    assert.throws(() => f.info("nope"), /no tensor named "nope"/);
  } finally {
    f.close();
  }
  f.close();
  assert.throws(() => f.get("loss"), /file is closed/);
});

test("every real-world safetensors file reads in full (format-valid even where its content is wrong)", () => {
  const root = join(repoRoot, "..", "shared", "realworld");
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith(".safetensors")) files.push(join(d, e.name));
    }
  };
  if (!existsSync(root)) return;
  walk(root);
  assert.ok(files.length >= 10, `found ${files.length} files`);
  for (const file of files) {
    const { tensors } = loadSafetensors(file);
    assert.ok(tensors.size > 0, relative(root, file));
    disposeMap(tensors);
  }
  const bf16 = inspectSafetensors(join(root, "sd2", "diffusers_unet_dot_lora_r4_bf16_sd2.safetensors"));
  assert.ok([...bf16.tensors.values()].every((i) => i.dtype === "bfloat16"));
  const flux = inspectSafetensors(join(root, "other", "flux_aitoolkit_lora_mislabeled_sd15.safetensors"));
  assert.equal(flux.metadata.ss_base_model_version, "sd_1.5");
  // A real file cut short, as an interrupted download leaves it.
  const cut = tmpFile();
  const whole = readFileSync(join(root, "sd1", "ti_easynegativev2_emb_params.safetensors"));
  writeFileSync(cut, whole.subarray(0, whole.length - 100));
  assert.throws(() => openSafetensors(cut), /emb_params.*past the end of the data section.*truncated/);
  writeFileSync(cut, whole.subarray(0, 60));
  assert.throws(() => openSafetensors(cut), /header length \d+ is larger than the file \(60 bytes\)/);
});

// ---- writing: validation and atomicity ----------------------------------------------

const listing = (path: string) => readdirSync(join(path, ".."));

test("saveSafetensors rejects bad names and metadata before touching the disk", () => {
  const path = tmpFile();
  const t = ones([1]);
  try {
    assert.throws(() => saveSafetensors(path, { "": t }), /tensor names must be non-empty strings/);
    assert.throws(() => saveSafetensors(path, { __metadata__: t }), /reserved for metadata/);
    assert.throws(() => saveSafetensors(path, { "a\uD800": t }), /lone surrogate/);
    assert.throws(() => saveSafetensors(path, { a: 5 as unknown as Tensor }), /tensor "a": not a Tensor/);
    const bad = { n: 1 } as unknown as Record<string, string>;
    assert.throws(() => saveSafetensors(path, { a: t }, bad), /metadata value for "n" must be a string, got number/);
    assert.deepEqual(listing(path), []);
  } finally {
    t.dispose();
  }
});

test("a failed save over an existing file leaves it intact and no temp file behind", () => {
  const path = tmpFile();
  const good = ones([4]);
  saveSafetensors(path, { good });
  const before = readFileSync(path);
  const gone = zeros([2]);
  gone.dispose();
  assert.throws(
    () =>
      saveSafetensors(
        path,
        new Map([
          ["good", good],
          ["gone", gone],
        ]),
      ),
    /tensor "gone": the tensor is disposed/,
  );
  assert.ok(readFileSync(path).equals(before));
  assert.deepEqual(listing(path), ["t.safetensors"]);
  // A failure in the middle of the data: "a" is written, then "b" fails.
  const failing = zeros([1000]);
  failing.withBytes = () => {
    throw new Error("simulated I/O failure");
  };
  try {
    assert.throws(() => saveSafetensors(path, { a: good, b: failing }), /simulated I\/O failure/);
  } finally {
    failing.dispose();
    good.dispose();
  }
  assert.ok(readFileSync(path).equals(before));
  assert.deepEqual(listing(path), ["t.safetensors"]);
});

test("a reader open during a save keeps reading the old data; directories and missing files are refused", () => {
  const path = tmpFile();
  const [a, b] = [ones([3]), zeros([3])];
  try {
    saveSafetensors(path, { w: a });
    const f = openSafetensors(path);
    saveSafetensors(path, { w: b, extra: b });
    const w = f.get("w");
    assert.deepEqual(w.toArray(), [1, 1, 1]);
    w.dispose();
    f.close();
    assert.equal(inspectSafetensors(path).tensors.size, 2);
  } finally {
    a.dispose();
    b.dispose();
  }
  assert.throws(() => openSafetensors(join(path, "..")), /: not a regular file/);
  assert.throws(() => openSafetensors(join(path, "..", "none.safetensors")), /ENOENT.*none\.safetensors/);
});

test("writeFileAtomic: callback errors clean up; success replaces; symlinks keep pointing at the data", () => {
  const path = tmpFile("notes.json");
  writeTextAtomic(path, '{"v":1}');
  assert.equal(readFileSync(path, "utf8"), '{"v":1}');
  assert.throws(
    () =>
      writeFileAtomic(path, (fd) => {
        writeAll(fd, Buffer.from("partial"));
        throw new Error("boom");
      }),
    /boom/,
  );
  assert.equal(readFileSync(path, "utf8"), '{"v":1}');
  assert.deepEqual(listing(path), ["notes.json"]);
  writeTextAtomic(path, '{"v":2}');
  assert.equal(readFileSync(path, "utf8"), '{"v":2}');
  const link = join(path, "..", "link.json");
  symlinkSync("notes.json", link);
  writeTextAtomic(link, '{"v":3}');
  assert.ok(lstatSync(link).isSymbolicLink());
  assert.equal(readlinkSync(link), "notes.json");
  assert.equal(readFileSync(path, "utf8"), '{"v":3}');
  assert.deepEqual(listing(path).sort(), ["link.json", "notes.json"]);
  assert.throws(() => writeTextAtomic(join(path, "..", "missing-dir", "x.json"), "x"), /ENOENT/);
});

test("tensors on another device are saved from a CPU copy", { skip: !cudaAvailable() && "no CUDA GPU" }, () => {
  const path = tmpFile();
  const cpu = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
  const gpu = cpu.to("cuda");
  const gpuT = gpu.transpose(0, 1);
  try {
    saveSafetensors(path, { g: gpu, gt: gpuT });
    const { tensors } = loadSafetensors(path);
    assert.deepEqual(tensors.get("g")!.toArray(), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(tensors.get("gt")!.toArray(), [1, 4, 2, 5, 3, 6]);
    disposeMap(tensors);
  } finally {
    for (const t of [cpu, gpu, gpuT]) t.dispose();
  }
});
