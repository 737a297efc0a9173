// generate --upscaler: the base's picture, then ×4 through the upscaler —
// the same bytes as `atelier upscale` on the base's picture with the same
// prompt and seed; a model that is not an upscaler, or a noise level out of
// range, is refused with nothing written.
import assert from "node:assert/strict";
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { loadImage } from "../../src/train/data/image.js";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

test("generate --upscaler: two stages, equal to upscaling the base's picture; bad pairings write nothing", async () => {
  const dir = tempDir("generate-upscaler");
  try {
    const base = join(dir, "base.safetensors");
    writeTinyCheckpoint(base, 4);
    const common = ["--tokenizer", sharedFixture("tokenizer"), "--prompt", "a red fox", "--seed", "11"];
    const out = join(dir, "two.png");
    const gen = ["generate", "--model", base, ...common, "--steps", "2", "--width", "16", "--height", "16"];
    const up = ["--upscaler", sharedFixture("upscaler"), "--upscaler-steps", "2", "--noise-level", "30"];
    const r = await cli(...gen, ...up, "--out", out);
    assert.equal(r.code, 0, r.err);
    const low = await loadImage(join(dir, "two-base.png"));
    const high = await loadImage(out);
    assert.deepEqual([low.width, low.height, high.width, high.height], [16, 16, 64, 64]);

    const again = join(dir, "again.png");
    const u = await cli(
      "upscale",
      "--model",
      sharedFixture("upscaler"),
      ...common,
      "--image",
      join(dir, "two-base.png"),
      "--steps",
      "2",
      "--noise-level",
      "30",
      "--out",
      again,
    );
    assert.equal(u.code, 0, u.err);
    assert.deepEqual((await loadImage(again)).data, high.data, "two-stage = upscale of the base's picture");

    const before = readdirSync(dir).sort();
    const notUpscaler = await cli(...gen, "--upscaler", base, "--out", join(dir, "bad.png"));
    assert.equal(notUpscaler.code, 1);
    assert.match(notUpscaler.err, /is not a ×4 upscaler: its UNet has no class embedding/);
    const loud = await cli(...gen, ...up.slice(0, 4), "--noise-level", "351", "--out", join(dir, "bad.png"));
    assert.equal(loud.code, 1);
    assert.match(loud.err, /noise level must be an integer in 0\.\.350/);
    const big = ["generate", "--model", base, ...common, "--width", "256", "--height", "256"];
    const family = await cli(...big, ...up, "--out", join(dir, "bad.png"));
    assert.equal(family.code, 1);
    assert.match(
      family.err,
      /256×256 pictures do not fit the upscaler .*trained on 16×16 inputs: a base of another family/,
    );
    assert.deepEqual(readdirSync(dir).sort(), before, "nothing written");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
