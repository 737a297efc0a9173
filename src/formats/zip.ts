// A read-only zip reader for PyTorch archives: central directory (with
// ZIP64), STORED and DEFLATE entries, read by position from an open file so
// that a multi-GB checkpoint is never held in memory at once. Layout: PKWARE
// APPNOTE.TXT §4.3 (local header, central directory, end records).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import * as zlib from "node:zlib";

export class ZipError extends Error {
  override name = "ZipError";
}

export interface ZipEntry {
  readonly name: string;
  /** 0 = stored, 8 = deflate. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly crc32: number;
  readonly localHeaderOffset: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
const CHUNK = 1 << 30;

/**
 * DEFLATE's largest possible expansion: a 258-byte match costs at least 2
 * bits, so no stream inflates to more than 1032 times its size (zlib's
 * technical notes, madler/zlib: "the limit is 1032:1"). An entry declaring
 * more is a zip bomb or corrupt, and is refused before anything is allocated.
 */
export const MAX_DEFLATE_RATIO = 1032;

/**
 * What all of an archive's DEFLATE entries may inflate to together: 64 times
 * the file, and never less than 256 MiB. A legal stream can still reach
 * 1032:1, so a 1 MB file could otherwise ask for a gigabyte. torch.save
 * stores its entries uncompressed; a re-zipped checkpoint of real weights
 * compresses to about 1.1:1, a mostly-zero LoRA stays under the floor.
 */
export const MAX_INFLATED_RATIO = 64;
export const MIN_INFLATED_BUDGET = 256 * 2 ** 20;

/** The most an archive of `fileSize` bytes may inflate to (see MAX_INFLATED_RATIO). */
export function inflatedBudget(fileSize: number): number {
  return Math.max(MIN_INFLATED_BUDGET, fileSize * MAX_INFLATED_RATIO);
}

let crcTable: Uint32Array | undefined;

/** CRC-32 (zlib's when Node has it, ≥ 20.15). */
export function crc32(data: Uint8Array, value = 0): number {
  const native = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (native) return native(data, value);
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ZipError(`${what}: 64-bit field too large (${v})`);
  return Number(v);
}

/** An open zip file. Call close(). */
export class ZipFile {
  readonly path: string;
  readonly size: number;
  #fd: number | undefined;
  readonly #entries = new Map<string, ZipEntry>();

  private constructor(path: string, fd: number, size: number) {
    this.path = path;
    this.#fd = fd;
    this.size = size;
  }

