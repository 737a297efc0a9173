// The workspace: a folder of named working models, as the A1111 Dreambooth
// extension's "Create model" step makes them. Each model folder holds the
// working weights (a diffusers folder, fp32) and model.json: where the
// weights came from (path, size, sha256), the detected architecture, the
// chosen scheduler and the creation date.
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { basename, isAbsolute, join, relative, resolve } from "node:path";
import { disposeAll } from "../engine/index.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import {
  type CheckpointInfo,
  loadCheckpoint,
  type PredictionType,
  type SDVersion,
  saveCheckpoint,
} from "../formats/checkpoint.js";
import { readJson } from "../formats/diffusers-folder.js";
import type { SDConfigs } from "../formats/keymaps/index.js";
import { findTokenizer } from "../models/clip/tokenizer.js";
import { loadSchedulerConfig, SAMPLER_NAMES, type SamplerName } from "../schedulers/index.js";

export const DEFAULT_WORKSPACE = "atelier-workspace";
export const MODEL_JSON = "model.json";
export const WEIGHTS_FOLDER = "weights";
/** The scheduler create-model picks when none is given (the Dreambooth extension's default). */
export const DEFAULT_SCHEDULER: SamplerName = "ddim";

export class WorkspaceError extends Error {
  override name = "WorkspaceError";
}

/** model.json. */
export interface ModelMeta {
  atelier_model: 1;
  name: string;
  /** ISO 8601. */
  created: string;
  source: {
    path: string;
    format: CheckpointInfo["format"];
    /** Bytes (a folder: all its files). */
    size: number;
    /** Of the file; of a folder: of the `sha256  relative/path` lines of its files, sorted. */
    sha256: string;
    ema: boolean;
  };
  architecture: {
    version: SDVersion;
    version_reason: string;
    prediction_type: PredictionType;
    prediction_reason: string;
    inpainting: boolean;
    configs: SDConfigs;
    notes: string[];
  };
  scheduler: SamplerName;
  weights: { folder: string; layout: "diffusers"; dtype: "float32"; tokenizer: boolean };
}

export interface WorkspaceModel {
  name: string;
  /** The model's folder. */
  dir: string;
  /** The working weights (a diffusers folder): what `model` resolves to. */
  weights: string;
  meta: ModelMeta;
}

/** `--workspace`, else $ATELIER_WORKSPACE, else ./atelier-workspace; absolute. */
export function defaultWorkspace(
  env: Record<string, string | undefined> = process.env,
  cwd: string = process.cwd(),
): string {
  return resolve(cwd, env.ATELIER_WORKSPACE || DEFAULT_WORKSPACE);
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Throws unless `name` is usable as a model folder name (no separators, no leading dot, ≤ 100 chars). */
export function checkModelName(name: string): void {
  const why =
    name === ""
      ? "is empty"
      : /[/\\]/.test(name)
        ? "contains a path separator"
        : name.length > 100
          ? "is longer than 100 characters"
          : !NAME.test(name)
            ? "may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit"
            : undefined;
  if (why) throw new WorkspaceError(`invalid model name ${JSON.stringify(name)}: it ${why}`);
}

export function isModelName(s: string): boolean {
  return s.length <= 100 && NAME.test(s);
}

const CHUNK = 8 << 20;

function hashFile(path: string): string {
  const h = createHash("sha256");
  const buf = Buffer.allocUnsafe(CHUNK);
  const fd = openSync(path, "r");
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

function filesUnder(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (e.name.startsWith(".")) continue;
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...filesUnder(join(dir, e.name), rel));
    else if (statSync(join(dir, e.name)).isFile()) out.push(rel);
  }
  return out;
}

/** Size and sha256 of a checkpoint file, or of a folder's files (hidden ones left out). */
export function sourceDigest(path: string): { size: number; sha256: string } {
  const st = statSync(path);
  if (!st.isDirectory()) return { size: st.size, sha256: hashFile(path) };
  const h = createHash("sha256");
  let size = 0;
  for (const rel of filesUnder(path)) {
    const p = join(path, rel);
    size += statSync(p).size;
    h.update(`${hashFile(p)}  ${rel}\n`);
  }
  return { size, sha256: h.digest("hex") };
}

/** diffusers scheduler classes of the sampler names. */
const SCHEDULER_CLASS: Record<SamplerName, string> = {
  ddpm: "DDPMScheduler",
  ddim: "DDIMScheduler",
  euler: "EulerDiscreteScheduler",
  euler_a: "EulerAncestralDiscreteScheduler",
  dpmpp_2m: "DPMSolverMultistepScheduler",
  dpmpp_2m_karras: "DPMSolverMultistepScheduler",
};

