// (IA)³ (KohakuBlueleaf/LyCORIS lycoris/modules/ia3.py IA3Module;
// AUTOMATIC1111 extensions-builtin/Lora/network_ia3.py): a learned vector w
// scales the weight's output rows, W' = W0 · (1 + m·w), so ΔW = W0 · w; the
// bias is not scaled (ia3.py's merged path; its bypass path scales the bias
// too, see the fixture README). w is [out] for a linear and [1, out, 1, 1]
// for a conv, starting at zero; `on_input` (int64 0-d) says whether it
// scales input columns instead (read from files, trained as 0).
import { type DType, full as fullTensor, keep, rand, scope, type Tensor, zeros } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight } from "./functional/lora.js";
import { ia3DeltaWeight } from "./functional/lycoris.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

export interface Ia3Options {
  moduleDropout?: number;
  dtype?: DType;
}

export class Ia3Module extends AdapterLayer {
  #w: Tensor;
  #onInput: Tensor;
  readonly onInput: boolean;
  readonly moduleDropout: number;

  /** Takes ownership of w (on the layer's device) and on_input (int64 0-d, CPU). */
  constructor(target: AdapterTarget, original: Layer, w: Tensor, onInput: Tensor, moduleDropout = 0) {
    super(target, original);
    this.#w = w;
    this.#onInput = onInput;
    this.onInput = scope(() => onInput.float().item()) !== 0;
    this.moduleDropout = moduleDropout;
  }

  protected override get weightDependent(): boolean {
    return true;
  }

  protected delta(): Tensor {
    return ia3DeltaWeight(this.base.weight, this.#w, this.onInput);
  }

  /** m·op(x, W0·w) as op(x, W0)·w (output rows) or op(x·w, W0) (input columns), without the bias. */
  protected bypass(x: Tensor): Tensor | null {
    if (this.training && this.moduleDropout > 0 && scope(() => rand([1]).item()) < this.moduleDropout) return null;
    return scope(() => {
      const w0 = this.base.weight;
      const input = x.dtype === w0.dtype ? x : x.to(w0.dtype);
      const ones = w0.shape.slice(2).map(() => 1);
      const n = this.#w.numel;
      const conv = this.op.kind === "conv";
      const v = this.#w.to(w0.dtype).reshape(...(conv ? [1, n, ...ones] : [n]));
      return this.onInput ? applyWeight(input.mul(v), w0, this.op) : applyWeight(input, w0, this.op).mul(v);
    });
  }

  adapterTensors(): Map<string, Tensor> {
    return new Map([
      ["weight", this.#w],
      ["on_input", this.#onInput],
    ]);
  }

  trainableParameters(): Tensor[] {
    return [this.#w];
  }

  disposeAdapter(): void {
    this.#w.dispose();
    this.#onInput.dispose();
    this.releaseMergedDelta();
  }
}

export const ia3: AdapterMethod<Ia3Options> = {
  name: "ia3",
  label: "(IA)³",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // ia3.py weight_list / weight_list_det
  keys: {
    all: ["weight", "on_input"],
    detect: [["on_input"]],
    required: [[["weight"]], [["on_input"]]],
    rank: [],
    refused: {},
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const [out, , ...kernel] = weightShape(base);
    const w = base.weight;
    const shape = kernel.length ? [1, out, ...kernel.map(() => 1)] : [out];
    const v = keep(zeros(shape, { dtype: o.dtype ?? w.dtype, device: w.device })).requiresGrad_(true);
    const onInput = keep(fullTensor([], 0, { dtype: "int64" }));
    return new Ia3Module(target, original, v, onInput, o.moduleDropout ?? 0);
  },
  fromTensors(target, original, tensors) {
    try {
      const base = baseLayer(original);
      if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
      for (const k of tensors.keys())
        if (!ia3.keys.all.includes(k)) throw new Error(`${target.name}: unexpected (IA)³ key '${k}'`);
      const w = tensors.get("weight");
      const on = tensors.get("on_input");
      if (!w || !on) throw new Error(`${target.name}: ${w ? "on_input" : "weight"} is missing`);
      const shape = weightShape(base);
      const onInput = scope(() => on.float().item()) !== 0;
      const want = onInput ? shape[1] : shape[0];
      if (w.numel !== want)
        throw new Error(
          `${target.name}: the (IA)³ weight [${w.shape}] does not fit the layer's ${want} ${onInput ? "input" : "output"} channels (weight [${shape}])`,
        );
      const bw = base.weight;
      const own = keep(scope(() => w.to(bw.device, bw.dtype).clone()));
      const flag = keep(fullTensor([], onInput ? 1 : 0, { dtype: "int64" }));
      return new Ia3Module(target, original, own, flag);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};
