// The noise schedule against diffusers 0.19.3 (betas, alphas, ᾱ, add_noise,
// get_velocity), the config reader and the sampler factory.
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { disposeAll, scope } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import {
  createSampler,
  loadSchedulerConfig,
  NoiseSchedule,
  parseSchedulerConfig,
  SAMPLER_NAMES,
  SD15_SCHEDULER_CONFIG,
} from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const SCHEDULE = sharedFixture("schedulers/schedule_sd15.safetensors");

function withFixture(fn: (f: Map<string, E.Tensor>) => void): void {
  const { tensors } = loadSafetensors(SCHEDULE);
  try {
    scope(() => fn(tensors));
  } finally {
    disposeAll(tensors);
  }
}

test("SD1.5 betas, alphas and alphas_cumprod equal diffusers' float32 values", () => {
  withFixture((f) => {
    const s = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
    assertClose(s.betas, f.get("betas")!, { rtol: 1e-5, atol: 0, what: "betas" });
    assertClose(s.alphas, f.get("alphas")!, { rtol: 1e-5, atol: 0, what: "alphas" });
    assertClose(s.alphasCumprod, f.get("alphas_cumprod")!, { rtol: 1e-5, atol: 0, what: "alphas_cumprod" });
    // Made with the same float32 ops, they are in fact bit-identical.
    assert.deepEqual([...s.alphasCumprod], f.get("alphas_cumprod")!.toArray());
    assertClose(s.tensor("betas"), f.get("betas")!, { rtol: 0, atol: 0 });
  });
});

test("add_noise and get_velocity equal diffusers' on fixed data, t = 0, 250, 999", () => {
  withFixture((f) => {
    const s = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
    const x0 = f.get("train.x0")!;
    const noise = f.get("train.noise")!;
    const t = f.get("train.timesteps")!;
    assertClose(s.addNoise(x0, noise, t), f.get("train.add_noise")!, { rtol: 1e-5, atol: 1e-6, what: "add_noise" });
    assertClose(s.getVelocity(x0, noise, t), f.get("train.get_velocity")!, {
      rtol: 1e-5,
      atol: 1e-6,
      what: "get_velocity",
    });
    // Timesteps as a plain list give the same.
    assertClose(s.addNoise(x0, noise, [0, 250, 999]), f.get("train.add_noise")!, { rtol: 1e-5, atol: 1e-6 });
    assertClose(s.target(x0, noise, t), noise, { rtol: 0, atol: 0, what: "epsilon target" });
    const v = new NoiseSchedule({ ...SD15_SCHEDULER_CONFIG, prediction_type: "v_prediction" });
    assertClose(v.target(x0, noise, t), f.get("train.get_velocity")!, { rtol: 1e-5, atol: 1e-6, what: "v target" });
  });
});

test("snr is ᾱ/(1−ᾱ), float32, shaped like the timesteps", () => {
  scope(() => {
    const s = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
    const t = E.tensor(BigInt64Array.from([0n, 1n, 500n, 999n, 999n, 3n]), { shape: [2, 3] });
    const snr = s.snr(t);
    assert.deepEqual(snr.shape, [2, 3]);
    assert.equal(snr.dtype, "float32");
    const want = [0, 1, 500, 999, 999, 3].map((i) => s.alphasCumprod[i] / (1 - s.alphasCumprod[i]));
    assertClose(snr, want, { rtol: 1e-5, atol: 0 });
    assert.ok(snr.toArray()[0] > 1000 && snr.toArray()[3] < 0.01, "SNR falls from ~1e3 to ~1e-3");
  });
});

