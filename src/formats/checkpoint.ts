// Loading any Stable Diffusion 1.x / 2.x checkpoint into diffusers-keyed state
// dicts per component: a single-file LDM checkpoint (.safetensors, or .ckpt
// through the restricted unpickler) or a diffusers folder. What the
// checkpoint is (configs, SD1/SD2, epsilon/v) is worked out from its keys
// and shapes plus any hint it carries, and returned with the reason.
import { existsSync, statSync } from "node:fs";
import type { Tensor } from "../engine/index.js";
import { CheckpointError, detectVersion, inferTextEncoder, inferUNetFromLdm, inferVae } from "./checkpoint-detect.js";
import { type GetOptions, openSource, readFloats, renamedSource, type Source } from "./checkpoint-source.js";
import {
  ALL_COMPONENTS,
  COMPONENT_NAMES,
  type ComponentStateDicts,
  decidePrediction,
  keyMapFor,
  type LoadCheckpointOptions,
  type LoadedCheckpoint,
  listKeys,
  yamlBeside,
} from "./checkpoint-types.js";
import { loadDiffusersFolder } from "./diffusers-folder.js";
import {
  type Component,
  type KeyMap,
  normalizeLdmTextKey,
  SD_VAE,
  SD2_TEXT,
  SD2_UNET,
  SD15_TEXT,
  SD15_UNET,
  type SDConfigs,
  type TextLayout,
  toDiffusersTensors,
  UNET_PREFIX,
  VAE_PREFIX,
} from "./keymaps/index.js";

export { CheckpointError, type PredictionType, type SDVersion } from "./checkpoint-detect.js";
export * from "./checkpoint-types.js";

/** Loads a single-file checkpoint or a diffusers folder. The caller owns the tensors (disposeAll). */
export function loadCheckpoint(path: string, o: LoadCheckpointOptions = {}): LoadedCheckpoint {
  if (!existsSync(path)) throw new CheckpointError(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) return loadDiffusersFolder(path, o);
  return loadSingleFile(path, o);
}

/** Refuses what is not an SD1/SD2 single-file checkpoint, with a hint at what it looks like. */
function classify(path: string, keys: string[], other: Record<string, unknown>): void {
  const has = (p: string) => keys.some((k) => k.startsWith(p));
  // SDXL's label_emb is an MLP (label_emb.0.0.*); the ×4 upscaler's noise-level label_emb.weight is an Embedding.
  if (has("conditioner.embedders.1.") || has(`${UNET_PREFIX}label_emb.0.`)) {
    throw new CheckpointError(`${path}: an SDXL (or class-conditioned) checkpoint; only SD 1.x and 2.x are supported`);
  }
  if (has(UNET_PREFIX) || has(VAE_PREFIX) || has("cond_stage_model.") || has("conditioner.embedders.0.model.")) return;
  let hint = "";
  if (keys.some((k) => /^lora_(unet|te)|\.lora_(down|up|A|B)\.|\.lora\.(down|up)\.|hada_w|lokr_w/.test(k)))
    hint = " It looks like a LoRA / LyCORIS adapter.";
  else if (has("down_blocks.") || has("encoder.down_blocks.") || has("text_model."))
    hint = " It looks like one diffusers component: pass the diffusers folder.";
  else if (has("transformer.") || has("double_blocks.") || has("single_blocks."))
    hint = " It looks like a different architecture (Flux/DiT).";
  const names = keys.length > 0 ? keys : Object.keys(other);
  const shown = names
    .slice(0, 3)
    .map((k) => JSON.stringify(k))
    .join(", ");
  const what =
    keys.length > 0
      ? `${keys.length} tensors: `
      : names.length > 0
        ? "no tensors at the top level; entries: "
        : "nothing in it";
  throw new CheckpointError(
    `${path}: not a Stable Diffusion checkpoint: no model.diffusion_model./first_stage_model./cond_stage_model. keys (${what}${shown}${names.length > 3 ? ", …" : ""}).${hint}`,
  );
}

