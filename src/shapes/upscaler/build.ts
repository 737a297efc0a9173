// `atelier shapes build-upscaler`: builds the shapes world's ×4 upscaler
// (64² → 256²) from random weights with Atelier's own code — a ×4 VAE on
// 256² renders of the world, then the UNet on its latents conditioned on the
// noised 4×4 box-averaged image (dreambooth-upscaler.ts's downscale4 and
// upscalerPrediction, as diffusers' train_dreambooth stage 2 pairs them) —
// and writes it as a StableDiffusionUpscalePipeline folder (fp16) whose text
// encoder and tokenizer are the shapes base's, with recipe.json and the loss
// logs. Both stages train on random crops (the networks are convolutional),
// half of each batch from the plain world and half from patterned scenes
// (dots, two-tone shapes; never the Dreambooth subject's own combination).
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { isAbsolute, join, relative, resolve } from "node:path";
import {
  cat,
  Generator,
  indexSelect,
  manualSeed,
  noGrad,
  randint,
  randn,
  scope,
  std,
  type Tensor,
  tensor,
} from "../../engine/index.js";
import { writeTextAtomic } from "../../formats/atomic-write.js";
import { saveCheckpoint } from "../../formats/checkpoint.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../models/stable-diffusion.js";
import { UNet2DConditionModel } from "../../models/unet/index.js";
import {
  completeUpscalerFolder,
  X4_LOW_RES_SCHEDULER_CONFIG,
  X4_SCHEDULER_CONFIG,
} from "../../models/upscaler/index.js";
import { AutoencoderKL } from "../../models/vae/index.js";
import { NoiseSchedule } from "../../schedulers/index.js";
import { Ema } from "../../train/ema.js";
import { diffusionLoss } from "../../train/losses.js";
import { downscale4, upscalerPrediction } from "../../train/methods/dreambooth-upscaler.js";
import {
  drawIndices,
  patternedScenes,
  renderScenes,
  renderWorld,
  toUnitRange,
  type WorldImages,
} from "../base/data.js";
import { runStage } from "../base/stage.js";
import { reconstructionLoss } from "../base/train-vae.js";
import { packageRoot, shapesBasePath } from "../base-path.js";
import { WorldRng } from "../rng.js";
import { caption, type Scene } from "../world.js";
import { UPSCALER_RECIPE, type UpscalerRecipe } from "./recipe.js";

export interface BuildUpscalerOptions {
  out: string;
  /** The shapes base whose text encoder and tokenizer the upscaler shares (default the built-in one). */
  base?: string;
  recipe?: UpscalerRecipe;
  log?: (line: string) => void;
}

export interface BuildUpscalerResult {
  out: string;
  seconds: number;
  vaeLoss: number;
  unetLoss: number;
}

/**
 * A random `crop`² window of a random batch of scenes, in [-1, 1], and the
 * scenes drawn: `share` of the batch from `patterned` (dots and two-tone
 * shapes), the rest from the plain world — as the base's VAE refinement
 * (src/shapes/base/train-vae.ts detailVae) mixes them.
 */
function cropBatch(
  world: WorldImages,
  patterned: WorldImages,
  share: number,
  batch: number,
  crop: number,
  g: Generator,
  rng: WorldRng,
): { scenes: Scene[]; pixels: Tensor } {
  const fromPatterned = Math.round(batch * share);
  const x = Math.floor(rng.next() * (world.size - crop + 1));
  const y = Math.floor(rng.next() * (world.size - crop + 1));
  const scenes: Scene[] = [];
  const parts: [WorldImages, number][] = [
    [world, batch - fromPatterned],
    [patterned, fromPatterned],
  ];
  const pixels = scope(() =>
    toUnitRange(
      cat(
        parts
          .filter(([, n]) => n > 0)
          .map(([data, n]) => {
            const rows = drawIndices(data.scenes.length, n, g);
            for (const r of rows.toTypedArray() as BigInt64Array) scenes.push(data.scenes[Number(r)]);
            return indexSelect(data.pixels, 0, rows).narrow(2, y, crop).narrow(3, x, crop);
          }),
        0,
      ),
    ),
  );
  return { scenes, pixels };
}

