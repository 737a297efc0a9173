// A safe writer of PyTorch `.pt` files: the zip layout `torch.load` reads
// (pytorch/pytorch torch/serialization.py `_save`: `<prefix>/data.pkl`,
// `<prefix>/data/<key>` storages, `<prefix>/version`), holding only tensors,
// dicts, OrderedDicts, lists, tuples, strings, numbers, booleans and None.
// The pickle (protocol 2, opcodes from CPython Lib/pickletools.py) names only
// globals that AUTOMATIC1111's restricted unpickler accepts
// (AUTOMATIC1111/stable-diffusion-webui modules/safe.py `find_class`:
// collections.OrderedDict, torch._utils._rebuild_tensor_v2 and seven storage
// types) and only the zip entry names its `allowed_zip_names_re` admits, so
// A1111 loads what Atelier writes. Meant for small files (embeddings,
// hypernetworks): the whole file is built in memory, then written atomically.
import { type DType, isContiguous, type Tensor } from "../engine/index.js";
import { writeAll, writeFileAtomic } from "./atomic-write.js";
import { crc32 } from "./zip.js";

export class PtWriteError extends Error {
  override name = "PtWriteError";
}

/** A Python float (a JS number is written as an int when it is an integer). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** A Python tuple (a JS array is written as a list). */
export class PyTuple {
  constructor(readonly items: readonly PtValue[]) {}
}

/** A `collections.OrderedDict` (a Map or a plain object is written as a dict). */
export class PyOrderedDict {
  constructor(readonly entries: ReadonlyMap<PtKey, PtValue>) {}
}

/** A tensor saved with `requires_grad` set, as a trained embedding is. */
export class PtTensor {
  constructor(
    readonly tensor: Tensor,
    readonly requiresGrad = false,
  ) {}
}

/**
 * A `torch.nn.ParameterDict` pickled as Python pickles a module (GLOBAL,
 * NEWOBJ, then BUILD with its `__dict__`): what the LDM textual_inversion
 * repo's EmbeddingManager.save writes as `string_to_param`. ParameterDict is
 * the one module class A1111's modules/safe.py allows.
 */
export class PyParameterDict {
  constructor(readonly state: ReadonlyMap<PtKey, PtValue>) {}
}

export type PtKey = string | number;
export type PtValue =
  | Tensor
  | PtTensor
  | PyFloat
  | PyTuple
  | PyOrderedDict
  | PyParameterDict
  | ReadonlyMap<PtKey, PtValue>
  | readonly PtValue[]
  | { readonly [key: string]: PtValue }
  | string
  | number
  | bigint
  | boolean
  | null;

/** Storage classes of the dtypes A1111's allow-list has (modules/safe.py); others are refused. */
const STORAGE_OF: Partial<Record<DType, string>> = {
  float32: "FloatStorage",
  float16: "HalfStorage",
  bfloat16: "BFloat16Storage",
  float64: "DoubleStorage",
  int64: "LongStorage",
  int32: "IntStorage",
  uint8: "ByteStorage",
};

/** The globals a written pickle may name: a subset of A1111's modules/safe.py allow-list. */
export const WRITTEN_GLOBALS: readonly string[] = [
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch.nn.modules.container.ParameterDict",
  ...Object.values(STORAGE_OF).map((s) => `torch.${s}`),
];

function isTensor(v: unknown): v is Tensor {
  return (
    typeof v === "object" && v !== null && typeof (v as Tensor).withBytes === "function" && "dtype" in (v as object)
  );
}

/** Pickle protocol 2 opcodes, built into one byte array. */
class PickleOut {
  readonly #chunks: Buffer[] = [];
  readonly #globals = new Map<string, number>();
  #memo = 0;

