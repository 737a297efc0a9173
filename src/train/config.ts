// The training config: read from JSON or TOML, overridden by --FIELD VALUE
// flags, checked field by field against config-schema.ts, then defaults,
// cross-field checks and path resolution. Every error names the field (and
// the file or flag it came from). The result is plain data: written as JSON
// beside a run's outputs, it loads back to the same config.
import { randomInt } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, extname, join, resolve } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { lrSchedule, type ScheduleOptions } from "../engine/optim/index.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { configSchema, type Field, type Kind, type Schema, type TrainConfig } from "./config-schema.js";
import { suggest } from "./config-suggest.js";
import { type MethodSpec, methodSpecFor, methodSpecs } from "./methods/index.js";
import { resolveOptimizer } from "./optimizer-choice.js";
import { defaultWorkspace, resolveModel } from "./workspace.js";

export * from "./config-schema.js";
export { suggest } from "./config-suggest.js";

export class ConfigError extends Error {
  override name = "ConfigError";
  /** The field at fault, dotted (`concepts[0].class_prompt`), when one is. */
  readonly field?: string;
  constructor(message: string, field?: string) {
    super(message);
    this.field = field;
  }
}

export interface LoadTrainConfigOptions {
  /** What relative paths of an object config are resolved against (default: cwd). */
  baseDir?: string;
  /** Check that the model, the instance folders and the tokenizer exist (default true). */
  checkFiles?: boolean;
  /** Where ATELIER_WORKSPACE is read (default process.env). */
  env?: Record<string, string | undefined>;
  /** The folder flag paths and the default workspace are relative to (default process.cwd()). */
  cwd?: string;
}

type Tree = Record<string, unknown>;

/** Where values come from: `origin` prefixes messages ("cfg.toml: "), `base` resolves relative paths. */
interface Ctx {
  origin: string;
  base: string;
}

interface State {
  tree: Tree;
  /** The folder `model` is relative to: the file's, or cwd when a flag set it. */
  modelBase: string;
  origin: string;
}

/**
 * Loads a config file (.json or .toml), a config object, or nothing (flags
 * only), applies `overrides` (`--lora.rank 8`, see describeConfig()), and
 * returns the resolved config. Throws ConfigError naming the field.
 */
export function loadTrainConfig(
  source: string | Record<string, unknown> | undefined,
  overrides: readonly string[] = [],
  o: LoadTrainConfigOptions = {},
): TrainConfig {
  const cwd = resolve(o.cwd ?? process.cwd());
  let raw: unknown = {};
  let ctx: Ctx = { origin: "", base: resolve(cwd, o.baseDir ?? ".") };
  if (typeof source === "string") {
    const file = resolve(cwd, source);
    raw = readConfigFile(file);
    ctx = { origin: `${source}: `, base: dirname(file) };
  } else if (source !== undefined) {
    raw = source;
  }
  const state: State = { tree: {}, modelBase: ctx.base, origin: ctx.origin };
  state.tree = checkTree(configSchema(), raw, "", ctx);
  applyOverrides(state, overrides, cwd);
  return finish(state, { checkFiles: o.checkFiles ?? true, env: o.env ?? process.env, cwd });
}

/** The resolved config as JSON (key order of the schema). */
export function configToJson(c: TrainConfig): string {
  return `${JSON.stringify(c, null, 2)}\n`;
}

/** Writes the resolved config atomically (e.g. OUTPUT_DIR/config.json), so that a run can be repeated. */
export function writeResolvedConfig(c: TrainConfig, path: string = join(c.output_dir, "config.json")): string {
  mkdirSync(dirname(path), { recursive: true });
  writeTextAtomic(path, configToJson(c));
  return path;
}

function readConfigFile(file: string): unknown {
  const ext = extname(file).toLowerCase();
  if (ext !== ".json" && ext !== ".toml") throw new ConfigError(`${file}: a config file must be .json or .toml`);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError(`${file}: ${err.code === "ENOENT" ? "no such file" : `cannot read it (${err.message})`}`);
  }
  try {
    return ext === ".toml" ? parseToml(text) : JSON.parse(text);
  } catch (e) {
    if (e instanceof TomlError) throw new ConfigError(`${file}: not valid TOML: ${tomlProblem(e, text)}`);
    throw new ConfigError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
}

