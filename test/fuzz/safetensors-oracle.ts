// An independent reference for what a valid safetensors file is, written from
// the Rust crate's rules rather than from our reader: huggingface/safetensors
// safetensors/src/tensor.rs (`read_metadata`, `Metadata::validate`, the serde
// derives of `HashMetadata`/`TensorInfo`/`Dtype`), parsed the way serde_json
// parses (serde-rs/json src/de.rs and src/read.rs: a nesting limit of 128,
// integers vs floats, paired surrogate escapes) and deserialised the way
// serde's buffered `Content` does for a `#[serde(flatten)]` struct
// (serde-rs/serde serde/src/private/de.rs). The fuzzer compares our reader's
// verdicts with these.

/** serde_json's value model: integers keep their kind, objects keep every key in order. */
export type J =
  | { t: "null" }
  | { t: "bool"; v: boolean }
  | { t: "u64"; v: bigint }
  | { t: "i64"; v: bigint }
  | { t: "f64"; v: number }
  | { t: "str"; v: string }
  | { t: "arr"; v: J[] }
  | { t: "obj"; v: [string, J][] };

/** Bits per element of every dtype the Rust crate knows (`Dtype::bitsize`). */
export const REFERENCE_DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

/** The dtypes the engine holds (a valid file with another one is refused on purpose). */
export const ENGINE_DTYPES: ReadonlySet<string> = new Set([
  "F64",
  "F32",
  "F16",
  "BF16",
  "I64",
  "I32",
  "I16",
  "I8",
  "U8",
  "BOOL",
]);

const MAX_HEADER_SIZE = 100_000_000n;
const U64_MAX = (1n << 64n) - 1n;
const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER);
const I64_MIN = -(1n << 63n);

