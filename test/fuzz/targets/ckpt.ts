// Fuzz target: torch.save files (.ckpt/.pt/.bin) through the zip reader and
// the restricted unpickler (src/formats/ckpt.ts loadCkpt and loadTorchFile).
// Mutations know the layers: pickle opcodes (integers that are shapes,
// strides, offsets and sizes; globals; opcodes dropped or repeated), the
// archive's members (storages cut short, a second data.pkl, byte order),
// the zip's own fields edited after the CRCs are right (sizes, methods,
// flags, offsets, ZIP64), zip bombs, and zero-stride views of one element.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateRawSync } from "node:zlib";
import { disposeAll } from "../../../src/engine/index.js";
import { CkptError, loadCkpt, loadTorchFile } from "../../../src/formats/ckpt.js";
import { PickleError } from "../../../src/formats/pickle.js";
import { crc32, ZipError, ZipFile } from "../../../src/formats/zip.js";
import { stateDictPickle, type TensorSpec } from "../../formats/torch-builder.js";
import { concat, editIntField, INTERESTING, mutateBytes, type Rng, type Target } from "../harness.js";
import { costly, existingFiles, repoFixture, type TargetOptions } from "./common.js";
import { encodeInt, intOps, walkPickles, wideStateDict, type ZipMember, zipWithFields } from "./torch-bytes.js";

export interface CkptCase {
  bytes: Uint8Array;
  api: "loadCkpt" | "loadTorchFile";
}

interface Archive {
  members: ZipMember[];
  zip64: boolean;
}

const spec = (
  name: string,
  storage: string,
  numel: number,
  shape: number[],
  stride: number[],
  offset = 0,
  key = name,
) => ({ name, key, storage, numel, offset, shape, stride }) satisfies TensorSpec;

const ELEMENT: Record<string, number> = { FloatStorage: 4, HalfStorage: 2, LongStorage: 8, BoolStorage: 1 };

function storageBytes(specs: readonly TensorSpec[]): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const s of specs) {
    if (out.has(s.key)) continue;
    const b = new Uint8Array(s.numel * ELEMENT[s.storage]);
    for (let i = 0; i < b.length; i++) b[i] = s.storage === "BoolStorage" ? i & 1 : (i * 37) & 0xff;
    out.set(s.key, b);
  }
  return out;
}

function archive(
  pkl: Uint8Array,
  storages: Map<string, Uint8Array>,
  o: { deflate?: boolean; zip64?: boolean } = {},
): Archive {
  const members: ZipMember[] = [{ name: "archive/data.pkl", data: pkl, deflate: false }];
  for (const [k, v] of storages) members.push({ name: `archive/data/${k}`, data: v, deflate: o.deflate ?? false });
  members.push({ name: "archive/version", data: Buffer.from("3\n"), deflate: false });
  return { members, zip64: o.zip64 ?? false };
}

const SPECS = [
  spec("f32", "FloatStorage", 6, [2, 3], [3, 1], 0, "0"),
  spec("view", "FloatStorage", 6, [2], [1], 2, "0"),
  spec("transposed", "FloatStorage", 6, [3, 2], [1, 3], 0, "0"),
  spec("f16", "HalfStorage", 3, [3], [1], 0, "1"),
  spec("i64", "LongStorage", 2, [2], [1], 0, "2"),
  spec("mask", "BoolStorage", 4, [4], [1], 0, "3"),
  spec("empty", "FloatStorage", 0, [0, 5], [5, 1], 0, "4"),
];

/** Globals to put where a pickle names one: allowed ones in the wrong place, and forbidden ones. */
const GLOBALS: [string, string][] = [
  ["os", "system"],
  ["builtins", "eval"],
  ["__builtin__", "set"],
  ["torch", "FloatStorage"],
  ["torch", "HalfStorage"],
  ["torch", "Tensor"],
  ["collections", "OrderedDict"],
  ["torch._utils", "_rebuild_tensor_v2"],
  ["torch._utils", "_rebuild_parameter"],
  ["torch._tensor", "_rebuild_from_type_v2"],
  ["numpy.core.multiarray", "scalar"],
  ["numpy", "dtype"],
  ["_codecs", "encode"],
  ["torch", "Size"],
];

