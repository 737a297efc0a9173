// The restricted .ckpt/.pt reader: files torch.save wrote (recorded by
// scripts/record-ckpt-fixtures.py), pickles and archives built by hand here,
// malicious pickles (refused, nothing runs), and broken files.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { disposeAll, scope, Tensor } from "../../src/engine/index.js";
import { CkptError, loadCkpt, loadTorchFile, openCkpt } from "../../src/formats/ckpt.js";
import { ALLOWED_GLOBALS, PickleError, unpickle } from "../../src/formats/pickle.js";
import { checkLeaks, repoRoot, tempDir, testFixture } from "../helpers.js";
import { bytesOf, PickleWriter, stateDictPickle, torchZip, writeZip } from "./torch-builder.js";

checkLeaks();

const dir = tempDir("atelier-ckpt-");
after(() => rmSync(dir, { recursive: true, force: true }));
const realworld = (p: string) => join(repoRoot, "..", "shared", "realworld", p);
let n = 0;
function writeTmp(data: Uint8Array, ext = ".ckpt"): string {
  const p = join(dir, `f${n++}${ext}`);
  writeFileSync(p, data);
  return p;
}

interface Expected {
  tensors: Record<string, { dtype: string; shape: number[]; values: number[] }>;
  metadata: Record<string, number | string>;
}
const expected = JSON.parse(readFileSync(testFixture("ckpt_expected.json"), "utf8")) as Expected;

function checkRecorded(tensors: Map<string, Tensor>): void {
  assert.deepEqual([...tensors.keys()].sort(), Object.keys(expected.tensors).sort());
  for (const [k, e] of Object.entries(expected.tensors)) {
    const t = tensors.get(k)!;
    assert.equal(t.dtype, e.dtype, k);
    assert.deepEqual(t.shape, e.shape, k);
    assert.deepEqual(t.toArray(), e.values.map(Number), k);
  }
}

describe("files written by torch.save (torch 1.13)", () => {
  test("zip format, Lightning layout: state_dict unwrapped, global_step and epoch kept as metadata", () => {
    const { tensors, metadata } = loadCkpt(testFixture("ckpt_lightning_zip.ckpt"));
    try {
      checkRecorded(tensors);
      // numpy.int64 global_step, the ModelCheckpoint-keyed callbacks and the optimizer state are read but not run.
      assert.deepEqual(metadata, expected.metadata);
    } finally {
      disposeAll(tensors);
    }
  });

  test("legacy (pre-1.6) stream format", () => {
    const { tensors, metadata } = loadCkpt(testFixture("ckpt_plain_legacy.pt"));
    try {
      checkRecorded(tensors);
      assert.deepEqual(metadata, {});
    } finally {
      disposeAll(tensors);
    }
  });

  test("openCkpt gives dtypes and shapes before reading; get casts floats only", () => {
    const f = openCkpt(testFixture("ckpt_lightning_zip.ckpt"));
    try {
      assert.equal(f.format, "zip");
      assert.deepEqual(f.info("transposed"), { dtype: "float32", shape: [4, 3] });
      scope(() => {
        assert.equal(f.get("bf16", { dtype: "float32" }).dtype, "float32");
        assert.equal(f.get("i64", { dtype: "float16" }).dtype, "int64");
        assert.deepEqual(f.get("f32", { dtype: "float16" }).toArray(), expected.tensors.f32.values);
      });
      assert.throws(() => f.get("nope"), /no tensor named "nope"/);
    } finally {
      f.close();
    }
  });
});