  /** Opens a zip and reads its central directory; throws ZipError if it is not a well-formed zip. */
  static open(path: string): ZipFile {
    const fd = openSync(path, "r");
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new ZipError(`${path}: not a regular file`);
      const z = new ZipFile(path, fd, st.size);
      z.#readDirectory();
      return z;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  entries(): ZipEntry[] {
    return [...this.#entries.values()];
  }

  get(name: string): ZipEntry | undefined {
    return this.#entries.get(name);
  }

  /** Reads `length` bytes at `position` into `into` (at `offset`), or throws at end of file. */
  readAt(into: Uint8Array, position: number, what: string): void {
    if (this.#fd === undefined) throw new ZipError(`${this.path}: file is closed`);
    let done = 0;
    while (done < into.byteLength) {
      const n = readSync(this.#fd, into, done, Math.min(CHUNK, into.byteLength - done), position + done);
      if (n === 0) throw new ZipError(`${this.path}: ${what}: unexpected end of file (truncated?)`);
      done += n;
    }
  }

  /** Where an entry's data begins (after its local header, whose extra field may differ from the central one). */
  dataOffset(e: ZipEntry): number {
    const h = new Uint8Array(30);
    if (e.localHeaderOffset + 30 > this.size)
      throw new ZipError(`${this.path}: entry ${e.name}: local header past end of file`);
    this.readAt(h, e.localHeaderOffset, `local header of ${e.name}`);
    const v = new DataView(h.buffer);
    if (v.getUint32(0, true) !== LOCAL) throw new ZipError(`${this.path}: entry ${e.name}: bad local header signature`);
    const start = e.localHeaderOffset + 30 + v.getUint16(26, true) + v.getUint16(28, true);
    if (start + e.compressedSize > this.size) {
      throw new ZipError(`${this.path}: entry ${e.name}: data runs past the end of the file (truncated?)`);
    }
    return start;
  }

  /** The whole (inflated) content of an entry, CRC-checked; never more than the directory declares. */
  read(e: ZipEntry): Buffer {
    const start = this.dataOffset(e); // checks the data lies in the file before allocating for it
    const raw = Buffer.allocUnsafe(e.compressedSize);
    this.readAt(raw, start, e.name);
    let out: Buffer;
    if (e.method === 0) out = raw;
    else {
      try {
        out = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(e.size, 1) });
      } catch (err) {
        if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
          throw new ZipError(
            `${this.path}: entry ${e.name}: inflates to more than the ${e.size} bytes the directory declares (corrupt or a zip bomb)`,
          );
        }
        throw new ZipError(`${this.path}: entry ${e.name}: corrupt deflate data (${(err as Error).message})`);
      }
    }
    this.#check(e, out);
    return out;
  }

  /**
   * Fills `into` (exactly the entry's size) with the entry's content: a stored
   * entry is read straight into it. The CRC is checked when `verify` is set.
   */
  readInto(e: ZipEntry, into: Uint8Array, verify = true): void {
    if (into.byteLength !== e.size)
      throw new ZipError(`${this.path}: entry ${e.name}: ${e.size} bytes, buffer ${into.byteLength}`);
    if (e.method === 0) {
      this.readAt(into, this.dataOffset(e), e.name);
      if (verify) this.#check(e, into);
    } else {
      into.set(this.read(e));
    }
  }

  close(): void {
    if (this.#fd !== undefined) {
      closeSync(this.#fd);
      this.#fd = undefined;
    }
  }

  #check(e: ZipEntry, data: Uint8Array): void {
    if (data.byteLength !== e.size) {
      throw new ZipError(
        `${this.path}: entry ${e.name}: ${data.byteLength} bytes after inflating, directory says ${e.size}`,
      );
    }
    if (crc32(data) !== e.crc32) throw new ZipError(`${this.path}: entry ${e.name}: CRC mismatch (corrupt data)`);
  }

  #readDirectory(): void {
    const p = this.path;
    if (this.size < 22) throw new ZipError(`${p}: too short to be a zip archive (${this.size} bytes; truncated?)`);
    // The end record is in the last 22 + 65535 (comment) bytes.
    const tailLen = Math.min(this.size, 22 + 0xffff);
    const tail = new Uint8Array(tailLen);
    this.readAt(tail, this.size - tailLen, "end of central directory");
    const tv = new DataView(tail.buffer);
    let at = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === EOCD && i + 22 + tv.getUint16(i + 20, true) <= tailLen) {
        at = i;
        break;
      }
    }
    if (at < 0) throw new ZipError(`${p}: no end-of-central-directory record (truncated or not a zip archive)`);
    const eocdPos = this.size - tailLen + at;
    let count = tv.getUint16(at + 10, true);
    let cdSize = tv.getUint32(at + 12, true);
    let cdOffset = tv.getUint32(at + 16, true);
    if (tv.getUint16(at + 4, true) !== 0 || tv.getUint16(at + 6, true) !== 0)
      throw new ZipError(`${p}: multi-disk archives are not supported`);
    let dirEnd = eocdPos;
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      if (eocdPos < 20) throw new ZipError(`${p}: ZIP64 locator missing`);
      const loc = new Uint8Array(20);
      this.readAt(loc, eocdPos - 20, "ZIP64 locator");
      const lv = new DataView(loc.buffer);
      if (lv.getUint32(0, true) !== ZIP64_LOCATOR) throw new ZipError(`${p}: ZIP64 locator missing`);
      const recPos = u64(lv, 8, p);
      if (recPos + 56 > eocdPos - 20) throw new ZipError(`${p}: bad ZIP64 end record offset`);
      const rec = new Uint8Array(56);
      this.readAt(rec, recPos, "ZIP64 end record");
      const rv = new DataView(rec.buffer);
      if (rv.getUint32(0, true) !== ZIP64_EOCD) throw new ZipError(`${p}: bad ZIP64 end record signature`);
      count = u64(rv, 32, p);
      cdSize = u64(rv, 40, p);
      cdOffset = u64(rv, 48, p);
      dirEnd = recPos;
    }
    if (cdOffset + cdSize > dirEnd || count * 46 > cdSize) {
      throw new ZipError(`${p}: bad offset or size for the central directory (corrupt or truncated archive)`);
    }
    const cd = Buffer.allocUnsafe(cdSize);
    this.readAt(cd, cdOffset, "central directory");
    const v = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    let pos = 0;
    const spans: { name: string; start: number; end: number }[] = [];
    let inflated = 0;
    for (let n = 0; n < count; n++) {
      if (pos + 46 > cdSize || v.getUint32(pos, true) !== CENTRAL) {
        throw new ZipError(`${p}: corrupt central directory (entry ${n} of ${count})`);
      }
      const flags = v.getUint16(pos + 8, true);
      const method = v.getUint16(pos + 10, true);
      const crc = v.getUint32(pos + 16, true);
      let csize = v.getUint32(pos + 20, true);
      let usize = v.getUint32(pos + 24, true);
      const nameLen = v.getUint16(pos + 28, true);
      const extraLen = v.getUint16(pos + 30, true);
      const commentLen = v.getUint16(pos + 32, true);
      let offset = v.getUint32(pos + 42, true);
      const end = pos + 46 + nameLen + extraLen + commentLen;
      if (end > cdSize) throw new ZipError(`${p}: corrupt central directory (entry ${n} runs past its end)`);
      const name = cd.toString("utf8", pos + 46, pos + 46 + nameLen);
      // ZIP64 extended information: the 0xFFFFFFFF fields, in this order.
      let x = pos + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = v.getUint16(x, true);
        const len = v.getUint16(x + 2, true);
        if (id === 0x0001) {
          let f = x + 4;
          const take = (): number => {
            if (f + 8 > x + 4 + len) throw new ZipError(`${p}: entry ${name}: short ZIP64 extra field`);
            const r = u64(v, f, p);
            f += 8;
            return r;
          };
          if (usize === 0xffffffff) usize = take();
          if (csize === 0xffffffff) csize = take();
          if (offset === 0xffffffff) offset = take();
        }
        x += 4 + len;
      }
      if (flags & 1) throw new ZipError(`${p}: entry ${name} is encrypted`);
      if (method !== 0 && method !== 8)
        throw new ZipError(`${p}: entry ${name}: compression method ${method} is not supported`);
      if (method === 0 && csize !== usize) throw new ZipError(`${p}: entry ${name}: stored but sizes differ`);
      if (method === 8 && usize > csize * MAX_DEFLATE_RATIO) {
        throw new ZipError(
          `${p}: entry ${name} declares ${usize} bytes inflated from ${csize}: more than DEFLATE can produce ` +
            `(at most ${MAX_DEFLATE_RATIO}:1; corrupt or a zip bomb)`,
        );
      }
      if (method === 8) {
        inflated += usize;
        if (inflated > inflatedBudget(this.size)) {
          throw new ZipError(
            `${p}: compressed entries inflate to more than ${inflatedBudget(this.size)} bytes (entry ${name} reaches ` +
              `${inflated}; at most ${MAX_INFLATED_RATIO}× the ${this.size}-byte file, or 256 MiB): refused as a likely zip bomb. ` +
              "torch.save writes entries uncompressed; re-save the file with it",
          );
        }
      }
      if (offset + 30 + csize > cdOffset)
        throw new ZipError(`${p}: entry ${name}: data overlaps the central directory (corrupt)`);
      if (this.#entries.has(name)) throw new ZipError(`${p}: duplicate entry ${name}`);
      this.#entries.set(name, {
        name,
        method,
        compressedSize: csize,
        size: usize,
        crc32: crc,
        localHeaderOffset: offset,
      });
      spans.push({ name, start: offset, end: offset + 30 + nameLen + csize });
      pos = end;
    }
    // Entries may not share bytes: overlapping entries are how a small zip
    // declares far more data than it holds (D. Fifield, "A better zip bomb").
    // With this and the DEFLATE bound, everything inflated is at most
    // MAX_DEFLATE_RATIO times the file. The local extra field's length is
    // not known here, so `end` is a lower bound: no false alarms.
    spans.sort((a, b) => a.start - b.start);
    for (let i = 1; i < spans.length; i++) {
      if (spans[i].start < spans[i - 1].end) {
        throw new ZipError(
          `${p}: entries ${spans[i - 1].name} and ${spans[i].name} overlap in the file (corrupt or a zip bomb)`,
        );
      }
    }
  }
}
