// AutoencoderKL, parameter paths = diffusers keys (huggingface/diffusers
// v0.19.3 src/diffusers/models/autoencoder_kl.py, and vae.py
// DiagonalGaussianDistribution).
import { type Generator, randn, scope, type Tensor } from "../../engine/index.js";
import { Conv2d, type InitOptions } from "../../nn/index.js";
import { Block } from "../blocks/index.js";
import { Decoder, Encoder } from "./coder.js";

export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  latentChannels: number;
  normNumGroups: number;
  sampleSize: number;
  /** Latents for the UNet are posterior samples × this (1 where a model has none). */
  scalingFactor: number;
}

/** The SD1.x/SD2.x VAE (runwayml/stable-diffusion-v1-5 vae/config.json). */
export const sd: VaeConfig = {
  inChannels: 3,
  outChannels: 3,
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  latentChannels: 4,
  normNumGroups: 32,
  sampleSize: 512,
  scalingFactor: 0.18215,
};

/**
 * The tiny VAE of the shared fixtures (models/vae_tiny.safetensors, which test/models/vae.test.ts
 * loads); its files apply no scaling.
 */
export const tiny: VaeConfig = {
  inChannels: 3,
  outChannels: 3,
  blockOutChannels: [32, 64],
  layersPerBlock: 1,
  latentChannels: 4,
  normNumGroups: 32,
  sampleSize: 16,
  scalingFactor: 1,
};

export const vaePresets = { sd, tiny } as const;
export type VaePreset = keyof typeof vaePresets;

/**
 * The encoder's posterior N(mean, std²) per latent element. A plain object, so
 * that scope() keeps or frees its tensors (moments, mean, logvar, std).
 */
export interface LatentDistribution {
  /** quant_conv output [B, 2·latent, h, w]: mean then logvar along dim 1. */
  moments: Tensor;
  mean: Tensor;
  /** Clamped to [-30, 20]. */
  logvar: Tensor;
  std: Tensor;
  /** mean + std·ε with ε ~ N(0, 1) from `generator` (the default one when absent). */
  sample(generator?: Generator): Tensor;
}

/** Builds the posterior from quant_conv's moments. */
export function diagonalGaussian(moments: Tensor): LatentDistribution {
  return scope(() => {
    const [mean, rawLogvar] = moments.chunk(2, 1);
    const logvar = rawLogvar.clamp(-30, 20);
    const std = logvar.mul(0.5).exp();
    return {
      moments,
      mean,
      logvar,
      std,
      sample(generator?: Generator): Tensor {
        return scope(() => {
          // As diffusers' randn_tensor: a CPU generator draws on the CPU, then the noise moves.
          const device = generator ? generator.device : mean.device;
          let eps = randn(mean.shape, { generator, dtype: mean.dtype, device });
          if (eps.device !== mean.device) eps = eps.to(mean.device);
          return mean.add(std.mul(eps));
        });
      },
    };
  });
}

/** The KL autoencoder: images in [-1, 1] ⇄ latents (8× smaller for the SD VAE). */
export class AutoencoderKL extends Block {
  readonly config: VaeConfig;

  constructor(config: VaeConfig | VaePreset, init: InitOptions = {}) {
    super(init);
    const c = typeof config === "string" ? vaePresets[config] : config;
    this.config = c;
    const latent = c.latentChannels;
    this.add("encoder", new Encoder(c, init));
    this.add("decoder", new Decoder(c, init));
    this.add("quant_conv", new Conv2d(2 * latent, 2 * latent, 1, {}, init));
    this.add("post_quant_conv", new Conv2d(latent, latent, 1, {}, init));
  }

  get scalingFactor(): number {
    return this.config.scalingFactor;
  }

  get encoder(): Encoder {
    return this.mod<Encoder>("encoder");
  }

  get decoder(): Decoder {
    return this.mod<Decoder>("decoder");
  }

  /** image [B, in, H, W] in [-1, 1] → the latent posterior (unscaled). */
  encode(image: Tensor): LatentDistribution {
    return scope(() => diagonalGaussian(this.call("quant_conv", this.call("encoder", image))));
  }

  /** latent [B, latent, h, w] (unscaled) → image [B, out, H, W]. */
  decode(latent: Tensor): Tensor {
    return scope(() => this.call("decoder", this.call("post_quant_conv", latent)));
  }

  /** Training latents: a posterior sample × scalingFactor. */
  encodeToLatents(images: Tensor, generator?: Generator): Tensor {
    return scope(() => this.encode(images).sample(generator).mul(this.scalingFactor));
  }

  /** Images from UNet latents: decode(latents / scalingFactor). */
  decodeLatents(latents: Tensor): Tensor {
    return scope(() => this.decode(latents.div(this.scalingFactor)));
  }
}