export class RefusedByReference extends Error {
  /** The Rust crate's error variant (`InvalidOffset`, `MetadataIncompleteBuffer`, …). */
  constructor(
    readonly code: string,
    detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

const fail = (code: string, detail: string): never => {
  throw new RefusedByReference(code, detail);
};
const json = (detail: string): never => fail("InvalidHeaderDeserialization", detail);

// ---- serde_json -----------------------------------------------------------------------

class JsonParser {
  i = 0;
  /** serde_json's `remaining_depth`: 128, minus one per open array or object; 0 is an error. */
  depth = 128;
  /** Some object repeats a key (serde keeps the last, or ignores both where the field is unknown). */
  duplicates = false;
  constructor(readonly s: string) {}

  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) break;
      this.i++;
    }
  }

  document(): J {
    this.ws();
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) json(`trailing characters at ${this.i}`);
    return v;
  }

  value(): J {
    const s = this.s;
    if (this.i >= s.length) json("EOF while parsing a value");
    const c = s[this.i];
    if (c === "{" || c === "[") {
      if (--this.depth === 0) json("recursion limit exceeded");
      const v = c === "{" ? this.object() : this.array();
      this.depth++;
      return v;
    }
    if (c === '"') return { t: "str", v: this.string() };
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    for (const [word, v] of [
      ["null", { t: "null" }],
      ["true", { t: "bool", v: true }],
      ["false", { t: "bool", v: false }],
    ] as const) {
      if (s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    return json(`expected value at ${this.i}`);
  }

  object(): J {
    this.i++; // {
    const out: [string, J][] = [];
    const keys = new Set<string>();
    this.ws();
    if (this.s[this.i] === "}") {
      this.i++;
      return { t: "obj", v: out };
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') json(`key must be a string at ${this.i}`);
      const key = this.string();
      if (keys.has(key)) this.duplicates = true;
      keys.add(key);
      this.ws();
      if (this.s[this.i] !== ":") json(`expected ':' at ${this.i}`);
      this.i++;
      this.ws();
      out.push([key, this.value()]);
      this.ws();
      const c = this.s[this.i++];
      if (c === "}") return { t: "obj", v: out };
      if (c !== ",") json(`expected ',' or '}' at ${this.i - 1}`);
    }
  }

  array(): J {
    this.i++; // [
    const out: J[] = [];
    this.ws();
    if (this.s[this.i] === "]") {
      this.i++;
      return { t: "arr", v: out };
    }
    for (;;) {
      this.ws();
      out.push(this.value());
      this.ws();
      const c = this.s[this.i++];
      if (c === "]") return { t: "arr", v: out };
      if (c !== ",") json(`expected ',' or ']' at ${this.i - 1}`);
    }
  }

  hex4(): number {
    const h = this.s.slice(this.i, this.i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) json(`invalid \\u escape at ${this.i}`);
    this.i += 4;
    return Number.parseInt(h, 16);
  }

  /** A string deserialised as `String` (serde_json `parse_str`, validate = true: surrogates must pair). */
  string(): string {
    const s = this.s;
    this.i++; // "
    let out = "";
    for (;;) {
      const run = this.i;
      let c = -1;
      while (this.i < s.length) {
        c = s.charCodeAt(this.i);
        if (c === 0x22 || c === 0x5c || c < 0x20) break;
        this.i++;
      }
      out += s.slice(run, this.i);
      if (this.i >= s.length) json("EOF while parsing a string");
      this.i++;
      if (c === 0x22) return out;
      if (c < 0x20) json("control character while parsing a string");
      const e = s[this.i++];
      if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        continue;
      }
      if (e !== "u") json("invalid escape");
      const n = this.hex4();
      if (n >= 0xdc00 && n <= 0xdfff) json("lone trailing surrogate in hex escape");
      if (n < 0xd800 || n > 0xdbff) {
        out += String.fromCharCode(n);
        continue;
      }
      if (s[this.i] !== "\\" || s[this.i + 1] !== "u") json("unexpected end of hex escape");
      this.i += 2;
      const n2 = this.hex4();
      if (n2 < 0xdc00 || n2 > 0xdfff) json("lone leading surrogate in hex escape");
      out += String.fromCharCode(n, n2);
    }
  }

  /** serde_json `parse_integer`/`parse_number`: u64, negative i64, else f64 (including -0 and overflow). */
  number(): J {
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (!m) return json(`invalid number at ${this.i}`);
    const text = m[0];
    this.i += text.length;
    const after = this.s[this.i];
    if (after === "." || after === "e" || after === "E" || (after !== undefined && after >= "0" && after <= "9"))
      json(`invalid number at ${this.i}`);
    if (m[2] === undefined && m[3] === undefined) {
      const v = BigInt(text);
      if (!text.startsWith("-")) {
        if (v <= U64_MAX) return { t: "u64", v };
      } else if (v < 0n && v >= I64_MIN) return { t: "i64", v };
    }
    const f = Number(text);
    if (!Number.isFinite(f)) json("number out of range");
    return { t: "f64", v: f };
  }
}

const ESCAPES: Readonly<Record<string, string>> = {
  '"': '"',
  "\\": "\\",
  "/": "/",
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
};
const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

/** Parses JSON text as serde_json does; throws RefusedByReference. */
export function parseSerdeJson(text: string): { value: J; duplicates: boolean } {
  const p = new JsonParser(text);
  const value = p.document();
  return { value, duplicates: p.duplicates };
}

// ---- serde's derives over that value --------------------------------------------------------

export interface ReferenceTensor {
  dtype: string;
  shape: bigint[];
  begin: bigint;
  end: bigint;
}

export interface ReferenceVerdict {
  valid: boolean;
  /** The Rust error variant when invalid. */
  code?: string;
  /** The variant, with serde's complaint for JSON errors (no positions or names), to count by. */
  reason?: string;
  detail?: string;
  /**
   * Valid for the Rust crate only through something our reader refuses on
   * purpose: a repeated key (serde keeps the last), a TensorInfo written as an
   * array or a dtype as `{"F32": null}` (serde's sequence and map forms), a
   * dtype the engine cannot hold, or a dimension past 2^53 - 1 (possible only
   * in an empty tensor; JavaScript's numbers hold integers exactly up to there,
   * and the reader says so by name).
   */
  quirks: string[];
  tensors: Map<string, ReferenceTensor>;
  metadata: Map<string, string> | null;
}

