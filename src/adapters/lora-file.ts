// Reading LoRA files of every tool people use into kohya's layout (module
// name → lora_down.weight, lora_up.weight, alpha, …): kohya sd-scripts and
// the A1111 / OneTrainer files that share its names (LoCon, LoHa, LoKr
// included), diffusers and PEFT files (./convert.ts), cloneofsimo's
// safetensors and list-of-tensors .pt files. A file is judged by its keys
// and shapes, never its metadata; what cannot be applied to SD 1.x/2.x is
// refused with a message that names the file. Which keys a kohya module may
// hold, and which method they are, comes from ./registry.ts.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { type DType, disposeAll, scope, Tensor } from "../engine/index.js";
import { sniff } from "../formats/checkpoint-source.js";
import { loadTorchFile } from "../formats/ckpt.js";
import { loadSafetensors } from "../formats/safetensors.js";
import {
  convertCloneofsimo,
  convertCloneofsimoDict,
  convertDiffusers,
  entry,
  isCloneofsimo,
  isDiffusersLora,
  LoraFormatError,
  type ModuleTensors,
  type PeftConfig,
} from "./convert.js";
import { ADAPTER_REGISTRY, type AdapterRegistry } from "./registry.js";

export { LoraFormatError };

export type LoraFileFormat = "kohya" | "diffusers" | "peft" | "cloneofsimo";

/** A LoRA file in kohya's layout. Plain data: scope() and disposeAll() reach its tensors. */
export interface LoraFile {
  path: string;
  format: LoraFileFormat;
  /** The safetensors metadata ({} for torch files). */
  metadata: Record<string, string>;
  /** kohya module name → its tensors by kohya key (lora_down.weight, lora_up.weight, alpha, hada_w1_a, …). */
  modules: ModuleTensors;
  /** Entries of the file that are not adapter weights and were dropped (cloneofsimo's `<s1>` embeddings). */
  ignored: string[];
}

export interface LoadLoraFileOptions {
  /** Cast floating-point tensors to this dtype. */
  dtype?: DType;
  device?: string;
  /** The methods a kohya module's keys may belong to (default: Atelier's). */
  registry?: AdapterRegistry;
}

export function disposeLoraFile(f: LoraFile): void {
  for (const m of f.modules.values()) for (const t of m.values()) t.dispose();
  f.modules.clear();
}

type Raw = { dict: Map<string, Tensor>; list?: undefined } | { list: Tensor[]; dict?: undefined };

/**
 * Reads a LoRA file (.safetensors, .pt/.ckpt/.bin torch files, or a PEFT
 * folder / adapter_model.safetensors with adapter_config.json beside it).
 */
export function loadLoraFile(path: string, o: LoadLoraFileOptions = {}): LoraFile {
  if (!existsSync(path)) throw new LoraFormatError(`${path}: no such file`);
  let file = path;
  if (statSync(path).isDirectory()) {
    file = ["adapter_model.safetensors", "adapter_model.bin", "pytorch_lora_weights.safetensors"]
      .map((n) => join(path, n))
      .find((p) => existsSync(p)) as string;
    if (!file)
      throw new LoraFormatError(
        `${path}: a folder without adapter_model.safetensors or pytorch_lora_weights.safetensors`,
      );
  }
  const configPath = join(file, "..", "adapter_config.json");
  const config = existsSync(configPath) ? readPeftConfig(configPath) : undefined;
  const { raw, metadata } = readTensors(file, o);
  const all = raw.dict ? [...raw.dict.values()] : raw.list;
  let modules: ModuleTensors | undefined;
  try {
    const registry = o.registry ?? ADAPTER_REGISTRY;
    const converted = scope(() => convert(file, raw, config, registry));
    modules = converted.modules;
    const used = new Set<Tensor>();
    for (const m of modules.values()) for (const t of m.values()) used.add(t);
    for (const t of all) if (!used.has(t)) t.dispose();
    checkModules(file, modules, registry);
    return { path: file, format: converted.format, metadata, modules, ignored: converted.ignored };
  } catch (e) {
    disposeAll(all);
    disposeAll(modules);
    throw e;
  }
}

function readPeftConfig(path: string): PeftConfig {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as PeftConfig;
  } catch (e) {
    throw new LoraFormatError(`${path}: unreadable PEFT config (${(e as Error).message})`);
  }
}

