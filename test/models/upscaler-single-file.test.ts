// The ×4 upscaler from a single-file LDM checkpoint, as Stability-AI ships
// x4-upscaler-ema.safetensors (model.diffusion_model.label_emb.weight, the
// low_scale_model.* noise-schedule buffers, no metadata): its UNet and VAE
// equal the diffusers folder's outputs; loading is strict.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeAll, scope, type Tensor, tensor } from "../../src/engine/index.js";
import { saveCheckpoint } from "../../src/formats/checkpoint.js";
import { loadSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { disposeUpscaler, loadUpscaler, X4_LOW_RES_SCHEDULER_CONFIG } from "../../src/models/upscaler/index.js";
import { NoiseSchedule } from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const TOKENIZER = sharedFixture("tokenizer");

test("upscaler single file: LDM keys with label_emb load strictly and give the folder's UNet and VAE outputs", () => {
  const dir = tempDir("upscaler-single");
  const folder = loadUpscaler(sharedFixture("upscaler"), { tokenizerDir: TOKENIZER });
  const io = loadSafetensors(sharedFixture("upscaler/unet_io.safetensors")).tensors;
  try {
    const ldm = join(dir, "ldm.safetensors");
    const sd = {
      unet: folder.unet.stateDict(),
      vae: folder.vae.stateDict(),
      textEncoder: folder.textEncoder.stateDict(),
    };
    saveCheckpoint(sd, ldm, { layout: "ldm", configs: folder.info.configs });
    // as released: the low-res schedule's buffers beside the weights, and no metadata
    const { tensors } = loadSafetensors(ldm);
    assert.ok(tensors.has("model.diffusion_model.label_emb.weight"));
    const schedule = new NoiseSchedule(X4_LOW_RES_SCHEDULER_CONFIG);
    tensors.set("low_scale_model.alphas_cumprod", tensor(schedule.alphasCumprod));
    tensors.set("low_scale_model.betas", tensor(schedule.betas));
    const released = join(dir, "x4.safetensors");
    saveSafetensors(released, Object.fromEntries(tensors));
    const write = (name: string, edit: (m: Map<string, Tensor>) => void) => {
      const copy = new Map(tensors);
      edit(copy);
      saveSafetensors(join(dir, name), Object.fromEntries(copy));
      return join(dir, name);
    };
    const lacking = write("lacking.safetensors", (m) => m.delete("model.diffusion_model.out.2.bias"));
    const extraT = tensor(new Float32Array(4));
    const extra = write("extra.safetensors", (m) => m.set("model.diffusion_model.extra.weight", extraT));
    extraT.dispose();
    disposeAll(tensors);

    // shapes cannot tell GroupNorm groups or text heads: the tiny model's (the real one has the defaults, 32 and 16)
    const overrides = { unet: { normNumGroups: 4 }, vae: { normNumGroups: 4 }, textEncoder: { numAttentionHeads: 2 } };
    const single = loadUpscaler(released, { tokenizerDir: TOKENIZER, overrides });
    try {
      assert.equal(single.maxNoiseLevel, 350);
      assert.equal(single.info.predictionType, "v_prediction");
      assert.equal(single.scheduler.beta_start, 0.0001);
      assert.equal(single.unet.config.numClassEmbeds, 1000);
      assert.deepEqual(single.unet.config.onlyCrossAttention, [true, true, true, false]);
      assert.equal(single.unet.config.attentionHeadDim, 8);
      assert.equal(single.vae.config.blockOutChannels.length, 3);
      assert.ok(single.info.ignoredKeys.includes("low_scale_model.betas"));
      scope(() => {
        const args = [io.get("in.sample")!, io.get("in.timestep")!, io.get("in.encoder_hidden_states")!] as const;
        const out = single.unet.forward(...args, io.get("in.class_labels")!);
        assertClose(out, io.get("out.sample")!, { atol: 1e-5, rtol: 1e-4, what: "single-file out.sample" });
        const ids = folder.tokenizer.encodePadded("a red fox", 77, 0);
        const t = tensor(BigInt64Array.from(ids, BigInt), { shape: [1, 77] });
        assertClose(single.textEncoder.encode(t), folder.textEncoder.encode(t), { atol: 1e-6, rtol: 0, what: "text" });
      });
    } finally {
      disposeUpscaler(single);
    }
    assert.throws(
      () => loadUpscaler(lacking, { tokenizerDir: TOKENIZER, overrides }),
      /lacks 1 key: model\.diffusion_model\.out\.2\.bias/,
    );
    assert.throws(
      () => loadUpscaler(extra, { tokenizerDir: TOKENIZER, overrides }),
      /has unexpected 1 key: model\.diffusion_model\.extra\.weight/,
    );
  } finally {
    disposeUpscaler(folder);
    disposeAll(io);
    rmSync(dir, { recursive: true, force: true });
  }
});
