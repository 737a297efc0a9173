// AUTOMATIC1111's hypernetworks (AUTOMATIC1111/stable-diffusion-webui
// modules/hypernetworks/hypernetwork.py: `HypernetworkModule`,
// `Hypernetwork.save` / `load`, `parse_dropout_structure`): for each context
// width (768/1024 for cross-attention, 320/640/1280 for self-attention) a
// pair of small MLPs, one for the keys' context and one for the values';
// each is h(x) = x + f(x)·multiplier (multiplier 1 while training), f being
// the layer structure (e.g. 1, 2, 1): Linear layers of width·structure[i],
// each followed by the activation (not after the last unless
// activate_output), a LayerNorm when is_layer_norm, and a Dropout where the
// dropout structure says. The .pt is read through the restricted unpickler
// and written with the safe .pt writer, keys and order as A1111 saves them.
import {
  defOp,
  disposeAll,
  type Generator,
  keep,
  layerNorm,
  linear,
  noGrad,
  rand,
  randn,
  scope,
  type Tensor,
  zeros,
} from "../engine/index.js";
import { dropout, gelu, relu, sigmoid, silu, tanh } from "../engine/ops/nn.js";
import { loadTorchFile } from "../formats/ckpt.js";
import { type PtValue, PyFloat, PyOrderedDict, PyTuple, savePt } from "../formats/pt-write.js";

export class HypernetworkError extends Error {
  override name = "HypernetworkError";
}

const hardswish = defOp("aten::hardswish");
const leakyRelu = defOp("aten::leaky_relu");
const eluOp = defOp("aten::elu");

/** A1111's activation_dict (torch.nn classes by lower-case name); the ones Atelier implements. */
const ACTIVATIONS: Record<string, ((x: Tensor) => Tensor) | null> = {
  linear: null,
  relu,
  leakyrelu: (x) => leakyRelu.t(x.id, 0.01),
  elu: (x) => eluOp.t(x.id, 1, 1, 1),
  swish: (x) => hardswish.t(x.id), // A1111 maps 'swish' to torch.nn.Hardswish
  hardswish: (x) => hardswish.t(x.id),
  tanh,
  sigmoid,
  gelu: (x) => gelu(x),
  silu,
};

export const HYPERNETWORK_ACTIVATIONS = Object.keys(ACTIVATIONS);
export const WEIGHT_INITS = ["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"] as const;
export type WeightInit = (typeof WEIGHT_INITS)[number];

/** The settings a hypernetwork file records (Hypernetwork.save's keys). */
export interface HypernetworkSettings {
  layerStructure: number[];
  /** null = no activation (A1111 treats None like "linear"). */
  activation: string | null;
  weightInit: string;
  layerNorm: boolean;
  useDropout: boolean;
  dropoutStructure: number[];
  lastLayerDropout: boolean;
  activateOutput: boolean;
}

type Step =
  | { kind: "linear"; index: number; inDim: number; outDim: number }
  | { kind: "act"; index: number; fn: (x: Tensor) => Tensor }
  | { kind: "norm"; index: number; dim: number }
  | { kind: "dropout"; index: number; p: number };

/** HypernetworkModule.__init__'s layer sequence for one width. */
function plan(dim: number, s: HypernetworkSettings, where: string): Step[] {
  const ls = s.layerStructure;
  if (ls.length < 2 || ls[0] !== 1 || ls[ls.length - 1] !== 1)
    throw new HypernetworkError(`${where}: layer_structure [${ls}] must start and end with 1`);
  const act = s.activation;
  if (act !== null && !(act in ACTIVATIONS))
    throw new HypernetworkError(
      `${where}: activation '${act}' is not supported (supported: ${HYPERNETWORK_ACTIVATIONS.join(", ")})`,
    );
  const steps: Step[] = [];
  for (let i = 0; i < ls.length - 1; i++) {
    const inDim = Math.trunc(dim * ls[i]);
    const outDim = Math.trunc(dim * ls[i + 1]);
    if (inDim < 1 || outDim < 1) throw new HypernetworkError(`${where}: layer_structure [${ls}] gives an empty layer`);
    steps.push({ kind: "linear", index: steps.length, inDim, outDim });
    const fn = act === null ? null : ACTIVATIONS[act];
    if (fn && !(i >= ls.length - 2 && !s.activateOutput)) steps.push({ kind: "act", index: steps.length, fn });
    if (s.layerNorm) steps.push({ kind: "norm", index: steps.length, dim: outDim });
    const p = s.dropoutStructure[i + 1] ?? 0;
    if (p > 0) {
      if (!(p < 1)) throw new HypernetworkError(`${where}: dropout ${p} must be in [0, 1)`);
      steps.push({ kind: "dropout", index: steps.length, p });
    }
  }
  return steps;
}

