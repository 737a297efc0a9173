// `full` (KohakuBlueleaf/LyCORIS lycoris/modules/full.py FullModule;
// AUTOMATIC1111 extensions-builtin/Lora/network_full.py): the whole weight
// difference is trained, ΔW = diff, saved as `<module>.diff`. It starts at
// zero. LyCORIS 3.2's own FullModule cannot run applied (see the fixture
// README); Atelier implements W' = W0 + m·diff, what its files mean to
// A1111 and ComfyUI. A layer with a bias also trains its difference, saved
// as `<module>.diff_b` (full.py: `bias` = zeros_like(org bias), state dict
// diff_b = bias − org bias; A1111 network_full.py ex_bias = diff_b; ComfyUI
// comfy/lora.py diff_b added to the bias): b' = b0 + m·diff_b. A diff_b for a
// layer without a bias is refused, naming the module.
import { type DType, keep, noGrad, rand, scope, type Tensor, zeros } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight } from "./functional/lora.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

/** The bias tensor of a Linear/Conv2d, or null. */
function biasOf(l: Layer): Tensor | null {
  const base = baseLayer(l);
  return base?.bias ? (base.namedParameters().get("bias") ?? null) : null;
}

export interface FullOptions {
  moduleDropout?: number;
  dtype?: DType;
}

export class FullModule extends AdapterLayer {
  #diff: Tensor;
  #diffB: Tensor | null;
  #biasMerged: number | null = null;
  readonly moduleDropout: number;

  /** Takes ownership of diff (in the layer's weight shape, on its device) and diff_b ([out], for a layer with a bias). */
  constructor(target: AdapterTarget, original: Layer, diff: Tensor, moduleDropout = 0, diffB: Tensor | null = null) {
    super(target, original);
    if (diffB && !biasOf(original)) throw new Error(`${target.name}: diff_b for a layer without a bias`);
    this.#diff = diff;
    this.#diffB = diffB;
    this.moduleDropout = moduleDropout;
  }

  /** The bias difference (float32, multiplier applied), or null. */
  biasDelta(): Tensor | null {
    const b = this.#diffB;
    return b ? scope(() => b.float().mul(this.multiplier)) : null;
  }

  override merge(): void {
    if (this.merged) return;
    const m = this.multiplier;
    super.merge();
    this.#addBias(m);
    this.#biasMerged = m;
  }

  override unmerge(): void {
    if (!this.merged) return;
    super.unmerge();
    if (this.#biasMerged !== null) this.#addBias(-this.#biasMerged);
    this.#biasMerged = null;
  }

  #addBias(m: number): void {
    const d = this.#diffB;
    const b = biasOf(this.original);
    if (!d || !b) return;
    noGrad(() => scope(() => b.copy_(b.float().add(d.to(b.device, "float32"), m))));
  }

  protected delta(): Tensor {
    return this.#diff;
  }

  protected bypass(x: Tensor): Tensor | null {
    if (this.training && this.moduleDropout > 0 && scope(() => rand([1]).item()) < this.moduleDropout) return null;
    const d = this.#diff;
    const db = this.#diffB;
    return scope(() => {
      const y = applyWeight(x.dtype === d.dtype ? x : x.to(d.dtype), d, this.op);
      if (!db) return y;
      return y.add(this.op.kind === "linear" ? db : db.reshape(1, db.size(0), 1, 1));
    });
  }

  adapterTensors(): Map<string, Tensor> {
    const out = new Map([["diff", this.#diff]]);
    if (this.#diffB) out.set("diff_b", this.#diffB);
    return out;
  }

  trainableParameters(): Tensor[] {
    return this.#diffB ? [this.#diff, this.#diffB] : [this.#diff];
  }

  disposeAdapter(): void {
    this.#diff.dispose();
    this.#diffB?.dispose();
  }
}

export const full: AdapterMethod<FullOptions> = {
  name: "full",
  label: "full",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // full.py weight_list / weight_list_det
  keys: {
    all: ["diff", "diff_b"],
    detect: [["diff"]],
    required: [[["diff"]]],
    rank: [],
    refused: {},
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const w = base.weight;
    const make = (shape: number[]) =>
      keep(zeros(shape, { dtype: o.dtype ?? w.dtype, device: w.device })).requiresGrad_(true);
    const diff = make(weightShape(base));
    const diffB = biasOf(original) ? make([weightShape(base)[0]]) : null;
    return new FullModule(target, original, diff, o.moduleDropout ?? 0, diffB);
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
      const db = tensors.get("diff_b");
      if (db && !biasOf(original))
        throw new Error(`${target.name}: diff_b for a layer without a bias (${target.path})`);
      if (db && (db.numel !== shape[0] || db.shape.length > 1))
        throw new Error(`${target.name}: the full diff_b [${db.shape}] does not fit the layer's bias [${shape[0]}]`);
      const w = base.weight;
      const own = (t: Tensor, s: number[]) =>
        keep(
          scope(() =>
            t
              .to(w.device, w.dtype)
              .reshape(...s)
              .clone(),
          ),
        );
      return new FullModule(target, original, own(d, shape), 0, db ? own(db, [shape[0]]) : null);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};
