// A diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`,
// `text_encoder/`, `tokenizer/`, `scheduler/`): per-component config.json and
// weights in `diffusion_pytorch_model.safetensors` / `model.safetensors`
// (also `.bin` pickles through the restricted reader, `*.fp16.*` variants and
// `*.index.json` shards), as diffusers `ModelMixin.from_pretrained` finds them.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Tensor } from "../engine/index.js";
import { CheckpointError, detectVersion } from "./checkpoint-detect.js";
import { combineSources, type GetOptions, openSource, renamedSource, type Source } from "./checkpoint-source.js";
import {
  ALL_COMPONENTS,
  COMPONENT_NAMES,
  type ComponentStateDicts,
  decidePrediction,
  keyMapFor,
  type LoadCheckpointOptions,
  type LoadedCheckpoint,
  listKeys,
} from "./checkpoint-types.js";
import {
  type Component,
  SD_VAE,
  SD2_TEXT,
  SD2_UNET,
  SD15_TEXT,
  SD15_UNET,
  type SDConfigs,
  textConfigFromTransformers,
  toDiffusersTensors,
  unetConfigFromDiffusers,
  vaeConfigFromDiffusers,
} from "./keymaps/index.js";

export const SUBFOLDER: Record<Component, string> = { unet: "unet", vae: "vae", textEncoder: "text_encoder" };

/** Weight file stems: [safetensors, bin] (diffusers SAFETENSORS_WEIGHTS_NAME / WEIGHTS_NAME, transformers the same). */
const STEMS: Record<Component, [string, string]> = {
  unet: ["diffusion_pytorch_model", "diffusion_pytorch_model"],
  vae: ["diffusion_pytorch_model", "diffusion_pytorch_model"],
  textEncoder: ["model", "pytorch_model"],
};

export function readJson(path: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new CheckpointError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new CheckpointError(`${path}: not a JSON object`);
  return v as Record<string, unknown>;
}

function candidates(c: Component, variant: string | undefined): string[] {
  const [st, bin] = STEMS[c];
  const v = variant ? `.${variant}` : "";
  return [`${st}${v}.safetensors`, `${st}${v}.safetensors.index.json`, `${bin}${v}.bin`, `${bin}${v}.bin.index.json`];
}

/** Opens a component's weights: the requested variant, else the plain files, else an fp16 variant. */
function openWeights(dir: string, c: Component, variant: string | undefined, notes: string[]): Source {
  const tries = variant ? [variant] : [undefined, "fp16"];
  for (const v of tries) {
    for (const name of candidates(c, v)) {
      const p = join(dir, name);
      if (!existsSync(p)) continue;
      if (v && !variant) notes.push(`${dir}: only the ${v} variant is there; loaded ${name}`);
      if (!name.endsWith(".index.json")) return openSource(p);
      const index = readJson(p);
      const map = index.weight_map;
      if (typeof map !== "object" || map === null) throw new CheckpointError(`${p}: no weight_map`);
      const shards = [...new Set(Object.values(map as Record<string, unknown>).map(String))];
      const opened: Source[] = [];
      try {
        for (const s of shards) opened.push(openSource(join(dir, s)));
      } catch (e) {
        for (const o of opened) o.close();
        throw e;
      }
      return combineSources(p, opened);
    }
  }
  throw new CheckpointError(`${dir}: no weights (looked for ${candidates(c, variant).join(", ")})`);
}

