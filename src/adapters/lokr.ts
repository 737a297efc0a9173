// LyCORIS LoKr (KohakuBlueleaf/LyCORIS lycoris/modules/lokr.py LokrModule;
// AUTOMATIC1111 extensions-builtin/Lora/network_lokr.py): ΔW = kron(w1, w2)
// · alpha/rank, each factor full or a low-rank product (w?_a @ w?_b), w2
// with an optional Tucker core t2. Both factors full: no rank, scale 1.
// Training follows lokr.py __init__: out = a·b and in = c·d split by
// `factor` (factorization), w1 [a, c] full unless decompose_both and the
// rank is below half its size, w2 [b, d(, kh, kw)] full when the rank is at
// least half its larger side, else w2_a @ w2_b (flattened over d·kh·kw, or
// Tucker). Init: w1 (or w1_a, w1_b), w2_a and t2 kaiming-uniform; the full
// w2 or w2_b zero.
import { type DType, empty, type Generator, keep, type Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { lokrDeltaWeight, lokrLayout } from "./functional/lycoris.js";
import {
  checkRank,
  kaimingUniform_,
  type LycorisDropout,
  LycorisModule,
  lycorisFromTensors,
} from "./lycoris-module.js";
import { alphaTensor } from "./lycoris-shared.js";
import { baseLayer, weightShape } from "./wrapped-layer.js";

export interface LokrOptions extends LycorisDropout {
  rank: number;
  /** Default 1; 0 means rank. Ignored (scale 1) when both factors end up full. */
  alpha?: number;
  /** LyCORIS factor (default −1: the most balanced split). */
  factor?: number;
  /** Low-rank w1 too (LyCORIS decompose_both). */
  decomposeBoth?: boolean;
  /** Tucker core for a low-rank w2 of a k×k conv. */
  useTucker?: boolean;
  generator?: Generator;
  dtype?: DType;
}

export class LokrModule extends LycorisModule {
  constructor(
    target: AdapterTarget,
    original: Layer,
    tensors: Map<string, Tensor>,
    alpha: Tensor | null,
    o: LycorisDropout = {},
  ) {
    super(target, original, lokr.keys, tensors, alpha, o);
  }

  protected delta(): Tensor {
    const f = (k: string) => this.factor(k);
    const factors = {
      w1: f("lokr_w1"),
      w1a: f("lokr_w1_a"),
      w1b: f("lokr_w1_b"),
      w2: f("lokr_w2"),
      w2a: f("lokr_w2_a"),
      w2b: f("lokr_w2_b"),
      t2: f("lokr_t2"),
    };
    return lokrDeltaWeight(factors, this.scale, this.target.weightShape);
  }
}

/** Fresh LoKr factors for a layer of `shape` and the alpha to save (trainable, initialised as lokr.py). */
export function lokrFactors(
  target: AdapterTarget,
  shape: readonly number[],
  o: LokrOptions,
  like: { dtype: DType; device: string },
): { tensors: Map<string, Tensor>; alpha: number } {
  checkRank(target, "LoKr", o.rank);
  const factor = o.factor ?? -1;
  if (!Number.isInteger(factor) || factor === 0 || factor < -1)
    throw new Error(`${target.name}: LoKr factor must be a positive integer or -1, got ${factor}`);
  const layout = lokrLayout(shape, {
    rank: o.rank,
    factor,
    decomposeBoth: o.decomposeBoth ?? false,
    useTucker: o.useTucker ?? false,
  });
  const kernel = shape.slice(2);
  const flatKernel = kernel.reduce((a, b) => a * b, 1);
  const r = o.rank;
  const { w1, w2 } = layout;
  const made: [string, number[], "kaiming" | "zero"][] = [];
  if (w1.full) made.push(["lokr_w1", [w1.out, w1.in], "kaiming"]);
  else made.push(["lokr_w1_a", [w1.out, r], "kaiming"], ["lokr_w1_b", [r, w1.in], "kaiming"]);
  if (w2.full) made.push(["lokr_w2", [w2.out, w2.in, ...kernel], "zero"]);
  else if (w2.tucker)
    made.push(
      ["lokr_t2", [r, r, ...kernel], "kaiming"],
      ["lokr_w2_a", [r, w2.out], "kaiming"],
      ["lokr_w2_b", [r, w2.in], "zero"],
    );
  else made.push(["lokr_w2_a", [w2.out, r], "kaiming"], ["lokr_w2_b", [r, w2.in * flatKernel], "zero"]);
  const tensors = new Map<string, Tensor>();
  for (const [k, s, init] of made) {
    const t = keep(empty(s, like));
    if (init === "zero") t.zero_();
    else kaimingUniform_(t, o.generator);
    tensors.set(k, t.requiresGrad_(true));
  }
  // lokr.py: with both factors full, alpha = lora_dim (scale 1)
  return { tensors, alpha: layout.scaleOne ? r : (o.alpha ?? 1) };
}

export const lokr: AdapterMethod<LokrOptions> = {
  name: "lokr",
  label: "LoKr",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // lokr.py weight_list / weight_list_det (dora_scale: ./dora.ts)
  keys: {
    all: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"],
    detect: [["lokr_w1"], ["lokr_w1_a"]],
    required: [
      [["lokr_w1"], ["lokr_w1_a", "lokr_w1_b"]],
      [["lokr_w2"], ["lokr_w2_a", "lokr_w2_b"]],
    ],
    // functional/lycoris.ts lokrRank: w1_b's first dimension, else w2_b's
    rank: ["lokr_w1_b", "lokr_w2_b"],
    refused: {},
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const w = base.weight;
    const { tensors, alpha } = lokrFactors(target, weightShape(base), o, {
      dtype: o.dtype ?? w.dtype,
      device: w.device,
    });
    return new LokrModule(target, original, tensors, alphaTensor(alpha, o.rank), o);
  },
  fromTensors(target, original, tensors) {
    return lycorisFromTensors(lokr, (...a) => new LokrModule(...a), target, original, tensors);
  },
};
