// A whole Stable Diffusion model from any checkpoint the formats layer reads:
// the three networks built from the configs the weights fit, loaded strictly,
// plus the tokenizer (never downloaded) and the scheduler config.
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { checkDevice, type DType } from "../engine/index.js";
import { type CheckpointInfo, type LoadCheckpointOptions, loadCheckpoint } from "../formats/checkpoint.js";
import type { SDConfigs } from "../formats/keymaps/index.js";
import { loadSchedulerConfig, type SchedulerConfigInput, SD15_SCHEDULER_CONFIG } from "../schedulers/index.js";
import { type ClipTextConfig, ClipTextModel } from "./clip/text-encoder.js";
import { ClipTokenizer, findTokenizer } from "./clip/tokenizer.js";
import { UNet2DConditionModel, type UNetConfig } from "./unet/index.js";
import { AutoencoderKL } from "./vae/index.js";

/** A loaded Stable Diffusion model. */
export interface StableDiffusion {
  unet: UNet2DConditionModel;
  vae: AutoencoderKL;
  textEncoder: ClipTextModel;
  tokenizer: ClipTokenizer;
  /** The folder the tokenizer was read from (copied into diffusers folders saved from this model). */
  tokenizerDir?: string;
  /** The model's scheduler config (diffusers scheduler_config.json fields). */
  scheduler: SchedulerConfigInput;
  /** sd1 pads prompts with EOS; sd2 with 0. */
  kind: "sd1" | "sd2";
  device: string;
  name: string;
}

export interface LoadedStableDiffusion extends StableDiffusion {
  info: CheckpointInfo;
}

export interface LoadStableDiffusionOptions
  extends Pick<LoadCheckpointOptions, "predictionType" | "ema" | "variant" | "overrides"> {
  device?: string;
  /** Weights dtype (default float32). */
  dtype?: DType;
  /** `--tokenizer DIR`; otherwise the model folder's tokenizer/, ATELIER_TOKENIZER, the HF hub cache. */
  tokenizerDir?: string;
}

export function unetConfigOf(c: SDConfigs): UNetConfig {
  return { ...c.unet, normEps: 1e-5 };
}

export function textConfigOf(c: SDConfigs): ClipTextConfig {
  return clipConfigOf(c.textEncoder);
}

/** The text encoder's build config from its checkpoint config (transformers CLIPTextConfig fields). */
export function clipConfigOf(t: SDConfigs["textEncoder"]): ClipTextConfig {
  return {
    vocabSize: t.vocabSize,
    hiddenSize: t.hiddenSize,
    intermediateSize: t.intermediateSize,
    numLayers: t.numHiddenLayers,
    numHeads: t.numAttentionHeads,
    maxPositions: t.maxPositionEmbeddings,
    hiddenAct: t.hiddenAct,
    layerNormEps: t.layerNormEps,
  };
}

/** The scheduler config: a diffusers folder's scheduler/, else SD's, with the detected parameterization. */
function schedulerFor(path: string, info: CheckpointInfo): SchedulerConfigInput {
  const folder = statSync(path).isDirectory() ? path : dirname(path);
  const own = join(folder, "scheduler", "scheduler_config.json");
  const base = info.format === "diffusers" && existsSync(own) ? loadSchedulerConfig(own) : SD15_SCHEDULER_CONFIG;
  return { ...base, prediction_type: info.predictionType };
}

export function loadStableDiffusion(path: string, o: LoadStableDiffusionOptions = {}): LoadedStableDiffusion {
  const device = checkDevice(o.device ?? "cpu");
  const dtype = o.dtype ?? "float32";
  const { components, info } = loadCheckpoint(path, {
    dtype,
    device,
    predictionType: o.predictionType,
    ema: o.ema,
    variant: o.variant,
    overrides: o.overrides,
  });
  const init = { mode: "empty" as const, dtype, device };
  const built: Partial<StableDiffusion> = {};
  try {
    const missing = (["unet", "vae", "textEncoder"] as const).filter((c) => !components[c]);
    if (missing.length) throw new Error(`${path}: the checkpoint has no ${missing.join(", ")} weights`);
    built.unet = new UNet2DConditionModel(unetConfigOf(info.configs), init).eval().requiresGrad_(false);
    built.unet.loadStateDict(components.unet!);
    built.vae = new AutoencoderKL(info.configs.vae, init).eval().requiresGrad_(false);
    built.vae.loadStateDict(components.vae!);
    built.textEncoder = new ClipTextModel(textConfigOf(info.configs), init).eval().requiresGrad_(false);
    built.textEncoder.loadStateDict(components.textEncoder!);
    const found = findTokenizer({
      kind: info.version,
      tokenizerDir: o.tokenizerDir,
      modelDir: statSync(path).isDirectory() ? path : undefined,
    });
    const tokenizer = ClipTokenizer.fromDir(found.dir);
    return {
      unet: built.unet,
      vae: built.vae,
      textEncoder: built.textEncoder,
      tokenizer,
      tokenizerDir: found.dir,
      scheduler: schedulerFor(path, info),
      kind: info.version,
      device,
      name: path
        .split("/")
        .filter(Boolean)
        .pop()!
        .replace(/\.(safetensors|ckpt|pt)$/, ""),
      info,
    };
  } catch (e) {
    for (const m of [built.unet, built.vae, built.textEncoder]) m?.dispose();
    throw e;
  } finally {
    for (const sd of Object.values(components)) for (const t of sd?.values() ?? []) t.dispose();
  }
}

export function disposeStableDiffusion(m: StableDiffusion): void {
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
}
