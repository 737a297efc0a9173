// Stage 1 of the base model: the VAE, from random weights, on the world's
// images. Loss = L1 of the pixels + L1 of their horizontal and vertical
// differences (edges: the shapes' outlines are what an 8× VAE blurs first,
// and what tells a star from a circle) + klWeight · KL(posterior ‖ N(0, 1)),
// as SD's VAE keeps a tiny KL term. Then a few decoder-only steps on the
// encoder's means, which sharpened shapes in the feasibility run
// (docs/notes/shapes-world-feasibility.md). The latents' scaling factor
// is measured at the end (1 / their std), as SD's 0.18215 was.
import { cat, type Generator, indexSelect, noGrad, scope, std, type Tensor } from "../../engine/index.js";
import { AutoencoderKL, type LatentDistribution } from "../../models/vae/index.js";
import { drawIndices, toUnitRange, type WorldImages } from "./data.js";
import type { BaseRecipe, StageSettings } from "./recipe.js";
import { runStage, type StageRecord } from "./stage.js";

/** L1 of the images and of their finite differences along x and y. */
export function reconstructionLoss(decoded: Tensor, target: Tensor): Tensor {
  return scope(() => {
    const dx = (t: Tensor) => t.narrow(3, 1, t.size(3) - 1).sub(t.narrow(3, 0, t.size(3) - 1));
    const dy = (t: Tensor) => t.narrow(2, 1, t.size(2) - 1).sub(t.narrow(2, 0, t.size(2) - 1));
    const pixels = decoded.sub(target).abs().mean();
    const edges = dx(decoded)
      .sub(dx(target))
      .abs()
      .mean()
      .add(dy(decoded).sub(dy(target)).abs().mean());
    return pixels.add(edges);
  });
}

/** Mean over elements of KL(N(mean, exp(logvar)) ‖ N(0, 1)). */
function klToStandardNormal(p: LatentDistribution): Tensor {
  return p.mean.square().add(p.logvar.exp()).sub(1).sub(p.logvar).mul(0.5).mean();
}

export interface VaeStageOptions {
  recipe: BaseRecipe;
  data: WorldImages;
  generator: Generator;
  logDir?: string;
  log?: (line: string) => void;
}

export interface VaeStageResult {
  vae: AutoencoderKL;
  records: StageRecord[];
  scalingFactor: number;
}

export function trainVae(o: VaeStageOptions): VaeStageResult {
  const { recipe, data, generator } = o;
  const n = data.scenes.length;
  const vae = new AutoencoderKL(recipe.vae, { generator });
  vae.train().requiresGrad_(true);
  const batchOf = (): Tensor =>
    scope(() => toUnitRange(indexSelect(data.pixels, 0, drawIndices(n, recipe.vaeTrain.batch, generator))));
  const records = runStage({
    name: "vae",
    settings: recipe.vaeTrain,
    groups: [{ params: vae.parameters(), lr: recipe.vaeTrain.lr }],
    maxGradNorm: 1,
    logFile: o.logDir && `${o.logDir}/vae.jsonl`,
    log: o.log,
    loss: () => {
      const x = batchOf();
      const posterior = vae.encode(x);
      const decoded = vae.decode(posterior.sample(generator));
      const rec = reconstructionLoss(decoded, x);
      const kl = klToStandardNormal(posterior);
      return { loss: rec.add(kl.mul(recipe.vaeTrain.klWeight)), parts: { reconstruction: rec, kl } };
    },
  });
  // Decoder-only: the encoder is fixed, the decoder learns to draw its means sharply.
  vae.encoder.requiresGrad_(false).eval();
  vae.getModule("quant_conv").requiresGrad_(false);
  const decoderParams = [...vae.decoder.parameters(), ...vae.getModule("post_quant_conv").parameters()];
  const decoderRecords = runStage({
    name: "vae decoder",
    settings: { ...recipe.vaeTrain, steps: recipe.vaeTrain.decoderSteps, warmup: 0, lr: recipe.vaeTrain.lr / 3 },
    groups: [{ params: decoderParams, lr: recipe.vaeTrain.lr / 3 }],
    maxGradNorm: 1,
    logFile: o.logDir && `${o.logDir}/vae-decoder.jsonl`,
    log: o.log,
    loss: () => {
      const x = batchOf();
      const mean = noGrad(() => vae.encode(x).mean);
      const rec = reconstructionLoss(vae.decode(mean), x);
      return { loss: rec };
    },
  });
  vae.eval().requiresGrad_(false);
  const scalingFactor = measureScalingFactor(vae, data);
  return {
    vae,
    records: [...records, ...decoderRecords.map((r) => ({ ...r, step: r.step + records.length }))],
    scalingFactor,
  };
}

