// safetensors files that break the format (docs/formats.md, "safetensors"),
// each written by hand: every one is refused with a SafetensorsError naming
// the file and the fault, quickly and without allocating what the header claims.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { test } from "node:test";
import { findDuplicateKey, openSafetensors } from "../../src/formats/safetensors.js";
import { caseFiles, checkLeaks } from "../helpers.js";
import { assertRefused } from "./refusal.js";

checkLeaks();

const tmpFile = caseFiles("atelier-safetensors-bad-");

function rawFile(header: string | Buffer, data: Buffer = Buffer.alloc(0), length?: bigint): string {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : header;
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length ?? BigInt(h.length));
  const path = tmpFile("bad.safetensors");
  writeFileSync(path, Buffer.concat([prefix, h, data]));
  return path;
}

const entry = (dtype: unknown, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
const fileOf = (header: unknown, dataBytes = 16) => rawFile(JSON.stringify(header), Buffer.alloc(dataBytes));

function rejects(path: string, pattern: RegExp): void {
  const start = Date.now();
  assertRefused(path, pattern);
  assert.ok(Date.now() - start < 2000, "rejection took too long");
}

test("rejects files too short for the 8-byte length, and lying header lengths", () => {
  const short = tmpFile();
  writeFileSync(short, Buffer.from([1, 2, 3]));
  rejects(short, /3 bytes, shorter than the 8-byte header length/);
  writeFileSync(short, Buffer.alloc(0));
  rejects(short, /0 bytes, shorter than the 8-byte header length/);
  rejects(rawFile("{}", undefined, 2n ** 60n), /header length 1152921504606846976 is absurd/);
  rejects(rawFile("{}", undefined, 2n ** 64n - 1n), /header length 18446744073709551615 is absurd/);
  rejects(rawFile("{}", undefined, 200_000_000n), /header length 200000000 is absurd/);
  rejects(rawFile("{}", Buffer.alloc(10), 1000n), /header length 1000 is larger than the file \(20 bytes\)/);
});

test("rejects headers that are not UTF-8 JSON objects", () => {
  rejects(rawFile(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), /header is not valid UTF-8/);
  rejects(rawFile('{"a": '), /header is not valid JSON/);
  rejects(rawFile("{} trailing"), /header is not valid JSON/);
  rejects(rawFile("[1, 2]"), /header must be a JSON object, got an array/);
  rejects(rawFile("null"), /header must be a JSON object, got null/);
  rejects(rawFile('"text"'), /header must be a JSON object, got string/);
  // Deep nesting must give an error, not a stack overflow; serde_json stops at 128 levels.
  rejects(rawFile(`{"x":${"[".repeat(100_000)}${"]".repeat(100_000)}}`), /nested deeper than 127 levels/);
});

test("rejects tensor entries with missing or wrongly typed fields", () => {
  rejects(fileOf({ a: 5 }), /tensor "a": entry must be an object/);
  rejects(fileOf({ a: { shape: [1], data_offsets: [0, 4] } }), /tensor "a": missing or non-string dtype/);
  rejects(fileOf({ a: entry(5, [1], [0, 4]) }), /tensor "a": missing or non-string dtype/);
  rejects(fileOf({ a: { dtype: "F32", data_offsets: [0, 4] } }), /tensor "a": missing shape/);
  rejects(fileOf({ a: entry("F32", "4", [0, 4]) }), /tensor "a": missing shape/);
  rejects(fileOf({ a: entry("F32", [-1], [0, 4]) }), /shape \[-1\] must hold non-negative integers/);
  rejects(fileOf({ a: entry("F32", [1.5], [0, 4]) }), /shape \[1.5\] must hold non-negative integers/);
  rejects(fileOf({ a: entry("F32", ["1"], [0, 4]) }), /must hold non-negative integers/);
  rejects(fileOf({ a: { dtype: "F32", shape: [1] } }), /data_offsets must be \[begin, end\]/);
  rejects(fileOf({ a: entry("F32", [1], [0]) }), /data_offsets must be \[begin, end\]/);
  rejects(fileOf({ a: entry("F32", [1], [0, "4"]) }), /data_offsets must be \[begin, end\]/);
  rejects(fileOf({ a: entry("F32", [1], [-4, 0]) }), /data_offsets must be \[begin, end\]/);
  rejects(fileOf({ a: entry("F32", [1], [0, 4, 8]) }), /data_offsets must be \[begin, end\]/);
});

test("rejects bad offsets: reversed, out of range, overlapping, truncated data", () => {
  rejects(fileOf({ a: entry("F32", [1], [8, 4]) }), /tensor "a": data_offsets \[8, 4\] begin after they end/);
  rejects(
    fileOf({ a: entry("F32", [1], [16, 20]) }),
    /data_offsets \[16, 20\] lie past the end of the data section \(16 bytes\)/,
  );
  rejects(
    fileOf({ a: entry("F32", [2], [0, 8]), b: entry("F32", [2], [4, 12]) }),
    /tensors "a" \[0, 8\] and "b" \[4, 12\] have overlapping data_offsets/,
  );
  rejects(
    fileOf({ b: entry("F32", [4], [0, 16]), a: entry("F32", [1], [4, 8]) }),
    /"b" \[0, 16\] and "a" \[4, 8\] have overlapping/,
  );
  // A valid file whose data was cut short.
  rejects(fileOf({ a: entry("F32", [4], [0, 16]), b: entry("F32", [4], [16, 32]) }, 24), /tensor "b".*truncated/);
  // Zero-length tensors at a boundary are fine.
  const ok = openSafetensors(
    fileOf({ a: entry("F32", [0], [4, 4]), b: entry("F32", [1], [0, 4]), c: entry("I8", [12], [4, 16]) }),
  );
  assert.deepEqual(ok.keys(), ["b", "a", "c"]);
  ok.close();
});

test("rejects shapes whose byte size differs from their offsets, even absurd ones, without allocating", () => {
  rejects(
    fileOf({ a: entry("F32", [3], [0, 8]) }),
    /tensor "a": shape \[3\] of F32 needs 12 bytes, but data_offsets \[0, 8\] hold 8/,
  );
  rejects(
    fileOf({ a: entry("F32", [1e12, 1e12], [0, 4]) }),
    /shape \[1000000000000,1000000000000\] overflows a 64-bit element count/,
  );
  rejects(fileOf({ a: entry("F16", [2, 2, 2], [0, 8]) }), /needs 16 bytes/);
});

test("an empty tensor with a dimension past 2^53 - 1 is refused by name; 2^53 - 1 itself opens", () => {
  // The Rust reader takes any u64 here (the element count is 0); JavaScript's
  // numbers are exact only up to 2^53 - 1, so this reader refuses rather than round.
  rejects(
    rawFile('{"a":{"dtype":"U8","shape":[18446744073709551615,0],"data_offsets":[0,0]}}'),
    /tensor "a".*18446744073709551615 is too large for this reader \(limit 2\^53 - 1\)/,
  );
  const f = openSafetensors(rawFile('{"a":{"dtype":"U8","shape":[9007199254740991,0],"data_offsets":[0,0]}}'));
  try {
    assert.deepEqual(f.info("a").shape, [9007199254740991, 0]);
  } finally {
    f.close();
  }
});

test("rejects unknown and unsupported dtypes by tensor name", () => {
  rejects(fileOf({ w: entry("F12", [1], [0, 4]) }), /tensor "w" has unknown dtype "F12" \(supported: F64, F32/);
  rejects(fileOf({ w: entry("F8_E4M3", [4], [0, 4]) }), /tensor "w" has dtype F8_E4M3, which the engine cannot hold/);
  rejects(fileOf({ w: entry("F8_E5M2", [4], [0, 4]) }), /dtype F8_E5M2, which the engine cannot hold/);
  rejects(fileOf({ w: entry("f32", [1], [0, 4]) }), /unknown dtype "f32"/);
});

test("rejects duplicate names that JSON.parse would silently merge", () => {
  const a = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}';
  const b = '{"dtype":"F32","shape":[1],"data_offsets":[4,8]}';
  rejects(rawFile(`{"w":${a}, "w" :${b}}`, Buffer.alloc(8)), /duplicate tensor name "w"/);
  rejects(rawFile(`{"w":${a},"\\u0077":${b}}`, Buffer.alloc(8)), /duplicate tensor name "w"/);
  rejects(
    rawFile(`{"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(8)),
    /duplicate key "dtype"/,
  );
  rejects(rawFile(`{"__metadata__":{"k":"1","k":"2"}}`), /duplicate key "k"/);
  assert.equal(findDuplicateKey('{"a":"a","b":["a","a",{"a":1}],"c":{"a":"\\"a"}}'), undefined);
  assert.deepEqual(findDuplicateKey('{"x":{"a\\"":1,"a\\u0022":2}}'), { key: 'a"', topLevel: false });
});

test("rejects __metadata__ that is not an object of strings", () => {
  rejects(fileOf({ __metadata__: { k: 1 } }), /__metadata__ value for "k" must be a string, got number 1/);
  rejects(fileOf({ __metadata__: { k: { nested: "x" } } }), /__metadata__ value for "k" must be a string, got object/);
  rejects(fileOf({ __metadata__: ["x"] }), /__metadata__ must be an object of strings/);
  rejects(fileOf({ __metadata__: "x" }), /__metadata__ must be an object of strings/);
  const f = openSafetensors(fileOf({ __metadata__: null }, 0));
  assert.deepEqual(f.metadata, {});
  f.close();
});

test("rejects a BOOL tensor holding bytes other than 0/1 when it is read", () => {
  const f = openSafetensors(rawFile(JSON.stringify({ m: entry("BOOL", [3], [0, 3]) }), Buffer.from([0, 1, 2])));
  try {
    assert.throws(() => f.get("m"), /tensor "m" is BOOL but holds bytes other than 0\/1/);
  } finally {
    f.close();
  }
});
