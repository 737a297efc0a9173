// The recipe of the shapes world's ×4 upscaler (64² → 256²), the second
// stage of a two-stage Dreambooth: every size and training setting in one
// place, so that `atelier shapes build-upscaler` rebuilds the shipped weights
// and the model folder records what made them. The layout is diffusers'
// StableDiffusionUpscalePipeline (huggingface/diffusers
// src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py):
// a ×4 VAE (three encoder levels, as the real upscaler's), a UNet on
// cat([latents, noised low-res image]) with the noise level as its class
// label, v-prediction on the real model's schedulers; the text encoder and
// tokenizer are the shapes base's, unchanged. Tiny on purpose: the world is
// flat colours and edges, and the build must fit a 2-core CPU.
import type { UNetConfig, VaeConfig } from "../../formats/keymaps/index.js";
import type { StageSettings } from "../base/recipe.js";

export interface UpscalerRecipe {
  seed: number;
  /** Distinct training scenes, rendered at `hrSize` once and kept in memory. */
  scenes: number;
  /**
   * Shapes with a dot or a second colour (src/shapes/base/data.ts
   * patternedScenes: never the subject's own combination), also at `hrSize`:
   * trained on plain shapes only, the codec and the UNet paint a shape's
   * inside in one colour, and a red dot on yellow comes back green or orange.
   */
  patternedScenes: number;
  /** The high-resolution side (the low-res input is hrSize / 4). */
  hrSize: number;
  /** Side of the random high-res crops both stages train on (the networks are convolutional). */
  crop: number;
  vae: VaeConfig;
  /** VAE: `patternedShare` of each batch from the patterned scenes; L1 + edge L1 + mseWeight · MSE + klWeight · KL on crops. */
  vaeTrain: StageSettings & { klWeight: number; mseWeight: number; patternedShare: number };
  unet: UNetConfig;
  /**
   * UNet only (the text encoder is the base's, frozen); v-prediction, noise
   * levels drawn in 0..maxNoiseLevel; `patternedShare` of each batch from the
   * patterned scenes (a super-resolution model sees every kind of detail, as
   * SD's x4 upscaler did; the subject's own combination is left to stage 2).
   */
  unetTrain: StageSettings & { dropCaption: number; emaDecay: number; maxGradNorm: number; patternedShare: number };
  maxNoiseLevel: number;
  /** What the upscaler is sampled with in the quality check and the lab. */
  sampling: { steps: number; noiseLevel: number; cfg: number };
}

export const UPSCALER_RECIPE: UpscalerRecipe = {
  seed: 20261203,
  scenes: 800,
  patternedScenes: 800,
  hrSize: 256,
  crop: 64,
  vae: {
    sampleSize: 256,
    inChannels: 3,
    outChannels: 3,
    blockOutChannels: [16, 32, 32],
    layersPerBlock: 1,
    latentChannels: 4,
    normNumGroups: 8,
    scalingFactor: 1,
  },
  vaeTrain: { steps: 3000, batch: 8, lr: 1e-3, warmup: 100, klWeight: 1e-6, mseWeight: 4, patternedShare: 0.5 },
  unet: {
    sampleSize: 64,
    inChannels: 7,
    outChannels: 4,
    layersPerBlock: 1,
    blockOutChannels: [32, 64],
    downBlockTypes: ["DownBlock2D", "CrossAttnDownBlock2D"],
    upBlockTypes: ["CrossAttnUpBlock2D", "UpBlock2D"],
    crossAttentionDim: 64,
    attentionHeadDim: 8,
    useLinearProjection: true,
    transformerLayersPerBlock: 1,
    normNumGroups: 16,
    upcastAttention: false,
    flipSinToCos: true,
    freqShift: 0,
    numClassEmbeds: 1000,
  },
  unetTrain: {
    steps: 4000,
    batch: 12,
    lr: 1e-3,
    warmup: 100,
    dropCaption: 0.1,
    emaDecay: 0.99,
    maxGradNorm: 1,
    patternedShare: 0.5,
  },
  maxNoiseLevel: 350,
  sampling: { steps: 20, noiseLevel: 20, cfg: 1 },
};

/** The same structure, a few steps each: for tests (minutes → seconds). */
export function quickUpscalerRecipe(r: UpscalerRecipe = UPSCALER_RECIPE): UpscalerRecipe {
  return {
    ...r,
    scenes: 16,
    patternedScenes: 16,
    vaeTrain: { ...r.vaeTrain, steps: 3, batch: 2, warmup: 1 },
    unetTrain: { ...r.unetTrain, steps: 3, batch: 2, warmup: 1 },
  };
}
