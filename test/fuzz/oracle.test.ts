// The fuzzer's safetensors reference (safetensors-oracle.ts) on the Rust
// crate's own test vectors (huggingface/safetensors safetensors/src/tensor.rs,
// `mod tests`) and on the serde and serde_json rules it models.
import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceCheck } from "./safetensors-oracle.js";

/** An 8-byte length, the header text as UTF-8, then `data` zero bytes (or the bytes given). */
function file(header: string | Uint8Array, data: number | Uint8Array = 0, length?: bigint): Uint8Array {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : Buffer.from(header);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length ?? BigInt(h.length));
  return Buffer.concat([prefix, h, typeof data === "number" ? Buffer.alloc(data) : Buffer.from(data)]);
}

const entry = (dtype: string, shape: string, offsets: string, more = "") =>
  `{"dtype":${dtype},"shape":[${shape}],"data_offsets":[${offsets}]${more}}`;

function valid(f: Uint8Array, quirks: string[] = []): void {
  const v = referenceCheck(f);
  assert.ok(v.valid, v.detail);
  assert.deepEqual(v.quirks, quirks);
}

function invalid(f: Uint8Array, code: string, detail?: RegExp): void {
  const v = referenceCheck(f);
  assert.equal(v.valid, false, "expected the reference to refuse it");
  assert.equal(v.code, code, v.detail);
  if (detail) assert.match(v.detail ?? "", detail);
}

test("the Rust crate's test vectors", () => {
  const i32x4 = `{"test":${entry('"I32"', "2,2", "0,16")}}`;
  valid(file(i32x4, 16)); // test_deserialization
  valid(file(`{"test":${entry('"I32"', "", "0,4")}}`, 4)); // test_empty_shapes_allowed
  valid(file(`{"test":${entry('"I32"', "2,0", "0, 0")}}`)); // test_zero_sized_tensor
  invalid(file(`{"test":${entry('"I32"', "2,2", "0, 4")}}`, 4), "TensorInvalidInfo"); // test_invalid_info
  invalid(file(`{"test":${entry('"I32"', "2,18446744073709551614", "0,16")}}`, 16), "ValidationOverflow");
  invalid(file(`{"test":${entry('"I32"', "2,9223372036854775807", "0,16")}}`, 16), "ValidationOverflow");
  invalid(
    file(i32x4, Buffer.concat([Buffer.alloc(16), Buffer.from("extra_bogus_data_for_polyglot_file")])),
    "MetadataIncompleteBuffer",
  );
  invalid(file(i32x4, 14), "MetadataIncompleteBuffer");
  invalid(file(i32x4, 16, 0xffffff000000003cn), "HeaderTooLarge");
  invalid(new Uint8Array(), "HeaderTooSmall");
  invalid(file("", 0, 60n), "InvalidHeaderLength");
  invalid(file(Uint8Array.of(0xff)), "InvalidHeader");
  invalid(file("{"), "InvalidHeaderDeserialization");
  valid(file("{}\r \t\n")); // test_whitespace_padded_header
  valid(file("\t\n{}\r ")); // test_whitespace_leading_padded_header
  const attack = Array.from({ length: 10 }, (_, i) => `"weight_${i}":${entry('"F32"', "2,2", "0,16")}`);
  invalid(file(`{${attack.join(",")}}`, 16), "InvalidOffset"); // test_json_attack
});

test("Metadata::validate: offsets contiguous from 0, every byte of the data used", () => {
  const two = (a: string, b: string) => `{"a":${entry('"U8"', "4", a)},"b":${entry('"U8"', "4", b)}}`;
  valid(file(two("0,4", "4,8"), 8));
  valid(file(two("4,8", "0,4"), 8)); // any order in the header
  invalid(file(two("0,4", "5,9"), 9), "InvalidOffset", /b/); // a gap
  invalid(file(two("4,8", "8,12"), 12), "InvalidOffset"); // not from 0
  invalid(file(two("0,4", "2,6"), 6), "InvalidOffset"); // overlap
  invalid(file(`{"a":${entry('"U8"', "0", "4,0")}}`, 4), "InvalidOffset"); // end before begin
  valid(file(`{"a":${entry('"U8"', "0", "0,0")},"b":${entry('"U8"', "0", "0,0")}}`)); // zero-size tensors share 0
  invalid(file(`{"a":${entry('"F4"', "3", "0,2")}}`, 2), "MisalignedSlice");
  valid(file(`{"a":${entry('"F4"', "4", "0,2")}}`, 2), ["dtype-engine-lacks"]);
  valid(file(`{"a":${entry('"U8"', "18446744073709551615,0", "0,0")}}`), ["dimension-past-2^53"]); // large but zero elements
  valid(file(`{"a":${entry('"U8"', "9007199254740991,0", "0,0")}}`)); // 2^53 - 1 is still exact
  invalid(file(`{"a":${entry('"U8"', "1099511627776,1099511627776,0", "0,0")}}`), "ValidationOverflow"); // overflows part-way
  valid(file(`{"a":${entry('"U8"', "0,1099511627776,1099511627776", "0,0")}}`)); // in this order it does not
});

