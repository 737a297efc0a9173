// Model configs that key maps and checkpoint loading need, with the presets of
// the released SD checkpoints and conversion to and from the diffusers /
// transformers config.json files. Field meanings follow diffusers v0.19.3
// `UNet2DConditionModel` / `AutoencoderKL` and transformers `CLIPTextConfig`.

export type DownBlockType = "CrossAttnDownBlock2D" | "DownBlock2D";
export type UpBlockType = "CrossAttnUpBlock2D" | "UpBlock2D";

export interface UNetConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  layersPerBlock: number;
  blockOutChannels: number[];
  downBlockTypes: DownBlockType[];
  upBlockTypes: UpBlockType[];
  crossAttentionDim: number;
  /** diffusers' `attention_head_dim`, which SD1/SD2 configs use as the number of heads (per level, or one for all). */
  attentionHeadDim: number | number[];
  useLinearProjection: boolean;
  transformerLayersPerBlock: number;
  normNumGroups: number;
  upcastAttention: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  /** diffusers' only_cross_attention (per down block); set only where not false (the ×4 upscaler). */
  onlyCrossAttention?: boolean | boolean[];
  /** diffusers' num_class_embeds: class_embedding ⇄ LDM label_emb (the ×4 upscaler's noise level). */
  numClassEmbeds?: number;
}

export interface VaeConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  latentChannels: number;
  normNumGroups: number;
  scalingFactor: number;
}

export interface TextEncoderConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  hiddenAct: "quick_gelu" | "gelu";
  layerNormEps: number;
  projectionDim: number;
}

/** How the text encoder is stored in a single-file checkpoint: SD1's HF CLIP, or SD2's OpenCLIP tower. */
export type TextLayout = "clip" | "openclip";

export interface SDConfigs {
  unet: UNetConfig;
  vae: VaeConfig;
  textEncoder: TextEncoderConfig;
  textLayout: TextLayout;
}

export const SD15_UNET: UNetConfig = {
  sampleSize: 64,
  inChannels: 4,
  outChannels: 4,
  layersPerBlock: 2,
  blockOutChannels: [320, 640, 1280, 1280],
  downBlockTypes: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  crossAttentionDim: 768,
  attentionHeadDim: 8,
  useLinearProjection: false,
  transformerLayersPerBlock: 1,
  normNumGroups: 32,
  upcastAttention: false,
  flipSinToCos: true,
  freqShift: 0,
};

/** SD 2.x: 64-channel heads (5, 10, 20, 20 heads), OpenCLIP-H context, linear proj_in/proj_out. */
export const SD2_UNET: UNetConfig = {
  ...SD15_UNET,
  crossAttentionDim: 1024,
  attentionHeadDim: [5, 10, 20, 20],
  useLinearProjection: true,
};

export const SD_VAE: VaeConfig = {
  sampleSize: 512,
  inChannels: 3,
  outChannels: 3,
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  latentChannels: 4,
  normNumGroups: 32,
  scalingFactor: 0.18215,
};

/** openai/clip-vit-large-patch14 text tower (SD1.x). */
export const SD15_TEXT: TextEncoderConfig = {
  vocabSize: 49408,
  hiddenSize: 768,
  intermediateSize: 3072,
  numHiddenLayers: 12,
  numAttentionHeads: 12,
  maxPositionEmbeddings: 77,
  hiddenAct: "quick_gelu",
  layerNormEps: 1e-5,
  projectionDim: 768,
};

/** OpenCLIP ViT-H/14 text tower as SD2 uses it: the penultimate layer, so 23 of its 24 layers. */
export const SD2_TEXT: TextEncoderConfig = {
  vocabSize: 49408,
  hiddenSize: 1024,
  intermediateSize: 4096,
  numHiddenLayers: 23,
  numAttentionHeads: 16,
  maxPositionEmbeddings: 77,
  hiddenAct: "gelu",
  layerNormEps: 1e-5,
  projectionDim: 512,
};

// ---- diffusers / transformers config.json -------------------------------------------

/** The version written into config files; the layout is that of diffusers 0.19. */
export const DIFFUSERS_VERSION = "0.19.3";

type Json = Record<string, unknown>;

function num(j: Json, k: string, d: number): number {
  const v = j[k];
  return typeof v === "number" && Number.isFinite(v) ? v : d;
}

