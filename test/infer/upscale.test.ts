// `upscale` against diffusers 0.19.3's StableDiffusionUpscalePipeline (the
// shared fixtures' upscaler/pipeline_ddim10.safetensors): the random draws,
// the noised low-res image, the prompt embeddings, each DDIM step from the
// recorded previous latents, and the whole 10-step call down to the bytes.
import assert from "node:assert/strict";
import { test } from "node:test";
import { disposeAll, Generator, noGrad, randn, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { encodePrompts } from "../../src/infer/prompt-encoding.js";
import { toRgbBytes } from "../../src/infer/txt2img.js";
import { noiseLowRes, upscale, upscaleModelOutput } from "../../src/infer/upscale.js";
import { disposeUpscaler, loadUpscaler } from "../../src/models/upscaler/index.js";
import { createSampler, NoiseSchedule } from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-5, rtol: 1e-4 };
const STEP = { atol: 1e-3, rtol: 1e-3 };
const PROMPT = "a high resolution photo of a red fox in the snow";
const NEGATIVE = "blurry, low quality, jpeg artifacts";
const load = () => loadUpscaler(sharedFixture("upscaler"), { tokenizerDir: sharedFixture("tokenizer") });

function fixture(name: string): Map<string, Tensor> {
  return loadSafetensors(sharedFixture(`upscaler/${name}`)).tensors;
}

function get(m: Map<string, Tensor>, key: string): Tensor {
  const t = m.get(key);
  if (!t) throw new Error(`fixture has no ${key}`);
  return t;
}

test("upscaler schedules: both schedulers' alphas_cumprod equal diffusers' exactly", () => {
  const ref = fixture("schedules.safetensors");
  const m = load();
  try {
    for (const config of [m.scheduler, m.lowResScheduler]) {
      const s = new NoiseSchedule(config);
      assert.deepEqual([...s.alphasCumprod], get(ref, "alphas_cumprod").toArray());
      assert.deepEqual([...s.betas], get(ref, "betas").toArray());
    }
  } finally {
    disposeUpscaler(m);
    disposeAll(ref);
  }
});

test("upscale pipeline: draws, noised image, prompt embeddings and each DDIM step equal diffusers'", (t) => {
  const io = fixture("pipeline_ddim10.safetensors");
  const m = load();
  const sampler = createSampler("ddim", m.scheduler);
  try {
    noGrad(() =>
      scope(() => {
        const image = get(io, "in.low_res_image");
        assertClose(image, get(io, "in.low_res_image_uint8").float().div(255).permute(2, 0, 1).unsqueeze(0), {
          atol: 0,
          rtol: 0,
        });
        const generator = new Generator(7104);
        const lowResNoise = randn([1, 3, 16, 16], { generator });
        const initial = randn([1, 4, 16, 16], { generator });
        generator.dispose();
        assertClose(lowResNoise, get(io, "low_res_noise"), { atol: 0, rtol: 0, what: "low_res_noise" });
        assertClose(initial, get(io, "initial_noise"), { atol: 0, rtol: 0, what: "initial_noise" });
        const noised = noiseLowRes(m, image, lowResNoise, [20]);
        assertClose(noised, get(io, "noised_low_res_image"), { ...F32, what: "noised_low_res_image" });

        const ids = m.tokenizer.encodePadded(PROMPT, 77, 0);
        assert.deepEqual(ids, get(io, "in.input_ids.prompt").toArray());
        assert.deepEqual(m.tokenizer.encodePadded(NEGATIVE, 77, 0), get(io, "in.input_ids.negative").toArray());
        const context = encodePrompts(m.textEncoder, m.tokenizer, [NEGATIVE, PROMPT], { padId: 0 });
        assertClose(context, get(io, "prompt_embeds"), { ...F32, what: "prompt_embeds" });

        sampler.setTimesteps(10);
        assert.deepEqual(sampler.timesteps, get(io, "timesteps").toArray());
        let worst = 0;
        for (const [i, ts] of sampler.timesteps.entries()) {
          const nn = String(i).padStart(2, "0");
          const prev = i === 0 ? get(io, "initial_latents") : get(io, `latents.step${String(i - 1).padStart(2, "0")}`);
          const out = upscaleModelOutput(m, sampler, prev, ts, noised, context, 20, 7);
          assertClose(out, get(io, `model_output.step${nn}`), { ...STEP, what: `model_output.step${nn}` });
          const next = sampler.step(out, ts, prev).prevSample;
          const ref = get(io, `latents.step${nn}`);
          assertClose(next, ref, { ...STEP, what: `latents.step${nn}` });
          worst = Math.max(worst, next.sub(ref).abs().max().item());
        }
        t.diagnostic(`per-step latents max |err| ${worst.toExponential(2)}`);
      }),
    );
  } finally {
    sampler.dispose();
    disposeUpscaler(m);
    disposeAll(io);
  }
});

test("upscale: the whole 10-step call gives diffusers' latents, image and bytes", (t) => {
  const io = fixture("pipeline_ddim10.safetensors");
  const m = load();
  try {
    const r = upscale(m, get(io, "in.low_res_image"), {
      prompt: PROMPT,
      negative: NEGATIVE,
      steps: 10,
      cfg: 7,
      noiseLevel: 20,
      seed: 7104,
    });
    try {
      assertClose(r.latents, get(io, "final_latents"), { ...STEP, what: "final_latents" });
      scope(() =>
        assertClose(r.images.squeeze(0).permute(1, 2, 0), get(io, "image_float"), { ...STEP, what: "image_float" }),
      );
      const [bytes] = toRgbBytes(r.images);
      const ref = get(io, "image_uint8").toArray();
      let close = 0;
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        const d = Math.abs(bytes.data[i] - ref[i]);
        if (d <= 2) close++;
        worst = Math.max(worst, d);
      }
      assert.ok(close / ref.length >= 0.99, `${close}/${ref.length} bytes within 2`);
      assert.ok(worst <= 32, `worst byte difference ${worst}`);
      t.diagnostic(`bytes within 2: ${close}/${ref.length}, worst ${worst}`);
    } finally {
      r.latents.dispose();
      r.images.dispose();
    }
    const image = get(io, "in.low_res_image");
    const base = { prompt: PROMPT, steps: 1 };
    assert.throws(() => upscale(m, image, { ...base, noiseLevel: 351 }), /noise level must be an integer in 0\.\.350/);
    scope(() => assert.throws(() => upscale(m, image.narrow(2, 0, 4), base), /at least 8×8 pixels/));
  } finally {
    disposeUpscaler(m);
    disposeAll(io);
  }
});