describe("hand-built archives", () => {
  const f32 = Float32Array.from({ length: 12 }, (_, i) => i * 0.5);
  const i64 = BigInt64Array.from([-3n, 1n << 40n, 5n]);
  const f16 = Uint16Array.from([0x3c00, 0xc000, 0x3800]); // 1, -2, 0.5
  const specs = [
    // [3,4] row-major over the whole storage
    { name: "a", key: "0", storage: "FloatStorage", numel: 12, offset: 0, shape: [3, 4], stride: [4, 1] },
    // the transpose of the same storage: non-contiguous, shared
    { name: "a_t", key: "0", storage: "FloatStorage", numel: 12, offset: 0, shape: [4, 3], stride: [1, 4] },
    // a slice at an offset of the same storage
    { name: "row1", key: "0", storage: "FloatStorage", numel: 12, offset: 4, shape: [4], stride: [1] },
    { name: "ids", key: "1", storage: "LongStorage", numel: 3, offset: 0, shape: [3], stride: [1] },
    { name: "h", key: "2", storage: "HalfStorage", numel: 3, offset: 0, shape: [1, 3], stride: [3, 1] },
  ];
  const storages = new Map([
    ["0", bytesOf(f32)],
    ["1", bytesOf(i64)],
    ["2", bytesOf(f16)],
  ]);

  test("several dtypes, a non-contiguous stride and a storage shared by three tensors", () => {
    const p = writeTmp(torchZip(stateDictPickle(specs), storages));
    const { tensors } = loadCkpt(p);
    try {
      assert.deepEqual(tensors.get("a")!.toArray(), Array.from(f32));
      const at = tensors.get("a_t")!;
      assert.deepEqual(at.shape, [4, 3]);
      assert.deepEqual(at.toArray(), [0, 2, 4, 0.5, 2.5, 4.5, 1, 3, 5, 1.5, 3.5, 5.5]);
      assert.deepEqual(tensors.get("row1")!.toArray(), [2, 2.5, 3, 3.5]);
      assert.deepEqual(tensors.get("ids")!.toArray(), [-3, 2 ** 40, 5]);
      assert.deepEqual(tensors.get("h")!.toArray(), [1, -2, 0.5]);
      // The tensors own separate memory: changing one leaves the others alone.
      tensors.get("a")!.fill_(0);
      assert.deepEqual(tensors.get("row1")!.toArray(), [2, 2.5, 3, 3.5]);
    } finally {
      disposeAll(tensors);
    }
  });

  test("a shared storage read once in batch() survives the caller's scopes around each tensor", () => {
    const f = openCkpt(writeTmp(torchZip(stateDictPickle(specs), storages)));
    try {
      // the storage is first read inside a scope: the cache keeps it for the next tensors
      const [a, row1] = f.batch(() => ["a", "row1"].map((k) => scope(() => f.get(k).mul(2))));
      assert.deepEqual(
        a.toArray(),
        Array.from(f32, (x) => 2 * x),
      );
      assert.deepEqual(row1.toArray(), [4, 5, 6, 7]);
      disposeAll([a, row1]);
    } finally {
      f.close();
    }
  });

  test("DEFLATE entries and any archive folder name", () => {
    const items = [
      { name: "my_model/data.pkl", data: stateDictPickle(specs.slice(0, 1)), deflate: true },
      { name: "my_model/data/0", data: storages.get("0")!, deflate: true },
    ];
    const { tensors } = loadCkpt(writeTmp(writeZip(items)));
    try {
      assert.deepEqual(tensors.get("a")!.toArray(), Array.from(f32));
    } finally {
      disposeAll(tensors);
    }
  });

  test("ZIP64 central directory and extra fields (multi-GB checkpoints)", () => {
    const p = writeTmp(torchZip(stateDictPickle(specs), storages, "big", { zip64: true }));
    const { tensors } = loadCkpt(p);
    try {
      assert.deepEqual(tensors.get("a_t")!.toArray(), [0, 2, 4, 0.5, 2.5, 4.5, 1, 3, 5, 1.5, 3.5, 5.5]);
      assert.deepEqual(tensors.get("h")!.toArray(), [1, -2, 0.5]);
    } finally {
      disposeAll(tensors);
    }
  });

  test("a tensor larger than its storage is refused", () => {
    const bad = [{ ...specs[0], shape: [4, 4] }];
    const p = writeTmp(torchZip(stateDictPickle(bad), storages));
    assert.throws(
      () => loadCkpt(p),
      (e: Error) => e instanceof CkptError && e.message.includes(p) && /needs 16 elements/.test(e.message),
    );
  });

  test("a missing storage entry is refused", () => {
    const p = writeTmp(torchZip(stateDictPickle(specs), new Map([["0", storages.get("0")!]])));
    assert.throws(() => loadCkpt(p), /storage 1 is missing from the archive/);
  });
});

