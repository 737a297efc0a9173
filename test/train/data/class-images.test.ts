// Class images generated with a tiny random SD model at 16×16 fill the class
// folder once and are reused; the text-embedding cache over its frozen
// text encoder.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { Generator, noGrad } from "../../../src/engine/index.js";
import { readPngText } from "../../../src/formats/png.js";
import { encodePrompts } from "../../../src/infer/prompt-encoding.js";
import type { StableDiffusion } from "../../../src/infer/txt2img.js";
import { ClipTextModel, ClipTokenizer } from "../../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../../src/models/unet/index.js";
import { AutoencoderKL } from "../../../src/models/vae/index.js";
import { SD15_SCHEDULER_CONFIG } from "../../../src/schedulers/index.js";
import { ensureClassImages } from "../../../src/train/data/class-images.js";
import { Dataset, disposeBatch } from "../../../src/train/data/dataset.js";
import { loadImage } from "../../../src/train/data/image.js";
import { TextEmbeddingCache } from "../../../src/train/data/text-cache.js";
import { assertClose, checkLeaks, sharedFixture } from "../../helpers.js";
import { concept as makeConcept } from "./concept.js";
import { tempDir, writeImage } from "./images.js";

checkLeaks();

// As test/infer/txt2img.test.ts: the three tiny networks, random weights, frozen.
function tinyModel(): StableDiffusion {
  const generator = new Generator(3);
  const init = { generator };
  const textConfig = {
    vocabSize: 49408,
    hiddenSize: 32,
    intermediateSize: 37,
    numLayers: 2,
    numHeads: 4,
    maxPositions: 77,
    hiddenAct: "quick_gelu" as const,
    layerNormEps: 1e-5,
  };
  const model: StableDiffusion = {
    unet: new UNet2DConditionModel("tiny", init).eval().requiresGrad_(false),
    vae: new AutoencoderKL("tiny", init).eval().requiresGrad_(false),
    textEncoder: new ClipTextModel(textConfig, init).eval().requiresGrad_(false),
    tokenizer: ClipTokenizer.fromDir(sharedFixture("tokenizer")),
    scheduler: SD15_SCHEDULER_CONFIG,
    kind: "sd1",
    device: "cpu",
    name: "tiny",
  };
  generator.dispose();
  return model;
}

const model = tinyModel();
after(() => {
  model.unet.dispose();
  model.vae.dispose();
  model.textEncoder.dispose();
});

const root = tempDir();
const pngs = (dir: string) => readdirSync(dir).filter((f) => f.endsWith(".png"));

test("ensureClassImages fills the class folder to num_class_images, then reuses it", async () => {
  const concept = makeConcept({
    instance_data_dir: join(root, "inst"),
    instance_prompt: "",
    class_data_dir: join(root, "class"),
    class_prompt: "a photo of a dog",
    num_class_images: 3,
    class_infer_steps: 2,
    class_batch_size: 2,
  });
  const progress: [number, number][] = [];
  const o = { seed: 5, negative: "blurry", width: 16, height: 16, sampler: "ddim" };
  const first = await ensureClassImages(concept, model, { ...o, onProgress: (d, t) => progress.push([d, t]) });
  assert.equal(first.existing, 0);
  assert.equal(first.generated.length, 3);
  assert.deepEqual(progress, [
    [1, 3],
    [2, 3],
    [3, 3],
  ]);
  assert.equal(pngs(concept.class_data_dir!).length, 3);
  for (const p of first.generated) {
    const img = await loadImage(p);
    assert.deepEqual([img.width, img.height], [16, 16]);
    const params = readPngText(readFileSync(p)).parameters;
    assert.match(params, /^a photo of a dog\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM/);
    assert.equal(readFileSync(p.replace(/\.png$/, ".txt"), "utf8"), "a photo of a dog");
  }
  assert.ok(!readdirSync(concept.class_data_dir!).some((f) => f.includes(".tmp-")));

  // The second call finds them and generates nothing.
  const second = await ensureClassImages(concept, model, o);
  assert.deepEqual([second.existing, second.generated.length], [3, 0]);

  // Asking for more adds only the missing ones, under new names; images already there count.
  await writeImage(join(concept.class_data_dir!, "mine.png"), 16, 16, 3);
  const third = await ensureClassImages({ ...concept, num_class_images: 5 }, model, o);
  assert.deepEqual([third.existing, third.generated.length], [4, 1]);
  assert.equal(pngs(concept.class_data_dir!).length, 5);
  assert.ok(!first.generated.includes(third.generated[0]));

  await assert.rejects(
    ensureClassImages({ ...concept, class_prompt: "", num_class_images: 9 }, model, o),
    /a class prompt is needed/,
  );
});

