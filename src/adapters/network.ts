// A network of adapters over a Stable Diffusion model (kohya-ss/sd-scripts
// networks/lora.py LoRANetwork; KohakuBlueleaf/LyCORIS lycoris/wrapper.py
// LycorisNetwork): modules of one weight-delta method (injectNetwork; LoRA/
// LoCon with injectLora) or of a file's methods (attachLora) replace the
// targeted layers in the module trees (never a patched forward), the base
// weights stay frozen and untouched, and the network saves as a kohya
// safetensors file with ss_* and modelspec.* metadata (train_network.py;
// library/sai_model_spec.py) that A1111, ComfyUI and diffusers load.
import { basename, extname } from "node:path";
import { type DType, type Generator, scope, type Tensor } from "../engine/index.js";
import { saveSafetensors } from "../formats/safetensors.js";
import { ClipTextModel } from "../models/clip/text-encoder.js";
import { UNet2DConditionModel } from "../models/unet/index.js";
import type { Module } from "../nn/index.js";
import type { AdapterMethod, AdapterModule, AdapterTarget, Layer } from "./adapter.js";
import { type LoraDropout, LoraModule, type LoraOptions, lora } from "./lora.js";
import {
  disposeLoraFile,
  type LoadLoraFileOptions,
  type LoraFile,
  LoraFormatError,
  loadLoraFile,
} from "./lora-file.js";
import { norm } from "./norm.js";
import { ADAPTER_REGISTRY, type AdapterRegistry } from "./registry.js";
import { type Component, type LoraModelParts, layerIndex, loraTargets } from "./targets.js";
import { AdapterLayer } from "./wrapped-layer.js";

/** What ss_network_* says about a network. */
export interface NetworkSpec {
  /** ss_network_module: "networks.lora" (LoRA/LoCon) or "lycoris.kohya". */
  module: string;
  /** ss_network_dim / ss_network_alpha: a number, or "Dynamic" when modules differ. */
  dim: string;
  alpha: string;
  /** ss_network_args (kohya's network_args, values as strings): conv_dim, conv_alpha, rank_dropout, … */
  args: Record<string, string>;
  /** ss_network_dropout: "None" when unset. */
  dropout: string;
}

/** The adapters of a model, of any weight-delta method (the name is kohya's). */
export class LoraNetwork {
  #removed = false;

  constructor(
    readonly model: LoraModelParts,
    readonly modules: readonly AdapterModule[],
    readonly spec: NetworkSpec,
    /** Base parameters frozen by injectNetwork and their former requiresGrad, restored by remove(). */
    private readonly frozen: [Tensor, boolean][] = [],
  ) {}

  get removed(): boolean {
    return this.#removed;
  }

  /** "sd_v2" when the model's cross-attention / text width is 1024, else "sd_v1" (kohya ss_base_model_version). */
  get baseModelVersion(): "sd_v1" | "sd_v2" {
    const { unet, textEncoder } = this.model;
    if (unet instanceof UNet2DConditionModel) return unet.config.crossAttentionDim === 1024 ? "sd_v2" : "sd_v1";
    if (textEncoder instanceof ClipTextModel) return textEncoder.config.hiddenSize === 1024 ? "sd_v2" : "sd_v1";
    return "sd_v1";
  }

  /** The tensors to optimize (only the adapters'; of one network part when asked, for per-part learning rates). */
  trainableParameters(component?: Component): Tensor[] {
    this.#check();
    return this.modules
      .filter((m) => !component || m.target.component === component)
      .flatMap((m) => m.trainableParameters());
  }

  /** kohya keys → the network's own tensors (not copies): `<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`, … */
  stateDict(): Map<string, Tensor> {
    this.#check();
    const out = new Map<string, Tensor>();
    for (const m of this.modules) for (const [k, t] of m.adapterTensors()) out.set(`${m.target.name}.${k}`, t);
    return out;
  }

  /** A1111's <lora:name:te:unet>: the text encoder's and the UNet's multipliers. */
  setMultiplier(textEncoder: number, unet = textEncoder): void {
    for (const m of this.modules) m.multiplier = m.target.component === "unet" ? unet : textEncoder;
  }

  /**
   * Folds multiplier·ΔW into the base weights and puts the original layers
   * back (kohya merge_to): the model keeps the change. The adapter tensors
   * stay readable (stateDict) until remove().
   */
  merge(): void {
    this.#check();
    for (const m of this.modules) {
      if (!m.merged) m.merge();
      takeOut(this.model, m);
    }
  }