const describeJ = (v: J) => v.t;

function usize(v: J, what: string): bigint {
  // ContentDeserializer: U64 and I64 reach usize's visitor (a negative I64 is out of range); floats are refused.
  if (v.t === "u64") return v.v;
  return json(`${what}: invalid type ${describeJ(v)}, expected usize`);
}

function seqOf(v: J, what: string): J[] {
  if (v.t !== "arr") json(`${what}: invalid type ${describeJ(v)}, expected a sequence`);
  return (v as { v: J[] }).v;
}

function dtypeOf(v: J, quirks: Set<string>): string {
  let name: J = v;
  if (v.t === "obj") {
    // An enum from a map with one key: {"F32": null} or {"F32": {}} (unit variant from Unit or an empty map).
    if (v.v.length !== 1) json("dtype: map with a single key expected");
    const [variant, inner] = v.v[0];
    if (!(inner.t === "null" || (inner.t === "obj" && inner.v.length === 0))) json("dtype: unit variant expected");
    quirks.add("enum-as-map");
    name = { t: "str", v: variant };
  }
  if (name.t !== "str") return json(`dtype: invalid type ${describeJ(v)}, expected string or map`);
  if (!Object.hasOwn(REFERENCE_DTYPE_BITS, name.v)) json(`dtype: unknown variant ${JSON.stringify(name.v)}`);
  return name.v;
}

function tensorInfo(v: J, quirks: Set<string>): ReferenceTensor {
  let dtype: J | undefined;
  let shape: J | undefined;
  let offsets: J | undefined;
  if (v.t === "arr") {
    // A derived struct also reads from a sequence of its fields in order; extra elements are an error.
    if (v.v.length !== 3) json(`TensorInfo: invalid length ${v.v.length}, expected 3`);
    [dtype, shape, offsets] = v.v;
    quirks.add("struct-as-array");
  } else if (v.t === "obj") {
    const seen = new Set<string>();
    for (const [k, x] of v.v) {
      if (k !== "dtype" && k !== "shape" && k !== "data_offsets") {
        if (seen.has(k)) quirks.add("duplicate-key"); // ignored fields may repeat
        seen.add(k);
        continue;
      }
      if (seen.has(k)) json(`duplicate field \`${k}\``);
      seen.add(k);
      if (k === "dtype") dtype = x;
      else if (k === "shape") shape = x;
      else offsets = x;
    }
  } else {
    json(`TensorInfo: invalid type ${describeJ(v)}`);
  }
  if (!dtype) return json("missing field `dtype`");
  if (!shape) return json("missing field `shape`");
  if (!offsets) return json("missing field `data_offsets`");
  const dt = dtypeOf(dtype, quirks);
  const dims = seqOf(shape, "shape").map((d) => usize(d, "shape"));
  const pair = seqOf(offsets, "data_offsets");
  if (pair.length !== 2) json(`data_offsets: invalid length ${pair.length}, expected a tuple of size 2`);
  return { dtype: dt, shape: dims, begin: usize(pair[0], "data_offsets"), end: usize(pair[1], "data_offsets") };
}

function metadataOf(v: J, quirks: Set<string>): Map<string, string> | null {
  if (v.t === "null") return null; // Option::None
  if (v.t !== "obj") return json(`__metadata__: invalid type ${describeJ(v)}, expected a map`);
  const out = new Map<string, string>();
  for (const [k, x] of v.v) {
    if (x.t !== "str") json(`__metadata__ ${JSON.stringify(k)}: invalid type ${describeJ(x)}, expected a string`);
    if (out.has(k)) quirks.add("duplicate-key"); // HashMap: the last one wins
    out.set(k, (x as { v: string }).v);
  }
  return out;
}

