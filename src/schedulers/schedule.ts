// The discrete DDPM noise schedule: betas, alphas, alphas_cumprod (ᾱ), and the
// training-side helpers built on it. Betas are made exactly as diffusers 0.19.3
// makes them, in float32 libtorch ops (huggingface/diffusers
// src/diffusers/schedulers/scheduling_ddpm.py, `__init__` and `betas_for_alpha_bar`),
// then kept as host arrays: the samplers do their scalar maths in JS.

import type { DType, Tensor } from "../engine/index.js";
import * as E from "../engine/index.js";
import { resolveSchedulerConfig, type SchedulerConfig, type SchedulerConfigInput } from "./config.js";

/** Timesteps as a tensor (integer, any shape) or a list of integers. */
export type Timesteps = Tensor | readonly number[];

/** diffusers `betas_for_alpha_bar` with the cosine ᾱ of Nichol & Dhariwal, in float64, capped at 0.999. */
function cosineBetas(n: number, maxBeta = 0.999): Float64Array {
  const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return out;
}

function makeBetas(c: SchedulerConfig): Tensor {
  const n = c.num_train_timesteps;
  if (c.trained_betas) return E.tensor(Float64Array.from(c.trained_betas), { dtype: "float32" });
  switch (c.beta_schedule) {
    case "linear":
      return E.linspace(c.beta_start, c.beta_end, n, { dtype: "float32" });
    case "scaled_linear":
      // torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=float32) ** 2: SD's schedule.
      return E.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, n, { dtype: "float32" }).square();
    case "squaredcos_cap_v2":
      return E.tensor(cosineBetas(n), { dtype: "float32" });
  }
}

export class NoiseSchedule {
  readonly config: SchedulerConfig;
  readonly numTrainTimesteps: number;
  readonly betas: Float32Array;
  /** 1 − β, float32. */
  readonly alphas: Float32Array;
  /** ᾱ_t = ∏ α, float32 (torch.cumprod on float32, which accumulates in double). */
  readonly alphasCumprod: Float32Array;

  /** A config with diffusers field names; missing fields take the diffusers DDPMScheduler defaults. */
  constructor(config: SchedulerConfigInput | SchedulerConfig = {}, defaults: Partial<SchedulerConfig> = {}) {
    this.config = resolveSchedulerConfig(config, defaults);
    this.numTrainTimesteps = this.config.num_train_timesteps;
    const [betas, alphas, ac] = E.scope(() => {
      const b = makeBetas(this.config);
      const a = E.rsub(1.0, b);
      return [b, a, E.cumprod(a, 0)].map((t) => t.toTypedArray() as Float32Array);
    });
    this.betas = betas;
    this.alphas = alphas;
    this.alphasCumprod = ac;
  }

  /** One of the schedule's arrays as a new float32 tensor (or `dtype`), on `device`. */
  tensor(which: "betas" | "alphas" | "alphas_cumprod", o: { device?: string; dtype?: DType } = {}): Tensor {
    const data = which === "betas" ? this.betas : which === "alphas" ? this.alphas : this.alphasCumprod;
    return E.tensor(data, { dtype: o.dtype ?? "float32", device: o.device });
  }

  /** ᾱ at integer timestep t (checked). */
  alphaCumprodAt(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new Error(`timestep ${t} is not an integer in [0, ${this.numTrainTimesteps})`);
    }
    return this.alphasCumprod[t];
  }

  #timesteps(t: Timesteps, device: string): Tensor {
    if (!Array.isArray(t)) {
      const tt = t as Tensor;
      return tt.device === device ? E.toDtype(tt, "int64") : tt.to(device, "int64");
    }
    for (const v of t as readonly number[]) this.alphaCumprodAt(v);
    return E.tensor(BigInt64Array.from(t as readonly number[], BigInt), { device });
  }

  /**
   * (√ᾱ_t, √(1−ᾱ_t)) for each timestep, shaped [B, 1, …, 1] to broadcast
   * against `like`, in like's dtype and device: diffusers casts ᾱ to the
   * sample's dtype before taking roots (DDPMScheduler.add_noise).
   */
  #coefficients(like: Tensor, timesteps: Timesteps): [Tensor, Tensor] {
    const ac = this.tensor("alphas_cumprod", { device: like.device, dtype: like.dtype });
    const picked = E.index(ac, [this.#timesteps(timesteps, like.device)]).flatten();
    const shape = [picked.size(0), ...Array(like.ndim - 1).fill(1)];
    return [
      picked.sqrt().reshape(...shape),
      E.rsub(1, picked)
        .sqrt()
        .reshape(...shape),
    ];
  }

  /** The forward process: √ᾱ_t·x0 + √(1−ᾱ_t)·noise (diffusers `add_noise`). */
  addNoise(x0: Tensor, noise: Tensor, timesteps: Timesteps): Tensor {
    return E.scope(() => {
      const [a, s] = this.#coefficients(x0, timesteps);
      return E.add(E.mul(a, x0), E.mul(s, noise));
    });
  }

  /** The v-prediction target: √ᾱ_t·noise − √(1−ᾱ_t)·x0 (diffusers `get_velocity`). */
  getVelocity(x0: Tensor, noise: Tensor, timesteps: Timesteps): Tensor {
    return E.scope(() => {
      const [a, s] = this.#coefficients(x0, timesteps);
      return E.sub(E.mul(a, noise), E.mul(s, x0));
    });
  }

  /** What the model learns to predict at these timesteps under the config's prediction_type. */
  target(x0: Tensor, noise: Tensor, timesteps: Timesteps): Tensor {
    return this.config.prediction_type === "v_prediction" ? this.getVelocity(x0, noise, timesteps) : noise.clone();
  }

  /**
   * Signal-to-noise ratio ᾱ_t/(1−ᾱ_t), float32, shaped like `timesteps`, on
   * their device: the quantity min-SNR weighting uses (diffusers examples'
   * `compute_snr`: (√ᾱ / √(1−ᾱ))²).
   */
  snr(timesteps: Timesteps): Tensor {
    return E.scope(() => {
      const device = Array.isArray(timesteps) ? "cpu" : (timesteps as Tensor).device;
      const ac = this.tensor("alphas_cumprod", { device });
      const idx = this.#timesteps(timesteps, device);
      const alpha = E.index(ac.sqrt(), [idx]);
      const sigma = E.index(E.rsub(1, ac).sqrt(), [idx]);
      return alpha.div(sigma).square();
    });
  }
}
