// DoRA, LyCORIS' weight_decompose (KohakuBlueleaf/LyCORIS
// lycoris/modules/locon.py, loha.py, lokr.py apply_weight_decompose with
// wd_on_out): a LoRA/LoCon, LoHa or LoKr ΔW, then W' = (W0 + ΔW) ·
// dora_scale / ‖W0 + ΔW‖ over output rows (dora_scale [out, 1(, 1, 1)],
// LyCORIS' default) or input columns ([1, in(, 1, 1)]), starting at the
// norms of W0 and trained with the factors. Atelier trains the input-column
// form by default: A1111 normalises only that axis and ComfyUI's output-axis
// branch takes the norm of W0 instead of W0 + ΔW, so it is the one form
// both read as the math says. Files hold the inner
// method's keys plus `dora_scale`, as LyCORIS writes them. The multiplier
// scales W' − W0 as a whole (AUTOMATIC1111 extensions-builtin/Lora/
// network.py apply_weight_decompose + finalize_updown; ComfyUI
// comfy/weight_adapter/base.py weight_decompose): multiplier 0 is the base
// model. LyCORIS 3.2 adds ΔW in full at every multiplier (see the fixture
// README); Atelier follows the WebUIs, so merged and bypass agree.
import { keep, rand, scope, type Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight } from "./functional/lora.js";
import { columnNorms, doraDeltaWeight, rowNorms } from "./functional/lycoris.js";
import { detects } from "./keys.js";
import { type LohaOptions, loha } from "./loha.js";
import { type LokrOptions, lokr } from "./lokr.js";
import { type LoraOptions, lora } from "./lora.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

/** The methods DoRA decomposes. */
export const DORA_INNER = [lora, loha, lokr] as const;

/** onOutput: LyCORIS wd_on_out (dora_scale [out, 1, …]); default the input axis, which A1111 and ComfyUI read alike. */
export type DoraOptions = { onOutput?: boolean } & (
  | ({ inner: "lora" } & LoraOptions)
  | ({ inner: "loha" } & LohaOptions)
  | ({ inner: "lokr" } & LokrOptions)
);

export class DoraModule extends AdapterLayer {
  readonly inner: AdapterLayer;
  #scale: Tensor;
  readonly moduleDropout: number;

  /** Takes ownership of `inner` (built on the same layer, never in the tree) and of dora_scale (float32). */
  constructor(target: AdapterTarget, original: Layer, inner: AdapterLayer, doraScale: Tensor, moduleDropout = 0) {
    super(target, original);
    this.inner = inner;
    inner.multiplier = 1;
    this.#scale = doraScale;
    this.moduleDropout = moduleDropout;
  }

  get doraScale(): Tensor {
    return this.#scale;
  }

  protected override get weightDependent(): boolean {
    return true;
  }

  protected delta(): Tensor {
    return doraDeltaWeight(this.base.weight, this.inner.scaledDelta(), this.#scale);
  }

  protected bypass(x: Tensor): Tensor | null {
    if (this.training && this.moduleDropout > 0 && scope(() => rand([1]).item()) < this.moduleDropout) return null;
    return scope(() => {
      const d = this.delta();
      return applyWeight(x.dtype === d.dtype ? x : x.to(d.dtype), d, this.op);
    });
  }

  adapterTensors(): Map<string, Tensor> {
    const out = new Map(this.inner.adapterTensors());
    out.set("dora_scale", this.#scale);
    return out;
  }

  trainableParameters(): Tensor[] {
    return [...this.inner.trainableParameters(), this.#scale];
  }

  disposeAdapter(): void {
    this.inner.disposeAdapter();
    this.#scale.dispose();
    this.releaseMergedDelta();
  }
}

/** The method DoRA's inner keys belong to (LoHa, LoKr, else LoRA/LoCon), or null. */
function innerFor(keys: readonly string[]) {
  return DORA_INNER.find((m) => detects(m.keys, keys)) ?? null;
}

const INNER_KEYS = [...new Set(DORA_INNER.flatMap((m) => m.keys.all))];

export const dora: AdapterMethod<DoraOptions> = {
  name: "dora",
  label: "DoRA",
  kind: "weight-delta",
  networkModule: "lycoris.kohya",
  // locon.py / loha.py / lokr.py weight_list: the inner method's keys plus dora_scale
  keys: {
    all: [...INNER_KEYS, "dora_scale"],
    detect: [["dora_scale"]],
    required: [[["dora_scale"]]],
    rank: ["lora_down.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b"],
    refused: {},
    overrides: DORA_INNER.map((m) => m.name),
  },
  supports: () => true,
  create(target, original, o) {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    const method = DORA_INNER.find((m) => m.name === o.inner);
    if (!method) throw new Error(`${target.name}: DoRA decomposes lora, loha or lokr, not '${o.inner}'`);
    if ("dropout" in o && o.dropout) throw new Error(`${target.name}: DoRA does not take dropout (network.dropout)`);
    if (o.rankDropout) throw new Error(`${target.name}: DoRA does not take rank dropout (network.rank_dropout)`);
    const { moduleDropout, onOutput, ...rest } = o;
    const inner = (method as AdapterMethod<typeof rest>).create(target, original, rest) as AdapterLayer;
    try {
      const s = keep(scope(() => (onOutput ? rowNorms : columnNorms)(base.weight.float()).detach()));
      return new DoraModule(target, original, inner, s.requiresGrad_(true), moduleDropout ?? 0);
    } catch (e) {
      inner.disposeAdapter();
      throw e;
    }
  },
  fromTensors(target, original, tensors) {
    const scaleT = tensors.get("dora_scale");
    let inner: AdapterLayer | null = null;
    try {
      const base = baseLayer(original);
      if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
      const shape = weightShape(base);
      if (!scaleT) throw new Error(`${target.name}: dora_scale is missing`);
      const onOutput = scaleT.numel === shape[0] && scaleT.size(0) === shape[0];
      const onInput =
        scaleT.numel === shape[1] && scaleT.ndim >= 2 && scaleT.size(0) === 1 && scaleT.size(1) === shape[1];
      if (!onOutput && !onInput)
        throw new Error(
          `${target.name}: dora_scale [${scaleT.shape}] fits neither the layer's ${shape[0]} output rows ([${shape[0]}, 1, …]) nor its ${shape[1]} input columns ([1, ${shape[1]}, …]) (weight [${shape}])`,
        );
      const scaleShape =
        onOutput && !onInput
          ? [shape[0], ...shape.slice(1).map(() => 1)]
          : [1, shape[1], ...shape.slice(2).map(() => 1)];
      const rest = new Map([...tensors].filter(([k]) => k !== "dora_scale"));
      tensors.delete("dora_scale");
      const method = innerFor([...rest.keys()]);
      if (!method) throw new Error(`${target.name}: dora_scale without LoRA, LoHa or LoKr factors`);
      tensors.clear();
      inner = (method as AdapterMethod<never>).fromTensors(target, original, rest) as AdapterLayer;
      const s = keep(
        scope(() =>
          scaleT
            .to(base.weight.device, "float32")
            .reshape(...scaleShape)
            .clone(),
        ),
      );
      return new DoraModule(target, original, inner, s);
    } catch (e) {
      inner?.disposeAdapter();
      throw e;
    } finally {
      scaleT?.dispose();
      for (const t of tensors.values()) t.dispose();
    }
  },
};