/**
 * Stage 1b: encoder and decoder together again, loss = L1 + edges +
 * mseWeight · MSE (+ the KL term): the squared error punishes a wrong hue
 * over a whole object far more than L1 does. Returns the new scaling factor.
 */
export function refineVae(vae: AutoencoderKL, o: VaeStageOptions): { records: StageRecord[]; scalingFactor: number } {
  const { recipe, data, generator } = o;
  const s = recipe.vaeRefine;
  const n = data.scenes.length;
  return tuneVae(vae, o, "vae refine", s, s.mseWeight, () =>
    scope(() => toUnitRange(indexSelect(data.pixels, 0, drawIndices(n, s.batch, generator)))),
  );
}

/**
 * Stage 1c: the refinement's loss on batches that are half world scenes and
 * half `patterned` ones (dots, two colours), so that the VAE keeps details
 * the world never shows — a Dreambooth subject's dot among them.
 */
export function detailVae(
  vae: AutoencoderKL,
  patterned: WorldImages,
  o: VaeStageOptions,
): { records: StageRecord[]; scalingFactor: number } {
  const { recipe, data, generator } = o;
  const s = recipe.vaeDetail;
  const half = Math.ceil(s.batch / 2);
  const draw = (images: WorldImages, k: number): Tensor =>
    indexSelect(images.pixels, 0, drawIndices(images.scenes.length, k, generator));
  return tuneVae(vae, o, "vae detail", s, recipe.vaeRefine.mseWeight, () =>
    scope(() => toUnitRange(cat([draw(data, s.batch - half), draw(patterned, half)], 0))),
  );
}

/** Encoder and decoder on L1 + edges + mseWeight · MSE + KL, batches from `batchOf`; then the new scaling factor. */
function tuneVae(
  vae: AutoencoderKL,
  o: VaeStageOptions,
  name: string,
  settings: StageSettings,
  mseWeight: number,
  batchOf: () => Tensor,
): { records: StageRecord[]; scalingFactor: number } {
  const { recipe, generator } = o;
  vae.train().requiresGrad_(true);
  const records = runStage({
    name,
    settings,
    groups: [{ params: vae.parameters(), lr: settings.lr }],
    maxGradNorm: 1,
    logFile: o.logDir && `${o.logDir}/${name.replaceAll(" ", "-")}.jsonl`,
    log: o.log,
    loss: () => {
      const x = batchOf();
      const posterior = vae.encode(x);
      const decoded = vae.decode(posterior.sample(generator));
      const rec = reconstructionLoss(decoded, x);
      const mse = decoded.sub(x).square().mean();
      const kl = klToStandardNormal(posterior);
      return {
        loss: rec.add(mse.mul(mseWeight)).add(kl.mul(recipe.vaeTrain.klWeight)),
        parts: { reconstruction: rec, mse },
      };
    },
  });
  vae.eval().requiresGrad_(false);
  return { records, scalingFactor: measureScalingFactor(vae, o.data) };
}

/** 1 / std of the encoder's means over (up to) 2048 images, rounded to 5 digits. */
export function measureScalingFactor(vae: AutoencoderKL, data: WorldImages): number {
  return noGrad(() =>
    scope(() => {
      const n = Math.min(2048, data.scenes.length);
      const parts: Tensor[] = [];
      for (let i = 0; i < n; i += 256) {
        parts.push(vae.encode(toUnitRange(data.pixels.narrow(0, i, Math.min(256, n - i)))).mean);
      }
      return Number((1 / std(cat(parts, 0)).item()).toPrecision(5));
    }),
  );
}
