// What LyCORIS's LoHa and LoKr modules share when applied from files
// (KohakuBlueleaf/LyCORIS lycoris/modules/base.py; AUTOMATIC1111
// extensions-builtin/Lora/network.py NetworkModule): factors held by file
// key, alpha, scale = alpha / rank from the method's rank keys, and a bypass
// forward that builds ΔW and runs x through it, as LyCORIS does for LoHa.
// Each method (./loha.ts, ./lokr.ts) says how its factors make ΔW.
import { keep, scope, type Tensor } from "../engine/index.js";
import type { AdapterKeys, AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight, loraScale } from "./functional/lora.js";
import { missingKey, rankKey } from "./keys.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

/** A module whose ΔW is rebuilt from factors held by their file keys. */
export abstract class LycorisModule extends AdapterLayer {
  readonly rank: number | null;
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
  ) {
    super(target, original);
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

  protected bypass(x: Tensor): Tensor {
    return scope(() => {
      const d = this.delta();
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