export function loadDiffusersFolder(dir: string, o: LoadCheckpointOptions): LoadedCheckpoint {
  const index = existsSync(join(dir, "model_index.json")) ? readJson(join(dir, "model_index.json")) : {};
  const cls = String(index._class_name ?? "");
  if (/XL|Flux|SD3|StableCascade|Kandinsky/.test(cls))
    throw new CheckpointError(`${dir}: a ${cls}; only SD 1.x and 2.x pipelines are supported`);
  const want = o.components ?? ALL_COMPONENTS;
  const configPath = (c: Component) => join(dir, SUBFOLDER[c], "config.json");
  for (const c of ALL_COMPONENTS) {
    if (want.includes(c) && !existsSync(configPath(c))) {
      throw new CheckpointError(
        `${dir}: no ${SUBFOLDER[c]}/config.json: not a diffusers Stable Diffusion folder (or the ${COMPONENT_NAMES[c]} is missing)`,
      );
    }
  }
  const has = (c: Component) => existsSync(configPath(c));
  const unet = has("unet") ? unetConfigFromDiffusers(readJson(configPath("unet")), configPath("unet")) : undefined;
  const text = has("textEncoder")
    ? textConfigFromTransformers(readJson(configPath("textEncoder")), configPath("textEncoder"))
    : undefined;
  const { version, reason } = detectVersion({ textHidden: text?.hiddenSize, unet });
  const base = version === "sd2" ? "sd2" : "sd1";
  const configs: SDConfigs = {
    unet: { ...(unet ?? defaults(base).unet), ...o.overrides?.unet },
    vae: {
      ...(has("vae") ? vaeConfigFromDiffusers(readJson(configPath("vae")), configPath("vae")) : defaults(base).vae),
      ...o.overrides?.vae,
    },
    textEncoder: { ...(text ?? defaults(base).textEncoder), ...o.overrides?.textEncoder },
    textLayout: version === "sd2" ? "openclip" : "clip",
  };
  const notes: string[] = [];
  const ignoredKeys: string[] = [];
  const metadata: Record<string, string> = {};
  const components: ComponentStateDicts = {};
  let normBias: number[] | undefined;
  try {
    for (const c of want) {
      const src = openWeights(join(dir, SUBFOLDER[c]), c, o.variant, notes);
      try {
        Object.assign(metadata, src.metadata);
        components[c] = src.batch(() => loadComponent(src, c, configs, o, notes, ignoredKeys));
      } finally {
        src.close();
      }
    }
    if (want.includes("unet")) {
      const n = configs.unet.blockOutChannels.length;
      const key = `up_blocks.${n - 1}.attentions.${configs.unet.layersPerBlock}.transformer_blocks.0.norm1.bias`;
      normBias = components.unet?.get(key)?.toArray();
    }
  } catch (e) {
    for (const sd of Object.values(components)) for (const t of sd.values()) t.dispose();
    throw e;
  }
  const schedulerPath = join(dir, "scheduler", "scheduler_config.json");
  const scheduler = existsSync(schedulerPath)
    ? { path: schedulerPath, predictionType: readJson(schedulerPath).prediction_type }
    : undefined;
  const prediction = decidePrediction({
    path: dir,
    given: o.predictionType,
    version,
    inpainting: configs.unet.inChannels !== 4,
    metadata,
    hasKey: () => false,
    normBias: () => normBias,
    scheduler,
  });
  return {
    components,
    info: {
      path: dir,
      format: "diffusers",
      version,
      versionReason: reason,
      ...prediction,
      inpainting: configs.unet.inChannels === 9,
      configs,
      notes,
      ignoredKeys,
      metadata,
      ema: false,
    },
  };
}

function defaults(v: "sd1" | "sd2"): Omit<SDConfigs, "textLayout"> {
  return v === "sd2"
    ? { unet: SD2_UNET, vae: SD_VAE, textEncoder: SD2_TEXT }
    : { unet: SD15_UNET, vae: SD_VAE, textEncoder: SD15_TEXT };
}

function loadComponent(
  raw: Source,
  c: Component,
  configs: SDConfigs,
  o: LoadCheckpointOptions,
  notes: string[],
  ignored: string[],
): Map<string, Tensor> {
  const map = keyMapFor(c, configs);
  for (const k of raw.keys()) if (map.isIgnoredDiffusers(k)) ignored.push(`${SUBFOLDER[c]}/${k}`);
  const src = renamedSource(raw, (k) => (map.isIgnoredDiffusers(k) ? undefined : map.normalizeDiffusers(k)));
  const wanted = map.diffusersKeys();
  const missing = wanted.filter((k) => !src.has(k));
  if (missing.length > 0)
    throw new CheckpointError(`${raw.path}: the ${COMPONENT_NAMES[c]} ${listKeys("lacks", missing)}`);
  const unexpected = src.keys().filter((k) => !map.entryForDiffusers(k));
  if (unexpected.length > 0) {
    const text = `the ${COMPONENT_NAMES[c]} ${listKeys("has unexpected", unexpected)}`;
    if (o.strict !== false) throw new CheckpointError(`${raw.path}: ${text}; pass strict: false to ignore them`);
    notes.push(text);
  }
  const get: GetOptions = { dtype: o.dtype, device: o.device };
  const sd = new Map<string, Tensor>();
  try {
    for (const k of wanted) {
      const e = map.entryForDiffusers(k)!;
      const t = src.get(k, get);
      // Older diffusers VAEs kept the mid-attention weights as 1×1 convs.
      const fixed = e.transform === "conv1x1" ? toDiffusersTensors(e, t)[0] : t;
      if (fixed !== t) t.dispose();
      sd.set(k, fixed);
    }
    return sd;
  } catch (e) {
    for (const t of sd.values()) t.dispose();
    throw e;
  }
}
