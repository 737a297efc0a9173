// The adapter methods Atelier can apply from files, and which one a module's keys belong to.
import type { AdapterMethod } from "./adapter.js";
import { lora } from "./lora.js";
import { loha, lokr, missingFactors } from "./lycoris.js";

// biome-ignore lint/suspicious/noExplicitAny: methods differ in their create() options
export const ADAPTER_METHODS: readonly AdapterMethod<any>[] = [lora, loha, lokr];

/** Every key a module of a supported method may have (without the module name). */
export const ADAPTER_KEYS: ReadonlySet<string> = new Set([
  "lora_down.weight",
  "lora_up.weight",
  "lora_mid.weight",
  "alpha",
  "hada_w1_a",
  "hada_w1_b",
  "hada_w2_a",
  "hada_w2_b",
  "hada_t1",
  "hada_t2",
  "lokr_w1",
  "lokr_w1_a",
  "lokr_w1_b",
  "lokr_w2",
  "lokr_w2_a",
  "lokr_w2_b",
  "lokr_t2",
]);

/** The method whose keys these are, or an explanation of why none is. */
// biome-ignore lint/suspicious/noExplicitAny: see ADAPTER_METHODS
export function methodFor(keys: readonly string[]): AdapterMethod<any> | string {
  const found = ADAPTER_METHODS.filter((m) => m.detect(keys));
  if (found.length === 1) {
    const m = found[0];
    const missing = m === loha || m === lokr ? missingFactors(m.name as "loha" | "lokr", [...keys]) : null;
    return missing ? `${missing} is missing` : m;
  }
  if (found.length > 1) return `keys of several methods (${found.map((m) => m.name).join(", ")})`;
  if (keys.includes("lora_down.weight") !== keys.includes("lora_up.weight"))
    return keys.includes("lora_down.weight")
      ? "lora_down.weight without lora_up.weight"
      : "lora_up.weight without lora_down.weight";
  return `no adapter factors (keys: ${keys.join(", ")})`;
}
