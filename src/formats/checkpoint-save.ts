// Writing a checkpoint: a single-file LDM .safetensors (what A1111 and
// ComfyUI load), or a diffusers folder (model_index.json + per-component
// config.json and weights, scheduler config, optionally a tokenizer copy).
// Both are atomic: a file through writeFileAtomic, a folder built beside the
// target and renamed into place (docs/design.md §3.8).
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { type DType, isFloating, scope, type Tensor } from "../engine/index.js";
import { writeAll, writeFileAtomic, writeTextAtomic } from "./atomic-write.js";
import {
  CheckpointError,
  detectVersion,
  inferTextEncoder,
  inferUNetFromDiffusers,
  inferVae,
  type KeyShapes,
  type PredictionType,
} from "./checkpoint-detect.js";
import { ALL_COMPONENTS, COMPONENT_NAMES, type ComponentStateDicts, keyMapFor, listKeys } from "./checkpoint-types.js";
import { SUBFOLDER } from "./diffusers-folder.js";
import {
  type Component,
  convertStateDict,
  DIFFUSERS_VERSION,
  SD_VAE,
  SD2_TEXT,
  SD2_UNET,
  SD15_TEXT,
  SD15_UNET,
  type SDConfigs,
  textConfigToTransformers,
  unetConfigToDiffusers,
  vaeConfigToDiffusers,
} from "./keymaps/index.js";
import { saveSafetensors } from "./safetensors.js";

export interface SaveCheckpointOptions {
  layout: "ldm" | "diffusers";
  /** Cast floating-point tensors to this dtype (e.g. "float16"). */
  dtype?: DType;
  /** The configs of the components (LoadedCheckpoint.info.configs); inferred from the tensors when absent. */
  configs?: Partial<SDConfigs>;
  /** Written as `modelspec.prediction_type` (LDM) or the scheduler's `prediction_type` (diffusers). */
  predictionType?: PredictionType;
  /** Extra safetensors metadata (LDM layout). */
  metadata?: Record<string, string>;
  /** Diffusers weight file variant, e.g. "fp16" → `diffusion_pytorch_model.fp16.safetensors`. */
  variant?: string;
  /** A tokenizer folder (vocab.json, merges.txt, …) to copy into the diffusers folder. */
  tokenizerFrom?: string;
  /** Replace an existing diffusers folder (default: refuse). */
  overwrite?: boolean;
}

function shapesOf(m: Map<string, Tensor>): KeyShapes {
  return {
    keys: () => [...m.keys()],
    has: (k) => m.has(k),
    info: (k) => ({ dtype: m.get(k)!.dtype, shape: m.get(k)!.shape }),
  };
}

/** The configs for saving: given ones, else inferred from the diffusers-keyed tensors. */
function resolveConfigs(c: ComponentStateDicts, given: Partial<SDConfigs> | undefined, path: string): SDConfigs {
  const unet = given?.unet ?? (c.unet ? inferUNetFromDiffusers(shapesOf(c.unet), path) : undefined);
  const text =
    given?.textEncoder ?? (c.textEncoder ? inferTextEncoder(shapesOf(c.textEncoder), path, "clip", "") : undefined);
  const { version } = detectVersion({ textHidden: text?.hiddenSize, unet });
  return {
    unet: unet ?? (version === "sd2" ? SD2_UNET : SD15_UNET),
    vae: given?.vae ?? (c.vae ? inferVae(shapesOf(c.vae), path, "diffusers") : SD_VAE),
    textEncoder: text ?? (version === "sd2" ? SD2_TEXT : SD15_TEXT),
    textLayout: given?.textLayout ?? (version === "sd2" ? "openclip" : "clip"),
  };
}

function present(c: ComponentStateDicts): Component[] {
  const list = ALL_COMPONENTS.filter((k) => c[k] !== undefined);
  if (list.length === 0) throw new CheckpointError("saveCheckpoint: no components to save");
  return list;
}

