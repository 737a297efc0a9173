// Image decoding through sharp: orientation, alpha, CMYK, 16-bit, formats,
// first frames, BMP, broken files; and the cover + center crop.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import sharp from "sharp";
import { decodeBmp } from "../../../src/train/data/bmp.js";
import { coverCrop, ImageError, loadImage, resizeAndCrop } from "../../../src/train/data/image.js";
import { checkLeaks } from "../../helpers.js";
import { pattern, tempDir, writeNonImage, writeTruncatedJpeg } from "./images.js";

checkLeaks();

const dir = tempDir();

const px = (img: { width: number; data: Uint8Array }, x: number, y: number) => {
  const o = (y * img.width + x) * 3;
  return [img.data[o], img.data[o + 1], img.data[o + 2]];
};

/** w×h: left half red, right half blue. */
function halves(w: number, h: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) b[(y * w + x) * 3 + (x < w / 2 ? 0 : 2)] = 255;
  return b;
}

test("EXIF orientation is applied (orientation 6: rotate 90° clockwise)", async () => {
  const path = join(dir, "rotated.jpg");
  const jpeg = await sharp(halves(32, 16), { raw: { width: 32, height: 16, channels: 3 } })
    .jpeg({ quality: 100 })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  writeFileSync(path, jpeg);
  assert.equal((await sharp(path).metadata()).orientation, 6);
  const img = await loadImage(path);
  assert.deepEqual([img.width, img.height], [16, 32]);
  // The left (red) half becomes the top half.
  const [r0, , b0] = px(img, 8, 4);
  const [r1, , b1] = px(img, 8, 28);
  assert.ok(r0 > 200 && b0 < 60, `top should be red, got ${px(img, 8, 4)}`);
  assert.ok(b1 > 200 && r1 < 60, `bottom should be blue, got ${px(img, 8, 28)}`);
});

test("RGBA is composited on white, or on the background asked for", async () => {
  const path = join(dir, "alpha.png");
  const rgba = Buffer.from([255, 0, 0, 128, 0, 0, 0, 0, 0, 0, 255, 255, 10, 20, 30, 255]);
  writeFileSync(
    path,
    await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } })
      .png()
      .toBuffer(),
  );
  const img = await loadImage(path);
  assert.deepEqual([...img.data], [255, 127, 127, 255, 255, 255, 0, 0, 255, 10, 20, 30]);
  const black = await loadImage(path, { background: { r: 0, g: 0, b: 0 } });
  assert.deepEqual([...black.data.subarray(3, 6)], [0, 0, 0]);
  assert.ok(Math.abs(black.data[0] - 128) <= 1);
});

test("a CMYK JPEG decodes to RGB", async () => {
  const path = join(dir, "cmyk.jpg");
  const red = Buffer.alloc(16 * 16 * 3);
  for (let i = 0; i < 256; i++) red[i * 3] = 255;
  writeFileSync(
    path,
    await sharp(red, { raw: { width: 16, height: 16, channels: 3 } })
      .toColourspace("cmyk")
      .jpeg({ quality: 100 })
      .toBuffer(),
  );
  const meta = await sharp(path).metadata();
  assert.equal(meta.space, "cmyk");
  assert.equal(meta.channels, 4);
  const img = await loadImage(path);
  assert.equal(img.data.length, 16 * 16 * 3);
  const [r, g, b] = px(img, 8, 8);
  assert.ok(r > 180 && g < 80 && b < 80, `expected red, got ${[r, g, b]}`);
});

test("a 16-bit PNG decodes to the same 8-bit values", async () => {
  const path = join(dir, "deep.png");
  const raw = pattern(8, 4, 2);
  writeFileSync(
    path,
    await sharp(raw, { raw: { width: 8, height: 4, channels: 3 } })
      .toColourspace("rgb16")
      .png()
      .toBuffer(),
  );
  assert.equal((await sharp(path).metadata()).depth, "ushort");
  const img = await loadImage(path);
  assert.deepEqual([...img.data], [...raw]);
});

test("WebP, TIFF, greyscale PNG and the first frame of an animated GIF", async () => {
  const raw = pattern(6, 5, 1);
  const input = () => sharp(raw, { raw: { width: 6, height: 5, channels: 3 } });
  writeFileSync(join(dir, "a.webp"), await input().webp({ lossless: true }).toBuffer());
  writeFileSync(join(dir, "a.tiff"), await input().tiff({ compression: "lzw" }).toBuffer());
  assert.deepEqual([...(await loadImage(join(dir, "a.webp"))).data], [...raw]);
  assert.deepEqual([...(await loadImage(join(dir, "a.tiff"))).data], [...raw]);

  writeFileSync(join(dir, "grey.png"), await input().greyscale().png().toBuffer());
  const grey = await loadImage(join(dir, "grey.png"));
  assert.equal(grey.data.length, 6 * 5 * 3);
  assert.deepEqual(px(grey, 3, 2), Array(3).fill(px(grey, 3, 2)[0]));

  const frame = (hex: string) =>
    sharp({ create: { width: 4, height: 4, channels: 3, background: hex } })
      .png()
      .toBuffer();
  const gif = await sharp([await frame("#ff0000"), await frame("#0000ff")], { join: { animated: true } })
    .gif()
    .toBuffer();
  writeFileSync(join(dir, "anim.gif"), gif);
  assert.equal((await sharp(gif).metadata()).pages, 2);
  const first = await loadImage(join(dir, "anim.gif"));
  assert.deepEqual([first.width, first.height], [4, 4]);
  assert.deepEqual(px(first, 1, 1), [255, 0, 0]);
});

