// What is in a model file: its kind and architecture, dtypes, parameter
// counts, metadata, and problems found. Anything unreadable (malicious,
// malformed, truncated) throws with the reason; see `atelier inspect`.
import { statSync } from "node:fs";
import { rankKey } from "../adapters/keys.js";
import { ADAPTER_REGISTRY, type AdapterRegistry } from "../adapters/registry.js";
import { BYTES, type DType, isFloating, isfinite, noGrad, scope, type Tensor } from "../engine/index.js";
import { loadCheckpoint } from "../formats/checkpoint.js";
import { sniff } from "../formats/checkpoint-source.js";
import { openCkpt } from "../formats/ckpt.js";
import { openSafetensors } from "../formats/safetensors.js";

export type FileKind = "sd-checkpoint" | "lora" | "lycoris" | "embedding" | "hypernetwork" | "tensors";

export interface InspectReport {
  path: string;
  format: "safetensors" | "ckpt" | "diffusers";
  kind: FileKind;
  /** A one-line description of the architecture, e.g. "Stable Diffusion 1.x, epsilon prediction". */
  architecture: string;
  tensors: number;
  parameters: number;
  bytes: number;
  dtypes: Partial<Record<DType, number>>;
  /** Parameter counts per SD component, for checkpoints. */
  components?: Record<string, number>;
  metadata: Record<string, string>;
  notes: string[];
  /** Non-finite values, suspicious contents. */
  problems: string[];
}

interface TensorSource {
  keys(): string[];
  info(k: string): { dtype: DType; shape: number[] };
  get(k: string): Tensor;
  close(): void;
  metadata: Record<string, unknown>;
}

function open(path: string): { format: "safetensors" | "ckpt"; src: TensorSource } {
  const format = sniff(path);
  return { format, src: format === "safetensors" ? openSafetensors(path) : openCkpt(path) };
}

/**
 * A file's kind from its keys. Adapters in kohya's layout are the modules
 * the registry's methods detect: "lycoris" when one is of a method other
 * than kohya's networks.lora (LoHa, LoKr), else "lora"; diffusers/PEFT
 * LoRAs by their key names.
 */
export function fileKind(keys: string[], registry: AdapterRegistry = ADAPTER_REGISTRY): FileKind {
  const has = (re: RegExp) => keys.some((k) => re.test(k));
  if (has(/^(model\.diffusion_model|first_stage_model|cond_stage_model)\./)) return "sd-checkpoint";
  const methods = registry.methodsIn(keys);
  if (methods.some((m) => m.networkModule !== "networks.lora")) return "lycoris";
  if (methods.length > 0 || has(/\.lora_[AB]\.weight$/) || has(/\.lora\.(down|up)\.weight$/)) return "lora";
  if (keys.includes("string_to_param.*") || keys.includes("emb_params") || keys.length === 1) return "embedding";
  if (has(/^\d+\.\d+\.linear\.\d+\.weight$/)) return "hypernetwork";
  return "tensors";
}

/** The distinct ranks of the modules whose method has a rank key (LoRA's lora_down.weight, LoHa's hada_w1_b, …), in file order. */
function ranks(keys: string[], info: TensorSource["info"]): number[] {
  const registry = ADAPTER_REGISTRY;
  const out = new Set<number>();
  for (const [name, k] of registry.modules(keys)) {
    const method = registry.methodFor(k);
    const key = typeof method === "string" ? null : rankKey(method.keys, (x) => k.includes(x));
    if (key) out.add(info(`${name}.${key}`).shape[0]);
  }
  return [...out];
}

function describe(kind: FileKind, keys: string[], info: TensorSource["info"]): string {
  switch (kind) {
    case "lora":
    case "lycoris": {
      const modules = new Set(keys.map((k) => k.split(".")[0]));
      const te = [...modules].filter((m) => m.startsWith("lora_te")).length;
      const r = ranks(keys, info);
      // the algorithms of the modules (LoHa, LoKr, DoRA, (IA)³, full, …), named for LyCORIS files
      const algos = ADAPTER_REGISTRY.methodsIn(keys).map((m) => m.label);
      const what = kind === "lora" ? "LoRA" : `LyCORIS (${algos.join(", ")})`;
      return `${what}: ${modules.size} modules (${te} text encoder)${r.length ? `, rank${r.length > 1 ? "s" : ""} ${r.join(", ")}` : ""}`;
    }
    case "embedding": {
      const k = keys.find((x) => x === "emb_params" || x === "string_to_param.*") ?? keys[0];
      const shape = info(k).shape;
      // [vectors, width] as A1111 saves it; a single [width] vector as diffusers' learned_embeds.
      if (shape.length === 2) return `textual inversion embedding: ${shape[0]} vector(s) of width ${shape[1]}`;
      if (shape.length === 1) return `textual inversion embedding: 1 vector of width ${shape[0]}`;
      return `one tensor of shape [${shape.join(", ")}] (not an embedding's [vectors, width])`;
    }
    case "hypernetwork":
      return "hypernetwork";
    default:
      return "tensors";
  }
}