  op(...bytes: number[]): void {
    this.#chunks.push(Buffer.from(bytes));
  }
  raw(b: Buffer): void {
    this.#chunks.push(b);
  }
  /** GLOBAL, memoised (BINPUT / BINGET) as Python's pickler does. */
  global(module: string, name: string) {
    const q = `${module}.${name}`;
    const at = this.#globals.get(q);
    if (at !== undefined) return this.#get(at);
    this.op(0x63);
    this.raw(Buffer.from(`${module}\n${name}\n`, "latin1"));
    this.#globals.set(q, this.#put());
  }
  #put(): number {
    const i = this.#memo++;
    if (i < 256) this.op(0x71, i);
    else {
      const b = Buffer.alloc(5);
      b[0] = 0x72;
      b.writeUInt32LE(i, 1);
      this.raw(b);
    }
    return i;
  }
  #get(i: number): void {
    if (i < 256) this.op(0x68, i);
    else {
      const b = Buffer.alloc(5);
      b[0] = 0x6a;
      b.writeUInt32LE(i, 1);
      this.raw(b);
    }
  }
  int(n: number | bigint) {
    if (typeof n === "number" && n >= 0 && n < 256) return this.op(0x4b, n);
    if (typeof n === "number" && n >= 0 && n < 65536) return this.op(0x4d, n & 0xff, n >> 8);
    if (typeof n === "number" && n >= -(2 ** 31) && n < 2 ** 31) {
      const b = Buffer.alloc(5);
      b[0] = 0x4a;
      b.writeInt32LE(n, 1);
      return this.raw(b);
    }
    // LONG1: little-endian two's complement, as few bytes as hold the sign.
    let v = BigInt(n);
    const bytes: number[] = [];
    while (true) {
      const byte = Number(v & 0xffn);
      bytes.push(byte);
      v >>= 8n;
      if ((v === 0n && (byte & 0x80) === 0) || (v === -1n && (byte & 0x80) !== 0)) break;
    }
    this.op(0x8a, bytes.length, ...bytes);
  }
  float(x: number): void {
    const b = Buffer.alloc(9);
    b[0] = 0x47; // BINFLOAT: big-endian IEEE double
    b.writeDoubleBE(x, 1);
    this.raw(b);
  }
  str(s: string): void {
    const body = Buffer.from(s, "utf8");
    const head = Buffer.alloc(5);
    head[0] = 0x58; // BINUNICODE
    head.writeUInt32LE(body.length, 1);
    this.raw(head);
    this.raw(body);
  }
  bytes(): Buffer {
    return Buffer.concat(this.#chunks);
  }
}

interface Storage {
  key: string;
  bytes: Uint8Array;
}

/** Serialises the object tree; tensors become storages, each its own (contiguous CPU copy). */
function pickleTree(root: PtValue, path: string): { pkl: Buffer; storages: Storage[] } {
  const p = new PickleOut();
  const storages: Storage[] = [];
  const active = new Set<object>();
  p.op(0x80, 2); // PROTO 2

  const tensor = (t: Tensor, requiresGrad: boolean, where: string) => {
    const storage = STORAGE_OF[t.dtype];
    if (!storage)
      throw new PtWriteError(
        `${path}: ${where}: dtype ${t.dtype} has no storage type that AUTOMATIC1111's safe loader accepts (${Object.keys(STORAGE_OF).join(", ")})`,
      );
    let src = t.device === "cpu" ? t : t.cpu();
    if (!isContiguous(src)) {
      const c = src.contiguous();
      if (src !== t) src.dispose();
      src = c;
    }
    const bytes = src.numel === 0 ? new Uint8Array(0) : src.withBytes((b) => b.slice());
    if (src !== t) src.dispose();
    const key = String(storages.length);
    storages.push({ key, bytes });
    const shape = [...t.shape];
    const stride = shape.map((_, i) => shape.slice(i + 1).reduce((a, d) => a * d, 1));
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks), as torch pickles a tensor.
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(0x28); // MARK
    p.op(0x28);
    p.str("storage");
    p.global("torch", storage);
    p.str(key);
    p.str("cpu");
    p.int(t.numel);
    p.op(0x74, 0x51); // TUPLE, BINPERSID
    p.int(0);
    tuple(shape.map((d) => () => p.int(d)));
    tuple(stride.map((d) => () => p.int(d)));
    p.op(requiresGrad ? 0x88 : 0x89);
    p.global("collections", "OrderedDict");
    p.op(0x29, 0x52); // EMPTY_TUPLE, REDUCE: an empty OrderedDict of backward hooks
    p.op(0x74, 0x52); // TUPLE, REDUCE
  };

  const tuple = (items: (() => void)[]) => {
    if (items.length === 0) return p.op(0x29);
    p.op(0x28);
    for (const f of items) f();
    p.op(0x74);
  };

  const dictItems = (entries: Iterable<[PtKey, PtValue]>, where: string) => {
    const list = [...entries];
    if (list.length === 0) return;
    p.op(0x28);
    for (const [k, v] of list) {
      if (typeof k === "string") p.str(k);
      else if (Number.isSafeInteger(k)) p.int(k);
      else throw new PtWriteError(`${path}: ${where}: dict key ${String(k)} is neither a string nor an integer`);
      value(v, `${where}[${JSON.stringify(k)}]`);
    }
    p.op(0x75); // SETITEMS
  };

  const value = (v: PtValue, where: string) => {
    if (v === null) return p.op(0x4e);
    if (typeof v === "boolean") return p.op(v ? 0x88 : 0x89);
    if (typeof v === "string") return p.str(v);
    if (typeof v === "bigint") return p.int(v);
    if (typeof v === "number") {
      if (Number.isInteger(v) && !Object.is(v, -0)) {
        if (!Number.isSafeInteger(v))
          throw new PtWriteError(`${path}: ${where}: ${v} is past 2^53; pass integers that large as bigint`);
        return p.int(v);
      }
      return p.float(v);
    }
    if (v instanceof PyFloat) return p.float(v.value);
    if (v instanceof PtTensor) return tensor(v.tensor, v.requiresGrad, where);
    if (isTensor(v)) return tensor(v, false, where);
    if (typeof v !== "object") throw new PtWriteError(`${path}: ${where}: cannot write a ${typeof v}`);
    if (active.has(v)) throw new PtWriteError(`${path}: ${where}: the value contains itself`);
    active.add(v);
    try {
      if (v instanceof PyTuple) tuple(v.items.map((x, i) => () => value(x, `${where}[${i}]`)));
      else if (Array.isArray(v)) {
        p.op(0x5d); // EMPTY_LIST
        if (v.length > 0) {
          p.op(0x28);
          for (const [i, x] of (v as readonly PtValue[]).entries()) value(x, `${where}[${i}]`);
          p.op(0x65); // APPENDS
        }
      } else if (v instanceof PyOrderedDict) {
        p.global("collections", "OrderedDict");
        p.op(0x29, 0x52);
        dictItems(v.entries, where);
      } else if (v instanceof PyParameterDict) {
        p.global("torch.nn.modules.container", "ParameterDict");
        p.op(0x29, 0x81); // EMPTY_TUPLE, NEWOBJ
        p.op(0x7d); // the module's __dict__
        dictItems(v.state, where);
        p.op(0x62); // BUILD
      } else if (v instanceof Map) {
        p.op(0x7d); // EMPTY_DICT
        dictItems(v, where);
      } else if (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null) {
        p.op(0x7d);
        dictItems(Object.entries(v as Record<string, PtValue>), where);
      } else throw new PtWriteError(`${path}: ${where}: cannot write a ${(v as object).constructor.name}`);
    } finally {
      active.delete(v);
    }
  };

  value(root, "root");
  p.op(0x2e); // STOP
  return { pkl: p.bytes(), storages };
}

