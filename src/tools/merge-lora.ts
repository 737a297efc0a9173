// Merging LoRA / LyCORIS files into a checkpoint (kohya-ss/sd-scripts
// networks/merge_lora.py; A1111's "bake" of a LoRA): W' = W + Σ weight·ΔW,
// written single-file or diffusers, in fp32/fp16/bf16, with a record of what
// was merged in the metadata. A single-file input written single-file is a
// streaming pass: one tensor read, changed and written at a time, so the
// merge never holds the checkpoint in memory (bench/merge-memory.ts).
import { basename, extname, join } from "node:path";
import type { DType } from "../engine/index.js";
import { disposeAll, scope } from "../engine/index.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { keyMapFor, loadCheckpoint, saveCheckpoint } from "../formats/checkpoint.js";
import { openSource } from "../formats/checkpoint-source.js";
import type { Component, KeyMap } from "../formats/keymaps/index.js";
import { normalizeLdmTextKey, toDiffusersTensors, toLdmTensor } from "../formats/keymaps/index.js";
import { findTokenizer } from "../models/clip/tokenizer.js";
import {
  type AdaptedComponent,
  disposeLoras,
  type LayerWeight,
  layerWeights,
  loadLoras,
  type MergePlan,
  mergedWeight,
  planKey,
  planMerge,
  type WeightedLora,
} from "./lora-plan.js";
import { writeSafetensorsStream } from "./stream-safetensors.js";
import { checkOutputPath, LoraToolError, outputDType } from "./tool-io.js";

export interface MergeLoraOptions {
  /** Output layout (default: single-file for a `.safetensors` output, else diffusers). */
  layout?: "ldm" | "diffusers";
  /** Floating-point tensors are written in this dtype (default: the input's). */
  dtype?: DType;
  /** Merge what matches and list the rest (kohya's behaviour) instead of refusing. */
  skipUnmatched?: boolean;
  /** Replace an existing output. */
  overwrite?: boolean;
}

export interface MergeLoraResult {
  layout: "ldm" | "diffusers";
  /** Whether the single-file streaming pass was used. */
  streamed: boolean;
  merged: MergePlan["counts"];
  /** Weights changed. */
  weightsChanged: number;
  skipped: string[];
}

/** The record of a merge written into the output's metadata (`atelier_merged_loras`). */
export function mergeRecord(plan: MergePlan): string {
  return JSON.stringify(plan.counts.map((c) => ({ file: basename(c.path), weight: c.weight, modules: c.modules })));
}

const COMPONENT_OF: [AdaptedComponent | "vae", (k: string) => boolean][] = [
  ["unet", (k) => k.startsWith("model.diffusion_model.")],
  ["vae", (k) => k.startsWith("first_stage_model.")],
  ["textEncoder", (k) => k.startsWith("cond_stage_model.")],
];

export function mergeLorasIntoCheckpoint(
  input: string,
  loras: readonly WeightedLora[],
  output: string,
  o: MergeLoraOptions = {},
): MergeLoraResult {
  if (loras.length === 0) throw new LoraToolError("no LoRA files to merge");
  const layout = o.layout ?? (extname(output).toLowerCase() === ".safetensors" ? "ldm" : "diffusers");
  checkOutputPath(output, [input, ...loras.map((l) => l.path)], { layout, overwrite: o.overwrite });
  const dtype = outputDType(o.dtype);
  const probe = loadCheckpoint(input, { components: [] }).info;
  const loaded = loadLoras(loras);
  try {
    if (probe.format !== "diffusers" && layout === "ldm")
      return streamSingleFile(input, loaded, output, probe, o, dtype);
    return mergeLoaded(input, loaded, output, layout, o, dtype);
  } finally {
    disposeLoras(loaded);
  }
}

