// Fuzz target: the safetensors reader (src/formats/safetensors.ts,
// loadSafetensors), judged against the reference in safetensors-oracle.ts.
// Cases are header-aware: the header is kept as raw JSON lexemes, so offsets
// can be shifted, gapped or overlapped, shapes written as floats, negatives
// or huge integers, dtypes made odd, names given lone surrogate escapes, and
// bytes left trailing; a quarter also get generic byte mutations on top.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { DType } from "../../../src/engine/index.js";
import { loadSafetensors, SafetensorsError } from "../../../src/formats/safetensors.js";
import { concat, mutateBytes, type Outcome, type Rng, type Target } from "../harness.js";
import { REFERENCE_DTYPE_BITS, type ReferenceVerdict, referenceCheck } from "../safetensors-oracle.js";
import { existingFiles, type TargetOptions } from "./common.js";

/** One tensor entry, every value as the raw JSON text it is written with. */
interface Entry {
  name: string;
  dtype: string;
  shape: string[];
  offsets: string[];
  /** Unknown fields (the reference ignores them) or repeated known ones. */
  extra: [string, string][];
  /** Written as `[dtype, shape, offsets]` instead of an object. */
  asArray: boolean;
}

interface Model {
  entries: Entry[];
  /** The raw `__metadata__` value and where it sits among the entries; null when absent. */
  metadata: { raw: string; at: number; twice?: boolean } | null;
  lead: string;
  trail: string;
  /** Text after the closing brace, inside the header (trailing garbage when not whitespace). */
  after: string;
  data: Uint8Array;
  /** A header length to write instead of the true one. */
  length?: bigint;
}

// Our engine's dtype names, written out here rather than taken from the reader.
const ENGINE: Readonly<Record<string, DType>> = {
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

const str = (s: string) => JSON.stringify(s);

function serialize(m: Model): Uint8Array {
  const items = m.entries.map((e) => {
    const value = e.asArray
      ? `[${e.dtype},[${e.shape.join(",")}],[${e.offsets.join(",")}]]`
      : `{${[
          ['"dtype"', e.dtype],
          ['"shape"', `[${e.shape.join(",")}]`],
          ['"data_offsets"', `[${e.offsets.join(",")}]`],
          ...e.extra,
        ]
          .map(([k, v]) => `${k}:${v}`)
          .join(",")}}`;
    return `${e.name}:${value}`;
  });
  if (m.metadata) {
    const meta = `"__metadata__":${m.metadata.raw}`;
    items.splice(Math.min(m.metadata.at, items.length), 0, meta);
    if (m.metadata.twice) items.push(meta);
  }
  const header = Buffer.from(`${m.lead}{${items.join(",")}}${m.after}${m.trail}`, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt.asUintN(64, m.length ?? BigInt(header.length)));
  return concat(prefix, header, m.data);
}

/** The model of a file whose header JSON.parse reads (a seed). */
function modelOf(file: Uint8Array): Model {
  const n = Number(Buffer.from(file.subarray(0, 8)).readBigUInt64LE());
  const header = JSON.parse(Buffer.from(file.subarray(8, 8 + n)).toString("utf8")) as Record<string, unknown>;
  const m: Model = { entries: [], metadata: null, lead: "", trail: "", after: "", data: file.slice(8 + n) };
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") m.metadata = { raw: JSON.stringify(v), at: m.entries.length };
    else {
      const t = v as { dtype: string; shape: number[]; data_offsets: number[] };
      m.entries.push({
        name: str(k),
        dtype: str(t.dtype),
        shape: t.shape.map(String),
        offsets: t.data_offsets.map(String),
        extra: [],
        asArray: false,
      });
    }
  }
  return m;
}

/** A valid file from (name, dtype, shape) triples, laid out contiguously. */
function build(tensors: [string, string, number[]][], metadata?: Record<string, string>, pad = ""): Uint8Array {
  const m: Model = { entries: [], metadata: null, lead: "", trail: pad, after: "", data: new Uint8Array() };
  if (metadata) m.metadata = { raw: JSON.stringify(metadata), at: 0 };
  for (const [name, dtype, shape] of tensors) {
    m.entries.push({
      name: str(name),
      dtype: str(dtype),
      shape: shape.map(String),
      offsets: [],
      extra: [],
      asArray: false,
    });
  }
  relayout(m);
  return serialize(m);
}

const plainInt = (s: string) => /^(0|[1-9][0-9]*)$/.test(s);

