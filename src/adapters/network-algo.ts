// One entry point for every algorithm the trainer offers (LyCORIS
// lycoris/kohya.py create_network with `algo`; kohya-ss/sd-scripts
// networks/lora.py for plain LoRA/LoCon): lora | locon | loha | lokr | dora |
// ia3 | full on kohya's default targets, with the per-layer options LyCORIS
// derives from network_dim / conv_dim, and the ss_network_* a file of it
// carries (ss_network_module lycoris.kohya, ss_network_args with `algo`, as
// LyCORIS' kohya wrapper writes them). Every option is checked before any
// layer is touched; errors name the module and the config field.
import type { DType, Generator } from "../engine/index.js";
import type { AdapterMethod, AdapterTarget } from "./adapter.js";
import { dora } from "./dora.js";
import { full } from "./full.js";
import { ia3 } from "./ia3.js";
import { loha } from "./loha.js";
import { lokr } from "./lokr.js";
import { lora } from "./lora.js";
import { injectLora, injectNetwork, type LoraNetwork } from "./network.js";
import { type LoraModelParts, loraTargets } from "./targets.js";

export const ALGOS = ["lora", "locon", "loha", "lokr", "dora", "ia3", "full"] as const;
export type Algo = (typeof ALGOS)[number];

export interface NetworkOptions {
  algo: Algo;
  /** network_dim: the rank of linear (and 1×1 conv) layers. */
  rank: number;
  /** network_alpha (default 1; 0 means rank). */
  alpha?: number;
  /** conv_dim: also adapt the 3×3 convs of resnets and samplers (0 or absent: none). */
  convRank?: number;
  convAlpha?: number;
  dropout?: number;
  rankDropout?: number;
  rankDropoutScale?: boolean;
  moduleDropout?: number;
  /** LoKr factor (−1: the most balanced split). */
  factor?: number;
  decomposeBoth?: boolean;
  useTucker?: boolean;
  /** DoRA on top of locon/loha/lokr (LyCORIS dora_wd); algo dora is LoRA/LoCon with it. */
  weightDecompose?: boolean;
  /** DoRA norms over output rows (LyCORIS wd_on_out) instead of input columns (what A1111 reads). */
  doraOnOutput?: boolean;
  /** Also train the norm layers (LyCORIS train_norm; ./norm.ts). */
  trainNorm?: boolean;
  unet?: boolean;
  textEncoder?: boolean;
  generator?: Generator;
  dtype?: DType;
  multiplier?: number;
  /** Names the config fields in messages (default: the option names). */
  field?: (option: string) => string;
}

const NO_RANK = new Set<Algo>(["ia3", "full"]);

/** The first problem with the options, naming the field, or null (no model needed). */
export function networkOptionsError(o: NetworkOptions): string | null {
  const field = o.field ?? ((k: string) => k);
  if (!(ALGOS as readonly string[]).includes(o.algo))
    return `${field("algo")}: unknown algorithm '${o.algo}' (one of ${ALGOS.join(", ")})`;
  const conv = (o.convRank ?? 0) > 0;
  // lora with conv_rank is kohya's LoCon (networks/lora.py conv_dim), the same as locon
  if (conv && NO_RANK.has(o.algo)) return `${field("convRank")}: algo ${o.algo} has no convolution setting`;
  if (o.useTucker && !conv && o.algo !== "lokr")
    return `${field("useTucker")}: the Tucker form is for 3×3 convs; set ${field("convRank")}`;
  if (o.useTucker && !["locon", "loha", "lokr", "dora"].includes(o.algo))
    return `${field("useTucker")}: algo ${o.algo} has no Tucker form`;
  if (o.weightDecompose && !["locon", "loha", "lokr", "dora", "lora"].includes(o.algo))
    return `${field("weightDecompose")}: DoRA decomposes LoRA/LoCon, LoHa or LoKr, not ${o.algo}`;
  if ((o.factor ?? -1) !== -1 && o.algo !== "lokr") return `${field("factor")}: only LoKr has a factor`;
  if (o.decomposeBoth && o.algo !== "lokr") return `${field("decomposeBoth")}: only LoKr has decompose_both`;
  if (o.dropout && o.algo !== "lora" && o.algo !== "locon")
    return `${field("dropout")}: LyCORIS defines (normal) dropout for LoRA/LoCon only; use rank or module dropout`;
  if (o.rankDropout && (NO_RANK.has(o.algo) || o.algo === "dora" || o.weightDecompose))
    return `${field("rankDropout")}: algo ${o.algo}${o.weightDecompose ? " with DoRA" : ""} has no rank dropout`;
  for (const [k, v] of [
    ["dropout", o.dropout],
    ["rankDropout", o.rankDropout],
    ["moduleDropout", o.moduleDropout],
  ] as const)
    if (v !== undefined && !(v >= 0 && v < 1)) return `${field(k)} must be in [0, 1), got ${v}`;
  return null;
}