/** Integers for shapes, strides, offsets and storage sizes. */
const SIZES: bigint[] = [
  ...INTERESTING,
  -1n,
  -2n,
  -(2n ** 31n),
  -(2n ** 63n),
  3n,
  1_000_000_000n,
  300_000_000n,
  2n ** 100n,
];

const bombCache = new Map<number, { compressed: Uint8Array; size: number; crc: number }>();

/** `size` zero bytes, deflated (cached: a gigabyte takes seconds to compress). */
function zeros(size: number): { compressed: Uint8Array; size: number; crc: number } {
  let b = bombCache.get(size);
  if (!b) {
    const z = Buffer.alloc(size);
    b = { compressed: deflateRawSync(z, { level: 9 }), size, crc: crc32(z) };
    bombCache.set(size, b);
  }
  return b;
}

function mutatePickle(rng: Rng, pkl: Uint8Array, pickles = 1): Uint8Array {
  const ops = walkPickles(pkl, 0, pickles);
  if (ops.length === 0) return mutateBytes(rng, pkl);
  const splice = (at: number, end: number, ins: Uint8Array) => concat(pkl.subarray(0, at), ins, pkl.subarray(end));
  let out = pkl;
  switch (rng.int(7)) {
    case 0:
    case 1: {
      // an integer (a shape, stride, offset, size or scalar) made interesting
      const ints = intOps(ops);
      if (!ints.length) break;
      const o = rng.pick(ints);
      out = splice(o.at, o.end, encodeInt(rng.pick(SIZES) + BigInt(rng.range(-1, 1))));
      break;
    }
    case 2: {
      // an opcode dropped, repeated, or one inserted
      const o = rng.pick(ops);
      if (rng.chance(0.4)) out = splice(o.at, o.end, new Uint8Array());
      else if (rng.chance(0.5)) out = splice(o.at, o.at, pkl.subarray(o.at, o.end));
      else
        out = splice(
          o.at,
          o.at,
          Uint8Array.of(
            rng.pick([
              0x28, 0x30, 0x31, 0x32, 0x4e, 0x29, 0x5d, 0x7d, 0x74, 0x52, 0x62, 0x51, 0x61, 0x73, 0x75, 0x2e, 0x94,
              0x8f, 0x91,
            ]),
          ),
        );
      break;
    }
    case 3: {
      // a global swapped for another, allowed or not
      const globals = ops.filter((o) => o.op === 0x63);
      if (!globals.length) break;
      const o = rng.pick(globals);
      const [m, n] = rng.pick(GLOBALS);
      out = splice(o.at, o.end, Uint8Array.from(Buffer.from(`c${m}\n${n}\n`, "latin1")));
      break;
    }
    case 4: {
      // a short string (storage key, location, tensor name) changed
      const strs = ops.filter((o) => o.op === 0x8c || o.op === 0x58);
      if (!strs.length) break;
      const o = rng.pick(strs);
      const s = rng.pick(["", "1", "99", "cuda:0", "storage", "__proto__", "é", "x".repeat(300)]);
      const b = Buffer.from(s, "utf8");
      out = splice(
        o.at,
        o.end,
        b.length < 256
          ? Uint8Array.of(0x8c, b.length, ...b)
          : concat(Uint8Array.of(0x58, b.length & 0xff, b.length >> 8, 0, 0), b),
      );
      break;
    }
    case 5: // cut short, or stray bytes after STOP
      out = rng.chance(0.5) ? pkl.slice(0, rng.int(pkl.length)) : concat(pkl, rng.bytes(rng.range(1, 8)));
      break;
    default:
      out = mutateBytes(rng, pkl, { maxLength: pkl.length + 256 });
  }
  return out;
}

