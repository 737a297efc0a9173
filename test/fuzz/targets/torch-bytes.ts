// Byte-level knowledge the torch-file fuzzer needs: where each pickle opcode
// starts and ends (CPython Lib/pickletools.py, the argument of every opcode),
// integers encoded as the smallest opcode that holds them, and a zip writer
// that says where every size, method and offset field sits (PKWARE
// APPNOTE.TXT §4.3), so those can be edited after the CRCs are right.
import { deflateRawSync } from "node:zlib";
import { crc32 } from "../../../src/formats/zip.js";
import { PickleWriter, type TensorSpec, writeTensor } from "../../formats/torch-builder.js";
import { concat } from "../harness.js";

export interface Op {
  op: number;
  at: number;
  end: number;
}

type Arg = "none" | 1 | 2 | 4 | 8 | "line" | "lines2" | "len1" | "len4" | "len8";

const ARGS = new Map<number, Arg>();
const set = (arg: Arg, ops: string) => {
  for (const c of ops) ARGS.set(c.charCodeAt(0), arg);
};
set("none", "(.012N)t]laeu}dsRbQo");
set("none", "\x85\x86\x87\x88\x89\x8f\x90\x91\x94\x93\x81\x92\x97\x98");
set(1, "Kqh\x80\x82");
set(2, "M\x83");
set(4, "Jrj\x84");
set(8, "\x95G");
set("line", "ILFVSpgP");
set("lines2", "ci");
set("len1", "\x8cUC\x8a");
set("len4", "TXB\x8b");
set("len8", "\x8d\x8e\x96");

/** The opcodes of the pickles from `start` on (several in a row, as a legacy torch file has), until one does not parse. */
export function walkPickles(data: Uint8Array, start = 0, maxPickles = 1): Op[] {
  const ops: Op[] = [];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = start;
  let pickles = 0;
  while (pos < data.length && pickles < maxPickles) {
    const at = pos;
    const op = data[pos++];
    const arg = ARGS.get(op);
    if (arg === undefined) break;
    const line = () => {
      const nl = data.indexOf(0x0a, pos);
      if (nl < 0) return false;
      pos = nl + 1;
      return true;
    };
    let ok = true;
    if (typeof arg === "number") pos += arg;
    else if (arg === "line") ok = line();
    else if (arg === "lines2") ok = line() && line();
    else if (arg === "len1") pos = pos + 1 + (data[pos] ?? 0);
    else if (arg === "len4") pos = pos + 4 + (pos + 4 <= data.length ? view.getUint32(pos, true) : 0);
    else if (arg === "len8") pos = pos + 8 + (pos + 8 <= data.length ? Number(view.getBigUint64(pos, true)) : 0);
    if (!ok || pos > data.length) break;
    ops.push({ op, at, end: pos });
    if (op === 0x2e) pickles++;
  }
  return ops;
}

/** The integer opcodes (BININT1, BININT2, BININT, LONG1) among `ops`. */
export const intOps = (ops: readonly Op[]) =>
  ops.filter((o) => o.op === 0x4b || o.op === 0x4d || o.op === 0x4a || o.op === 0x8a);

/** An integer as the smallest opcode that holds it. */
export function encodeInt(v: bigint): Uint8Array {
  if (v >= 0n && v < 256n) return Uint8Array.of(0x4b, Number(v));
  if (v >= 0n && v < 65536n) return Uint8Array.of(0x4d, Number(v & 0xffn), Number(v >> 8n));
  if (v >= -(2n ** 31n) && v < 2n ** 31n) {
    const b = Buffer.alloc(5);
    b[0] = 0x4a;
    b.writeInt32LE(Number(v), 1);
    return b;
  }
  const out: number[] = [];
  let x = v;
  while (x !== 0n && x !== -1n) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
  }
  const last = out[out.length - 1] ?? 0;
  if (v > 0n && last & 0x80) out.push(0);
  if (v < 0n && !(last & 0x80)) out.push(0xff);
  return Uint8Array.of(0x8a, out.length, ...out);
}

/** A pickle writer whose ints go past 32 bits (LONG1), for shapes, strides and sizes that large. */
export class WidePickleWriter extends PickleWriter {
  override int(n: number): this {
    return this.raw(...encodeInt(BigInt(n)));
  }
}

/** An OrderedDict state dict of tensors, with any int sizes (torch-builder's stateDictPickle, widened). */
export function wideStateDict(tensors: readonly TensorSpec[]): Uint8Array {
  const w = new WidePickleWriter().proto(2);
  w.global("collections", "OrderedDict").emptyTuple().reduce();
  if (tensors.length) {
    w.mark();
    for (const t of tensors) {
      w.str(t.name);
      writeTensor(w, t);
    }
    w.setitems();
  }
  return w.stop().bytes();
}