  /** Puts the original layers back, frees the adapter tensors and unfreezes what injectNetwork froze. Idempotent. */
  remove(): void {
    if (this.#removed) return;
    for (const m of [...this.modules].reverse()) {
      takeOut(this.model, m);
      m.disposeAdapter();
    }
    for (const [t, was] of this.frozen) if (!t.disposed) t.requiresGrad_(was);
    this.#removed = true;
  }

  #check(): void {
    if (this.#removed) throw new Error("this LoRA network was removed");
  }
}

/** Takes an adapter out of its tree, also from the middle of a stack of adapters. */
function takeOut(model: LoraModelParts, m: AdapterModule): void {
  const root = model[m.target.component];
  if (!root) return;
  let cur: Module;
  try {
    cur = root.getModule(m.target.path);
  } catch {
    return;
  }
  if (cur === m) {
    root.replaceModule(m.target.path, m.original);
    return;
  }
  while (cur instanceof AdapterLayer) {
    if (cur.original === m) {
      cur.replaceOriginal(m.original);
      return;
    }
    cur = cur.original;
  }
}

export interface InjectLoraOptions extends LoraDropout {
  /** network_dim. */
  rank: number;
  /** network_alpha (default 1, kohya's default; 0 means rank). */
  alpha?: number;
  /** Adapt the UNet (default true). */
  unet?: boolean;
  /** Adapt the text encoder (default true). */
  textEncoder?: boolean;
  /** conv_dim: also adapt the 3×3 convs of resnets and samplers (LoCon). */
  convRank?: number;
  /** conv_alpha (default 1). */
  convAlpha?: number;
  /** Draws lora_down's initial values. */
  generator?: Generator;
  /** dtype of the adapter tensors (default: each layer's). */
  dtype?: DType;
  /** Start multiplier (default 1). */
  multiplier?: number;
  /** Set requiresGrad false on every base parameter (default true); remove() restores it. */
  freezeBase?: boolean;
}

export interface InjectNetworkOptions<Options> {
  /** The method's options for each target (convs may get their own rank). */
  moduleOptions: (target: AdapterTarget) => Options;
  /** Adapt the UNet (default true). */
  unet?: boolean;
  /** Adapt the text encoder (default true). */
  textEncoder?: boolean;
  /** Also adapt the 3×3 convs of resnets and samplers (LoCon's conv_dim). */
  conv?: boolean;
  /** Start multiplier (default 1). */
  multiplier?: number;
  /** Set requiresGrad false on every base parameter (default true); remove() restores it. */
  freezeBase?: boolean;
  /** The network's ss_network_* (default: the method's network module, dim and alpha "None"). */
  spec?: NetworkSpec;
  /** Also train the norm layers of the targeted containers (LyCORIS train_norm: ./norm.ts modules, zero at start). */
  trainNorm?: boolean;
  /** Module dropout of the norm modules (LyCORIS passes the network's to NormModule). */
  normModuleDropout?: number;
}

/**
 * New trainable modules of one method on kohya's default targets. A target
 * the method does not support is refused by name; on any failure the model
 * is left as it was.
 */
export function injectNetwork<Options>(
  model: LoraModelParts,
  method: AdapterMethod<Options>,
  o: InjectNetworkOptions<Options>,
): LoraNetwork {
  const targets = loraTargets(model, {
    unet: o.unet,
    textEncoder: o.textEncoder,
    conv: o.conv ?? false,
    norms: o.trainNorm ?? false,
  });
  if (targets.length === 0)
    throw new Error(`injectNetwork (${method.label}): no layer to adapt (neither UNet nor text encoder selected)`);
  for (const t of targets)
    if (t.kind !== "norm" && !method.supports(t.kind))
      throw new Error(`${t.name}: ${method.label} does not adapt ${t.kind} layers`);
  const frozen: [Tensor, boolean][] = [];
  if (o.freezeBase ?? true)
    for (const part of [model.unet, model.textEncoder])
      for (const t of part?.parameters() ?? []) {
        frozen.push([t, t.requiresGrad]);
        t.requiresGrad_(false);
      }
  const modules: AdapterModule[] = [];
  try {
    for (const t of targets) {
      const root = model[t.component]!;
      const layer = root.getModule(t.path) as Layer;
      const m =
        t.kind === "norm"
          ? norm.create(t, layer, { moduleDropout: o.normModuleDropout })
          : method.create(t, layer, o.moduleOptions(t));
      m.multiplier = o.multiplier ?? 1;
      root.replaceModule(t.path, m);
      modules.push(m);
    }
  } catch (e) {
    for (const m of modules.reverse()) {
      takeOut(model, m);
      m.disposeAdapter();
    }
    for (const [t, was] of frozen) t.requiresGrad_(was);
    throw e;
  }
  const spec = o.spec ?? { module: method.networkModule, dim: "None", alpha: "None", args: {}, dropout: "None" };
  return new LoraNetwork(model, modules, spec, frozen);
}

/** New trainable LoRA (LoCon with convRank) modules on kohya's default targets (injectNetwork with kohya's options). */
export function injectLora(model: LoraModelParts, o: InjectLoraOptions): LoraNetwork {
  const positive = (v: number | undefined, what: string) => {
    if (v !== undefined && (!Number.isInteger(v) || v < 1))
      throw new Error(`LoRA ${what} must be a positive integer, got ${v}`);
  };
  positive(o.rank, "rank");
  positive(o.convRank, "conv rank");
  for (const [k, v] of Object.entries({
    dropout: o.dropout,
    rankDropout: o.rankDropout,
    moduleDropout: o.moduleDropout,
  }))
    if (v !== undefined && !(v >= 0 && v < 1)) throw new Error(`LoRA ${k} must be in [0, 1), got ${v}`);
  const conv = o.convRank !== undefined;
  const args: Record<string, string> = {};
  if (conv) {
    args.conv_dim = String(o.convRank);
    args.conv_alpha = String(o.convAlpha ?? 1);
  }
  if (o.rankDropout) args.rank_dropout = String(o.rankDropout);
  if (o.moduleDropout) args.module_dropout = String(o.moduleDropout);
  const moduleOptions = (t: AdapterTarget): LoraOptions => {
    const isConv = t.kind === "conv3x3" || t.kind === "conv";
    return {
      rank: isConv ? o.convRank! : o.rank,
      alpha: isConv ? (o.convAlpha ?? 1) : (o.alpha ?? 1),
      dropout: o.dropout,
      rankDropout: o.rankDropout,
      moduleDropout: o.moduleDropout,
      generator: o.generator,
      dtype: o.dtype,
    };
  };
  return injectNetwork(model, lora, {
    moduleOptions,
    unet: o.unet,
    textEncoder: o.textEncoder,
    conv,
    multiplier: o.multiplier,
    freezeBase: o.freezeBase,
    spec: {
      module: lora.networkModule,
      dim: String(o.rank),
      alpha: String(o.alpha ?? 1),
      args,
      dropout: o.dropout ? String(o.dropout) : "None",
    },
  });
}

export interface AttachLoraOptions {
  /** Text-encoder multiplier (default 1). */
  multiplier?: number;
  /** UNet multiplier (default: `multiplier`). */
  unetMultiplier?: number;
  /** Let the loaded tensors train (resuming a LoRA); default false. */
  trainable?: boolean;
  /** The methods a module's keys may belong to (default: Atelier's). */
  registry?: AdapterRegistry;
}

/**
 * Wraps the layers a loaded file names, in bypass mode. It consumes the
 * file's tensors (also on failure). Every module must match a layer of this
 * model with fitting shapes, else nothing is attached and the error names
 * the file and the modules.
 */
export function attachLora(model: LoraModelParts, file: LoraFile, o: AttachLoraOptions = {}): LoraNetwork {
  const te = o.multiplier ?? 1;
  const unet = o.unetMultiplier ?? te;
  const index = layerIndex(model);
  const registry = o.registry ?? ADAPTER_REGISTRY;
  const modules: AdapterModule[] = [];
  const methods = new Set<AdapterMethod<never>>();
  try {
    const missing = [...file.modules.keys()].filter((n) => !index.has(n));
    if (missing.length > 0) {
      const parts = [model.unet ? "" : "no UNet", model.textEncoder ? "" : "no text encoder"].filter(Boolean);
      throw new LoraFormatError(
        `${missing.length} of ${file.modules.size} modules match no layer of this model` +
          `${parts.length ? ` (it has ${parts.join(" and ")})` : " (a LoRA for another base model?)"}: ${missing.slice(0, 3).join(", ")}${missing.length > 3 ? ", …" : ""}`,
      );
    }
    for (const [name, tensors] of file.modules) {
      const t = index.get(name)!;
      const method = registry.methodFor([...tensors.keys()]);
      if (typeof method === "string") throw new LoraFormatError(`module ${name}: ${method}`);
      if (!method.supports(t.kind))
        throw new LoraFormatError(`module ${name}: ${method.label} does not adapt ${t.kind} layers`);
      methods.add(method);
      const root = model[t.component]!;
      file.modules.delete(name);
      const m = method.fromTensors(t, root.getModule(t.path) as Layer, tensors);
      m.multiplier = t.component === "unet" ? unet : te;
      root.replaceModule(t.path, m);
      modules.push(m);
    }
  } catch (e) {
    for (const m of modules.reverse()) {
      takeOut(model, m);
      m.disposeAdapter();
    }
    disposeLoraFile(file);
    const message = (e as Error).message;
    throw new LoraFormatError(message.startsWith(file.path) ? message : `${file.path}: ${message}`);
  }
  if (o.trainable) for (const m of modules) for (const t of m.trainableParameters()) t.requiresGrad_(true);
  return new LoraNetwork(model, modules, specOf(file, modules, methods));
}

/** Reads a LoRA file and attaches it (loadLoraFile + attachLora). */
export function loadLora(
  model: LoraModelParts,
  path: string,
  o: AttachLoraOptions & LoadLoraFileOptions = {},
): LoraNetwork {
  return attachLora(model, loadLoraFile(path, o), o);
}

/** ss_network_* from the file's metadata, else from its modules (kohya writes dim and alpha of LoRA modules only). */
function specOf(file: LoraFile, modules: readonly AdapterModule[], methods: Set<AdapterMethod<never>>): NetworkSpec {
  // one method's network module; LyCORIS's kohya module loads a mix of methods
  const networkModules = new Set([...methods].map((m) => m.networkModule));
  const networkModule = networkModules.size > 1 ? "lycoris.kohya" : ([...networkModules][0] ?? lora.networkModule);
  const values = (f: (m: LoraModule) => number) => {
    const set = new Set(modules.filter((m) => m instanceof LoraModule).map((m) => f(m as LoraModule)));
    return set.size === 1 ? String([...set][0]) : "Dynamic";
  };
  let args: Record<string, string> = {};
  try {
    args = JSON.parse(file.metadata.ss_network_args ?? "{}");
  } catch {
    // not JSON: leave it out
  }
  return {
    module: file.metadata.ss_network_module ?? networkModule,
    dim: file.metadata.ss_network_dim ?? values((m) => m.rank),
    alpha: file.metadata.ss_network_alpha ?? values((m) => m.alpha),
    args,
    dropout: file.metadata.ss_network_dropout ?? "None",
  };
}

export interface SaveLoraOptions {
  /** Save precision (default: the tensors' own). */
  dtype?: DType;
  /** modelspec.title (default: the file's name). */
  title?: string;
  /** A v-prediction base (SD 2.x 768-v). */
  vPrediction?: boolean;
  /** Training resolution for modelspec.resolution (default 512, 768 for v-prediction SD2). */
  resolution?: number | [number, number];
  /** Clip skip used in training (modelspec.encoder_layer). */
  clipSkip?: number;
}

/** ISO-8601 local time without zone, as Python's datetime.fromtimestamp(int(t)).isoformat(). */
function isoLocal(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The ss_* and modelspec.* metadata kohya writes for a network (every value a string). */
export function loraMetadata(
  network: LoraNetwork,
  outputName: string,
  o: SaveLoraOptions = {},
): Record<string, string> {
  const v2 = network.baseModelVersion === "sd_v2";
  const reso = o.resolution ?? (v2 && o.vPrediction ? 768 : 512);
  const [w, h] = typeof reso === "number" ? [reso, reso] : reso;
  const s = network.spec;
  const md: Record<string, string> = {
    ss_network_module: s.module,
    ss_network_dim: s.dim,
    ss_network_alpha: s.alpha,
    ss_network_dropout: s.dropout,
    ss_base_model_version: network.baseModelVersion,
    ss_v2: v2 ? "True" : "False",
    ss_output_name: outputName,
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": `${v2 ? (o.vPrediction ? "stable-diffusion-v2-768-v" : "stable-diffusion-v2-512") : "stable-diffusion-v1"}/lora`,
    "modelspec.implementation": "diffusers",
    "modelspec.title": o.title ?? outputName,
    "modelspec.resolution": `${w}x${h}`,
    "modelspec.date": isoLocal(new Date()),
    "modelspec.prediction_type": o.vPrediction ? "v" : "epsilon",
  };
  if (Object.keys(s.args).length > 0) md.ss_network_args = JSON.stringify(s.args);
  if (o.clipSkip !== undefined) md["modelspec.encoder_layer"] = String(o.clipSkip);
  return md;
}

/**
 * Writes the network as a kohya-format safetensors file, atomically.
 * `metadata` (the trainer's ss_* values: ss_learning_rate, ss_steps, …) is
 * added to and may override the defaults, except the network's own shape
 * (ss_network_module, ss_network_dim, ss_network_alpha).
 */
export function saveLora(
  path: string,
  network: LoraNetwork,
  metadata: Record<string, string> = {},
  o: SaveLoraOptions = {},
): void {
  const defaults = loraMetadata(network, basename(path, extname(path)), o);
  const md = {
    ...defaults,
    ...metadata,
    ss_network_module: defaults.ss_network_module,
    ss_network_dim: defaults.ss_network_dim,
    ss_network_alpha: defaults.ss_network_alpha,
  };
  scope(() => {
    const tensors = new Map<string, Tensor>();
    for (const [k, t] of network.stateDict()) tensors.set(k, o.dtype && t.dtype !== o.dtype ? t.to(o.dtype) : t);
    saveSafetensors(path, tensors, md);
  });
}
