// The 256² dot-detail reader: a subject rendered at 256² reads crisper than
// the same scene rendered at 64² and resized ×4 (bilinear), which is what
// stage 1 alone gives; no dot reads 0; pictures too small are refused.
import assert from "node:assert/strict";
import { test } from "node:test";
import { resize4 } from "../../src/demo/lab-upscaler.js";
import { readDotDetail } from "../../src/shapes/detail.js";
import { generateSubject, generateWorld, renderScene } from "../../src/shapes/world.js";

test("dot detail: native 256² renders of the subject are crisper than 64² renders resized ×4", () => {
  const scenes = generateSubject(7, 6);
  for (const scene of scenes) {
    const native = readDotDetail(renderScene(scene, { imageSize: 256 }));
    const resized = readDotDetail(resize4(renderScene(scene, { imageSize: 64 })));
    assert.ok(native.dotPixels > 500, `a dot is found (${native.dotPixels} px)`);
    // the margin: at least 0.05 of crispness (measured ≈ 0.10 on these scenes) between a sharp rim and a resized one
    assert.ok(
      native.crispness > resized.crispness + 0.05,
      `native ${native.crispness} vs resized ${resized.crispness}`,
    );
  }
});

test("dot detail: no dot reads 0; a picture under 128² is refused", () => {
  const plain = generateWorld(3, 20).find((s) => s.colour !== "red" && s.colour !== "yellow" && s.background !== "red");
  assert.ok(plain);
  assert.equal(readDotDetail(renderScene(plain, { imageSize: 256 })).crispness, 0);
  assert.throws(() => readDotDetail(renderScene(plain, { imageSize: 64 })), /at least 128×128.*64×64/);
});