function cast(t: Tensor, dtype: DType | undefined): Tensor {
  return dtype && isFloating(t.dtype) && t.dtype !== dtype ? t.to(dtype) : t;
}

/**
 * Writes diffusers-keyed component state dicts as a single-file LDM
 * `.safetensors` or a diffusers folder. Nothing is left half-written on error.
 */
export function saveCheckpoint(components: ComponentStateDicts, path: string, o: SaveCheckpointOptions): void {
  const list = present(components);
  const configs = resolveConfigs(components, o.configs, path);
  if (o.layout === "ldm") saveLdm(components, list, configs, path, o);
  else if (o.layout === "diffusers") saveDiffusers(components, list, configs, path, o);
  else throw new CheckpointError(`saveCheckpoint: unknown layout ${JSON.stringify(o.layout)}`);
}

function saveLdm(
  c: ComponentStateDicts,
  list: Component[],
  configs: SDConfigs,
  path: string,
  o: SaveCheckpointOptions,
): void {
  if (!path.endsWith(".safetensors"))
    throw new CheckpointError(`${path}: single-file checkpoints are written as .safetensors only`);
  const metadata: Record<string, string> = { format: "pt", ...o.metadata };
  if (o.predictionType) metadata["modelspec.prediction_type"] = o.predictionType === "v_prediction" ? "v" : "epsilon";
  // Intermediate tensors (reshapes, fused q/k/v, casts) are freed when the scope closes.
  scope(() => {
    const out = new Map<string, Tensor>();
    for (const k of list) {
      const r = convertStateDict(keyMapFor(k, configs), c[k]!, "ldm");
      if (r.missing.length > 0)
        throw new CheckpointError(`${path}: cannot save the ${COMPONENT_NAMES[k]}: it ${listKeys("lacks", r.missing)}`);
      if (r.unexpected.length > 0)
        throw new CheckpointError(`${path}: the ${COMPONENT_NAMES[k]} ${listKeys("has unexpected", r.unexpected)}`);
      for (const [name, t] of r.tensors) out.set(name, cast(t, o.dtype));
    }
    saveSafetensors(path, out, metadata);
  });
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some platforms cannot fsync a directory.
  }
}

function writeJson(path: string, v: unknown): void {
  writeTextAtomic(path, `${JSON.stringify(v, null, 2)}\n`);
}

/** The scheduler config of the released pipelines: PNDM for SD1 (v1-5), DDIM for SD2 (2-1). */
function schedulerConfig(sd2: boolean, prediction: PredictionType): Record<string, unknown> {
  return {
    _class_name: sd2 ? "DDIMScheduler" : "PNDMScheduler",
    _diffusers_version: DIFFUSERS_VERSION,
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    prediction_type: prediction,
    set_alpha_to_one: false,
    ...(sd2 ? {} : { skip_prk_steps: true }),
    steps_offset: 1,
    timestep_spacing: "leading",
    trained_betas: null,
  };
}

