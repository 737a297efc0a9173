// `atelier shapes build-base`: builds the shapes world's base model from
// random weights with Atelier's own code — BPE vocabulary, VAE, then UNet and
// text encoder — and writes it as a diffusers folder (fp16 weights, configs,
// tokenizer/, scheduler/) that loads like any checkpoint, with recipe.json
// (every setting), the loss logs and quality.json (what the analyser reads in
// its samples). Stage outputs are kept in a work folder so an interrupted
// build starts again after the last finished stage.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cat, Generator, manualSeed, noGrad, scope, type Tensor } from "../../engine/index.js";
import { writeTextAtomic } from "../../formats/atomic-write.js";
import { saveCheckpoint } from "../../formats/checkpoint.js";
import { loadSafetensors, saveSafetensors } from "../../formats/safetensors.js";
import { ClipTokenizer } from "../../models/clip/index.js";
import { loadStableDiffusion } from "../../models/stable-diffusion.js";
import { AutoencoderKL } from "../../models/vae/index.js";
import { SD15_SCHEDULER_CONFIG } from "../../schedulers/index.js";
import { DREAMBOOTH_IDENTIFIERS, worldBpe, writeTokenizerFiles } from "../vocab.js";
import { patternedScenes, renderScenes, renderWorld, toUnitRange, type WorldImages } from "./data.js";
import { type BaseQuality, measureBaseQuality, measureVaeReconstruction } from "./quality.js";
import { BASE_RECIPE, type BaseRecipe } from "./recipe.js";
import { trainUNet } from "./train-unet.js";
import { detailVae, refineVae, trainVae, type VaeStageOptions } from "./train-vae.js";

export interface BuildBaseOptions {
  out: string;
  /** Stage outputs (default OUT.work); removed after a finished build unless keepWork. */
  work?: string;
  keepWork?: boolean;
  recipe?: BaseRecipe;
  /** Take the VAE's stages 1 and 1b from this model (a folder or file) instead of training them. */
  vaeFrom?: string;
  /** Samples per prompt of the quality check (default 8). */
  qualitySamples?: number;
  log?: (line: string) => void;
}

export interface BuildBaseResult {
  out: string;
  quality: BaseQuality;
  seconds: number;
}

/** A much smaller recipe with the same structure: for tests and a quick look (minutes → seconds). */
export function quickRecipe(r: BaseRecipe = BASE_RECIPE): BaseRecipe {
  return {
    ...r,
    scenes: 512,
    vaeTrain: { ...r.vaeTrain, steps: 30, batch: 8, warmup: 5, decoderSteps: 5 },
    vaeRefine: { ...r.vaeRefine, steps: 10, batch: 8, warmup: 2 },
    vaeDetail: { ...r.vaeDetail, steps: 10, batch: 8, warmup: 2, patternedScenes: 128 },
    unetTrain: { ...r.unetTrain, steps: 30, batch: 16, warmup: 5 },
  };
}

