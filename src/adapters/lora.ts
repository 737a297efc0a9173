// LoRA and LoCon (kohya-ss/sd-scripts networks/lora.py LoRAModule; LyCORIS
// lycoris/modules/locon.py for the Tucker core): lora_down [r, in] or
// [r, in, kh, kw] (kaiming_uniform a=√5), lora_up [out, r] or [out, r, 1, 1]
// (zeros), alpha (0-d; 0 or absent means rank). forward = original(x) +
// multiplier · alpha/r · up(down(x)), with kohya's dropout, rank dropout and
// module dropout on the LoRA path while training.
import {
  type DType,
  dropout,
  empty,
  full,
  type Generator,
  keep,
  noGrad,
  rand,
  scope,
  type Tensor,
  uniform_,
} from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { type LoraFactors, loraBypass, loraDeltaWeight, loraScale } from "./functional/lora.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

export interface LoraDropout {
  /** kohya `dropout` (network_dropout): on the rank-r activation. */
  dropout?: number;
  /** kohya `rank_dropout`: drops whole ranks per sample, rescaling the rest. */
  rankDropout?: number;
  /** kohya `module_dropout`: skips the whole LoRA path of a module per step. */
  moduleDropout?: number;
}

export interface LoraOptions extends LoraDropout {
  rank: number;
  /** Default 1 (kohya's network_alpha default); 0 means rank. */
  alpha?: number;
  generator?: Generator;
  /** dtype of the LoRA tensors (default: the layer's). */
  dtype?: DType;
  /** LoCon's Tucker form for k×k convs (LyCORIS locon.py use_tucker): down 1×1, lora_mid [r, r, kh, kw]. */
  useTucker?: boolean;
}

export class LoraModule extends AdapterLayer {
  readonly rank: number;
  /** The alpha saved in files: alpha 0/absent is stored as rank, as kohya does. */
  readonly alpha: number;
  readonly scale: number;
  readonly dropoutRates: Required<LoraDropout>;
  #down: Tensor;
  #up: Tensor;
  #mid: Tensor | null;
  #alphaTensor: Tensor | null = null;

  /** Takes ownership of the factors (already in their final shape, dtype and device). */
  constructor(target: AdapterTarget, original: Layer, f: LoraFactors, alpha: number | null, o: LoraDropout = {}) {
    super(target, original);
    this.#down = f.down;
    this.#up = f.up;
    this.#mid = f.mid ?? null;
    this.rank = f.down.size(0);
    this.scale = loraScale(alpha, this.rank);
    this.alpha = this.scale * this.rank;
    this.dropoutRates = {
      dropout: o.dropout ?? 0,
      rankDropout: o.rankDropout ?? 0,
      moduleDropout: o.moduleDropout ?? 0,
    };
  }

