// The latent ×4 upscaler against diffusers 0.19.3 (the shared fixtures'
// upscaler/ folder): strict loading from the diffusers folder, the UNet's
// output and gradients with its noise-level class embedding, the VAE.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { cat, disposeAll, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { checkNoiseLevel, disposeUpscaler, loadUpscaler } from "../../src/models/upscaler/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-5, rtol: 1e-4 };
const GRAD = { atol: 1e-4, rtol: 1e-3 };
export const UPSCALER_DIR = sharedFixture("upscaler");
export const loadTinyUpscaler = () => loadUpscaler(UPSCALER_DIR, { tokenizerDir: sharedFixture("tokenizer") });

function withFile<T>(name: string, fn: (t: Map<string, Tensor>) => T): T {
  const { tensors } = loadSafetensors(sharedFixture(`upscaler/${name}`));
  try {
    return fn(tensors);
  } finally {
    disposeAll(tensors);
  }
}

function get(m: Map<string, Tensor>, key: string): Tensor {
  const t = m.get(key);
  if (!t) throw new Error(`fixture has no ${key}`);
  return t;
}

const meta = JSON.parse(readFileSync(sharedFixture("upscaler/upscaler_meta.json"), "utf8"));

test("upscaler: the diffusers folder loads strictly with its configs, schedulers and noise bound", () => {
  const m = loadTinyUpscaler();
  try {
    assert.equal(m.unet.config.inChannels, 7);
    assert.equal(m.unet.config.numClassEmbeds, 1000);
    assert.deepEqual(m.unet.config.onlyCrossAttention, [true, true, true, false]);
    assert.equal(m.vae.scalingFactor, 0.08333);
    assert.equal(m.maxNoiseLevel, 350);
    assert.equal(m.scheduler.prediction_type, "v_prediction");
    assert.equal(m.lowResScheduler._class_name, "DDPMScheduler");
    assert.equal(m.info.predictionType, "v_prediction");
    assert.equal(m.unet.stateDict().size, 687);
    assert.equal(m.vae.stateDict().size, 204);
    assert.equal(m.unet.parameterCount(), 480_348);
    assert.equal(m.vae.parameterCount(), 222_767);
    assert.equal(m.textEncoder.parameterCount(), 397_640);
    assert.ok(meta.n_params, "the meta records the parameter counts");
    // only_cross_attention: attn1 reads the 8-wide text in down_blocks.1 / up_blocks.2, itself in down_blocks.3
    const shape = (k: string) => m.unet.stateDict().get(k)?.shape;
    assert.deepEqual(shape("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight"), [16, 8]);
    assert.deepEqual(shape("up_blocks.2.attentions.1.transformer_blocks.0.attn1.to_v.weight"), [16, 8]);
    assert.deepEqual(shape("down_blocks.3.attentions.1.transformer_blocks.0.attn1.to_k.weight"), [32, 32]);
    assert.deepEqual(shape("mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight"), [32, 32]);
    assert.deepEqual(shape("class_embedding.weight"), [1000, 32]);
    assert.equal(checkNoiseLevel(m, 350), 350);
    assert.throws(() => checkNoiseLevel(m, 351), /noise level must be an integer in 0\.\.350/);
    assert.throws(() => checkNoiseLevel(m, -1), /0\.\.350/);
  } finally {
    disposeUpscaler(m);
  }
});

test("upscaler UNet: output and gradients equal diffusers' (class labels = noise levels)", (t) => {
  const m = loadTinyUpscaler();
  const params = m.unet.namedParameters();
  try {
    withFile("unet_io.safetensors", (io) =>
      scope(() => {
        const ts = get(io, "in.timestep");
        const labels = get(io, "in.class_labels");
        assert.deepEqual(labels.toArray(), [20, 350]);
        const ehsRef = get(io, "in.encoder_hidden_states");
        const out0 = m.unet.forward(get(io, "in.sample"), ts, ehsRef, labels);
        assertClose(out0, get(io, "out.sample"), { ...F32, what: "out.sample" });
        assertClose(m.unet.forward(get(io, "in.sample"), 500, ehsRef, labels), get(io, "out.sample_t500"), F32);
        const zeros = labels.mul(0);
        assertClose(m.unet.forward(get(io, "in.sample"), ts, ehsRef, zeros), get(io, "out.sample_class_labels_0"), F32);
        assert.throws(() => m.unet.forward(get(io, "in.sample"), ts, ehsRef), /class_labels must be given/);

        m.unet.requiresGrad_(true);
        const sample = get(io, "in.sample").clone().requiresGrad_();
        const ehs = ehsRef.clone().requiresGrad_();
        const loss = m.unet.forward(sample, ts, ehs, labels).mul(get(io, "in.R")).sum();
        assertClose([loss.item()], get(io, "loss"), { ...F32, what: "loss" });
        loss.backward();
        assertClose(sample.grad!, get(io, "grad.sample"), { ...GRAD, what: "grad.sample" });
        assertClose(ehs.grad!, get(io, "grad.encoder_hidden_states"), { ...GRAD, what: "grad.ehs" });
        const rows = params.get("class_embedding.weight")!.grad!;
        const picked = cat([rows.select(0, 20).unsqueeze(0), rows.select(0, 350).unsqueeze(0)]);
        assertClose(picked, get(io, "grad.class_embedding.weight.rows"), GRAD);
        assert.equal(rows.abs().sum().item(), picked.abs().sum().item(), "every other row is 0");
        const names = [...io.keys()]
          .filter((k) => k.startsWith("grad.") && !k.endsWith(".rows"))
          .map((k) => k.slice(5));
        let n = 0;
        for (const name of names) {
          if (name === "sample" || name === "encoder_hidden_states") continue;
          const g = params.get(name)?.grad;
          assert.ok(g, `no gradient for ${name}`);
          assertClose(g, get(io, `grad.${name}`), { ...GRAD, what: `grad.${name}` });
          n++;
        }
        assert.equal(n, 11);
        t.diagnostic(`loss ${loss.item()} vs ${get(io, "loss").item()}`);
      }),
    );
  } finally {
    disposeUpscaler(m);
  }
});

test("upscaler VAE: encoder, posterior and decoder equal diffusers'", () => {
  const m = loadTinyUpscaler();
  try {
    withFile("vae_io.safetensors", (io) =>
      scope(() => {
        const image = get(io, "in.image");
        assertClose(m.vae.encoder.forward(image), get(io, "out.encoder_hidden"), F32);
        const post = m.vae.encode(image);
        assertClose(post.moments, get(io, "out.moments"), F32);
        assertClose(post.mean, get(io, "out.posterior_mean"), F32);
        assertClose(post.logvar, get(io, "out.posterior_logvar"), F32);
        assertClose(post.std, get(io, "out.posterior_std"), F32);
        assertClose(m.vae.decode(post.mean), get(io, "out.decoded_posterior_mean"), F32);
        assertClose(m.vae.decode(get(io, "in.latent")), get(io, "out.decoded_latent"), F32);
      }),
    );
  } finally {
    disposeUpscaler(m);
  }
});
