// `atelier check FILE`: for a LoRA / LyCORIS file, textual-inversion
// embedding or hypernetwork, which programs load it and which keys each
// ignores or rejects, and why — by the rules of ./compat-rules.ts, each
// taken from that program's loader. Module names are matched against the
// SD 1.x and 2.x layers (Atelier's key maps give their diffusers and
// compvis paths); the file is judged by its keys, never its metadata.
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { disposeAll, Tensor } from "../engine/index.js";
import { sniff } from "../formats/checkpoint-source.js";
import { loadTorchFile } from "../formats/ckpt.js";
import {
  SD2_TEXT,
  SD2_UNET,
  SD15_TEXT,
  SD15_UNET,
  textEncoderKeyMap,
  UNET_PREFIX,
  unetKeyMap,
} from "../formats/keymaps/index.js";
import { openSafetensors } from "../formats/safetensors.js";
import { LOADERS, type LoaderId, type LoaderRules, type NameFamily } from "./compat-rules.js";

/** "misapplies": it loads without an error but computes other weights; "approximates": close, not equal. */
export type Verdict =
  | "loads"
  | "loads-partly"
  | "approximates"
  | "misapplies"
  | "no-effect"
  | "rejects"
  | "not-applicable";

export interface LoaderVerdict {
  loader: LoaderId;
  name: string;
  verdict: Verdict;
  /** Modules it would apply. */
  modules: number;
  /** Keys it would skip, with why (a few listed, all counted). */
  ignored: { count: number; examples: { key: string; why: string }[] };
  /** Why it refuses the file (verdict "rejects"), or why its result differs ("misapplies", "approximates"). */
  reason?: string;
}

export interface CheckReport {
  path: string;
  kind: "lora" | "embedding" | "hypernetwork" | "unknown";
  keys: number;
  loaders: LoaderVerdict[];
}

const under = (p: string) => p.replaceAll(".", "_");

let cache: Map<NameFamily, Set<string>> | undefined;

/** Every module name of each family, for SD 1.x and 2.x. */
function names(): Map<NameFamily, Set<string>> {
  if (cache) return cache;
  const fam = new Map<NameFamily, Set<string>>();
  const add = (f: NameFamily, n: string) => {
    if (!fam.has(f)) fam.set(f, new Set());
    fam.get(f)!.add(n);
  };
  for (const u of [SD15_UNET, SD2_UNET]) {
    for (const e of unetKeyMap(u).entries) {
      const c = e.ldm.slice(UNET_PREFIX.length);
      if (!c.endsWith(".weight")) continue;
      const cp = c.slice(0, -7);
      add("kohya-compvis", `lora_unet_${under(cp)}`);
      add("compvis-plain", `diffusion_model.${cp}`);
      for (const d of e.diffusers) {
        const p = d.slice(0, -7);
        add("kohya-diffusers", `lora_unet_${under(p)}`);
        add("lycoris-diffusers", `lycoris_${under(p)}`);
        add("diffusers-unet", `unet.${p}`);
        let proc = p.replace(".to_", ".processor.to_");
        if (proc.endsWith(".to_out.0")) proc = proc.slice(0, -2);
        add("diffusers-processor", proc);
        add("diffusers-processor", `unet.${proc}`);
        if (/\.attentions\.\d+\./.test(p)) add("kohya-targets", `lora_unet_${under(p)}`);
        if (/\.(resnets|downsamplers|upsamplers)\.\d+\./.test(p)) add("kohya-targets", `lora_unet_${under(p)}`);
      }
    }
  }
  for (const [t, layout] of [
    [SD15_TEXT, "clip"],
    [SD2_TEXT, "openclip"],
  ] as const) {
    for (const d of textEncoderKeyMap(t, layout).diffusersKeys()) {
      if (!d.endsWith(".weight")) continue;
      const p = d.slice(0, -7);
      add("kohya-diffusers", `lora_te_${under(p)}`);
      add("kohya-te1", `lora_te1_${under(p)}`);
      add("diffusers-unet", `text_encoder.${p}`);
      const attn = /^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$/.test(p);
      if (attn) {
        add("te-diffusers-attn", `text_encoder.${p}`);
        add("kohya-targets", `lora_te_${under(p)}`);
      }
    }
  }
  cache = fam;
  return fam;
}