test("the text-embedding cache equals encodePrompts and refuses a training encoder", async () => {
  const dir = tempDir();
  // emphasis "none": with its untrained final layer norm (bias 0) the tiny encoder's output has a mean
  // of exactly 0 for some prompts, and the "original" emphasis rescale (mean / mean) is then 0/0.
  const base = { textEncoder: model.textEncoder, tokenizer: model.tokenizer, dir, emphasis: "none" as const };
  const cache = new TextEmbeddingCache(base);
  const prompts = ["a photo of sks dog", "", "a photo of sks dog"];
  const got = cache.encode(prompts);
  const ref = noGrad(() => encodePrompts(model.textEncoder, model.tokenizer, prompts, { emphasis: "none" }));
  assert.ok(got.toArray().every(Number.isFinite));
  assertClose(got, ref, { atol: 1e-6 });
  assert.equal(cache.size, 2);
  assert.equal(readdirSync(dir).length, 2);
  // Again from memory, and from disk in a new cache.
  const again = cache.encode(prompts);
  const fresh = new TextEmbeddingCache(base);
  const fromDisk = fresh.encode(prompts);
  assert.deepEqual(again.toArray(), got.toArray());
  assert.deepEqual(fromDisk.toArray(), got.toArray());
  // Clip skip is part of the key.
  const skip = new TextEmbeddingCache({ ...base, clipSkip: 2 });
  const s2 = skip.encode(["a photo of sks dog"]);
  assert.notDeepEqual(s2.toArray(), got.toArray().slice(0, s2.numel));
  assert.equal(readdirSync(dir).length, 3);
  for (const t of [got, ref, again, fromDisk, s2]) t.dispose();
  for (const c of [cache, fresh, skip]) c.dispose();

  // A text encoder that trains cannot be cached.
  const p = model.textEncoder.parameters()[0];
  p.requiresGrad_(true);
  try {
    const c = new TextEmbeddingCache({ textEncoder: model.textEncoder, tokenizer: model.tokenizer });
    assert.throws(() => c.encode(["x"]), /trainable parameters/);
  } finally {
    p.requiresGrad_(false);
  }
});

test("a dataset with class images from ensureClassImages, latents and cached conditioning", async () => {
  const inst = join(root, "inst2");
  for (let i = 0; i < 2; i++) await writeImage(join(inst, `${i}.png`), 16, 16, i);
  const concept = makeConcept({
    instance_data_dir: inst,
    instance_prompt: "sks dog",
    class_data_dir: join(root, "class2"),
    class_prompt: "a dog",
    num_class_images: 2, // one per instance image
    class_infer_steps: 1,
  });
  const made = await ensureClassImages(concept, model, { seed: 1, width: 16, height: 16 });
  assert.equal(made.generated.length, 2);
  const textCache = new TextEmbeddingCache({ textEncoder: model.textEncoder, tokenizer: model.tokenizer });
  const ds = await Dataset.open({
    concepts: [concept],
    resolution: 16,
    batchSize: 2,
    latents: { vae: model.vae },
    textCache,
  });
  for await (const b of ds.epochBatches(0)) {
    assert.deepEqual(b.isClass, [false, false, true, true]);
    assert.deepEqual(b.prompts, ["sks dog", "sks dog", "a dog", "a dog"]);
    assert.deepEqual(b.latents!.shape, [4, 4, 8, 8]);
    assert.deepEqual(b.context!.shape, [4, 77, 32]);
    disposeBatch(b);
  }
  ds.dispose();
  textCache.dispose();
});
