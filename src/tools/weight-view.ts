// A checkpoint's UNet and text-encoder weights by diffusers key, read one at
// a time: a single-file checkpoint through its key maps (nothing else is
// loaded), a diffusers folder one component at a time.
import { disposeAll, keep, type Tensor } from "../engine/index.js";
import { type CheckpointInfo, keyMapFor, loadCheckpoint } from "../formats/checkpoint.js";
import { openSource, type Source } from "../formats/checkpoint-source.js";
import { type KeyMap, type KeyMapEntry, normalizeLdmTextKey, toDiffusersTensors } from "../formats/keymaps/index.js";
import type { AdaptedComponent } from "./lora-plan.js";

export interface WeightView {
  readonly path: string;
  readonly info: CheckpointInfo;
  /** Diffusers key → shape, per component. */
  readonly shapes: Record<AdaptedComponent, Map<string, readonly number[]>>;
  /** A new float32 tensor (the caller disposes it). */
  get(component: AdaptedComponent, key: string): Tensor;
  close(): void;
}

const LDM_PREFIX: Record<AdaptedComponent, string> = {
  unet: "model.diffusion_model.",
  textEncoder: "cond_stage_model.",
};

export function openWeightView(path: string): WeightView {
  const info = loadCheckpoint(path, { components: [] }).info;
  return info.format === "diffusers" ? folderView(path, info) : singleFileView(path, info);
}

function singleFileView(path: string, info: CheckpointInfo): WeightView {
  const src: Source = openSource(path);
  const maps: Record<AdaptedComponent, KeyMap> = {
    unet: keyMapFor("unet", info.configs),
    textEncoder: keyMapFor("textEncoder", info.configs),
  };
  const shapes: WeightView["shapes"] = { unet: new Map(), textEncoder: new Map() };
  const where = new Map<string, { raw: string; entry: KeyMapEntry; part: number }>();
  for (const raw of src.keys()) {
    for (const c of ["unet", "textEncoder"] as const) {
      if (!raw.startsWith(LDM_PREFIX[c])) continue;
      const entry = maps[c].entryForLdm(normalizeLdmTextKey(raw));
      if (!entry) continue;
      const shape = src.info(raw).shape;
      entry.diffusers.forEach((d, part) => {
        shapes[c].set(d, entry.transform === "qkv" ? [shape[0] / 3, ...shape.slice(1)] : shape);
        where.set(`${c}:${d}`, { raw, entry, part });
      });
    }
  }
  return {
    path,
    info,
    shapes,
    get(c, key) {
      const w = where.get(`${c}:${key}`);
      if (!w) throw new Error(`${path}: no ${c} weight ${key}`);
      const t = src.get(w.raw, { dtype: "float32" });
      const parts = toDiffusersTensors(w.entry, t);
      const out = parts[w.part].contiguous();
      for (const p of new Set([t, ...parts])) if (p !== out) p.dispose();
      return out;
    },
    close: () => src.close(),
  };
}

function folderView(path: string, info: CheckpointInfo): WeightView {
  let loaded: { c: AdaptedComponent; sd: Map<string, Tensor> } | undefined;
  const load = (c: AdaptedComponent) => {
    if (loaded?.c === c) return loaded.sd;
    if (loaded) disposeAll(loaded.sd);
    loaded = undefined;
    // kept: get() is called inside the caller's scopes, which would free a component loaded there
    const sd = keep(loadCheckpoint(path, { components: [c], dtype: "float32" }).components[c]!);
    loaded = { c, sd };
    return sd;
  };
  const shapes: WeightView["shapes"] = { unet: new Map(), textEncoder: new Map() };
  for (const c of ["unet", "textEncoder"] as const) {
    for (const [k, t] of load(c)) shapes[c].set(k, t.shape);
  }
  return {
    path,
    info,
    shapes,
    get(c, key) {
      const t = load(c).get(key);
      if (!t) throw new Error(`${path}: no ${c} weight ${key}`);
      return t.clone();
    },
    close: () => {
      if (loaded) disposeAll(loaded.sd);
      loaded = undefined;
    },
  };
}