/** Recomputes contiguous offsets and data from shapes and dtypes where they are plain; returns whether it could. */
function relayout(m: Model): boolean {
  const sizes: bigint[] = [];
  const bools: boolean[] = [];
  for (const e of m.entries) {
    let dt: unknown;
    try {
      dt = JSON.parse(e.dtype);
    } catch {
      return false;
    }
    if (typeof dt !== "string" || !Object.hasOwn(REFERENCE_DTYPE_BITS, dt) || !e.shape.every(plainInt)) return false;
    const bits = e.shape.reduce((a, d) => a * BigInt(d), BigInt(REFERENCE_DTYPE_BITS[dt]));
    if (bits % 8n !== 0n || bits / 8n > 1_000_000n) return false;
    sizes.push(bits / 8n);
    bools.push(dt === "BOOL");
  }
  const old = m.data;
  const data: Uint8Array[] = [];
  let at = 0n;
  m.entries.forEach((e, i) => {
    e.offsets = [String(at), String(at + sizes[i])];
    const part = new Uint8Array(Number(sizes[i]));
    for (let k = 0; k < part.length; k++) part[k] = old.length ? old[(Number(at) + k) % old.length] : k;
    if (bools[i]) for (let k = 0; k < part.length; k++) part[k] &= 1;
    data.push(part);
    at += sizes[i];
  });
  m.data = concat(...data);
  return true;
}

const ODD_NUMBERS = [
  "0",
  "1",
  "-1",
  "-0",
  "1.0",
  "2e0",
  "1E1",
  "0.5",
  "1e400",
  "4294967296",
  "9007199254740993",
  "18446744073709551615",
  "18446744073709551616",
  "1099511627776",
  '"4"',
  "null",
  "true",
  "[]",
];
const ODD_DTYPES = [
  ...Object.keys(REFERENCE_DTYPE_BITS).map(str),
  '"f32"',
  '"F32 "',
  '""',
  '"FLOAT"',
  '"\\u0046\\u0033\\u0032"',
  '{"F32":null}',
  '{"F16":{}}',
  '{"F32":1}',
  '{"F32":null,"F16":null}',
  '["F32"]',
  "null",
  "32",
];
const ODD_NAMES = [
  '"\\ud800"',
  '"\\udc00x"',
  '"a\\ud800\\u0041"',
  '"\\ud83d\\ude00"',
  '"\\u0000"',
  '"\u0001"',
  '""',
  '"__metadata__"',
  '"\\/a\\"b"',
  '"é.weight"',
];
const ODD_METADATA = [
  "null",
  "{}",
  "[]",
  '"x"',
  '{"a":1}',
  '{"a":null}',
  '{"a":"\\ud800"}',
  '{"a":"b","a":"c"}',
  '{"__proto__":"x","constructor":"y"}',
  '{"a":{"b":"c"}}',
];
const ODD_EXTRA = ["1", "1.5", "1e400", '"\\ud800"', '"\\udfff"', "{}", '{"a":1,"a":2}', "null"];
const WS_OK = [" ", "\t", "\n", "\r", "  \n"];
const WS_BAD = ["\f", "\v", "\u00a0", "\ufeff", "\u0000", "x", ",", "}", "{}", "\u2028"];