describe("malicious pickles are refused and nothing runs", () => {
  const marker = join(dir, "pwned");
  const cmd = `touch ${marker}`;
  const cases: [string, Uint8Array][] = [
    ["os.system", new PickleWriter().proto(2).global("os", "system").str(cmd).raw(0x85).reduce().stop().bytes()],
    ["posix.system", new PickleWriter().proto(2).global("posix", "system").str(cmd).raw(0x85).reduce().stop().bytes()],
    ["nt.system", new PickleWriter().proto(2).global("nt", "system").str(cmd).raw(0x85).reduce().stop().bytes()],
    [
      "builtins.eval",
      new PickleWriter()
        .proto(4)
        .stackGlobal("builtins", "eval")
        .str(`__import__('os').system('${cmd}')`)
        .raw(0x85)
        .reduce()
        .stop()
        .bytes(),
    ],
    [
      "builtins.exec",
      new PickleWriter().proto(2).global("builtins", "exec").str("import os").raw(0x85).reduce().stop().bytes(),
    ],
    [
      "__builtin__.eval",
      new PickleWriter().proto(2).global("__builtin__", "eval").str("1").raw(0x85).reduce().stop().bytes(),
    ],
    [
      "subprocess.Popen",
      new PickleWriter()
        .proto(2)
        .global("subprocess", "Popen")
        .mark()
        .str("touch")
        .str(marker)
        .raw(0x6c)
        .raw(0x85)
        .reduce()
        .stop()
        .bytes(),
    ],
    [
      // getattr(os, "system") then call: refused at the first global.
      "builtins.getattr",
      new PickleWriter()
        .proto(2)
        .global("builtins", "getattr")
        .str("os")
        .str("system")
        .raw(0x86)
        .reduce()
        .str(cmd)
        .raw(0x85)
        .reduce()
        .stop()
        .bytes(),
    ],
    // INST (protocol 0) instantiates a class by name.
    [
      "subprocess.Popen",
      new PickleWriter()
        .mark()
        .str(cmd)
        .raw(0x69, ...Buffer.from("subprocess\nPopen\n"))
        .stop()
        .bytes(),
    ],
  ];

  for (const [name, bytes] of cases) {
    test(name, () => {
      assert.throws(
        () => unpickle(bytes, { what: "evil.pkl" }),
        (e: Error) => e instanceof PickleError && e.message.includes(`'${name}'`) && e.message.startsWith("evil.pkl"),
      );
      assert.equal(existsSync(marker), false);
    });
  }

  test("inside a checkpoint archive: the error names the file and the global", () => {
    // A valid state dict whose second value is os.system("touch …").
    const w = new PickleWriter().proto(2).global("collections", "OrderedDict").emptyTuple().reduce().mark();
    w.str("x").global("os", "system").str(cmd).raw(0x85).reduce().setitems().stop();
    const p = writeTmp(torchZip(w.bytes(), new Map()));
    assert.throws(
      () => loadCkpt(p),
      (e: Error) => e instanceof CkptError && e.message.includes(p) && e.message.includes("'os.system'"),
    );
    assert.equal(existsSync(marker), false);
  });

  test("the allow-list holds only state-dict types", () => {
    for (const g of ALLOWED_GLOBALS)
      assert.match(g, /^(torch\.|collections\.OrderedDict$|numpy\.|_codecs\.encode$|pytorch_lightning\.)/);
    assert.ok(!ALLOWED_GLOBALS.some((g) => /system|eval|exec|Popen|getattr|import/.test(g)));
  });
});