/** parse_dropout_structure: 0 everywhere, or 0.3 on the hidden layers (and the last one when asked). */
export function dropoutStructure(layerStructure: number[], useDropout: boolean, lastLayerDropout: boolean): number[] {
  if (!useDropout) return layerStructure.map(() => 0);
  const v = [0, ...Array(Math.max(0, layerStructure.length - 3)).fill(0.3)];
  v.push(lastLayerDropout ? 0.3 : 0, 0);
  return v;
}

/** One HypernetworkModule: its layer plan and its tensors (`linear.N.weight/bias`), owned. */
export class HypernetworkModule {
  constructor(
    readonly dim: number,
    readonly steps: readonly Step[],
    readonly tensors: Map<string, Tensor>,
  ) {}

  /** x + f(x)·multiplier; in training the multiplier is 1 and dropout is on (HypernetworkModule.forward). */
  forward(x: Tensor, multiplier: number, training: boolean): Tensor {
    return scope(() => {
      let h = x;
      for (const s of this.steps) {
        const w = this.tensors.get(`linear.${s.index}.weight`);
        const b = this.tensors.get(`linear.${s.index}.bias`);
        if (s.kind === "linear") h = linear(h, w as Tensor, b);
        else if (s.kind === "norm") h = layerNorm(h, [s.dim], w, b, 1e-5);
        else if (s.kind === "act") h = s.fn(h);
        else if (training) h = dropout(h, s.p, true);
      }
      return x.add(h.mul(training ? 1 : multiplier));
    });
  }

  parameters(): Tensor[] {
    return [...this.tensors.values()];
  }
}

/** A hypernetwork: a (k, v) module pair per context width. Owns its tensors: call dispose(). */
export class Hypernetwork {
  multiplier = 1;
  training = false;

  constructor(
    public name: string,
    readonly settings: HypernetworkSettings,
    readonly layers: Map<number, [HypernetworkModule, HypernetworkModule]>,
    public meta: {
      step: number | null;
      sdCheckpoint: string | null;
      sdCheckpointName: string | null;
      optionalInfo: string | null;
    } = { step: 0, sdCheckpoint: null, sdCheckpointName: null, optionalInfo: null },
  ) {}

  get sizes(): number[] {
    return [...this.layers.keys()];
  }

  parameters(): Tensor[] {
    return [...this.layers.values()].flatMap(([k, v]) => [...k.parameters(), ...v.parameters()]);
  }

  /** The (k, v) contexts of a context of width `dim`, or undefined when no pair has that width. */
  apply(contextK: Tensor, contextV: Tensor): [Tensor, Tensor] | undefined {
    const pair = this.layers.get(contextK.shape[contextK.ndim - 1]);
    if (!pair) return undefined;
    return [
      pair[0].forward(contextK, this.multiplier, this.training),
      pair[1].forward(contextV, this.multiplier, this.training),
    ];
  }

  dispose(): void {
    for (const t of this.parameters()) t.dispose();
    this.layers.clear();
  }
}

export interface CreateHypernetworkOptions {
  name: string;
  /** Context widths that get a module pair: 768, 320, 640, 1280 for SD1 (A1111's default). */
  sizes: number[];
  layerStructure?: number[];
  activation?: string | null;
  weightInit?: string;
  layerNorm?: boolean;
  useDropout?: boolean;
  lastLayerDropout?: boolean;
  activateOutput?: boolean;
  generator?: Generator;
}

