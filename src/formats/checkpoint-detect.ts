// What a checkpoint is, from its keys and shapes: the UNet / VAE / text
// encoder configs (the number of levels, layers per block, channels, context
// width…), SD1 vs SD2, and epsilon vs v-prediction. Shapes cannot give
// attention head counts or GroupNorm groups: those take the SD defaults and
// can be overridden.
import type { DType } from "../engine/index.js";
import {
  type DownBlockType,
  SD_VAE,
  SD2_TEXT,
  SD15_TEXT,
  SD15_UNET,
  type TextEncoderConfig,
  type TextLayout,
  type UNetConfig,
  type UpBlockType,
  type VaeConfig,
} from "./keymaps/configs.js";
import { CLIP_PREFIX, OPENCLIP_PREFIX } from "./keymaps/text-encoder.js";
import { UNET_PREFIX } from "./keymaps/unet.js";
import { VAE_PREFIX } from "./keymaps/vae.js";

export type SDVersion = "sd1" | "sd2";
export type PredictionType = "epsilon" | "v_prediction";

/** Read-only access to a file's tensor names and shapes. */
export interface KeyShapes {
  keys(): string[];
  has(key: string): boolean;
  info(key: string): { dtype: DType; shape: number[] };
}

export class CheckpointError extends Error {
  override name = "CheckpointError";
}

