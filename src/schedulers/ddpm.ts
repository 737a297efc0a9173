// DDPM ancestral sampling (Ho et al. 2020), as diffusers 0.19.3 DDPMScheduler
// (huggingface/diffusers src/diffusers/schedulers/scheduling_ddpm.py): the
// posterior mean of x_{t−1} from x_t and the predicted x0, plus σ·z with z drawn
// at every step where t > 0, the last (t = 1 for SD) included.

import type { Tensor } from "../engine/index.js";
import * as E from "../engine/index.js";
import type { SchedulerConfig, SchedulerConfigInput } from "./config.js";
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

/** DDPMScheduler's and DDIMScheduler's defaults where they differ from the others. */
export const DDPM_DEFAULTS: Partial<SchedulerConfig> = { clip_sample: true, timestep_spacing: "leading" };

/**
 * x0 from the model output at ᾱ_t (epsilon or v), clipped when the config says
 * so. Shared with DDIM, which also needs the implied noise.
 */
export function predictX0(
  c: SchedulerConfig,
  modelOutput: Tensor,
  sample: Tensor,
  alphaProd: number,
): { x0: Tensor; eps: Tensor } {
  const betaProd = f32(1 - alphaProd);
  const sa = sqrt32(alphaProd);
  const sb = sqrt32(betaProd);
  let x0: Tensor;
  let eps: Tensor;
  if (c.prediction_type === "epsilon") {
    x0 = E.div(E.sub(sample, E.mul(modelOutput, sb)), sa);
    eps = alias(modelOutput);
  } else {
    x0 = E.sub(E.mul(sample, sa), E.mul(modelOutput, sb));
    eps = E.add(E.mul(modelOutput, sa), E.mul(sample, sb));
  }
  if (c.clip_sample) x0 = E.clamp(x0, -c.clip_sample_range, c.clip_sample_range);
  return { x0, eps };
}

export class DDPMSampler implements Sampler {
  readonly name: string = "ddpm";
  readonly config: SchedulerConfig;
  readonly schedule: NoiseSchedule;
  readonly initNoiseSigma = 1.0;
  timesteps: number[] = [];
  numInferenceSteps = 0;

  constructor(config: SchedulerConfigInput = {}) {
    this.schedule = new NoiseSchedule(config, DDPM_DEFAULTS);
    this.config = this.schedule.config;
  }

  /** DDPM keeps no sigmas. */
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

  /** The timestep stepped to from t: t − ⌊T/n⌋ (diffusers `previous_timestep`). */
  previousTimestep(t: number): number {
    const n = this.numInferenceSteps || this.config.num_train_timesteps;
    return t - Math.floor(this.config.num_train_timesteps / n);
  }

  step(modelOutput: Tensor, t: number, sample: Tensor, generator?: NoiseGenerator | null, o?: StepOptions): StepOutput {
    const ac = this.schedule.alphasCumprod;
    const alphaProd = this.schedule.alphaCumprodAt(t);
    const prevT = this.previousTimestep(t);
    const alphaProdPrev = prevT >= 0 ? ac[prevT] : 1.0;
    const betaProd = f32(1 - alphaProd);
    const betaProdPrev = f32(1 - alphaProdPrev);
    const currentAlpha = f32(alphaProd / alphaProdPrev);
    const currentBeta = f32(1 - currentAlpha);
    // Coefficients of x0 and x_t in the posterior mean (DDPM paper, eq. 7).
    const x0Coeff = f32(f32(sqrt32(alphaProdPrev) * currentBeta) / betaProd);
    const sampleCoeff = f32(f32(sqrt32(currentAlpha) * betaProdPrev) / betaProd);
    return E.scope(() => {
      const { x0 } = predictX0(this.config, modelOutput, sample, alphaProd);
      let prev = E.add(E.mul(x0, x0Coeff), E.mul(sample, sampleCoeff));
      if (t > 0) {
        const noise = noiseFor(modelOutput, generator, o);
        let variance = f32(f32(betaProdPrev / betaProd) * currentBeta);
        variance = this.config.variance_type === "fixed_large" ? currentBeta : Math.max(variance, f32(1e-20));
        prev = E.add(prev, E.mul(noise, sqrt32(variance)));
      }
      return { prevSample: prev, predOriginalSample: x0 };
    });
  }
}