/** A new hypernetwork initialised as HypernetworkModule does (Normal: N(0, 0.01) weights, zero biases). */
export function createHypernetwork(o: CreateHypernetworkOptions): Hypernetwork {
  const layerStructure = o.layerStructure ?? [1, 2, 1];
  const useDropout = o.useDropout ?? false;
  const lastLayerDropout = o.lastLayerDropout ?? false;
  const settings: HypernetworkSettings = {
    layerStructure,
    activation: o.activation === undefined ? "linear" : o.activation,
    weightInit: o.weightInit ?? "Normal",
    layerNorm: o.layerNorm ?? false,
    useDropout,
    dropoutStructure: dropoutStructure(layerStructure, useDropout, lastLayerDropout),
    lastLayerDropout,
    activateOutput: o.activateOutput ?? false,
  };
  if (!(WEIGHT_INITS as readonly string[]).includes(settings.weightInit))
    throw new HypernetworkError(
      `weight initialisation '${settings.weightInit}' is not one of ${WEIGHT_INITS.join(", ")}`,
    );
  if (o.sizes.length === 0 || o.sizes.some((s) => !Number.isSafeInteger(s) || s < 1))
    throw new HypernetworkError(`hypernetwork sizes must be positive integers, got [${o.sizes}]`);
  const layers = new Map<number, [HypernetworkModule, HypernetworkModule]>();
  try {
    for (const size of o.sizes) {
      const steps = plan(size, settings, `hypernetwork ${o.name}`);
      const make = () => new HypernetworkModule(size, steps, initTensors(steps, settings, o.generator));
      layers.set(size, [make(), make()]);
    }
  } catch (e) {
    for (const [k, v] of layers.values()) disposeAll([k.tensors, v.tensors]);
    throw e;
  }
  return new Hypernetwork(o.name, settings, layers);
}

function initTensors(steps: readonly Step[], s: HypernetworkSettings, generator?: Generator): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  noGrad(() => {
    for (const st of steps) {
      if (st.kind === "norm") {
        // A1111 initialises LayerNorm like "Normal" whatever the setting: N(0, 0.01) weight, zero bias
        out.set(`linear.${st.index}.weight`, keep(scope(() => randn([st.dim], { generator }).mul(0.01))));
        out.set(`linear.${st.index}.bias`, keep(zeros([st.dim])));
      } else if (st.kind === "linear") {
        const [fanIn, fanOut] = [st.inDim, st.outDim];
        const shape = [fanOut, fanIn];
        const gain = Math.SQRT2; // kaiming's gain for relu and for leaky_relu with a = 0
        const w = keep(
          scope(() => {
            switch (s.weightInit) {
              case "XavierUniform":
                return uniform(shape, Math.sqrt(6 / (fanIn + fanOut)), generator);
              case "XavierNormal":
                return randn(shape, { generator }).mul(Math.sqrt(2 / (fanIn + fanOut)));
              case "KaimingUniform":
                return uniform(shape, gain * Math.sqrt(3 / fanIn), generator);
              case "KaimingNormal":
                return randn(shape, { generator }).mul(gain / Math.sqrt(fanIn));
              default:
                return randn(shape, { generator }).mul(0.01);
            }
          }),
        );
        out.set(`linear.${st.index}.weight`, w);
        out.set(`linear.${st.index}.bias`, keep(zeros([fanOut])));
      }
    }
  });
  return out;
}

const uniform = (shape: number[], bound: number, generator?: Generator) =>
  rand(shape, { generator })
    .mul(2 * bound)
    .sub(bound);

// ---- files ------------------------------------------------------------------------------

const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);

/** fix_old_state_dict: the first files named their two Linear layers linear1 / linear2. */
const OLD_KEYS: Record<string, string> = {
  "linear1.bias": "linear.0.bias",
  "linear1.weight": "linear.0.weight",
  "linear2.bias": "linear.1.bias",
  "linear2.weight": "linear.1.weight",
};

/**
 * Reads an A1111 hypernetwork .pt (Hypernetwork.load): int keys are widths
 * holding (k, v) state dicts; the settings default as A1111's do for files
 * that lack them. Every tensor is checked against the layer plan.
 */