  get factors(): LoraFactors {
    return { down: this.#down, up: this.#up, mid: this.#mid };
  }

  protected bypass(x: Tensor): Tensor | null {
    const { dropout: p, rankDropout, moduleDropout } = this.dropoutRates;
    const training = this.training;
    if (training && moduleDropout > 0 && scope(() => rand([1]).item()) < moduleDropout) return null;
    const input = x.dtype === this.#down.dtype ? x : x.to(this.#down.dtype);
    let scale = this.scale;
    let between: ((h: Tensor) => Tensor) | undefined;
    if (training && (p > 0 || rankDropout > 0)) {
      if (rankDropout > 0) scale /= 1 - rankDropout;
      between = (h) => {
        let out = p > 0 ? dropout(h, p, true) : h;
        if (rankDropout > 0) {
          let mask = rand([h.size(0), this.rank], { device: h.device })
            .gt(rankDropout)
            .to(h.dtype);
          if (h.ndim === 3) mask = mask.unsqueeze(1);
          else if (h.ndim === 4) mask = mask.unsqueeze(-1).unsqueeze(-1);
          out = out.mul(mask);
        }
        return out;
      };
    }
    return loraBypass(input, this.factors, this.op, scale, between);
  }

  protected delta(): Tensor {
    return loraDeltaWeight(this.factors, this.scale);
  }

  adapterTensors(): Map<string, Tensor> {
    this.#alphaTensor ??= keep(full([], this.alpha, { dtype: this.#down.dtype, device: this.#down.device }));
    const out = new Map<string, Tensor>([
      ["lora_down.weight", this.#down],
      ["lora_up.weight", this.#up],
    ]);
    if (this.#mid) out.set("lora_mid.weight", this.#mid);
    out.set("alpha", this.#alphaTensor);
    return out;
  }

  trainableParameters(): Tensor[] {
    return this.#mid ? [this.#down, this.#mid, this.#up] : [this.#down, this.#up];
  }

  disposeAdapter(): void {
    for (const t of [this.#down, this.#up, this.#mid, this.#alphaTensor]) t?.dispose();
  }
}

/** The LoRA / LoCon method. */
export const lora: AdapterMethod<LoraOptions> = {
  name: "lora",
  label: "LoRA/LoCon",
  kind: "weight-delta",
  networkModule: "networks.lora",
  // kohya networks/lora.py LoRAModule's state dict; LyCORIS locon.py weight_list
  keys: {
    all: ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"],
    detect: [["lora_down.weight", "lora_up.weight"]],
    required: [[["lora_down.weight"]], [["lora_up.weight"]]],
    rank: ["lora_down.weight"],
    refused: {},
  },
  supports: () => true,

  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    if (!Number.isInteger(o.rank) || o.rank < 1) throw new Error(`LoRA rank must be a positive integer, got ${o.rank}`);
    const [out, inDim, ...kernel] = weightShape(base);
    const w = base.weight;
    const like = { dtype: o.dtype ?? w.dtype, device: w.device };
    const ones = kernel.map(() => 1);
    const tucker = (o.useTucker ?? false) && kernel.some((k) => k !== 1);
    const down = keep(empty([o.rank, inDim, ...(tucker ? ones : kernel)], like));
    const mid = tucker ? keep(empty([o.rank, o.rank, ...kernel], like)) : null;
    const up = keep(empty([out, o.rank, ...ones], like));
    noGrad(() => {
      // torch.nn.init.kaiming_uniform_(a=√5) = U(±1/√fan_in), as microsoft/LoRA; up starts at zero
      for (const t of mid ? [down, mid] : [down]) {
        const bound = 1 / Math.sqrt(t.numel / t.size(0));
        uniform_(t, -bound, bound, o.generator);
      }
      up.zero_();
    });
    for (const t of [down, up, mid]) t?.requiresGrad_(true);
    return new LoraModule(target, original, { down, up, mid }, o.alpha ?? 1, o);
  },

  fromTensors(target, original, tensors) {
    try {
      const base = baseLayer(original);
      if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
      for (const k of tensors.keys())
        if (!lora.keys.all.includes(k)) throw new Error(`${target.name}: unexpected LoRA key '${k}'`);
      const get = (k: string) => {
        const t = tensors.get(k);
        if (!t) throw new Error(`${target.name}: '${k}' is missing`);
        return t;
      };
      const alphaT = tensors.get("alpha");
      if (alphaT && alphaT.numel !== 1) throw new Error(`${target.name}: alpha has ${alphaT.numel} values, not one`);
      const alpha = alphaT ? scope(() => alphaT.float().item()) : null;
      const w = base.weight;
      const factors = scope(() => {
        const f = shapeFactors(
          target,
          weightShape(base),
          get("lora_down.weight"),
          get("lora_up.weight"),
          tensors.get("lora_mid.weight"),
        );
        const own = (t: Tensor) => keep(t.to(w.device, w.dtype));
        return { down: own(f.down), up: own(f.up), mid: f.mid ? own(f.mid) : null };
      });
      return new LoraModule(target, original, factors, alpha);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};

/** The factors in the layer's natural form (2-D for a linear, 4-D for a conv), or an error naming the module. */
function shapeFactors(
  target: AdapterTarget,
  shape: number[],
  down: Tensor,
  up: Tensor,
  mid: Tensor | undefined,
): LoraFactors {
  const [out, inDim, ...kernel] = shape;
  const rank = down.size(0);
  const bad = (what: string) =>
    new Error(
      `${target.name}: ${what} (layer ${target.path} has weight [${shape}]; lora_down [${down.shape}], lora_up [${up.shape}]${mid ? `, lora_mid [${mid.shape}]` : ""})`,
    );
  if (up.size(1) !== rank) throw bad(`lora_up's rank ${up.size(1)} differs from lora_down's ${rank}`);
  if (up.size(0) !== out) throw bad(`lora_up has ${up.size(0)} outputs, the layer ${out}`);
  if (up.numel !== out * rank) throw bad("lora_up must be [out, r] or [out, r, 1, 1]");
  if (down.size(1) !== inDim) throw bad(`lora_down takes ${down.size(1)} inputs, the layer ${inDim}`);
  const downKernel = down.shape.slice(2);
  if (kernel.length === 0) {
    if (mid || downKernel.some((k) => k !== 1)) throw bad("a linear layer takes 2-D (or 1×1) factors");
    return { down: down.reshape(rank, inDim), up: up.reshape(out, rank) };
  }
  const ones = kernel.map(() => 1);
  const upConv = up.reshape(out, rank, ...ones);
  if (mid) {
    if (downKernel.some((k) => k !== 1) || mid.ndim !== 4 || mid.size(0) !== rank || mid.size(1) !== rank)
      throw bad("a Tucker LoCon needs lora_down [r, in, 1, 1] and lora_mid [r, r, kh, kw]");
    if (mid.shape.slice(2).join() !== kernel.join()) throw bad(`lora_mid's kernel differs from the layer's`);
    return { down: down.reshape(rank, inDim, ...ones), up: upConv, mid };
  }
  const want = downKernel.length === 0 ? ones : downKernel;
  if (want.join() !== kernel.join()) throw bad(`lora_down's kernel [${want}] differs from the layer's [${kernel}]`);
  return { down: down.reshape(rank, inDim, ...kernel), up: upConv };
}