function nums(j: Json, k: string, d: number[]): number[] {
  const v = j[k];
  return Array.isArray(v) && v.every((x) => typeof x === "number") ? [...(v as number[])] : [...d];
}

function bool(j: Json, k: string, d: boolean): boolean {
  const v = j[k];
  return typeof v === "boolean" ? v : d;
}

function strs<T extends string>(j: Json, k: string, allowed: readonly T[], d: T[], what: string): T[] {
  const v = j[k];
  if (v === undefined || v === null) return [...d];
  if (!Array.isArray(v) || !v.every((x) => allowed.includes(x as T))) {
    throw new Error(`${what}: ${k} ${JSON.stringify(v)} is not supported (known: ${allowed.join(", ")})`);
  }
  return [...(v as T[])];
}

export function unetConfigToDiffusers(c: UNetConfig): Json {
  return {
    _class_name: "UNet2DConditionModel",
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: "silu",
    attention_head_dim: c.attentionHeadDim,
    block_out_channels: c.blockOutChannels,
    center_input_sample: false,
    cross_attention_dim: c.crossAttentionDim,
    down_block_types: c.downBlockTypes,
    downsample_padding: 1,
    flip_sin_to_cos: c.flipSinToCos,
    freq_shift: c.freqShift,
    in_channels: c.inChannels,
    layers_per_block: c.layersPerBlock,
    mid_block_scale_factor: 1,
    norm_eps: 1e-5,
    norm_num_groups: c.normNumGroups,
    out_channels: c.outChannels,
    sample_size: c.sampleSize,
    transformer_layers_per_block: c.transformerLayersPerBlock,
    up_block_types: c.upBlockTypes,
    upcast_attention: c.upcastAttention,
    use_linear_projection: c.useLinearProjection,
    ...(c.onlyCrossAttention !== undefined ? { only_cross_attention: c.onlyCrossAttention } : {}),
    ...(c.numClassEmbeds !== undefined ? { num_class_embeds: c.numClassEmbeds } : {}),
  };
}

/** Reads a diffusers unet/config.json; absent fields take diffusers' defaults. */
export function unetConfigFromDiffusers(j: Json, what = "unet config"): UNetConfig {
  const downs = strs(j, "down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D"], SD15_UNET.downBlockTypes, what);
  const ups = strs(j, "up_block_types", ["CrossAttnUpBlock2D", "UpBlock2D"], SD15_UNET.upBlockTypes, what);
  const boc = nums(j, "block_out_channels", SD15_UNET.blockOutChannels);
  if (downs.length !== boc.length || ups.length !== boc.length) {
    throw new Error(`${what}: ${boc.length} block_out_channels but ${downs.length} down and ${ups.length} up blocks`);
  }
  const tl = j.transformer_layers_per_block;
  if (Array.isArray(tl) && new Set(tl).size > 1) throw new Error(`${what}: per-level transformer_layers_per_block`);
  const heads = j.attention_head_dim;
  const extra: Partial<UNetConfig> = {};
  const onlyCross = j.only_cross_attention ?? false;
  if (Array.isArray(onlyCross) && onlyCross.every((v) => typeof v === "boolean")) {
    if (onlyCross.length !== boc.length)
      throw new Error(`${what}: only_cross_attention has ${onlyCross.length} entries for ${boc.length} blocks`);
    if (onlyCross.some(Boolean)) extra.onlyCrossAttention = [...onlyCross];
  } else if (onlyCross === true) extra.onlyCrossAttention = true;
  else if (onlyCross !== false) throw new Error(`${what}: only_cross_attention ${JSON.stringify(onlyCross)}`);
  const classes = j.num_class_embeds ?? null;
  if (classes !== null) {
    if (!Number.isInteger(classes) || (classes as number) < 1)
      throw new Error(`${what}: num_class_embeds ${JSON.stringify(classes)} is not a positive integer`);
    if ((j.class_embed_type ?? null) !== null)
      throw new Error(`${what}: class_embed_type ${JSON.stringify(j.class_embed_type)} is not supported`);
    extra.numClassEmbeds = classes as number;
  }
  return {
    ...extra,
    sampleSize: num(j, "sample_size", 64),
    inChannels: num(j, "in_channels", 4),
    outChannels: num(j, "out_channels", 4),
    layersPerBlock: num(j, "layers_per_block", 2),
    blockOutChannels: boc,
    downBlockTypes: downs,
    upBlockTypes: ups,
    crossAttentionDim: num(j, "cross_attention_dim", 1280),
    attentionHeadDim: Array.isArray(heads) ? nums(j, "attention_head_dim", []) : num(j, "attention_head_dim", 8),
    useLinearProjection: bool(j, "use_linear_projection", false),
    transformerLayersPerBlock: Array.isArray(tl) ? Number(tl[0] ?? 1) : num(j, "transformer_layers_per_block", 1),
    normNumGroups: num(j, "norm_num_groups", 32),
    upcastAttention: bool(j, "upcast_attention", false),
    flipSinToCos: bool(j, "flip_sin_to_cos", true),
    freqShift: num(j, "freq_shift", 0),
  };
}

