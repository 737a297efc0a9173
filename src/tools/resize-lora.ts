// Resizing a LoRA to a lower rank (kohya-ss/sd-scripts v0.9.1
// networks/resize_lora.py): per module the SVD of up@down, truncated to a
// fixed rank or one chosen by sv_ratio / sv_fro / sv_cumulative (capped by
// the given rank), alpha rescaled so alpha/rank is unchanged, no clamp. The
// energy each module keeps (sum of S, Frobenius) is reported.

import { loadLoraFile } from "../adapters/lora-file.js";
import { type DType, scope } from "../engine/index.js";
import { alphaOf, alphaTensor, asMatrix, factorize, LoraToolError, shapeFactors } from "./lora-math.js";
import { checkOutputPath, type KohyaLora, saveKohyaLora } from "./tool-io.js";

export type DynamicMethod = "sv_ratio" | "sv_fro" | "sv_cumulative";

export interface ResizeOptions {
  /** Rank of linear and 1×1 layers; with a dynamic method, the cap. */
  rank: number;
  /** Rank of conv layers (every 4-D lora_down, 1×1 included, as kohya's test); default `rank`. */
  convRank?: number;
  dynamic?: { method: DynamicMethod; param: number };
}

export interface ResizedModule {
  name: string;
  oldRank: number;
  rank: number;
  alpha: number;
  /** Σ S kept / Σ S (null for an all-zero module). */
  sumRetained: number | null;
  /** ‖S kept‖ / ‖S‖. */
  froRetained: number | null;
  /** S[0] / S[rank−1]. */
  maxRatio: number | null;
}

const MIN_SV = 1e-6;

function searchsorted(sorted: number[], v: number): number {
  let i = 0;
  while (i < sorted.length && sorted[i] < v) i++;
  return i;
}

/** kohya rank_resize: the new rank for singular values S. */
export function chooseRank(S: number[], cap: number, dynamic?: ResizeOptions["dynamic"]): number {
  if (S[0] <= MIN_SV) return 1;
  let rank = cap;
  if (dynamic) {
    const { method, param } = dynamic;
    let index: number;
    if (method === "sv_ratio") index = S.filter((s) => s > S[0] / param).length;
    else {
      const vals = method === "sv_fro" ? S.map((s) => s * s) : S;
      const total = vals.reduce((a, b) => a + b, 0);
      let acc = 0;
      const cum = vals.map((v) => {
        acc += v;
        return acc / total;
      });
      index = searchsorted(cum, method === "sv_fro" ? param * param : param) + 1;
    }
    index = Math.max(1, Math.min(index, S.length - 1));
    rank = Math.min(index + 1, cap);
  }
  return rank;
}

function checkOptions(o: ResizeOptions): void {
  for (const [what, r] of [
    ["rank", o.rank],
    ["conv rank", o.convRank ?? o.rank],
  ] as const)
    if (!Number.isInteger(r) || r < 1) throw new LoraToolError(`${what} ${r}: must be a whole number ≥ 1`);
  if (o.dynamic) {
    const { method, param } = o.dynamic;
    if (!["sv_ratio", "sv_fro", "sv_cumulative"].includes(method))
      throw new LoraToolError(`dynamic method ${JSON.stringify(method)}: use sv_ratio, sv_fro or sv_cumulative`);
    if (!(param > 0) || (method !== "sv_ratio" && param > 1))
      throw new LoraToolError(`${method} ${param}: ${method === "sv_ratio" ? "must be > 0" : "must be in (0, 1]"}`);
  }
}

/** Resizes the LoRA modules of a kohya LoRA; LyCORIS modules are refused. */
export function resizeLora(lora: KohyaLora, o: ResizeOptions): { lora: KohyaLora; modules: ResizedModule[] } {
  checkOptions(o);
  const maxRank = Math.max(...[...lora.values()].map((m) => m.get("lora_down.weight")?.size(0) ?? 0));
  if (!o.dynamic && o.rank > maxRank && (o.convRank ?? o.rank) > maxRank)
    throw new LoraToolError(`rank ${o.rank} is above the LoRA's own (at most ${maxRank}): resizing only lowers ranks`);
  const out: KohyaLora = new Map();
  const report: ResizedModule[] = [];
  try {
    for (const [name, m] of lora) {
      const down = m.get("lora_down.weight");
      const up = m.get("lora_up.weight");
      if (!down || !up || m.has("lora_mid.weight"))
        throw new LoraToolError(`module ${name}: only LoRA/LoCon modules (lora_down/lora_up) can be resized`);
      const oldRank = down.size(0);
      const alpha = alphaOf(m);
      const scale = alpha === undefined ? 1 : alpha / oldRank;
      const conv = down.ndim === 4;
      const cap = conv ? (o.convRank ?? o.rank) : o.rank;
      const r = scope(() => {
        const weightShape = conv ? [up.size(0), ...down.shape.slice(1)] : [up.size(0), down.size(1)];
        const product = asMatrix(up.float()).matmul(asMatrix(down.float()));
        const S = factorize(product, 1).S;
        const rank = Math.min(chooseRank(S, cap, o.dynamic), S.length);
        const f = factorize(product, rank);
        const shaped = shapeFactors(f.up, f.down, weightShape);
        const sum = S.reduce((a, b) => a + Math.abs(b), 0);
        const fro = Math.sqrt(S.reduce((a, b) => a + b * b, 0));
        const kept = S.slice(0, rank);
        const zero = S[0] <= MIN_SV;
        return {
          tensors: new Map([
            ["lora_down.weight", shaped.down.contiguous()],
            ["lora_up.weight", shaped.up.contiguous()],
            ["alpha", alphaTensor(scale * rank)],
          ]),
          info: {
            name,
            oldRank,
            rank,
            alpha: scale * rank,
            sumRetained: zero ? null : kept.reduce((a, b) => a + b, 0) / sum,
            froRetained: zero ? null : Math.sqrt(kept.reduce((a, b) => a + b * b, 0)) / fro,
            maxRatio: zero ? null : S[0] / S[rank - 1],
          },
        };
      });
      out.set(name, r.tensors);
      report.push(r.info);
    }
    return { lora: out, modules: report };
  } catch (e) {
    for (const m of out.values()) for (const t of m.values()) t.dispose();
    throw e;
  }
}

/** Reads a LoRA file, resizes it and writes a kohya file. */
export function resizeLoraFile(
  input: string,
  output: string,
  o: ResizeOptions & { dtype?: DType; overwrite?: boolean },
): ResizedModule[] {
  checkOptions(o);
  checkOutputPath(output, [input], { layout: "lora", overwrite: o.overwrite });
  const file = loadLoraFile(input, { dtype: "float32" });
  try {
    const r = resizeLora(file.modules, o);
    try {
      const comment = o.dynamic
        ? `Dynamic resize with ${o.dynamic.method}: ${o.dynamic.param}`
        : `dimension is resized to ${o.rank}${o.convRank && o.convRank !== o.rank ? ` (conv: ${o.convRank})` : ""}`;
      saveKohyaLora(output, r.lora, { ...file.metadata, ss_training_comment: comment }, { dtype: o.dtype });
      return r.modules;
    } finally {
      for (const m of r.lora.values()) for (const t of m.values()) t.dispose();
    }
  } finally {
    for (const m of file.modules.values()) for (const t of m.values()) t.dispose();
  }
}
