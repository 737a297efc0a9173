// The degradations the analyser is measured under: they keep flat images flat,
// blur spreads an edge, noise has the asked-for spread, and resizing keeps sizes.
import assert from "node:assert/strict";
import { test } from "node:test";
import { addNoise, colourCast, downUp, gaussianBlur, resizeBilinear } from "../../src/shapes/degrade.js";
import { WorldRng } from "../../src/shapes/rng.js";
import type { Image } from "../../src/shapes/world.js";

const flat = (w: number, h: number, rgb: number[]): Image => ({
  width: w,
  height: h,
  data: Uint8Array.from({ length: w * h * 3 }, (_, i) => rgb[i % 3]),
});

test("blur and resize keep a flat image flat", () => {
  const img = flat(32, 24, [200, 40, 90]);
  assert.deepEqual(gaussianBlur(img, 1.5), img);
  assert.deepEqual(resizeBilinear(img, 4, 3), flat(4, 3, [200, 40, 90]));
  assert.deepEqual(downUp(img, 8), img);
});

test("blur spreads a step edge symmetrically and keeps its mean", () => {
  const img = flat(16, 4, [0, 0, 0]);
  for (let y = 0; y < 4; y++) for (let x = 8; x < 16; x++) img.data.fill(255, (y * 16 + x) * 3, (y * 16 + x) * 3 + 3);
  const b = gaussianBlur(img, 1.5);
  const row = Array.from({ length: 16 }, (_, x) => b.data[x * 3]);
  assert.ok(row[7] > 40 && row[7] < 128 && row[8] > 128 && row[8] < 215, `${row}`);
  assert.equal(row[7] + row[8], 255);
  assert.equal(row[0], 0);
  assert.equal(row[15], 255);
});

test("noise has the asked-for spread and is reproducible from its rng", () => {
  const img = flat(64, 64, [128, 128, 128]);
  const a = addNoise(img, 10, new WorldRng(1));
  assert.deepEqual(addNoise(img, 10, new WorldRng(1)), a);
  let sum = 0;
  let sq = 0;
  for (const v of a.data) {
    sum += v - 128;
    sq += (v - 128) ** 2;
  }
  const n = a.data.length;
  assert.ok(Math.abs(sum / n) < 0.5, `mean ${sum / n}`);
  assert.ok(Math.abs(Math.sqrt(sq / n) - 10) < 0.5, `sd ${Math.sqrt(sq / n)}`);
});

test("down-up keeps the size and loses detail", () => {
  const img = flat(64, 64, [0, 0, 0]);
  img.data.fill(255, (32 * 64 + 32) * 3, (32 * 64 + 33) * 3); // one white pixel
  const out = downUp(img, 8);
  assert.deepEqual([out.width, out.height], [64, 64]);
  assert.ok(Math.max(...out.data) < 20, "a single pixel fades away");
});

test("a colour cast shifts each channel by one offset within the amplitude", () => {
  const img = flat(8, 8, [100, 150, 200]);
  const c = colourCast(img, 20, new WorldRng(4));
  const [r, g, b] = c.data;
  for (const [v, base] of [
    [r, 100],
    [g, 150],
    [b, 200],
  ]) {
    assert.ok(Math.abs(v - base) <= 20, `${v} vs ${base}`);
  }
  assert.deepEqual(c, flat(8, 8, [r, g, b]));
});
