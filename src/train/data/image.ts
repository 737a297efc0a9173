// Image decoding and the resize + crop to a training size, with sharp (libvips).
// Every image becomes 8-bit sRGB RGB: EXIF orientation applied (as the A1111
// Dreambooth extension's rotate_image_straight, dreambooth/utils/image_utils.py),
// alpha composited on a background (white, as its open_and_trim), CMYK and
// 16-bit converted, only the first frame of an animation. Errors name the file.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import sharp, { type Sharp } from "sharp";
import { decodeBmp, isBmp } from "./bmp.js";

/** An 8-bit RGB image, rows top to bottom, HWC. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

export interface Background {
  r: number;
  g: number;
  b: number;
}

export const WHITE: Background = { r: 255, g: 255, b: 255 };

export interface LoadImageOptions {
  /** What transparent pixels are composited on (default white). */
  background?: Background;
}

/** The extensions scanned as images (kohya's IMAGE_EXTENSIONS plus the TIFF, GIF and AVIF sharp reads). */
export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set([
  ".png",
  ".jpg",
  ".jpeg",
  ".webp",
  ".bmp",
  ".tif",
  ".tiff",
  ".gif",
  ".avif",
]);

export class ImageError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "ImageError";
    this.path = path;
  }
}

/** SHA-256 (hex) of a file's bytes: the identity of its content for the caches. */
export function hashBytes(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * The most pixels an image may have: 8192 × 8192 (64 megapixels), checked
 * from its header before it is decoded, so a small file claiming a huge
 * canvas costs nothing. Far above any training size; Pillow, which the
 * reference trainers decode with, warns past 89 megapixels.
 */
export const MAX_IMAGE_PIXELS = 8192 * 8192;

function tooLarge(path: string, width: number, height: number): ImageError {
  return new ImageError(
    path,
    `the image is ${width}×${height} = ${width * height} pixels, more than the limit of ${MAX_IMAGE_PIXELS} ` +
      "(64 megapixels, 8192×8192): refused before decoding",
  );
}

/** Width and height from a BMP's BITMAPINFOHEADER (int32 at 18 and 22; bmp.ts decodes the rest). */
function bmpSize(bytes: Uint8Array): [number, number] | undefined {
  if (bytes.length < 26) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return [Math.abs(v.getInt32(18, true)), Math.abs(v.getInt32(22, true))];
}

function sharpInput(bytes: Uint8Array, path: string): Sharp {
  // pages: 1 = the first frame of a GIF/WebP animation or multi-page TIFF.
  // limitInputPixels: libvips checks the header's size before decoding.
  const common = { autoOrient: true, pages: 1, failOn: "warning" as const, limitInputPixels: MAX_IMAGE_PIXELS };
  if (isBmp(bytes)) {
    const size = bmpSize(bytes);
    if (size && size[0] * size[1] > MAX_IMAGE_PIXELS) throw tooLarge(path, size[0], size[1]);
    let raw: ReturnType<typeof decodeBmp>;
    try {
      raw = decodeBmp(bytes);
    } catch (e) {
      throw new ImageError(path, `cannot decode the image: ${(e as Error).message}`);
    }
    return sharp(raw.data, { raw: { width: raw.width, height: raw.height, channels: raw.channels } });
  }
  return sharp(bytes, common);
}

/** Decodes image bytes (read from `path`, which names the file in errors) to RGB. */
export async function decodeImage(bytes: Uint8Array, path: string, o: LoadImageOptions = {}): Promise<RgbImage> {
  const bg = o.background ?? WHITE;
  try {
    const { data, info } = await sharpInput(bytes, path)
      .flatten({ background: bg })
      .toColourspace("srgb")
      .removeAlpha()
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  } catch (e) {
    if (e instanceof ImageError) throw e;
    const msg = (e as Error).message.split("\n")[0];
    if (/exceeds pixel limit/.test(msg)) {
      const m = await sharp(bytes, { pages: 1, limitInputPixels: false })
        .metadata()
        .catch(() => undefined);
      if (m?.width && m.height) throw tooLarge(path, m.width, m.height);
    }
    throw new ImageError(path, `cannot decode the image: ${msg}`);
  }
}

/** Reads and decodes an image file (see decodeImage). */
export async function loadImage(path: string, o: LoadImageOptions = {}): Promise<RgbImage> {
  return decodeImage(await readImageBytes(path), path, o);
}

export async function readImageBytes(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    throw new ImageError(path, `cannot read the file: ${(e as Error).message}`);
  }
}

/** Where an image goes in a target size: resized to `resized`, then the box at (left, top) is kept. */
export interface CropPlan {
  target: [number, number];
  resized: [number, number];
  left: number;
  top: number;
}

/**
 * Resize so the image covers `target` (w, h), then center-crop: kohya
 * BucketManager.select_bucket's resized_size (int(x·scale + 0.5)) and
 * trim_and_resize_if_required's centered trim ((resized − target) // 2).
 */
export function coverCrop(width: number, height: number, target: [number, number]): CropPlan {
  const [tw, th] = target;
  const scale = width / height > tw / th ? th / height : tw / width;
  const rw = Math.max(tw, Math.floor(width * scale + 0.5));
  const rh = Math.max(th, Math.floor(height * scale + 0.5));
  return { target: [tw, th], resized: [rw, rh], left: Math.floor((rw - tw) / 2), top: Math.floor((rh - th) / 2) };
}

/** The resampling kernel; part of the latent cache key. */
export const RESIZE_KERNEL = "lanczos3";

/** Applies a CropPlan (lanczos3 resize, as kohya's pil_resize upscaling, then the crop). */
export async function resizeAndCrop(image: RgbImage, plan: CropPlan): Promise<RgbImage> {
  const [rw, rh] = plan.resized;
  const [tw, th] = plan.target;
  if (rw === image.width && rh === image.height && tw === rw && th === rh) return image;
  let pipeline = sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
  if (rw !== image.width || rh !== image.height) {
    pipeline = pipeline.resize(rw, rh, { fit: "fill", kernel: RESIZE_KERNEL });
  }
  if (tw !== rw || th !== rh) {
    pipeline = pipeline.extract({ left: plan.left, top: plan.top, width: tw, height: th });
  }
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}