const PREFIX: Record<Component, (k: string) => boolean> = {
  unet: (k) => k.startsWith(UNET_PREFIX),
  vae: (k) => k.startsWith(VAE_PREFIX),
  textEncoder: (k) => k.startsWith("cond_stage_model."),
};

function loadSingleFile(path: string, o: LoadCheckpointOptions): LoadedCheckpoint {
  const raw = openSource(path);
  try {
    const rawKeys = raw.keys();
    classify(path, rawKeys, raw.metadata);
    const emaKeys = rawKeys.filter((k) => k.startsWith("model_ema."));
    if (o.ema && !rawKeys.some((k) => k.startsWith("model_ema.diffusion_model"))) {
      throw new CheckpointError(`${path}: has no EMA weights (model_ema.*) to load`);
    }
    // Canonical names: old text encoder spellings; with `ema`, the UNet from LitEma's dotless buffer names.
    const ema = new Set(emaKeys);
    const src = renamedSource(raw, (k) => {
      if (k.startsWith("model_ema.")) return undefined;
      if (o.ema && k.startsWith(UNET_PREFIX)) {
        const e = `model_ema.${k.slice("model.".length).replace(/\./g, "")}`;
        if (!ema.has(e)) throw new CheckpointError(`${path}: EMA weights lack ${k} (no ${e})`);
      }
      return normalizeLdmTextKey(k);
    });
    const view = o.ema ? emaView(raw, src) : src;
    const keys = view.keys();
    const textLayout: TextLayout = keys.some((k) => k.startsWith("cond_stage_model.model.")) ? "openclip" : "clip";
    const present: Record<Component, boolean> = {
      unet: keys.some(PREFIX.unet),
      vae: keys.some(PREFIX.vae),
      textEncoder: keys.some(PREFIX.textEncoder),
    };
    const want = o.components ?? ALL_COMPONENTS;
    for (const c of want) {
      if (!present[c])
        throw new CheckpointError(
          `${path}: has no ${COMPONENT_NAMES[c]} weights; pass \`components\` to load the others`,
        );
    }
    const notes: string[] = [];
    const unet = present.unet ? inferUNetFromLdm(view, path) : undefined;
    const text = present.textEncoder ? inferTextEncoder(view, path, textLayout) : undefined;
    const { version, reason } = detectVersion({ textLayout: present.textEncoder ? textLayout : undefined, unet });
    const configs: SDConfigs = {
      unet: { ...(unet ?? (version === "sd2" ? SD2_UNET : SD15_UNET)), ...o.overrides?.unet },
      vae: { ...(present.vae ? inferVae(view, path, "ldm") : SD_VAE), ...o.overrides?.vae },
      textEncoder: { ...(text ?? (version === "sd2" ? SD2_TEXT : SD15_TEXT)), ...o.overrides?.textEncoder },
      textLayout,
    };
    noteAssumptions(notes, configs, o);
    const maps = Object.fromEntries(ALL_COMPONENTS.map((c) => [c, keyMapFor(c, configs)])) as Record<Component, KeyMap>;
    const prediction = decidePrediction({
      path,
      given: o.predictionType,
      version,
      inpainting: configs.unet.inChannels !== 4,
      metadata: raw.metadata,
      hasKey: (k) => raw.has(k),
      normBias: () => {
        const n = configs.unet.blockOutChannels.length;
        const key = maps.unet.map(
          `up_blocks.${n - 1}.attentions.${configs.unet.layersPerBlock}.transformer_blocks.0.norm1.bias`,
        );
        return key && view.has(key) ? readFloats(view, key) : undefined;
      },
      yaml: yamlBeside(path),
    });
    if (
      version === "sd2" &&
      prediction.predictionType === "v_prediction" &&
      o.overrides?.unet?.sampleSize === undefined
    ) {
      configs.unet.sampleSize = 96;
    }
    const components = view.batch(() => loadComponents(view, maps, want, o, notes));
    const ignoredKeys = [
      ...emaKeys.filter((k) => !(o.ema && k.startsWith("model_ema.diffusion_model"))),
      ...keys.filter(
        (k) => !ALL_COMPONENTS.some((c) => PREFIX[c](k)) || ALL_COMPONENTS.some((c) => maps[c].isIgnoredLdm(k)),
      ),
      ...keys.filter((k) => ALL_COMPONENTS.some((c) => PREFIX[c](k) && !want.includes(c))),
    ];
    return {
      components,
      info: {
        path,
        format: raw.kind,
        version,
        versionReason: reason,
        ...prediction,
        inpainting: configs.unet.inChannels === 9,
        configs,
        notes,
        ignoredKeys: [...new Set(ignoredKeys)],
        metadata: { ...raw.metadata },
        ema: o.ema === true,
      },
    };
  } finally {
    raw.close();
  }
}