/** `Metadata::validate`: offsets contiguous from 0 in (begin, end) order, sizes exact, no u64 overflow. */
function validate(tensors: [string, ReferenceTensor][]): bigint {
  const sorted = [...tensors].sort(([, a], [, b]) =>
    a.begin !== b.begin ? (a.begin < b.begin ? -1 : 1) : a.end < b.end ? -1 : a.end > b.end ? 1 : 0,
  );
  let start = 0n;
  for (const [name, t] of sorted) {
    if (t.begin !== start || t.end < t.begin) fail("InvalidOffset", name);
    start = t.end;
    let n = 1n;
    for (const d of t.shape) {
      n *= d;
      if (n > U64_MAX) fail("ValidationOverflow", `${name}: element count`);
    }
    const bits = n * BigInt(REFERENCE_DTYPE_BITS[t.dtype]);
    if (bits > U64_MAX) fail("ValidationOverflow", `${name}: bit count`);
    if (bits % 8n !== 0n) fail("MisalignedSlice", name);
    if (t.end - t.begin !== bits / 8n) fail("TensorInvalidInfo", name);
  }
  return start;
}

/** Decides a whole file as `SafeTensors::deserialize` would. Never throws. */
export function referenceCheck(file: Uint8Array): ReferenceVerdict {
  const quirks = new Set<string>();
  try {
    if (file.byteLength < 8) fail("HeaderTooSmall", `${file.byteLength} bytes`);
    const n = new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true);
    if (n > MAX_HEADER_SIZE) fail("HeaderTooLarge", `${n}`);
    if (8n + n > BigInt(file.byteLength)) fail("InvalidHeaderLength", `${n}`);
    let text = "";
    try {
      // Rust's from_utf8 keeps a byte-order mark; serde_json then refuses it as a character.
      text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(file.subarray(8, 8 + Number(n)));
    } catch {
      fail("InvalidHeader", "not UTF-8");
    }
    const { value: root, duplicates } = parseSerdeJson(text);
    if (duplicates) quirks.add("duplicate-key");
    if (root.t !== "obj") return json(`invalid type ${root.t}, expected a map`);
    let metadata: Map<string, string> | null = null;
    let sawMetadata = false;
    const byName = new Map<string, ReferenceTensor>();
    for (const [k, v] of root.v) {
      if (k === "__metadata__") {
        if (sawMetadata) json("duplicate field `__metadata__`");
        sawMetadata = true;
        metadata = metadataOf(v, quirks);
        continue;
      }
      // Every flattened entry must be a TensorInfo, even one a later duplicate replaces.
      const t = tensorInfo(v, quirks);
      if (byName.has(k)) quirks.add("duplicate-key");
      byName.set(k, t);
    }
    const end = validate([...byName]);
    if (end + 8n + n !== BigInt(file.byteLength)) fail("MetadataIncompleteBuffer", `data ends at ${end}`);
    for (const t of byName.values()) {
      if (!ENGINE_DTYPES.has(t.dtype)) quirks.add("dtype-engine-lacks");
      if (t.shape.some((d) => d > MAX_EXACT)) quirks.add("dimension-past-2^53");
    }
    return { valid: true, quirks: [...quirks].sort(), tensors: byName, metadata };
  } catch (e) {
    if (!(e instanceof RefusedByReference)) throw e;
    return {
      valid: false,
      code: e.code,
      detail: e.message,
      reason:
        e.code === "InvalidHeaderDeserialization"
          ? e.message
              .replace(/ at \d+/g, "")
              .replace(/(["`])(?:[^"`\\]|\\.)*\1/g, "…")
              .replace(/ \d+/g, " N")
          : e.code,
      quirks: [...quirks].sort(),
      tensors: new Map(),
      metadata: null,
    };
  }
}