interface ZipItem {
  name: string;
  data: Uint8Array;
}

// Data starts on 64-byte boundaries, as torch's writer pads them (caffe2 serialize/inline_container.cc, kFieldAlignment).
const ALIGN = 64;

/** A STORED zip (PKWARE APPNOTE.TXT §4.3), no ZIP64: these files are small. */
function zipBytes(path: string, items: ZipItem[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const it of items) {
    const name = Buffer.from(it.name, "utf8");
    const crc = crc32(it.data);
    const bare = offset + 30 + name.length;
    // A padding extra field (id 'FB', as torch writes) moves the data to the next boundary.
    let pad = (ALIGN - (bare % ALIGN)) % ALIGN;
    if (pad > 0 && pad < 4) pad += ALIGN;
    const extra = Buffer.alloc(pad);
    if (pad > 0) {
      extra.writeUInt16LE(0x4246, 0);
      extra.writeUInt16LE(pad - 4, 2);
      extra.fill(0x5a, 4);
    }
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(it.data.byteLength, 18);
    lh.writeUInt32LE(it.data.byteLength, 22);
    lh.writeUInt16LE(name.length, 26);
    lh.writeUInt16LE(pad, 28);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(it.data.byteLength, 20);
    ch.writeUInt32LE(it.data.byteLength, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(offset, 42);
    parts.push(lh, name, extra, Buffer.from(it.data.buffer, it.data.byteOffset, it.data.byteLength));
    central.push(ch, name);
    offset += 30 + name.length + pad + it.data.byteLength;
    if (offset > 0xfffffff0) throw new PtWriteError(`${path}: more than 4 GiB: too large for this writer`);
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(items.length, 8);
  end.writeUInt16LE(items.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

/** The archive folder torch 1.13 uses (the file's stem), kept to characters A1111's zip-name check admits. */
export function archivePrefix(path: string): string {
  const base = path.split(/[\\/]/).pop() ?? "";
  const stem = base.includes(".") ? base.slice(0, base.lastIndexOf(".")) : base;
  const clean = stem.replace(/[^A-Za-z0-9_.-]/g, "_");
  return clean.length > 0 && clean !== "." && clean !== ".." ? clean : "archive";
}

/** The bytes of a `.pt` file holding `value` (nothing is written). */
export function ptBytes(value: PtValue, path = "archive.pt"): Buffer {
  const { pkl, storages } = pickleTree(value, path);
  const prefix = archivePrefix(path);
  const items: ZipItem[] = [{ name: `${prefix}/data.pkl`, data: pkl }];
  for (const s of storages) items.push({ name: `${prefix}/data/${s.key}`, data: s.bytes });
  items.push({ name: `${prefix}/version`, data: Buffer.from("3\n") });
  return zipBytes(path, items);
}

/**
 * Writes `value` to `path` as torch.save would, atomically. Every value is
 * checked (and the whole file built) before anything is written.
 */
export function savePt(path: string, value: PtValue): void {
  const bytes = ptBytes(value, path);
  writeFileAtomic(path, (fd) => writeAll(fd, bytes));
}
