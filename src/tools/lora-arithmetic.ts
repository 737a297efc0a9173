// LoRA arithmetic: several LoRAs with weights (negative subtracts) → one
// LoRA. "concat" is exact: the factors are stacked, ranks add up, and
// Σ weight·scale·up@down is kept bit for bit up to rounding. "svd"
// re-factorises the sum to a target rank as kohya-ss/sd-scripts v0.9.1
// networks/svd_merge_lora.py merge_lora_models: W = Σ ratio·(up@down)·alpha/rank,
// r = conv rank for k×k convs (k > 1) else rank, r = min(r, in, out), SVD,
// clamp at the 0.99 quantile, alpha = r (an int64 scalar, as kohya saves it).

import { loadLoraFile } from "../adapters/lora-file.js";
import { cat, type DType, scope, type Tensor } from "../engine/index.js";
import { alphaOf, alphaTensor, asMatrix, factorize, LoraToolError, moduleDelta, shapeFactors } from "./lora-math.js";
import type { WeightedLora } from "./lora-plan.js";
import { checkOutputPath, type KohyaLora, saveKohyaLora } from "./tool-io.js";

export interface WeightedKohyaLora {
  lora: KohyaLora;
  weight: number;
  /** For messages. */
  name: string;
}

export interface SvdMergeOptions {
  rank: number;
  /** Rank of k×k convs (k > 1); default `rank`. */
  convRank?: number;
  /** kohya's clamp quantile (default 0.99); null: no clamp, the plain truncated SVD. */
  clampQuantile?: number | null;
  /** Per module: factor signs to align to (tests against recorded factors). */
  signsLike?: (module: string) => Tensor | undefined;
}

/** The layer weight shape a LoRA module implies: [out, in] or [out, in, kh, kw]. */
function loraWeightShape(name: string, m: Map<string, Tensor>): number[] {
  const down = m.get("lora_down.weight");
  const up = m.get("lora_up.weight");
  if (!down || !up || m.has("lora_mid.weight"))
    throw new LoraToolError(
      `module ${name}: only LoRA/LoCon modules (lora_down/lora_up, no Tucker core) can be combined`,
    );
  return down.ndim === 4 ? [up.size(0), ...down.shape.slice(1)] : [up.size(0), down.size(1)];
}

function modulesByName(
  inputs: readonly WeightedKohyaLora[],
): Map<string, { m: Map<string, Tensor>; weight: number }[]> {
  const by = new Map<string, { m: Map<string, Tensor>; weight: number }[]>();
  for (const i of inputs) {
    if (!Number.isFinite(i.weight)) throw new LoraToolError(`${i.name}: weight ${i.weight} is not a finite number`);
    for (const [name, m] of i.lora) {
      const list = by.get(name) ?? [];
      list.push({ m, weight: i.weight });
      by.set(name, list);
    }
  }
  for (const [name, list] of by) {
    const shapes = list.map((x) => loraWeightShape(name, x.m).join("×"));
    if (new Set(shapes).size > 1)
      throw new LoraToolError(`module ${name}: the inputs disagree on its layer's shape (${shapes.join(" vs ")})`);
  }
  return by;
}

/** Exact sum: ranks concatenated, weight·alpha/rank folded into up, alpha = total rank (scale 1). */
export function concatLoras(inputs: readonly WeightedKohyaLora[]): KohyaLora {
  const out: KohyaLora = new Map();
  for (const [name, list] of modulesByName(inputs)) {
    out.set(
      name,
      scope(() => {
        const ups: Tensor[] = [];
        const downs: Tensor[] = [];
        for (const { m, weight } of list) {
          const down = m.get("lora_down.weight")!;
          const up = m.get("lora_up.weight")!;
          const r = down.size(0);
          const alpha = alphaOf(m);
          const scale = alpha === undefined || alpha === 0 ? 1 : alpha / r;
          ups.push(up.float().mul(weight * scale));
          downs.push(down.float());
        }
        const down = cat(downs, 0);
        return new Map([
          ["lora_down.weight", down],
          ["lora_up.weight", cat(ups, 1)],
          ["alpha", alphaTensor(down.size(0))],
        ]);
      }),
    );
  }
  return out;
}