/**
 * Sets the weights folder's scheduler to the chosen one: the class name in
 * scheduler_config.json and model_index.json, keeping the schedule (betas,
 * offsets) of the source's own scheduler config when it had one.
 */
function writeScheduler(
  weights: string,
  sourceFolder: string | undefined,
  scheduler: SamplerName,
  prediction: PredictionType,
): void {
  const path = join(weights, "scheduler", "scheduler_config.json");
  const own = sourceFolder ? join(sourceFolder, "scheduler", "scheduler_config.json") : undefined;
  const base: Record<string, unknown> = own && existsSync(own) ? { ...loadSchedulerConfig(own) } : {};
  // Python's bare -Infinity/NaN came back as strings; leave them to diffusers' defaults.
  for (const [k, v] of Object.entries(base)) if (v === "-Infinity" || v === "Infinity" || v === "NaN") delete base[k];
  const config: Record<string, unknown> = {
    ...readJson(path),
    ...base,
    _class_name: SCHEDULER_CLASS[scheduler],
    prediction_type: prediction,
  };
  // The name decides Karras sigmas (dpmpp_2m_karras), not what the source had.
  if (scheduler === "dpmpp_2m_karras") config.use_karras_sigmas = true;
  else delete config.use_karras_sigmas;
  writeTextAtomic(path, `${JSON.stringify(config, null, 2)}\n`);
  const indexPath = join(weights, "model_index.json");
  const index = readJson(indexPath);
  index.scheduler = ["diffusers", SCHEDULER_CLASS[scheduler]];
  writeTextAtomic(indexPath, `${JSON.stringify(index, null, 2)}\n`);
}

export interface CreateModelOptions {
  /** The source: a single-file checkpoint or a diffusers folder. */
  from: string;
  workspace?: string;
  scheduler?: SamplerName;
  /** Replace a model of the same name (default: refuse). */
  overwrite?: boolean;
  /** A tokenizer folder to copy in; default: the source's, $ATELIER_TOKENIZER or the HF hub cache, if any. */
  tokenizer?: string;
  /** Take the UNet from the checkpoint's EMA weights. */
  ema?: boolean;
  /** The parameterization, when detection would get it wrong (SD2). */
  predictionType?: PredictionType;
  /** Creation time (tests). */
  now?: Date;
}

/**
 * Makes workspace model `name` from a checkpoint: loads it (any format the
 * checkpoint loader reads), writes the fp32 working weights as a diffusers
 * folder plus model.json. The folder is built beside its place and renamed
 * in, so a failure leaves the workspace as it was.
 */
export function createModel(name: string, o: CreateModelOptions): WorkspaceModel {
  checkModelName(name);
  const scheduler = o.scheduler ?? DEFAULT_SCHEDULER;
  if (!SAMPLER_NAMES.includes(scheduler)) {
    throw new WorkspaceError(`unknown scheduler ${JSON.stringify(scheduler)}; valid: ${SAMPLER_NAMES.join(", ")}`);
  }
  const workspace = resolve(o.workspace ?? defaultWorkspace());
  const dir = join(workspace, name);
  if (existsSync(dir) && !o.overwrite) {
    throw new WorkspaceError(
      `model ${JSON.stringify(name)} already exists in ${workspace}; pass --overwrite to replace it`,
    );
  }
  const from = resolve(o.from);
  // The loader's own message for missing, unreadable or foreign files.
  const loaded = loadCheckpoint(from, { dtype: "float32", ema: o.ema, predictionType: o.predictionType });
  const info = loaded.info;
  const tag = `${process.pid}-${randomBytes(6).toString("hex")}`;
  const tmp = join(workspace, `.${name}.tmp-${tag}`);
  try {
    const isFolder = statSync(from).isDirectory();
    const tokenizer = findTokenizerFor(o.tokenizer, isFolder ? from : undefined, info.version);
    const digest = sourceDigest(from);
    mkdirSync(workspace, { recursive: true });
    mkdirSync(tmp);
    const weights = join(tmp, WEIGHTS_FOLDER);
    saveCheckpoint(loaded.components, weights, {
      layout: "diffusers",
      configs: info.configs,
      predictionType: info.predictionType,
      tokenizerFrom: tokenizer,
    });
    writeScheduler(weights, isFolder ? from : undefined, scheduler, info.predictionType);
    const meta: ModelMeta = {
      atelier_model: 1,
      name,
      created: (o.now ?? new Date()).toISOString(),
      source: { path: from, format: info.format, size: digest.size, sha256: digest.sha256, ema: info.ema },
      architecture: {
        version: info.version,
        version_reason: info.versionReason,
        prediction_type: info.predictionType,
        prediction_reason: info.predictionReason,
        inpainting: info.inpainting,
        configs: info.configs,
        notes: [
          ...info.notes,
          ...(tokenizer ? [] : ["no tokenizer copied: pass --tokenizer DIR, or set ATELIER_TOKENIZER when training"]),
        ],
      },
      scheduler,
      weights: { folder: WEIGHTS_FOLDER, layout: "diffusers", dtype: "float32", tokenizer: tokenizer !== undefined },
    };
    writeTextAtomic(join(tmp, MODEL_JSON), `${JSON.stringify(meta, null, 2)}\n`);
    swapIn(tmp, dir, tag);
    return { name, dir, weights: join(dir, WEIGHTS_FOLDER), meta };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    disposeAll(loaded.components);
  }
}

