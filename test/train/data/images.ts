// Test images made with sharp in temporary folders.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after } from "node:test";
import sharp from "sharp";

/** A fresh temporary folder, removed when the test file ends. */
export function tempDir(prefix = "atelier-data-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** w×h RGB pixels: a smooth pattern that `variant` changes. */
export function pattern(w: number, h: number, variant = 0): Buffer {
  const data = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 3;
      data[o] = (x * 255) / Math.max(1, w - 1);
      data[o + 1] = (y * 255) / Math.max(1, h - 1);
      data[o + 2] = (variant * 53 + x * 7 + y * 3) % 256;
    }
  }
  return data;
}

/** Writes a w×h PNG (or JPEG/WebP by extension) of pattern(variant). */
export async function writeImage(path: string, w: number, h: number, variant = 0): Promise<string> {
  mkdirSync(dirname(path), { recursive: true });
  let img = sharp(pattern(w, h, variant), { raw: { width: w, height: h, channels: 3 } });
  if (path.endsWith(".jpg") || path.endsWith(".jpeg")) img = img.jpeg({ quality: 95 });
  else if (path.endsWith(".webp")) img = img.webp({ lossless: true });
  else img = img.png();
  writeFileSync(path, await img.toBuffer());
  return path;
}

/** A file that is not an image, under an image name. */
export function writeNonImage(path: string): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, "this is not an image\n");
  return path;
}

/** The first half of a valid JPEG: a truncated file. */
export async function writeTruncatedJpeg(path: string, w = 32, h = 32): Promise<string> {
  mkdirSync(dirname(path), { recursive: true });
  const full = await sharp(pattern(w, h), { raw: { width: w, height: h, channels: 3 } })
    .jpeg()
    .toBuffer();
  writeFileSync(path, full.subarray(0, Math.floor(full.length / 2)));
  return path;
}
