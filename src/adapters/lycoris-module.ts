// What LyCORIS's LoHa and LoKr modules share (KohakuBlueleaf/LyCORIS
// lycoris/modules/base.py; AUTOMATIC1111 extensions-builtin/Lora/network.py
// NetworkModule): factors held by file key, alpha, scale = alpha / rank from
// the method's rank keys, and a bypass forward that builds ΔW and runs x
// through it, as LyCORIS does for LoHa. While training, rank dropout and
// module dropout as LyCORIS loha.py / lokr.py define them: rank dropout
// zeroes whole output rows of ΔW (optionally rescaled by the kept mean),
// module dropout skips the module for a step. Each method (./loha.ts,
// ./lokr.ts) says how its factors make ΔW.
import { type Generator, keep, noGrad, rand, scope, type Tensor, uniform_ } from "../engine/index.js";
import type { AdapterKeys, AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight, loraScale } from "./functional/lora.js";
import { missingKey, rankKey } from "./keys.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

/** LyCORIS' dropouts for LoHa and LoKr (base.py): rank_dropout, rank_dropout_scale, module_dropout. */
export interface LycorisDropout {
  rankDropout?: number;
  /** Divide the kept rows by their mean (LyCORIS rank_dropout_scale). */
  rankDropoutScale?: boolean;
  moduleDropout?: number;
}

/** A module whose ΔW is rebuilt from factors held by their file keys. */
export abstract class LycorisModule extends AdapterLayer {
  readonly rank: number | null;
  readonly dropoutRates: Required<LycorisDropout>;
  readonly alpha: number | null;
  readonly scale: number;
  #tensors: Map<string, Tensor>;
  #alphaTensor: Tensor | null;

  /** Takes ownership of the factors (on the layer's device, in its dtype) and of alpha (float32, CPU). */
  constructor(
    target: AdapterTarget,
    original: Layer,
    keys: AdapterKeys,
    tensors: Map<string, Tensor>,
    alpha: Tensor | null,
    o: LycorisDropout = {},
  ) {
    super(target, original);
    this.dropoutRates = {
      rankDropout: o.rankDropout ?? 0,
      rankDropoutScale: o.rankDropoutScale ?? false,
      moduleDropout: o.moduleDropout ?? 0,
    };
    this.#tensors = tensors;
    this.#alphaTensor = alpha;
    const r = rankKey(keys, (k) => tensors.has(k));
    this.rank = r === null ? null : tensors.get(r)!.size(0);
    this.alpha = alpha ? scope(() => alpha.float().item()) : null;
    // LoKr with both factors full has no rank: LyCORIS and A1111 use scale 1
    this.scale = this.rank === null ? 1 : loraScale(this.alpha, this.rank);
  }

  /** The factor under a file key, or null. */
  protected factor(key: string): Tensor | null {
    return this.#tensors.get(key) ?? null;
  }

  protected bypass(x: Tensor): Tensor | null {
    const { rankDropout, rankDropoutScale, moduleDropout } = this.dropoutRates;
    if (this.training && moduleDropout > 0 && scope(() => rand([1]).item()) < moduleDropout) return null;
    return scope(() => {
      let d = this.delta();
      if (this.training && rankDropout > 0) {
        let drop = rand([d.size(0)], { device: d.device })
          .gt(rankDropout)
          .to(d.dtype);
        if (rankDropoutScale) drop = drop.div(drop.mean().clamp(1e-12));
        d = d.mul(drop.reshape(d.size(0), ...d.shape.slice(1).map(() => 1)));
      }
      return applyWeight(x.dtype === d.dtype ? x : x.to(d.dtype), d, this.op);
    });
  }

  adapterTensors(): Map<string, Tensor> {
    const out = new Map(this.#tensors);
    if (this.#alphaTensor) out.set("alpha", this.#alphaTensor);
    return out;
  }

  trainableParameters(): Tensor[] {
    return [...this.#tensors.values()];
  }

  disposeAdapter(): void {
    for (const t of this.#tensors.values()) t.dispose();
    this.#alphaTensor?.dispose();
  }
}

/** torch.nn.init.kaiming_uniform_(t, a=√5): U(±1/√fan_in), fan_in = numel / size(0). */
export function kaimingUniform_(t: Tensor, generator?: Generator): Tensor {
  const bound = 1 / Math.sqrt(t.numel / t.size(0));
  noGrad(() => uniform_(t, -bound, bound, generator));
  return t;
}

/** Checks a LyCORIS rank option, naming the module. */
export function checkRank(target: AdapterTarget, label: string, rank: number): void {
  if (!Number.isInteger(rank) || rank < 1)
    throw new Error(`${target.name}: ${label} rank (dim) must be a positive integer, got ${rank}`);
}

type Make = (
  target: AdapterTarget,
  original: Layer,
  tensors: Map<string, Tensor>,
  alpha: Tensor | null,
) => LycorisModule;

/**
 * fromTensors for a LyCORIS method: refuses keys that are not the method's
 * and incomplete modules, moves the factors to the layer, and builds ΔW once
 * to check it makes the layer's shape. It consumes `tensors`, also on failure.
 */
export function lycorisFromTensors(
  method: AdapterMethod<never>,
  make: Make,
  target: AdapterTarget,
  original: Layer,
  tensors: Map<string, Tensor>,
): LycorisModule {
  const own = new Map<string, Tensor>();
  let alpha: Tensor | null = null;
  try {
    const base = baseLayer(original);
    if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
    for (const k of tensors.keys())
      if (!method.keys.all.includes(k)) throw new Error(`${target.name}: unexpected ${method.label} key '${k}'`);
    const missing = missingKey(method.keys, [...tensors.keys()]);
    if (missing) throw new Error(`${target.name}: ${missing} is missing`);
    const w = base.weight;
    for (const [k, t] of tensors) {
      if (k === "alpha") alpha = keep(t.to("cpu", "float32"));
      else own.set(k, keep(t.to(w.device, w.dtype)));
    }
    const m = make(target, original, own, alpha);
    checkDelta(m, method.label, weightShape(base));
    return m;
  } catch (e) {
    for (const t of own.values()) t.dispose();
    alpha?.dispose();
    throw e;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Builds ΔW once to check that the factors make the layer's shape; the message names the module. */
function checkDelta(m: LycorisModule, label: string, shape: number[]): void {
  const numel = shape.reduce((a, b) => a * b, 1);
  try {
    scope(() => {
      const d = m.deltaWeight();
      if (d.numel !== numel) throw new Error(`ΔW has ${d.numel} elements`);
    });
  } catch (e) {
    const sizes = [...m.adapterTensors()].map(([k, t]) => `${k} [${t.shape}]`).join(", ");
    throw new Error(
      `${m.target.name}: the ${label} factors (${sizes}) do not make the layer's weight [${shape}] (${(e as Error).message})`,
    );
  }
}