export function loadHypernetwork(path: string): Hypernetwork {
  let root: unknown;
  try {
    root = loadTorchFile(path);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new HypernetworkError(msg.includes(path) ? msg : `${path}: ${msg}`);
  }
  const owned: Tensor[] = [];
  const walk = (v: unknown): void => {
    if (v instanceof Map) for (const x of v.values()) walk(x);
    else if (Array.isArray(v)) for (const x of v) walk(x);
    else if (typeof v === "object" && v !== null && typeof (v as Tensor).withBytes === "function")
      owned.push(v as Tensor);
  };
  walk(root);
  const used = new Set<Tensor>();
  try {
    if (!(root instanceof Map)) throw new HypernetworkError(`${path}: not a hypernetwork (the file holds no dict)`);
    const get = (k: string) => root.get(k);
    const layerStructure = Array.isArray(get("layer_structure"))
      ? (get("layer_structure") as unknown[]).map((x) => Number(x))
      : [1, 2, 1];
    const activation = typeof get("activation_func") === "string" ? (get("activation_func") as string) : null;
    const useDropoutFlag = get("use_dropout") === true;
    const lastLayerDropout = get("last_layer_dropout") === true;
    let ds = Array.isArray(get("dropout_structure")) ? (get("dropout_structure") as unknown[]).map(Number) : null;
    const useDropout = ds?.some((x) => x !== 0) ? true : useDropoutFlag;
    ds ??= dropoutStructure(layerStructure, useDropout, lastLayerDropout);
    const settings: HypernetworkSettings = {
      layerStructure,
      activation,
      weightInit:
        typeof get("weight_initialization") === "string" ? (get("weight_initialization") as string) : "Normal",
      layerNorm: get("is_layer_norm") === true,
      useDropout,
      dropoutStructure: ds,
      lastLayerDropout,
      // A1111's load: state_dict.get('activate_output', True)
      activateOutput: get("activate_output") === undefined ? true : get("activate_output") === true,
    };
    const layers = new Map<number, [HypernetworkModule, HypernetworkModule]>();
    for (const [key, value] of root) {
      if (typeof key !== "number") continue;
      const where = `${path}: width ${key}`;
      if (!Array.isArray(value) || value.length !== 2 || !value.every((x) => x instanceof Map))
        throw new HypernetworkError(`${where}: expected a (k, v) pair of state dicts`);
      const steps = plan(key, settings, where);
      const pair = (value as Map<unknown, unknown>[]).map((sd, i) => {
        const tensors = new Map<string, Tensor>();
        for (const [k, t] of sd) {
          const name = OLD_KEYS[String(k)] ?? String(k);
          if (!owned.includes(t as Tensor)) throw new HypernetworkError(`${where}: ${String(k)} is not a tensor`);
          tensors.set(name, t as Tensor);
        }
        checkTensors(`${where} (${i === 0 ? "k" : "v"})`, steps, tensors);
        for (const t of tensors.values()) used.add(t);
        return new HypernetworkModule(key, steps, floatCopies(tensors));
      }) as [HypernetworkModule, HypernetworkModule];
      layers.set(key, pair);
    }
    if (layers.size === 0) throw new HypernetworkError(`${path}: not a hypernetwork (no width keys with layers)`);
    const name =
      typeof get("name") === "string" ? (get("name") as string) : path.replace(/^.*[\\/]/, "").replace(/\.[^.]*$/, "");
    return new Hypernetwork(name, settings, layers, {
      step: num(get("step")) ?? 0,
      sdCheckpoint: typeof get("sd_checkpoint") === "string" ? (get("sd_checkpoint") as string) : null,
      sdCheckpointName: typeof get("sd_checkpoint_name") === "string" ? (get("sd_checkpoint_name") as string) : null,
      optionalInfo: typeof get("optional_info") === "string" ? (get("optional_info") as string) : null,
    });
  } finally {
    for (const t of owned) t.dispose();
  }
}

function floatCopies(tensors: Map<string, Tensor>): Map<string, Tensor> {
  return new Map([...tensors].map(([k, t]) => [k, keep(scope(() => t.to("float32").contiguous().clone()))]));
}

/** Every tensor the plan needs, of the plan's shape, and nothing else (load_state_dict strict). */
function checkTensors(where: string, steps: readonly Step[], tensors: Map<string, Tensor>): void {
  const want = new Map<string, number[]>();
  for (const s of steps) {
    if (s.kind === "linear") {
      want.set(`linear.${s.index}.weight`, [s.outDim, s.inDim]);
      want.set(`linear.${s.index}.bias`, [s.outDim]);
    } else if (s.kind === "norm") {
      want.set(`linear.${s.index}.weight`, [s.dim]);
      want.set(`linear.${s.index}.bias`, [s.dim]);
    }
  }
  for (const [k, shape] of want) {
    const t = tensors.get(k);
    if (!t) throw new HypernetworkError(`${where}: missing ${k} (the settings' layer plan needs it)`);
    if (t.shape.join(",") !== shape.join(","))
      throw new HypernetworkError(`${where}: ${k} is [${t.shape}], the settings' layer plan needs [${shape}]`);
  }
  const extra = [...tensors.keys()].filter((k) => !want.has(k));
  if (extra.length)
    throw new HypernetworkError(`${where}: unexpected ${extra.join(", ")} for the settings' layer plan`);
}

