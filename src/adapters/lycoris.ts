// LyCORIS LoHa and LoKr, for applying files (KohakuBlueleaf/LyCORIS
// lycoris/modules/loha.py, lokr.py; AUTOMATIC1111 extensions-builtin/Lora/
// network_hada.py, network_lokr.py). The bypass forward builds ΔW and runs
// x through it, as LyCORIS does for LoHa. Training these is not supported:
// `create` refuses.
import { keep, scope, type Tensor } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget, Layer } from "./adapter.js";
import { applyWeight, loraScale } from "./functional/lora.js";
import { lohaDeltaWeight, lohaRank, lokrDeltaWeight, lokrRank } from "./functional/lycoris.js";
import { AdapterLayer, baseLayer, weightShape } from "./wrapped-layer.js";

export type Kind = "loha" | "lokr";

const KEYS: Record<Kind, readonly string[]> = {
  loha: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"],
  lokr: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"],
};

/** A LoHa or LoKr module: its factors by file key; ΔW from the functional formulas. */
export class LycorisModule extends AdapterLayer {
  readonly rank: number | null;
  readonly alpha: number | null;
  readonly scale: number;
  #tensors: Map<string, Tensor>;
  #alphaTensor: Tensor | null;

  constructor(
    readonly kind: Kind,
    target: AdapterTarget,
    original: Layer,
    tensors: Map<string, Tensor>,
    alpha: Tensor | null,
  ) {
    super(target, original);
    this.#tensors = tensors;
    this.#alphaTensor = alpha;
    const f = (k: string) => tensors.get(k) ?? null;
    this.rank =
      kind === "loha"
        ? lohaRank({ w1a: f("hada_w1_a")!, w1b: f("hada_w1_b")!, w2a: f("hada_w2_a")!, w2b: f("hada_w2_b")! })
        : lokrRank({ w1b: f("lokr_w1_b"), w2b: f("lokr_w2_b") });
    this.alpha = alpha ? scope(() => alpha.float().item()) : null;
    // LoKr with both factors full has no rank: LyCORIS and A1111 use scale 1
    this.scale = this.rank === null ? 1 : loraScale(this.alpha, this.rank);
  }

  protected delta(): Tensor {
    const f = (k: string) => this.#tensors.get(k) ?? null;
    const shape = this.target.weightShape;
    if (this.kind === "loha") {
      const w = { w1a: f("hada_w1_a")!, w1b: f("hada_w1_b")!, w2a: f("hada_w2_a")!, w2b: f("hada_w2_b")! };
      return lohaDeltaWeight({ ...w, t1: f("hada_t1"), t2: f("hada_t2") }, this.scale, shape);
    }
    const lokr = {
      w1: f("lokr_w1"),
      w1a: f("lokr_w1_a"),
      w1b: f("lokr_w1_b"),
      w2: f("lokr_w2"),
      w2a: f("lokr_w2_a"),
      w2b: f("lokr_w2_b"),
      t2: f("lokr_t2"),
    };
    return lokrDeltaWeight(lokr, this.scale, shape);
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

function method(kind: Kind, detectKey: RegExp): AdapterMethod<never> {
  const keys = new Set(KEYS[kind]);
  return {
    name: kind,
    supports: () => true,
    detect: (k) => k.some((key) => detectKey.test(key)),
    create(target) {
      throw new Error(`${target.name}: training ${kind === "loha" ? "LoHa" : "LoKr"} is not supported; use LoRA/LoCon`);
    },
    fromTensors(target, original, tensors) {
      const own = new Map<string, Tensor>();
      let alpha: Tensor | null = null;
      try {
        const base = baseLayer(original);
        if (!base) throw new Error(`${target.name}: ${target.path} is not a Linear or Conv2d`);
        for (const k of tensors.keys())
          if (!keys.has(k))
            throw new Error(`${target.name}: unexpected ${kind === "loha" ? "LoHa" : "LoKr"} key '${k}'`);
        const missing = missingFactors(kind, [...tensors.keys()]);
        if (missing) throw new Error(`${target.name}: ${missing} is missing`);
        const w = base.weight;
        for (const [k, t] of tensors) {
          if (k === "alpha") alpha = keep(t.to("cpu", "float32"));
          else own.set(k, keep(t.to(w.device, w.dtype)));
        }
        const m = new LycorisModule(kind, target, original, own, alpha);
        checkDelta(m, weightShape(base));
        return m;
      } catch (e) {
        for (const t of own.values()) t.dispose();
        alpha?.dispose();
        throw e;
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    },
  };
}

/** The first factor a LoHa / LoKr module lacks, or null. */
export function missingFactors(kind: Kind, keys: string[]): string | null {
  const has = (k: string) => keys.includes(k);
  if (kind === "loha") return KEYS.loha.slice(0, 4).find((k) => !has(k)) ?? null;
  if (!has("lokr_w1") && !(has("lokr_w1_a") && has("lokr_w1_b"))) return "lokr_w1 (or lokr_w1_a + lokr_w1_b)";
  if (!has("lokr_w2") && !(has("lokr_w2_a") && has("lokr_w2_b"))) return "lokr_w2 (or lokr_w2_a + lokr_w2_b)";
  return null;
}

/** Builds ΔW once to check that the factors make the layer's shape; the message names the module. */
function checkDelta(m: LycorisModule, shape: number[]): void {
  const numel = shape.reduce((a, b) => a * b, 1);
  try {
    scope(() => {
      const d = m.deltaWeight();
      if (d.numel !== numel) throw new Error(`ΔW has ${d.numel} elements`);
    });
  } catch (e) {
    const sizes = [...m.adapterTensors()].map(([k, t]) => `${k} [${t.shape}]`).join(", ");
    throw new Error(
      `${m.target.name}: the ${m.kind === "loha" ? "LoHa" : "LoKr"} factors (${sizes}) do not make the layer's weight [${shape}] (${(e as Error).message})`,
    );
  }
}

export const loha = method("loha", /^hada_w1_a$/);
export const lokr = method("lokr", /^lokr_w1(_a)?$/);
