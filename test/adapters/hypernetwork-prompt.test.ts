// <hypernet:NAME:m> in prompts: found by stem under the hypernetworks
// folders, applied for the one generation (the image changes, and more with
// a larger multiplier), taken off afterwards; an unknown name is an error.
// Embedding words in the prompt and the negative prompt go through txt2img too.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { loadEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { EmbeddingDatabase } from "../../src/adapters/embeddings.js";
import { txt2img } from "../../src/infer/txt2img.js";
import { disposeStableDiffusion } from "../../src/models/stable-diffusion.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const base = { negative: "blurry", steps: 2, seed: 5, width: 16, height: 16, sampler: "euler" };

function image(model: ReturnType<typeof tinyStableDiffusion>, o: Parameters<typeof txt2img>[1]): number[] {
  const r = txt2img(model, o);
  try {
    return r.images.toArray();
  } finally {
    r.images.dispose();
    r.latents.dispose();
  }
}

const diff = (a: number[], b: number[]) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

test("<hypernet:name:m> applies the named file for one generation, then the model is as before", () => {
  const dir = tempDir("hn-prompt-");
  mkdirSync(join(dir, "styles"));
  copyFileSync(sharedFixture("adapters/a1111_hypernetwork_relu.pt"), join(dir, "styles", "relu.pt"));
  const model = tinyStableDiffusion(4);
  try {
    const plain = image(model, { ...base, prompt: "a red square", hypernetworkDirs: [dir] });
    const half = image(model, { ...base, prompt: "a red square <hypernet:relu:0.5>", hypernetworkDirs: [dir] });
    const full = image(model, { ...base, prompt: "a red square <hypernet:relu:1>", hypernetworkDirs: [dir] });
    assert.ok(diff(plain, half) > 1e-4, "the hypernetwork changes the image");
    assert.ok(diff(plain, full) > diff(plain, half), "a larger multiplier changes it more");
    assert.deepEqual(image(model, { ...base, prompt: "a red square" }), plain, "taken off after the generation");
    assert.throws(
      () => image(model, { ...base, prompt: "x <hypernet:nope:1>", hypernetworkDirs: [dir] }),
      /hypernetwork 'nope' not found: looked for nope\.pt under/,
    );
  } finally {
    disposeStableDiffusion(model);
  }
});

test("an embedding's word in the negative prompt is used as in the prompt", () => {
  const model = tinyStableDiffusion(4);
  const db = new EmbeddingDatabase(model.tokenizer, 32);
  try {
    db.add({ ...loadEmbeddingFile(sharedFixture("adapters/a1111_embedding.pt")), name: "zqx-neg" });
    const without = image(model, { ...base, prompt: "a square", negative: "zqx-neg" });
    const withEmb = image(model, { ...base, prompt: "a square", negative: "zqx-neg", embeddings: db });
    assert.ok(diff(without, withEmb) > 1e-5);
  } finally {
    db.dispose();
    disposeStableDiffusion(model);
  }
});