const TI_KEYS = new Set(["string_to_param", "string_to_token", "emb_params", "clip_l", "clip_g"]);

function readTensors(path: string, o: LoadLoraFileOptions): { raw: Raw; metadata: Record<string, string> } {
  if (sniff(path) === "safetensors") {
    const { tensors, metadata } = loadSafetensors(path, o);
    return { raw: { dict: tensors }, metadata };
  }
  let root: unknown;
  try {
    root = loadTorchFile(path, o);
  } catch (e) {
    const m = (e as Error).message;
    throw new LoraFormatError(m.includes(path) ? m : `${path}: ${m}`);
  }
  try {
    if (Array.isArray(root)) {
      if (root.length === 0 || !root.every((t) => t instanceof Tensor))
        throw new LoraFormatError(`${path}: a pickled list that is not a list of LoRA tensors`);
      return { raw: { list: root as Tensor[] }, metadata: {} };
    }
    if (!(root instanceof Map)) throw new LoraFormatError(`${path}: holds ${typeof root}, not a LoRA state dict`);
    const nested = root.get("state_dict");
    const sd = nested instanceof Map ? nested : root;
    const names = [...sd.keys()].map(String);
    if (names.some((k) => TI_KEYS.has(k))) throw notLora(path, "a textual-inversion embedding", names);
    const dict = new Map<string, Tensor>();
    for (const [k, v] of sd) if (typeof k === "string" && v instanceof Tensor) dict.set(k, v);
    if (dict.size === 0)
      throw new LoraFormatError(
        `${path}: holds no tensors (${names.length ? `keys: ${names.slice(0, 5).join(", ")}` : "an empty dict"}), not a LoRA`,
      );
    const keep = new Set(dict.values());
    const extra: Tensor[] = [];
    const walk = (v: unknown) => {
      if (v instanceof Tensor) {
        if (!keep.has(v)) extra.push(v);
      } else if (v instanceof Map) for (const x of v.values()) walk(x);
      else if (Array.isArray(v)) for (const x of v) walk(x);
    };
    walk(root);
    for (const t of extra) t.dispose();
    return { raw: { dict }, metadata: {} };
  } catch (e) {
    disposeAll(root);
    throw e;
  }
}

function notLora(path: string, what: string, keys: string[]): LoraFormatError {
  return new LoraFormatError(`${path}: ${what} (keys: ${keys.slice(0, 5).join(", ")}), not a LoRA`);
}

const KOHYA = /^lora_(unet|te\d?)_/;
// Keys of networks other than the SD 1.x/2.x UNet: Flux / SD3 / AuraFlow transformers.
const TRANSFORMER =
  /^(transformer\.|diffusion_model\.|lora_transformer_|lora_unet_(double|single)_blocks_|(base_model\.model\.)?(single_)?transformer_blocks\.|(double|single|joint)_blocks\.)/;

function convert(
  path: string,
  raw: Raw,
  config: PeftConfig | undefined,
  registry: AdapterRegistry,
): { modules: ModuleTensors; format: LoraFileFormat; ignored: string[] } {
  if (raw.list) {
    // cloneofsimo save_lora_weight: [up, down, up, down, …], no names
    if (raw.list.length % 2 !== 0)
      throw new LoraFormatError(`${path}: a list of ${raw.list.length} tensors, not up/down pairs`);
    const pairs = [];
    for (let i = 0; i < raw.list.length; i += 2) pairs.push({ up: raw.list[i], down: raw.list[i + 1] });
    const modules: ModuleTensors = new Map();
    convertCloneofsimo(pairs, null, path, modules);
    return { modules, format: "cloneofsimo", ignored: [] };
  }
  const dict = raw.dict;
  const keys = [...dict.keys()];
  if (keys.length === 0) throw new LoraFormatError(`${path}: holds no tensors, not a LoRA`);
  const transformer = keys.find((k) => TRANSFORMER.test(k));
  if (transformer)
    throw new LoraFormatError(
      `${path}: not a Stable Diffusion 1.x/2.x LoRA: its keys are for a transformer model such as Flux or SD3 ('${transformer}')`,
    );
  if (keys.length === 1 && TI_KEYS.has(keys[0])) throw notLora(path, "a textual-inversion embedding", keys);
  if (keys.every((k) => /^<.*>$/.test(k)) && keys.every((k) => dict.get(k)!.ndim <= 2))
    throw notLora(path, "a textual-inversion embedding ({token: vector})", keys);
  if (keys.some((k) => KOHYA.test(k))) return { ...convertKohya(path, dict, registry), format: "kohya" };
  if (isCloneofsimo(keys)) return { ...convertCloneofsimoDict(dict, path), format: "cloneofsimo" };
  const namelessDora = keys.find((k) => k.endsWith(".dora_scale"));
  if (namelessDora)
    throw new LoraFormatError(
      `${path}: a dora_scale outside kohya/LyCORIS module names ('${namelessDora}'); PEFT's DoRA is read as lora_magnitude_vector`,
    );
  if (isDiffusersLora(keys)) {
    const peft = keys.some((k) => k.startsWith("base_model.model.") || /\.lora_[AB]\./.test(k));
    return { modules: convertDiffusers(dict, path, config), format: peft ? "peft" : "diffusers", ignored: [] };
  }
  throw new LoraFormatError(
    `${path}: not a LoRA file this reader knows (keys: ${keys.slice(0, 4).join(", ")}${keys.length > 4 ? ", …" : ""})`,
  );
}

