// The base-model build end to end at a tiny scale (quickRecipe): the folder
// it writes loads like any diffusers model, keeps the recipe's configs, its
// tokenizer and quality report; an LDM single file of it loads back with the
// same configs (the recipe's head counts are the ones the LDM loader infers);
// and a rebuild reuses the finished VAE stage.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { saveCheckpoint } from "../../src/formats/checkpoint.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { buildBase, quickRecipe } from "../../src/shapes/base/build.js";
import { patternedScenes } from "../../src/shapes/base/data.js";
import { BASE_RECIPE } from "../../src/shapes/base/recipe.js";
import { checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const root = tempDir("atelier-base-");
after(() => rmSync(root, { recursive: true, force: true }));

const tiny = { ...quickRecipe(), scenes: 128 };
tiny.vaeTrain = { ...tiny.vaeTrain, steps: 4, decoderSteps: 2, warmup: 1 };
tiny.unetTrain = { ...tiny.unetTrain, steps: 4, batch: 8, warmup: 1 };
tiny.vaeRefine = { ...tiny.vaeRefine, steps: 2, warmup: 1 };
tiny.vaeDetail = { ...tiny.vaeDetail, steps: 2, warmup: 1, patternedScenes: 16 };

test("build-base writes a diffusers model that loads, with recipe, logs, tokenizer and quality report", async () => {
  const out = join(root, "base");
  const lines: string[] = [];
  const r = await buildBase({ out, recipe: tiny, qualitySamples: 1, keepWork: true, log: (l) => lines.push(l) });
  for (const f of ["model_index.json", "tokenizer/vocab.json", "recipe.json", "quality.json", "training/unet.jsonl"]) {
    assert.ok(existsSync(join(out, f)), `${f} is written`);
  }
  assert.equal(r.quality.prompts.length, 48, "every colour × shape, with and without a background");
  assert.equal(r.quality.vae.world.scenes, 400, "the VAE's reconstructions are read back");
  assert.equal(r.quality.vae.subject.scenes, 64);
  assert.ok(existsSync(join(out, "training", "vae-detail.jsonl")), "the detail stage's log is kept");
  const recipe = JSON.parse(readFileSync(join(out, "recipe.json"), "utf8"));
  assert.deepEqual(recipe.recipe.unet, tiny.unet);
  const m = loadStableDiffusion(out);
  try {
    assert.deepEqual(m.unet.config.blockOutChannels, BASE_RECIPE.unet.blockOutChannels);
    assert.equal(m.textEncoder.config.numHeads, BASE_RECIPE.text.numAttentionHeads);
    assert.equal(m.tokenizer.encode("a sks star").length, 5, "sks is one token of the world's vocabulary");
    assert.ok(m.vae.scalingFactor > 0 && m.vae.scalingFactor !== 1, "the measured scaling factor is in the config");
    // The same weights as one LDM file: the loader infers the same architecture.
    const single = join(root, "base.safetensors");
    saveCheckpoint(
      { unet: m.unet.stateDict(), vae: m.vae.stateDict(), textEncoder: m.textEncoder.stateDict() },
      single,
      {
        layout: "ldm",
      },
    );
    const again = loadStableDiffusion(single, { tokenizerDir: join(out, "tokenizer") });
    try {
      // Weights do not say the training size (sampleSize); everything else is inferred back.
      assert.deepEqual({ ...again.info.configs.unet, sampleSize: 8 }, m.info.configs.unet);
      assert.equal(again.textEncoder.config.numHeads, m.textEncoder.config.numHeads);
    } finally {
      disposeStableDiffusion(again);
    }
  } finally {
    disposeStableDiffusion(m);
  }
  // A second build finds the VAE stage in the work folder.
  const lines2: string[] = [];
  await buildBase({ out, recipe: tiny, qualitySamples: 1, log: (l) => lines2.push(l) });
  assert.ok(
    lines2.some((l) => l.startsWith("vae: reusing")),
    lines2.join("\n"),
  );
  assert.ok(!existsSync(`${out}.work`), "the work folder is removed after a finished build");
});

test("--vae-from: the VAE's first stages come from a built model, with their logs; the detail stage still runs", async () => {
  const from = join(root, "base");
  const out = join(root, "base-from");
  const lines: string[] = [];
  await buildBase({ out, recipe: tiny, qualitySamples: 1, vaeFrom: from, log: (l) => lines.push(l) });
  assert.ok(lines.includes(`vae: stages 1 and 1b from ${from}`), lines.join("\n"));
  assert.ok(
    !lines.some((l) => l.startsWith("vae: step") || l.startsWith("vae refine:")),
    "stages 1 and 1b did not run",
  );
  assert.ok(
    lines.some((l) => l.startsWith("vae detail: step")),
    "stage 1c ran",
  );
  assert.deepEqual(readFileSync(join(out, "training", "vae.jsonl")), readFileSync(join(from, "training", "vae.jsonl")));
  assert.equal(JSON.parse(readFileSync(join(out, "recipe.json"), "utf8")).vaeFrom, from);
  await assert.rejects(
    buildBase({ out: join(root, "bad"), recipe: { ...tiny, vae: { ...tiny.vae, latentChannels: 8 } }, vaeFrom: from }),
    /--vae-from .*: its VAE is not the recipe's/,
  );
});

test("patterned scenes for the VAE: dots and two-tone shapes, reproducible, never the Dreambooth subject", () => {
  const scenes = patternedScenes(3, 3000);
  assert.deepEqual(patternedScenes(3, 5), scenes.slice(0, 5), "a pure function of (seed, index)");
  for (const s of scenes) {
    assert.ok(s.pattern === "dotted" || s.pattern === "two-tone");
    assert.ok(s.patternColour !== s.colour && s.patternColour !== s.background && s.colour !== s.background);
    const subject = s.shape === "star" && s.colour === "yellow" && s.pattern === "dotted" && s.patternColour === "red";
    assert.ok(!subject, "the subject's own combination is left out");
  }
  const dotted = scenes.filter((s) => s.pattern === "dotted");
  assert.ok(dotted.length > 1200 && dotted.length < 1800, `about half dotted: ${dotted.length}`);
  assert.ok(
    dotted.some((s) => s.patternColour === "red" && s.colour === "yellow"),
    "red dots on yellow, on other shapes",
  );
});
