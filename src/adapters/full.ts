// `full` (KohakuBlueleaf/LyCORIS lycoris/modules/full.py FullModule;
// AUTOMATIC1111 extensions-builtin/Lora/network_full.py): the whole weight
// difference is trained, ΔW = diff, saved as `<module>.diff`. It starts at
// zero. LyCORIS 3.2's own FullModule cannot run applied (see the fixture
// README); Atelier implements W' = W0 + m·diff, what its files mean to
// A1111 and ComfyUI. Bias differences (`diff_b`) are refused on reading.
import { type DType, keep, rand, scope, type Tensor, zeros } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight } from "./functional/lora.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

export interface FullOptions {
  moduleDropout?: number;
  dtype?: DType;
}

export class FullModule extends AdapterLayer {
  #diff: Tensor;
  readonly moduleDropout: number;

  /** Takes ownership of diff (in the layer's weight shape, on its device). */
  constructor(target: AdapterTarget, original: Layer, diff: Tensor, moduleDropout = 0) {
    super(target, original);
    this.#diff = diff;
    this.moduleDropout = moduleDropout;
  }

  protected delta(): Tensor {
    return this.#diff;
  }

  protected bypass(x: Tensor): Tensor | null {
    if (this.training && this.moduleDropout > 0 && scope(() => rand([1]).item()) < this.moduleDropout) return null;
    const d = this.#diff;
    return scope(() => applyWeight(x.dtype === d.dtype ? x : x.to(d.dtype), d, this.op));
  }

  adapterTensors(): Map<string, Tensor> {
    return new Map([["diff", this.#diff]]);
  }

  trainableParameters(): Tensor[] {
    return [this.#diff];
  }

  disposeAdapter(): void {
    this.#diff.dispose();
  }
}

export const full: AdapterMethod<FullOptions> = {
  name: "full",
  label: "full",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // full.py weight_list / weight_list_det
  keys: {
    all: ["diff"],
    detect: [["diff"]],
    required: [[["diff"]]],
    rank: [],
    refused: { diff_b: "full bias differences" },
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const w = base.weight;
    const diff = keep(zeros(weightShape(base), { dtype: o.dtype ?? w.dtype, device: w.device })).requiresGrad_(true);
    return new FullModule(target, original, diff, o.moduleDropout ?? 0);
  },
  fromTensors(target, original, tensors) {
    try {
      const base = baseLayer(original);
      if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
      for (const k of tensors.keys())
        if (!full.keys.all.includes(k)) throw new Error(`${target.name}: unexpected full key '${k}'`);
      const d = tensors.get("diff");
      if (!d) throw new Error(`${target.name}: diff is missing`);
      const shape = weightShape(base);
      if (d.numel !== shape.reduce((a, b) => a * b, 1) || d.size(0) !== shape[0])
        throw new Error(`${target.name}: the full diff [${d.shape}] does not fit the layer's weight [${shape}]`);
      const w = base.weight;
      return new FullModule(
        target,
        original,
        keep(
          scope(() =>
            d
              .to(w.device, w.dtype)
              .reshape(...shape)
              .clone(),
          ),
        ),
      );
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};
