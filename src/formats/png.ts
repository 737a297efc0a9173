// PNG encoding with text chunks, and reading those chunks back. AUTOMATIC1111
// stores the generation settings in a tEXt chunk named "parameters"
// (modules/images.py, save_image_with_geninfo); we write the same so that its
// "PNG Info" tab and other tools read our images.
import { deflateSync, inflateSync } from "node:zlib";

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(parts: Buffer[]): number {
  let c = 0xffffffff;
  for (const b of parts) for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32([head.subarray(4), data]), 0);
  return Buffer.concat([head, data, crc]);
}

/** A text chunk: tEXt for Latin-1 text, iTXt (UTF-8) otherwise, as Pillow's PngInfo does. */
function textChunk(key: string, value: string): Buffer {
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(key))
    throw new Error(`PNG text key '${key}' is not 1-79 Latin-1 characters`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: Latin-1 check includes newline and tab
  if (/^[\x09\x0a\x20-\x7e\xa0-\xff]*$/.test(value)) {
    return chunk("tEXt", Buffer.concat([Buffer.from(key, "latin1"), Buffer.from([0]), Buffer.from(value, "latin1")]));
  }
  const head = Buffer.concat([Buffer.from(key, "latin1"), Buffer.from([0, 0, 0, 0, 0])]); // no compression, empty lang/key
  return chunk("iTXt", Buffer.concat([head, Buffer.from(value, "utf8")]));
}

export interface RGBImage {
  width: number;
  height: number;
  /** 3 (RGB) or 4 (RGBA) bytes per pixel, row-major. */
  channels: 3 | 4;
  data: Uint8Array;
}