/** smol-toml's reason, where it is, and the line quoted (its code frame spreads the user's text over the message). */
function tomlProblem(e: TomlError, text: string): string {
  const reason = e.message.split("\n")[0].replace(/^Invalid TOML document:\s*/, "");
  const line = text.split(/\r?\n/)[e.line - 1] ?? "";
  const shown = line.length > 120 ? `${line.slice(0, 117)}...` : line;
  return `${reason} at line ${e.line}, column ${e.column}: ${JSON.stringify(shown)}`;
}

// ---- checking values ------------------------------------------------------------

const isTable = (v: unknown): v is Tree =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

function show(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "bigint") return `the BigInt ${v}n (use a number)`;
  if (typeof v === "symbol" || typeof v === "function") return `a ${typeof v}`;
  if (Array.isArray(v)) return "a list";
  if (v instanceof Date) return "a date";
  if (isTable(v)) return "a table";
  const s = JSON.stringify(v);
  return s && s.length > 60 ? `${s.slice(0, 57)}…` : String(s);
}

function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? join(homedir(), p.slice(2)) : p;
}

function wants(k: Kind): string {
  switch (k.t) {
    case "int": {
      const r = [`an integer >= ${k.min}`];
      if (k.max !== undefined) r.push(`<= ${k.max}`);
      return r.join(" and ") + (k.multipleOf ? `, a multiple of ${k.multipleOf}` : "");
    }
    case "number": {
      const r: string[] = [];
      if (k.above !== undefined) r.push(`> ${k.above}`);
      if (k.min !== undefined) r.push(`>= ${k.min}`);
      if (k.below !== undefined) r.push(`< ${k.below}`);
      if (k.max !== undefined) r.push(`<= ${k.max}`);
      return `a number${r.length ? ` ${r.join(" and ")}` : ""}`;
    }
    case "bool":
      return "true or false";
    case "string":
      return k.patternDoc ?? (k.nonEmpty ? "non-empty text" : "text");
    case "path":
    case "model":
      return "a path (non-empty text)";
    case "enum":
      return `one of ${k.values.join(", ")}`;
    case "list":
      return "a list";
    case "group":
      return "a table";
    case "objects":
      return "a list of tables";
  }
}

/** Checks `v` against `k`; `name` is the dotted field, `label` how the message names it. */
function checkKind(k: Kind, v: unknown, name: string, label: string, ctx: Ctx): unknown {
  const bad = () => new ConfigError(`${ctx.origin}${label} must be ${wants(k)}, got ${show(v)}`, name);
  switch (k.t) {
    case "int":
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < k.min || (k.max !== undefined && v > k.max))
        throw bad();
      if (k.multipleOf && v % k.multipleOf !== 0) throw bad();
      return v;
    case "number":
      if (typeof v !== "number" || !Number.isFinite(v)) throw bad();
      if ((k.above !== undefined && !(v > k.above)) || (k.min !== undefined && v < k.min)) throw bad();
      if ((k.below !== undefined && !(v < k.below)) || (k.max !== undefined && v > k.max)) throw bad();
      return v;
    case "bool":
      if (typeof v !== "boolean") throw bad();
      return v;
    case "string":
      if (typeof v !== "string" || (k.nonEmpty && v === "") || (k.pattern && !k.pattern.test(v))) throw bad();
      return v;
    case "path":
      if (typeof v !== "string" || v === "") throw bad();
      return resolve(ctx.base, expandHome(v));
    case "model":
      if (typeof v !== "string" || v === "") throw bad();
      return v;
    case "enum": {
      if (typeof v === "string" && k.values.includes(v)) return v;
      const low = typeof v === "string" ? v.toLowerCase() : "";
      if (k.anyCase && k.values.includes(low)) return low;
      const note = k.refused && Object.hasOwn(k.refused, low) ? k.refused[low] : undefined;
      if (note) throw new ConfigError(`${ctx.origin}${label}: ${JSON.stringify(v)} is not available: ${note}`, name);
      const lower = typeof v === "string" ? k.values.find((x) => x === v.toLowerCase()) : undefined;
      throw new ConfigError(
        `${ctx.origin}${label} must be ${wants(k)}, got ${show(v)}${lower ? ` (${lower}?)` : ""}`,
        name,
      );
    }
    case "list": {
      if (!Array.isArray(v)) throw bad();
      const out = v.map((x, i) => checkKind(k.of, x, `${name}[${i}]`, `${label}[${i}]`, ctx));
      if (k.nonEmpty && out.length === 0) throw new ConfigError(`${ctx.origin}${label} must not be empty`, name);
      const dup = k.unique ? out.find((x, i) => out.indexOf(x) !== i) : undefined;
      if (dup !== undefined) throw new ConfigError(`${ctx.origin}${label} lists ${show(dup)} twice`, name);
      return out;
    }
    case "group":
      if (!isTable(v)) throw bad();
      return checkTree(k.fields, v, `${name}.`, ctx);
    case "objects":
      if (!Array.isArray(v)) throw bad();
      return v.map((x, i) => {
        if (!isTable(x)) throw new ConfigError(`${ctx.origin}${name}[${i}] must be a table, got ${show(x)}`, name);
        return checkTree(k.fields, x, `${name}[${i}].`, ctx);
      });
  }
}

