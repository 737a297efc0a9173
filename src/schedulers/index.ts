// Noise schedules and samplers, matching diffusers 0.19.3 step by step.
import type { SchedulerConfigInput } from "./config.js";
import { DDIMSampler } from "./ddim.js";
import { DDPMSampler } from "./ddpm.js";
import { DPMSolverMultistepSampler } from "./dpm_solver.js";
import { EulerAncestralSampler, EulerSampler } from "./euler.js";
import type { Sampler } from "./sampler.js";

export * from "./config.js";
export { type DDIMOptions, DDIMSampler } from "./ddim.js";
export { DDPMSampler } from "./ddpm.js";
export { DPMSolverMultistepSampler } from "./dpm_solver.js";
export { EulerAncestralSampler, type EulerOptions, EulerSampler } from "./euler.js";
export {
  type NoiseGenerator,
  randnLike,
  type Sampler,
  type StepOptions,
  type StepOutput,
} from "./sampler.js";
export { NoiseSchedule, type Timesteps } from "./schedule.js";

/** The sampler names the CLI and the API accept. */
export const SAMPLER_NAMES = ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];

export interface SamplerOptions {
  /** DDIM's eta (default 0). */
  eta?: number;
}

/**
 * A sampler by name over a schedule config (diffusers field names; a model's
 * `scheduler_config.json` as is). The name decides the algorithm: dpmpp_2m_karras
 * is dpmpp_2m with use_karras_sigmas forced on, euler and dpmpp_2m honour the
 * config's use_karras_sigmas.
 */
export function createSampler(name: string, config: SchedulerConfigInput = {}, o: SamplerOptions = {}): Sampler {
  switch (name as SamplerName) {
    case "ddpm":
      return new DDPMSampler(config);
    case "ddim":
      return new DDIMSampler(config, { eta: o.eta });
    case "euler":
      return new EulerSampler(config);
    case "euler_a":
      return new EulerAncestralSampler(config);
    case "dpmpp_2m":
      return new DPMSolverMultistepSampler(config, "dpmpp_2m");
    case "dpmpp_2m_karras":
      return new DPMSolverMultistepSampler({ ...config, use_karras_sigmas: true }, "dpmpp_2m_karras");
    default:
      throw new Error(`unknown sampler ${JSON.stringify(name)}; valid names: ${SAMPLER_NAMES.join(", ")}`);
  }
}
