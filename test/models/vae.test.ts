// AutoencoderKL against diffusers 0.19.3 (the shared fixtures' models/): the tiny
// VAE's encoder, posterior and decoder outputs, and the SD VAE key layout.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { disposeAll, Generator, randn, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { AutoencoderKL } from "../../src/models/vae/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-5, rtol: 1e-4 };

function tinyVae(): AutoencoderKL {
  const vae = new AutoencoderKL("tiny", { mode: "empty" });
  const { tensors } = loadSafetensors(sharedFixture("models/vae_tiny.safetensors"));
  try {
    vae.loadStateDict(tensors);
  } finally {
    disposeAll(tensors);
  }
  return vae.eval();
}

test("tiny VAE: encoder, posterior and decoder outputs equal diffusers'", (t) => {
  const vae = tinyVae();
  const { tensors: io } = loadSafetensors(sharedFixture("models/vae_tiny_io.safetensors"));
  const ref = (k: string): Tensor => {
    const v = io.get(k);
    if (!v) throw new Error(`fixture has no ${k}`);
    return v;
  };
  try {
    scope(() => {
      const image = ref("in.image");
      const posterior = vae.encode(image);
      const outputs: [string, Tensor][] = [
        ["out.encoder_hidden", vae.encoder.forward(image)],
        ["out.moments", posterior.moments],
        ["out.posterior_mean", posterior.mean],
        ["out.posterior_logvar", posterior.logvar],
        ["out.posterior_std", posterior.std],
        ["out.decoded_posterior_mean", vae.decode(posterior.mean)],
        ["out.decoded_latent", vae.decode(ref("in.latent"))],
        ["out.decoded_latent_f64", vae.decode(ref("in.latent"))],
      ];
      const checked = new Set(outputs.map(([k]) => k));
      assert.deepEqual(
        [...io.keys()].filter((k) => k.startsWith("out.") && !checked.has(k)),
        [],
      );
      for (const [key, value] of outputs) {
        assertClose(value, ref(key), { ...F32, what: key });
        const err = scope(() => value.sub(ref(key).float()).abs().max().item());
        t.diagnostic(`${key} max |err| ${err.toExponential(2)}`);
      }
    });
  } finally {
    disposeAll(io);
    vae.dispose();
  }
});

test("tiny VAE: posterior samples are mean + std·ε with ε from the generator", () => {
  const vae = tinyVae();
  const g = new Generator();
  scope(() => {
    const image = randn([2, 3, 16, 16]).tanh();
    const posterior = vae.encode(image);
    const a = posterior.sample(g.manualSeed(7));
    const eps = randn(posterior.mean.shape, { generator: g.manualSeed(7) });
    assertClose(a, posterior.mean.add(posterior.std.mul(eps)), { atol: 1e-6, rtol: 1e-6 });
    // tiny has no scaling: encodeToLatents is a sample, decodeLatents a decode
    assert.equal(vae.scalingFactor, 1);
    assertClose(vae.encodeToLatents(image, g.manualSeed(7)), a, { atol: 0, rtol: 0 });
    assertClose(vae.decodeLatents(a), vae.decode(a), { atol: 0, rtol: 0 });
    assert.deepEqual(vae.decode(a).shape, [2, 3, 16, 16]);
  });
  g.dispose();
  vae.dispose();
});

test("sd preset: parameter keys, shapes and count equal diffusers' SD1.5 VAE", () => {
  const ref = JSON.parse(readFileSync(sharedFixture("models/sd15_diffusers_keys.json"), "utf8")) as {
    vae: Record<string, { shape: number[] }>;
    param_counts: { vae: number };
  };
  const vae = new AutoencoderKL("sd", { mode: "empty" });
  try {
    const own = new Map([...vae.namedParameters()].map(([k, v]) => [k, v.shape]));
    assert.deepEqual([...own.keys()].sort(), Object.keys(ref.vae).sort());
    for (const [k, shape] of own) assert.deepEqual(shape, ref.vae[k].shape, k);
    assert.equal(vae.parameterCount(), 83_653_863);
    assert.equal(ref.param_counts.vae, 83_653_863);
    assert.equal(vae.scalingFactor, 0.18215);
  } finally {
    vae.dispose();
  }
});

test("sd preset: a 64×64 image encodes to 4×8×8 latents and decodes back to 64×64", () => {
  const g = new Generator(0);
  const vae = new AutoencoderKL("sd", { generator: g }).eval();
  scope(() => {
    const latents = vae.encodeToLatents(randn([1, 3, 64, 64]).tanh(), g);
    assert.deepEqual(latents.shape, [1, 4, 8, 8]);
    assert.deepEqual(vae.decodeLatents(latents).shape, [1, 3, 64, 64]);
  });
  g.dispose();
  vae.dispose();
});
