// Parsing and checking a safetensors header (the format: docs/formats.md,
// reference reader: huggingface/safetensors safetensors/src/tensor.rs). Every
// check runs on the header alone, before any tensor memory is allocated, so a
// lying header costs nothing but an error.
import { BYTES, type DType } from "../engine/index.js";
import {
  DuplicateKeyError,
  type Json,
  JsonNumber,
  type JsonObject,
  kindOf,
  parseJson,
  showJson,
} from "./strict-json.js";

/** File dtype names that the engine holds. */
export const FILE_TO_DTYPE: Readonly<Record<string, DType>> = {
  F64: "float64",
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
  I64: "int64",
  I32: "int32",
  I16: "int16",
  I8: "int8",
  U8: "uint8",
  BOOL: "bool",
};

export const DTYPE_TO_FILE: Readonly<Record<DType, string>> = {
  float64: "F64",
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  int64: "I64",
  int32: "I32",
  int16: "I16",
  int8: "I8",
  uint8: "U8",
  bool: "BOOL",
};

/** Valid in the format, but not something libtorch 1.13 (our floor) can hold. */
const UNSUPPORTED = new Set(["F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64"]);

/** The reference reader's limit (MAX_HEADER_SIZE in tensor.rs). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  /** The engine dtype the tensor is stored as. */
  dtype: DType;
  shape: number[];
  byteLength: number;
  /** Absolute position of the first byte in the file. */
  offset: number;
}

