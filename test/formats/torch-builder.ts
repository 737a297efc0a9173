// Test helper: writes pickles and PyTorch zip archives byte by byte, so tests
// need no Python. Opcodes: CPython Lib/pickletools.py; archive layout:
// torch/serialization.py `_save`.
import { deflateRawSync } from "node:zlib";
import { crc32 } from "../../src/formats/zip.js";

/** A pickle written opcode by opcode. */
export class PickleWriter {
  readonly #parts: number[] = [];

  raw(...bytes: number[]): this {
    this.#parts.push(...bytes);
    return this;
  }
  proto(n = 2): this {
    return this.raw(0x80, n);
  }
  mark(): this {
    return this.raw(0x28);
  }
  stop(): this {
    return this.raw(0x2e);
  }
  none(): this {
    return this.raw(0x4e);
  }
  bool(v: boolean): this {
    return this.raw(v ? 0x88 : 0x89);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    if (n >= 0 && n < 65536) return this.raw(0x4d, n & 0xff, n >> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) {
      const b = Buffer.alloc(4);
      b.writeInt32LE(n);
      return this.raw(0x4a, ...b);
    }
    // LONG1: little-endian two's complement, 8 bytes here.
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(BigInt(n));
    return this.raw(0x8a, 8, ...b);
  }
  str(s: string): this {
    const b = Buffer.from(s, "utf8");
    if (b.length < 256) return this.raw(0x8c, b.length, ...b);
    const n = Buffer.alloc(4);
    n.writeUInt32LE(b.length);
    return this.raw(0x58, ...n, ...b);
  }
  /** GLOBAL 'module\nname\n'. */
  global(module: string, name: string): this {
    return this.raw(0x63, ...Buffer.from(`${module}\n${name}\n`, "latin1"));
  }
  /** STACK_GLOBAL from two strings. */
  stackGlobal(module: string, name: string): this {
    return this.str(module).str(name).raw(0x93);
  }
  tuple(): this {
    return this.raw(0x74);
  }
  emptyTuple(): this {
    return this.raw(0x29);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  emptyList(): this {
    return this.raw(0x5d);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  setitems(): this {
    return this.raw(0x75);
  }
  appends(): this {
    return this.raw(0x65);
  }
  binpersid(): this {
    return this.raw(0x51);
  }
  put(i: number): this {
    return this.raw(0x71, i);
  }
  get(i: number): this {
    return this.raw(0x68, i);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.#parts);
  }
}

export interface TensorSpec {
  name: string;
  /** Storage key, e.g. "0"; tensors may share one. */
  key: string;
  /** torch storage class name: FloatStorage, HalfStorage, … */
  storage: string;
  /** Elements in the storage. */
  numel: number;
  offset: number;
  shape: number[];
  stride: number[];
}

/** Writes one `_rebuild_tensor_v2(...)` call onto the pickle (memoising storage type globals is not needed). */
export function writeTensor(w: PickleWriter, t: TensorSpec): void {
  w.global("torch._utils", "_rebuild_tensor_v2").mark();
  w.mark().str("storage").global("torch", t.storage).str(t.key).str("cpu").int(t.numel).tuple().binpersid();
  w.int(t.offset);
  w.mark();
  for (const d of t.shape) w.int(d);
  w.tuple();
  w.mark();
  for (const s of t.stride) w.int(s);
  w.tuple();
  w.bool(false);
  w.global("collections", "OrderedDict").emptyTuple().reduce();
  w.tuple().reduce();
}

/** A state-dict pickle (an OrderedDict of tensors, then `extra` scalar entries), optionally nested under `state_dict`. */
export function stateDictPickle(
  tensors: TensorSpec[],
  o: { lightning?: Record<string, number | string> } = {},
): Uint8Array {
  const w = new PickleWriter().proto(2);
  if (o.lightning) {
    w.emptyDict().mark();
    for (const [k, v] of Object.entries(o.lightning)) {
      w.str(k);
      if (typeof v === "number") w.int(v);
      else w.str(v);
    }
    w.str("state_dict");
  }
  w.global("collections", "OrderedDict").emptyTuple().reduce();
  if (tensors.length > 0) {
    w.mark();
    for (const t of tensors) {
      w.str(t.name);
      writeTensor(w, t);
    }
    w.setitems();
  }
  if (o.lightning) w.setitems();
  return w.stop().bytes();
}

export interface ZipItem {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
  /** The uncompressed size the directory declares, when it should lie (zip bombs); ZIP64 past 4 GiB. */
  declaredSize?: number;
  /** Write the central record with this local header offset instead of the real one (overlapping entries). */
  declaredOffset?: number;
}

/**
 * A zip archive with STORED or DEFLATE entries. `zip64` writes the sizes and
 * offsets as ZIP64 extra fields and end records, as writers do past 4 GiB.
 */
export function writeZip(items: ZipItem[], o: { zip64?: boolean } = {}): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const it of items) {
    const name = Buffer.from(it.name, "utf8");
    const body = it.deflate ? deflateRawSync(it.data) : Buffer.from(it.data);
    const crc = crc32(it.data);
    const size = it.declaredSize ?? it.data.length;
    const at = it.declaredOffset ?? offset;
    const zip64 = o.zip64 || size > 0xfffffffe;
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(it.deflate ? 8 : 0, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(body.length, 18);
    lh.writeUInt32LE(Math.min(size, 0xffffffff), 22);
    lh.writeUInt16LE(name.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(45, 4);
    ch.writeUInt16LE(45, 6);
    ch.writeUInt16LE(it.deflate ? 8 : 0, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(zip64 ? 0xffffffff : body.length, 20);
    ch.writeUInt32LE(zip64 ? 0xffffffff : size, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(zip64 ? 0xffffffff : at, 42);
    // ZIP64 extended information (APPNOTE 4.5.3): uncompressed size, compressed size, offset.
    const extra = Buffer.alloc(zip64 ? 28 : 0);
    if (zip64) {
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(size), 4);
      extra.writeBigUInt64LE(BigInt(body.length), 12);
      extra.writeBigUInt64LE(BigInt(at), 20);
      ch.writeUInt16LE(extra.length, 30);
    }
    locals.push(lh, name, body);
    centrals.push(ch, name, extra);
    offset += 30 + name.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(o.zip64 ? 0xffff : items.length, 8);
  end.writeUInt16LE(o.zip64 ? 0xffff : items.length, 10);
  end.writeUInt32LE(o.zip64 ? 0xffffffff : cd.length, 12);
  end.writeUInt32LE(o.zip64 ? 0xffffffff : offset, 16);
  if (!o.zip64) return Buffer.concat([...locals, cd, end]);
  const rec = Buffer.alloc(56);
  rec.writeUInt32LE(0x06064b50, 0);
  rec.writeBigUInt64LE(44n, 4);
  rec.writeUInt16LE(45, 12);
  rec.writeUInt16LE(45, 14);
  rec.writeBigUInt64LE(BigInt(items.length), 24);
  rec.writeBigUInt64LE(BigInt(items.length), 32);
  rec.writeBigUInt64LE(BigInt(cd.length), 40);
  rec.writeBigUInt64LE(BigInt(offset), 48);
  const loc = Buffer.alloc(20);
  loc.writeUInt32LE(0x07064b50, 0);
  loc.writeBigUInt64LE(BigInt(offset + cd.length), 8);
  loc.writeUInt32LE(1, 16);
  return Buffer.concat([...locals, cd, rec, loc, end]);
}

/** A PyTorch zip archive: `<prefix>/data.pkl`, `<prefix>/data/<key>` storages, `<prefix>/version`. */
export function torchZip(
  pkl: Uint8Array,
  storages: Map<string, Uint8Array>,
  prefix = "archive",
  o: { zip64?: boolean } = {},
): Buffer {
  const items: ZipItem[] = [{ name: `${prefix}/data.pkl`, data: pkl }];
  for (const [k, v] of storages) items.push({ name: `${prefix}/data/${k}`, data: v });
  items.push({ name: `${prefix}/version`, data: Buffer.from("3\n") });
  return writeZip(items, o);
}

/** The raw little-endian bytes of a typed array. */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}
