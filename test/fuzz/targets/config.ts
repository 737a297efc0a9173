// Fuzz target: the training config loader (src/train/config.ts
// loadTrainConfig) with an object, or TOML or JSON text through a file, plus
// --FIELD overrides. Values are swapped for odd ones of every JS type, keys
// added and removed, texts mutated character by character. An accepted
// config must survive its own round trip: configToJson, loaded again, gives
// the same config (the file's promise: "it loads back to the same config").
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toToml } from "smol-toml";
import { ConfigError, configFields, configToJson, loadTrainConfig } from "../../../src/train/config.js";
import type { Rng, Target } from "../harness.js";
import type { TargetOptions } from "./common.js";

export interface ConfigCase {
  kind: "object" | "toml" | "json";
  object?: unknown;
  text?: string;
  overrides: string[];
}

const VALID = {
  model: "base.safetensors",
  output_dir: "out",
  method: "lora",
  learning_rate: 1e-4,
  resolution: 512,
  seed: 42,
  train_text_encoder: false,
  lora: { rank: 16, alpha: 8, conv_rank: 4 },
  concepts: [
    {
      instance_data_dir: "dog",
      instance_prompt: "photo of sks dog",
      class_data_dir: "class",
      class_prompt: "photo of a dog",
      num_class_images: 50,
    },
    { instance_data_dir: "cat", instance_prompt: "", repeats: 10, caption_extension: ".caption" },
  ],
  save: { every_n_steps: 100, formats: ["lora"] },
  sample: { every_n_steps: 50, prompts: ["photo of sks dog"], sampler: "dpmpp_2m" },
};

const circular = () => {
  const o: Record<string, unknown> = { a: 1 };
  o.self = o;
  return o;
};

/** Values of every kind JS has, and of the edges of the schema's kinds. */
const VALUES: (() => unknown)[] = [
  () => -1,
  () => 0,
  () => 1,
  () => 1.5,
  () => -0,
  () => 2 ** 53,
  () => 1e308,
  () => Number.NaN,
  () => Number.POSITIVE_INFINITY,
  () => "",
  () => " ",
  () => "x",
  () => "1e-4",
  () => "none",
  () => "euler_a",
  () => "LORA",
  () => true,
  () => null,
  () => undefined,
  () => [],
  () => [1, 1],
  () => ["lora", "lora"],
  () => ({}),
  () => [{}],
  () => 10n,
  () => new Date(0),
  () => Symbol("s"),
  () => () => 1,
  () => "x".repeat(10_000),
  () => JSON.parse(`${"[".repeat(5000)}${"]".repeat(5000)}`),
  () => Object.assign(Object.create(null), { rank: 4 }),
  circular,
  () => new Map([["a", 1]]),
  () => Buffer.from("ab"),
];
const KEYS = [
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "lora_rank",
  "learning_rte",
  "",
  "a.b",
  "concepts",
  "Model",
];

type Place = [Record<string, unknown> | unknown[], string | number];

/** Every (container, key) place in a tree, a few levels down (trees here may be deep or cyclic). */
function places(v: unknown, out: Place[] = [], depth = 0, seen = new Set<unknown>()): Place[] {
  if (depth > 4 || v === null || typeof v !== "object" || seen.has(v) || out.length > 200) return out;
  seen.add(v);
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      out.push([v, i]);
      places(x, out, depth + 1, seen);
    });
  } else if (!(v instanceof Map || v instanceof Date || ArrayBuffer.isView(v))) {
    for (const k of Object.keys(v)) {
      out.push([v as Record<string, unknown>, k]);
      places((v as Record<string, unknown>)[k], out, depth + 1, seen);
    }
  }
  return out;
}

function mutateObject(rng: Rng, base: unknown): unknown {
  const obj = structuredClone(base) as Record<string, unknown>;
  for (let k = rng.count(3); k > 0; k--) {
    const all = places(obj);
    const [box, key] = all.length ? rng.pick(all) : [obj, "model"];
    const b = box as Record<string | number, unknown>;
    const r = rng.int(5);
    if (r <= 1) b[key] = rng.pick(VALUES)();
    else if (r === 2) Array.isArray(b) ? b.splice(key as number, 1) : delete b[key];
    else if (r === 3 && !Array.isArray(b))
      Object.defineProperty(b, rng.pick(KEYS), {
        value: rng.pick(VALUES)(),
        enumerable: true,
        configurable: true,
        writable: true,
      });
    else b[key] = [b[key]];
  }
  return obj;
}

