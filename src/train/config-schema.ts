// The training config's schema: the shared fields (config-core.ts) and each
// registered method's section (methods/), as one tree that drives parsing
// (files and flags), checking, defaults and the `--help` listing. The
// config's TypeScript type (TrainConfig) is derived from the same tree.

import { coreSchema } from "./config-core.js";
import { type FieldInfo, type Schema, schemaFields } from "./config-fields.js";
import { methodSpecs, registryVersion } from "./methods/index.js";

export type {
  BucketingConfig,
  ConceptConfig,
  CoreConfig,
  MixedPrecision,
  OptimizerName,
  SampleConfig,
  SaveConfig,
} from "./config-core.js";
export { FOREIGN_NAMES, MIXED_PRECISIONS, OPTIMIZERS } from "./config-core.js";
export type { Field, FieldInfo, Infer, Kind, Schema } from "./config-fields.js";
export { kindText } from "./config-fields.js";
export type { TrainConfig } from "./methods/index.js";

let cached: { version: number; schema: Schema } | null = null;

/** The whole schema: the shared fields, with the registered methods' names and formats, and their sections. */
export function configSchema(): Schema {
  if (cached?.version !== registryVersion()) {
    const specs = methodSpecs();
    cached = {
      version: registryVersion(),
      schema: { ...coreSchema(specs), ...Object.assign({}, ...specs.map((s) => s.schema)) },
    };
  }
  return cached.schema;
}

/** Every leaf field with its type, default and doc line (for help texts and the UI). */
export function configFields(schema: Schema = configSchema(), prefix = ""): FieldInfo[] {
  return schemaFields(schema, prefix);
}

/** The `--help` listing of the config fields and of the override syntax. */
export function describeConfig(): string {
  const rows = configFields();
  const width = Math.max(...rows.map((r) => r.name.length)) + 2;
  const lines = [
    "Training config fields (JSON or TOML file; each also a flag):",
    "  --FIELD VALUE or --FIELD=VALUE; nested: --lora.rank 8; concepts: --concepts.0.instance_prompt TEXT",
    "  (index = count adds a concept); lists: repeat the flag (--sample.prompts A --sample.prompts B;",
    "  the first replaces the file's list) or give JSON (--save.formats '[\"lora\"]', --concepts '[{…}]');",
    "  booleans: --cache_latents, --cache_latents false; null: --tokenizer none. '-' may stand for '_'.",
    "",
  ];
  for (const r of rows) {
    lines.push(`  ${r.name.padEnd(width)}${r.doc}`);
    lines.push(`  ${"".padEnd(width)}${r.type}; ${r.default === "required" ? "required" : `default ${r.default}`}`);
  }
  return lines.join("\n");
}
