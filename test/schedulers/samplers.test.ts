// Every sampler against the 20-step diffusers 0.19.3 runs in the shared
// fixtures (schedulers/): timesteps and sigmas, each step from the
// recorded latent (recorded noise injected), the whole chain with the toy
// model, and seeded noise that reproduces the reference's draws.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { type TestContext, test } from "node:test";
import * as E from "../../src/engine/index.js";
import { disposeAll, Generator, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { createSampler, parsePythonJson, type Sampler, SD15_SCHEDULER_CONFIG } from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

interface RunMeta {
  class: string;
  step_kwargs: { eta?: number };
  init_noise_sigma: number;
  timesteps: number[];
  sigmas?: number[];
  noise_injected_at_steps: number[];
}
const meta = parsePythonJson(readFileSync(sharedFixture("schedulers/schedulers_meta.json"), "utf8")) as {
  runs: Record<string, RunMeta>;
  num_inference_steps: number;
};

/** Fixture run → our sampler name. */
const RUNS: Record<string, string> = {
  ddpm: "ddpm",
  ddim_eta0: "ddim",
  ddim_eta1: "ddim",
  euler: "euler",
  euler_ancestral: "euler_a",
  dpmpp_2m: "dpmpp_2m",
  dpmpp_2m_karras: "dpmpp_2m_karras",
};
/** The seed of the torch.Generator the reference runs drew their step noise from. */
const NOISE_SEED = 2024;
const STEP_TOL = { rtol: 1e-4, atol: 1e-4 };

function samplerFor(run: string): Sampler {
  const s = createSampler(RUNS[run], SD15_SCHEDULER_CONFIG, { eta: meta.runs[run].step_kwargs.eta });
  s.setTimesteps(meta.num_inference_steps);
  return s;
}

function withRun(run: string, fn: (f: Map<string, Tensor>, xInit: Tensor) => void): void {
  const { tensors } = loadSafetensors(sharedFixture(`schedulers/${run}.safetensors`));
  const { tensors: schedule } = loadSafetensors(sharedFixture("schedulers/schedule_sd15.safetensors"));
  try {
    scope(() => fn(tensors, schedule.get("x_init")!));
  } finally {
    disposeAll(tensors);
    disposeAll(schedule);
  }
}

const key = (i: number, what: string) => `step${String(i).padStart(2, "0")}.${what}`;

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => E.sub(a.to("float64"), b.to("float64")).abs().max().item());
}

/** The fixture's stand-in for the UNet: eps = 0.1·model_input + sin(t/100). */
const toyModel = (modelInput: Tensor, t: number): Tensor => E.add(E.mul(modelInput, 0.1), Math.sin(t / 100));

/** The pipeline's loop; noise comes from the file when `replay`, else from `generator`. */
function chain(s: Sampler, f: Map<string, Tensor>, xInit: Tensor, replay: boolean, generator?: Generator): Tensor {
  let latent = E.mul(xInit, s.initNoiseSigma);
  s.timesteps.forEach((t, i) => {
    latent = scope(() => {
      const eps = toyModel(s.scaleModelInput(latent, t), t);
      const noise = replay ? f.get(key(i, "noise")) : undefined;
      return s.step(eps, t, latent, generator, { noise }).prevSample;
    });
  });
  s.dispose();
  return latent;
}