/** The base as recipe.json records it: inside the package relative to its root, so the file names no machine. */
function recordedPath(path: string): string {
  const rel = relative(packageRoot(), resolve(path));
  return rel.startsWith("..") || isAbsolute(rel) ? path : rel;
}

export async function buildUpscaler(o: BuildUpscalerOptions): Promise<BuildUpscalerResult> {
  const recipe = o.recipe ?? UPSCALER_RECIPE;
  const basePath = o.base ?? shapesBasePath();
  const log = o.log ?? (() => {});
  if (!existsSync(basePath))
    throw new Error(`build-upscaler: base model ${basePath} not found (atelier shapes build-base)`);
  const base = loadStableDiffusion(basePath, { tokenizerDir: join(basePath, "tokenizer") });
  const textConfig = base.info.configs.textEncoder;
  if (textConfig.hiddenSize !== recipe.unet.crossAttentionDim) {
    disposeStableDiffusion(base);
    throw new Error(
      `build-upscaler: the base's text encoder is ${textConfig.hiddenSize} wide, the recipe's UNet attends to ${recipe.unet.crossAttentionDim}`,
    );
  }
  base.unet.dispose();
  base.vae.dispose();
  const start = performance.now();
  const work = `${o.out}.work`;
  const logDir = join(work, "logs");
  mkdirSync(logDir, { recursive: true });
  manualSeed(recipe.seed);
  const g = new Generator(recipe.seed);
  const rng = new WorldRng(recipe.seed, 11);
  log(
    `rendering ${recipe.scenes} + ${recipe.patternedScenes} patterned scenes at ${recipe.hrSize}² (seed ${recipe.seed})`,
  );
  const data = renderWorld(recipe.seed, recipe.scenes, recipe.hrSize);
  const patterned = renderScenes(patternedScenes(recipe.seed, recipe.patternedScenes, recipe.hrSize), recipe.hrSize);
  const vae = new AutoencoderKL(recipe.vae, { generator: g });
  let unet: UNet2DConditionModel | null = null;
  try {
    // Stage 1: the ×4 VAE.
    vae.train().requiresGrad_(true);
    const v = recipe.vaeTrain;
    const vaeRecords = runStage({
      name: "upscaler vae",
      settings: v,
      groups: [{ params: vae.parameters(), lr: v.lr }],
      maxGradNorm: 1,
      logFile: join(logDir, "vae.jsonl"),
      log,
      loss: () => {
        const { pixels } = cropBatch(data, patterned, v.patternedShare, v.batch, recipe.crop, g, rng);
        const posterior = vae.encode(pixels);
        const decoded = vae.decode(posterior.sample(g));
        const rec = reconstructionLoss(decoded, pixels).add(decoded.sub(pixels).square().mean().mul(v.mseWeight));
        const kl = posterior.mean.square().add(posterior.logvar.exp()).sub(1).sub(posterior.logvar).mul(0.5).mean();
        return { loss: rec.add(kl.mul(v.klWeight)), parts: { reconstruction: rec, kl } };
      },
    });
    vae.eval().requiresGrad_(false);
    // SD's rule for the scaling factor: 1 / std of the latents (the real upscaler's 0.08333 is its own).
    const scalingFactor = noGrad(() =>
      scope(() => {
        const { pixels } = cropBatch(data, patterned, v.patternedShare, 64, recipe.crop, g, rng);
        return 1 / std(vae.encode(pixels).mean).item();
      }),
    );
    const scaled = new AutoencoderKL({ ...recipe.vae, scalingFactor }, { mode: "empty" });
    scaled.loadStateDict(vae.stateDict());
    scaled.eval().requiresGrad_(false);
    log(`upscaler vae: scaling factor ${scalingFactor.toFixed(4)}`);

    // Stage 2: the UNet, v-prediction, text encoder frozen.
    const u = recipe.unetTrain;
    unet = new UNet2DConditionModel({ ...recipe.unet, normEps: 1e-5 }, { generator: g });
    unet.train().requiresGrad_(true);
    const schedule = new NoiseSchedule(X4_SCHEDULER_CONFIG);
    const lowResSchedule = new NoiseSchedule(X4_LOW_RES_SCHEDULER_CONFIG);
    const captionRng = new WorldRng(recipe.seed, 12);
    const maxLen = textConfig.maxPositionEmbeddings;
    const ids = new Map<string, number[]>();
    const idsOf = (text: string): number[] => {
      let v = ids.get(text);
      if (!v) {
        v = base.tokenizer.encodePadded(text, maxLen);
        ids.set(text, v);
      }
      return v;
    };
    const ema = new Ema(unet.parameters(), u.emaDecay);
    const model = { unet };
    let unetRecords: ReturnType<typeof runStage>;
    try {
      unetRecords = runStage({
        name: "upscaler unet",
        settings: u,
        groups: [{ params: unet.parameters(), lr: u.lr }],
        maxGradNorm: u.maxGradNorm,
        logFile: join(logDir, "unet.jsonl"),
        log,
        loss: () => {
          const { scenes, pixels } = cropBatch(data, patterned, u.patternedShare, u.batch, recipe.crop, g, rng);
          const texts = scenes.map((scene) => (captionRng.next() < u.dropCaption ? "" : caption(scene)));
          const latents = noGrad(() => scaled.encode(pixels).mean.mul(scalingFactor));
          const tokenIds = tensor(Int32Array.from(texts.flatMap(idsOf)), { shape: [texts.length, maxLen] });
          const context = noGrad(() => base.textEncoder.encode(tokenIds));
          const noise = randn(latents.shape, { generator: g });
          const ts = randint(0, schedule.numTrainTimesteps, [u.batch], { generator: g });
          const lowRes = downscale4(pixels);
          const lr = {
            lowRes,
            noise: randn(lowRes.shape, { generator: g }),
            levels: randint(0, recipe.maxNoiseLevel + 1, [u.batch], { generator: g }),
          };
          const pred = upscalerPrediction(
            model,
            lowResSchedule,
            schedule.addNoise(latents, noise, ts),
            ts,
            context,
            lr,
          );
          const { loss } = diffusionLoss(pred, schedule.target(latents, noise, ts), new Array(u.batch).fill(false));
          return { loss };
        },
        afterStep: (step) => ema.update(step),
      });
      ema.apply();
    } catch (e) {
      ema.dispose();
      throw e;
    }
    unet.eval().requiresGrad_(false);
    saveCheckpoint(
      { unet: unet.stateDict(), vae: scaled.stateDict(), textEncoder: base.textEncoder.stateDict() },
      o.out,
      {
        layout: "diffusers",
        dtype: "float16",
        configs: {
          unet: recipe.unet,
          vae: { ...recipe.vae, scalingFactor },
          textEncoder: textConfig,
          textLayout: base.info.configs.textLayout,
        },
        predictionType: "v_prediction",
        tokenizerFrom: join(basePath, "tokenizer"),
        overwrite: true,
      },
    );
    scaled.dispose();
    completeUpscalerFolder(o.out, {
      scheduler: X4_SCHEDULER_CONFIG,
      lowResScheduler: X4_LOW_RES_SCHEDULER_CONFIG,
      maxNoiseLevel: recipe.maxNoiseLevel,
    });
    const seconds = (performance.now() - start) / 1000;
    mkdirSync(join(o.out, "training"), { recursive: true });
    for (const f of ["vae.jsonl", "unet.jsonl"])
      writeFileSync(join(o.out, "training", f), readFileSync(join(logDir, f)));
    const tail = (r: { loss: number }[]) =>
      r.slice(-25).reduce((a, x) => a + x.loss, 0) / Math.max(1, Math.min(25, r.length));
    const vaeLoss = tail(vaeRecords);
    const unetLoss = tail(unetRecords);
    writeTextAtomic(
      join(o.out, "recipe.json"),
      `${JSON.stringify({ recipe, base: recordedPath(basePath), scalingFactor, finalLoss: { vae: vaeLoss, unet: unetLoss }, seconds: Math.round(seconds), built: new Date().toISOString() }, null, 2)}\n`,
    );
    rmSync(work, { recursive: true, force: true });
    return { out: o.out, seconds, vaeLoss, unetLoss };
  } finally {
    unet?.dispose();
    vae.dispose();
    data.pixels.dispose();
    patterned.pixels.dispose();
    g.dispose();
    disposeStableDiffusion(base);
  }
}
