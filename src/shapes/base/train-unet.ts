// Stage 2 of the base model: the UNet and the CLIP text encoder, together
// from random weights, on the world's latents (the stage-1 VAE's means ×
// its scaling factor), epsilon prediction on SD's scaled-linear schedule.
// Settings from docs/notes/shapes-world-feasibility.md: batch 64,
// lr 1e-3 with warm-up, clipping 1, EMA 0.995, caption dropout (whole and
// partial) so that classifier-free guidance and short prompts work.
import { type Generator, indexSelect, type Tensor, tensor } from "../../engine/index.js";
import { type ClipTextConfig, ClipTextModel, type ClipTokenizer } from "../../models/clip/index.js";
import { clipConfigOf } from "../../models/stable-diffusion.js";
import { UNet2DConditionModel } from "../../models/unet/index.js";
import { NoiseSchedule, SD15_SCHEDULER_CONFIG } from "../../schedulers/index.js";
import { Ema } from "../../train/ema.js";
import { diffusionLoss, drawNoise } from "../../train/losses.js";
import { WorldRng } from "../rng.js";
import type { Scene } from "../world.js";
import { drawIndices, trainingCaption } from "./data.js";
import type { BaseRecipe } from "./recipe.js";
import { runStage, type StageRecord } from "./stage.js";

export function baseTextConfig(recipe: BaseRecipe, vocabSize: number): ClipTextConfig {
  return clipConfigOf({ ...recipe.text, vocabSize });
}

export interface UNetStageOptions {
  recipe: BaseRecipe;
  /** [N, 4, 8, 8] float32: scaled latents of `scenes`. */
  latents: Tensor;
  scenes: Scene[];
  tokenizer: ClipTokenizer;
  generator: Generator;
  logDir?: string;
  log?: (line: string) => void;
}

export interface UNetStageResult {
  unet: UNet2DConditionModel;
  textEncoder: ClipTextModel;
  records: StageRecord[];
}

export function trainUNet(o: UNetStageOptions): UNetStageResult {
  const { recipe, latents, scenes, tokenizer, generator } = o;
  const s = recipe.unetTrain;
  const textEncoder = new ClipTextModel(baseTextConfig(recipe, tokenizer.vocabSize), { generator });
  const unet = new UNet2DConditionModel({ ...recipe.unet, normEps: 1e-5 }, { generator });
  unet.train().requiresGrad_(true);
  textEncoder.train().requiresGrad_(true);
  const schedule = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
  const captionRng = new WorldRng(recipe.seed, 7);
  const ids = new Map<string, number[]>();
  const idsOf = (text: string): number[] => {
    let v = ids.get(text);
    if (!v) {
      v = tokenizer.encodePadded(text, recipe.text.maxPositionEmbeddings);
      ids.set(text, v);
    }
    return v;
  };
  const params = [...unet.parameters(), ...textEncoder.parameters()];
  const ema = new Ema(params, s.emaDecay);
  try {
    const records = runStage({
      name: "unet",
      settings: s,
      groups: [
        { params: unet.parameters(), lr: s.lr },
        { params: textEncoder.parameters(), lr: s.textLr },
      ],
      maxGradNorm: s.maxGradNorm,
      logFile: o.logDir && `${o.logDir}/unet.jsonl`,
      log: o.log,
      loss: () => {
        const rows = drawIndices(scenes.length, s.batch, generator);
        const x0 = indexSelect(latents, 0, rows);
        const texts = Array.from(rows.toTypedArray() as BigInt64Array, (r) =>
          trainingCaption(scenes[Number(r)], captionRng, s.dropCaption, s.dropParts),
        );
        const tokenIds = tensor(Int32Array.from(texts.flatMap(idsOf)), {
          shape: [texts.length, recipe.text.maxPositionEmbeddings],
        });
        const context = textEncoder.encode(tokenIds);
        const { noise, timesteps } = drawNoise(x0, schedule.numTrainTimesteps, { generator });
        const prediction = unet.forward(schedule.addNoise(x0, noise, timesteps), timesteps, context);
        const { loss } = diffusionLoss(prediction, noise, new Array(s.batch).fill(false));
        return { loss };
      },
      afterStep: (step) => ema.update(step),
    });
    ema.apply();
    unet.eval().requiresGrad_(false);
    textEncoder.eval().requiresGrad_(false);
    return { unet, textEncoder, records };
  } catch (e) {
    ema.dispose();
    unet.dispose();
    textEncoder.dispose();
    throw e;
  }
}