function mutateModel(rng: Rng, m: Model, o: TargetOptions): void {
  const e = m.entries.length ? rng.pick(m.entries) : undefined;
  const i = e ? m.entries.indexOf(e) : -1;
  switch (rng.int(17)) {
    case 0: // shift one tensor's offsets
      if (e?.offsets.every(plainInt)) {
        const d = BigInt(rng.pick([1, -1, 2, -4, 8, 16, -16]));
        const k = rng.int(3); // begin, end or both
        e.offsets = e.offsets.map((x, j) => (k === 2 || k === j ? String(BigInt(x) + d) : x));
      }
      break;
    case 1: {
      // a gap before tensor i (or a non-zero first offset), bytes inserted so the rest still fits
      if (!e || !m.entries.every((x) => x.offsets.every(plainInt))) break;
      const d = rng.range(1, 16);
      const begin = BigInt(e.offsets[0]);
      for (const x of m.entries)
        if (BigInt(x.offsets[0]) >= begin) x.offsets = x.offsets.map((v) => String(BigInt(v) + BigInt(d)));
      m.data = concat(m.data.subarray(0, Number(begin)), new Uint8Array(d), m.data.subarray(Number(begin)));
      break;
    }
    case 2: // overlap: copy another tensor's offsets, or a renamed copy of a whole entry
      if (e && m.entries.length > 1 && rng.chance(0.5)) e.offsets = [...rng.pick(m.entries).offsets];
      else if (e) m.entries.push({ ...e, name: str(`copy${rng.int(100)}`), extra: [...e.extra] });
      break;
    case 3: // an odd offset lexeme, or the wrong number of them
      if (!e) break;
      if (rng.chance(0.7)) e.offsets[rng.int(2)] = rng.pick(ODD_NUMBERS);
      else e.offsets = rng.chance(0.5) ? e.offsets.slice(0, 1) : [...e.offsets, "0"];
      break;
    case 4: // one dimension changed, then (usually) laid out again so the file can stay valid
      if (!e) break;
      if (e.shape.length && rng.chance(0.8)) {
        const j = rng.int(e.shape.length);
        e.shape[j] = rng.chance(0.6) ? rng.pick(ODD_NUMBERS) : String(rng.range(0, 5));
      } else e.shape = rng.chance(0.5) ? [] : [...e.shape, "1"];
      if (rng.chance(0.6)) relayout(m);
      break;
    case 5: // shapes whose element count overflows u64 part-way, or that are large with a zero
      if (!e) break;
      e.shape = rng.pick([
        ["1099511627776", "1099511627776", "0"],
        ["0", "1099511627776", "1099511627776"],
        ["18446744073709551615", "0"],
        ["4294967296", "4294967296"],
        ["9007199254740992", "0"],
        ["2", "9223372036854775807"],
      ]);
      break;
    case 6: // many dimensions of 1
      if (!e) break;
      e.shape = [...e.shape, ...new Array(rng.pick([8, 64, 1000, o.profile === "ci" ? 2000 : 100_000])).fill("1")];
      break;
    case 7: // another or an odd dtype, usually laid out again
      if (!e) break;
      e.dtype = rng.pick(ODD_DTYPES);
      if (rng.chance(0.7)) relayout(m);
      break;
    case 8: // an odd name, a duplicate name, or a long one
      if (!e) break;
      if (rng.chance(0.3) && m.entries.length > 1) e.name = rng.pick(m.entries).name;
      else if (rng.chance(0.2)) e.name = str("n".repeat(rng.pick([300, 10_000])));
      else e.name = rng.pick(ODD_NAMES);
      break;
    case 9: // odd metadata, a second __metadata__, or none
      if (rng.chance(0.15)) m.metadata = null;
      else {
        m.metadata = { raw: rng.pick(ODD_METADATA), at: rng.int(m.entries.length + 1), twice: rng.chance(0.15) };
      }
      break;
    case 10: // the sequence form of a TensorInfo
      if (e) e.asArray = !e.asArray;
      break;
    case 11: {
      // unknown or repeated fields, including nesting at serde_json's depth limit
      if (!e) break;
      const d = rng.pick([10, 125, 126, 127, 200]);
      const value = rng.chance(0.3) ? `${"[".repeat(d)}${"]".repeat(d)}` : rng.pick(ODD_EXTRA);
      const key = rng.chance(0.2)
        ? rng.pick(['"dtype"', '"shape"', '"data_offsets"'])
        : rng.pick(['"x"', '"x"', '"\\ud800"']);
      e.extra.push([key, key === '"dtype"' ? e.dtype : key === '"shape"' ? `[${e.shape}]` : value]);
      break;
    }
    case 12: // drop a tensor, maybe laid out again
      if (i >= 0) m.entries.splice(i, 1);
      if (rng.chance(0.5)) relayout(m);
      break;
    case 13: // exactly repeated entry (same name, same place)
      if (e) m.entries.splice(rng.int(m.entries.length + 1), 0, { ...e });
      break;
    case 14: // padding around the JSON, good or bad
      {
        const where = rng.int(4);
        if (where === 0) m.after = rng.pick(WS_BAD);
        else m[rng.pick(["lead", "trail"] as const)] = rng.pick(where === 1 ? WS_BAD : WS_OK);
      }
      break;
    case 15: // the data: trailing bytes, missing bytes, a BOOL byte that is not 0/1
      if (rng.chance(0.4)) m.data = concat(m.data, new Uint8Array(rng.range(1, 64)));
      else if (rng.chance(0.5)) m.data = m.data.slice(0, Math.max(0, m.data.length - rng.range(1, 8)));
      else if (m.data.length) m.data[rng.int(m.data.length)] = rng.pick([2, 0xff, 0x80]);
      break;
    default: // the header length, lying
      m.length =
        rng.pick([1n, -1n, 8n, -8n, 100_000_001n, 2n ** 64n - 1n, 2n ** 63n]) +
        (rng.chance(0.5) ? 0n : BigInt(serialize(m).length - 8 - m.data.length));
  }
}

