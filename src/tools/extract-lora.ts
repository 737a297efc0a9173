// Extracting a LoRA from two checkpoints (a fine-tune and its base) by SVD
// per module, as kohya-ss/sd-scripts v0.9.1 networks/extract_lora_from_models.py
// svd(): the modules are those kohya's networks/lora.py create_network
// targets (every Linear / 1×1 conv inside the UNet's Transformer2DModel and
// CLIP's attention and MLP; with a conv dim also every layer of
// ResnetBlock2D / Downsample2D / Upsample2D), selected here by their
// diffusers key names; ΔW = W_tuned − W_org in float32; the text encoder
// is left out when no ΔW exceeds min_diff; rank r = conv dim for k×k convs
// (k > 1) else dim, then min(r, in, out); U_r·diag(S_r), Vh_r, clamped at the
// quantile only when one is given; alpha = r (float32). Weights are read one
// module at a time.
//
// Default: no clamp. The plain truncated SVD is the best rank-r LoRA
// (Eckart–Young); kohya's default clamp_quantile 0.99 cut the factors' top 1 %
// and cost ~12 % more error on the kohya_tools fixture, so Atelier's default
// keeps the optimum and `clampQuantile: 0.99` (`--clamp-quantile 0.99`)
// reproduces kohya's script exactly.

import { kohyaName, PREFIX } from "../adapters/targets.js";
import { type DType, scope, type Tensor } from "../engine/index.js";
import { alphaTensor, asMatrix, factorize, LoraToolError, shapeFactors } from "./lora-math.js";
import type { AdaptedComponent } from "./lora-plan.js";
import { checkOutputPath, type KohyaLora, saveKohyaLora } from "./tool-io.js";
import { openWeightView } from "./weight-view.js";

/** Weights by diffusers key (a WeightView, or tensors in memory). */
export interface WeightSource {
  readonly shapes: Record<AdaptedComponent, Map<string, readonly number[]>>;
  /** A float32 tensor the caller disposes. */
  get(component: AdaptedComponent, key: string): Tensor;
}

export interface ExtractOptions {
  dim: number;
  /** Rank for k×k convs; enables the ResnetBlock2D / Down- / Upsample2D modules. */
  convDim?: number;
  /** kohya's clamp quantile (kohya's default 0.99 gives its exact output); undefined / null (the default): no clamp, the truncated SVD. */
  clampQuantile?: number | null;
  minDiff?: number;
  /** Per module: factor signs to align to before the clamp (tests against recorded factors). */
  signsLike?: (module: string) => Tensor | undefined;
}

export interface ExtractedModule {
  name: string;
  rank: number;
  /** ‖ΔW − up·down‖ / ‖ΔW‖ of the written (clamped) factors. */
  relError: number;
  /** The same for the rank-r truncated SVD: the best any rank-r LoRA can do. */
  bestRelError: number;
  clampHi?: number;
  /** Every singular value of ΔW. */
  S: number[];
}

const TRANSFORMER = /^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\./;
const CONV_BLOCKS = /^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|downsamplers|upsamplers)\.\d+\./;
const TEXT = /^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$/;

/** kohya create_network's modules among a checkpoint's weights: kohya name → component, key, shape. */
export function extractTargets(
  shapes: WeightSource["shapes"],
  convDim: boolean,
): { name: string; component: AdaptedComponent; key: string; shape: readonly number[] }[] {
  const out = [];
  for (const [key, shape] of shapes.textEncoder)
    if (TEXT.test(key) && shape.length === 2)
      out.push({
        name: kohyaName(PREFIX.textEncoder, key.slice(0, -7)),
        component: "textEncoder" as const,
        key,
        shape,
      });
  for (const [key, shape] of shapes.unet) {
    if (!key.endsWith(".weight") || (shape.length !== 2 && shape.length !== 4)) continue;
    const oneByOne = shape.length === 2 || (shape[2] === 1 && shape[3] === 1);
    const inTransformer = TRANSFORMER.test(key) && oneByOne;
    const inConvBlock = convDim && CONV_BLOCKS.test(key);
    if (inTransformer || inConvBlock)
      out.push({ name: kohyaName(PREFIX.unet, key.slice(0, -7)), component: "unet" as const, key, shape });
  }
  return out;
}

function checkRank(what: string, r: number | undefined): void {
  if (r !== undefined && (!Number.isInteger(r) || r < 1))
    throw new LoraToolError(`${what} ${r}: must be a whole number ≥ 1`);
}