/** Encodes 8-bit RGB(A) pixels as PNG with the given text chunks. */
export function encodePng(image: RGBImage, text: Record<string, string> = {}): Buffer {
  const { width, height, channels, data } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`PNG: bad size ${width}x${height}`);
  }
  if (data.length !== width * height * channels) {
    throw new Error(`PNG: ${data.length} bytes for ${width}x${height}x${channels}`);
  }
  const stride = width * channels;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter: none
    raw.set(data.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = channels === 4 ? 6 : 2; // colour type RGBA / RGB
  return Buffer.concat([
    SIGNATURE,
    chunk("IHDR", ihdr),
    ...Object.entries(text).map(([k, v]) => textChunk(k, v)),
    chunk("IDAT", deflateSync(raw, { level: 6 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/**
 * Pillow's limits for text chunks (python-pillow/Pillow src/PIL/PngImagePlugin.py,
 * MAX_TEXT_CHUNK = ImageFile.SAFEBLOCK and MAX_TEXT_MEMORY), which A1111's
 * "PNG Info" reads through: a compressed chunk inflates to at most 1 MiB, all
 * text together to at most 64 MiB. Past them a file is refused, not inflated.
 */
export const MAX_TEXT_CHUNK = 1 << 20;
export const MAX_TEXT_MEMORY = 64 * MAX_TEXT_CHUNK;

/** The PNG spec's chunk length limit (W3C PNG §5.3: at most 2^31 − 1). */
const MAX_CHUNK = 2 ** 31 - 1;

/** The tEXt/iTXt/zTXt chunks of a PNG file (what A1111's PNG Info shows); `name` prefixes error messages. */
export function readPngText(file: Buffer, name = "PNG"): Record<string, string> {
  const fail = (why: string): never => {
    throw new Error(`${name}: ${why}`);
  };
  if (file.length < 8 || !file.subarray(0, 8).equals(SIGNATURE)) fail("not a PNG file (bad signature)");
  const out: Record<string, string> = {};
  let total = 0;
  const keep = (type: string, key: string, value: string) => {
    total += value.length;
    if (total > MAX_TEXT_MEMORY) fail(`text chunks hold more than ${MAX_TEXT_MEMORY} bytes (at ${type} "${key}")`);
    out[key] = value;
  };
  const inflate = (type: string, key: string, data: Buffer): Buffer => {
    try {
      return inflateSync(data, { maxOutputLength: MAX_TEXT_CHUNK });
    } catch (e) {
      if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE")
        return fail(`chunk ${type} "${key}" inflates to more than ${MAX_TEXT_CHUNK} bytes (the text chunk limit)`);
      return fail(`chunk ${type} "${key}": corrupt compressed text (${(e as Error).message})`);
    }
  };
  let pos = 8;
  while (pos + 12 <= file.length) {
    const len = file.readUInt32BE(pos);
    const type = file.toString("latin1", pos + 4, pos + 8);
    if (!/^[A-Za-z]{4}$/.test(type)) fail(`bad chunk type ${JSON.stringify(type)} at byte ${pos + 4}`);
    if (len > MAX_CHUNK) fail(`chunk ${type} claims ${len} bytes (the format's limit is ${MAX_CHUNK})`);
    const end = pos + 8 + len;
    if (end + 4 > file.length) fail(`chunk ${type} runs past the end of the file`);
    const body = file.subarray(pos + 8, end);
    const nul = body.indexOf(0);
    const key = nul > 0 ? body.toString("latin1", 0, nul) : "";
    if (type === "tEXt" && nul > 0) {
      keep(type, key, body.toString("latin1", nul + 1));
    } else if (type === "zTXt" && nul > 0) {
      if (nul + 1 >= body.length) fail(`chunk zTXt "${key}" is truncated (no compression method byte)`);
      if (body[nul + 1] !== 0)
        fail(`chunk zTXt "${key}": unknown compression method ${body[nul + 1]} (only 0, deflate)`);
      keep(type, key, inflate(type, key, body.subarray(nul + 2)).toString("latin1"));
    } else if (type === "iTXt" && nul > 0) {
      // keyword, 0, compression flag, method, language tag, 0, translated keyword, 0, text
      const compressed = body[nul + 1] === 1;
      const lang = body.indexOf(0, nul + 3);
      const translated = lang < 0 ? -1 : body.indexOf(0, lang + 1);
      if (translated < 0) fail(`chunk iTXt "${key}" is truncated (no language tag or translated keyword)`);
      const value = body.subarray(translated + 1);
      keep(type, key, (compressed ? inflate(type, key, value) : value).toString("utf8"));
    }
    if (type === "IEND") break;
    pos = end + 4;
  }
  return out;
}

export interface GenerationInfo {
  prompt: string;
  negative?: string;
  steps: number;
  sampler: string;
  cfg: number;
  seed: number;
  width: number;
  height: number;
  model?: string;
  modelHash?: string;
  clipSkip?: number;
  extra?: Record<string, string | number>;
}

/**
 * A1111's "parameters" text: the prompt, "Negative prompt: …", then one line of
 * "Key: value" pairs (modules/processing.py, create_infotext).
 */
export function a1111Parameters(g: GenerationInfo): string {
  const pairs: [string, string | number | undefined][] = [
    ["Steps", g.steps],
    ["Sampler", g.sampler],
    ["CFG scale", g.cfg],
    ["Seed", g.seed],
    ["Size", `${g.width}x${g.height}`],
    ["Model hash", g.modelHash],
    ["Model", g.model],
    ["Clip skip", g.clipSkip && g.clipSkip > 1 ? g.clipSkip : undefined],
    ...Object.entries(g.extra ?? {}),
  ];
  const line = pairs
    .filter(([, v]) => v !== undefined && v !== "")
    .map(([k, v]) => `${k}: ${quoteIfNeeded(String(v))}`)
    .join(", ");
  return [g.prompt, ...(g.negative ? [`Negative prompt: ${g.negative}`] : []), line].join("\n");
}

// A1111 quotes values that contain a comma, colon or quote (infotext_utils.quote).
function quoteIfNeeded(v: string): string {
  return /[,:"\n]/.test(v) ? JSON.stringify(v) : v;
}