export interface SvdMergedModule {
  name: string;
  rank: number;
  /** The accumulated ΔW (sign-free), for checks. Disposed with the result unless kept. */
  S: number[];
  clampHi?: number;
}

/** kohya's svd merge; returns the LoRA and per-module ranks and singular values. */
export function svdMergeLoras(
  inputs: readonly WeightedKohyaLora[],
  o: SvdMergeOptions,
): { lora: KohyaLora; modules: SvdMergedModule[] } {
  for (const [what, r] of [
    ["rank", o.rank],
    ["conv rank", o.convRank ?? o.rank],
  ] as const)
    if (!Number.isInteger(r) || r < 1) throw new LoraToolError(`${what} ${r}: must be a whole number ≥ 1`);
  const modules = [...modulesByName(inputs)].map(([name, list]) => ({
    name,
    list,
    shape: loraWeightShape(name, list[0].m),
  }));
  // kohya caps each module at min(rank, in, out); a rank no layer reaches is a mistake, not a cap
  const maxLayerRank = Math.max(...modules.map((m) => Math.min(m.shape[0], m.shape[1])));
  if (modules.length > 0 && Math.min(o.rank, o.convRank ?? o.rank) > maxLayerRank)
    throw new LoraToolError(`rank ${o.rank} is above every layer's rank (the largest min(in, out) is ${maxLayerRank})`);
  const out: KohyaLora = new Map();
  const report: SvdMergedModule[] = [];
  for (const { name, list, shape } of modules) {
    const r = scope(() => {
      let W: Tensor | null = null;
      for (const { m, weight } of list) {
        const d = moduleDelta(name, m, shape).mul(weight);
        W = W ? W.add(d) : d;
      }
      const k3 = shape.length === 4 && (shape[2] !== 1 || shape[3] !== 1);
      const rank = Math.min(k3 ? (o.convRank ?? o.rank) : o.rank, shape[0], shape[1]);
      const f = factorize(asMatrix(W!), rank, {
        clampQuantile: o.clampQuantile === null ? undefined : (o.clampQuantile ?? 0.99),
        signsLike: o.signsLike?.(name),
      });
      const shaped = shapeFactors(f.up, f.down, shape);
      return {
        tensors: new Map([
          ["lora_down.weight", shaped.down.contiguous()],
          ["lora_up.weight", shaped.up.contiguous()],
          ["alpha", alphaTensor(rank, "int64")],
        ]),
        info: { name, rank, S: f.S, clampHi: f.hi },
      };
    });
    out.set(name, r.tensors);
    report.push(r.info);
  }
  return { lora: out, modules: report };
}

export interface CombineFilesOptions {
  mode: "concat" | "svd";
  rank?: number;
  convRank?: number;
  clampQuantile?: number;
  dtype?: DType;
  overwrite?: boolean;
}

/** Reads LoRA files, combines them and writes one kohya LoRA. */
export function combineLoraFiles(inputs: readonly WeightedLora[], output: string, o: CombineFilesOptions): number {
  if (inputs.length === 0) throw new LoraToolError("no LoRA files to combine");
  if (o.mode === "svd" && o.rank === undefined) throw new LoraToolError("an SVD merge needs a target rank (--rank)");
  checkOutputPath(
    output,
    inputs.map((i) => i.path),
    { layout: "lora", overwrite: o.overwrite },
  );
  const loaded: WeightedKohyaLora[] = [];
  try {
    for (const i of inputs)
      loaded.push({ lora: loadLoraFile(i.path, { dtype: "float32" }).modules, weight: i.weight, name: i.path });
    const lora =
      o.mode === "concat"
        ? concatLoras(loaded)
        : svdMergeLoras(loaded, { rank: o.rank!, convRank: o.convRank, clampQuantile: o.clampQuantile }).lora;
    try {
      const record = JSON.stringify(inputs.map((i) => ({ file: i.path.split("/").pop(), weight: i.weight })));
      saveKohyaLora(output, lora, { atelier_combined_loras: record, atelier_combine_mode: o.mode }, { dtype: o.dtype });
      return lora.size;
    } finally {
      for (const m of lora.values()) for (const t of m.values()) t.dispose();
    }
  } finally {
    for (const l of loaded) for (const m of l.lora.values()) for (const t of m.values()) t.dispose();
  }
}
