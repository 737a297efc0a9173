// The shapes-world analyser: right on the world's own images (clean and
// degraded), unknown on a blank image, any size, RGBA, and the subject's dot.
// Thresholds sit a little below what bench/analyser.ts measures (see
// docs/shapes-world.md), so they fail when the analyser breaks, not by chance.
import assert from "node:assert/strict";
import { test } from "node:test";
import { analyse } from "../../src/shapes/analyser.js";
import { addNoise, downUp, gaussianBlur } from "../../src/shapes/degrade.js";
import { WorldRng } from "../../src/shapes/rng.js";
import {
  generateSubject,
  generateWorld,
  type Image,
  PALETTE,
  renderScene,
  type Scene,
} from "../../src/shapes/world.js";

function accuracy(scenes: Scene[], degrade: (img: Image, i: number) => Image = (img) => img) {
  let [shape, colour, background] = [0, 0, 0];
  scenes.forEach((s, i) => {
    const a = analyse(degrade(renderScene(s), i));
    shape += +(a.shape === s.shape);
    colour += +(a.colour === s.colour);
    background += +(a.background === s.background);
  });
  const n = scenes.length;
  return { shape: shape / n, colour: colour / n, background: background / n };
}

test("at least 98 % right on 300 clean scenes (measured: 100 %)", () => {
  const acc = accuracy(generateWorld(11, 300));
  assert.ok(acc.shape >= 0.98, `shape ${acc.shape}`);
  assert.ok(acc.colour >= 0.98, `colour ${acc.colour}`);
  assert.ok(acc.background >= 0.98, `background ${acc.background}`);
});

test("holds up under blur + noise and an 8× down-up (measured: 100 % and 96.5 % shape)", () => {
  const scenes = generateWorld(12, 100);
  const soft = accuracy(scenes, (img, i) => addNoise(gaussianBlur(img, 1.5), 10, new WorldRng(12, i)));
  assert.ok(soft.shape >= 0.96 && soft.colour >= 0.96 && soft.background >= 0.96, JSON.stringify(soft));
  const coarse = accuracy(scenes, (img) => downUp(img, 8));
  assert.ok(coarse.shape >= 0.85, `shape ${coarse.shape}`);
  assert.ok(coarse.colour >= 0.96 && coarse.background >= 0.96, JSON.stringify(coarse));
});

test("a blank image has no object: unknown shape and colour, its background named when it is a palette colour", () => {
  const blank = (rgb: readonly number[]): Image => ({
    width: 64,
    height: 64,
    data: Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) => rgb[i % 3]),
  });
  const a = analyse(blank(PALETTE.green));
  assert.equal(a.found, false);
  assert.equal(a.shape, null);
  assert.equal(a.colour, null);
  assert.equal(a.dot, null);
  assert.equal(a.background, "green");
  assert.equal(a.confidence, 0);
  const white = analyse(blank([255, 255, 255]));
  assert.equal(white.found, false);
  assert.equal(white.background, null);
  // Noise alone is not an object either.
  assert.equal(analyse(addNoise(blank(PALETTE.blue), 10, new WorldRng(1))).found, false);
});

test("rotation does not matter; other sizes and RGBA work; results are deterministic", () => {
  const base: Scene = {
    shape: "triangle",
    colour: "purple",
    background: "yellow",
    cx: 30,
    cy: 33,
    size: 34,
    rotation: 0,
    imageSize: 64,
  };
  for (const shape of ["square", "triangle", "star"] as const) {
    for (let rotation = 0; rotation < 120; rotation += 13) {
      assert.equal(analyse(renderScene({ ...base, shape, rotation })).shape, shape, `${shape} at ${rotation}°`);
    }
  }
  for (const size of [32, 48, 128]) {
    const a = analyse(renderScene({ ...base, shape: "star" }, { imageSize: size }));
    assert.deepEqual([a.shape, a.colour, a.background], ["star", "purple", "yellow"], `at ${size} px`);
  }
  const rgb = renderScene({ ...base, shape: "circle" });
  const rgba = new Uint8Array(64 * 64 * 4);
  for (let i = 0; i < 64 * 64; i++) rgba.set([...rgb.data.subarray(i * 3, i * 3 + 3), 255], i * 4);
  const a = analyse({ width: 64, height: 64, data: rgba, channels: 4 });
  assert.deepEqual([a.shape, a.colour, a.background], ["circle", "purple", "yellow"]);
  assert.deepEqual(analyse(rgb), analyse(rgb));
  assert.ok(a.confidence > 0.5 && a.confidence <= 1, `confidence ${a.confidence}`);
  assert.throws(() => analyse({ width: 64, height: 64, data: new Uint8Array(10) }), /bytes for 64x64/);
});

test("finds the subject's red dot, and no dot on world images", () => {
  for (const s of generateSubject(3, 20)) {
    const a = analyse(renderScene(s));
    assert.deepEqual([a.shape, a.colour, a.dot], ["star", "yellow", "red"], JSON.stringify(s));
    const soft = analyse(gaussianBlur(renderScene(s), 1.5));
    assert.deepEqual([soft.shape, soft.colour, soft.dot], ["star", "yellow", "red"], `blurred ${JSON.stringify(s)}`);
  }
  for (const s of generateWorld(13, 60)) assert.equal(analyse(renderScene(s)).dot, null, JSON.stringify(s));
});