/** A file's keys and the shapes of its dora_scale tensors, or why it is not a dict of tensors. */
function readKeys(path: string): { keys: string[]; doraShapes: Map<string, number[]> } | { error: string } {
  let file = path;
  if (existsSync(path) && statSync(path).isDirectory()) {
    const inside = ["adapter_model.safetensors", "pytorch_lora_weights.safetensors"].map((n) => join(path, n));
    const found = inside.find((p) => existsSync(p));
    if (!found) return { error: "a folder without adapter_model.safetensors" };
    file = found;
  }
  if (sniff(file) === "safetensors") {
    const f = openSafetensors(file);
    try {
      const keys = f.keys();
      return { keys, doraShapes: new Map(keys.filter(isDoraScale).map((k) => [k, f.info(k).shape])) };
    } finally {
      f.close();
    }
  }
  const root = loadTorchFile(file);
  try {
    if (Array.isArray(root)) return { error: "a pickled list of tensors, not a state dict (no key names)" };
    if (!(root instanceof Map)) return { error: `holds ${typeof root}, not a state dict` };
    const keys: string[] = [];
    const doraShapes = new Map<string, number[]>();
    const walk = (m: Map<unknown, unknown>, prefix: string) => {
      for (const [k, v] of m) {
        const key = `${prefix}${String(k)}`;
        if (v instanceof Map) walk(v, `${key}.`);
        else keys.push(key);
        if (v instanceof Tensor && isDoraScale(key)) doraShapes.set(key, v.shape);
      }
    };
    walk(root, "");
    if (keys.length === 0) return { error: "holds no tensors (an empty dict)" };
    return { keys, doraShapes };
  } finally {
    disposeAll(root);
  }
}

const isDoraScale = (key: string) => key.endsWith(".dora_scale");

/** A dora_scale's axis from its shape: [1, in, …] input, [out] or [out, 1, …] output (both: a 1-wide layer). */
function doraAxis(shape: number[]): "input" | "output" | null {
  if (shape.length >= 2 && shape[0] === 1 && shape.slice(2).every((d) => d === 1)) return "input";
  if (shape.length >= 1 && shape[0] > 1 && shape.slice(1).every((d) => d === 1)) return "output";
  return null;
}

function kindOf(keys: string[]): CheckReport["kind"] {
  if (keys.some((k) => k.startsWith("string_to_param") || k === "emb_params" || k === "clip_l" || k === "clip_g"))
    return "embedding";
  if (keys.length > 0 && keys.every((k) => /^<.*>$/.test(k))) return "embedding";
  if (keys.some((k) => /^\d+\.\d+\.linear\.\d+\.weight$/.test(k))) return "hypernetwork";
  if (keys.some((k) => /lora|hada_|lokr_|unet:|text_encoder:/.test(k))) return "lora";
  return "unknown";
}

/** Splits a key into module name and weight part by the loader's rule, or null when no part is one it knows. */
function split(rules: LoaderRules, key: string): { module: string; part: string } | null {
  if (rules.split === "first-dot") {
    const dot = key.indexOf(".");
    return dot < 0 ? null : { module: key.slice(0, dot), part: key.slice(dot + 1) };
  }
  let best: string | null = null;
  for (const parts of Object.values(rules.parts))
    for (const p of parts) {
      const sep = p.startsWith("_") ? "" : ".";
      if (key.endsWith(`${sep}${p}`) && key.length > p.length + sep.length && (!best || p.length > best.length))
        best = p;
    }
  if (!best) return null;
  const sep = best.startsWith("_") ? "" : ".";
  return { module: key.slice(0, key.length - best.length - sep.length), part: best };
}

function checkLora(rules: LoaderRules, keys: string[], doraShapes: Map<string, number[]>): LoaderVerdict {
  const fam = names();
  const known = (m: string) => rules.names.some((f) => fam.get(f)?.has(m));
  const ignored: { key: string; why: string }[] = [];
  const modules = new Map<string, string[]>();
  for (const key of keys) {
    if (rules.extras?.some((e) => key.startsWith(e))) continue;
    const s = split(rules, key);
    if (!s) {
      ignored.push({ key, why: "no weight part this loader knows" });
      continue;
    }
    if (!known(s.module)) {
      ignored.push({ key, why: `'${s.module}' names no SD 1.x/2.x layer this loader maps` });
      continue;
    }
    const list = modules.get(s.module) ?? [];
    list.push(s.part);
    modules.set(s.module, list);
  }
  let applied = 0;
  let reason: string | undefined;
  let outputAxisDora: string | undefined;
  for (const [m, parts] of modules) {
    const method = Object.entries(rules.parts).find(
      ([, allowed]) => parts.every((p) => allowed.includes(p)) && parts.some((p) => p !== "alpha"),
    );
    if (method) {
      applied++;
      const scale = doraShapes.get(`${m}.dora_scale`);
      if (scale && doraAxis(scale) === "output") outputAxisDora ??= `${m}.dora_scale [${scale}]`;
      continue;
    }
    const why = `module '${m}' has parts [${parts.join(", ")}] that fit no module type it has`;
    if (rules.unknownPartsFail) reason ??= why;
    for (const p of parts) ignored.push({ key: `${m}.${p}`, why });
  }
  if (!reason && rules.unmatchedFail && ignored.length > 0)
    reason = `${ignored.length} keys it cannot convert (e.g. '${ignored[0].key}': ${ignored[0].why})`;
  if (!reason && rules.maxUnmatched !== undefined && ignored.length > rules.maxUnmatched)
    reason = `LoRA version mismatch: ${ignored.length} keys unmatched, over its limit of ${rules.maxUnmatched} (e.g. '${ignored[0].key}': ${ignored[0].why})`;
  const dora = !reason && outputAxisDora ? rules.doraOutputAxis : undefined;
  if (dora) reason = `${dora.why} (e.g. ${outputAxisDora})`;
  const verdict: Verdict = dora
    ? dora.verdict
    : reason
      ? "rejects"
      : applied === 0
        ? "no-effect"
        : ignored.length > 0
          ? "loads-partly"
          : "loads";
  return {
    loader: rules.id,
    name: rules.name,
    verdict,
    modules: reason && !dora ? 0 : applied,
    ignored: { count: ignored.length, examples: ignored.slice(0, 3) },
    reason,
  };
}

