// Types shared by checkpoint loading and saving, the prediction-type
// decision, and small helpers.
import { existsSync, readFileSync } from "node:fs";
import type { DType, Tensor } from "../engine/index.js";
import {
  PREDICTION_HINT_KEYS,
  type PredictionType,
  parsePredictionHint,
  predictionFromYaml,
  SD2_BASE_GLOBAL_STEP,
  type SDVersion,
  vPredictionByNormStd,
} from "./checkpoint-detect.js";
import type { Scalar } from "./ckpt.js";
import {
  type Component,
  type KeyMap,
  type SDConfigs,
  type TextEncoderConfig,
  textEncoderKeyMap,
  type UNetConfig,
  unetKeyMap,
  type VaeConfig,
  vaeKeyMap,
} from "./keymaps/index.js";

export type ComponentStateDicts = Partial<Record<Component, Map<string, Tensor>>>;

export interface CheckpointInfo {
  path: string;
  format: "safetensors" | "ckpt" | "diffusers";
  version: SDVersion;
  versionReason: string;
  predictionType: PredictionType;
  predictionReason: string;
  /** A 9-channel (inpainting) UNet. */
  inpainting: boolean;
  /** The configs the weights fit; `textLayout` is the single-file layout of the text encoder. */
  configs: SDConfigs;
  /** Assumptions made where the weights cannot tell (attention heads…), and unexpected keys when not strict. */
  notes: string[];
  /** Keys present and not loaded: schedule buffers, EMA copies, position_ids… */
  ignoredKeys: string[];
  /** Non-tensor entries (global_step, epoch) and safetensors metadata. */
  metadata: Record<string, Scalar>;
  /** The UNet came from the EMA weights (`model_ema.*`). */
  ema: boolean;
}

export interface LoadCheckpointOptions {
  /** Cast floating-point tensors to this dtype on load. */
  dtype?: DType;
  device?: string;
  /** Which components to load (default all three). */
  components?: Component[];
  /** Config values the weights cannot tell (attention heads, groups, sample size), or corrections. */
  overrides?: { unet?: Partial<UNetConfig>; vae?: Partial<VaeConfig>; textEncoder?: Partial<TextEncoderConfig> };
  /** The parameterization, when known; otherwise it is detected. */
  predictionType?: PredictionType;
  /** Load the UNet from the EMA weights of a single-file checkpoint. */
  ema?: boolean;
  /** Diffusers weight variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`. */
  variant?: string;
  /** Unexpected keys inside a component are errors (default); false lists them in `notes`. */
  strict?: boolean;
}

export interface LoadedCheckpoint {
  components: ComponentStateDicts;
  info: CheckpointInfo;
}

export const ALL_COMPONENTS: readonly Component[] = ["unet", "vae", "textEncoder"];

export const COMPONENT_NAMES: Record<Component, string> = { unet: "UNet", vae: "VAE", textEncoder: "text encoder" };

export function keyMapFor(c: Component, configs: SDConfigs): KeyMap {
  if (c === "unet") return unetKeyMap(configs.unet);
  if (c === "vae") return vaeKeyMap(configs.vae);
  return textEncoderKeyMap(configs.textEncoder, configs.textLayout);
}

export interface PredictionContext {
  path: string;
  /** The caller's word, if any. */
  given?: PredictionType;
  version: SDVersion;
  inpainting: boolean;
  metadata: Record<string, Scalar>;
  hasKey: (k: string) => boolean;
  /** The last up block's first transformer norm1 bias, for ComfyUI's heuristic. */
  normBias: () => number[] | undefined;
  yaml?: string;
  /** A diffusers scheduler_config.json `prediction_type`. */
  scheduler?: { path: string; predictionType: unknown };
}

/**
 * Epsilon or v-prediction. SD2 768-v and 512-base checkpoints have the same
 * keys and shapes, so this takes, in order: the caller's word; a hint in the
 * file (metadata keys, a `v_pred` marker tensor); `parameterization` in a
 * .yaml beside it; the diffusers scheduler config; then SD1 → epsilon; for
 * SD2: inpainting → epsilon, global_step 875000 → epsilon (the 512-base
 * release; diffusers convert_from_ckpt.py), else ComfyUI's norm-bias std
 * heuristic, else v-prediction (diffusers' default for SD2).
 */
export function decidePrediction(p: PredictionContext): { predictionType: PredictionType; predictionReason: string } {
  const r = (predictionType: PredictionType, predictionReason: string) => ({ predictionType, predictionReason });
  if (p.given) return r(p.given, "given by the caller");
  for (const k of PREDICTION_HINT_KEYS) {
    if (!(k in p.metadata)) continue;
    const hint = parsePredictionHint(k, p.metadata[k]);
    if (hint) return r(hint, `the file says so (${k} = ${JSON.stringify(p.metadata[k])})`);
  }
  if (p.hasKey("v_pred")) return r("v_prediction", "the file has a v_pred marker tensor");
  if (p.yaml) {
    const hint = predictionFromYaml(readFileSync(p.yaml, "utf8"));
    if (hint) return r(hint, `parameterization in ${p.yaml}`);
  }
  if (p.scheduler) {
    const hint = parsePredictionHint("prediction_type", p.scheduler.predictionType);
    if (hint) return r(hint, `prediction_type in ${p.scheduler.path}`);
  }
  if (p.version === "sd1") return r("epsilon", "SD1 models predict noise (no hint says otherwise)");
  if (p.inpainting) return r("epsilon", "SD2 inpainting models predict noise");
  const step = Number(p.metadata.global_step);
  if (step === SD2_BASE_GLOBAL_STEP) return r("epsilon", `global_step ${step} is the SD2 512-base release's`);
  const bias = p.normBias();
  if (bias && bias.length > 0) {
    const { v, std } = vPredictionByNormStd(bias);
    return r(
      v ? "v_prediction" : "epsilon",
      `SD2 heuristic (ComfyUI): std of the last up block's norm1 bias is ${std.toFixed(4)} ${v ? ">" : "≤"} 0.09; pass predictionType if this is wrong`,
    );
  }
  return r(
    "v_prediction",
    "SD2 with no hint: v-prediction assumed (diffusers' default); pass predictionType if this is wrong",
  );
}

export function listKeys(verb: string, keys: readonly string[]): string {
  const shown = keys.slice(0, 6).join(", ");
  return `${verb} ${keys.length} key${keys.length === 1 ? "" : "s"}: ${shown}${keys.length > 6 ? ", …" : ""}`;
}

/** A `.yaml` of the same name beside a single-file checkpoint (A1111's convention for model configs). */
export function yamlBeside(path: string): string | undefined {
  const y = `${path.replace(/\.[^./\\]*$/, "")}.yaml`;
  return existsSync(y) ? y : undefined;
}