/** Extracts a LoRA of `tuned − org`. Both must be the same architecture. */
export function extractLora(
  org: WeightSource,
  tuned: WeightSource,
  o: ExtractOptions,
): { lora: KohyaLora; modules: ExtractedModule[]; textEncoderSame: boolean } {
  checkRank("dim", o.dim);
  checkRank("conv dim", o.convDim);
  const targets = extractTargets(org.shapes, o.convDim !== undefined);
  if (targets.length === 0)
    throw new LoraToolError("no layer to extract: neither checkpoint has the modules kohya's LoRA targets");
  for (const t of targets) {
    const s = tuned.shapes[t.component].get(t.key);
    if (!s || s.join() !== t.shape.join())
      throw new LoraToolError(
        `the checkpoints are different architectures: ${t.key} is [${t.shape}] in one and ${s ? `[${s}]` : "missing"} in the other (SD1 vs SD2?)`,
      );
  }
  const maxLayerRank = Math.max(...targets.map((t) => Math.min(t.shape[0], t.shape[1])));
  if (o.dim > maxLayerRank)
    throw new LoraToolError(`dim ${o.dim} is above every layer's rank (the largest min(in, out) is ${maxLayerRank})`);
  const diff = (t: (typeof targets)[number]) =>
    scope(() => {
      const a = org.get(t.component, t.key);
      const b = tuned.get(t.component, t.key);
      return b.sub(a);
    });
  // kohya: the text encoder counts as changed when some |ΔW| exceeds min_diff
  const minDiff = o.minDiff ?? 0.01;
  let textEncoderSame = true;
  for (const t of targets.filter((x) => x.component === "textEncoder")) {
    const m = scope(() => diff(t).abs().max().item());
    if (m > minDiff) {
      textEncoderSame = false;
      break;
    }
  }
  const lora: KohyaLora = new Map();
  const modules: ExtractedModule[] = [];
  try {
    for (const t of targets) {
      if (t.component === "textEncoder" && textEncoderSame) continue;
      const r = scope(() => {
        const d = diff(t);
        const k3 = t.shape.length === 4 && (t.shape[2] !== 1 || t.shape[3] !== 1);
        const rank = Math.min(k3 ? (o.convDim ?? o.dim) : o.dim, t.shape[0], t.shape[1]);
        const mat = asMatrix(d);
        const f = factorize(mat, rank, {
          clampQuantile: o.clampQuantile ?? undefined,
          signsLike: o.signsLike?.(t.name),
        });
        const norm = Math.sqrt(f.S.reduce((a, s) => a + s * s, 0));
        const rest = Math.sqrt(f.S.slice(rank).reduce((a, s) => a + s * s, 0));
        const err = mat.sub(f.up.matmul(f.down)).square().sum().sqrt().item();
        const shaped = shapeFactors(f.up, f.down, t.shape);
        return {
          tensors: new Map([
            ["lora_down.weight", shaped.down.contiguous()],
            ["lora_up.weight", shaped.up.contiguous()],
            ["alpha", alphaTensor(rank)],
          ]),
          info: {
            name: t.name,
            rank,
            relError: norm > 0 ? err / norm : 0,
            bestRelError: norm > 0 ? rest / norm : 0,
            clampHi: f.hi,
            S: f.S,
          },
        };
      });
      lora.set(t.name, r.tensors);
      modules.push(r.info);
    }
    return { lora, modules, textEncoderSame };
  } catch (e) {
    for (const m of lora.values()) for (const x of m.values()) x.dispose();
    throw e;
  }
}

/** Extracts `tuned − base` from two checkpoint files (single-file or diffusers) into a kohya LoRA file. */
export function extractLoraFromCheckpoints(
  base: string,
  tuned: string,
  output: string,
  o: ExtractOptions & { dtype?: DType; overwrite?: boolean },
): { modules: ExtractedModule[]; textEncoderSame: boolean } {
  checkRank("dim", o.dim);
  checkRank("conv dim", o.convDim);
  checkOutputPath(output, [base, tuned], { layout: "lora", overwrite: o.overwrite });
  const a = openWeightView(base);
  try {
    const b = openWeightView(tuned);
    try {
      if (a.info.version !== b.info.version)
        throw new LoraToolError(
          `${base} is ${a.info.version}, ${tuned} is ${b.info.version}: extract from two models of one base`,
        );
      const r = extractLora(a, b, o);
      try {
        const v2 = a.info.version === "sd2";
        const args = o.convDim !== undefined ? { conv_dim: String(o.convDim), conv_alpha: String(o.convDim) } : {};
        saveKohyaLora(
          output,
          r.lora,
          { ss_network_args: JSON.stringify(args), atelier_extracted_from: JSON.stringify({ base, tuned }) },
          { dtype: o.dtype, baseModelVersion: v2 ? "sd_v2" : "sd_v1" },
        );
        return { modules: r.modules, textEncoderSame: r.textEncoderSame };
      } finally {
        for (const m of r.lora.values()) for (const x of m.values()) x.dispose();
      }
    } finally {
      b.close();
    }
  } finally {
    a.close();
  }
}
