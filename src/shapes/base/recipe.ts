// The recipe of the built-in shapes-world base model: the three networks'
// sizes and every training setting, in one place, so that `atelier shapes
// build-base` rebuilds the shipped weights and the model folder records what
// made them. Sizes follow docs/notes/shapes-world-feasibility.md: a VAE
// 64×64×3 → 8×8×4 (as SD's 8× VAE), a 2-layer CLIP text encoder of width 64
// over a BPE vocabulary of the world, and a UNet of 64/128 channels with
// cross-attention at both levels. Head counts are the ones a single-file
// checkpoint's loader infers (checkpoint-detect.ts: 8 UNet heads, hidden/64
// text heads), so the model also loads right from an LDM .safetensors.
import type { TextEncoderConfig, UNetConfig, VaeConfig } from "../../formats/keymaps/index.js";

export interface StageSettings {
  steps: number;
  batch: number;
  lr: number;
  warmup: number;
}

export interface BaseRecipe {
  /** Seed of the world's training scenes, of initialisation and of noise. */
  seed: number;
  /** Distinct training scenes rendered once and kept in memory. */
  scenes: number;
  vae: VaeConfig;
  /** VAE training: reconstruction (L1 + MSE) + klWeight · KL, then decoder-only steps at the end. */
  vaeTrain: StageSettings & { klWeight: number; decoderSteps: number };
  /**
   * Then encoder and decoder again with a squared-error term added (weight
   * mseWeight): L1 and edges alone left red, orange and yellow objects all
   * decoded orange (70 % colour accuracy on reconstructions, shapes 100 %).
   */
  vaeRefine: StageSettings & { mseWeight: number };
  /**
   * Then the refinement's loss on half world, half `patternedScenes` (dots and
   * two-tone shapes, never the subject's own combination): without it the VAE
   * decoded the subject's red dot on yellow as one orange star (yellow 4 of 32,
   * red dot 1 of 32 reconstructions), so no Dreambooth could learn the dot.
   */
  vaeDetail: StageSettings & { patternedScenes: number };
  text: Omit<TextEncoderConfig, "vocabSize">;
  unet: UNetConfig;
  /** UNet + text encoder, trained together from random weights on the VAE's latents. */
  unetTrain: StageSettings & {
    textLr: number;
    /** Share of captions replaced by "" (so classifier-free guidance has an unconditional model). */
    dropCaption: number;
    /** Share of captions that lose their colour words, their background, or both ("a star"). */
    dropParts: number;
    emaDecay: number;
    maxGradNorm: number;
  };
  /** What samples of the finished model are drawn with (and what `atelier eval` defaults to). */
  sampling: { sampler: string; steps: number; cfg: number };
}

export const BASE_RECIPE: BaseRecipe = {
  seed: 20261125,
  scenes: 24000,
  vae: {
    sampleSize: 64,
    inChannels: 3,
    outChannels: 3,
    blockOutChannels: [32, 32, 64, 64],
    layersPerBlock: 1,
    latentChannels: 4,
    normNumGroups: 16,
    scalingFactor: 1,
  },
  vaeTrain: { steps: 1800, batch: 16, lr: 1e-3, warmup: 50, klWeight: 1e-6, decoderSteps: 400 },
  vaeRefine: { steps: 800, batch: 16, lr: 3e-4, warmup: 20, mseWeight: 4 },
  vaeDetail: { steps: 2000, batch: 16, lr: 3e-4, warmup: 20, patternedScenes: 6000 },
  text: {
    hiddenSize: 64,
    intermediateSize: 256,
    numHiddenLayers: 2,
    numAttentionHeads: 1,
    maxPositionEmbeddings: 77,
    hiddenAct: "quick_gelu",
    layerNormEps: 1e-5,
    projectionDim: 64,
  },
  unet: {
    sampleSize: 8,
    inChannels: 4,
    outChannels: 4,
    layersPerBlock: 1,
    blockOutChannels: [64, 128],
    downBlockTypes: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    upBlockTypes: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    crossAttentionDim: 64,
    attentionHeadDim: 8,
    useLinearProjection: false,
    transformerLayersPerBlock: 1,
    normNumGroups: 32,
    upcastAttention: false,
    flipSinToCos: true,
    freqShift: 0,
  },
  unetTrain: {
    steps: 3600,
    batch: 64,
    lr: 1e-3,
    textLr: 1e-3,
    warmup: 100,
    dropCaption: 0.1,
    dropParts: 0.3,
    emaDecay: 0.995,
    maxGradNorm: 1,
  },
  sampling: { sampler: "ddim", steps: 20, cfg: 5 },
};