function checkField(f: Field, v: unknown, name: string, label: string, ctx: Ctx): unknown {
  if (v === null && f.nullable) return null;
  return checkKind(f.kind, v, name, label, ctx);
}

/** Checks a table's fields; unknown ones are errors with a suggestion. */
function checkTree(schema: Schema, raw: unknown, prefix: string, ctx: Ctx): Tree {
  if (!isTable(raw)) throw new ConfigError(`${ctx.origin}the config must be a table (object), got ${show(raw)}`);
  const out: Tree = {};
  for (const [key, v] of Object.entries(raw)) {
    const name = `${prefix}${key}`;
    if (!Object.hasOwn(schema, key))
      throw new ConfigError(`${ctx.origin}unknown field "${name}"${suggest(name)}`, name);
    if (v === undefined) continue;
    out[key] = checkField(schema[key], v, name, name, ctx);
  }
  return out;
}

// ---- overrides ----------------------------------------------------------------------

const TRUE = ["true", "yes", "on", "1"];
const FALSE = ["false", "no", "off", "0"];

/** A scalar from a flag's text; JSON for tables and lists of tables. */
function fromFlag(f: Field, text: string, name: string, label: string, ctx: Ctx): unknown {
  const k = f.kind;
  if (f.nullable && (text === "none" || text === "null")) return null;
  const badText = () => new ConfigError(`${label} must be ${wants(k)}, got '${text}'`, name);
  switch (k.t) {
    case "int":
    case "number": {
      const x = Number(text);
      if (text.trim() === "" || Number.isNaN(x)) throw badText();
      return checkKind(k, x, name, label, ctx);
    }
    case "bool": {
      const t = text.toLowerCase();
      if (TRUE.includes(t)) return true;
      if (FALSE.includes(t)) return false;
      throw badText();
    }
    case "group":
    case "objects":
    case "list": {
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch (e) {
        throw new ConfigError(`${label}: not valid JSON (${(e as Error).message})`, name);
      }
      return checkKind(k, v, name, name, { ...ctx, origin: `${label}: ` });
    }
    default:
      return checkKind(k, text, name, label, ctx);
  }
}

interface Target {
  field: Field;
  container: Tree | unknown[];
  key: string | number;
  name: string;
}

/** Finds (and makes room for) the field a flag names: `lora.rank`, `concepts.0.instance_prompt`, `concepts[1]`. */
function locate(state: State, flag: string): Target {
  const segs = flag
    .replace(/-/g, "_")
    .replace(/\[(\d+)\]/g, ".$1")
    .split(".");
  let schema: Schema = configSchema();
  let container: Tree | unknown[] = state.tree;
  let name = "";
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i];
    const here = name ? `${name}.${seg}` : seg;
    if (!Object.hasOwn(schema, seg)) throw new ConfigError(`--${flag}: unknown field "${here}"${suggest(here)}`, here);
    const field = schema[seg];
    const tree = container as Tree;
    if (i === segs.length - 1) return { field, container, key: seg, name: here };
    name = here;
    if (field.kind.t === "group") {
      if (!isTable(tree[seg])) tree[seg] = {};
      container = tree[seg] as Tree;
      schema = field.kind.fields;
    } else if (field.kind.t === "objects") {
      if (!Array.isArray(tree[seg])) tree[seg] = [];
      const list = tree[seg] as Tree[];
      const idx = Number(segs[++i]);
      if (!/^\d+$/.test(segs[i]) || idx > list.length) {
        throw new ConfigError(
          `--${flag}: "${segs[i]}" is not an index of ${name} (0…${list.length}; ${list.length} adds one)`,
          name,
        );
      }
      if (idx === list.length) list.push({});
      name = `${name}[${idx}]`;
      const entry: Field = { kind: { t: "group", fields: field.kind.fields }, doc: "" };
      if (i === segs.length - 1) return { field: entry, container: list, key: idx, name };
      container = list[idx];
      schema = field.kind.fields;
    } else {
      throw new ConfigError(`--${flag}: ${name} is not a table; it has no field "${segs[i + 1]}"`, name);
    }
  }
  throw new ConfigError(`--${flag}: no field named`);
}

