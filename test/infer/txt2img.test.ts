// txt2img on tiny random models: deterministic per seed, CFG on and off,
// settings checked, nothing leaked.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { scope } from "../../src/engine/index.js";
import { toRgbBytes, txt2img } from "../../src/infer/txt2img.js";
import { checkLeaks } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const model = tinyStableDiffusion(3);
after(() => {
  model.unet.dispose();
  model.vae.dispose();
  model.textEncoder.dispose();
});

function latentsOf(o: Parameters<typeof txt2img>[1]): number[] {
  const r = txt2img(model, o);
  const out = r.latents.toArray();
  r.latents.dispose();
  r.images.dispose();
  return out;
}

test("the same seed gives the same latent; another seed another", () => {
  const o = { prompt: "a red star", negative: "blurry", steps: 3, seed: 11, sampler: "euler_a" };
  const a = latentsOf(o);
  assert.deepEqual(latentsOf(o), a);
  assert.notDeepEqual(latentsOf({ ...o, seed: 12 }), a);
  assert.equal(a.length, 4 * 8 * 8);
});

test("every sampler runs, with and without guidance, at a non-square size", () => {
  for (const sampler of ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"]) {
    for (const cfg of [1, 5]) {
      const r = txt2img(model, {
        prompt: "a (blue:1.2) circle",
        sampler,
        steps: 2,
        cfg,
        seed: 1,
        width: 16,
        height: 24,
        batch: 2,
      });
      assert.deepEqual(r.images.shape, [2, 3, 24, 16], sampler);
      assert.deepEqual(r.latents.shape, [2, 4, 12, 8]);
      scope(() => assert.ok(r.images.min().item() >= 0 && r.images.max().item() <= 1));
      const [first] = toRgbBytes(r.images);
      assert.equal(first.data.length, 24 * 16 * 3);
      r.latents.dispose();
      r.images.dispose();
    }
  }
});

test("bad settings are refused with the setting's name", () => {
  assert.throws(() => txt2img(model, { prompt: "x", width: 15 }), /width must be a positive multiple of 2, got 15/);
  assert.throws(() => txt2img(model, { prompt: "x", steps: 0 }), /steps must be an integer in 1..1000/);
  assert.throws(() => txt2img(model, { prompt: "x", seed: -1 }), /seed must be a non-negative integer/);
  assert.throws(() => txt2img(model, { prompt: "x", sampler: "plms" }), /unknown sampler "plms"/);
  assert.throws(() => txt2img(model, { prompt: "x", cfg: Number.NaN }), /cfg must be a number/);
});