function loadVae(weights: string, meta: string, key: unknown, recipe: BaseRecipe): AutoencoderKL | null {
  if (!existsSync(weights) || !existsSync(meta)) return null;
  const { scalingFactor, recipe: saved } = JSON.parse(readFileSync(meta, "utf8"));
  if (JSON.stringify(saved) !== JSON.stringify(key)) return null;
  const vae = new AutoencoderKL({ ...recipe.vae, scalingFactor }, { mode: "empty" });
  const { tensors } = loadSafetensors(weights);
  try {
    vae.loadStateDict(tensors);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  return vae.eval().requiresGrad_(false);
}

/** The same weights under a VAE whose config carries `scalingFactor` (as SD's 0.18215). */
function withScaling(vae: AutoencoderKL, scalingFactor: number): AutoencoderKL {
  const scaled = new AutoencoderKL({ ...vae.config, scalingFactor }, { mode: "empty" });
  scaled.loadStateDict(vae.stateDict());
  vae.dispose();
  return scaled.eval().requiresGrad_(false);
}

function saveVae(vae: AutoencoderKL, weights: string, meta: string, key: unknown): void {
  saveSafetensors(weights, vae.stateDict());
  writeFileSync(meta, JSON.stringify({ scalingFactor: vae.scalingFactor, recipe: key }));
}

/** Copies those of the loss logs `names` that exist in `from` into `to`. */
function copyLogs(from: string, to: string, names: readonly string[]): void {
  mkdirSync(to, { recursive: true });
  for (const f of names) if (existsSync(join(from, f))) writeFileSync(join(to, f), readFileSync(join(from, f)));
}

/** The VAE of an existing model folder or file (`--vae-from`), which must have the recipe's architecture. */
function vaeOfModel(path: string, recipe: BaseRecipe): AutoencoderKL {
  const m = loadStableDiffusion(path);
  m.unet.dispose();
  m.textEncoder.dispose();
  const { scalingFactor, ...config } = m.vae.config;
  const { scalingFactor: _, ...want } = recipe.vae;
  if (JSON.stringify(config) !== JSON.stringify(want)) {
    m.vae.dispose();
    throw new Error(`--vae-from ${path}: its VAE is not the recipe's (${JSON.stringify(config)})`);
  }
  return m.vae.eval().requiresGrad_(false);
}

/**
 * Stage 1 (VAE), 1b (refinement) and 1c (details), each reused from the work
 * folder when its settings are unchanged; `vaeFrom` takes stages 1 and 1b
 * from a model built before (the shipped base's VAE is their output, in fp16).
 */
function vaeStage(o: VaeStageOptions, work: string, vaeFrom?: string): AutoencoderKL {
  const { recipe } = o;
  const log = o.log ?? (() => {});
  const key1 = { vae: recipe.vae, vaeTrain: recipe.vaeTrain, seed: recipe.seed, scenes: recipe.scenes };
  const key2 = { ...key1, vaeRefine: recipe.vaeRefine };
  const key3 = { ...key2, vaeDetail: recipe.vaeDetail, vaeFrom: vaeFrom ?? null };
  const detailed = loadVae(join(work, "vae-detailed.safetensors"), join(work, "vae-detailed.json"), key3, recipe);
  if (detailed) {
    log(`vae: reusing ${join(work, "vae-detailed.safetensors")}`);
    return detailed;
  }
  let vae = vaeFrom ? vaeOfModel(vaeFrom, recipe) : refinedVae(o, work, key1, key2);
  if (vaeFrom) {
    log(`vae: stages 1 and 1b from ${vaeFrom}`);
    // Their loss logs come along, so the new folder still records every stage.
    if (o.logDir) copyLogs(join(vaeFrom, "training"), o.logDir, ["vae.jsonl", "vae-decoder.jsonl", "vae-refine.jsonl"]);
  }
  if (recipe.vaeDetail.steps === 0) return vae;
  const patterned = renderScenes(patternedScenes(recipe.seed, recipe.vaeDetail.patternedScenes, recipe.vae.sampleSize));
  try {
    const r = detailVae(vae, patterned, o);
    vae = withScaling(vae, r.scalingFactor);
  } finally {
    patterned.pixels.dispose();
  }
  saveVae(vae, join(work, "vae-detailed.safetensors"), join(work, "vae-detailed.json"), key3);
  log(`vae details: scaling factor ${vae.scalingFactor}`);
  return vae;
}

/** Stages 1 and 1b. */
function refinedVae(o: VaeStageOptions, work: string, key1: unknown, key2: unknown): AutoencoderKL {
  const { recipe } = o;
  const log = o.log ?? (() => {});
  const refined = loadVae(join(work, "vae-refined.safetensors"), join(work, "vae-refined.json"), key2, recipe);
  if (refined) {
    log(`vae: reusing ${join(work, "vae-refined.safetensors")}`);
    return refined;
  }
  let vae = loadVae(join(work, "vae.safetensors"), join(work, "vae.json"), key1, recipe);
  if (vae) log(`vae: reusing ${join(work, "vae.safetensors")}`);
  else {
    const r = trainVae(o);
    vae = withScaling(r.vae, r.scalingFactor);
    saveVae(vae, join(work, "vae.safetensors"), join(work, "vae.json"), key1);
    log(`vae: scaling factor ${r.scalingFactor}`);
  }
  if (recipe.vaeRefine.steps === 0) return vae;
  const r = refineVae(vae, o);
  vae = withScaling(vae, r.scalingFactor);
  saveVae(vae, join(work, "vae-refined.safetensors"), join(work, "vae-refined.json"), key2);
  log(`vae refined: scaling factor ${r.scalingFactor}`);
  return vae;
}

/** The scaled latents (encoder means × scaling factor) of every scene. */
function encodeAll(vae: AutoencoderKL, data: WorldImages): Tensor {
  return noGrad(() =>
    scope(() => {
      const parts: Tensor[] = [];
      const n = data.scenes.length;
      for (let i = 0; i < n; i += 256) {
        parts.push(vae.encode(toUnitRange(data.pixels.narrow(0, i, Math.min(256, n - i)))).mean.mul(vae.scalingFactor));
      }
      return cat(parts, 0);
    }),
  );
}

export async function buildBase(o: BuildBaseOptions): Promise<BuildBaseResult> {
  const recipe = o.recipe ?? BASE_RECIPE;
  const log = o.log ?? (() => {});
  const work = o.work ?? `${o.out}.work`;
  const start = performance.now();
  mkdirSync(work, { recursive: true });
  const logDir = join(work, "logs");

  const tokenizerDir = join(work, "tokenizer");
  const bpe = worldBpe({ extraWords: [...DREAMBOOTH_IDENTIFIERS] });
  writeTokenizerFiles(tokenizerDir, bpe);
  const tokenizer = ClipTokenizer.fromDir(tokenizerDir);
  log(`tokenizer: ${tokenizer.vocabSize} tokens, ${bpe.merges.length} merges`);

  manualSeed(recipe.seed);
  const generator = new Generator(recipe.seed);
  log(`rendering ${recipe.scenes} scenes of the world (seed ${recipe.seed})`);
  const data = renderWorld(recipe.seed, recipe.scenes, recipe.vae.sampleSize);
  let vae: AutoencoderKL | null = null;
  let latents: Tensor | null = null;
  try {
    vae = vaeStage({ recipe, data, generator, logDir, log }, work, o.vaeFrom);
    const rec = measureVaeReconstruction(vae, { world: 200 });
    log(
      `vae reconstructions: world shape ${rec.world.shape}, colour ${rec.world.colour}, background ${rec.world.background}; subject star ${rec.subject.shape}, yellow ${rec.subject.colour}, red dot ${rec.subject.dot}`,
    );
    latents = encodeAll(vae, data);
    const { unet, textEncoder } = trainUNet({
      recipe,
      latents,
      scenes: data.scenes,
      tokenizer,
      generator,
      logDir,
      log,
    });
    try {
      const vaeConfig = { ...recipe.vae, scalingFactor: vae.scalingFactor };
      saveCheckpoint({ unet: unet.stateDict(), vae: vae.stateDict(), textEncoder: textEncoder.stateDict() }, o.out, {
        layout: "diffusers",
        dtype: "float16",
        configs: {
          unet: recipe.unet,
          vae: vaeConfig,
          textEncoder: { ...recipe.text, vocabSize: tokenizer.vocabSize },
          textLayout: "clip",
        },
        predictionType: "epsilon",
        tokenizerFrom: tokenizerDir,
        overwrite: true,
      });
    } finally {
      unet.dispose();
      textEncoder.dispose();
    }
  } finally {
    latents?.dispose();
    vae?.dispose();
    data.pixels.dispose();
    generator.dispose();
  }
  log("checking the model: samples of every colour × shape, read by the analyser");
  const quality = await measureBaseQuality(o.out, { samples: o.qualitySamples ?? 8, sampling: recipe.sampling });
  const seconds = (performance.now() - start) / 1000;
  copyLogs(logDir, join(o.out, "training"), [
    "vae.jsonl",
    "vae-decoder.jsonl",
    "vae-refine.jsonl",
    "vae-detail.jsonl",
    "unet.jsonl",
  ]);
  writeTextAtomic(
    join(o.out, "recipe.json"),
    `${JSON.stringify({ recipe, vaeFrom: o.vaeFrom ?? null, scheduler: SD15_SCHEDULER_CONFIG, seconds: Math.round(seconds), built: new Date().toISOString() }, null, 2)}\n`,
  );
  writeTextAtomic(join(o.out, "quality.json"), `${JSON.stringify(quality, null, 2)}\n`);
  if (!o.keepWork) rmSync(work, { recursive: true, force: true });
  return { out: o.out, quality, seconds };
}
