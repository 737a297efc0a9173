// The model tools' commands: thin shells over src/tools (merge LoRAs into a
// checkpoint, LoRA arithmetic, extract, resize, checkpoint merger, rescue,
// compatibility check).

import { mergeCheckpoints } from "../tools/checkpoint-merger.js";
import { checkFile, formatCheck } from "../tools/compat-check.js";
import { extractLoraFromCheckpoints } from "../tools/extract-lora.js";
import { combineLoraFiles } from "../tools/lora-arithmetic.js";
import type { WeightedLora } from "../tools/lora-plan.js";
import { mergeLorasIntoCheckpoint } from "../tools/merge-lora.js";
import { rescueAdapter } from "../tools/rescue.js";
import { type DynamicMethod, resizeLoraFile } from "../tools/resize-lora.js";
import { outputDType } from "../tools/tool-io.js";
import { num, oneOf, parse, required, str, UsageError } from "./args.js";

/** `FILE` or `FILE:WEIGHT` (a negative weight subtracts). */
function weighted(spec: string): WeightedLora {
  const i = spec.lastIndexOf(":");
  if (i > 0) {
    const w = spec.slice(i + 1);
    if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(w)) return { path: spec.slice(0, i), weight: Number(w) };
  }
  return { path: spec, weight: 1 };
}

function loras(values: Record<string, unknown>): WeightedLora[] {
  const v = values.lora;
  const list = Array.isArray(v) ? (v as string[]) : [];
  if (list.length === 0) throw new UsageError("give at least one --lora FILE[:WEIGHT]");
  return list.map(weighted);
}

const dtypeOf = (values: Record<string, unknown>) => {
  try {
    return outputDType(str(values, "dtype"));
  } catch (e) {
    throw new UsageError(`--dtype: ${(e as Error).message}`);
  }
};

export function mergeLoraCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      lora: { type: "string", multiple: true },
      to: { type: "string" },
      dtype: { type: "string" },
      "skip-unmatched": { type: "boolean" },
      overwrite: { type: "boolean" },
    },
    { min: 2, max: 2, names: "CHECKPOINT and OUT" },
  );
  const r = mergeLorasIntoCheckpoint(positionals[0], loras(values), positionals[1], {
    layout: oneOf(values, "to", ["ldm", "diffusers"] as const),
    dtype: dtypeOf(values),
    skipUnmatched: values["skip-unmatched"] === true,
    overwrite: values.overwrite === true,
  });
  for (const m of r.merged) console.log(`merged ${m.path} × ${m.weight}: ${m.modules} modules`);
  for (const s of r.skipped) console.log(`skipped (no layer): ${s}`);
  console.log(
    `wrote ${positionals[1]} (${r.layout}${r.streamed ? ", streamed" : ""}; ${r.weightsChanged} weights changed)`,
  );
  return 0;
}

export function loraMathCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      lora: { type: "string", multiple: true },
      mode: { type: "string" },
      rank: { type: "string" },
      "conv-rank": { type: "string" },
      "clamp-quantile": { type: "string" },
      dtype: { type: "string" },
      overwrite: { type: "boolean" },
    },
    { min: 1, max: 1, names: "OUT" },
  );
  const mode = oneOf(values, "mode", ["concat", "svd"] as const) ?? (values.rank ? "svd" : "concat");
  const n = combineLoraFiles(loras(values), positionals[0], {
    mode,
    rank: num(values, "rank", { integer: true, min: 1 }),
    convRank: num(values, "conv-rank", { integer: true, min: 1 }),
    clampQuantile: num(values, "clamp-quantile", { min: 0, max: 1 }),
    dtype: dtypeOf(values),
    overwrite: values.overwrite === true,
  });
  console.log(`wrote ${positionals[0]} (${mode}, ${n} modules)`);
  return 0;
}

function clampOption(values: Record<string, unknown>): number | null | undefined {
  return str(values, "clamp-quantile") === "none" ? null : num(values, "clamp-quantile", { min: 0, max: 1 });
}