function streamSingleFile(
  input: string,
  loras: ReturnType<typeof loadLoras>,
  output: string,
  probe: ReturnType<typeof loadCheckpoint>["info"],
  o: MergeLoraOptions,
  dtype: DType | undefined,
): MergeLoraResult {
  const maps = {} as Record<Component, KeyMap>;
  for (const c of ["unet", "vae", "textEncoder"] as const) maps[c] = keyMapFor(c, probe.configs);
  const src = openSource(input);
  try {
    const keys = src.keys();
    // raw key → its component and key-map entry; diffusers key → shape, for matching module names
    const entries = new Map<string, { component: Component; entry: ReturnType<KeyMap["entryForLdm"]> }>();
    const shapes: Partial<Record<AdaptedComponent, Map<string, readonly number[]>>> = {
      unet: new Map(),
      textEncoder: new Map(),
    };
    for (const k of keys) {
      const c = COMPONENT_OF.find(([, f]) => f(k))?.[0];
      if (!c) continue;
      const entry = maps[c].entryForLdm(normalizeLdmTextKey(k));
      if (!entry) continue;
      entries.set(k, { component: c, entry });
      if (c === "vae") continue;
      const shape = src.info(k).shape;
      for (const d of entry.diffusers)
        shapes[c]!.set(d, entry.transform === "qkv" ? [shape[0] / 3, ...shape.slice(1)] : shape);
    }
    const plan = planMerge(loras, layerWeights(shapes), o);
    const md: Record<string, string> = {};
    for (const [k, v] of Object.entries(src.metadata)) if (v !== null && typeof v !== "object") md[k] = String(v);
    md.atelier_merged_loras = mergeRecord(plan);
    let changed = 0;
    const planned = keys.map((k) => {
      const i = src.info(k);
      return { name: k, shape: i.shape, dtype: dtype && isFloat(i.dtype) ? dtype : i.dtype };
    });
    src.batch(() =>
      writeSafetensorsStream(output, planned, md, (k) => {
        const t = src.get(k);
        const e = entries.get(k);
        const lists =
          e && e.component !== "vae"
            ? e.entry!.diffusers.map((d) => plan.byKey.get(planKey(e.component as AdaptedComponent, d)))
            : [];
        if (!lists.some((l) => l && l.length > 0)) return dtype && isFloat(t.dtype) ? t.to(dtype) : t;
        changed++;
        const parts = toDiffusersTensors(e!.entry!, t);
        const merged = parts.map((p, i) => (lists[i] ? mergedWeight(p, lists[i]!, dtype) : dtype ? p.to(dtype) : p));
        return scope(() => toLdmTensor(e!.entry!, merged).contiguous());
      }),
    );
    return { layout: "ldm", streamed: true, merged: plan.counts, weightsChanged: changed, skipped: plan.skipped };
  } finally {
    src.close();
  }
}

const isFloat = (d: DType) => d === "float32" || d === "float16" || d === "bfloat16" || d === "float64";

/** Any input, any layout: loads the model once, merges in place, saves (peak ≈ one model). */
function mergeLoaded(
  input: string,
  loras: ReturnType<typeof loadLoras>,
  output: string,
  layout: "ldm" | "diffusers",
  o: MergeLoraOptions,
  dtype: DType | undefined,
): MergeLoraResult {
  const { components, info } = loadCheckpoint(input);
  try {
    const shapes: Partial<Record<AdaptedComponent, Map<string, readonly number[]>>> = {};
    for (const c of ["unet", "textEncoder"] as const)
      shapes[c] = new Map([...(components[c] ?? [])].map(([k, t]) => [k, t.shape]));
    const weights: Map<string, LayerWeight> = layerWeights(shapes);
    const plan = planMerge(loras, weights, o);
    let changed = 0;
    for (const w of weights.values()) {
      const list = plan.byKey.get(planKey(w.component, w.key));
      if (!list) continue;
      const sd = components[w.component]!;
      const old = sd.get(w.key)!;
      sd.set(w.key, mergedWeight(old, list));
      old.dispose();
      changed++;
    }
    let tokenizerFrom: string | undefined;
    if (layout === "diffusers") {
      try {
        tokenizerFrom = findTokenizer({ kind: info.version, modelDir: input }).dir;
      } catch {
        // no tokenizer to copy: the folder is written without one
      }
    }
    const record = mergeRecord(plan);
    saveCheckpoint(components, output, {
      layout,
      dtype,
      configs: info.configs,
      predictionType: info.predictionType,
      metadata: { atelier_merged_loras: record },
      tokenizerFrom,
      overwrite: o.overwrite,
    });
    if (layout === "diffusers") writeTextAtomic(join(output, "atelier_merge.json"), `${record}\n`);
    return { layout, streamed: false, merged: plan.counts, weightsChanged: changed, skipped: plan.skipped };
  } finally {
    disposeAll(components);
  }
}