export interface ParsedHeader {
  /** In file (data offset) order. */
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

const fail = (file: string, problem: string): never => {
  throw new SafetensorsError(`${file}: ${problem}`);
};

const clip = (s: string, max: number): string => (s.length > max ? `${s.slice(0, max - 1)}…` : s);

/** A name from the file, quoted and cut short: a hostile header must not make a megabyte message. */
const quote = (s: string): string => clip(JSON.stringify(s), 200);

/**
 * Checks the 8-byte length prefix against the file size; returns N. `prefix`
 * is the first 8 bytes of the file.
 */
export function checkHeaderLength(file: string, prefix: Uint8Array, fileSize: number): number {
  if (fileSize < 8) fail(file, `not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(file, `header length ${n} is absurd (limit ${MAX_HEADER_BYTES} bytes): not a safetensors file, or corrupt`);
  }
  if (n > BigInt(fileSize - 8)) {
    fail(file, `header length ${n} is larger than the file (${fileSize} bytes): truncated or not a safetensors file`);
  }
  return Number(n);
}

/**
 * The first key that occurs twice in one object of a JSON text (JSON.parse
 * silently keeps the last), with whether it is a top-level (tensor) name.
 */
export function findDuplicateKey(text: string): { key: string; topLevel: boolean } | undefined {
  try {
    parseJson(text);
  } catch (e) {
    if (e instanceof DuplicateKeyError) return { key: e.key, topLevel: e.topLevel };
  }
  return undefined;
}

function parseMetadata(file: string, value: Json): Record<string, string> {
  if (value === null) return {}; // the reference reads null as "no metadata" (an Option)
  if (!(value instanceof Map)) fail(file, `__metadata__ must be an object of strings, got ${showJson(value)}`);
  for (const [k, v] of value as JsonObject) {
    if (typeof v !== "string") {
      fail(file, `__metadata__ value for ${quote(k)} must be a string, got ${kindOf(v)} ${showJson(v)}`);
    }
  }
  // fromEntries defines own properties, so even a "__proto__" key survives.
  return Object.fromEntries(value as JsonObject) as Record<string, string>;
}

/** A Rust usize from the source text: `4.0`, `4e0`, `-0` and numbers past 2^64 are floats to serde_json. */
const isCount = (v: Json): v is JsonNumber => v instanceof JsonNumber && v.isUnsigned && BigInt(v.raw) < 2n ** 64n;

/** A count JS numbers hold exactly; larger ones cannot fit a file anyway, except as a dimension of an empty tensor. */
function safe(file: string, what: string, v: JsonNumber): number {
  const n = Number(v.raw);
  if (!Number.isSafeInteger(n)) fail(file, `${what}: ${v.raw} is too large for this reader (limit 2^53 - 1)`);
  return n;
}

function parseEntry(file: string, name: string, value: Json, headerEnd: number, dataSize: number): TensorInfo {
  const what = `tensor ${quote(name)}`;
  if (!(value instanceof Map)) return fail(file, `${what}: entry must be an object, got ${showJson(value)}`);
  const fileDtype = value.get("dtype");
  if (typeof fileDtype !== "string") return fail(file, `${what}: missing or non-string dtype`);
  // hasOwn: "toString" or "__proto__" must not find Object.prototype's members.
  const dtype = Object.hasOwn(FILE_TO_DTYPE, fileDtype) ? FILE_TO_DTYPE[fileDtype] : undefined;
  if (dtype === undefined) {
    const supported = Object.keys(FILE_TO_DTYPE).join(", ");
    if (UNSUPPORTED.has(fileDtype)) {
      fail(file, `${what} has dtype ${fileDtype}, which the engine cannot hold (supported: ${supported})`);
    }
    return fail(file, `${what} has unknown dtype ${quote(fileDtype)} (supported: ${supported})`);
  }
  const rawShape = value.get("shape");
  if (!Array.isArray(rawShape)) return fail(file, `${what}: missing shape (an array of dimension sizes)`);
  if (!rawShape.every(isCount)) {
    fail(
      file,
      `${what}: shape ${showJson(rawShape)} must hold non-negative integers (written without sign, fraction or exponent)`,
    );
  }
  const rawOffsets = value.get("data_offsets");
  if (!Array.isArray(rawOffsets) || rawOffsets.length !== 2 || !rawOffsets.every(isCount)) {
    return fail(
      file,
      `${what}: data_offsets must be [begin, end] with non-negative integers, got ${rawOffsets === undefined ? "nothing" : showJson(rawOffsets)}`,
    );
  }
  const [begin, end] = (rawOffsets as JsonNumber[]).map((v) => safe(file, `${what}: data_offsets`, v));
  if (begin > end) fail(file, `${what}: data_offsets [${begin}, ${end}] begin after they end`);
  if (end > dataSize) {
    fail(
      file,
      `${what}: data_offsets [${begin}, ${end}] lie past the end of the data section (${dataSize} bytes): ` +
        "the file is truncated or its header is wrong",
    );
  }
  // BigInt: a lying shape like [1e12, 1e12] must not round into a plausible size.
  const dims = (rawShape as JsonNumber[]).map((d) => BigInt(d.raw));
  // The Rust reader multiplies the dimensions left to right in a usize and refuses on overflow
  // (ValidationOverflow), even when a later dimension is 0.
  let count = 1n;
  for (const d of dims) {
    count *= d;
    if (count >= 2n ** 64n) fail(file, `${what}: shape ${showJson(rawShape)} overflows a 64-bit element count`);
  }
  const bytes = count * BigInt(BYTES[dtype]);
  if (bytes !== BigInt(end - begin)) {
    fail(
      file,
      `${what}: shape ${showJson(rawShape)} of ${fileDtype} needs ${bytes} bytes, ` +
        `but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  const shape = (rawShape as JsonNumber[]).map((d) => safe(file, `${what}: shape`, d));
  return { dtype, shape, byteLength: end - begin, offset: headerEnd + begin };
}

/**
 * Parses and checks the header bytes of a file of `fileSize` bytes whose
 * header is `n = header.byteLength` long, as the reference's `read_metadata`
 * and `Metadata::validate` do (tensor.rs). Throws SafetensorsError naming
 * `file`, the tensor and the rule.
 */
export function parseHeader(file: string, header: Uint8Array, fileSize: number): ParsedHeader {
  const headerEnd = 8 + header.byteLength;
  const dataSize = fileSize - headerEnd;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(header);
  } catch {
    return fail(file, "header is not valid UTF-8");
  }
  let json: Json;
  try {
    json = parseJson(text);
  } catch (e) {
    if (e instanceof DuplicateKeyError) {
      return fail(
        file,
        e.topLevel ? `duplicate tensor name ${quote(e.key)}` : `duplicate key ${quote(e.key)} in the header`,
      );
    }
    return fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!(json instanceof Map))
    return fail(file, `header must be a JSON object, got ${Array.isArray(json) ? "an array" : kindOf(json)}`);
  const entries: [string, TensorInfo][] = [];
  let metadata: Record<string, string> = {};
  for (const [name, value] of json) {
    if (name === "__metadata__") metadata = parseMetadata(file, value);
    else entries.push([name, parseEntry(file, name, value, headerEnd, dataSize)]);
  }
  // In offset order the tensors must tile the data section: the first begins
  // at 0, each begins where the one before ends, the last ends at the end of
  // the file (validate: InvalidOffset; read_metadata: MetadataIncompleteBuffer).
  entries.sort((a, b) => a[1].offset - b[1].offset || a[1].byteLength - b[1].byteLength);
  const at = (t: TensorInfo) => `[${t.offset - headerEnd}, ${t.offset - headerEnd + t.byteLength}]`;
  let covered = 0;
  for (let i = 0; i < entries.length; i++) {
    const [name, t] = entries[i];
    const begin = t.offset - headerEnd;
    if (begin < covered) {
      const [pn, p] = entries[i - 1];
      fail(file, `tensors ${quote(pn)} ${at(p)} and ${quote(name)} ${at(t)} have overlapping data_offsets`);
    }
    if (begin > covered) {
      fail(
        file,
        i === 0
          ? `tensor ${quote(name)}: data_offsets ${at(t)} begin at ${begin}, but the first tensor must begin at 0 (${begin} bytes belong to no tensor)`
          : `tensors ${quote(entries[i - 1][0])} ${at(entries[i - 1][1])} and ${quote(name)} ${at(t)}: ${begin - covered} bytes between them belong to no tensor (data_offsets must be contiguous)`,
      );
    }
    covered = begin + t.byteLength;
  }
  if (covered !== dataSize) {
    fail(
      file,
      `the data section holds ${dataSize} bytes but the tensors cover ${covered}: ${dataSize - covered} bytes ` +
        "after the last tensor belong to none (trailing bytes, or a header length that is off)",
    );
  }
  return { tensors: new Map(entries), metadata };
}
