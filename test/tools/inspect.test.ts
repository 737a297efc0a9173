// inspectFile on hand-made files: what the safetensors reader accepts,
// inspect must too (a header starting with whitespace), every tensor is read
// (a BOOL holding a 2 is refused), and one-tensor files are described from
// their real shape.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { test } from "node:test";
import { tensor, zeros } from "../../src/engine/index.js";
import { saveSafetensors } from "../../src/formats/safetensors.js";
import { inspectFile } from "../../src/tools/inspect.js";
import { caseFiles, checkLeaks } from "../helpers.js";

checkLeaks();

const tmpFile = caseFiles("atelier-inspect-");

function rawFile(header: string, data: Buffer): string {
  const h = Buffer.from(header, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.length));
  const path = tmpFile("x.safetensors");
  writeFileSync(path, Buffer.concat([prefix, h, data]));
  return path;
}

test("a header that starts with whitespace is a safetensors file, as the reader says", () => {
  for (const lead of [" ", "\n\t\r ", " ".repeat(5000)]) {
    const path = rawFile(`${lead}{"emb":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}`, Buffer.alloc(24));
    const r = inspectFile(path);
    assert.equal(r.format, "safetensors");
    assert.equal(r.tensors, 1);
    assert.equal(r.architecture, "textual inversion embedding: 2 vector(s) of width 3");
  }
  // Whitespace and then no object, or a length past the file: still neither format.
  assert.throws(() => inspectFile(rawFile("   [1]", Buffer.alloc(0))), /neither a safetensors file nor a PyTorch/);
});

test("BOOL tensors are read too: bytes other than 0/1 are refused by tensor name", () => {
  const good = rawFile('{"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}', Buffer.from([0, 1, 1]));
  assert.deepEqual(inspectFile(good).problems, []);
  const bad = rawFile('{"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}', Buffer.from([0, 1, 2]));
  assert.throws(() => inspectFile(bad), /tensor "mask" is BOOL but holds bytes other than 0\/1/);
  // Without a scan nothing is read.
  assert.equal(inspectFile(bad, { scan: false }).dtypes.bool, 1);
});

test("a one-tensor file is described from its shape: no 'width undefined'", () => {
  const cases: [number[], string][] = [
    [[768], "textual inversion embedding: 1 vector of width 768"],
    [[4, 768], "textual inversion embedding: 4 vector(s) of width 768"],
    [[2, 3, 4], "one tensor of shape [2, 3, 4] (not an embedding's [vectors, width])"],
    [[], "one tensor of shape [] (not an embedding's [vectors, width])"],
  ];
  for (const [shape, architecture] of cases) {
    const path = tmpFile("one.safetensors");
    const t = shape.length === 0 ? tensor(new Float32Array([1]), { shape: [] }) : zeros(shape);
    try {
      saveSafetensors(path, { "<tok>": t });
    } finally {
      t.dispose();
    }
    const r = inspectFile(path);
    assert.equal(r.kind, "embedding");
    assert.equal(r.architecture, architecture);
    assert.doesNotMatch(r.architecture, /undefined/);
  }
});
