// generateRgb: the very bytes of txt2img + toRgbBytes, the latents shown to
// onLatents, and nothing leaked — also when txt2img or onLatents throws.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { Tensor } from "../../src/engine/index.js";
import { generateRgb } from "../../src/infer/generate-rgb.js";
import { toRgbBytes, txt2img } from "../../src/infer/txt2img.js";
import { checkLeaks } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const model = tinyStableDiffusion(4);
after(() => {
  model.unet.dispose();
  model.vae.dispose();
  model.textEncoder.dispose();
});

const o = { prompt: "a red star", negative: "blurry", steps: 2, seed: 5, batch: 2, width: 16, height: 24 };

test("the same bytes and settings as txt2img followed by toRgbBytes", () => {
  const r = txt2img(model, o);
  const expected = toRgbBytes(r.images);
  const latents = r.latents.toArray();
  r.images.dispose();
  r.latents.dispose();
  let seen: number[] = [];
  const got = generateRgb(model, { ...o, onLatents: (l) => (seen = l.toArray()) });
  assert.equal(got.images.length, 2);
  for (const [i, img] of got.images.entries()) {
    assert.deepEqual(
      { width: img.width, height: img.height, channels: img.channels },
      { width: 16, height: 24, channels: 3 },
    );
    assert.deepEqual(img.data, expected[i].data, `image ${i}`);
  }
  assert.deepEqual(seen, latents);
  assert.deepEqual(got.settings, r.settings);
});

test("the latents given to onLatents are freed afterwards", () => {
  let held: Tensor | undefined;
  generateRgb(model, { ...o, batch: 1, onLatents: (l) => (held = l) });
  assert.equal(held?.disposed, true);
});

test("an error in txt2img or in onLatents leaks no tensor", () => {
  assert.throws(() => generateRgb(model, { ...o, width: 15 }), /width must be a positive multiple of 2/);
  assert.throws(
    () =>
      generateRgb(model, {
        ...o,
        onLatents: () => {
          throw new Error("disk full");
        },
      }),
    /disk full/,
  );
});