/** The method and options of one target. */
function plan(o: NetworkOptions, t: AdapterTarget): { method: AdapterMethod<unknown>; options: unknown } {
  const isConv = t.kind === "conv3x3" || t.kind === "conv";
  const rank = isConv ? o.convRank! : o.rank;
  const alpha = isConv ? (o.convAlpha ?? 1) : (o.alpha ?? 1);
  const common = {
    rank,
    alpha,
    generator: o.generator,
    dtype: o.dtype,
    rankDropout: o.rankDropout,
    moduleDropout: o.moduleDropout,
    onOutput: o.doraOnOutput,
  };
  const dropouts = { rankDropoutScale: o.rankDropoutScale };
  switch (o.algo) {
    case "ia3":
      return { method: ia3 as AdapterMethod<unknown>, options: { moduleDropout: o.moduleDropout, dtype: o.dtype } };
    case "full":
      return { method: full as AdapterMethod<unknown>, options: { moduleDropout: o.moduleDropout, dtype: o.dtype } };
    case "loha": {
      const options = { ...common, ...dropouts, useTucker: o.useTucker };
      if (o.weightDecompose) return { method: dora as AdapterMethod<unknown>, options: { inner: "loha", ...options } };
      return { method: loha as AdapterMethod<unknown>, options };
    }
    case "lokr": {
      const options = {
        ...common,
        ...dropouts,
        useTucker: o.useTucker,
        factor: o.factor,
        decomposeBoth: o.decomposeBoth,
      };
      if (o.weightDecompose) return { method: dora as AdapterMethod<unknown>, options: { inner: "lokr", ...options } };
      return { method: lokr as AdapterMethod<unknown>, options };
    }
    default: {
      const options = { ...common, dropout: o.dropout, useTucker: o.useTucker };
      if (o.algo === "dora" || o.weightDecompose)
        return { method: dora as AdapterMethod<unknown>, options: { inner: "lora", ...options } };
      return { method: lora as AdapterMethod<unknown>, options };
    }
  }
}

/** A rank that does not fit the layer (LoRA-style factors wider than the weight), naming module and field. */
function rankError(o: NetworkOptions, t: AdapterTarget): string | null {
  if (NO_RANK.has(o.algo) || o.algo === "lokr") return null;
  const isConv = t.kind === "conv3x3" || t.kind === "conv";
  const rank = isConv ? o.convRank! : o.rank;
  const [out, inDim, ...kernel] = t.weightShape;
  const limit = Math.min(out, inDim * kernel.reduce((a, b) => a * b, 1));
  if (!Number.isInteger(rank) || rank < 1)
    return `${(o.field ?? ((k) => k))(isConv ? "convRank" : "rank")} must be a positive integer, got ${rank}`;
  if (rank > limit)
    return `${t.name}: ${(o.field ?? ((k) => k))(isConv ? "convRank" : "rank")} ${rank} is larger than the layer (weight [${t.weightShape}] has rank at most ${limit})`;
  return null;
}

/** ss_network_args as LyCORIS' kohya wrapper records them (values as strings). */
export function networkArgs(o: NetworkOptions): Record<string, string> {
  const a: Record<string, string> = { algo: o.algo === "dora" ? "locon" : o.algo };
  if ((o.convRank ?? 0) > 0) {
    a.conv_dim = String(o.convRank);
    a.conv_alpha = String(o.convAlpha ?? 1);
  }
  if (o.dropout) a.dropout = String(o.dropout);
  if (o.rankDropout) a.rank_dropout = String(o.rankDropout);
  if (o.rankDropoutScale) a.rank_dropout_scale = "True";
  if (o.moduleDropout) a.module_dropout = String(o.moduleDropout);
  if (o.algo === "lokr") {
    a.factor = String(o.factor ?? -1);
    if (o.decomposeBoth) a.decompose_both = "True";
  }
  if (o.useTucker) a.use_tucker = "True";
  if (o.trainNorm) a.train_norm = "True";
  if (o.algo === "dora" || o.weightDecompose) {
    a.dora_wd = "True";
    a.wd_on_out = o.doraOnOutput ? "True" : "False";
  }
  return a;
}

/**
 * New trainable modules of `o.algo` on kohya's default targets (3×3 convs
 * too with convRank). Plain LoRA/LoCon without DoRA is kohya's networks.lora
 * (injectLora); the rest is a lycoris.kohya network. Nothing is changed when
 * an option or a layer's rank does not fit.
 */
export function injectAlgo(model: LoraModelParts, o: NetworkOptions): LoraNetwork {
  const problem = networkOptionsError(o);
  if (problem) throw new Error(problem);
  const conv = (o.convRank ?? 0) > 0;
  const targets = loraTargets(model, { unet: o.unet, textEncoder: o.textEncoder, conv });
  for (const t of targets) {
    const e = rankError(o, t);
    if (e) throw new Error(e);
  }
  // with train_norm the file is LyCORIS' (kohya's networks.lora has no norm modules)
  if ((o.algo === "lora" || o.algo === "locon") && !o.weightDecompose && !o.useTucker && !o.trainNorm)
    return injectLora(model, { ...o, convRank: conv ? o.convRank : undefined });
  const first = targets[0];
  if (!first) throw new Error("no layer to adapt (neither UNet nor text encoder selected)");
  const method = plan(o, first).method;
  return injectNetwork(model, method, {
    moduleOptions: (t) => plan(o, t).options,
    unet: o.unet,
    textEncoder: o.textEncoder,
    conv,
    multiplier: o.multiplier,
    trainNorm: o.trainNorm,
    normModuleDropout: o.moduleDropout,
    spec: {
      module: "lycoris.kohya",
      dim: NO_RANK.has(o.algo) ? "None" : String(o.rank),
      alpha: NO_RANK.has(o.algo) ? "None" : String(o.alpha ?? 1),
      args: networkArgs(o),
      dropout: o.dropout ? String(o.dropout) : "None",
    },
  });
}
