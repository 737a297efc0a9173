// Parsing and checking a safetensors header (the format: docs/formats.md,
// reference reader: huggingface/safetensors safetensors/src/tensor.rs). Every
// check runs on the header alone, before any tensor memory is allocated, so a
// lying header costs nothing but an error.
import { BYTES, type DType } from "../engine/index.js";

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

/** A value from the file for a message: JSON.stringify recurses, so deep nesting must not reach it unguarded. */
function short(v: unknown): string {
  try {
    return clip(JSON.stringify(v) ?? String(v), 80);
  } catch {
    return Array.isArray(v) ? "a deeply nested array" : "a deeply nested object";
  }
}

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
 * `text` must already be valid JSON; iterative, so deep nesting cannot
 * overflow the stack.
 */
export function findDuplicateKey(text: string): { key: string; topLevel: boolean } | undefined {
  const stack: (Set<string> | null)[] = []; // a Set per open object, null per open array
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let j = i + 1;
      let escaped = false;
      for (;;) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) {
          break;
        } else {
          j++;
        }
      }
      const top = stack[stack.length - 1];
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k])) k++;
      if (top && text[k] === ":") {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        if (top.has(key)) return { key, topLevel: stack.length === 1 };
        top.add(key);
      }
      i = j + 1;
    } else {
      if (c === 0x7b) stack.push(new Set());
      else if (c === 0x5b) stack.push(null);
      else if (c === 0x7d || c === 0x5d) stack.pop();
      i++;
    }
  }
  return undefined;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function parseMetadata(file: string, value: unknown): Record<string, string> {
  if (value === null || value === undefined) return {}; // the reference reads null as "no metadata"
  if (!isPlainObject(value)) fail(file, `__metadata__ must be an object of strings, got ${short(value)}`);
  const entries = Object.entries(value as Record<string, unknown>);
  for (const [k, v] of entries) {
    if (typeof v !== "string") {
      fail(file, `__metadata__ value for ${quote(k)} must be a string, got ${typeof v} ${short(v)}`);
    }
  }
  // fromEntries defines own properties, so even a "__proto__" key survives.
  return Object.fromEntries(entries) as Record<string, string>;
}

function parseEntry(file: string, name: string, value: unknown, headerEnd: number, dataSize: number) {
  const what = `tensor ${quote(name)}`;
  if (!isPlainObject(value)) fail(file, `${what}: entry must be an object, got ${short(value)}`);
  const e = value as Record<string, unknown>;
  if (typeof e.dtype !== "string") fail(file, `${what}: missing or non-string dtype`);
  const fileDtype = e.dtype as string;
  const dtype = FILE_TO_DTYPE[fileDtype];
  if (dtype === undefined) {
    const supported = Object.keys(FILE_TO_DTYPE).join(", ");
    if (UNSUPPORTED.has(fileDtype)) {
      fail(file, `${what} has dtype ${fileDtype}, which the engine cannot hold (supported: ${supported})`);
    }
    fail(file, `${what} has unknown dtype ${quote(fileDtype)} (supported: ${supported})`);
  }
  if (!Array.isArray(e.shape)) fail(file, `${what}: missing shape (an array of dimension sizes)`);
  const shape = e.shape as unknown[];
  if (!shape.every(isCount)) {
    fail(file, `${what}: shape ${short(shape)} must hold non-negative integers`);
  }
  const offsets = e.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    fail(file, `${what}: data_offsets must be [begin, end] with non-negative integers, got ${short(offsets)}`);
  }
  const [begin, end] = offsets as number[];
  if (begin > end) fail(file, `${what}: data_offsets [${begin}, ${end}] begin after they end`);
  if (end > dataSize) {
    fail(
      file,
      `${what}: data_offsets [${begin}, ${end}] lie past the end of the data section (${dataSize} bytes): ` +
        "the file is truncated or its header is wrong",
    );
  }
  // BigInt: a lying shape like [1e12, 1e12] must not round into a plausible size.
  const bytes = (shape as number[]).reduce((acc, d) => acc * BigInt(d), BigInt(BYTES[dtype]));
  if (bytes !== BigInt(end - begin)) {
    fail(
      file,
      `${what}: shape ${short(shape)} of ${fileDtype} needs ${bytes} bytes, ` +
        `but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { dtype, shape: shape as number[], byteLength: end - begin, offset: headerEnd + begin };
}

/**
 * Parses and checks the header bytes of a file of `fileSize` bytes whose
 * header is `n = header.byteLength` long. Throws SafetensorsError naming
 * `file` and the problem.
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
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json))
    fail(file, `header must be a JSON object, got ${Array.isArray(json) ? "an array" : typeof json}`);
  const dup = findDuplicateKey(text);
  if (dup) {
    fail(
      file,
      dup.topLevel ? `duplicate tensor name ${quote(dup.key)}` : `duplicate key ${quote(dup.key)} in the header`,
    );
  }
  const entries: [string, TensorInfo][] = [];
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") metadata = parseMetadata(file, value);
    else entries.push([name, parseEntry(file, name, value, headerEnd, dataSize)]);
  }
  // Overlaps: in offset order, each tensor must begin where the one before ended or later.
  entries.sort((a, b) => a[1].offset - b[1].offset || a[1].byteLength - b[1].byteLength);
  for (let i = 1; i < entries.length; i++) {
    const [pn, p] = entries[i - 1];
    const [cn, c] = entries[i];
    if (c.offset < p.offset + p.byteLength) {
      const at = (t: TensorInfo) => `[${t.offset - headerEnd}, ${t.offset - headerEnd + t.byteLength}]`;
      fail(file, `tensors ${quote(pn)} ${at(p)} and ${quote(cn)} ${at(c)} have overlapping data_offsets`);
    }
  }
  return { tensors: new Map(entries), metadata };
}