function applyOverrides(state: State, argv: readonly string[], cwd: string): void {
  const ctx: Ctx = { origin: "", base: cwd };
  const replaced = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    if (!tok.startsWith("--") || tok.length === 2) {
      throw new ConfigError(`unexpected argument '${tok}': overrides are --FIELD VALUE`);
    }
    let flag = tok.slice(2);
    let text: string | undefined;
    const eq = flag.indexOf("=");
    if (eq >= 0) [flag, text] = [flag.slice(0, eq), flag.slice(eq + 1)];
    const t = locate(state, flag);
    if (text === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) {
        if (t.field.kind.t !== "bool") throw new ConfigError(`--${flag} needs a value`, t.name);
        text = "true";
      } else {
        text = next;
        i++;
      }
    }
    const label = `--${flag}`;
    const box = t.container as Record<string | number, unknown>;
    const k = t.field.kind;
    if (k.t === "list" && !text.startsWith("[")) {
      // A repeated flag: the first replaces the file's list, the others append.
      const item = fromFlag({ kind: k.of, doc: "" }, text, t.name, label, ctx);
      const list = replaced.has(t.name) && Array.isArray(box[t.key]) ? [...(box[t.key] as unknown[]), item] : [item];
      box[t.key] = checkKind(k, list, t.name, label, ctx);
      replaced.add(t.name);
    } else if (k.t === "group") {
      box[t.key] = {
        ...(isTable(box[t.key]) ? (box[t.key] as Tree) : {}),
        ...(fromFlag(t.field, text, t.name, label, ctx) as Tree),
      };
    } else {
      box[t.key] = fromFlag(t.field, text, t.name, label, ctx);
      if (k.t === "list") replaced.add(t.name);
      if (k.t === "model") state.modelBase = cwd;
    }
  }
}

/** The learning-rate schedule's options from the config: one place, used by the check here and by the trainer. */
export function scheduleOptions(c: TrainConfig, trainingSteps: number): ScheduleOptions {
  return {
    warmupSteps: c.lr_warmup_steps,
    trainingSteps,
    numCycles: c.lr_scheduler_num_cycles ?? undefined,
    power: c.lr_scheduler_power,
    baseLr: c.learning_rate,
    stepRules: c.lr_step_rules ?? undefined,
  };
}

// ---- defaults, cross-field checks, files ------------------------------------------------

const AUTO = Symbol("auto");

/** Set values, else defaults; AUTO marks the computed ones; required ones missing are errors. */
function fill(schema: Schema, tree: Tree, prefix: string, origin: string): Tree {
  const out: Tree = {};
  for (const [key, f] of Object.entries(schema)) {
    const name = `${prefix}${key}`;
    const v = tree[key];
    if (f.kind.t === "group") out[key] = fill(f.kind.fields, isTable(v) ? v : {}, `${name}.`, origin);
    else if (f.kind.t === "objects") {
      const list = Array.isArray(v) ? (v as Tree[]) : [];
      if (list.length === 0) {
        throw new ConfigError(
          `${origin}${name} is required: at least one entry ([[${name}]] in TOML) with instance_data_dir and instance_prompt`,
          name,
        );
      }
      out[key] = list.map((c, i) => fill(f.kind.t === "objects" ? f.kind.fields : {}, c, `${name}[${i}].`, origin));
    } else if (v !== undefined) out[key] = v;
    else if (f.default !== undefined) out[key] = structuredClone(f.default);
    else if (f.auto !== undefined) out[key] = AUTO;
    else throw new ConfigError(`${origin}${name} is required (${f.doc})`, name);
  }
  return out;
}