/** kohya keys `<module>.<key>`; OneTrainer's lora_te1_ (one text encoder) read as lora_te_; A1111's bundle_emb.* ignored. */
function convertKohya(
  path: string,
  dict: Map<string, Tensor>,
  registry: AdapterRegistry,
): { modules: ModuleTensors; ignored: string[] } {
  const keys = [...dict.keys()];
  if (keys.some((k) => k.startsWith("lora_te2_")))
    throw new LoraFormatError(`${path}: an SDXL LoRA (lora_te1_/lora_te2_ modules); Atelier runs SD 1.x/2.x`);
  if (keys.some((k) => /^lora_unet_(input_blocks|output_blocks|middle_block)_/.test(k)))
    throw new LoraFormatError(
      `${path}: UNet modules named in the LDM/SGM layout (lora_unet_input_blocks_…: an SDXL LoRA?)`,
    );
  const renamed = keys.filter((k) => /^lora_(unet|te\d?)_.*_lora_(down|up)\.weight$/.test(k));
  if (renamed.length > 0)
    throw new LoraFormatError(
      `${path}: malformed kohya names: '${renamed[0]}' ends in '_lora_down.weight' where kohya writes '.lora_down.weight'` +
        `${renamed[0].startsWith("lora_unet_unet_") ? " and doubles the 'unet' prefix" : ""} (a hand-renamed diffusers LoRA?); refusing rather than loading part of it`,
    );
  const modules: ModuleTensors = new Map();
  const ignored: string[] = [];
  const unknown: string[] = [];
  for (const [key, t] of dict) {
    if (key.startsWith("bundle_emb.")) {
      ignored.push(key);
      continue;
    }
    const dot = key.indexOf(".");
    const suffix = key.slice(dot + 1);
    if (dot < 0 || !KOHYA.test(key)) {
      unknown.push(key);
      continue;
    }
    const refused = registry.refused.get(suffix);
    if (refused)
      throw new LoraFormatError(`${path}: ${refused} ('${key}') are not supported; only ${andList(registry.labels)}`);
    if (!registry.keys.has(suffix)) {
      unknown.push(key);
      continue;
    }
    const name = key.slice(0, dot).replace(/^lora_te1_/, "lora_te_");
    entry(modules, name, () => new Map<string, Tensor>()).set(suffix, t);
  }
  if (unknown.length > 0)
    throw new LoraFormatError(
      `${path}: ${unknown.length} keys of no supported adapter (${registry.labels.join(", ")}): ${unknown.slice(0, 4).join(", ")}${unknown.length > 4 ? ", …" : ""}`,
    );
  return { modules, ignored };
}

/** Every module must be one method's complete set of factors. */
function checkModules(path: string, modules: ModuleTensors, registry: AdapterRegistry): void {
  if (modules.size === 0) throw new LoraFormatError(`${path}: no LoRA modules`);
  for (const [name, m] of modules) {
    const method = registry.methodFor([...m.keys()]);
    if (typeof method === "string") throw new LoraFormatError(`${path}: module ${name}: ${method}`);
  }
}

/** "a, b and c". */
function andList(items: readonly string[]): string {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}
