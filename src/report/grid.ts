// Sample grids for the report: images laid out in rows of `columns`, each cell
// the size of the largest image (smaller ones centred), optionally upscaled by
// an integer factor with nearest-neighbour sampling, encoded as one PNG.
import { encodePng } from "../formats/png.js";

export interface GridImage {
  width: number;
  height: number;
  /** Row-major 8-bit pixels: RGB (3 bytes a pixel) or RGBA (4, composited over the background). */
  data: Uint8Array;
}

export interface GridOptions {
  /** Integer nearest-neighbour upscale of every image (tiny test images, latents). Default 1. */
  scale?: number;
  /** Pixels between cells and around the grid. Default 0. */
  gap?: number;
  /** Colour of gaps and of the margins around smaller images. Default white. */
  background?: readonly [number, number, number];
}

function channelsOf(img: GridImage, i: number): 3 | 4 {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`grid image ${i}: bad size ${width}x${height}`);
  }
  if (data.length === width * height * 3) return 3;
  if (data.length === width * height * 4) return 4;
  throw new Error(`grid image ${i}: ${data.length} bytes is neither RGB nor RGBA for ${width}x${height}`);
}

/** The grid as RGB pixels (what `imageGrid` encodes). */
export function composeGrid(
  images: readonly GridImage[],
  columns: number,
  o: GridOptions = {},
): { width: number; height: number; data: Uint8Array } {
  if (images.length === 0) throw new Error("grid: no images");
  if (!Number.isInteger(columns) || columns < 1)
    throw new Error(`grid: columns must be a positive integer, got ${columns}`);
  const scale = o.scale ?? 1;
  if (!Number.isInteger(scale) || scale < 1 || scale > 64)
    throw new Error(`grid: scale must be an integer 1-64, got ${scale}`);
  const gap = o.gap ?? 0;
  if (!Number.isInteger(gap) || gap < 0) throw new Error(`grid: gap must be a non-negative integer, got ${gap}`);
  const bg = o.background ?? [255, 255, 255];
  const channels = images.map(channelsOf);

  const cols = Math.min(columns, images.length);
  const rows = Math.ceil(images.length / cols);
  const cellW = Math.max(...images.map((im) => im.width)) * scale;
  const cellH = Math.max(...images.map((im) => im.height)) * scale;
  const width = cols * cellW + (cols + 1) * gap;
  const height = rows * cellH + (rows + 1) * gap;
  if (width * height > 1 << 28) throw new Error(`grid: ${width}x${height} is too large`);

  const out = new Uint8Array(width * height * 3);
  for (let p = 0; p < out.length; p += 3) {
    out[p] = bg[0];
    out[p + 1] = bg[1];
    out[p + 2] = bg[2];
  }
  images.forEach((img, i) => {
    const ch = channels[i];
    const w = img.width * scale;
    const h = img.height * scale;
    const x0 = gap + (i % cols) * (cellW + gap) + Math.floor((cellW - w) / 2);
    const y0 = gap + Math.floor(i / cols) * (cellH + gap) + Math.floor((cellH - h) / 2);
    for (let y = 0; y < h; y++) {
      const srcRow = Math.floor(y / scale) * img.width;
      let dst = ((y0 + y) * width + x0) * 3;
      for (let x = 0; x < w; x++, dst += 3) {
        const src = (srcRow + Math.floor(x / scale)) * ch;
        if (ch === 3) {
          out[dst] = img.data[src];
          out[dst + 1] = img.data[src + 1];
          out[dst + 2] = img.data[src + 2];
        } else {
          const a = img.data[src + 3] / 255;
          for (let c = 0; c < 3; c++) out[dst + c] = Math.round(img.data[src + c] * a + bg[c] * (1 - a));
        }
      }
    }
  });
  return { width, height, data: out };
}

/** A grid of images as PNG bytes, `columns` to a row (fewer when there are fewer images). */
export function imageGrid(images: readonly GridImage[], columns: number, o: GridOptions = {}): Uint8Array {
  const grid = composeGrid(images, columns, o);
  return encodePng({ ...grid, channels: 3 });
}
