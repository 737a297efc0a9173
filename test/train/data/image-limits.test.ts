// Image decoding refuses images past the pixel limit from their header,
// before decoding: a small file claiming a huge canvas, and a BMP that would
// decode to gigabytes. Images at the limit and ordinary ones still decode.
import assert from "node:assert/strict";
import { test } from "node:test";
import { encodePng } from "../../../src/formats/png.js";
import { crc32 } from "../../../src/formats/zip.js";
import { decodeImage, ImageError, MAX_IMAGE_PIXELS } from "../../../src/train/data/image.js";

/** A 1×1 PNG whose IHDR claims `w`×`h` (pixel data stays 1×1, so decoding it would fail). */
function pngClaiming(w: number, h: number): Buffer {
  const png = encodePng({ width: 1, height: 1, channels: 3, data: new Uint8Array(3) });
  png.writeUInt32BE(w, 16);
  png.writeUInt32BE(h, 20);
  png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
  return png;
}

/** A 1-bit, 2-colour BMP of w×h (BITMAPINFOHEADER), all pixels 0. */
function bmp1(w: number, h: number): Buffer {
  const stride = Math.floor((w + 31) / 32) * 4;
  const offset = 14 + 40 + 8;
  const b = Buffer.alloc(offset + stride * h);
  b.write("BM", 0, "latin1");
  b.writeUInt32LE(b.length, 2);
  b.writeUInt32LE(offset, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(w, 18);
  b.writeInt32LE(h, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(1, 28);
  b.writeUInt32LE(2, 46);
  b.writeUInt32LE(0xffffff, 58); // palette: black, white
  return b;
}

async function refusesSize(bytes: Uint8Array, w: number, h: number): Promise<void> {
  const start = Date.now();
  await assert.rejects(decodeImage(bytes, "big.img"), (e: Error) => {
    assert.ok(e instanceof ImageError, e.message);
    assert.equal(
      e.message,
      `big.img: the image is ${w}×${h} = ${w * h} pixels, more than the limit of 67108864 ` +
        "(64 megapixels, 8192×8192): refused before decoding",
    );
    return true;
  });
  assert.ok(Date.now() - start < 2000, `took ${Date.now() - start} ms`);
}

test("a PNG header claiming more than 64 megapixels is refused by size, before decoding", async () => {
  assert.equal(MAX_IMAGE_PIXELS, 8192 * 8192);
  await refusesSize(pngClaiming(10000, 10000), 10000, 10000);
  await refusesSize(pngClaiming(8193, 8192), 8193, 8192);
  // At the limit the size passes and the (1×1) data is what fails.
  await assert.rejects(decodeImage(pngClaiming(8192, 8192), "edge.png"), /edge\.png: cannot decode the image/);
});

test("a BMP past the limit is refused before it is decoded into memory", async () => {
  const big = bmp1(8200, 8200); // 8.4 MB of file, 200 MB of RGB
  await refusesSize(big, 8200, 8200);
  const small = await decodeImage(bmp1(64, 2), "small.bmp");
  assert.deepEqual([small.width, small.height, small.data[0]], [64, 2, 0]);
});
