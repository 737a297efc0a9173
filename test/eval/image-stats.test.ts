// Picture statistics on hand-built images: exact values of saturation, RMS
// contrast, Sobel edge and Laplacian variance for flat, grey and step images.
import assert from "node:assert/strict";
import { test } from "node:test";
import { imageStats, meanImageStats } from "../../src/eval/image-stats.js";
import type { PixelImage } from "../../src/shapes/analyser.js";

function image(w: number, h: number, px: (x: number, y: number) => [number, number, number]): PixelImage {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data.set(px(x, y), (y * w + x) * 3);
  return { width: w, height: h, data };
}

test("a flat saturated red image: saturation 1, no contrast, no edges", () => {
  const s = imageStats(image(5, 5, () => [255, 0, 0]));
  assert.equal(s.saturation, 1);
  assert.ok(Math.abs(s.contrast) < 1e-12);
  assert.ok(Math.abs(s.edge) < 1e-12);
  assert.ok(Math.abs(s.laplacian_var) < 1e-12);
});

test("grey pixels have saturation 0; black counts as 0", () => {
  assert.equal(imageStats(image(4, 4, () => [128, 128, 128])).saturation, 0);
  assert.equal(imageStats(image(4, 4, () => [0, 0, 0])).saturation, 0);
  // (max − min) / max = (200 − 100) / 200 = 0.5
  assert.equal(imageStats(image(4, 4, () => [200, 100, 100])).saturation, 0.5);
});

test("a black/white vertical step: RMS contrast 0.5, Sobel magnitude 4 next to the step", () => {
  // 4 columns: 0,0,255,255 — luma 0 or 1, half each, so std = 0.5.
  const s = imageStats(image(4, 3, (x) => (x < 2 ? [0, 0, 0] : [255, 255, 255])));
  assert.ok(Math.abs(s.contrast - 0.5) < 1e-9);
  // Interior pixels (1,1) and (2,1): gx = (1 + 2 + 1) − 0 = 4 each, gy = 0.
  assert.ok(Math.abs(s.edge - 4) < 1e-9);
  // Laplacian: +1 at (1,1), −1 at (2,1): mean 0, variance 1.
  assert.ok(Math.abs(s.laplacian_var - 1) < 1e-9);
});

test("meanImageStats averages, and too-small or short images are refused", () => {
  const m = meanImageStats([image(3, 3, () => [255, 0, 0]), image(3, 3, () => [128, 128, 128])]);
  assert.equal(m.saturation, 0.5);
  assert.throws(() => imageStats(image(2, 5, () => [0, 0, 0])), /too small/);
  assert.throws(() => imageStats({ width: 3, height: 3, data: new Uint8Array(5) }), /bytes/);
});
