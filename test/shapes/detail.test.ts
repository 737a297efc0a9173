// The 256² dot-detail reader: a subject rendered at 256² reads crisper than
// the same scene rendered at 64² and resized ×4 (bilinear), which is what
// stage 1 alone gives; no dot reads 0; pictures too small are refused.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readDotDetail } from "../../src/shapes/detail.js";
import { generateSubject, generateWorld, type Image, renderScene } from "../../src/shapes/world.js";

/** Bilinear ×4 (half-pixel centres, as torch interpolate align_corners=False). */
function resize4(img: Image): Image {
  const w = img.width * 4;
  const h = img.height * 4;
  const data = new Uint8Array(w * h * 3);
  const at = (x: number, y: number, c: number) =>
    img.data[(Math.min(img.height - 1, Math.max(0, y)) * img.width + Math.min(img.width - 1, Math.max(0, x))) * 3 + c];
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const sx = (x + 0.5) / 4 - 0.5;
      const sy = (y + 0.5) / 4 - 0.5;
      const [x0, y0] = [Math.floor(sx), Math.floor(sy)];
      const [fx, fy] = [sx - x0, sy - y0];
      for (let c = 0; c < 3; c++) {
        const top = at(x0, y0, c) * (1 - fx) + at(x0 + 1, y0, c) * fx;
        const bottom = at(x0, y0 + 1, c) * (1 - fx) + at(x0 + 1, y0 + 1, c) * fx;
        data[(y * w + x) * 3 + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  return { width: w, height: h, data };
}

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
