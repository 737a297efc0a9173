// The .pt writer (src/formats/pt-write.ts): the files it writes are the bytes
// PyTorch's torch.load read in scripts/record-pt-write-fixture.py (their
// sha256), Atelier's restricted reader reads them back to the values PyTorch
// recorded, and inputs it cannot write are refused before anything is written.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { type Tensor, tensor } from "../../src/engine/index.js";
import { openTorchArchive } from "../../src/formats/ckpt.js";
import { ALLOWED_GLOBALS, TensorRef } from "../../src/formats/pickle.js";
import { PtWriteError, savePt, WRITTEN_GLOBALS } from "../../src/formats/pt-write.js";
import { checkLeaks, tempDir, testFixture } from "../helpers.js";
import { writePtCases } from "./pt-write-cases.js";

checkLeaks();

interface Recorded {
  files: Record<string, { sha256: string; globals: string[]; value: unknown }>;
}
const recorded = JSON.parse(readFileSync(testFixture("pt_write_torch.json"), "utf8")) as Recorded;

/** The recorded PyTorch tree in the shape Atelier's reader gives (tuples are arrays, dicts Maps). */
function expected(v: unknown): unknown {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) throw new Error("unexpected bare array in the fixture");
  const o = v as Record<string, unknown>;
  if ("float" in o) return typeof o.float === "string" ? Number(o.float.replace("inf", "Infinity")) : o.float;
  if ("bigint" in o) return BigInt(o.bigint as string);
  if ("tensor" in o) return { dtype: o.tensor, shape: o.shape, requiresGrad: o.requires_grad, values: o.values };
  if ("tuple" in o) return (o.tuple as unknown[]).map(expected);
  if ("list" in o) return (o.list as unknown[]).map(expected);
  const items = (o.dict ?? o.ordered_dict) as [unknown, unknown][];
  return new Map(items.map(([k, x]) => [k, expected(x)]));
}

function tensorValues(t: Tensor): unknown[] {
  if (t.dtype === "int64") return Array.from(t.toTypedArray() as BigInt64Array, String);
  return t.toArray();
}

test("files the writer makes are those torch.load read, and read back to the values PyTorch recorded", () => {
  const dir = tempDir("pt-write-");
  const paths = writePtCases(dir);
  assert.deepEqual(paths.map((p) => p.split("/").pop()).sort(), Object.keys(recorded.files).sort());
  for (const path of paths) {
    const name = path.split("/").pop() as string;
    const rec = recorded.files[name];
    const sha = createHash("sha256").update(readFileSync(path)).digest("hex");
    assert.equal(sha, rec.sha256, `${name}: bytes differ from those PyTorch read (re-run the recording script)`);
    for (const g of rec.globals) assert.ok(WRITTEN_GLOBALS.includes(g) && ALLOWED_GLOBALS.includes(g), g);
    const a = openTorchArchive(path);
    try {
      const walk = (v: unknown): unknown => {
        if (v instanceof TensorRef) {
          const t = a.tensor(v);
          try {
            return { dtype: t.dtype, shape: t.shape, requiresGrad: v.requiresGrad, values: tensorValues(t) };
          } finally {
            t.dispose();
          }
        }
        if (Array.isArray(v)) return v.map(walk);
        if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, walk(x)]));
        return v;
      };
      assert.deepEqual(walk(a.root), expected(rec.value), name);
    } finally {
      a.close();
    }
  }
});

test("what A1111's safe loader could not read, and what is not data, is refused before anything is written", () => {
  const dir = tempDir("pt-write-bad-");
  const cases: [string, () => unknown, RegExp][] = [
    ["bool.pt", () => tensor(Uint8Array.from([1, 0]), { dtype: "bool" }), /\["mask"\]: dtype bool has no storage type/],
    ["i8.pt", () => tensor(Int8Array.from([1])), /dtype int8/],
    ["huge.pt", () => 2 ** 60, /past 2\^53; pass integers that large as bigint/],
    ["class.pt", () => new Date(0), /cannot write a Date/],
    ["fn.pt", () => () => 1, /cannot write a function/],
  ];
  for (const [file, make, message] of cases) {
    const v = make();
    const path = join(dir, file);
    try {
      assert.throws(
        () => savePt(path, { mask: v } as never),
        (e: Error) => e instanceof PtWriteError && message.test(e.message) && e.message.includes(path),
      );
      assert.equal(existsSync(path), false, `${file} was written`);
    } finally {
      if (v && typeof v === "object" && "dispose" in v) (v as Tensor).dispose();
    }
  }
  const loop: unknown[] = [];
  loop.push(loop);
  assert.throws(() => savePt(join(dir, "loop.pt"), loop as never), /contains itself/);
  assert.equal(existsSync(join(dir, "loop.pt")), false);
});
