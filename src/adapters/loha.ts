// LyCORIS LoHa (KohakuBlueleaf/LyCORIS lycoris/modules/loha.py LohaModule;
// AUTOMATIC1111 extensions-builtin/Lora/network_hada.py): ΔW = (w1a @ w1b) ⊙
// (w2a @ w2b) · alpha/rank; a k×k conv either flattens its factors over
// [in·kh·kw] or, with use_tucker, holds Tucker cores t1, t2 [r, r, kh, kw]
// with w?a [r, out] and w?b [r, in]. Init as loha.py: w1b, w2b ~ N(0, 1),
// w1a, t1, t2 ~ N(0, 0.1), w2a = 0 (ΔW starts at zero). The gradient is
// autograd's over these einsums, the exact one (LyCORIS' hand-written
// Tucker backward is not, see the fixture README).
import { type DType, empty, type Generator, keep, noGrad, normal_, type Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { lohaDeltaWeight } from "./functional/lycoris.js";
import { checkRank, type LycorisDropout, LycorisModule, lycorisFromTensors } from "./lycoris-module.js";
import { alphaTensor } from "./lycoris-shared.js";
import { baseLayer, weightShape } from "./wrapped-layer.js";

export interface LohaOptions extends LycorisDropout {
  rank: number;
  /** Default 1; 0 means rank (scale 1). */
  alpha?: number;
  /** Tucker cores for k×k convs (LyCORIS use_tucker). */
  useTucker?: boolean;
  generator?: Generator;
  /** dtype of the factors (default: the layer's). */
  dtype?: DType;
}

export class LohaModule extends LycorisModule {
  constructor(
    target: AdapterTarget,
    original: Layer,
    tensors: Map<string, Tensor>,
    alpha: Tensor | null,
    o: LycorisDropout = {},
  ) {
    super(target, original, loha.keys, tensors, alpha, o);
  }

  protected delta(): Tensor {
    const f = (k: string) => this.factor(k);
    const w = { w1a: f("hada_w1_a")!, w1b: f("hada_w1_b")!, w2a: f("hada_w2_a")!, w2b: f("hada_w2_b")! };
    return lohaDeltaWeight({ ...w, t1: f("hada_t1"), t2: f("hada_t2") }, this.scale, this.target.weightShape);
  }
}

/** Fresh LoHa factors for a layer of `shape`, initialised as loha.py (trainable). */
export function lohaFactors(
  target: AdapterTarget,
  shape: readonly number[],
  o: LohaOptions,
  like: { dtype: DType; device: string },
): Map<string, Tensor> {
  checkRank(target, "LoHa", o.rank);
  const [out, inDim, ...kernel] = shape;
  const flat = inDim * kernel.reduce((a, b) => a * b, 1);
  if (o.rank > Math.min(out, flat))
    throw new Error(`${target.name}: LoHa rank ${o.rank} is larger than the layer (weight [${shape}])`);
  const tucker = (o.useTucker ?? false) && kernel.some((k) => k !== 1);
  const r = o.rank;
  const shapes: [string, number[], number][] = tucker
    ? [
        ["hada_w1_a", [r, out], 0.1],
        ["hada_w1_b", [r, inDim], 1],
        ["hada_w2_a", [r, out], 0],
        ["hada_w2_b", [r, inDim], 1],
        ["hada_t1", [r, r, ...kernel], 0.1],
        ["hada_t2", [r, r, ...kernel], 0.1],
      ]
    : [
        ["hada_w1_a", [out, r], 0.1],
        ["hada_w1_b", [r, flat], 1],
        ["hada_w2_a", [out, r], 0],
        ["hada_w2_b", [r, flat], 1],
      ];
  const tensors = new Map<string, Tensor>();
  for (const [k, s, std] of shapes) {
    const t = keep(empty(s, like));
    noGrad(() => (std === 0 ? t.zero_() : normal_(t, 0, std, o.generator)));
    tensors.set(k, t.requiresGrad_(true));
  }
  return tensors;
}

export const loha: AdapterMethod<LohaOptions> = {
  name: "loha",
  label: "LoHa",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // loha.py weight_list / weight_list_det (dora_scale: ./dora.ts)
  keys: {
    all: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"],
    detect: [["hada_w1_a"]],
    required: [[["hada_w1_a"]], [["hada_w1_b"]], [["hada_w2_a"]], [["hada_w2_b"]]],
    rank: ["hada_w1_b"],
    refused: {},
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const w = base.weight;
    const tensors = lohaFactors(target, weightShape(base), o, { dtype: o.dtype ?? w.dtype, device: w.device });
    return new LohaModule(target, original, tensors, alphaTensor(o.alpha ?? 1, o.rank), o);
  },
  fromTensors(target, original, tensors) {
    return lycorisFromTensors(loha, (...a) => new LohaModule(...a), target, original, tensors);
  },
};
