// Windows BMP decoding. The libvips that sharp ships has no BMP loader, and
// kohya lists .bmp among its image extensions (library/train_util.py
// IMAGE_EXTENSIONS), so uncompressed BMPs are decoded here into raw pixels
// that sharp then takes. Layout: Microsoft "BITMAPINFOHEADER" /
// "BITMAPV4HEADER" / "BITMAPV5HEADER" documentation. RLE-compressed files are
// refused with a clear message.

export interface RawImage {
  width: number;
  height: number;
  channels: 3 | 4;
  data: Uint8Array;
}

const BI_RGB = 0;
const BI_BITFIELDS = 3;
const BI_ALPHABITFIELDS = 6;

export function isBmp(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x42 && bytes[1] === 0x4d;
}

/** A channel mask → (shift, bits), for BI_BITFIELDS. */
function maskInfo(mask: number): { shift: number; bits: number } {
  if (mask === 0) return { shift: 0, bits: 0 };
  let shift = 0;
  while (((mask >>> shift) & 1) === 0) shift++;
  let bits = 0;
  while (((mask >>> (shift + bits)) & 1) === 1) bits++;
  return { shift, bits };
}

function scaleTo8(value: number, bits: number): number {
  if (bits === 0) return 255;
  if (bits === 8) return value;
  return Math.round((value * 255) / ((1 << bits) - 1));
}

/** Decodes an uncompressed (or bit-field) BMP; throws a message without the path (the caller adds it). */
export function decodeBmp(bytes: Uint8Array): RawImage {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (n: number, what: string) => {
    if (bytes.length < n) throw new Error(`truncated BMP (${what}: needs ${n} bytes, file has ${bytes.length})`);
  };
  need(26, "header");
  if (!isBmp(bytes)) throw new Error("not a BMP file");
  const dataOffset = view.getUint32(10, true);
  const headerSize = view.getUint32(14, true);
  if (headerSize < 40) throw new Error(`unsupported BMP header (${headerSize} bytes; OS/2 bitmaps are not read)`);
  need(14 + headerSize, "info header");
  const width = view.getInt32(18, true);
  const rawHeight = view.getInt32(22, true);
  const bpp = view.getUint16(28, true);
  const compression = view.getUint32(30, true);
  const height = Math.abs(rawHeight);
  const topDown = rawHeight < 0;
  if (width <= 0 || height <= 0 || width > 1 << 16 || height > 1 << 16) {
    throw new Error(`bad BMP size ${width}×${rawHeight}`);
  }
  if (compression !== BI_RGB && compression !== BI_BITFIELDS && compression !== BI_ALPHABITFIELDS) {
    throw new Error(`unsupported BMP compression ${compression} (only uncompressed and bit-field BMPs are read)`);
  }

  // Bit-field masks: in the V4/V5 header, or just after a 40-byte header.
  let masks = [0, 0, 0, 0];
  if (compression !== BI_RGB) {
    need(14 + 40 + 16, "bit-field masks");
    masks = [0, 1, 2, 3].map((i) => view.getUint32(54 + 4 * i, true));
    if (headerSize < 56 && compression === BI_BITFIELDS) masks[3] = 0;
  } else if (bpp === 16) {
    masks = [0x7c00, 0x03e0, 0x001f, 0];
  } else if (bpp === 32) {
    masks = [0x00ff0000, 0x0000ff00, 0x000000ff, 0];
  }
  const fields = masks.map(maskInfo);
  const hasAlpha = bpp === 32 || bpp === 16 ? fields[3].bits > 0 : false;

  let palette: Uint8Array | undefined;
  if (bpp <= 8) {
    if (![1, 4, 8].includes(bpp)) throw new Error(`unsupported BMP bit depth ${bpp}`);
    const colorsUsed = view.getUint32(46, true) || 1 << bpp;
    const at = 14 + headerSize;
    need(at + colorsUsed * 4, "palette");
    palette = bytes.subarray(at, at + colorsUsed * 4);
  } else if (![16, 24, 32].includes(bpp)) {
    throw new Error(`unsupported BMP bit depth ${bpp}`);
  }

  const stride = Math.floor((bpp * width + 31) / 32) * 4;
  need(dataOffset + stride * height, "pixel data");
  const channels = hasAlpha ? 4 : 3;
  const out = new Uint8Array(width * height * channels);
  for (let y = 0; y < height; y++) {
    const row = dataOffset + (topDown ? y : height - 1 - y) * stride;
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * channels;
      let r: number;
      let g: number;
      let b: number;
      let a = 255;
      if (palette) {
        const bit = x * bpp;
        const byte = bytes[row + (bit >> 3)];
        const index = (byte >> (8 - bpp - (bit & 7))) & ((1 << bpp) - 1);
        if (index * 4 + 2 >= palette.length) throw new Error(`BMP palette index ${index} out of range`);
        [b, g, r] = [palette[index * 4], palette[index * 4 + 1], palette[index * 4 + 2]];
      } else if (bpp === 24) {
        [b, g, r] = [bytes[row + 3 * x], bytes[row + 3 * x + 1], bytes[row + 3 * x + 2]];
      } else {
        const v = bpp === 16 ? view.getUint16(row + 2 * x, true) : view.getUint32(row + 4 * x, true);
        const ch = fields.map(({ shift, bits }) => scaleTo8((v >>> shift) & ((2 ** bits - 1) >>> 0), bits));
        [r, g, b] = ch;
        if (hasAlpha) a = ch[3];
      }
      out[o] = r;
      out[o + 1] = g;
      out[o + 2] = b;
      if (channels === 4) out[o + 3] = a;
    }
  }
  return { width, height, channels, data: out };
}