/** The value set in the file or by a flag, if any. */
function given(tree: Tree, path: string): unknown {
  let v: unknown = tree;
  for (const seg of path.split(".")) v = isTable(v) ? v[seg] : undefined;
  return v;
}

function finish(state: State, o: { checkFiles: boolean; env: Record<string, string | undefined>; cwd: string }) {
  const { tree, origin } = state;
  const c = fill(configSchema(), tree, "", origin) as unknown as TrainConfig;
  const err = (field: string, message: string) => new ConfigError(`${origin}${message}`, field);
  const auto = (v: unknown) => v === AUTO;
  // Set to a non-default value while it has no effect: a mistake worth saying.
  const pointless = (path: string, dflt: unknown, why: string) => {
    const v = given(tree, path);
    if (v !== undefined && JSON.stringify(v) !== JSON.stringify(dflt)) {
      throw err(path, `${path} is set to ${show(v)} but has no effect: ${why}`);
    }
  };

  // The method: its spec sets the learning rate's default and resolves its own fields.
  const spec = methodSpecFor(c);
  if (auto(c.learning_rate)) c.learning_rate = spec.defaultLearningRate;
  resolveOptimizer(c, { given: (path) => given(tree, path), isAuto: auto, error: err, pointless });
  if (auto(c.seed)) c.seed = randomInt(0, 2 ** 32);
  for (const s of methodSpecs() as readonly MethodSpec<Schema>[]) {
    s.resolve?.(c as never, {
      active: s === spec,
      given: (path) => given(tree, path),
      isAuto: auto,
      error: err,
      pointless,
    });
  }
  if (auto(c.text_encoder_lr)) c.text_encoder_lr = c.learning_rate;
  else if (!c.train_text_encoder) pointless("text_encoder_lr", c.learning_rate, "the text encoder is not trained");

  // Half-precision storage: kohya's train_network.py refuses full_fp16 without mixed_precision fp16
  // ("full_fp16 requires mixed precision='fp16'") and full_bf16 without bf16.
  if (c.full_fp16 && c.mixed_precision !== "fp16") {
    throw err(
      "full_fp16",
      `full_fp16 = true needs mixed_precision = "fp16", got mixed_precision = "${c.mixed_precision}"`,
    );
  }
  if (c.full_bf16 && c.mixed_precision !== "bf16") {
    throw err(
      "full_bf16",
      `full_bf16 = true needs mixed_precision = "bf16", got mixed_precision = "${c.mixed_precision}"`,
    );
  }
  if (c.weight_dtype !== "float32" && c.weight_dtype !== c.mixed_precision) {
    throw err(
      "weight_dtype",
      `weight_dtype = "${c.weight_dtype}" needs mixed_precision = "${c.weight_dtype}" (the forward runs under its autocast), got mixed_precision = "${c.mixed_precision}"`,
    );
  }

  // Concepts and prior preservation.
  let classes = false;
  c.concepts.forEach((k, i) => {
    const at = `concepts[${i}]`;
    if (k.class_data_dir !== null && k.class_prompt === null) {
      throw err(
        `${at}.class_prompt`,
        `${at}.class_data_dir is set without ${at}.class_prompt (the class images' prompt)`,
      );
    }
    if (k.class_prompt !== null && k.class_data_dir === null) {
      throw err(
        `${at}.class_data_dir`,
        `${at}.class_prompt is set without ${at}.class_data_dir (where class images go)`,
      );
    }
    if (auto(k.num_class_images)) k.num_class_images = k.class_data_dir !== null ? 100 : 0;
    else if (k.class_data_dir === null && k.num_class_images > 0) {
      throw err(
        `${at}.num_class_images`,
        `${at}.num_class_images is ${k.num_class_images} but ${at} has no class_data_dir`,
      );
    }
    if (k.class_data_dir !== null) classes = true;
  });
  const plw = given(tree, "prior_loss_weight");
  if (!classes && typeof plw === "number" && plw > 0 && plw !== 1) {
    throw err(
      "prior_loss_weight",
      `prior_loss_weight is ${plw} but no concept has class_data_dir (prior preservation needs class images)`,
    );
  }

  // Learning-rate schedule parameters.
  const s = c.lr_scheduler;
  if (s === "piecewise_constant" && c.lr_step_rules === null) {
    throw err("lr_step_rules", 'lr_scheduler piecewise_constant needs lr_step_rules, e.g. "1:10,0.1:20,0.01"');
  }
  if (s !== "piecewise_constant") pointless("lr_step_rules", null, `lr_scheduler is ${s}`);
  if (s !== "cosine" && s !== "cosine_with_restarts")
    pointless("lr_scheduler_num_cycles", null, `lr_scheduler is ${s}`);
  if (s !== "polynomial") pointless("lr_scheduler_power", 1, `lr_scheduler is ${s}`);
  try {
    lrSchedule(s, scheduleOptions(c, c.lr_warmup_steps + 1));
  } catch (e) {
    const field = s === "piecewise_constant" ? "lr_step_rules" : "lr_scheduler";
    throw err(field, `${field}: ${(e as Error).message}`);
  }

  // What to save: the method's formats, its first by default.
  if (auto(c.save.formats)) c.save.formats = [spec.formats[0]];
  for (const fmt of c.save.formats) {
    if (spec.formats.includes(fmt)) continue;
    if (fmt === "lora") {
      throw err("save.formats", 'save.formats has "lora" but no LoRA is trained (set method lora or use_lora true)');
    }
    throw err(
      "save.formats",
      `save.formats has "${fmt}", which method ${c.method} does not write (it writes ${spec.formats.join(", ")})`,
    );
  }

  // Sampling.
  if (auto(c.sample.seed)) c.sample.seed = c.seed;
  if (c.sample.every_n_steps > 0 && c.sample.prompts.length === 0) {
    throw err("sample.prompts", `sample.every_n_steps is ${c.sample.every_n_steps} but sample.prompts is empty`);
  }

  // Buckets.
  const b = c.bucketing;
  if (b.enabled) {
    if (b.min > b.max) throw err("bucketing.min", `bucketing.min (${b.min}) is larger than bucketing.max (${b.max})`);
    for (const k of ["min", "max"] as const) {
      if (b[k] % b.step !== 0)
        throw err(`bucketing.${k}`, `bucketing.${k} (${b[k]}) is not a multiple of bucketing.step (${b.step})`);
    }
    if (c.resolution < b.min || c.resolution > b.max) {
      throw err("resolution", `resolution ${c.resolution} is outside bucketing.min…max (${b.min}…${b.max})`);
    }
  }

  // The workspace and the model.
  if (auto(c.workspace)) c.workspace = defaultWorkspace(o.env, o.cwd);
  const modelText = c.model;
  try {
    const r = resolveModel(expandHome(modelText), c.workspace, state.modelBase);
    c.model = r.path;
    if (auto(c.sample.sampler)) c.sample.sampler = r.model?.meta.scheduler ?? "euler_a";
  } catch (e) {
    if (o.checkFiles) throw err("model", `model: ${(e as Error).message}`);
    c.model = resolve(state.modelBase, expandHome(modelText));
  }
  if (auto(c.sample.sampler)) c.sample.sampler = "euler_a";
  if (o.checkFiles) checkFiles(c, err);
  return c;
}

