// UNet2DConditionModel against diffusers 0.19.3 (the shared fixtures' models/):
// outputs and gradients of the tiny UNet, and the SD1.5 / SD2.1 key layout.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { disposeAll, randn, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import type { Attention } from "../../src/models/blocks/index.js";
import { sd15, tiny, UNet2DConditionModel, unetConfigFromDiffusers } from "../../src/models/unet/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-5, rtol: 1e-4 };
const GRAD = { atol: 1e-4, rtol: 1e-3 };

/** Runs `fn` with the tensors of a fixture file, then frees them. */
function withFile<T>(name: string, fn: (t: Map<string, Tensor>) => T, dtype?: "float32"): T {
  const { tensors } = loadSafetensors(sharedFixture(`models/${name}`), { dtype });
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

/** The tiny UNet with the fixture weights (strict loading: every key, no extras). */
function tinyUnet(file = "unet_tiny.safetensors"): UNet2DConditionModel {
  const unet = new UNet2DConditionModel("tiny", { mode: "empty" });
  withFile(file, (w) => unet.loadStateDict(w), "float32");
  return unet.eval();
}

function maxError(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().max().item());
}

test("tiny UNet: the output equals diffusers' for per-sample and scalar timesteps", (t) => {
  const unet = tinyUnet();
  withFile("unet_tiny_io.safetensors", (io) =>
    scope(() => {
      const [sample, ehs, ts] = [get(io, "in.sample"), get(io, "in.encoder_hidden_states"), get(io, "in.timestep")];
      assert.deepEqual(ts.toArray(), [999, 10]);
      const out = unet.forward(sample, ts, ehs);
      assertClose(out, get(io, "out.sample"), { ...F32, what: "out.sample" });
      t.diagnostic(`out.sample max |err| ${maxError(out, get(io, "out.sample")).toExponential(2)}`);

      const ref500 = get(io, "out.sample_t500");
      const byNumber = unet.forward(sample, 500, ehs);
      assertClose(byNumber, ref500, { ...F32, what: "out.sample_t500 (number)" });
      const byScalar = unet.forward(sample, ts.select(0, 0).sub(499), ehs);
      assertClose(byScalar, ref500, { ...F32, what: "out.sample_t500 (0-d tensor)" });
      t.diagnostic(`out.sample_t500 max |err| ${maxError(byNumber, ref500).toExponential(2)}`);
      assertClose(out, get(io, "out.sample_f64"), { ...F32, what: "out.sample_f64" });
    }),
  );
  unet.dispose();
});

test("tiny UNet: float16 weights upcast to float32 give diffusers' output", (t) => {
  const unet = tinyUnet("unet_tiny_f16.safetensors");
  withFile("unet_tiny_io.safetensors", (io) =>
    scope(() => {
      const out = unet.forward(get(io, "in.sample"), get(io, "in.timestep"), get(io, "in.encoder_hidden_states"));
      const ref = get(io, "out.sample_from_f16_weights");
      assertClose(out, ref, { ...F32, what: "out.sample_from_f16_weights" });
      t.diagnostic(`out.sample_from_f16_weights max |err| ${maxError(out, ref).toExponential(2)}`);
    }),
  );
  unet.dispose();
});

test("tiny UNet: gradients of Σ out·R equal torch autograd's", (t) => {
  const unet = tinyUnet();
  const params = unet.namedParameters();
  withFile("unet_tiny_io.safetensors", (io) => {
    scope(() => {
      const sample = get(io, "in.sample").clone().requiresGrad_();
      const ehs = get(io, "in.encoder_hidden_states").clone().requiresGrad_();
      const loss = unet.forward(sample, get(io, "in.timestep"), ehs).mul(get(io, "in.R")).sum();
      assertClose([loss.item()], get(io, "loss"), { ...F32, what: "loss" });
      loss.backward();
      const checks: [string, Tensor | null][] = [
        ["sample", sample.grad],
        ["encoder_hidden_states", ehs.grad],
      ];
      const names = [...io.keys()].filter((k) => k.startsWith("grad.")).map((k) => k.slice(5));
      assert.equal(names.length, 13);
      for (const name of names) {
        if (name === "sample" || name === "encoder_hidden_states") continue;
        const p = params.get(name);
        assert.ok(p, `no parameter ${name}`);
        checks.push([name, p.grad]);
      }
      let worst = 0;
      for (const [name, g] of checks) {
        assert.ok(g, `no gradient for ${name}`);
        const ref = get(io, `grad.${name}`);
        assertClose(g, ref, { ...GRAD, what: `grad.${name}` });
        worst = Math.max(worst, maxError(g, ref));
      }
      t.diagnostic(`gradients (${checks.length}) max |err| ${worst.toExponential(2)}`);
    });
  });
  unet.dispose();
});