/** A bottom-up 24-bit BMP (rows padded to 4 bytes). */
function bmp24(w: number, h: number, rgb: Buffer): Buffer {
  const stride = Math.ceil((w * 3) / 4) * 4;
  const file = Buffer.alloc(54 + stride * h);
  file.write("BM", 0, "latin1");
  file.writeUInt32LE(file.length, 2);
  file.writeUInt32LE(54, 10);
  file.writeUInt32LE(40, 14);
  file.writeInt32LE(w, 18);
  file.writeInt32LE(h, 22);
  file.writeUInt16LE(1, 26);
  file.writeUInt16LE(24, 28);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = 54 + (h - 1 - y) * stride + x * 3;
      const i = (y * w + x) * 3;
      [file[o], file[o + 1], file[o + 2]] = [rgb[i + 2], rgb[i + 1], rgb[i]];
    }
  }
  return file;
}

/** A top-down 8-bit palettized BMP. */
function bmp8(w: number, h: number, palette: number[][], indices: number[]): Buffer {
  const stride = Math.ceil(w / 4) * 4;
  const offset = 54 + palette.length * 4;
  const file = Buffer.alloc(offset + stride * h);
  file.write("BM", 0, "latin1");
  file.writeUInt32LE(offset, 10);
  file.writeUInt32LE(40, 14);
  file.writeInt32LE(w, 18);
  file.writeInt32LE(-h, 22);
  file.writeUInt16LE(1, 26);
  file.writeUInt16LE(8, 28);
  file.writeUInt32LE(palette.length, 46);
  palette.forEach(([r, g, b], i) => {
    [file[54 + 4 * i], file[55 + 4 * i], file[56 + 4 * i]] = [b, g, r];
  });
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) file[offset + y * stride + x] = indices[y * w + x];
  return file;
}

test("BMP: 24-bit bottom-up and 8-bit palettized top-down", async () => {
  const raw = pattern(3, 2, 4);
  writeFileSync(join(dir, "a.bmp"), bmp24(3, 2, raw));
  assert.deepEqual([...(await loadImage(join(dir, "a.bmp"))).data], [...raw]);

  const pal = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
  ];
  writeFileSync(join(dir, "p.bmp"), bmp8(2, 2, pal, [0, 1, 2, 0]));
  const img = await loadImage(join(dir, "p.bmp"));
  assert.deepEqual([...img.data], [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 0, 0]);

  assert.throws(() => decodeBmp(bmp24(3, 2, raw).subarray(0, 40)), /truncated BMP/);
});

test("a truncated file and a non-image with an image name fail with errors naming the file", async () => {
  const truncated = await writeTruncatedJpeg(join(dir, "cut.jpg"));
  const text = writeNonImage(join(dir, "notes.png"));
  const full = await sharp(pattern(16, 16), { raw: { width: 16, height: 16, channels: 3 } })
    .png()
    .toBuffer();
  const cutPng = join(dir, "cut.png");
  writeFileSync(cutPng, full.subarray(0, full.length - 30));
  for (const path of [truncated, text, cutPng, join(dir, "missing.png")]) {
    await assert.rejects(loadImage(path), (e: Error) => {
      assert.ok(e instanceof ImageError, `${path}: ${e}`);
      assert.ok(e.message.startsWith(`${path}: `), e.message);
      return true;
    });
  }
});

test("coverCrop follows kohya's resize (int(x·scale + 0.5)) and centered trim", () => {
  // 1000×500 (2.0) into 704×320 (2.2): the bucket is wider → the width fits: 704×352, top (352 − 320) // 2.
  assert.deepEqual(coverCrop(1000, 500, [704, 320]), { target: [704, 320], resized: [704, 352], left: 0, top: 16 });
  // 300×400 into 448×576: 0.75 < 0.778 → width fits: 448 × 597.33 → 597, top (597 − 576) // 2 = 10.
  assert.deepEqual(coverCrop(300, 400, [448, 576]), { target: [448, 576], resized: [448, 597], left: 0, top: 10 });
  // A square into a square: resize only.
  assert.deepEqual(coverCrop(100, 100, [512, 512]), { target: [512, 512], resized: [512, 512], left: 0, top: 0 });
  // Wider than the bucket: the height fits, the sides are trimmed.
  assert.deepEqual(coverCrop(64, 32, [32, 32]), { target: [32, 32], resized: [64, 32], left: 16, top: 0 });
});

test("resizeAndCrop keeps the center", async () => {
  // 8×4: left quarter red, middle half green, right quarter blue → a 4×4 center crop is all green.
  const data = new Uint8Array(8 * 4 * 3);
  for (let y = 0; y < 4; y++) {
    for (let x = 0; x < 8; x++) data[(y * 8 + x) * 3 + (x < 2 ? 0 : x < 6 ? 1 : 2)] = 255;
  }
  const out = await resizeAndCrop({ width: 8, height: 4, data }, coverCrop(8, 4, [4, 4]));
  assert.deepEqual([out.width, out.height], [4, 4]);
  for (let i = 0; i < 16; i++) assert.deepEqual([...out.data.subarray(i * 3, i * 3 + 3)], [0, 255, 0]);
  const up = await resizeAndCrop({ width: 8, height: 4, data }, coverCrop(8, 4, [16, 16]));
  assert.deepEqual([up.width, up.height], [16, 16]);
});
