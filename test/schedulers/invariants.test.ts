// What the fixtures do not cover: the other timestep spacings (values from
// numpy with diffusers 0.19.3's formulas), Euler with Karras sigmas,
// v-prediction, and the property that a perfect model output takes every
// deterministic sampler exactly onto the forward process at the next timestep.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { Generator, scope, type Tensor } from "../../src/engine/index.js";
import {
  createSampler,
  type PredictionType,
  type Sampler,
  SD15_SCHEDULER_CONFIG,
  type TimestepSpacing,
} from "../../src/schedulers/index.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();

const sd = (o: {
  timestep_spacing?: TimestepSpacing;
  prediction_type?: PredictionType;
  use_karras_sigmas?: boolean;
}) => ({
  ...SD15_SCHEDULER_CONFIG,
  ...o,
});

test("timestep spacings give diffusers' timesteps (numpy rounds halves to even)", () => {
  const ts = (name: string, spacing: TimestepSpacing, n: number) => {
    const s = createSampler(name, sd({ timestep_spacing: spacing }));
    s.setTimesteps(n);
    return [...s.timesteps];
  };
  for (const name of ["ddpm", "ddim"]) {
    assert.deepEqual(
      ts(name, "linspace", 20),
      [999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158, 105, 53, 0],
    );
    assert.deepEqual(ts(name, "linspace", 7), [999, 832, 666, 500, 333, 166, 0]);
    assert.deepEqual(ts(name, "trailing", 7), [999, 856, 713, 570, 428, 285, 142]);
    assert.deepEqual(ts(name, "leading", 4), [751, 501, 251, 1]);
  }
  assert.deepEqual(ts("euler", "linspace", 7), [999, 832.5, 666, 499.5, 333, 166.5, 0]);
  assert.deepEqual(ts("euler", "leading", 4), [751, 501, 251, 1]);
  assert.deepEqual(ts("euler", "trailing", 7), [999, 856, 713, 570, 428, 285, 142]);
  assert.deepEqual(ts("dpmpp_2m", "linspace", 6), [999, 832, 666, 500, 333, 166]);
  assert.deepEqual(
    ts("dpmpp_2m", "leading", 20),
    [941, 894, 847, 800, 753, 706, 659, 612, 565, 518, 471, 424, 377, 330, 283, 236, 189, 142, 95, 48],
  );
  assert.deepEqual(ts("dpmpp_2m", "trailing", 7), [999, 856, 713, 570, 428, 285, 142]);
  // Euler's init_noise_sigma with "leading" is √(σ_max² + 1).
  const lead = createSampler("euler", sd({ timestep_spacing: "leading" }));
  lead.setTimesteps(4);
  assertClose([lead.initNoiseSigma], [Math.sqrt(lead.sigmas[0] ** 2 + 1)], { rtol: 1e-7, atol: 0 });
});

test("Euler with use_karras_sigmas: Karras sigmas and fractional timesteps as diffusers", () => {
  const s = createSampler("euler", sd({ use_karras_sigmas: true }));
  s.setTimesteps(10);
  // numpy, diffusers 0.19.3 EulerDiscreteScheduler.set_timesteps formulas on the SD1.5 ᾱ.
  const wantT = [
    999.0, 916.2840078175727, 815.0449517975032, 687.1532485537541, 523.1989410582771, 327.14720670492113,
    145.9390291938062, 40.85686872357206, 6.7324095509300115, 0.0,
  ];
  const wantSigmas = [
    14.614645004272461, 9.102935791015625, 5.478400707244873, 3.1686108112335205, 1.7494229078292847,
    0.9140763878822327, 0.44692087173461914, 0.20139984786510468, 0.08191104978322983, 0.029167532920837402, 0,
  ];
  // numpy's float32 log can be an ulp off the correctly rounded one we use: ~1e-5 of a timestep.
  assertClose(s.timesteps, wantT, { rtol: 0, atol: 1e-4, what: "timesteps" });
  assertClose(s.sigmas, wantSigmas, { rtol: 1e-7, atol: 0, what: "sigmas" });
  // The karras option does not change Euler ancestral (diffusers 0.19.3 has none there).
  const a = createSampler("euler_a", sd({ use_karras_sigmas: true }));
  a.setTimesteps(10);
  assert.equal(a.timesteps[1], 888);
});

