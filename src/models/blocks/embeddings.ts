// Sinusoidal timestep features and the time-embedding MLP (huggingface/diffusers
// v0.19.3 src/diffusers/models/embeddings.py: get_timestep_embedding,
// Timesteps, TimestepEmbedding).
import { arange, cat, cos, pad, scope, sin, type Tensor } from "../../engine/index.js";
import { type InitOptions, Linear } from "../../nn/index.js";
import { Block } from "./tree.js";

export interface TimestepFeatureOptions {
  /** cos first, then sin (diffusers flip_sin_to_cos; true for SD). */
  flipSinToCos?: boolean;
  /** diffusers downscale_freq_shift (freq_shift; 0 for SD). */
  freqShift?: number;
  maxPeriod?: number;
}

/**
 * float32 [N, dim] features of N timesteps: exp(−ln(maxPeriod)·i/(half − shift))
 * frequencies, computed with the same float32 operations as diffusers so that
 * large timesteps give the same sines.
 */
export function timestepFeatures(timesteps: Tensor, dim: number, o: TimestepFeatureOptions = {}): Tensor {
  if (timesteps.ndim !== 1) throw new Error(`timestepFeatures: timesteps must be 1-D, got [${timesteps.shape}]`);
  return scope(() => {
    const half = Math.floor(dim / 2);
    const exponent = arange(0, half, 1, { dtype: "float32", device: timesteps.device })
      .mul(-Math.log(o.maxPeriod ?? 10000))
      .div(half - (o.freqShift ?? 0));
    const args = timesteps.float().unsqueeze(1).mul(exponent.exp().unsqueeze(0));
    const [s, c] = [sin(args), cos(args)];
    const emb = (o.flipSinToCos ?? true) ? cat([c, s], -1) : cat([s, c], -1);
    return dim % 2 === 1 ? pad(emb, [0, 1, 0, 0]) : emb;
  });
}

/** linear_1 → silu → linear_2. */
export class TimestepEmbedding extends Block {
  constructor(inChannels: number, timeEmbedDim: number, init: InitOptions = {}) {
    super(init);
    this.add("linear_1", new Linear(inChannels, timeEmbedDim, true, init));
    this.add("linear_2", new Linear(timeEmbedDim, timeEmbedDim, true, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => this.call("linear_2", this.call("linear_1", x).silu()));
  }
}