function saveDiffusers(
  c: ComponentStateDicts,
  list: Component[],
  configs: SDConfigs,
  path: string,
  o: SaveCheckpointOptions,
): void {
  if (existsSync(path) && !o.overwrite)
    throw new CheckpointError(`${path}: already exists; pass overwrite: true to replace it`);
  if (existsSync(path) && !statSync(path).isDirectory())
    throw new CheckpointError(`${path}: exists and is not a folder`);
  if (o.tokenizerFrom && !existsSync(join(o.tokenizerFrom, "vocab.json"))) {
    throw new CheckpointError(`${o.tokenizerFrom}: not a tokenizer folder (no vocab.json)`);
  }
  const parent = dirname(path);
  const tag = `${process.pid}-${randomBytes(6).toString("hex")}`;
  const tmp = join(parent, `.${basename(path)}.tmp-${tag}`);
  mkdirSync(tmp);
  try {
    const file = (stem: string) => `${stem}${o.variant ? `.${o.variant}` : ""}.safetensors`;
    for (const k of list) {
      const dir = join(tmp, SUBFOLDER[k]);
      mkdirSync(dir);
      const map = keyMapFor(k, configs);
      const sd = c[k]!;
      const keys = [...sd.keys()].filter((n) => !map.isIgnoredDiffusers(n));
      const unexpected = keys.filter((n) => !map.entryForDiffusers(n));
      const missing = map.diffusersKeys().filter((n) => !sd.has(n));
      if (missing.length > 0)
        throw new CheckpointError(`${path}: cannot save the ${COMPONENT_NAMES[k]}: it ${listKeys("lacks", missing)}`);
      if (unexpected.length > 0)
        throw new CheckpointError(`${path}: the ${COMPONENT_NAMES[k]} ${listKeys("has unexpected", unexpected)}`);
      scope(() => {
        const out = new Map(keys.map((n) => [n, cast(sd.get(n)!, o.dtype)] as const));
        // transformers refuses safetensors files without format metadata.
        saveSafetensors(join(dir, file(k === "textEncoder" ? "model" : "diffusion_pytorch_model")), out, {
          format: "pt",
        });
      });
      const config =
        k === "unet"
          ? unetConfigToDiffusers(configs.unet)
          : k === "vae"
            ? vaeConfigToDiffusers(configs.vae)
            : { ...textConfigToTransformers(configs.textEncoder), torch_dtype: o.dtype ?? "float32" };
      writeJson(join(dir, "config.json"), config);
    }
    const sd2 = detectVersion({ textHidden: configs.textEncoder.hiddenSize, unet: configs.unet }).version === "sd2";
    const prediction = o.predictionType ?? (sd2 ? "v_prediction" : "epsilon");
    mkdirSync(join(tmp, "scheduler"));
    writeJson(join(tmp, "scheduler", "scheduler_config.json"), schedulerConfig(sd2, prediction));
    if (o.tokenizerFrom) {
      mkdirSync(join(tmp, "tokenizer"));
      for (const f of readdirSync(o.tokenizerFrom)) {
        const from = join(o.tokenizerFrom, f);
        if (!statSync(from).isFile()) continue;
        const bytes = readFileSync(from);
        writeFileAtomic(join(tmp, "tokenizer", f), (fd) => writeAll(fd, bytes));
      }
    }
    const index: Record<string, unknown> = {
      _class_name: "StableDiffusionPipeline",
      _diffusers_version: DIFFUSERS_VERSION,
      feature_extractor: [null, null],
      requires_safety_checker: false,
      safety_checker: [null, null],
      scheduler: ["diffusers", sd2 ? "DDIMScheduler" : "PNDMScheduler"],
    };
    if (list.includes("textEncoder")) index.text_encoder = ["transformers", "CLIPTextModel"];
    if (o.tokenizerFrom) index.tokenizer = ["transformers", "CLIPTokenizer"];
    if (list.includes("unet")) index.unet = ["diffusers", "UNet2DConditionModel"];
    if (list.includes("vae")) index.vae = ["diffusers", "AutoencoderKL"];
    writeJson(join(tmp, "model_index.json"), index);
    for (const d of [...list.map((k) => SUBFOLDER[k]), "scheduler", ...(o.tokenizerFrom ? ["tokenizer"] : [])])
      syncDir(join(tmp, d));
    syncDir(tmp);
    // Swap the finished folder in: the old one (if replaced) is moved aside first and removed last.
    const old = existsSync(path) ? join(parent, `.${basename(path)}.old-${tag}`) : undefined;
    if (old) renameSync(path, old);
    try {
      renameSync(tmp, path);
    } catch (e) {
      if (old) renameSync(old, path);
      throw e;
    }
    syncDir(parent);
    if (old) rmSync(old, { recursive: true, force: true });
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