/** Writes `hn` as A1111's Hypernetwork.save does: widths first, then the settings, in its key order. */
export function saveHypernetwork(path: string, hn: Hypernetwork): void {
  const s = hn.settings;
  const sd = (m: HypernetworkModule) =>
    new PyOrderedDict(new Map<string, PtValue>([...m.tensors].map(([k, t]) => [k, t.detach()])));
  const entries = new Map<string | number, PtValue>();
  const detached: Tensor[] = [];
  try {
    for (const [size, [k, v]] of hn.layers) {
      const [a, b] = [sd(k), sd(v)];
      for (const x of [...a.entries.values(), ...b.entries.values()]) detached.push(x as Tensor);
      entries.set(size, new PyTuple([a, b]));
    }
    entries.set("step", hn.meta.step);
    entries.set("name", hn.name);
    entries.set(
      "layer_structure",
      s.layerStructure.map((x) => new PyFloat(x)),
    );
    entries.set("activation_func", s.activation);
    entries.set("is_layer_norm", s.layerNorm);
    entries.set("weight_initialization", s.weightInit);
    entries.set("sd_checkpoint", hn.meta.sdCheckpoint);
    entries.set("sd_checkpoint_name", hn.meta.sdCheckpointName);
    entries.set("activate_output", s.activateOutput);
    entries.set("use_dropout", s.useDropout);
    entries.set(
      "dropout_structure",
      s.dropoutStructure.map((x) => (Number.isInteger(x) ? x : new PyFloat(x))),
    );
    // A1111: (dropout_structure[-2] != 0) when a dropout structure exists
    entries.set("last_layer_dropout", (s.dropoutStructure[s.dropoutStructure.length - 2] ?? 0) !== 0);
    entries.set("optional_info", hn.meta.optionalInfo || null);
    savePt(path, entries);
  } finally {
    for (const t of detached) t.dispose();
  }
}

// ---- applying ---------------------------------------------------------------------------

/** What `applyHypernetworks` attached; `remove()` puts the attentions back. */
export interface AppliedHypernetworks {
  /** Attention paths that got a transform. */
  attached: string[];
  /** Widths of each hypernetwork that no attention of the model has (A1111 ignores those modules). */
  unused: Map<string, number[]>;
  remove(): void;
}

interface AttentionLike {
  config: { queryDim: number; crossAttentionDim?: number };
  kvContext: ((context: Tensor) => [Tensor, Tensor]) | null;
}

const isAttention = (m: unknown): m is AttentionLike =>
  typeof m === "object" && m !== null && "kvContext" in m && "config" in m;

/**
 * Attaches hypernetworks to every attention of a UNet whose context width
 * one of them has (cross-attention: the text width; self-attention: the
 * channels), chained in order as A1111's apply_hypernetworks does. A
 * hypernetwork none of whose widths any attention has is an error naming it.
 */
export function applyHypernetworks(
  unet: { namedModules(): Map<string, unknown> },
  hypernetworks: readonly Hypernetwork[],
): AppliedHypernetworks {
  const attentions = [...unet.namedModules()].filter(([, m]) => isAttention(m)) as [string, AttentionLike][];
  const widths = new Set(attentions.map(([, a]) => a.config.crossAttentionDim ?? a.config.queryDim));
  const unused = new Map<string, number[]>();
  for (const hn of hypernetworks) {
    const miss = hn.sizes.filter((s) => !widths.has(s));
    if (miss.length === hn.sizes.length)
      throw new HypernetworkError(
        `hypernetwork '${hn.name}' has widths ${hn.sizes.join(", ")}, and no attention layer of this model has any of them (its context widths: ${[...widths].sort((a, b) => a - b).join(", ")})`,
      );
    if (miss.length) unused.set(hn.name, miss);
  }
  const attached: string[] = [];
  const previous: [AttentionLike, AttentionLike["kvContext"]][] = [];
  for (const [path, a] of attentions) {
    const width = a.config.crossAttentionDim ?? a.config.queryDim;
    const chain = hypernetworks.filter((h) => h.layers.has(width));
    if (chain.length === 0) continue;
    previous.push([a, a.kvContext]);
    a.kvContext = (context) => {
      let k = context;
      let v = context;
      for (const h of chain) [k, v] = h.apply(k, v) ?? [k, v];
      return [k, v];
    };
    attached.push(path);
  }
  return {
    attached,
    unused,
    remove() {
      for (const [a, old] of previous) a.kvContext = old;
      previous.length = 0;
    },
  };
}
