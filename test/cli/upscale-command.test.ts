// atelier upscale: the fixture's picture through the CLI gives diffusers'
// 10-step upscale; bad inputs are refused with nothing written.
import assert from "node:assert/strict";
import { existsSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeAll } from "../../src/engine/index.js";
import { encodePng } from "../../src/formats/png.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { loadImage } from "../../src/train/data/image.js";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const MODEL = sharedFixture("upscaler");
const TOKENIZER = sharedFixture("tokenizer");

test("atelier upscale: the fixture's 10-step call, bytes within 2 of diffusers'; bad inputs write nothing", async () => {
  const dir = tempDir("upscale-cli");
  const { tensors } = loadSafetensors(sharedFixture("upscaler/pipeline_ddim10.safetensors"));
  try {
    const low = new Uint8Array(tensors.get("in.low_res_image_uint8")!.toArray());
    const ref = tensors.get("image_uint8")!.toArray();
    const input = join(dir, "low.png");
    writeFileSync(input, encodePng({ width: 16, height: 16, channels: 3, data: low }));
    const out = join(dir, "up.png");
    const common = [
      "--model",
      MODEL,
      "--tokenizer",
      TOKENIZER,
      "--prompt",
      "a high resolution photo of a red fox in the snow",
    ];
    const r = await cli(
      "upscale",
      ...common,
      "--image",
      input,
      "--negative",
      "blurry, low quality, jpeg artifacts",
      "--steps",
      "10",
      "--cfg",
      "7",
      "--noise-level",
      "20",
      "--seed",
      "7104",
      "--out",
      out,
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /16×16 → 64×64, seed 7104, noise level 20/);
    const img = await loadImage(out);
    assert.deepEqual([img.width, img.height], [64, 64]);
    let close = 0;
    for (let i = 0; i < ref.length; i++) if (Math.abs(img.data[i] - ref[i]) <= 2) close++;
    assert.ok(close / ref.length >= 0.99, `${close}/${ref.length} bytes within 2`);

    rmSync(out);
    const bad = await cli("upscale", ...common, "--image", input, "--noise-level", "351", "--out", out);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /noise level must be an integer in 0\.\.350/);
    const tiny = join(dir, "tiny.png");
    writeFileSync(tiny, encodePng({ width: 4, height: 4, channels: 3, data: new Uint8Array(48) }));
    const small = await cli("upscale", ...common, "--image", tiny, "--out", out);
    assert.equal(small.code, 1);
    assert.match(small.err, /is 4×4, smaller than the upscaler's 8×8 input/);
    const missing = await cli("upscale", ...common, "--image", join(dir, "nope.png"), "--out", out);
    assert.equal(missing.code, 2);
    assert.equal(existsSync(out), false);
    assert.deepEqual(readdirSync(dir).sort(), ["low.png", "tiny.png"]);
  } finally {
    disposeAll(tensors);
    rmSync(dir, { recursive: true, force: true });
  }
});
