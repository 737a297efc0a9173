// LyCORIS LoHa, for applying files (KohakuBlueleaf/LyCORIS
// lycoris/modules/loha.py LohaModule; AUTOMATIC1111 extensions-builtin/Lora/
// network_hada.py): ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/rank, with Tucker
// cores t1, t2 for convs. Training LoHa is not supported: `create` refuses.
import type { Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { lohaDeltaWeight } from "./functional/lycoris.js";
import { LycorisModule, lycorisFromTensors } from "./lycoris-module.js";

export class LohaModule extends LycorisModule {
  constructor(target: AdapterTarget, original: Layer, tensors: Map<string, Tensor>, alpha: Tensor | null) {
    super(target, original, loha.keys, tensors, alpha);
  }

  protected delta(): Tensor {
    const f = (k: string) => this.factor(k);
    const w = { w1a: f("hada_w1_a")!, w1b: f("hada_w1_b")!, w2a: f("hada_w2_a")!, w2b: f("hada_w2_b")! };
    return lohaDeltaWeight({ ...w, t1: f("hada_t1"), t2: f("hada_t2") }, this.scale, this.target.weightShape);
  }
}

export const loha: AdapterMethod<never> = {
  name: "loha",
  label: "LoHa",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // loha.py weight_list / weight_list_det
  keys: {
    all: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"],
    detect: [["hada_w1_a"]],
    required: [[["hada_w1_a"]], [["hada_w1_b"]], [["hada_w2_a"]], [["hada_w2_b"]]],
    rank: ["hada_w1_b"],
    refused: { dora_scale: "DoRA weights" },
  },
  supports: () => true,
  create(target) {
    throw new Error(`${target.name}: training LoHa is not supported; use LoRA/LoCon`);
  },
  fromTensors(target, original, tensors) {
    return lycorisFromTensors(loha, (...a) => new LohaModule(...a), target, original, tensors);
  },
};
