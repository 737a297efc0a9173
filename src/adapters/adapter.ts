// One adapter, one file, one interface (after KohakuBlueleaf/LyCORIS
// lycoris/modules/: a module class declares `name`, `support_module`,
// `weight_list` and `weight_list_det` as data; lycoris/modules/__init__.py
// lists them). Three kinds of adapter change a Stable Diffusion model:
// - "weight-delta": wraps a Linear/Conv2d and adds ΔW (LoRA, LoCon, LoHa,
//   LoKr; later DoRA, IA3, full). The only kind implemented here.
// - "embedding": new token vectors in the text encoder's embedding table
//   (textual inversion, A1111 modules/textual_inversion/textual_inversion.py).
// - "context-hook": transforms the cross-attention context before to_k /
//   to_v (A1111 modules/hypernetworks/hypernetwork.py, apply_hypernetworks).
// A weight-delta method wraps a layer by replacing it in the module tree
// with a module that runs the original layer plus its delta ("bypass"), can
// fold the delta into the weight ("merge"), and reads and writes its own
// tensors under kohya's module names.
import type { Tensor } from "../engine/index.js";
import type { Forward, Module } from "../nn/index.js";

/** What kind of layer a target is: adapters say which they support. */
/** "norm": a GroupNorm / LayerNorm (LyCORIS train_norm; weightShape [channels]). */
export type LayerKind = "linear" | "conv1x1" | "conv3x3" | "conv" | "norm";

/** A layer in the tree: a module with a one-tensor forward. */
export type Layer = Module & Forward;

/** One layer an adapter is attached to. */
export interface AdapterTarget {
  /** kohya's module name, e.g. lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q */
  name: string;
  /** The path in the model tree, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q */
  path: string;
  /** Which network the layer is in. */
  component: "unet" | "textEncoder";
  kind: LayerKind;
  /** The original layer's weight shape. */
  weightShape: number[];
}

/** An adapter module in the tree: wraps the original layer; forward = original(x) + multiplier·delta path. */
export interface AdapterModule extends Layer {
  readonly target: AdapterTarget;
  /** The wrapped original layer (restored on removal); another adapter when they are stacked. */
  readonly original: Layer;
  /** Scales the delta at run time (A1111's <lora:name:multiplier>). */
  multiplier: number;
  /** True while the delta is folded into the original weight (forward then skips the delta path). */
  readonly merged: boolean;
  /** ΔW in the original weight's shape, multiplier and alpha/rank scale applied (float32). */
  deltaWeight(): Tensor;
  /** Folds multiplier·ΔW into the original weight. */
  merge(): void;
  /** Subtracts what merge() added. */
  unmerge(): void;
  /** The adapter's own tensors under their file keys, without the module name (lora_down.weight, alpha, …). */
  adapterTensors(): Map<string, Tensor>;
  /** The trainable parameters (never the original layer's). */
  trainableParameters(): Tensor[];
  /** Frees the adapter's own tensors (never the original layer's). */
  disposeAdapter(): void;
}

/** Which part of the model an adapter changes (see the header). */
export type AdapterKind = "weight-delta" | "embedding" | "context-hook";

/**
 * The keys of one module of a weight-delta method in a kohya-layout file,
 * without the module name (`<module>.<key>`), as data: ./registry.ts
 * derives the key list, detection and the messages for incomplete modules
 * from it, and tools/inspect.ts its classifier.
 */
export interface AdapterKeys {
  /** Every key a module may hold (LyCORIS weight_list, less what `refused` names). */
  readonly all: readonly string[];
  /** A module is this method's when it holds every key of one of these sets (LyCORIS weight_list_det). */
  readonly detect: readonly (readonly string[])[];
  /** What a complete module holds: per entry, every key of one of its alternatives. */
  readonly required: readonly (readonly (readonly string[])[])[];
  /** Keys whose first dimension is the rank alpha divides; the first present counts. None present: scale 1. */
  readonly rank: readonly string[];
  /** Keys of variants that files of this method may have and Atelier refuses, with what they are. */
  readonly refused: Readonly<Record<string, string>>;
  /** Methods this one wraps: when both detect a module, it is this one's (DoRA over LoRA, LoHa, LoKr). */
  readonly overrides?: readonly string[];
}

/** What every adapter method declares, whatever its kind. */
export interface AdapterInfo {
  /** Short id: "lora", "loha", "lokr". */
  readonly name: string;
  /** For messages: "LoRA/LoCon", "LoHa". */
  readonly label: string;
  readonly kind: AdapterKind;
}

/** A weight-delta method: which layers it wraps, its keys, how it builds modules. */
export interface AdapterMethod<Options = unknown> extends AdapterInfo {
  readonly kind: "weight-delta";
  /** ss_network_module of a network of only this method: "networks.lora" (kohya) or "lycoris.kohya". */
  readonly networkModule: string;
  readonly keys: AdapterKeys;
  /** Which layer kinds it can wrap. */
  supports(kind: LayerKind): boolean;
  /** A fresh, trainable adapter around `original` (init as the reference: zero up/second factor). */
  create(target: AdapterTarget, original: Layer, options: Options): AdapterModule;
  /**
   * An adapter around `original` holding tensors read from a file (keys
   * without the module name). It takes ownership of the tensors; shapes that
   * do not fit the layer are refused with the module's name.
   */
  fromTensors(target: AdapterTarget, original: Layer, tensors: Map<string, Tensor>): AdapterModule;
}

/**
 * An embedding method (room for textual inversion; none is implemented):
 * it adds token vectors rather than wrapping layers. What it will need from
 * the text encoder (its token embedding table, the tokenizer) is decided
 * when the first one is written; until then it has no members to fake.
 */
export interface EmbeddingMethod extends AdapterInfo {
  readonly kind: "embedding";
}

/**
 * A context-hook method (room for A1111 hypernetworks; none is
 * implemented): it maps the cross-attention context to the context that
 * to_k and to_v see. Its hook point in the attention block is decided when
 * the first one is written.
 */
export interface ContextHookMethod extends AdapterInfo {
  readonly kind: "context-hook";
}

/** Any adapter method; only weight-delta methods have keys per module, create() and fromTensors(). */
export type Adapter = AdapterMethod<never> | EmbeddingMethod | ContextHookMethod;

export function isWeightDelta(a: Adapter): a is AdapterMethod<never> {
  return a.kind === "weight-delta";
}