export function extractLoraCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      dim: { type: "string" },
      "conv-dim": { type: "string" },
      "clamp-quantile": { type: "string" },
      "min-diff": { type: "string" },
      dtype: { type: "string" },
      overwrite: { type: "boolean" },
      json: { type: "boolean" },
    },
    { min: 3, max: 3, names: "BASE, TUNED and OUT" },
  );
  const r = extractLoraFromCheckpoints(positionals[0], positionals[1], positionals[2], {
    dim: num(values, "dim", { integer: true, min: 1 }) ?? 4,
    convDim: num(values, "conv-dim", { integer: true, min: 1 }),
    clampQuantile: clampOption(values),
    minDiff: num(values, "min-diff", { min: 0 }),
    dtype: dtypeOf(values),
    overwrite: values.overwrite === true,
  });
  if (values.json) console.log(JSON.stringify(r, null, 2));
  else {
    if (r.textEncoderSame) console.log("text encoder is the same: UNet only");
    for (const m of r.modules)
      console.log(
        `${m.name.padEnd(80)} rank ${m.rank}  error ${(100 * m.relError).toFixed(2)} % (truncated SVD ${(100 * m.bestRelError).toFixed(2)} %)`,
      );
    console.log(`wrote ${positionals[2]} (${r.modules.length} modules)`);
  }
  return 0;
}

export function resizeLoraCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      rank: { type: "string" },
      "conv-rank": { type: "string" },
      dynamic: { type: "string" },
      param: { type: "string" },
      dtype: { type: "string" },
      overwrite: { type: "boolean" },
      json: { type: "boolean" },
    },
    { min: 2, max: 2, names: "IN and OUT" },
  );
  const method = oneOf(values, "dynamic", ["sv_ratio", "sv_fro", "sv_cumulative"] as const) as
    | DynamicMethod
    | undefined;
  const param = num(values, "param", { min: 0 });
  if (method && param === undefined) throw new UsageError(`--dynamic ${method} needs --param`);
  const modules = resizeLoraFile(positionals[0], positionals[1], {
    rank: num(values, "rank", { integer: true }) ?? Number(required(values, "rank")),
    convRank: num(values, "conv-rank", { integer: true }),
    dynamic: method ? { method, param: param! } : undefined,
    dtype: dtypeOf(values),
    overwrite: values.overwrite === true,
  });
  if (values.json) console.log(JSON.stringify(modules, null, 2));
  else {
    for (const m of modules) {
      const kept =
        m.froRetained === null
          ? "all-zero module"
          : `fro ${(100 * m.froRetained).toFixed(1)} %, sum(S) ${(100 * m.sumRetained!).toFixed(1)} %`;
      console.log(`${m.name.padEnd(80)} ${m.oldRank} → ${m.rank}  kept ${kept}`);
    }
    console.log(`wrote ${positionals[1]} (${modules.length} modules)`);
  }
  return 0;
}

export function mergeCheckpointsCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      b: { type: "string" },
      c: { type: "string" },
      mode: { type: "string" },
      multiplier: { type: "string" },
      "bake-vae": { type: "string" },
      dtype: { type: "string" },
      overwrite: { type: "boolean" },
    },
    { min: 2, max: 2, names: "A and OUT" },
  );
  const mode =
    oneOf(values, "mode", ["weighted_sum", "add_difference", "none"] as const) ??
    (values.c ? "add_difference" : values.b ? "weighted_sum" : "none");
  const r = mergeCheckpoints(positionals[0], positionals[1], {
    mode,
    b: str(values, "b"),
    c: str(values, "c"),
    multiplier: num(values, "multiplier"),
    bakeVae: str(values, "bake-vae"),
    dtype: dtypeOf(values),
    overwrite: values.overwrite === true,
  });
  console.log(
    `wrote ${positionals[1]} (${mode}: ${r.merged} merged, ${r.copied} from A, ${r.vaeBaked} from the VAE${r.inpainting ? ", inpainting" : ""})`,
  );
  return 0;
}

export function rescueCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    { dtype: { type: "string" }, overwrite: { type: "boolean" } },
    { min: 2, max: 2, names: "IN and OUT" },
  );
  const r = rescueAdapter(positionals[0], positionals[1], {
    dtype: dtypeOf(values),
    overwrite: values.overwrite === true,
  });
  console.log(
    `wrote ${positionals[1]} (kohya, ${r.modules} modules, from ${r.format}${r.alphaAdded ? `; alpha = rank added to ${r.alphaAdded}` : ""})`,
  );
  for (const e of r.embeddings) console.log(`wrote ${e.path} (embedding for ${e.token})`);
  return 0;
}

export function checkCommand(argv: string[]): number {
  const { values, positionals } = parse(argv, { json: { type: "boolean" } }, { min: 1, max: 1, names: "FILE" });
  const r = checkFile(positionals[0]);
  console.log(values.json ? JSON.stringify(r, null, 2) : formatCheck(r));
  return 0;
}
