// Euler and Euler-ancestral samplers in sigma space (Karras et al. 2022, alg. 2;
// k-diffusion's sample_euler / sample_euler_ancestral), as diffusers 0.19.3
// (huggingface/diffusers src/diffusers/schedulers/scheduling_euler_discrete.py and
// scheduling_euler_ancestral_discrete.py). x_t = x0 + σ·ε with σ = ((1−ᾱ)/ᾱ)^½;
// the model sees x_t/√(σ²+1).

import type { Tensor } from "../engine/index.js";
import * as E from "../engine/index.js";
import type { SchedulerConfig, SchedulerConfigInput } from "./config.js";
import { f32, interpIndex, karrasSigmas, sigmaToT, spacedTimesteps, sqrt32, trainSigmas } from "./numeric.js";
import {
  checkSteps,
  type NoiseGenerator,
  noiseFor,
  type Sampler,
  type StepOptions,
  type StepOutput,
  stepIndex,
} from "./sampler.js";
import { NoiseSchedule } from "./schedule.js";

const EULER_DEFAULTS: Partial<SchedulerConfig> = { timestep_spacing: "linspace" };

/** What Euler and Euler-ancestral share: sigmas, timesteps and input scaling. */
abstract class SigmaSampler implements Sampler {
  abstract readonly name: string;
  readonly config: SchedulerConfig;
  readonly schedule: NoiseSchedule;
  /** Fractional timesteps (float64, as diffusers keeps them). */
  timesteps: number[] = [];
  /** One float32 sigma per timestep, then 0. */
  sigmas: number[];
  numInferenceSteps = 0;
  readonly #trainSigmas: Float32Array;

  constructor(config: SchedulerConfigInput) {
    this.schedule = new NoiseSchedule(config, EULER_DEFAULTS);
    this.config = this.schedule.config;
    this.#trainSigmas = trainSigmas(this.schedule.alphasCumprod);
    // Before setTimesteps: every training sigma, descending, then 0 (as the constructor leaves it).
    this.sigmas = [...this.#trainSigmas].reverse().concat(0);
  }

  get initNoiseSigma(): number {
    const max = Math.max(...this.sigmas);
    const spacing = this.config.timestep_spacing;
    return spacing === "linspace" || spacing === "trailing" ? max : sqrt32(f32(f32(max * max) + 1));
  }

  /** Whether this sampler converts to Karras sigmas (only Euler does, when configured). */
  protected get karras(): boolean {
    return false;
  }

  setTimesteps(n: number): void {
    const c = this.config;
    checkSteps(n, c.num_train_timesteps);
    this.numInferenceSteps = n;
    let timesteps = spacedTimesteps(c.num_train_timesteps, n, c.timestep_spacing, c.steps_offset, false);
    const ts = this.#trainSigmas;
    let sigmas = timesteps.map((t) => interpIndex(t, ts));
    if (this.karras) {
      const logSigmas = ts.map(Math.log);
      sigmas = karrasSigmas(sigmas, n);
      timesteps = sigmas.map((s) => sigmaToT(s, logSigmas));
    }
    this.timesteps = timesteps;
    this.sigmas = sigmas.map(f32).concat(0);
  }

  scaleModelInput(sample: Tensor, t: number): Tensor {
    const sigma = this.sigmas[stepIndex(this.timesteps, t, this.name)];
    return E.div(sample, sqrt32(f32(f32(sigma * sigma) + 1)));
  }

  dispose(): void {}

  /** x0 from the model output at sigma (epsilon: x − σ·ε; v: −σ/√(σ²+1)·v + x/(σ²+1)). */
  protected predictX0(modelOutput: Tensor, sample: Tensor, sigma: number, sigmaHat: number): Tensor {
    if (this.config.prediction_type === "epsilon") return E.sub(sample, E.mul(modelOutput, sigmaHat));
    const s2p1 = f32(f32(sigma * sigma) + 1);
    return E.add(E.mul(modelOutput, f32(-sigma / sqrt32(s2p1))), E.div(sample, s2p1));
  }

  abstract step(
    modelOutput: Tensor,
    t: number,
    sample: Tensor,
    generator?: NoiseGenerator | null,
    o?: StepOptions,
  ): StepOutput;
}

export interface EulerOptions {
  /** Stochasticity of Karras' churn (default 0: plain Euler). */
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
}

export class EulerSampler extends SigmaSampler {
  readonly name: string = "euler";
  readonly churn: Required<EulerOptions>;

  constructor(config: SchedulerConfigInput = {}, o: EulerOptions = {}) {
    super(config);
    this.churn = { sChurn: o.sChurn ?? 0, sTmin: o.sTmin ?? 0, sTmax: o.sTmax ?? Infinity, sNoise: o.sNoise ?? 1 };
  }

  protected override get karras(): boolean {
    return this.config.use_karras_sigmas;
  }

  step(modelOutput: Tensor, t: number, sample: Tensor, generator?: NoiseGenerator | null, o?: StepOptions): StepOutput {
    const i = stepIndex(this.timesteps, t, this.name);
    const sigma = this.sigmas[i];
    const { sChurn, sTmin, sTmax, sNoise } = this.churn;
    const gamma = sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (this.sigmas.length - 1), 2 ** 0.5 - 1) : 0;
    const sigmaHat = f32(sigma * (gamma + 1));
    const dt = f32(this.sigmas[i + 1] - sigmaHat);
    return E.scope(() => {
      // diffusers draws the churn noise at every step, used or not: keep the generator's stream in step.
      const noise = noiseFor(modelOutput, generator, o);
      let x = sample;
      if (gamma > 0) {
        const scale = f32(sNoise * sqrt32(f32(f32(sigmaHat * sigmaHat) - f32(sigma * sigma))));
        x = E.add(sample, E.mul(noise, scale));
      }
      const x0 = this.predictX0(modelOutput, x, sigma, sigmaHat);
      const derivative = E.div(E.sub(x, x0), sigmaHat);
      return { prevSample: E.add(x, E.mul(derivative, dt)), predOriginalSample: x0 };
    });
  }
}

export class EulerAncestralSampler extends SigmaSampler {
  readonly name: string = "euler_a";

  constructor(config: SchedulerConfigInput = {}) {
    super(config);
  }

  step(modelOutput: Tensor, t: number, sample: Tensor, generator?: NoiseGenerator | null, o?: StepOptions): StepOutput {
    const i = stepIndex(this.timesteps, t, this.name);
    const from = this.sigmas[i];
    const to = this.sigmas[i + 1];
    // Split the step to σ_to into a deterministic part down to σ_down and fresh noise σ_up.
    const from2 = f32(from * from);
    const to2 = f32(to * to);
    const sigmaUp = sqrt32(f32(f32(to2 * f32(from2 - to2)) / from2));
    const sigmaDown = sqrt32(f32(to2 - f32(sigmaUp * sigmaUp)));
    const dt = f32(sigmaDown - from);
    return E.scope(() => {
      const x0 = this.predictX0(modelOutput, sample, from, from);
      const derivative = E.div(E.sub(sample, x0), from);
      const prev = E.add(sample, E.mul(derivative, dt));
      const noise = noiseFor(modelOutput, generator, o);
      return { prevSample: E.add(prev, E.mul(noise, sigmaUp)), predOriginalSample: x0 };
    });
  }
}
