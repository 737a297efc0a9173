// The one interface every adapter method implements (DESIGN.md principle 4,
// after LyCORIS lycoris/modules/): LoRA, LoCon, LoHa, LoKr, hypernetworks,
// embeddings. A method wraps a layer by replacing it in the module tree with
// a module that runs the original layer plus its delta ("bypass"), can fold
// the delta into the weight ("merge"), and reads and writes its own tensors
// under kohya's module names.
import type { Tensor } from "../engine/index.js";
import type { Forward, Module } from "../nn/index.js";

/** What kind of layer a target is: adapters say which they support. */
export type LayerKind = "linear" | "conv1x1" | "conv3x3" | "conv";

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

/** A method: which layers it wraps, how it recognises its files, how it builds modules. */
export interface AdapterMethod<Options> {
  readonly name: string;
  /** Which layer kinds it can wrap. */
  supports(kind: LayerKind): boolean;
  /** True when a file's keys for one module (without the module name) are this method's. */
  detect(keys: readonly string[]): boolean;
  /** A fresh, trainable adapter around `original` (init as the reference: zero up/second factor). */
  create(target: AdapterTarget, original: Layer, options: Options): AdapterModule;
  /**
   * An adapter around `original` holding tensors read from a file (keys
   * without the module name). It takes ownership of the tensors; shapes that
   * do not fit the layer are refused with the module's name.
   */
  fromTensors(target: AdapterTarget, original: Layer, tensors: Map<string, Tensor>): AdapterModule;
}