test("tiny UNet: sizes that are not a multiple of 2 upsample to the skip's size", () => {
  const unet = tinyUnet();
  scope(() => {
    const out = unet.forward(randn([1, 4, 7, 9]), 10, randn([1, 5, 32]));
    assert.deepEqual(out.shape, [1, 4, 7, 9]);
  });
  unet.dispose();
});

interface KeyFile {
  configs: { unet: Record<string, unknown> };
  unet: Record<string, { shape: number[] }>;
  param_counts: { unet: number };
}

test("diffusers config.json objects map onto the presets", () => {
  const ref = JSON.parse(readFileSync(sharedFixture("models/sd15_diffusers_keys.json"), "utf8")) as KeyFile;
  const meta = JSON.parse(readFileSync(sharedFixture("models/models_meta.json"), "utf8")) as {
    unet_tiny: { config: Record<string, unknown> };
  };
  const defaults = { numAttentionHeads: undefined, transformerLayersPerBlock: 1, dropout: 0 };
  assert.deepEqual(unetConfigFromDiffusers(ref.configs.unet), { ...sd15, ...defaults });
  assert.deepEqual(unetConfigFromDiffusers(meta.unet_tiny.config), { ...tiny, ...defaults });
  assert.throws(
    () => unetConfigFromDiffusers({ ...ref.configs.unet, addition_embed_type: "text_time" }),
    /addition_embed_type/,
  );
});

test("sd15 preset: parameter keys, shapes and count equal diffusers' SD1.5 UNet", () => {
  const ref = JSON.parse(readFileSync(sharedFixture("models/sd15_diffusers_keys.json"), "utf8")) as KeyFile;
  const unet = new UNet2DConditionModel("sd15", { mode: "empty" });
  try {
    const own = new Map([...unet.namedParameters()].map(([k, v]) => [k, v.shape]));
    assert.deepEqual([...own.keys()].sort(), Object.keys(ref.unet).sort());
    for (const [k, shape] of own) assert.deepEqual(shape, ref.unet[k].shape, k);
    assert.equal(unet.parameterCount(), 859_520_964);
    assert.equal(ref.param_counts.unet, 859_520_964);
  } finally {
    unet.dispose();
  }
});

test("sd21 preset: 64-channel heads, linear projections, 1024-wide context", () => {
  const unet = new UNet2DConditionModel("sd21", { mode: "empty" });
  try {
    const shapes = new Map([...unet.namedParameters()].map(([k, v]) => [k, v.shape]));
    const expectHeads: [string, number, number][] = [
      ["down_blocks.0.attentions.0", 5, 320],
      ["down_blocks.1.attentions.1", 10, 640],
      ["down_blocks.2.attentions.0", 20, 1280],
      ["mid_block.attentions.0", 20, 1280],
      ["up_blocks.1.attentions.2", 20, 1280],
      ["up_blocks.2.attentions.0", 10, 640],
      ["up_blocks.3.attentions.2", 5, 320],
    ];
    for (const [path, heads, ch] of expectHeads) {
      for (const a of ["attn1", "attn2"]) {
        const attn = unet.getModule(`${path}.transformer_blocks.0.${a}`) as Attention;
        assert.equal(attn.heads, heads, `${path} ${a} heads`);
        assert.equal(attn.dimHead, 64, `${path} ${a} head dim`);
      }
      assert.deepEqual(shapes.get(`${path}.proj_in.weight`), [ch, ch]);
      assert.deepEqual(shapes.get(`${path}.proj_out.weight`), [ch, ch]);
      assert.deepEqual(shapes.get(`${path}.transformer_blocks.0.attn2.to_k.weight`), [ch, 1024]);
    }
    assert.equal(shapes.size, 686);
    // stabilityai/stable-diffusion-2-1: 865,910,724 UNet parameters
    assert.equal(unet.parameterCount(), 865_910_724);
  } finally {
    unet.dispose();
  }
});