for (const run of Object.keys(RUNS)) {
  const m = meta.runs[run];

  test(`${run}: timesteps, sigmas and init_noise_sigma`, () => {
    withRun(run, (f) => {
      const s = samplerFor(run);
      assert.deepEqual(s.timesteps, f.get("timesteps")!.toArray(), "timesteps exactly");
      assert.deepEqual(s.timesteps, m.timesteps);
      assertClose([s.initNoiseSigma], [m.init_noise_sigma], { rtol: 1e-7, atol: 0, what: "init_noise_sigma" });
      if (f.has("sigmas")) {
        assertClose(s.sigmas, f.get("sigmas")!, { rtol: 1e-5, atol: 0, what: "sigmas" });
        assertClose(s.sigmas, m.sigmas!, { rtol: 1e-6, atol: 0, what: "sigmas (meta, float64)" });
      }
    });
  });

  test(`${run}: each step from the recorded latent matches diffusers`, (t: TestContext) => {
    withRun(run, (f, xInit) => {
      const s = samplerFor(run);
      assertClose(E.mul(xInit, s.initNoiseSigma), f.get("initial_latent")!, { rtol: 1e-6, atol: 0 });
      const worst = { model_input: 0, latent_after: 0, pred_original_sample: 0 };
      s.timesteps.forEach((ts, i) => {
        scope(() => {
          const prev = i === 0 ? f.get("initial_latent")! : f.get(key(i - 1, "latent_after"))!;
          const input = s.scaleModelInput(prev, ts);
          const noise = f.get(key(i, "noise"));
          assert.equal(noise !== undefined, m.noise_injected_at_steps.includes(i), `step ${i}: noise recorded`);
          const out = s.step(f.get(key(i, "model_output"))!, ts, prev, null, { noise });
          const checks: [keyof typeof worst, Tensor | undefined][] = [
            ["model_input", input],
            ["latent_after", out.prevSample],
            ["pred_original_sample", out.predOriginalSample],
          ];
          for (const [what, got] of checks) {
            const want = f.get(key(i, what));
            if (!want) continue;
            assert.ok(got, `step ${i}: ${what} returned`);
            assertClose(got, want, { ...STEP_TOL, what: `step ${i} (t=${ts}) ${what}` });
            worst[what] = Math.max(worst[what], maxAbsDiff(got, want));
          }
        });
      });
      s.dispose();
      t.diagnostic(`${run} max |error| per step: ${JSON.stringify(worst)}`);
    });
  });

  test(`${run}: the 20-step chain with the toy model reaches final_latent`, (t: TestContext) => {
    withRun(run, (f, xInit) => {
      const final = chain(samplerFor(run), f, xInit, true);
      const want = f.get("final_latent")!;
      assertClose(final, want, { rtol: 1e-4, atol: 1e-3, what: "final_latent" });
      t.diagnostic(`${run} chain max |error| ${maxAbsDiff(final, want)} (|final| up to ${want.abs().max().item()})`);
    });
  });
}

test("seeded generators draw the reference's step noise, and draw it again the same", () => {
  for (const run of ["ddpm", "ddim_eta1", "euler", "euler_ancestral"]) {
    withRun(run, (f, xInit) => {
      const g1 = new Generator(NOISE_SEED);
      const g2 = new Generator(NOISE_SEED);
      try {
        const a = chain(samplerFor(run), f, xInit, false, g1);
        const b = chain(samplerFor(run), f, xInit, false, g2);
        assert.deepEqual(a.toArray(), b.toArray(), `${run}: same seed, same latents`);
        // diffusers drew its noise from torch.Generator().manual_seed(2024) the same way.
        assertClose(a, f.get("final_latent")!, { rtol: 1e-4, atol: 1e-3, what: `${run} final_latent` });
        // Step noise is randn shaped like the latent, one draw per step in order.
        g1.manualSeed(NOISE_SEED);
        for (let i = 0; i < 3; i++) {
          const drawn = E.randn([1, 4, 8, 8], { generator: g1 });
          assert.deepEqual(drawn.toArray(), f.get(key(i, "noise"))!.toArray(), `${run}: step ${i} noise`);
        }
      } finally {
        g1.dispose();
        g2.dispose();
      }
    });
  }
});

test("step() refuses noise of the wrong shape and timesteps outside the run", () => {
  scope(() => {
    const s = createSampler("euler_a", SD15_SCHEDULER_CONFIG);
    const x = E.zeros([1, 4, 8, 8]);
    assert.throws(() => s.step(x, 999, x), /call setTimesteps/);
    s.setTimesteps(20);
    assert.throws(() => s.step(x, 998, x), /timestep 998 is not one of this run's 20 timesteps/);
    assert.throws(() => s.step(x, 999, x, null, { noise: E.zeros([4, 8, 8]) }), /noise has shape \[4,8,8\]/);
    const ddim = createSampler("ddim", SD15_SCHEDULER_CONFIG);
    ddim.setTimesteps(20);
    assert.throws(() => ddim.step(x, 1000, x), /timestep 1000 is not an integer in \[0, 1000\)/);
  });
});

test("one generator per batch item draws each item's own stream", () => {
  scope(() => {
    const gens = [new Generator(1), new Generator(2)];
    const s = createSampler("euler_a", SD15_SCHEDULER_CONFIG);
    s.setTimesteps(5);
    const x = E.zeros([2, 4, 8, 8]);
    const t = s.timesteps[0];
    const out = s.step(x, t, x, gens).prevSample;
    for (const [i, seed] of [1, 2].entries()) {
      const g = new Generator(seed);
      const one = s.step(E.zeros([1, 4, 8, 8]), t, E.zeros([1, 4, 8, 8]), g).prevSample;
      assert.deepEqual(out.select(0, i).toArray(), one.squeeze(0).toArray(), `item ${i}`);
      g.dispose();
    }
    for (const g of gens) g.dispose();
  });
});
