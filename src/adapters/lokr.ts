// LyCORIS LoKr, for applying files (KohakuBlueleaf/LyCORIS
// lycoris/modules/lokr.py LokrModule; AUTOMATIC1111 extensions-builtin/Lora/
// network_lokr.py): ΔW = kron(w1, w2) · alpha/rank, each factor full or a
// low-rank product (w?_a @ w?_b), w2 with an optional Tucker core t2. Both
// factors full: no rank, scale 1. Training LoKr is not supported: `create`
// refuses.
import type { Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { lokrDeltaWeight } from "./functional/lycoris.js";
import { LycorisModule, lycorisFromTensors } from "./lycoris-module.js";

export class LokrModule extends LycorisModule {
  constructor(target: AdapterTarget, original: Layer, tensors: Map<string, Tensor>, alpha: Tensor | null) {
    super(target, original, lokr.keys, tensors, alpha);
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

export const lokr: AdapterMethod<never> = {
  name: "lokr",
  label: "LoKr",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // lokr.py weight_list / weight_list_det
  keys: {
    all: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"],
    detect: [["lokr_w1"], ["lokr_w1_a"]],
    required: [
      [["lokr_w1"], ["lokr_w1_a", "lokr_w1_b"]],
      [["lokr_w2"], ["lokr_w2_a", "lokr_w2_b"]],
    ],
    // functional/lycoris.ts lokrRank: w1_b's first dimension, else w2_b's
    rank: ["lokr_w1_b", "lokr_w2_b"],
    refused: { dora_scale: "DoRA weights" },
  },
  supports: () => true,
  create(target) {
    throw new Error(`${target.name}: training LoKr is not supported; use LoRA/LoCon`);
  },
  fromTensors(target, original, tensors) {
    return lycorisFromTensors(lokr, (...a) => new LokrModule(...a), target, original, tensors);
  },
};
