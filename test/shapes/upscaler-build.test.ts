// `atelier shapes build-upscaler`'s code path with a few steps per stage: it
// writes a StableDiffusionUpscalePipeline folder (fp16, the base's text
// encoder and tokenizer, both schedulers, max_noise_level, recipe.json) that
// the upscaler loader reads; a missing base is refused, nothing written.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { inspectSafetensors } from "../../src/formats/safetensors.js";
import { disposeUpscaler, loadUpscaler } from "../../src/models/upscaler/index.js";
import { shapesBasePath } from "../../src/shapes/base-path.js";
import { buildUpscaler } from "../../src/shapes/upscaler/build.js";
import { quickUpscalerRecipe, UPSCALER_RECIPE } from "../../src/shapes/upscaler/recipe.js";
import { checkLeaks, tempDir } from "../helpers.js";

checkLeaks();
const root = tempDir("atelier-shapes-upscaler-");
after(() => rmSync(root, { recursive: true, force: true }));

test("build-upscaler (quick recipe): a loadable ×4 upscaler sharing the base's text encoder", async () => {
  const out = join(root, "up");
  const r = await buildUpscaler({ out, recipe: quickUpscalerRecipe() });
  assert.ok(Number.isFinite(r.vaeLoss) && Number.isFinite(r.unetLoss));
  const index = JSON.parse(readFileSync(join(out, "model_index.json"), "utf8"));
  assert.equal(index._class_name, "StableDiffusionUpscalePipeline");
  assert.equal(index.max_noise_level, UPSCALER_RECIPE.maxNoiseLevel);
  const { tensors } = inspectSafetensors(join(out, "unet", "diffusion_pytorch_model.safetensors"));
  assert.ok(
    [...tensors.values()].every((t) => t.dtype === "float16"),
    "fp16 weights",
  );
  assert.deepEqual(
    readFileSync(join(out, "tokenizer", "vocab.json")),
    readFileSync(join(shapesBasePath(), "tokenizer", "vocab.json")),
  );
  const m = loadUpscaler(out);
  try {
    assert.equal(m.maxNoiseLevel, 350);
    assert.equal(m.scheduler.prediction_type, "v_prediction");
    assert.equal(m.unet.config.inChannels, 7);
    assert.equal(m.vae.config.blockOutChannels.length, 3, "a ×4 VAE");
  } finally {
    disposeUpscaler(m);
  }
  const recipe = JSON.parse(readFileSync(join(out, "recipe.json"), "utf8"));
  assert.equal(recipe.recipe.unetTrain.steps, quickUpscalerRecipe().unetTrain.steps);
  assert.ok(existsSync(join(out, "training", "unet.jsonl")));
});

test("build-upscaler: a missing base is refused before anything is written", async () => {
  const out = join(root, "nobase");
  await assert.rejects(
    buildUpscaler({ out, base: join(root, "absent"), recipe: quickUpscalerRecipe() }),
    /base model .* not found/,
  );
  assert.equal(existsSync(out), false);
});