function mutateText(rng: Rng, s: string): string {
  let t = s;
  for (let k = rng.count(4); k > 0; k--) {
    const at = rng.int(t.length + 1);
    const r = rng.int(3);
    if (r === 0)
      t =
        t.slice(0, at) +
        rng.pick([
          '"',
          "'",
          "[",
          "]",
          "{",
          "}",
          "=",
          "\n",
          ".",
          ",",
          "#",
          "\\",
          "inf",
          "nan",
          "0x10",
          "1_0",
          "1979-05-27T07:32:00Z",
          "9999999999999999999",
          "\u0000",
          "\ud800",
          "[[concepts]]\n",
        ]) +
        t.slice(at);
    else if (r === 1) t = t.slice(0, at) + t.slice(at + rng.range(1, 12));
    else t = t.slice(0, at) + t.slice(at, at + rng.range(1, 40)).repeat(2) + t.slice(at);
  }
  return t;
}

const FIELDS = configFields().map((f) => f.name.replace("[]", `.${0}`));
const FLAG_VALUES = [
  "8",
  "0",
  "-1",
  "1e-3",
  "abc",
  "",
  "true",
  "no",
  "none",
  "null",
  "[]",
  '["lora"]',
  "{bad",
  '{"every_n_steps": 1}',
  "[{}]",
  '[{"instance_data_dir":"d","instance_prompt":"p"}]',
  "NaN",
  "Infinity",
  "0x10",
  " 5 ",
];
const ODD_FLAGS = [
  "--",
  "-x",
  "x",
  "--concepts.5.instance_prompt",
  "--concepts[1].repeats",
  "--concepts.a",
  "--lora.rank.x",
  "--unknown",
  "--__proto__.x",
  "--constructor",
  "--lora.__proto__",
  "--learning-rate",
  "--concepts",
  "--train_text_encoder",
  "--=1",
];

function overrides(rng: Rng): string[] {
  const out: string[] = [];
  for (let k = rng.chance(0.5) ? rng.count(4) : 0; k > 0; k--) {
    const flag = rng.chance(0.2) ? rng.pick(ODD_FLAGS) : `--${rng.pick(FIELDS)}`;
    const value = rng.pick(FLAG_VALUES);
    if (rng.chance(0.3)) out.push(`${flag}=${value}`);
    else if (rng.chance(0.1)) out.push(flag);
    else out.push(flag, value);
  }
  return out;
}

/** JSON text of anything, for saving a case (BigInt, Symbol and functions as text, cycles cut). */
function caseJson(c: ConfigCase): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(c, (_k, v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "symbol" || typeof v === "function") return String(v);
    if (v !== null && typeof v === "object") {
      if (seen.has(v)) return "[cycle]";
      seen.add(v);
    }
    return v;
  });
}

export function configTarget(o: TargetOptions): Target<ConfigCase> {
  const ws = join(o.dir, "workspace");
  mkdirSync(ws, { recursive: true });
  const opts = { checkFiles: false, env: { ATELIER_WORKSPACE: ws }, cwd: o.dir };
  return {
    name: "config",
    hasReference: false,
    isOwnError: (e) => e instanceof ConfigError,
    seeds: () => [
      { kind: "object", object: VALID, overrides: [] },
      { kind: "toml", text: toToml(VALID), overrides: [] },
      {
        kind: "json",
        text: JSON.stringify(VALID, null, 2),
        overrides: ["--lora.rank", "8", "--concepts.2.instance_data_dir=x", "--concepts.2.instance_prompt", "p"],
      },
      {
        kind: "object",
        object: { model: "m", output_dir: "o", concepts: [{ instance_data_dir: "d", instance_prompt: "p" }] },
        overrides: ["--sample.prompts", "a", "--sample.prompts", "b"],
      },
    ],
    generate(rng, seeds) {
      const base = rng.pick(seeds);
      const kind = rng.pick(["object", "object", "toml", "json"] as const);
      let object: unknown = base.object ?? VALID;
      if (rng.chance(0.8)) object = mutateObject(rng, object);
      const c: ConfigCase = { kind, overrides: rng.chance(0.5) ? base.overrides : overrides(rng) };
      if (kind === "object") return { ...c, object };
      let text: string;
      try {
        text = kind === "toml" ? toToml(object) : JSON.stringify(object);
      } catch {
        text = kind === "toml" ? toToml(VALID) : JSON.stringify(VALID);
      }
      return { ...c, text: rng.chance(0.6) ? mutateText(rng, text ?? "") : text };
    },
    run(c) {
      let source: string | Record<string, unknown> = c.object as Record<string, unknown>;
      if (c.kind !== "object") {
        source = join(o.dir, `case.${c.kind}`);
        writeFileSync(source, c.text ?? "");
      }
      const got = loadTrainConfig(source, c.overrides, opts);
      const json = configToJson(got);
      let again: string;
      try {
        again = configToJson(loadTrainConfig(JSON.parse(json), [], opts));
      } catch (e) {
        return { accepted: true, mismatch: `its own JSON does not load back: ${(e as Error).message}` };
      }
      return { accepted: true, mismatch: again === json ? undefined : "its own JSON loads back to another config" };
    },
    toBytes: (c) => Buffer.from(caseJson(c), "utf8"),
  };
}