function compare(ref: ReferenceVerdict, got: ReturnType<typeof loadSafetensors>, file: Uint8Array): string | undefined {
  const names = [...ref.tensors.keys()].sort();
  const ours = [...got.tensors.keys()].sort();
  if (names.join("\0") !== ours.join("\0")) return `tensor names differ: ${names.length} vs ${ours.length}`;
  const n = Number(Buffer.from(file.subarray(0, 8)).readBigUInt64LE());
  for (const [name, t] of ref.tensors) {
    const mine = got.tensors.get(name)!;
    if (mine.dtype !== ENGINE[t.dtype]) return `${str(name)}: dtype ${mine.dtype} for ${t.dtype}`;
    if (mine.shape.join(",") !== t.shape.join(",")) return `${str(name)}: shape [${mine.shape}] for [${t.shape}]`;
    if (t.end > t.begin) {
      const want = file.subarray(8 + n + Number(t.begin), 8 + n + Number(t.end));
      const same = mine.withBytes((b) => Buffer.compare(Buffer.from(b), Buffer.from(want)) === 0);
      if (!same) return `${str(name)}: bytes differ from the file`;
    }
  }
  const meta = [...(ref.metadata ?? new Map()).entries()].sort();
  const mineMeta = Object.entries(got.metadata).sort();
  if (JSON.stringify(meta) !== JSON.stringify(mineMeta)) return "metadata differs";
  return undefined;
}

/** A BOOL tensor holding a byte other than 0/1: valid for the reference (it reads no data), refused by us. */
function boolBytes(ref: ReferenceVerdict, file: Uint8Array): boolean {
  const n = Number(Buffer.from(file.subarray(0, 8)).readBigUInt64LE());
  for (const t of ref.tensors.values()) {
    if (t.dtype !== "BOOL") continue;
    if (file.subarray(8 + n + Number(t.begin), 8 + n + Number(t.end)).some((b) => b > 1)) return true;
  }
  return false;
}

export function safetensorsTarget(o: TargetOptions): Target<Uint8Array> {
  const scratch = join(o.dir, "case.safetensors");
  return {
    name: "safetensors",
    hasReference: true,
    isOwnError: (e) => e instanceof SafetensorsError,
    seeds() {
      const built = [
        build([]),
        build([["w", "F32", [2, 2]]]),
        build(
          [
            ["a.f64", "F64", [1]],
            ["b.f16", "F16", [3]],
            ["c.bf16", "BF16", [2, 1]],
            ["d.i64", "I64", [2]],
            ["e.scalar", "I32", []],
            ["f.i16", "I16", [1, 1, 1]],
            ["g.i8", "I8", [4]],
            ["h.empty", "U8", [0]],
            ["i.bool", "BOOL", [3]],
          ],
          { format: "pt", name: "seed" },
        ),
        build([
          ["z0", "F32", [0]],
          ["z1", "F16", [2, 0]],
          ["x", "U8", [5]],
        ]),
        build(
          [
            ["α.weight", "F16", [2]],
            ["emoji 😀", "I8", [1]],
            ["", "U8", [1]],
          ],
          {},
          "   ",
        ),
      ];
      const files = existingFiles(o, [
        "fixtures/adapters/a1111_embedding.safetensors",
        "fixtures/upscaler/schedules.safetensors",
        "fixtures/models/vae_tiny_io.safetensors",
        ...(o.profile === "ci" ? [] : ["realworld/sd1/ti_easynegativev2_emb_params.safetensors"]),
      ]).map((p) => new Uint8Array(readFileSync(p)));
      return [...built, ...files];
    },
    generate(rng, seeds) {
      const base = rng.pick(seeds);
      let file: Uint8Array;
      try {
        const m = modelOf(base);
        if (m.entries.length > 64 && rng.chance(0.7)) m.entries = m.entries.slice(0, rng.range(1, 16));
        if (rng.chance(0.5)) relayout(m);
        for (let k = rng.count(3, 0.4); k > 0; k--) mutateModel(rng, m, o);
        file = serialize(m);
      } catch {
        file = base;
      }
      if (rng.chance(0.25)) file = mutateBytes(rng, file, { others: seeds, maxLength: file.length + 4096 });
      return file;
    },
    run(file): Outcome {
      const ref = referenceCheck(file);
      const reference = ref.valid ? (ref.quirks.length || boolBytes(ref, file) ? "quirk" : "valid") : "invalid";
      const base = { reference, referenceCode: ref.reason, referenceDetail: ref.detail } as const;
      writeFileSync(scratch, file);
      let got: ReturnType<typeof loadSafetensors>;
      try {
        got = loadSafetensors(scratch);
      } catch (e) {
        return { ...base, accepted: false, thrown: e };
      }
      try {
        return { ...base, accepted: true, mismatch: ref.valid ? compare(ref, got, file) : undefined };
      } finally {
        for (const t of got.tensors.values()) t.dispose();
      }
    },
    toBytes: (file) => file,
  };
}
