// DDIM (Song et al. 2021, eq. 12), as diffusers 0.19.3 DDIMScheduler
// (huggingface/diffusers src/diffusers/schedulers/scheduling_ddim.py). eta = 0
// is deterministic; eta > 0 adds σ_t·z with z drawn at every step.

import type { Tensor } from "../engine/index.js";
import * as E from "../engine/index.js";
import type { SchedulerConfig, SchedulerConfigInput } from "./config.js";
import { DDPM_DEFAULTS, predictX0 } from "./ddpm.js";
import { f32, spacedTimesteps, sqrt32 } from "./numeric.js";
import {
  alias,
  checkSteps,
  type NoiseGenerator,
  noiseFor,
  type Sampler,
  type StepOptions,
  type StepOutput,
} from "./sampler.js";
import { NoiseSchedule } from "./schedule.js";

export interface DDIMOptions {
  /** Weight of the stochastic part, 0 (DDIM) to 1 (DDPM-like); diffusers' step kwarg `eta`. */
  eta?: number;
}

export class DDIMSampler implements Sampler {
  readonly name: string = "ddim";
  readonly config: SchedulerConfig;
  readonly schedule: NoiseSchedule;
  readonly initNoiseSigma = 1.0;
  readonly eta: number;
  /** ᾱ after the last step: 1, or ᾱ_0 when set_alpha_to_one is false (SD). */
  readonly finalAlphaCumprod: number;
  timesteps: number[] = [];
  numInferenceSteps = 0;

  constructor(config: SchedulerConfigInput = {}, o: DDIMOptions = {}) {
    this.schedule = new NoiseSchedule(config, DDPM_DEFAULTS);
    this.config = this.schedule.config;
    const eta = o.eta ?? 0;
    if (!(eta >= 0 && Number.isFinite(eta))) throw new Error(`DDIM eta must be a number >= 0, got ${eta}`);
    this.eta = eta;
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1.0 : this.schedule.alphasCumprod[0];
  }

  get sigmas(): readonly number[] {
    return [];
  }

  setTimesteps(n: number): void {
    checkSteps(n, this.config.num_train_timesteps);
    this.numInferenceSteps = n;
    const c = this.config;
    this.timesteps = spacedTimesteps(c.num_train_timesteps, n, c.timestep_spacing, c.steps_offset);
  }

  scaleModelInput(sample: Tensor, _t: number): Tensor {
    return alias(sample);
  }

  dispose(): void {}

  step(modelOutput: Tensor, t: number, sample: Tensor, generator?: NoiseGenerator | null, o?: StepOptions): StepOutput {
    if (this.numInferenceSteps === 0) throw new Error("DDIM: call setTimesteps(n) before stepping");
    const alphaProd = this.schedule.alphaCumprodAt(t);
    const prevT = t - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    const alphaProdPrev = prevT >= 0 ? this.schedule.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProd = f32(1 - alphaProd);
    const betaProdPrev = f32(1 - alphaProdPrev);
    // σ_t² = (1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev), scaled by eta.
    const variance = f32(f32(betaProdPrev / betaProd) * f32(1 - f32(alphaProd / alphaProdPrev)));
    const std = f32(this.eta * sqrt32(variance));
    const dirCoeff = sqrt32(f32(f32(1 - alphaProdPrev) - f32(std * std)));
    return E.scope(() => {
      const { x0, eps } = predictX0(this.config, modelOutput, sample, alphaProd);
      let prev = E.add(E.mul(x0, sqrt32(alphaProdPrev)), E.mul(eps, dirCoeff));
      if (this.eta > 0) prev = E.add(prev, E.mul(noiseFor(modelOutput, generator, o), std));
      return { prevSample: prev, predOriginalSample: x0 };
    });
  }
}
