// Trained norm layers (LyCORIS train_norm; KohakuBlueleaf/LyCORIS
// lycoris/modules/norms.py NormModule, created by lycoris/kohya.py
// create_single_module for every module whose class name has "Norm" inside a
// target container): a GroupNorm or LayerNorm runs with weight + m·w_norm and
// bias + m·b_norm. Both deltas have the norm's weight shape [channels] and
// start at zero, saved as `<module>.w_norm` / `<module>.b_norm`. AUTOMATIC1111
// extensions-builtin/Lora/network_norm.py (needs both keys; updown = w_norm in
// its own shape, ex_bias = b_norm) and ComfyUI comfy/lora.py (w_norm/b_norm,
// added to the weight and the bias) read them the same way.
import { type DType, groupNorm, keep, layerNorm, noGrad, rand, scope, type Tensor, zeros } from "../engine/index.js";
import { GroupNorm, LayerNorm, Module } from "../nn/index.js";
import type { AdapterMethod, AdapterModule, AdapterTarget, Layer } from "./adapter.js";

export interface NormOptions {
  moduleDropout?: number;
  dtype?: DType;
}

/** The GroupNorm or LayerNorm at `m`, or null. */
export function normLayer(m: Module): GroupNorm | LayerNorm | null {
  return m instanceof GroupNorm || m instanceof LayerNorm ? m : null;
}

export function normChannels(n: GroupNorm | LayerNorm): number {
  return n instanceof GroupNorm ? n.channels : n.dim;
}

export class NormModule extends Module implements AdapterModule {
  multiplier = 1;
  #mergedWith: number | null = null;
  readonly norm: GroupNorm | LayerNorm;

  /** Takes ownership of the deltas (on the norm's device). */
  constructor(
    readonly target: AdapterTarget,
    readonly original: Layer,
    readonly wNorm: Tensor,
    readonly bNorm: Tensor,
    readonly moduleDropout = 0,
  ) {
    super();
    const n = normLayer(original);
    if (!n) throw new Error(`${target.name}: the module at ${target.path} is not a GroupNorm or LayerNorm`);
    this.norm = n;
    this.training = original.training;
  }

  get merged(): boolean {
    return this.#mergedWith !== null;
  }

  override namedParameters(prefix = ""): Map<string, Tensor> {
    return this.original.namedParameters(prefix);
  }

  /** Casts the original's parameters (those namedParameters reports), not the adapter's own. */
  override castParameters(dtype: DType, pick?: (key: string, t: Tensor) => boolean, prefix = ""): number {
    return this.original.castParameters(dtype, pick, prefix);
  }

  forward(x: Tensor): Tensor {
    const skip =
      this.#mergedWith !== null ||
      this.multiplier === 0 ||
      (this.training && this.moduleDropout > 0 && scope(() => rand([1]).item()) < this.moduleDropout);
    if (skip) return this.original.forward(x);
    return scope(() => {
      const n = this.norm;
      const w0 = n.weight;
      const b0 = n.bias;
      // norms.py make_weight: org_weight + w_norm·scale, in the deltas' dtype
      const w = w0.to(this.wNorm.dtype).add(this.wNorm, this.multiplier).to(w0.dtype);
      const b = b0.to(this.bNorm.dtype).add(this.bNorm, this.multiplier).to(b0.dtype);
      return n instanceof GroupNorm ? groupNorm(x, n.groups, w, b, n.eps) : layerNorm(x, [n.dim], w, b, n.eps);
    });
  }

  /** The weight delta (float32, [channels], multiplier applied); the bias delta is biasDelta(). */
  deltaWeight(): Tensor {
    return scope(() => this.wNorm.float().mul(this.multiplier));
  }

  biasDelta(): Tensor {
    return scope(() => this.bNorm.float().mul(this.multiplier));
  }

  merge(): void {
    if (this.#mergedWith !== null) return;
    this.#add(this.multiplier);
    this.#mergedWith = this.multiplier;
  }

  unmerge(): void {
    if (this.#mergedWith === null) return;
    this.#add(-this.#mergedWith);
    this.#mergedWith = null;
  }

  /** weight += m·w_norm, bias += m·b_norm, in float32, stored in the norm's dtype. */
  #add(m: number): void {
    noGrad(() =>
      scope(() => {
        for (const [p, d] of [
          [this.norm.weight, this.wNorm],
          [this.norm.bias, this.bNorm],
        ] as const)
          p.copy_(p.float().add(d.to(p.device, "float32"), m));
      }),
    );
  }

  adapterTensors(): Map<string, Tensor> {
    return new Map([
      ["w_norm", this.wNorm],
      ["b_norm", this.bNorm],
    ]);
  }

  trainableParameters(): Tensor[] {
    return [this.wNorm, this.bNorm];
  }

  disposeAdapter(): void {
    this.wNorm.dispose();
    this.bNorm.dispose();
  }
}

export const norm: AdapterMethod<NormOptions> = {
  name: "norm",
  label: "norm",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // norms.py parameters; network_norm.py create_module needs both
  keys: {
    all: ["w_norm", "b_norm"],
    detect: [["w_norm"], ["b_norm"]],
    required: [[["w_norm"]], [["b_norm"]]],
    rank: [],
    refused: {},
  },
  supports: (kind) => kind === "norm",
  create(target, original, o) {
    const n = normLayer(original);
    if (!n) throw new Error(`${target.name}: ${target.path} is not a GroupNorm or LayerNorm`);
    const w = n.weight;
    const make = () =>
      keep(zeros([normChannels(n)], { dtype: o.dtype ?? w.dtype, device: w.device })).requiresGrad_(true);
    return new NormModule(target, original, make(), make(), o.moduleDropout ?? 0);
  },
  fromTensors(target, original, tensors) {
    try {
      const n = normLayer(original);
      if (!n) throw new Error(`${target.name}: ${target.path} is not a GroupNorm or LayerNorm`);
      for (const k of tensors.keys())
        if (!norm.keys.all.includes(k)) throw new Error(`${target.name}: unexpected norm key '${k}'`);
      const c = normChannels(n);
      const w = n.weight;
      const own = ["w_norm", "b_norm"].map((k) => {
        const t = tensors.get(k);
        if (!t) throw new Error(`${target.name}: ${k} is missing`);
        if (t.shape.length !== 1 || t.size(0) !== c)
          throw new Error(`${target.name}: ${k} [${t.shape}] does not fit the norm's weight [${c}]`);
        return t;
      });
      const [wn, bn] = own.map((t) => keep(scope(() => t.to(w.device, w.dtype).clone())));
      return new NormModule(target, original, wn, bn);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};
