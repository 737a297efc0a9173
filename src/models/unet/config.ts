// UNet2DConditionModel configuration: the subset of diffusers' config that
// SD1.x/SD2.x use, with typed presets. Field meanings follow diffusers v0.19.3
// (huggingface/diffusers src/diffusers/models/unet_2d_condition.py).
import type { DownBlockType, UpBlockType } from "./blocks.js";

export interface UNetConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  downBlockTypes: DownBlockType[];
  upBlockTypes: UpBlockType[];
  crossAttentionDim: number;
  /**
   * diffusers' attention_head_dim, which diffusers uses as the NUMBER OF HEADS
   * per block when numAttentionHeads is not given (SD1: 8 heads everywhere;
   * SD2.x: [5, 10, 20, 20], i.e. 64 channels per head).
   */
  attentionHeadDim: number | number[];
  /** diffusers' num_attention_heads; overrides attentionHeadDim as the head count. */
  numAttentionHeads?: number | number[];
  /** proj_in/proj_out as Linear (SD2.x) instead of 1×1 convs (SD1.x). */
  useLinearProjection: boolean;
  /** Attention scores in float32 under float16 (the SD2.1-768 checkpoint). */
  upcastAttention: boolean;
  normNumGroups: number;
  normEps: number;
  flipSinToCos: boolean;
  freqShift: number;
  transformerLayersPerBlock?: number | number[];
  dropout?: number;
  /**
   * diffusers' only_cross_attention, one entry per down block (the up blocks
   * take the reversed list; the mid block keeps its self-attention): attn1
   * attends to the text as well. The ×4 upscaler: [true, true, true, false].
   */
  onlyCrossAttention?: boolean | boolean[];
  /**
   * diffusers' num_class_embeds (class_embed_type null): class_embedding
   * [n, 4·ch0], whose row class_labels[b] is added to the time embedding
   * (the ×4 upscaler's noise level; 1000 rows).
   */
  numClassEmbeds?: number;
}

const SD_BLOCKS = {
  sampleSize: 64,
  inChannels: 4,
  outChannels: 4,
  blockOutChannels: [320, 640, 1280, 1280],
  layersPerBlock: 2,
  downBlockTypes: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  normNumGroups: 32,
  normEps: 1e-5,
  flipSinToCos: true,
  freqShift: 0,
} satisfies Partial<UNetConfig>;

/** Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5 unet/config.json). */
export const sd15: UNetConfig = {
  ...SD_BLOCKS,
  blockOutChannels: [...SD_BLOCKS.blockOutChannels],
  crossAttentionDim: 768,
  attentionHeadDim: 8,
  useLinearProjection: false,
  upcastAttention: false,
};

/** Stable Diffusion 2.1 768-v (stabilityai/stable-diffusion-2-1 unet/config.json); v-prediction is the scheduler's. */
export const sd21: UNetConfig = {
  ...SD_BLOCKS,
  blockOutChannels: [...SD_BLOCKS.blockOutChannels],
  sampleSize: 96,
  crossAttentionDim: 1024,
  attentionHeadDim: [5, 10, 20, 20],
  useLinearProjection: true,
  upcastAttention: true,
};

/** Stable Diffusion 2.x base, 512 px (stabilityai/stable-diffusion-2-1-base). */
export const sd21Base: UNetConfig = { ...sd21, sampleSize: 64, upcastAttention: false };

/** The tiny UNet of the shared fixtures (models/unet_tiny.safetensors, which test/models/unet.test.ts loads). */
export const tiny: UNetConfig = {
  sampleSize: 8,
  inChannels: 4,
  outChannels: 4,
  blockOutChannels: [32, 64],
  layersPerBlock: 1,
  downBlockTypes: ["CrossAttnDownBlock2D", "DownBlock2D"],
  upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D"],
  crossAttentionDim: 32,
  attentionHeadDim: 8,
  useLinearProjection: false,
  upcastAttention: false,
  normNumGroups: 32,
  normEps: 1e-5,
  flipSinToCos: true,
  freqShift: 0,
};

export const unetPresets = { sd15, sd21, sd21Base, tiny } as const;
export type UNetPreset = keyof typeof unetPresets;

const DOWN: readonly string[] = ["CrossAttnDownBlock2D", "DownBlock2D"];
const UP: readonly string[] = ["CrossAttnUpBlock2D", "UpBlock2D"];

/** A UNetConfig from a diffusers unet/config.json object; refuses what this model does not build. */
export function unetConfigFromDiffusers(json: Record<string, unknown>): UNetConfig {
  const get = <T>(key: string, fallback: T): T => (json[key] ?? fallback) as T;
  const unsupported: [string, unknown][] = [
    ["center_input_sample", false],
    ["mid_block_type", "UNetMidBlock2DCrossAttn"],
    ["dual_cross_attention", false],
    ["class_embed_type", null],
    ["addition_embed_type", null],
    ["time_embedding_type", "positional"],
    ["resnet_time_scale_shift", "default"],
    ["act_fn", "silu"],
    ["conv_in_kernel", 3],
    ["conv_out_kernel", 3],
    ["encoder_hid_dim", null],
  ];
  for (const [key, want] of unsupported) {
    const got = json[key] ?? want;
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new Error(`UNet config: ${key}=${JSON.stringify(got)} is not supported (only ${JSON.stringify(want)})`);
    }
  }
  const down = get<string[]>("down_block_types", sd15.downBlockTypes);
  const up = get<string[]>("up_block_types", sd15.upBlockTypes);
  for (const t of down) if (!DOWN.includes(t)) throw new Error(`UNet config: down block type ${t} is not supported`);
  for (const t of up) if (!UP.includes(t)) throw new Error(`UNet config: up block type ${t} is not supported`);
  const onlyCross = json.only_cross_attention ?? false;
  if (typeof onlyCross !== "boolean" && !(Array.isArray(onlyCross) && onlyCross.every((v) => typeof v === "boolean")))
    throw new Error(
      `UNet config: only_cross_attention=${JSON.stringify(onlyCross)} is not a boolean or a list of them`,
    );
  const classes = json.num_class_embeds ?? null;
  if (classes !== null && !(Number.isInteger(classes) && (classes as number) > 0))
    throw new Error(`UNet config: num_class_embeds=${JSON.stringify(classes)} is not a positive integer`);
  const extra: Partial<UNetConfig> = {};
  if (onlyCross !== false) extra.onlyCrossAttention = onlyCross as boolean | boolean[];
  if (classes !== null) extra.numClassEmbeds = classes as number;
  return {
    ...extra,
    sampleSize: get("sample_size", 64),
    inChannels: get("in_channels", 4),
    outChannels: get("out_channels", 4),
    blockOutChannels: get("block_out_channels", [320, 640, 1280, 1280]),
    layersPerBlock: get("layers_per_block", 2),
    downBlockTypes: down as DownBlockType[],
    upBlockTypes: up as UpBlockType[],
    crossAttentionDim: get("cross_attention_dim", 1280),
    attentionHeadDim: get("attention_head_dim", 8),
    numAttentionHeads: get<number | number[] | undefined>("num_attention_heads", undefined),
    useLinearProjection: get("use_linear_projection", false),
    upcastAttention: get("upcast_attention", false),
    normNumGroups: get("norm_num_groups", 32),
    normEps: get("norm_eps", 1e-5),
    flipSinToCos: get("flip_sin_to_cos", true),
    freqShift: get("freq_shift", 0),
    transformerLayersPerBlock: get<number | number[]>("transformer_layers_per_block", 1),
    dropout: get("dropout", 0),
  };
}