/** UNet keys read from their EMA copies (`model_ema.diffusion_modelinput_blocks00weight`, ldm/modules/ema.py LitEma). */
function emaView(raw: Source, src: Source): Source {
  const to = (k: string) =>
    k.startsWith(UNET_PREFIX) ? `model_ema.${k.slice("model.".length).replace(/\./g, "")}` : undefined;
  return {
    ...src,
    info: (k) => {
      const e = to(k);
      return e ? raw.info(e) : src.info(k);
    },
    get: (k, g) => {
      const e = to(k);
      return e ? raw.get(e, g) : src.get(k, g);
    },
  };
}

function noteAssumptions(notes: string[], c: SDConfigs, o: LoadCheckpointOptions): void {
  if (o.overrides?.unet?.attentionHeadDim === undefined) {
    notes.push(
      `UNet attention heads cannot be read from the weights; assumed ${JSON.stringify(c.unet.attentionHeadDim)}`,
    );
  }
  if (o.overrides?.textEncoder?.numAttentionHeads === undefined) {
    notes.push(
      `text encoder attention heads cannot be read from the weights; assumed ${c.textEncoder.numAttentionHeads}`,
    );
  }
}

/** Loads the wanted components through their key maps; on any error every tensor made so far is freed. */
function loadComponents(
  src: Source,
  maps: Record<Component, KeyMap>,
  want: readonly Component[],
  o: LoadCheckpointOptions,
  notes: string[],
): ComponentStateDicts {
  const out: ComponentStateDicts = {};
  const made: Tensor[] = [];
  const get: GetOptions = { dtype: o.dtype, device: o.device };
  try {
    for (const c of want) {
      const map = maps[c];
      const missing = map.entries.filter((e) => !src.has(e.ldm)).map((e) => e.ldm);
      if (missing.length > 0)
        throw new CheckpointError(`${src.path}: the ${COMPONENT_NAMES[c]} ${listKeys("lacks", missing)}`);
      const unexpected = src.keys().filter((k) => PREFIX[c](k) && !map.entryForLdm(k) && !map.isIgnoredLdm(k));
      if (unexpected.length > 0) {
        const text = `the ${COMPONENT_NAMES[c]} ${listKeys("has unexpected", unexpected)}`;
        if (o.strict !== false) throw new CheckpointError(`${src.path}: ${text}; pass strict: false to ignore them`);
        notes.push(text);
      }
      const sd = new Map<string, Tensor>();
      for (const e of map.entries) {
        const t = src.get(e.ldm, get);
        made.push(t);
        const parts = toDiffusersTensors(e, t);
        for (const p of parts) if (p !== t) made.push(p);
        if (!parts.includes(t)) t.dispose();
        for (const [i, d] of e.diffusers.entries()) sd.set(d, parts[i]);
      }
      out[c] = sd;
    }
    return out;
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

export { type SaveCheckpointOptions, saveCheckpoint } from "./checkpoint-save.js";