/** The explicit tokenizer (an error if it is not one), else whatever findTokenizer finds, else none. */
function findTokenizerFor(explicit: string | undefined, modelDir: string | undefined, kind: SDVersion) {
  if (explicit !== undefined) return findTokenizer({ tokenizerDir: explicit, kind }).dir;
  try {
    return findTokenizer({ modelDir, kind }).dir;
  } catch {
    return undefined;
  }
}

/** Renames the finished folder into place; an old one is moved aside first and removed last. */
function swapIn(tmp: string, dir: string, tag: string): void {
  const old = existsSync(dir) ? join(dir, "..", `.${basename(dir)}.old-${tag}`) : undefined;
  if (old) renameSync(dir, old);
  try {
    renameSync(tmp, dir);
  } catch (e) {
    if (old) renameSync(old, dir);
    throw e;
  }
  if (old) rmSync(old, { recursive: true, force: true });
}

/** Reads one model's model.json; errors say what is wrong with it. */
export function openModel(name: string, workspace: string = defaultWorkspace()): WorkspaceModel {
  checkModelName(name);
  const dir = join(resolve(workspace), name);
  const file = join(dir, MODEL_JSON);
  if (!existsSync(file)) {
    const names = listModels(workspace).models.map((m) => m.name);
    throw new WorkspaceError(
      `no model ${JSON.stringify(name)} in the workspace ${resolve(workspace)}` +
        (names.length ? ` (models: ${names.join(", ")})` : " (it has no models)"),
    );
  }
  const meta = readJson(file) as unknown as ModelMeta;
  if (meta.atelier_model !== 1 || typeof meta.weights?.folder !== "string" || typeof meta.scheduler !== "string") {
    throw new WorkspaceError(`${file}: not an Atelier model.json (atelier_model 1, weights, scheduler)`);
  }
  const weights = join(dir, meta.weights.folder);
  if (!existsSync(join(weights, "model_index.json"))) {
    throw new WorkspaceError(`${dir}: the working weights (${meta.weights.folder}/) are missing`);
  }
  return { name, dir, weights, meta };
}

/** The workspace's models by name, and a line for each folder that is not a readable model. */
export function listModels(workspace: string = defaultWorkspace()): { models: WorkspaceModel[]; problems: string[] } {
  const ws = resolve(workspace);
  const models: WorkspaceModel[] = [];
  const problems: string[] = [];
  if (!existsSync(ws)) return { models, problems };
  for (const e of readdirSync(ws, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!e.isDirectory() || !isModelName(e.name)) continue;
    try {
      models.push(openModel(e.name, ws));
    } catch (err) {
      problems.push(`${e.name}: ${(err as Error).message}`);
    }
  }
  return { models, problems };
}

export interface ResolvedModel {
  /** The weights to load: a checkpoint file or a diffusers folder, absolute. */
  path: string;
  /** Set when `nameOrPath` named a workspace model. */
  model?: WorkspaceModel;
}

/**
 * A config's `model`: the name of a workspace model when the workspace has
 * one by that name, else a path (relative to `baseDir`) to a checkpoint
 * file or a diffusers folder.
 */
export function resolveModel(nameOrPath: string, workspace: string = defaultWorkspace(), baseDir = "."): ResolvedModel {
  const ws = resolve(workspace);
  if (isModelName(nameOrPath) && existsSync(join(ws, nameOrPath, MODEL_JSON))) {
    const model = openModel(nameOrPath, ws);
    return { path: model.weights, model };
  }
  const path = resolve(baseDir, nameOrPath);
  if (existsSync(path)) return { path };
  const looksLikePath =
    isAbsolute(nameOrPath) || /[/\\]/.test(nameOrPath) || /\.(safetensors|ckpt|pt|bin)$/.test(nameOrPath);
  const names = listModels(ws).models.map((m) => m.name);
  const known = names.length ? `its models: ${names.join(", ")}` : "it has no models";
  throw new WorkspaceError(
    looksLikePath || !isModelName(nameOrPath)
      ? `${path}: no such file or folder`
      : `${JSON.stringify(nameOrPath)} is neither a model in the workspace ${ws} (${known}) nor a file or folder (${relative(process.cwd(), path) || path})`,
  );
}