/** Reads and checks a file; `scan` also reads every tensor to look for NaN/Inf. */
export function inspectFile(path: string, o: { scan?: boolean } = {}): InspectReport {
  if (statSync(path).isDirectory()) return inspectCheckpoint(path, "diffusers", {});
  const { format, src } = open(path);
  const report: InspectReport = {
    path,
    format,
    kind: "tensors",
    architecture: "",
    tensors: 0,
    parameters: 0,
    bytes: 0,
    dtypes: {},
    metadata: Object.fromEntries(Object.entries(src.metadata).map(([k, v]) => [k, String(v)])),
    notes: [],
    problems: [],
  };
  try {
    const keys = src.keys();
    report.kind = fileKind(keys);
    for (const k of keys) {
      const { dtype, shape } = src.info(k);
      const n = shape.reduce((a, b) => a * b, 1);
      report.tensors++;
      report.parameters += n;
      report.bytes += n * BYTES[dtype];
      report.dtypes[dtype] = (report.dtypes[dtype] ?? 0) + 1;
      // Every tensor is read, not only floating ones: reading checks that a
      // BOOL holds only 0/1 and that the data is where the header says.
      if (o.scan !== false && n > 0) {
        const finite = noGrad(() =>
          scope(() => {
            const t = src.get(k);
            return isFloating(dtype) ? isfinite(t).sum().item() : n;
          }),
        );
        if (finite < n) report.problems.push(`${k}: ${n - finite} non-finite value(s)`);
      }
    }
    report.architecture = report.kind === "sd-checkpoint" ? "" : describe(report.kind, keys, (k) => src.info(k));
  } finally {
    src.close();
  }
  if (report.kind === "sd-checkpoint") return { ...inspectCheckpoint(path, format, report), problems: report.problems };
  return report;
}

/** Loads a checkpoint strictly (this is what refuses wrong keys and shapes) and summarises it. */
function inspectCheckpoint(
  path: string,
  format: InspectReport["format"],
  partial: Partial<InspectReport>,
): InspectReport {
  const { components, info } = loadCheckpoint(path);
  try {
    const counts: Record<string, number> = {};
    const dtypes: Partial<Record<DType, number>> = {};
    let parameters = 0;
    let tensors = 0;
    let bytes = 0;
    for (const [name, sd] of Object.entries(components)) {
      counts[name] = 0;
      for (const t of sd?.values() ?? []) {
        counts[name] += t.numel;
        tensors++;
        bytes += t.numel * BYTES[t.dtype];
        dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
      }
      parameters += counts[name];
    }
    const version = info.version === "sd1" ? "Stable Diffusion 1.x" : "Stable Diffusion 2.x";
    return {
      path,
      format,
      kind: "sd-checkpoint",
      architecture: `${version}${info.inpainting ? " inpainting" : ""}, ${info.predictionType === "v_prediction" ? "v" : "epsilon"} prediction (${info.predictionReason})`,
      tensors: partial.tensors ?? tensors,
      parameters: partial.parameters ?? parameters,
      bytes: partial.bytes ?? bytes,
      dtypes: partial.dtypes ?? dtypes,
      components: counts,
      metadata: Object.fromEntries(Object.entries(info.metadata).map(([k, v]) => [k, String(v)])),
      notes: [
        `version: ${info.versionReason}`,
        ...info.notes,
        ...(info.ignoredKeys.length
          ? [`${info.ignoredKeys.length} bookkeeping key(s) ignored (EMA, schedule buffers, position_ids…)`]
          : []),
      ],
      problems: partial.problems ?? [],
    };
  } finally {
    for (const sd of Object.values(components)) for (const t of sd?.values() ?? []) t.dispose();
  }
}

export function formatReport(r: InspectReport): string {
  const gb = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(2)} MB`);
  const lines = [
    `file          ${r.path}`,
    `format        ${r.format}`,
    `kind          ${r.kind}`,
    ...(r.architecture ? [`architecture  ${r.architecture}`] : []),
    `tensors       ${r.tensors} (${Object.entries(r.dtypes)
      .map(([d, n]) => `${n} ${d}`)
      .join(", ")})`,
    `parameters    ${r.parameters.toLocaleString("en-US")} (${gb(r.bytes)})`,
    ...Object.entries(r.components ?? {}).map(([c, n]) => `  ${c.padEnd(12)}${n.toLocaleString("en-US")}`),
  ];
  const meta = Object.entries(r.metadata);
  if (meta.length) {
    lines.push("metadata");
    for (const [k, v] of meta) lines.push(`  ${k}: ${v.length > 120 ? `${v.slice(0, 117)}...` : v}`);
  }
  for (const n of r.notes) lines.push(`note          ${n}`);
  lines.push(r.problems.length ? `problems      ${r.problems.length}` : "problems      none found");
  for (const p of r.problems) lines.push(`  ${p}`);
  return lines.join("\n");
}
