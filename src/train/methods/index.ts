// The registry of training methods: adding one is a file in this folder and
// a line in METHOD_SPECS (or, from outside the library, one registerMethod
// call). The config's schema and type are derived from it.

import type { CoreConfig } from "../config-core.js";
import type { Infer } from "../config-fields.js";
import { dreambooth } from "./dreambooth.js";
import { dreamboothUpscaler } from "./dreambooth-upscaler.js";
import { hypernetwork } from "./hypernetwork.js";
import { lora } from "./lora.js";
import type { MethodSpec } from "./method.js";
import { textualInversion } from "./textual-inversion.js";

export const METHOD_SPECS = [dreambooth, lora, dreamboothUpscaler, textualInversion, hypernetwork] as const;

type Specs = (typeof METHOD_SPECS)[number];
type UnionToIntersection<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never;

/** A resolved training config: the shared fields and every method's section, paths absolute, defaults filled in. */
export type TrainConfig = CoreConfig & UnionToIntersection<Infer<Specs["schema"]>>;

// biome-ignore lint/suspicious/noExplicitAny: each spec checks its own section
type AnySpec = MethodSpec<any>;
const registry: AnySpec[] = [...METHOD_SPECS];
let version = 0;

/** Adds a training method (a plug-in): its config section joins the schema, `method = NAME` selects it. */
export function registerMethod(spec: AnySpec): void {
  if (registry.some((s) => s.name === spec.name))
    throw new Error(`a training method '${spec.name}' is already registered`);
  const taken = new Set(registry.flatMap((s) => Object.keys(s.schema)));
  const clash = Object.keys(spec.schema).find((k) => taken.has(k));
  if (clash) throw new Error(`training method '${spec.name}': the config field '${clash}' belongs to another method`);
  registry.push(spec);
  version++;
}

/** The registered methods, built-in first. */
export function methodSpecs(): readonly AnySpec[] {
  return registry;
}

/** Changes whenever a method is registered (the schema is rebuilt then). */
export function registryVersion(): number {
  return version;
}

export type { MethodContext, MethodSpec, ParamGroupSpec, SavedArtifact, StepInputs, TrainingMethod } from "./method.js";
export { defineMethod } from "./method.js";

/** The method a resolved (or resolving) config runs. */
export function methodSpecFor(c: { method: string }): MethodSpec {
  const specs = registry;
  const chosen = specs.filter((s) => (s.selects ? s.selects(c as never) : c.method === s.name));
  // A method that selects itself from its own fields (use_lora) wins over the one `method` names.
  const own = chosen.filter((s) => s.name !== c.method);
  const spec = own[0] ?? chosen[0];
  if (!spec) throw new Error(`no training method '${c.method}' (there are ${specs.map((s) => s.name).join(", ")})`);
  return spec;
}
