// Fuzz target: the PNG text reader (src/formats/png.ts readPngText), on
// files of chunks whose lengths, CRCs, types, IHDR dimensions and text
// bodies are edited: tEXt without its NUL, zTXt and compressed iTXt with
// broken or huge (bomb) deflate data, chunks after IEND or none at all.
import { deflateSync } from "node:zlib";
import { encodePng, readPngText } from "../../../src/formats/png.js";
import { crc32 } from "../../../src/formats/zip.js";
import { concat, editIntField, mutateBytes, type Rng, type Target } from "../harness.js";
import { costly, type TargetOptions } from "./common.js";

interface Chunk {
  type: string;
  data: Uint8Array;
  /** A length to write instead of the true one. */
  length?: number;
  badCrc?: boolean;
}

const SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

function parse(png: Uint8Array): Chunk[] {
  const v = Buffer.from(png);
  const out: Chunk[] = [];
  for (let pos = 8; pos + 12 <= v.length; ) {
    const len = v.readUInt32BE(pos);
    out.push({ type: v.toString("latin1", pos + 4, pos + 8), data: v.subarray(pos + 8, pos + 8 + len) });
    pos += 12 + len;
  }
  return out;
}

function write(chunks: readonly Chunk[]): Uint8Array {
  const parts: Uint8Array[] = [SIGNATURE];
  for (const c of chunks) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE((c.length ?? c.data.length) >>> 0, 0);
    head.write(c.type.padEnd(4, "\0").slice(0, 4), 4, "latin1");
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE((crc32(concat(head.subarray(4), c.data)) ^ (c.badCrc ? 1 : 0)) >>> 0, 0);
    parts.push(head, c.data, crc);
  }
  return concat(...parts);
}

const latin1 = (s: string) => Buffer.from(s, "latin1");
const bombs = new Map<number, Uint8Array>();
/** zlib data of `n` zero bytes (cached). */
function zeros(n: number): Uint8Array {
  const b = bombs.get(n) ?? deflateSync(Buffer.alloc(n), { level: 9 });
  bombs.set(n, b);
  return b;
}

/** Text chunk bodies, well formed and not. */
function textBody(rng: Rng, o: TargetOptions): Chunk {
  const z = (s: string) => deflateSync(Buffer.from(s, "utf8"));
  const bomb = () =>
    zeros(costly(rng, o, 0.002) ? rng.pick([256 << 20, 1.25 * 2 ** 30]) : rng.pick([1 << 20, 8 << 20]));
  return rng.pick<() => Chunk>([
    () => ({ type: "tEXt", data: latin1("parameters\0a photo, Steps: 20") }),
    () => ({ type: "tEXt", data: latin1("no separator") }),
    () => ({ type: "tEXt", data: latin1("\0empty key") }),
    () => ({ type: "tEXt", data: latin1(`${"k".repeat(200)}\0long key`) }),
    () => ({ type: "zTXt", data: concat(latin1("k\0\0"), z("compressed text")) }),
    () => ({ type: "zTXt", data: concat(latin1("k\0\x01"), z("method 1")) }),
    () => ({ type: "zTXt", data: concat(latin1("k\0\0"), rng.bytes(rng.range(0, 40))) }),
    () => ({ type: "zTXt", data: latin1("k\0") }),
    () => ({ type: "zTXt", data: concat(latin1("bomb\0\0"), bomb()) }),
    () => ({ type: "iTXt", data: concat(latin1("k\0\0\0en\0k\0"), Buffer.from("日本語 text", "utf8")) }),
    () => ({ type: "iTXt", data: concat(latin1("k\0\x01\0\0\0"), z("compressed iTXt")) }),
    () => ({ type: "iTXt", data: concat(latin1("k\0\x01\0\0\0"), rng.bytes(rng.range(0, 40))) }),
    () => ({ type: "iTXt", data: concat(latin1("k\0\x01\0\0\0"), bomb()) }),
    () => ({ type: "iTXt", data: latin1("k\0\0") }),
    () => ({ type: "iTXt", data: concat(latin1("k\0\0\0\0"), Uint8Array.of(0xff, 0xfe, 0xc0)) }),
  ])();
}

function mutateChunks(rng: Rng, chunks: Chunk[], o: TargetOptions): Chunk[] {
  const out = chunks.map((c) => ({ ...c }));
  const c = out.length ? rng.pick(out) : undefined;
  switch (rng.int(8)) {
    case 0: // a lying length
      if (c)
        c.length = rng.pick([
          0,
          0xffffffff,
          0x7fffffff,
          0x80000000,
          c.data.length + 1,
          c.data.length - 1,
          c.data.length + 12,
        ]);
      break;
    case 1:
      if (c) c.badCrc = true;
      break;
    case 2: // another type
      if (c) c.type = rng.pick(["tEXt", "zTXt", "iTXt", "IHDR", "IEND", "IDAT", "tEXT", "\0\0\0\0", "ab"]);
      break;
    case 3: {
      // IHDR dimensions, depth and colour type
      const h = out.find((x) => x.type === "IHDR");
      if (!h) break;
      const d = Uint8Array.from(h.data);
      if (rng.chance(0.7)) editIntField(rng, d, rng.pick([0, 4]), 4, false);
      else d[rng.pick([8, 9, 10, 11, 12])] = rng.pick([0, 1, 3, 7, 16, 255]);
      h.data = d;
      break;
    }
    case 4:
    case 5: // a text chunk, before IEND or anywhere
      out.splice(rng.chance(0.8) ? Math.max(1, out.length - 1) : rng.int(out.length + 1), 0, textBody(rng, o));
      break;
    case 6: // chunks dropped (IEND too), repeated, or after IEND
      if (rng.chance(0.4) && out.length) out.splice(rng.int(out.length), 1);
      else if (c) out.push({ ...c });
      break;
    default:
      if (c) c.data = mutateBytes(rng, c.data, { maxLength: c.data.length + 64 });
  }
  return out;
}

export function pngTarget(o: TargetOptions): Target<Uint8Array> {
  return {
    name: "png",
    hasReference: false,
    // readPngText's own refusals are plain Errors about the PNG; zlib's (with a code) are not its own.
    isOwnError: (e) => e instanceof Error && e.constructor === Error && !("code" in e) && /PNG/.test(e.message),
    seeds: () => [
      encodePng(
        { width: 1, height: 1, channels: 3, data: new Uint8Array(3) },
        { parameters: "a photo\nSteps: 20, Seed: 1" },
      ),
      encodePng({ width: 3, height: 2, channels: 4, data: new Uint8Array(24).fill(7) }, {}),
      encodePng(
        { width: 2, height: 1, channels: 3, data: new Uint8Array(6) },
        { parameters: "日本語 prompt", Software: "Atelier" },
      ),
      write([
        ...parse(encodePng({ width: 1, height: 1, channels: 3, data: new Uint8Array(3) })).slice(0, 1),
        { type: "zTXt", data: concat(latin1("Comment\0\0"), deflateSync(Buffer.from("zipped"))) },
        { type: "IEND", data: new Uint8Array() },
      ]),
    ],
    generate(rng, seeds) {
      let chunks = parse(rng.pick(seeds));
      for (let k = rng.count(3, 0.4); k > 0; k--) chunks = mutateChunks(rng, chunks, o);
      let bytes = write(chunks);
      if (rng.chance(0.15)) bytes = mutateBytes(rng, bytes, { others: seeds, maxLength: bytes.length + 256 });
      return bytes;
    },
    run(bytes) {
      readPngText(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      return { accepted: true };
    },
    toBytes: (b) => b,
  };
}
