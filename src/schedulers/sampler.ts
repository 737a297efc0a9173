// The interface every sampler implements, and the noise draw they share.

import type { Generator, Tensor } from "../engine/index.js";
import * as E from "../engine/index.js";
import type { SchedulerConfig } from "./config.js";
import type { NoiseSchedule } from "./schedule.js";

export interface StepOutput {
  /** x_{t−1}: the latent to feed the next step. */
  prevSample: Tensor;
  /** The model's estimate of the clean latent x0 at this step, where the sampler forms one. */
  predOriginalSample?: Tensor;
}

/** One generator, or one per batch item (as diffusers accepts a list). */
export type NoiseGenerator = Generator | readonly Generator[];

export interface StepOptions {
  /**
   * The noise to use where the sampler draws some, shaped like the sample,
   * instead of drawing it from the generator (replaying a recorded run).
   */
  noise?: Tensor;
}

export interface Sampler {
  /** The createSampler name (ddpm, ddim, euler, …). */
  readonly name: string;
  readonly config: SchedulerConfig;
  readonly schedule: NoiseSchedule;
  /** The timesteps of the current run, in the order they are stepped (set by setTimesteps). */
  readonly timesteps: readonly number[];
  /** The sigmas the sampler keeps, as diffusers keeps them (Euler: one per timestep plus a final 0). */
  readonly sigmas: readonly number[];
  /** The initial noise N(0, 1) is multiplied by this. */
  readonly initNoiseSigma: number;
  readonly numInferenceSteps: number;
  /** Chooses the timesteps of an n-step run and resets any state kept between steps. */
  setTimesteps(n: number): void;
  /** The model's input at timestep t (a new tensor, maybe a view of `sample`). */
  scaleModelInput(sample: Tensor, t: number): Tensor;
  /**
   * One denoising step from `sample` at timestep t given the model's output.
   * Where the reference draws noise it draws randn shaped like the model
   * output from `generator` (or the default generator), in the same order.
   */
  step(modelOutput: Tensor, t: number, sample: Tensor, generator?: NoiseGenerator | null, o?: StepOptions): StepOutput;
  /** Frees tensors the sampler keeps between steps (multistep history); it stays usable. */
  dispose(): void;
}

const aliasOp = E.defOp("aten::alias");
/** A new handle on the same tensor (same storage, same autograd history). */
export const alias = (t: Tensor): Tensor => aliasOp.t(t.id);

const deviceType = (d: string) => d.split(":")[0];

function randnOn(shape: number[], like: Tensor, g: Generator | undefined): Tensor {
  const device = like.device;
  if (g === undefined) return E.randn(shape, { dtype: like.dtype, device });
  if (deviceType(g.device) === deviceType(device)) return E.randn(shape, { generator: g, dtype: like.dtype, device });
  if (deviceType(g.device) !== "cpu") {
    throw new Error(`cannot draw noise for a ${device} tensor from a ${g.device} generator`);
  }
  // A CPU generator with a GPU latent: draw on the CPU, then move, so the noise
  // does not depend on the device.
  return E.scope(() => E.randn(shape, { generator: g, dtype: like.dtype, device: "cpu" }).to(device));
}

/**
 * N(0, 1) noise shaped and typed like `like`, as diffusers' `randn_tensor`
 * (huggingface/diffusers src/diffusers/utils/torch_utils.py): with a list of
 * generators each batch item is drawn from its own.
 */
export function randnLike(like: Tensor, generator?: NoiseGenerator | null): Tensor {
  const shape = like.shape;
  if (generator == null) return randnOn(shape, like, undefined);
  if (!Array.isArray(generator)) return randnOn(shape, like, generator as Generator);
  const gens = generator as readonly Generator[];
  if (gens.length === 1) return randnOn(shape, like, gens[0]);
  if (gens.length !== shape[0]) {
    throw new Error(`${gens.length} generators for a batch of ${shape[0]}: pass one per batch item, or one`);
  }
  return E.scope(() => E.cat(gens.map((g) => randnOn([1, ...shape.slice(1)], like, g))));
}

/** The given noise, checked against the sample, or a fresh draw. */
export function noiseFor(
  like: Tensor,
  generator: NoiseGenerator | null | undefined,
  o: StepOptions | undefined,
): Tensor {
  if (!o?.noise) return randnLike(like, generator);
  const want = like.shape;
  const got = o.noise.shape;
  if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
    throw new Error(`step(): noise has shape [${got}] but the sample has [${want}]`);
  }
  return alias(o.noise);
}

/** Checks a step count. */
export function checkSteps(n: number, max: number): void {
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new Error(`number of inference steps must be an integer in [1, ${max}], got ${n}`);
  }
}

/** The index of t among the timesteps (exact match, as diffusers' `(timesteps == t).nonzero()`). */
export function stepIndex(timesteps: readonly number[], t: number, who: string): number {
  if (timesteps.length === 0) throw new Error(`${who}: call setTimesteps(n) before stepping`);
  const i = timesteps.indexOf(t);
  if (i < 0) throw new Error(`${who}: timestep ${t} is not one of this run's ${timesteps.length} timesteps`);
  return i;
}
