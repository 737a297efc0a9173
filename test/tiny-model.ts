// Tiny random Stable Diffusion models for tests: the fixture's tiny UNet and
// VAE shapes, and a 2-layer CLIP text encoder with the full CLIP vocabulary
// (so the real tokenizer's ids fit).
import { type DType, Generator } from "../src/engine/index.js";
import { saveCheckpoint } from "../src/formats/checkpoint.js";
import { type ClipTextConfig, ClipTextModel, ClipTokenizer } from "../src/models/clip/index.js";
import type { StableDiffusion } from "../src/models/stable-diffusion.js";
import { UNet2DConditionModel } from "../src/models/unet/index.js";
import { AutoencoderKL } from "../src/models/vae/index.js";
import { SD15_SCHEDULER_CONFIG } from "../src/schedulers/index.js";
import { sharedFixture } from "./helpers.js";

export const TINY_TEXT_CONFIG: ClipTextConfig = {
  vocabSize: 49408,
  hiddenSize: 32,
  intermediateSize: 37,
  numLayers: 2,
  numHeads: 4,
  maxPositions: 77,
  hiddenAct: "quick_gelu",
  layerNormEps: 1e-5,
};

export const tinyTokenizerDir = (): string => sharedFixture("tokenizer");

/** The three networks, randomly initialised from `seed`. */
export function tinyNetworks(seed: number, dtype?: DType) {
  const generator = new Generator(seed);
  const init = { generator, dtype };
  const nets = {
    unet: new UNet2DConditionModel("tiny", init),
    vae: new AutoencoderKL("tiny", init),
    textEncoder: new ClipTextModel(TINY_TEXT_CONFIG, init),
  };
  generator.dispose();
  return nets;
}

/** A whole tiny model in eval mode, frozen, with the CLIP tokenizer of the fixtures. */
export function tinyStableDiffusion(seed: number, dtype?: DType): StableDiffusion {
  const n = tinyNetworks(seed, dtype);
  return {
    unet: n.unet.eval().requiresGrad_(false),
    vae: n.vae.eval().requiresGrad_(false),
    textEncoder: n.textEncoder.eval().requiresGrad_(false),
    tokenizer: ClipTokenizer.fromDir(tinyTokenizerDir()),
    scheduler: SD15_SCHEDULER_CONFIG,
    kind: "sd1",
    device: "cpu",
    name: "tiny",
  };
}

/** Writes a tiny single-file LDM checkpoint (as A1111 would load it) to `path`. */
export function writeTinyCheckpoint(path: string, seed: number, dtype?: DType): void {
  const n = tinyNetworks(seed);
  try {
    saveCheckpoint({ unet: n.unet.stateDict(), vae: n.vae.stateDict(), textEncoder: n.textEncoder.stateDict() }, path, {
      layout: "ldm",
      dtype,
    });
  } finally {
    for (const m of Object.values(n)) m.dispose();
  }
}