function checkFiles(c: TrainConfig, err: (field: string, message: string) => ConfigError): void {
  const kind = (p: string) => (existsSync(p) ? (statSync(p).isDirectory() ? "folder" : "file") : "none");
  c.concepts.forEach((k, i) => {
    const f = `concepts[${i}].instance_data_dir`;
    const what = kind(k.instance_data_dir);
    if (what !== "folder")
      throw err(f, `${f}: ${k.instance_data_dir}: ${what === "none" ? "no such folder" : "not a folder"}`);
    if (k.class_data_dir !== null && kind(k.class_data_dir) === "file") {
      throw err(`concepts[${i}].class_data_dir`, `concepts[${i}].class_data_dir: ${k.class_data_dir}: not a folder`);
    }
  });
  for (const key of ["embeddings_dir", "hypernetwork_dir"] as const)
    c.sample[key].forEach((d, i) => {
      if (kind(d) !== "folder") throw err(`sample.${key}`, `sample.${key}[${i}]: ${d}: no such folder`);
    });
  if (c.tokenizer !== null && kind(c.tokenizer) !== "folder")
    throw err("tokenizer", `tokenizer: ${c.tokenizer}: no such folder`);
  if (kind(c.output_dir) === "file") throw err("output_dir", `output_dir: ${c.output_dir}: is a file, not a folder`);
}
