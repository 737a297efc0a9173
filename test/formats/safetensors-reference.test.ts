// The reference reader's rules (huggingface/safetensors safetensors/src/tensor.rs,
// `read_metadata` and `Metadata::validate`, with serde_json parsing the header)
// that JSON.parse and a loose reader let through: gaps and trailing bytes,
// floats where integers belong, lone surrogates, prototype names as dtypes.
// Each case is refused with a message naming the file, the tensor and the rule;
// the valid edge cases next to them still load.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { tensor, zeros } from "../../src/engine/index.js";
import { loadSafetensors, openSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { caseFiles, checkLeaks } from "../helpers.js";
import { assertRefused } from "./refusal.js";

checkLeaks();

const tmpFile = caseFiles("atelier-safetensors-ref-");

function rawFile(header: string, data: Buffer = Buffer.alloc(0), length?: number): string {
  const h = Buffer.from(header, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(length ?? h.length));
  const path = tmpFile("ref.safetensors");
  writeFileSync(path, Buffer.concat([prefix, h, data]));
  return path;
}

const f32 = (shape: string, offsets: string, extra = "") =>
  `{"dtype":"F32","shape":${shape},"data_offsets":${offsets}${extra}}`;

const rejects = assertRefused;

function loads(path: string, keys: string[]): void {
  const f = openSafetensors(path);
  try {
    assert.deepEqual(f.keys(), keys);
  } finally {
    f.close();
  }
}

test("the tensors must tile the data section: no gap before, between or after them (InvalidOffset, MetadataIncompleteBuffer)", () => {
  rejects(
    rawFile(`{"a":${f32("[1]", "[4,8]")}}`, Buffer.alloc(8)),
    /tensor "a": data_offsets \[4, 8\] begin at 4, but the first tensor must begin at 0/,
  );
  rejects(
    rawFile(`{"a":${f32("[1]", "[0,4]")},"b":${f32("[1]", "[8,12]")}}`, Buffer.alloc(12)),
    /tensors "a" \[0, 4\] and "b" \[8, 12\]: 4 bytes between them belong to no tensor \(data_offsets must be contiguous\)/,
  );
  rejects(
    rawFile(`{"a":${f32("[1]", "[0,4]")}}`, Buffer.alloc(5)),
    /the data section holds 5 bytes but the tensors cover 4: 1 bytes after the last tensor belong to none/,
  );
  rejects(rawFile("{}", Buffer.alloc(3)), /holds 3 bytes but the tensors cover 0/);
  rejects(rawFile(`{"__metadata__":{"k":"v"}}`, Buffer.alloc(1)), /holds 1 bytes but the tensors cover 0/);
  // Two tensors on the same bytes are refused too (what was "overlapping").
  rejects(
    rawFile(`{"a":${f32("[1]", "[0,4]")},"b":${f32("[1]", "[0,4]")}}`, Buffer.alloc(4)),
    /tensors "a" \[0, 4\] and "b" \[0, 4\] have overlapping data_offsets/,
  );
});

test("a header length 2 bytes short (padding dropped) is refused, not read shifted", () => {
  const path = tmpFile("good.safetensors");
  const t = tensor(new Float32Array([1, 2, 3]));
  try {
    saveSafetensors(path, { abc: t }); // a 57-byte header, padded with 7 spaces
  } finally {
    t.dispose();
  }
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.ok(bytes.toString("latin1", 8, 8 + n).endsWith("  "), "the writer pads with spaces");
  bytes.writeBigUInt64LE(BigInt(n - 2), 0);
  writeFileSync(path, bytes);
  rejects(path, /the data section holds 14 bytes but the tensors cover 12: 2 bytes .*a header length that is off/);
});

test("shapes and offsets must be integer literals: 4.0, 4e0, -0 and 2^64 are floats to serde_json", () => {
  const data = Buffer.alloc(16);
  for (const dim of ["4.0", "4e0", "4E+0", "0.4e1"]) {
    rejects(
      rawFile(`{"a":${f32(`[${dim}]`, "[0,16]")}}`, data),
      new RegExp(`tensor "a": shape \\[${dim.replace(/[.+]/g, "\\$&")}\\] must hold non-negative integers`),
    );
  }
  rejects(rawFile(`{"a":${f32("[-0]", "[0,0]")}}`), /tensor "a": shape \[-0\] must hold non-negative integers/);
  rejects(
    rawFile(`{"a":${f32("[4]", "[0,16.0]")}}`, data),
    /tensor "a": data_offsets must be \[begin, end\].*\[0,16.0\]/,
  );
  rejects(rawFile(`{"a":${f32("[4]", "[-0,16]")}}`, data), /tensor "a": data_offsets must be \[begin, end\]/);
  rejects(
    rawFile(`{"a":${f32("[18446744073709551616,0]", "[0,0]")}}`),
    /shape \[18446744073709551616,0\] must hold non-negative integers/,
  );
  // Within u64 but past what a JS number holds exactly: an empty tensor the reference would take.
  rejects(
    rawFile(`{"a":${f32("[18446744073709551615,0]", "[0,0]")}}`),
    /tensor "a": shape: 18446744073709551615 is too large/,
  );
  // A float in a field the reference ignores is fine.
  loads(rawFile(`{"a":${f32("[4]", "[0,16]", ',"extra":1.5')}}`, data), ["a"]);
});

test("lone UTF-16 surrogate escapes are refused anywhere in the header; pairs are fine", () => {
  const data = Buffer.alloc(4);
  rejects(
    rawFile(`{"a\\ud800":${f32("[1]", "[0,4]")}}`, data),
    /header is not valid JSON \(lone UTF-16 surrogate \\ud800/,
  );
  rejects(rawFile(`{"a\\udc00x":${f32("[1]", "[0,4]")}}`, data), /lone UTF-16 surrogate \\udc00/);
  rejects(rawFile(`{"a\\ud800\\u0041":${f32("[1]", "[0,4]")}}`, data), /lone UTF-16 surrogate \\ud800/);
  rejects(rawFile(`{"__metadata__":{"k":"\\udbff"}}`), /lone UTF-16 surrogate \\udbff/);
  rejects(rawFile(`{"a":${f32("[1]", "[0,4]", ',"note":"\\ud83d"')}}`, data), /lone UTF-16 surrogate/);
  const f = openSafetensors(rawFile(`{"__metadata__":{"k":"\\ud83d\\ude00"},"\\u00e9":${f32("[1]", "[0,4]")}}`, data));
  try {
    assert.deepEqual(f.metadata, { k: "😀" });
    assert.deepEqual(f.keys(), ["é"]);
  } finally {
    f.close();
  }
});

test("a dtype must be one of the format's names, not an Object.prototype member", () => {
  for (const name of ["toString", "__proto__", "constructor", "hasOwnProperty", "valueOf"]) {
    rejects(
      rawFile(`{"w":{"dtype":"${name}","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(4)),
      new RegExp(`tensor "w" has unknown dtype "${name}"`),
    );
  }
});

test("nesting stops at serde_json's limit: 127 levels load, 128 are refused", () => {
  const nest = (levels: number) => `${"[".repeat(levels)}${"]".repeat(levels)}`;
  // The header object is level 1, the tensor entry level 2, "extra" adds the rest.
  loads(rawFile(`{"a":${f32("[1]", "[0,4]", `,"extra":${nest(125)}`)}}`, Buffer.alloc(4)), ["a"]);
  rejects(
    rawFile(`{"a":${f32("[1]", "[0,4]", `,"extra":${nest(126)}`)}}`, Buffer.alloc(4)),
    /nested deeper than 127 levels/,
  );
});

test("the valid edge cases still load: {}, metadata only, empty tensors, no padding, leading whitespace, odd names", () => {
  loads(rawFile("{}"), []);
  loads(rawFile("  {}  "), []);
  loads(rawFile(" \t\r\n{}"), []);
  const meta = openSafetensors(rawFile(`{"__metadata__":{"__proto__":"x","0":"y"}}`));
  try {
    assert.ok(Object.hasOwn(meta.metadata, "__proto__"));
    assert.deepEqual({ ...meta.metadata }, JSON.parse('{"__proto__":"x","0":"y"}'));
  } finally {
    meta.close();
  }
  loads(rawFile(`{"a":${f32("[0]", "[0,0]")},"b":${f32("[2,0,3]", "[0,0]")}}`), ["a", "b"]);
  loads(rawFile(`\n {"__proto__":${f32("[1]", "[0,4]")}}`, Buffer.alloc(4)), ["__proto__"]);
  // Unpadded, unsorted in the header, with an empty tensor between two others.
  const path = rawFile(
    `{"z":${f32("[2]", "[4,12]")},"e":${f32("[0]", "[4,4]")},"a":${f32("[1]", "[0,4]")}}`,
    Buffer.from(new Float32Array([1, 2, 3]).buffer),
  );
  const { tensors } = loadSafetensors(path);
  try {
    assert.deepEqual([...tensors.keys()], ["a", "e", "z"]);
    assert.deepEqual(tensors.get("z")!.toArray(), [2, 3]);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  // What the writer makes: zero-sized tensors included.
  const written = tmpFile("written.safetensors");
  const src = { empty: zeros([0, 4]), one: zeros([1]) };
  try {
    saveSafetensors(written, src, { k: "v" });
  } finally {
    for (const t of Object.values(src)) t.dispose();
  }
  loads(written, ["empty", "one"]);
});