test("serde_json: integers only where usize is read, paired surrogates, a nesting limit of 128", () => {
  const one = (shape: string, more = "") => file(`{"a":${entry('"U8"', shape, "0,1", more)}}`, 1);
  for (const odd of ["1.0", "1e0", "-0", "-1", "18446744073709551616", '"1"', "null"]) {
    invalid(one(odd), "InvalidHeaderDeserialization", /shape/);
  }
  invalid(one("01"), "InvalidHeaderDeserialization", /invalid number/);
  invalid(one("1", ',"x":1e400'), "InvalidHeaderDeserialization", /out of range/);
  valid(one("1", ',"x":1e-400'));
  const named = (name: string) => file(`{${name}:${entry('"U8"', "1", "0,1")}}`, 1);
  valid(named('"\\ud83d\\ude00"'));
  valid(named('"\\u0000"'));
  invalid(named('"\\ud800"'), "InvalidHeaderDeserialization", /unexpected end of hex escape/);
  invalid(named('"\\ud800\\u0041"'), "InvalidHeaderDeserialization", /lone leading surrogate/);
  invalid(named('"\\udc00"'), "InvalidHeaderDeserialization", /lone trailing surrogate/);
  invalid(named('"\u0001"'), "InvalidHeaderDeserialization", /control character/);
  // Nesting counts the header object and the entry: 126 more arrays reach the limit.
  const nested = (d: number) => one("1", `,"x":${"[".repeat(d)}${"]".repeat(d)}`);
  valid(nested(125));
  invalid(nested(126), "InvalidHeaderDeserialization", /recursion limit/);
  invalid(file("\ufeff{}"), "InvalidHeaderDeserialization");
  invalid(file("{},"), "InvalidHeaderDeserialization", /trailing/);
  invalid(file('{"a":1,}'), "InvalidHeaderDeserialization");
  invalid(file("{}\f"), "InvalidHeaderDeserialization");
});

test("serde's derives: what they accept beyond the documented form is marked as a quirk", () => {
  const u8 = (v: string, data = 1) => file(`{"a":${v}}`, data);
  valid(u8('["U8",[1],[0,1]]'), ["struct-as-array"]);
  invalid(u8('["U8",[1],[0,1],0]'), "InvalidHeaderDeserialization");
  valid(u8(entry('{"U8":null}', "1", "0,1")), ["enum-as-map"]);
  valid(u8(entry('{"U8":{}}', "1", "0,1")), ["enum-as-map"]);
  invalid(u8(entry('{"U8":1}', "1", "0,1")), "InvalidHeaderDeserialization");
  valid(u8(entry('"\\u0055\\u0038"', "1", "0,1"))); // "U8", escaped
  invalid(u8(entry('"u8"', "1", "0,1")), "InvalidHeaderDeserialization", /unknown variant/);
  valid(u8(entry('"U8"', "1", "0,1", ',"extra":{"deep":[1,2.5,null]}')));
  invalid(u8(entry('"U8"', "1", "0,1", ',"dtype":"U8"')), "InvalidHeaderDeserialization", /duplicate field/);
  invalid(u8(entry('"U8"', "1", "0,1,2")), "InvalidHeaderDeserialization", /tuple of size 2/);
  const a = entry('"U8"', "1", "0,1");
  valid(file(`{"a":${a},"a":${a}}`, 1), ["duplicate-key"]); // a HashMap keeps the last
  valid(file(`{"a":${entry('"U8"', "1", "5,6")},"a":${a}}`, 1), ["duplicate-key"]);
  invalid(file(`{"a":${entry("3", "1", "0,1")},"a":${a}}`, 1), "InvalidHeaderDeserialization"); // both must parse
  valid(file(`{"__metadata__":{"k":"v"},"a":${a}}`, 1));
  valid(file(`{"__metadata__":null,"a":${a}}`, 1));
  valid(file(`{"__metadata__":{"k":"v","k":"w"},"a":${a}}`, 1), ["duplicate-key"]);
  invalid(file(`{"__metadata__":{},"__metadata__":{},"a":${a}}`, 1), "InvalidHeaderDeserialization", /duplicate field/);
  invalid(file(`{"__metadata__":{"k":1},"a":${a}}`, 1), "InvalidHeaderDeserialization");
  invalid(file(`{"__metadata__":[],"a":${a}}`, 1), "InvalidHeaderDeserialization");
  invalid(file("[]"), "InvalidHeaderDeserialization");
  valid(file(`{"a":${entry('"F8_E4M3"', "1", "0,1")}}`, 1), ["dtype-engine-lacks"]);
});

test("a valid verdict carries the tensors and metadata, for comparing with the reader", () => {
  const v = referenceCheck(file(`{"__metadata__":{"k":"v"},"w":${entry('"F16"', "2,3", "0,12")}}`, 12));
  assert.ok(v.valid);
  assert.deepEqual([...v.tensors], [["w", { dtype: "F16", shape: [2n, 3n], begin: 0n, end: 12n }]]);
  assert.deepEqual([...(v.metadata ?? [])], [["k", "v"]]);
});
