// Picture statistics for the lab's LyCORIS claims (issue 14, item 4): how
// saturated, how contrasted and how sharp-edged samples are, so "LoHa is
// greyer / foggier" and "LoCon loses edge detail" become numbers.
//  - saturation: HSV saturation (max − min) / max per pixel, mean over the image
//    (the definition of Python's colorsys.rgb_to_hsv), in 0..1;
//  - contrast: RMS contrast, the standard deviation of luma (Rec. 601
//    weights 0.299, 0.587, 0.114) over the image, luma in 0..1;
//  - edge sharpness: mean Sobel gradient magnitude of luma (interior pixels),
//    and the variance of the 4-neighbour Laplacian of luma (the usual
//    focus measure, as OpenCV's cv2.Laplacian(...).var() with ksize 1).
import type { PixelImage } from "../shapes/analyser.js";

export interface ImageStats {
  saturation: number;
  contrast: number;
  edge: number;
  laplacian_var: number;
}

function lumaOf(img: PixelImage): Float64Array {
  const c = img.channels ?? (img.data.length === img.width * img.height * 4 ? 4 : 3);
  const n = img.width * img.height;
  if (img.data.length !== n * c) {
    throw new Error(`imageStats: ${img.width}x${img.height}x${c} image has ${img.data.length} bytes`);
  }
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const r = img.data[i * c] / 255;
    const g = img.data[i * c + 1] / 255;
    const b = img.data[i * c + 2] / 255;
    y[i] = 0.299 * r + 0.587 * g + 0.114 * b;
  }
  return y;
}

function saturationOf(img: PixelImage): number {
  const c = img.channels ?? (img.data.length === img.width * img.height * 4 ? 4 : 3);
  const n = img.width * img.height;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const r = img.data[i * c];
    const g = img.data[i * c + 1];
    const b = img.data[i * c + 2];
    const mx = Math.max(r, g, b);
    if (mx > 0) sum += (mx - Math.min(r, g, b)) / mx;
  }
  return sum / n;
}

/** Saturation, contrast and edge sharpness of one image (see the file comment). */
export function imageStats(img: PixelImage): ImageStats {
  const { width: w, height: h } = img;
  if (w < 3 || h < 3) throw new Error(`imageStats: a ${w}x${h} image is too small (3x3 at least)`);
  const y = lumaOf(img);
  let mean = 0;
  for (const v of y) mean += v;
  mean /= y.length;
  let sq = 0;
  for (const v of y) sq += (v - mean) ** 2;
  const at = (x: number, yy: number) => y[yy * w + x];
  let grad = 0;
  const lap: number[] = [];
  for (let j = 1; j < h - 1; j++) {
    for (let i = 1; i < w - 1; i++) {
      const gx =
        at(i + 1, j - 1) + 2 * at(i + 1, j) + at(i + 1, j + 1) - at(i - 1, j - 1) - 2 * at(i - 1, j) - at(i - 1, j + 1);
      const gy =
        at(i - 1, j + 1) + 2 * at(i, j + 1) + at(i + 1, j + 1) - at(i - 1, j - 1) - 2 * at(i, j - 1) - at(i + 1, j - 1);
      grad += Math.hypot(gx, gy);
      lap.push(at(i + 1, j) + at(i - 1, j) + at(i, j + 1) + at(i, j - 1) - 4 * at(i, j));
    }
  }
  const lm = lap.reduce((a, b) => a + b, 0) / lap.length;
  const lv = lap.reduce((a, b) => a + (b - lm) ** 2, 0) / lap.length;
  return {
    saturation: saturationOf(img),
    contrast: Math.sqrt(sq / y.length),
    edge: grad / ((w - 2) * (h - 2)),
    laplacian_var: lv,
  };
}

/** The mean of each statistic over a set of images (all zero for none). */
export function meanImageStats(images: readonly PixelImage[]): ImageStats {
  const total: ImageStats = { saturation: 0, contrast: 0, edge: 0, laplacian_var: 0 };
  for (const img of images) {
    const s = imageStats(img);
    total.saturation += s.saturation;
    total.contrast += s.contrast;
    total.edge += s.edge;
    total.laplacian_var += s.laplacian_var;
  }
  const n = Math.max(1, images.length);
  return {
    saturation: total.saturation / n,
    contrast: total.contrast / n,
    edge: total.edge / n,
    laplacian_var: total.laplacian_var / n,
  };
}