function indices(keys: readonly string[], re: RegExp): number[] {
  const s = new Set<number>();
  for (const k of keys) {
    const m = re.exec(k);
    if (m) s.add(Number(m[1]));
  }
  return [...s].sort((a, b) => a - b);
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function shapeOf(src: KeyShapes, key: string, path: string): number[] {
  if (!src.has(key))
    throw new CheckpointError(`${path}: tensor ${key} is missing (an incomplete or non-standard checkpoint)`);
  return src.info(key).shape;
}

/** Attention heads: shapes do not tell them. SD2 uses 64-channel heads; others keep diffusers' 8. */
function defaultHeads(boc: readonly number[], crossDim: number, linear: boolean): number | number[] {
  if ((crossDim === 1024 || linear) && boc.every((c) => c % 64 === 0)) return boc.map((c) => c / 64);
  return 8;
}

/** UNet config from LDM keys (`model.diffusion_model.*`). */
export function inferUNetFromLdm(src: KeyShapes, path: string): UNetConfig {
  const P = UNET_PREFIX;
  const keys = src.keys().filter((k) => k.startsWith(P));
  const inputs = indices(keys, new RegExp(`^${esc(P)}input_blocks\\.(\\d+)\\.`));
  const ops = indices(keys, new RegExp(`^${esc(P)}input_blocks\\.(\\d+)\\.0\\.op\\.weight$`));
  const count = inputs.length;
  const levels = ops.length + 1;
  const L = ops.length > 0 ? ops[0] - 1 : count - 1;
  if (L < 1 || count !== levels * (L + 1) || ops.some((o, i) => o !== (L + 1) * (i + 1))) {
    throw new CheckpointError(
      `${path}: UNet input blocks [${inputs}] with downsamplers at [${ops}] do not form an SD UNet`,
    );
  }
  const boc: number[] = [];
  const down: DownBlockType[] = [];
  const up: UpBlockType[] = [];
  for (let i = 0; i < levels; i++) {
    boc.push(shapeOf(src, `${P}input_blocks.${(L + 1) * i + 1}.0.in_layers.2.weight`, path)[0]);
    down.push(src.has(`${P}input_blocks.${(L + 1) * i + 1}.1.proj_in.weight`) ? "CrossAttnDownBlock2D" : "DownBlock2D");
    up.push(src.has(`${P}output_blocks.${(L + 1) * i}.1.proj_in.weight`) ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }
  // The ×4 upscaler: label_emb (its noise level), and attn1 reading the text where self-attention is disabled.
  const extra: Partial<UNetConfig> = {};
  if (src.has(`${P}label_emb.weight`)) {
    extra.numClassEmbeds = src.info(`${P}label_emb.weight`).shape[0];
    // Stability-AI configs/stable-diffusion/x4-upscaling.yaml: num_heads 8 at every level (not 64-channel heads).
    extra.attentionHeadDim = 8;
  }
  const onlyCross = down.map((t, i) => {
    const k = `${P}input_blocks.${(L + 1) * i + 1}.1.transformer_blocks.0.attn1.to_k.weight`;
    return t === "CrossAttnDownBlock2D" && src.has(k) && src.info(k).shape[1] !== boc[i];
  });
  if (onlyCross.some(Boolean)) {
    // A level without attention has no say; take its neighbour's (x4-upscaling.yaml: [True, True, True, False]).
    const attn = down.map((t) => t === "CrossAttnDownBlock2D");
    extra.onlyCrossAttention = onlyCross.map((v, i) => {
      if (attn[i]) return v;
      const j = [...attn.keys()].find((k) => k > i && attn[k]) ?? [...attn.keys()].reverse().find((k) => attn[k]);
      return j === undefined ? false : onlyCross[j];
    });
  }
  const found = finishUNet(src, keys, path, {
    conv_in: `${P}input_blocks.0.0.weight`,
    conv_out: `${P}out.2.weight`,
    boc,
    down,
    up,
    L,
  });
  return { ...found, ...extra };
}

/** UNet config from diffusers keys (`down_blocks.*`), for state dicts that come without a config.json. */
export function inferUNetFromDiffusers(src: KeyShapes, path: string): UNetConfig {
  const keys = src.keys();
  const levels = indices(keys, /^down_blocks\.(\d+)\./).length;
  const L = indices(keys, /^down_blocks\.0\.resnets\.(\d+)\./).length;
  if (levels < 1 || L < 1) throw new CheckpointError(`${path}: no diffusers UNet blocks (down_blocks.N.resnets.M)`);
  const boc: number[] = [];
  const down: DownBlockType[] = [];
  const up: UpBlockType[] = [];
  for (let i = 0; i < levels; i++) {
    boc.push(shapeOf(src, `down_blocks.${i}.resnets.0.conv1.weight`, path)[0]);
    down.push(src.has(`down_blocks.${i}.attentions.0.proj_in.weight`) ? "CrossAttnDownBlock2D" : "DownBlock2D");
    up.push(src.has(`up_blocks.${i}.attentions.0.proj_in.weight`) ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }
  return finishUNet(src, keys, path, { conv_in: "conv_in.weight", conv_out: "conv_out.weight", boc, down, up, L });
}

function finishUNet(
  src: KeyShapes,
  keys: string[],
  path: string,
  p: { conv_in: string; conv_out: string; boc: number[]; down: DownBlockType[]; up: UpBlockType[]; L: number },
): UNetConfig {
  const convIn = shapeOf(src, p.conv_in, path);
  const toK = keys.find((k) => k.endsWith(".attn2.to_k.weight"));
  const projIn = keys.find((k) => k.endsWith(".proj_in.weight"));
  const crossAttentionDim = toK ? src.info(toK).shape[1] : SD15_UNET.crossAttentionDim;
  const useLinearProjection = projIn ? src.info(projIn).shape.length === 2 : false;
  const firstAttn = projIn ? projIn.slice(0, -"proj_in.weight".length) : "";
  const depth = firstAttn ? indices(keys, new RegExp(`^${esc(firstAttn)}transformer_blocks\\.(\\d+)\\.`)).length : 1;
  return {
    ...SD15_UNET,
    inChannels: convIn[1],
    outChannels: shapeOf(src, p.conv_out, path)[0],
    layersPerBlock: p.L,
    blockOutChannels: p.boc,
    downBlockTypes: p.down,
    upBlockTypes: p.up,
    crossAttentionDim,
    attentionHeadDim: defaultHeads(p.boc, crossAttentionDim, useLinearProjection),
    useLinearProjection,
    transformerLayersPerBlock: Math.max(depth, 1),
  };
}

/** VAE config from keys; `prefix` is `first_stage_model.` for LDM files and "" for diffusers. */
export function inferVae(src: KeyShapes, path: string, layout: "ldm" | "diffusers"): VaeConfig {
  const keys = src.keys();
  const P = layout === "ldm" ? VAE_PREFIX : "";
  const down = layout === "ldm" ? "encoder.down" : "encoder.down_blocks";
  const block = layout === "ldm" ? "block" : "resnets";
  const levels = indices(keys, new RegExp(`^${esc(P)}${esc(down)}\\.(\\d+)\\.`)).length;
  const L = indices(keys, new RegExp(`^${esc(P)}${esc(down)}\\.0\\.${block}\\.(\\d+)\\.`)).length;
  if (levels < 1 || L < 1) throw new CheckpointError(`${path}: no VAE encoder blocks under ${P}${down}`);
  const boc: number[] = [];
  for (let i = 0; i < levels; i++) boc.push(shapeOf(src, `${P}${down}.${i}.${block}.0.conv1.weight`, path)[0]);
  return {
    ...SD_VAE,
    inChannels: shapeOf(src, `${P}encoder.conv_in.weight`, path)[1],
    outChannels: shapeOf(src, `${P}decoder.conv_out.weight`, path)[0],
    blockOutChannels: boc,
    layersPerBlock: L,
    latentChannels: shapeOf(src, `${P}post_quant_conv.weight`, path)[0],
  };
}

/** Heads: shapes do not tell them; 64-channel heads (CLIP ViT-L/H), else 8-channel, else one. */
function textHeads(hidden: number): number {
  for (const d of [64, 8]) if (hidden % d === 0) return hidden / d;
  return 1;
}

/**
 * Text encoder config from keys. `prefix` is where the transformers-layout
 * keys start ("cond_stage_model.transformer." or "" for a diffusers file);
 * OpenCLIP keys are read under `cond_stage_model.model.`.
 */
export function inferTextEncoder(
  src: KeyShapes,
  path: string,
  layout: TextLayout,
  prefix = CLIP_PREFIX,
): TextEncoderConfig {
  const keys = src.keys();
  if (layout === "openclip") {
    const P = OPENCLIP_PREFIX;
    const tok = shapeOf(src, `${P}token_embedding.weight`, path);
    const blocks = indices(keys, new RegExp(`^${esc(P)}transformer\\.resblocks\\.(\\d+)\\.`)).length;
    if (blocks < 1) throw new CheckpointError(`${path}: OpenCLIP text tower without resblocks`);
    return {
      ...SD2_TEXT,
      vocabSize: tok[0],
      hiddenSize: tok[1],
      intermediateSize: shapeOf(src, `${P}transformer.resblocks.0.mlp.c_fc.weight`, path)[0],
      // SD2 reads the penultimate layer of OpenCLIP ViT-H's 24: diffusers' SD2 text encoder holds 23
      // (convert_open_clip_checkpoint drops resblocks.23). Files converted from diffusers hold just those 23.
      numHiddenLayers: tok[1] === 1024 && blocks === 24 ? 23 : blocks,
      numAttentionHeads: textHeads(tok[1]),
      maxPositionEmbeddings: shapeOf(src, `${P}positional_embedding`, path)[0],
      projectionDim: tok[1] === 1024 ? SD2_TEXT.projectionDim : tok[1],
    };
  }
  // Old transformers spellings lack "text_model." (see keymaps/text-encoder.ts).
  const old =
    !src.has(`${prefix}text_model.embeddings.token_embedding.weight`) &&
    src.has(`${prefix}embeddings.token_embedding.weight`);
  const P = old ? prefix : `${prefix}text_model.`;
  const tok = shapeOf(src, `${P}embeddings.token_embedding.weight`, path);
  const layers = indices(keys, new RegExp(`^${esc(P)}encoder\\.layers\\.(\\d+)\\.`)).length;
  if (layers < 1) throw new CheckpointError(`${path}: CLIP text encoder without layers under ${P}encoder.layers`);
  return {
    ...SD15_TEXT,
    vocabSize: tok[0],
    hiddenSize: tok[1],
    intermediateSize: shapeOf(src, `${P}encoder.layers.0.mlp.fc1.weight`, path)[0],
    numHiddenLayers: layers,
    numAttentionHeads: textHeads(tok[1]),
    maxPositionEmbeddings: shapeOf(src, `${P}embeddings.position_embedding.weight`, path)[0],
    projectionDim: tok[1],
  };
}

/** SD1 or SD2, and why. */
export function detectVersion(p: { textLayout?: TextLayout; textHidden?: number; unet?: UNetConfig }): {
  version: SDVersion;
  reason: string;
} {
  if (p.textLayout === "openclip")
    return { version: "sd2", reason: "the text encoder is OpenCLIP (cond_stage_model.model.*)" };
  if (p.textHidden === 1024) return { version: "sd2", reason: "the text encoder is 1024 wide (OpenCLIP-H)" };
  if (p.unet?.crossAttentionDim === 1024) return { version: "sd2", reason: "the UNet's cross-attention width is 1024" };
  if (p.unet?.useLinearProjection) return { version: "sd2", reason: "the UNet's proj_in/proj_out are linear" };
  if (p.textLayout === "clip")
    return {
      version: "sd1",
      reason: "the text encoder is CLIP in the transformers layout (cond_stage_model.transformer.*)",
    };
  return {
    version: "sd1",
    reason: `the UNet's cross-attention width is ${p.unet?.crossAttentionDim ?? "unknown"}, not 1024`,
  };
}

/** A prediction type from a hint string ("v", "eps", "epsilon", "v_prediction", "true"…), if it is one. */
export function parsePredictionHint(key: string, value: unknown): PredictionType | undefined {
  const v = String(value).trim().toLowerCase();
  if (key === "v_prediction" || key === "ss_v_parameterization") {
    if (v === "true" || v === "1") return "v_prediction";
    if (v === "false" || v === "0") return key === "v_prediction" ? "epsilon" : undefined;
    return undefined;
  }
  if (key === "modelspec.architecture") return v.endsWith("-v") ? "v_prediction" : undefined;
  if (v === "v" || v === "v_prediction" || v === "v-prediction" || v === "velocity") return "v_prediction";
  if (v === "eps" || v === "epsilon") return "epsilon";
  return undefined;
}

/** Metadata keys that may say the parameterization (sd-scripts library/sai_model_spec.py, LDM configs, kohya). */
export const PREDICTION_HINT_KEYS = [
  "parameterization",
  "prediction_type",
  "v_prediction",
  "modelspec.prediction_type",
  "ss_v_parameterization",
  "modelspec.architecture",
];

/** `parameterization: "v"` (or "eps") in an LDM .yaml config. */
export function predictionFromYaml(text: string): PredictionType | undefined {
  const m = /^\s*parameterization\s*:\s*["']?([A-Za-z_]+)["']?\s*(#.*)?$/m.exec(text);
  return m ? parsePredictionHint("parameterization", m[1]) : undefined;
}

/**
 * ComfyUI's heuristic for SD2 (comfy/supported_models.py `SD20.model_type`):
 * the population std of the last up block's first transformer norm1 bias is
 * above 0.09 in 768-v checkpoints and below in 512-base ones.
 */
export function vPredictionByNormStd(values: ArrayLike<number>): { v: boolean; std: number } {
  let mean = 0;
  for (let i = 0; i < values.length; i++) mean += values[i];
  mean /= values.length;
  let s = 0;
  for (let i = 0; i < values.length; i++) s += (values[i] - mean) ** 2;
  const std = Math.sqrt(s / values.length);
  return { v: std > 0.09, std };
}

/** The SD2 512-base release was trained 875000 steps; diffusers' converter takes that as epsilon, anything else as v. */
export const SD2_BASE_GLOBAL_STEP = 875000;