describe("broken input gets a clear error", () => {
  const good = readFileSync(testFixture("ckpt_lightning_zip.ckpt"));

  test("truncated zip", () => {
    for (const keep of [good.length - 1, Math.floor(good.length / 2), 100, 3]) {
      const p = writeTmp(good.subarray(0, keep));
      assert.throws(
        () => loadCkpt(p),
        (e: Error) => e instanceof CkptError && e.message.includes(p),
        `kept ${keep}`,
      );
    }
  });

  test("zip without data.pkl", () => {
    const p = writeTmp(writeZip([{ name: "archive/version", data: Buffer.from("3\n") }]));
    assert.throws(() => loadCkpt(p), /no <archive>\/data\.pkl: not a PyTorch checkpoint archive/);
  });

  test("corrupt pickle: an unknown opcode, a truncated stream, stray bytes", () => {
    const pkl = stateDictPickle([]);
    const unknown = Uint8Array.from([...pkl.subarray(0, -1), 0xff, 0x2e]);
    assert.throws(() => loadCkpt(writeTmp(torchZip(unknown, new Map()))), /unknown opcode 0xff/);
    const cut = pkl.subarray(0, pkl.length - 3);
    assert.throws(() => loadCkpt(writeTmp(torchZip(cut, new Map()))), /truncated pickle data|stack underflow|no MARK/);
    const stray = Uint8Array.from([...pkl, 0x4e]);
    assert.throws(() => loadCkpt(writeTmp(torchZip(stray, new Map()))), /stray bytes after the pickle/);
    assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0x30, 0x2e])), /stack underflow/);
    assert.throws(() => unpickle(Uint8Array.from([0x80, 0x02, 0x68, 0x07, 0x2e])), /memo key 7/);
  });

  test("corrupt storage bytes fail the CRC check", () => {
    const bytes = Buffer.from(good);
    // The first storage follows data.pkl; flip a byte inside storage "0" (located through the zip reader).
    const name = Buffer.from("ckpt_lightning_zip/data/0");
    const at = bytes.indexOf(name) + name.length;
    // Skip the local header's extra field (PyTorch pads data to 64 bytes).
    const extra = bytes.readUInt16LE(at - name.length - 2);
    bytes[at + extra] ^= 0xff;
    assert.throws(() => loadCkpt(writeTmp(bytes)), /CRC mismatch/);
  });

  test("not a torch file at all", () => {
    assert.throws(() => loadCkpt(writeTmp(Buffer.from("hello world, not a pickle"))), /not a PyTorch file/);
  });

  test("a list is not a state dict (loadTorchFile reads it)", () => {
    assert.throws(
      () => openCkpt(realworld("sd1/cloneofsimo_kiriko2_text_encoder_list.pt")),
      /holds a list, not a state dict/,
    );
  });
});

describe("files from other tools (the shared real-world files)", () => {
  test("UTF-8-mangled zip is refused without a crash or hang", () => {
    const p = realworld("broken/easynegative_utf8_mangled_zip.pt");
    assert.throws(
      () => loadCkpt(p),
      (e: Error) => e instanceof CkptError && e.message.includes(p),
    );
  });

  test("A1111's empty dict", () => {
    const { tensors, metadata } = loadCkpt(realworld("broken/a1111_test_empty_dict.pt"));
    assert.equal(tensors.size, 0);
    assert.deepEqual(metadata, {});
  });

  test("A1111 textual inversion .pt (zip folder named unlike the file)", () => {
    for (const [f, vectors, step] of [
      ["sd1/a1111_ti_bad-hands-5_2vec.pt", 2, 1364],
      ["sd1/a1111_ti_charturnerv2_15vec_testTurner.pt", 15, 660],
    ] as const) {
      const v = loadTorchFile(realworld(f)) as Map<string, unknown>;
      try {
        assert.equal(v.get("step"), step);
        const param = (v.get("string_to_param") as Map<string, Tensor>).get("*")!;
        assert.deepEqual(param.shape, [vectors, 768]);
        assert.equal((v.get("string_to_token") as Map<string, number>).get("*"), 265);
      } finally {
        disposeAll(v);
      }
    }
  });

  test("lists of tensors and _rebuild_parameter (cloneofsimo .pt)", () => {
    const v = loadTorchFile(realworld("sd2/cloneofsimo_disney_unet_list_sd2.pt")) as Tensor[];
    try {
      assert.equal(v.length, 256);
      assert.ok(v.every((t) => t instanceof Tensor && t.shape.includes(4)));
    } finally {
      disposeAll(v);
    }
  });

  test("diffusers .bin saved on cuda:0 (a byteorder entry in the other) loads on the CPU", () => {
    const { tensors } = loadCkpt(realworld("sd1/diffusers_attnproc_lora_r4_weapons.bin"));
    try {
      assert.equal(tensors.size, 256);
      for (const t of tensors.values()) assert.equal(t.device, "cpu");
    } finally {
      disposeAll(tensors);
    }
    const ti = loadCkpt(realworld("sd1/diffusers_ti_learned_embeds_styled_image.bin"));
    try {
      assert.deepEqual(ti.tensors.get("<styled-image>")!.shape, [768]);
    } finally {
      disposeAll(ti.tensors);
    }
  });
});
