// A resolved training-config concept for the data tests: the given fields,
// the others at their schema defaults (CONCEPT_FIELDS in
// src/train/config-core.ts), num_class_images by its `auto` rule as
// src/train/config.ts resolves it.
import { CONCEPT_FIELDS, type ConceptConfig } from "../../../src/train/config-core.js";

/** The fields without a default: the caller gives them. */
type NoDefault = Pick<ConceptConfig, "instance_data_dir" | "instance_prompt">;

export function concept(given: Partial<ConceptConfig> & NoDefault): ConceptConfig {
  const out: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(CONCEPT_FIELDS)) {
    if ("default" in field) out[name] = field.default;
  }
  Object.assign(out, given);
  // "100 with a class_data_dir, else 0"
  if (given.num_class_images === undefined) out.num_class_images = out.class_data_dir !== null ? 100 : 0;
  for (const name of Object.keys(CONCEPT_FIELDS)) {
    if (out[name] === undefined) throw new Error(`concept(): ${name} has no default; give it`);
  }
  return out as ConceptConfig;
}