export function vaeConfigToDiffusers(c: VaeConfig): Json {
  const n = c.blockOutChannels.length;
  return {
    _class_name: "AutoencoderKL",
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: "silu",
    block_out_channels: c.blockOutChannels,
    down_block_types: Array(n).fill("DownEncoderBlock2D"),
    in_channels: c.inChannels,
    latent_channels: c.latentChannels,
    layers_per_block: c.layersPerBlock,
    norm_num_groups: c.normNumGroups,
    out_channels: c.outChannels,
    sample_size: c.sampleSize,
    scaling_factor: c.scalingFactor,
    up_block_types: Array(n).fill("UpDecoderBlock2D"),
  };
}

export function vaeConfigFromDiffusers(j: Json, what = "vae config"): VaeConfig {
  const boc = nums(j, "block_out_channels", [64]);
  for (const k of ["down_block_types", "up_block_types"]) {
    const v = j[k];
    if (Array.isArray(v) && v.length !== boc.length)
      throw new Error(`${what}: ${k} has ${v.length} entries, expected ${boc.length}`);
  }
  return {
    sampleSize: num(j, "sample_size", 32),
    inChannels: num(j, "in_channels", 3),
    outChannels: num(j, "out_channels", 3),
    blockOutChannels: boc,
    layersPerBlock: num(j, "layers_per_block", 1),
    latentChannels: num(j, "latent_channels", 4),
    normNumGroups: num(j, "norm_num_groups", 32),
    scalingFactor: num(j, "scaling_factor", 0.18215),
  };
}

export function textConfigToTransformers(c: TextEncoderConfig): Json {
  return {
    architectures: ["CLIPTextModel"],
    attention_dropout: 0,
    bos_token_id: 0,
    dropout: 0,
    eos_token_id: 2,
    hidden_act: c.hiddenAct,
    hidden_size: c.hiddenSize,
    initializer_factor: 1,
    initializer_range: 0.02,
    intermediate_size: c.intermediateSize,
    layer_norm_eps: c.layerNormEps,
    max_position_embeddings: c.maxPositionEmbeddings,
    model_type: "clip_text_model",
    num_attention_heads: c.numAttentionHeads,
    num_hidden_layers: c.numHiddenLayers,
    pad_token_id: 1,
    projection_dim: c.projectionDim,
    torch_dtype: "float32",
    transformers_version: "4.31.0",
    vocab_size: c.vocabSize,
  };
}

/** Reads a transformers text_encoder/config.json; absent fields take CLIPTextConfig's defaults. */
export function textConfigFromTransformers(j: Json, what = "text encoder config"): TextEncoderConfig {
  const act = j.hidden_act ?? "quick_gelu";
  if (act !== "quick_gelu" && act !== "gelu")
    throw new Error(`${what}: hidden_act ${JSON.stringify(act)} is not supported`);
  return {
    vocabSize: num(j, "vocab_size", 49408),
    hiddenSize: num(j, "hidden_size", 512),
    intermediateSize: num(j, "intermediate_size", 2048),
    numHiddenLayers: num(j, "num_hidden_layers", 12),
    numAttentionHeads: num(j, "num_attention_heads", 8),
    maxPositionEmbeddings: num(j, "max_position_embeddings", 77),
    hiddenAct: act,
    layerNormEps: num(j, "layer_norm_eps", 1e-5),
    projectionDim: num(j, "projection_dim", 512),
  };
}