/** A state dict of one tensor whose view needs far more memory than its storage holds. */
function strideCase(rng: Rng, o: TargetOptions): Archive {
  const n = costly(rng, o, 0.001) ? rng.pick([100_000_000, 300_000_000]) : rng.pick([1000, 1_000_000]);
  const t = rng.pick([
    spec("zero_stride", "FloatStorage", 1, [n], [0]),
    spec("zero_stride_2d", "FloatStorage", 1, [n, n], [0, 0]),
    spec("enormous", "FloatStorage", 1, [1e6, 1e6, 1e6], [0, 0, 0]),
    spec("long_shape", "FloatStorage", 4, [2 ** 40], [1]),
    spec("zero_dim", "FloatStorage", 4, [0, 2 ** 52, 2 ** 52], [1, 1, 1]),
    spec("far_offset", "FloatStorage", 4, [2], [1], 2 ** 52),
    spec("big_storage", "FloatStorage", 2 ** 40, [4], [1]),
    spec("many_dims", "FloatStorage", 1, new Array(rng.pick([64, 1000])).fill(1), new Array(64).fill(1)),
  ]);
  if (t.name === "many_dims") t.stride = new Array(t.shape.length).fill(1);
  const storage = new Uint8Array(Math.min(t.numel, 16) * 4);
  return archive(wideStateDict([t]), new Map([[t.key, storage]]));
}

/** A storage that inflates from little: honest (its size in the directory) or lying about it. */
function bombCase(rng: Rng, o: TargetOptions): Archive {
  const size = costly(rng, o, 0.003) ? rng.pick([256 << 20, 1.25 * 2 ** 30]) : rng.pick([1 << 20, 8 << 20]);
  const z = zeros(size);
  const lie = rng.int(3); // 0 honest, 1 directory says less, 2 directory says more
  const declared = lie === 0 ? size : lie === 1 ? 1024 : Math.min(2 ** 32 - 4, size * 4);
  const t = spec("bomb", "FloatStorage", declared / 4, [declared / 4], [1]);
  const a = archive(stateDictPickle([t]), new Map());
  a.members.splice(1, 0, {
    name: "archive/data/bomb",
    data: new Uint8Array(),
    deflate: true,
    raw: { ...z, size: declared },
  });
  return a;
}