/** x_t in the sampler's own parametrisation: DDPM-scaled, or x0 + σ·ε for the sigma samplers. */
function noisy(s: Sampler, x0: Tensor, noise: Tensor, t: number): Tensor {
  const xt = s.schedule.addNoise(x0, noise, [t]);
  return s.name.startsWith("euler") ? E.div(xt, Math.sqrt(s.schedule.alphasCumprod[t])) : xt;
}

for (const prediction of ["epsilon", "v_prediction"] as const) {
  test(`${prediction}: a perfect model output recovers x0, and deterministic steps follow the forward process`, () => {
    scope(() => {
      const g = new Generator(11);
      const x0 = E.randn([2, 4, 8, 8], { generator: g });
      const noise = E.randn([2, 4, 8, 8], { generator: g });
      g.dispose();
      for (const name of ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"]) {
        // "leading" keeps every timestep an integer, so the forward process is defined there.
        const s = createSampler(name, sd({ timestep_spacing: "leading", prediction_type: prediction }));
        s.setTimesteps(10);
        for (const i of [0, 1, 5]) {
          scope(() => {
            const t = s.timesteps[i];
            const xt = noisy(s, x0, noise, t);
            // The model sees the DDPM-scaled x_t whatever the sampler.
            const input = s.scaleModelInput(xt, t);
            assertClose(input, s.schedule.addNoise(x0, noise, [t]), { rtol: 1e-5, atol: 1e-5, what: `${name} input` });
            const target = s.schedule.target(x0, noise, [t]);
            const out = s.step(target, t, xt, null, { noise: E.zerosLike(xt) });
            assertClose(out.predOriginalSample!, x0, { rtol: 1e-3, atol: 1e-3, what: `${name} t=${t} x0` });
            if (name === "ddpm" || name === "euler_a") return;
            // DDIM (eta 0), Euler and DPM-Solver++ are exact for a perfect prediction.
            const next = s.timesteps[i + 1];
            assertClose(out.prevSample, noisy(s, x0, noise, next), {
              rtol: 1e-3,
              atol: 1e-3,
              what: `${name} t=${t} → ${next}`,
            });
          });
        }
        s.dispose();
      }
    });
  });
}

test("clip_sample clamps x0; DDPM fixed_large uses β_t as its variance", () => {
  scope(() => {
    const x = E.full([1, 1, 2, 2], 3);
    const eps = E.full([1, 1, 2, 2], -2);
    const clipped = createSampler("ddim", { ...SD15_SCHEDULER_CONFIG, clip_sample: true, clip_sample_range: 1.5 });
    clipped.setTimesteps(10);
    const out = clipped.step(eps, clipped.timesteps[3], x);
    assert.deepEqual(out.predOriginalSample!.toArray(), [1.5, 1.5, 1.5, 1.5]);

    const small = createSampler("ddpm", SD15_SCHEDULER_CONFIG);
    const large = createSampler("ddpm", { ...SD15_SCHEDULER_CONFIG, variance_type: "fixed_large" });
    small.setTimesteps(10);
    large.setTimesteps(10);
    const z = E.ones([1, 1, 2, 2]);
    const t = small.timesteps[2];
    const zero = E.zeros([1, 1, 2, 2]);
    const stdOf = (s: Sampler) =>
      E.sub(
        s.step(eps, t, x, null, { noise: z }).prevSample,
        s.step(eps, t, x, null, { noise: zero }).prevSample,
      ).toArray()[0];
    const ac = small.schedule.alphasCumprod;
    const beta = 1 - ac[t] / ac[t - 100];
    assertClose([stdOf(large)], [Math.sqrt(beta)], { rtol: 1e-5, atol: 0 });
    assertClose([stdOf(small)], [Math.sqrt(((1 - ac[t - 100]) / (1 - ac[t])) * beta)], { rtol: 1e-5, atol: 0 });
  });
});