/**
 * Embeddings: A1111 modules/textual_inversion/textual_inversion.py (string_to_param,
 * emb_params, or one tensor), ComfyUI comfy/sd1_clip.py load_embed (the same, plus
 * clip_l/clip_g), diffusers loaders/textual_inversion.py (one `{token: tensor}`,
 * string_to_param, emb_params). Hypernetworks: A1111 modules/hypernetworks, ComfyUI
 * comfy_extras/nodes_hypernetwork.py; diffusers and kohya have no loader.
 */
function checkOther(kind: "embedding" | "hypernetwork", keys: string[]): LoaderVerdict[] {
  const one = keys.length === 1;
  const a1111Emb = keys.some((k) => k.startsWith("string_to_param")) || keys.includes("emb_params") || one;
  const v = (loader: LoaderId, ok: boolean, reason: string): LoaderVerdict => ({
    loader,
    name: LOADERS.find((l) => l.id === loader)!.name,
    verdict: ok ? "loads" : reason.startsWith("no ") ? "not-applicable" : "rejects",
    modules: 0,
    ignored: { count: 0, examples: [] },
    reason: ok ? undefined : reason,
  });
  if (kind === "hypernetwork")
    return [
      v("a1111", true, ""),
      v("forge", false, "no hypernetwork loader checked for Forge"),
      v("comfyui", true, ""),
      v("diffusers", false, "no hypernetwork loader"),
      v("kohya", false, "no hypernetwork loader"),
    ];
  const clip = keys.includes("clip_l") || keys.includes("clip_g");
  return [
    v("a1111", a1111Emb, `an embedding layout it does not read (${keys.length} entries)`),
    v("forge", a1111Emb || clip, `an embedding layout it does not read (${keys.length} entries)`),
    v("comfyui", a1111Emb || clip, `an embedding layout it does not read (${keys.length} entries)`),
    v("diffusers", a1111Emb, `an embedding layout it does not read (${keys.length} entries)`),
    v("kohya", false, "no embedding loader outside its textual-inversion trainer"),
  ];
}

export function checkFile(path: string): CheckReport {
  if (!existsSync(path)) throw new Error(`${path}: no such file`);
  const read = readKeys(path);
  if ("error" in read) {
    return {
      path,
      kind: "unknown",
      keys: 0,
      loaders: LOADERS.map((l) => ({
        loader: l.id,
        name: l.name,
        verdict: "rejects" as const,
        modules: 0,
        ignored: { count: 0, examples: [] },
        reason: read.error,
      })),
    };
  }
  const { keys, doraShapes } = read;
  const kind = kindOf(keys);
  if (kind === "embedding" || kind === "hypernetwork")
    return { path, kind, keys: keys.length, loaders: checkOther(kind, keys) };
  return { path, kind, keys: keys.length, loaders: LOADERS.map((l) => checkLora(l, keys, doraShapes)) };
}

export function formatCheck(r: CheckReport): string {
  const lines = [`${r.path}: ${r.kind}, ${r.keys} keys`];
  for (const l of r.loaders) {
    const applies = l.verdict !== "rejects" && l.verdict !== "no-effect" && l.verdict !== "not-applicable";
    const what = applies && r.kind === "lora" ? `${l.verdict} (${l.modules} modules)` : l.verdict;
    lines.push(`  ${l.name.padEnd(34)} ${what}${l.reason ? `: ${l.reason}` : ""}`);
    if (l.ignored.count > 0 && l.verdict !== "rejects") {
      lines.push(`    ignores ${l.ignored.count} keys, e.g.`);
      for (const e of l.ignored.examples) lines.push(`      ${e.key}: ${e.why}`);
    }
  }
  return lines.join("\n");
}