function mutateArchive(rng: Rng, a: Archive, o: TargetOptions): Archive {
  const members = a.members.map((m) => ({ ...m }));
  const pkl = members.find((m) => m.name.endsWith("data.pkl"));
  const storages = members.filter((m) => m.name.includes("/data/"));
  switch (rng.int(10)) {
    case 0:
    case 1:
    case 2:
    case 3:
      if (pkl) pkl.data = mutatePickle(rng, pkl.data);
      break;
    case 4: {
      // a storage cut short, grown, emptied, or a bool byte that is not 0/1
      const s = storages.length ? rng.pick(storages) : undefined;
      if (!s || s.raw) break;
      const k = rng.int(4);
      if (k === 0) s.data = s.data.slice(0, rng.int(s.data.length));
      else if (k === 1) s.data = concat(s.data, rng.bytes(rng.range(1, 9)));
      else if (k === 2) s.data = new Uint8Array();
      else if (s.data.length) s.data = Uint8Array.from(s.data, (b, i) => (i === 0 ? 2 : b));
      break;
    }
    case 5: {
      // members: one dropped, a second data.pkl, a byte order, a duplicate name, another prefix
      const k = rng.int(5);
      if (k === 0 && members.length > 1) members.splice(rng.int(members.length), 1);
      else if (k === 1 && pkl) members.push({ ...pkl, name: "other/data.pkl" });
      else if (k === 2)
        members.push({
          name: "archive/byteorder",
          data: Buffer.from(rng.pick(["big", "little", "little\n", "\u00ff"])),
          deflate: false,
        });
      else if (k === 3) members.push({ ...rng.pick(members) });
      else for (const m of members) m.name = m.name.replace(/^[^/]*\//, rng.pick(["", "a/b/", "x/"]));
      break;
    }
    case 6:
      for (const m of members) if (!m.raw) m.deflate = rng.chance(0.5);
      return { members, zip64: !a.zip64 };
    case 7:
    case 8:
      return strideCase(rng, o);
    default:
      if (rng.chance(0.3)) return bombCase(rng, o);
      if (pkl) pkl.data = mutatePickle(rng, pkl.data);
  }
  return { members, zip64: a.zip64 };
}

export function ckptTarget(o: TargetOptions): Target<CkptCase> {
  const scratch = join(o.dir, "case.ckpt");
  const archives = new WeakMap<Uint8Array, Archive | null>();
  /** The members of a seed that is a zip (read once, with the reader itself: seeds are valid files). */
  const archiveOf = (bytes: Uint8Array): Archive | null => {
    if (archives.has(bytes)) return archives.get(bytes)!;
    let a: Archive | null = null;
    try {
      writeFileSync(scratch, bytes);
      const z = ZipFile.open(scratch);
      try {
        a = {
          members: z
            .entries()
            .map((e) => ({ name: e.name, data: Uint8Array.from(z.read(e)), deflate: e.method === 8 })),
          zip64: false,
        };
      } finally {
        z.close();
      }
    } catch {
      a = null; // the legacy format, or a broken seed
    }
    archives.set(bytes, a);
    return a;
  };
  return {
    name: "ckpt",
    hasReference: false,
    isOwnError: (e) => e instanceof CkptError || e instanceof ZipError || e instanceof PickleError,
    seeds() {
      const zip = (a: Archive) => zipWithFields(a.members, a.zip64).bytes;
      const built = [
        zip(archive(stateDictPickle(SPECS), storageBytes(SPECS))),
        zip(archive(stateDictPickle(SPECS), storageBytes(SPECS), { deflate: true })),
        zip(archive(stateDictPickle(SPECS.slice(0, 3)), storageBytes(SPECS.slice(0, 3)), { zip64: true })),
        zip(
          archive(
            stateDictPickle(SPECS.slice(3, 5), { lightning: { epoch: 3, global_step: 1200 } }),
            storageBytes(SPECS.slice(3, 5)),
          ),
        ),
      ];
      const files = [
        repoFixture("ckpt_plain_legacy.pt"),
        repoFixture("ckpt_lightning_zip.ckpt"),
        ...existingFiles(o, [
          "fixtures/adapters/a1111_embedding.pt",
          "realworld/sd1/cloneofsimo_kiriko2_ti_dict.pt",
          "realworld/sd1/diffusers_ti_learned_embeds_styled_image.bin",
          "realworld/sd1/a1111_ti_bad-hands-5_2vec.pt",
          "realworld/broken/a1111_test_empty_dict.pt",
          "realworld/broken/easynegative_utf8_mangled_zip.pt",
        ]),
      ].map((p) => new Uint8Array(readFileSync(p)));
      return [...built, ...files].map((bytes, i) => ({ bytes, api: i % 2 ? "loadCkpt" : "loadTorchFile" }));
    },
    generate(rng, seeds) {
      const base = rng.pick(seeds);
      const a = archiveOf(base.bytes);
      let bytes: Uint8Array;
      if (a) {
        const { bytes: b, fields } = zipWithFields(mutateArchive(rng, a, o).members, a.zip64 !== rng.chance(0.1));
        bytes = b;
        if (rng.chance(0.25)) {
          // the zip's own fields, after the CRCs are right
          for (let k = rng.count(3); k > 0; k--) {
            const f = rng.pick(fields);
            if (f.what.includes("method")) bytes[f.at] = rng.pick([1, 6, 9, 12, 14, 93, 99]);
            else if (f.what.includes("flags")) bytes[f.at] |= rng.pick([1, 8, 0x40]);
            else editIntField(rng, bytes, f.at, f.width, true);
          }
        }
      } else bytes = mutatePickle(rng, base.bytes, 5); // legacy: several pickles, then raw storages
      if (rng.chance(0.15))
        bytes = mutateBytes(rng, bytes, { others: seeds.map((s) => s.bytes), maxLength: bytes.length + 1024 });
      return { bytes, api: rng.chance(0.5) ? "loadCkpt" : "loadTorchFile" };
    },
    run(c) {
      writeFileSync(scratch, c.bytes);
      if (c.api === "loadCkpt") {
        const { tensors } = loadCkpt(scratch);
        for (const t of tensors.values()) t.dispose();
      } else disposeAll(loadTorchFile(scratch));
      return { accepted: true };
    },
    toBytes: (c) => c.bytes,
  };
}
