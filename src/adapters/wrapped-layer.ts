// The plumbing every adapter module shares (after LyCORIS
// lycoris/modules/base.py LycorisBaseModule): it stands in the tree where
// the original Linear/Conv2d stood, runs original(x) + multiplier·(its
// path), and folds its ΔW into the original weight on merge. The original
// is not a child: the tree's parameter keys stay the diffusers keys (the
// wrapper reports the original's parameters under its own path).
import { type DType, keep, noGrad, scope, type Tensor } from "../engine/index.js";
import { Conv2d, Linear, Module } from "../nn/index.js";
import type { AdapterModule, AdapterTarget, Layer, LayerKind } from "./adapter.js";
import type { LayerOp } from "./functional/lora.js";

/** The Linear or Conv2d at the bottom of a stack of adapters, or null for any other module. */
export function baseLayer(m: Module): Linear | Conv2d | null {
  let cur: Module = m;
  while (cur instanceof AdapterLayer) cur = cur.original;
  return cur instanceof Linear || cur instanceof Conv2d ? cur : null;
}

export function layerKind(l: Linear | Conv2d): LayerKind {
  if (l instanceof Linear) return "linear";
  return l.kernelSize === 1 ? "conv1x1" : l.kernelSize === 3 ? "conv3x3" : "conv";
}

export function layerOp(l: Linear | Conv2d): LayerOp {
  return l instanceof Linear ? { kind: "linear" } : { kind: "conv", stride: l.stride, padding: l.padding };
}

/** [out, in] of a Linear, [out, in, k, k] of a Conv2d. */
export function weightShape(l: Linear | Conv2d): number[] {
  return l instanceof Linear
    ? [l.outFeatures, l.inFeatures]
    : [l.outChannels, l.inChannels, l.kernelSize, l.kernelSize];
}

export abstract class AdapterLayer extends Module implements AdapterModule {
  #original: Layer;
  #mergedWith: number | null = null;
  /** ΔW as merged, for methods whose ΔW depends on the weight it is merged into (DoRA, (IA)³). */
  #mergedDelta: Tensor | null = null;
  multiplier = 1;
  /** The Linear/Conv2d whose weight this adapter changes. */
  readonly base: Linear | Conv2d;
  readonly op: LayerOp;

  constructor(
    readonly target: AdapterTarget,
    original: Layer,
  ) {
    super();
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: the module at ${target.path} is not a Linear or Conv2d`);
    if (base instanceof Conv2d && base.groups !== 1)
      throw new Error(`${target.name}: grouped convolutions (${target.path}) are not supported`);
    this.#original = original;
    this.base = base;
    this.op = layerOp(base);
    this.training = original.training;
  }

  get original(): Layer {
    return this.#original;
  }

  /** Re-links a stack of adapters when one below this one is taken out. */
  replaceOriginal(m: Layer): void {
    this.#original = m;
  }

  get merged(): boolean {
    return this.#mergedWith !== null;
  }

  /** The original's parameters under this module's path, so the tree's keys do not change. */
  override namedParameters(prefix = ""): Map<string, Tensor> {
    return this.#original.namedParameters(prefix);
  }

  /** Casts the original's parameters (those namedParameters reports), not the adapter's own. */
  override castParameters(dtype: DType, pick?: (key: string, t: Tensor) => boolean, prefix = ""): number {
    return this.#original.castParameters(dtype, pick, prefix);
  }

  /** scale·(the adapter's path)(x), without the multiplier; null skips it (module dropout). */
  protected abstract bypass(x: Tensor): Tensor | null;
  /** ΔW in the weight's shape, scale applied, without the multiplier. */
  protected abstract delta(): Tensor;
  abstract adapterTensors(): Map<string, Tensor>;
  abstract trainableParameters(): Tensor[];
  abstract disposeAdapter(): void;
  /** Frees the ΔW kept by merge (weight-dependent methods call it in disposeAdapter). */
  protected releaseMergedDelta(): void {
    this.#mergedDelta?.dispose();
    this.#mergedDelta = null;
  }
  /** True when ΔW is computed from the original weight (DoRA, (IA)³): merge then keeps the ΔW it added. */
  protected get weightDependent(): boolean {
    return false;
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const y = this.#original.forward(x);
      if (this.#mergedWith !== null || this.multiplier === 0) return y;
      const d = this.bypass(x);
      if (!d) return y;
      return y.add(d.dtype === y.dtype ? d : d.to(y.dtype), this.multiplier);
    });
  }

  /** ΔW in the factors' dtype, scale applied, without the multiplier (what DoRA decomposes). */
  scaledDelta(): Tensor {
    return this.delta();
  }

  deltaWeight(): Tensor {
    const kept = this.#mergedDelta;
    return scope(() => (kept ?? this.delta().float()).mul(this.multiplier));
  }

  merge(): void {
    if (this.#mergedWith !== null) return;
    const m = this.multiplier;
    this.#addToWeight(m);
    this.#mergedWith = m;
  }

  unmerge(): void {
    if (this.#mergedWith === null) return;
    this.#addToWeight(-this.#mergedWith);
    this.#mergedWith = null;
  }

  /** W += m·ΔW, computed in float32 and stored in W's dtype (kohya LoRAInfModule.merge_to). */
  #addToWeight(m: number): void {
    noGrad(() =>
      scope(() => {
        const w = this.base.weight;
        const d = this.#mergedDelta ?? this.delta().to(w.device, "float32");
        w.copy_(w.float().add(d, m));
        if (!this.weightDependent) return;
        if (this.#mergedDelta) {
          this.#mergedDelta.dispose();
          this.#mergedDelta = null;
        } else this.#mergedDelta = keep(d);
      }),
    );
  }
}