// ---- zip ------------------------------------------------------------------------------

export interface ZipMember {
  name: string;
  data: Uint8Array;
  deflate: boolean;
  /** Already-compressed bytes to store as this member's data (a zip bomb's), with `data` unused. */
  raw?: { compressed: Uint8Array; size: number; crc: number };
}

/** A field to edit: where it is and how wide (little-endian). */
export interface Field {
  at: number;
  width: number;
  what: string;
}

export function zipWithFields(members: readonly ZipMember[], zip64 = false): { bytes: Uint8Array; fields: Field[] } {
  const parts: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  const fields: Field[] = [];
  const centralFields: Field[] = [];
  let offset = 0;
  for (const m of members) {
    const name = Buffer.from(m.name, "utf8");
    const body = m.raw ? m.raw.compressed : m.deflate ? deflateRawSync(m.data) : m.data;
    const size = m.raw ? m.raw.size : m.data.length;
    const crc = m.raw ? m.raw.crc : crc32(m.data);
    const method = m.deflate || m.raw ? 8 : 0;
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(body.length, 18);
    lh.writeUInt32LE(size, 22);
    lh.writeUInt16LE(name.length, 26);
    for (const [at, width, what] of [
      [6, 2, "flags"],
      [8, 2, "method"],
      [18, 4, "csize"],
      [22, 4, "usize"],
      [26, 2, "name length"],
      [28, 2, "extra length"],
    ] as const) {
      fields.push({ at: offset + at, width, what: `local ${what} of ${m.name}` });
    }
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(45, 4);
    ch.writeUInt16LE(45, 6);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(zip64 ? 0xffffffff : body.length, 20);
    ch.writeUInt32LE(zip64 ? 0xffffffff : size, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(zip64 ? 0xffffffff : offset, 42);
    const extra = Buffer.alloc(zip64 ? 28 : 0);
    if (zip64) {
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(size), 4);
      extra.writeBigUInt64LE(BigInt(body.length), 12);
      extra.writeBigUInt64LE(BigInt(offset), 20);
      ch.writeUInt16LE(extra.length, 30);
    }
    const cdAt = centrals.reduce((a, c) => a + c.length, 0);
    for (const [at, width, what] of [
      [8, 2, "flags"],
      [10, 2, "method"],
      [16, 4, "crc"],
      [20, 4, "csize"],
      [24, 4, "usize"],
      [28, 2, "name length"],
      [30, 2, "extra length"],
      [32, 2, "comment length"],
      [42, 4, "offset"],
      ...(zip64
        ? ([
            [50, 8, "zip64 usize"],
            [58, 8, "zip64 csize"],
            [66, 8, "zip64 offset"],
          ] as const)
        : []),
    ] as const) {
      // Central offsets are relative to the directory's start until it is placed.
      centralFields.push({
        at: cdAt + (at >= 46 ? at + name.length : at),
        width,
        what: `central ${what} of ${m.name}`,
      });
    }
    parts.push(lh, name, body);
    centrals.push(ch, name, extra);
    offset += 30 + name.length + body.length;
  }
  const cd = concat(...centrals);
  for (const f of centralFields) fields.push({ ...f, at: f.at + offset });
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(zip64 ? 0xffff : members.length, 8);
  end.writeUInt16LE(zip64 ? 0xffff : members.length, 10);
  end.writeUInt32LE(zip64 ? 0xffffffff : cd.length, 12);
  end.writeUInt32LE(zip64 ? 0xffffffff : offset, 16);
  const tail: Uint8Array[] = [];
  let at = offset + cd.length;
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeBigUInt64LE(BigInt(members.length), 24);
    rec.writeBigUInt64LE(BigInt(members.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(offset), 48);
    for (const [o, what] of [
      [32, "count"],
      [40, "size"],
      [48, "offset"],
    ] as const) {
      fields.push({ at: at + o, width: 8, what: `zip64 directory ${what}` });
    }
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(at), 8);
    loc.writeUInt32LE(1, 16);
    fields.push({ at: at + 56 + 8, width: 8, what: "zip64 locator offset" });
    tail.push(rec, loc);
    at += 76;
  }
  for (const [o, width, what] of [
    [4, 2, "disk"],
    [8, 2, "disk count"],
    [10, 2, "count"],
    [12, 4, "directory size"],
    [16, 4, "directory offset"],
    [20, 2, "comment length"],
  ] as const) {
    fields.push({ at: at + o, width, what: `end record ${what}` });
  }
  return { bytes: concat(...parts, cd, ...tail, end), fields };
}