test("linear and squaredcos_cap_v2 schedules", () => {
  const lin = new NoiseSchedule({ beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02 });
  assert.equal(lin.betas.length, 1000);
  assert.equal(lin.betas[0], Math.fround(0.0001));
  assert.equal(lin.betas[999], Math.fround(0.02));
  assertClose([lin.betas[500]], [0.0001 + (500 * (0.02 - 0.0001)) / 999], { rtol: 1e-6, atol: 0 });
  // diffusers' defaults are the DDPM paper's linear schedule.
  assert.deepEqual(new NoiseSchedule().betas, lin.betas);

  const cos = new NoiseSchedule({ beta_schedule: "squaredcos_cap_v2", num_train_timesteps: 100 });
  const abar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  assert.equal(cos.betas.length, 100);
  assertClose([cos.betas[0], cos.betas[50]], [1 - abar(0.01) / abar(0), 1 - abar(0.51) / abar(0.5)], {
    rtol: 1e-6,
    atol: 0,
  });
  assert.equal(cos.betas[99], Math.fround(0.999), "capped at 0.999");
  // ᾱ_t tracks the cosine curve.
  assertClose([cos.alphasCumprod[49]], [abar(0.5) / abar(0)], { rtol: 1e-4, atol: 0 });

  const trained = new NoiseSchedule({ trained_betas: [0.1, 0.2, 0.3] });
  assert.equal(trained.numTrainTimesteps, 3);
  assertClose(trained.alphasCumprod, [0.9, 0.72, 0.504], { rtol: 1e-6, atol: 0 });
});

test("a diffusers scheduler_config.json loads as is; bad values name their field", () => {
  const dir = tempDir("atelier-sched-");
  try {
    // runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, plus a DPM field as Python writes it.
    const path = join(dir, "scheduler_config.json");
    writeFileSync(
      path,
      `{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false,
  "lambda_min_clipped": -Infinity
}`,
    );
    const cfg = loadSchedulerConfig(path);
    const s = createSampler("ddim", cfg);
    assert.equal(s.config.beta_schedule, "scaled_linear");
    assert.equal(s.config.steps_offset, 1);
    assert.equal(s.config.lambda_min_clipped, Number.NEGATIVE_INFINITY);
    assert.deepEqual(s.schedule.alphasCumprod, new NoiseSchedule(SD15_SCHEDULER_CONFIG).alphasCumprod);

    writeFileSync(path, '{"beta_schedule": "cosine"}');
    assert.throws(() => loadSchedulerConfig(path), /scheduler_config\.json: .*beta_schedule must be one of linear/);
    writeFileSync(path, "{not json");
    assert.throws(() => loadSchedulerConfig(path), /cannot read a scheduler config/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ prediction_type: "sample" }, /prediction_type must be one of epsilon, v_prediction, got "sample"/],
    [{ timestep_spacing: "even" }, /timestep_spacing must be one of leading, linspace, trailing/],
    [{ num_train_timesteps: 10.5 }, /num_train_timesteps must be an integer/],
    [{ beta_end: "0.012" }, /beta_end must be a number/],
    [{ steps_offset: -1 }, /steps_offset must be an integer >= 0/],
    [{ clip_sample: "no" }, /clip_sample must be true or false/],
    [{ use_karras_sigmas: 1 }, /use_karras_sigmas must be true or false/],
    [{ thresholding: true }, /thresholding must be false \(not supported\)/],
    [{ trained_betas: [0.1, 2] }, /trained_betas must be null or an array/],
    [{ trained_betas: [0.1, 0.2], num_train_timesteps: 1000 }, /trained_betas must be an array of num_train_timesteps/],
  ];
  for (const [cfg, re] of bad) assert.throws(() => parseSchedulerConfig(cfg), re, JSON.stringify(cfg));
  assert.throws(() => new NoiseSchedule({ beta_schedule: "cosine" } as never), /beta_schedule/);
  assert.throws(() => parseSchedulerConfig([1]), /must be a JSON object/);
  // Unknown fields are ignored.
  assert.deepEqual(parseSchedulerConfig({ _class_name: "X", skip_prk_steps: true }), {});
});

test("createSampler knows the CLI's names, and lists them for an unknown one", () => {
  for (const name of SAMPLER_NAMES) {
    const s = createSampler(name, SD15_SCHEDULER_CONFIG);
    assert.equal(s.name, name);
    s.setTimesteps(10);
    assert.equal(s.timesteps.length, 10);
    s.dispose();
  }
  assert.throws(
    () => createSampler("plms", SD15_SCHEDULER_CONFIG),
    /unknown sampler "plms"; valid names: ddpm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras/,
  );
  assert.throws(() => createSampler("euler", SD15_SCHEDULER_CONFIG).setTimesteps(0), /integer in \[1, 1000\]/);
  assert.throws(() => createSampler("ddim", SD15_SCHEDULER_CONFIG, { eta: -1 }), /eta must be a number >= 0/);
});
