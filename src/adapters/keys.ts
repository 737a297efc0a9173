// Reading a method's AdapterKeys: whether a module's keys are the method's,
// what a module lacks, its rank key. Pure functions over the data each
// method file declares (the registry and the LyCORIS modules share them).
import type { AdapterKeys } from "./adapter.js";

/** True when `keys` hold every key of one of the method's detection sets (LyCORIS algo_check). */
export function detects(spec: AdapterKeys, keys: readonly string[]): boolean {
  return spec.detect.some((set) => set.every((k) => keys.includes(k)));
}

/** The first requirement a module does not meet, as "a (or b + c)", or null when complete. */
export function missingKey(spec: AdapterKeys, keys: readonly string[]): string | null {
  for (const alternatives of spec.required)
    if (!alternatives.some((set) => set.every((k) => keys.includes(k)))) {
      const [first, ...rest] = alternatives.map((set) => set.join(" + "));
      return rest.length ? `${first} (or ${rest.join(" or ")})` : first;
    }
  return null;
}

/** "a without b" when `keys` hold part of a detection set (half a LoRA module), else null. */
export function partialDetection(spec: AdapterKeys, keys: readonly string[]): string | null {
  for (const set of spec.detect) {
    const present = set.filter((k) => keys.includes(k));
    if (present.length > 0 && present.length < set.length)
      return `${present.join(" + ")} without ${set.filter((k) => !keys.includes(k)).join(" + ")}`;
  }
  return null;
}

/** The key whose first dimension is the module's rank, or null (no rank: scale 1). */
export function rankKey(spec: AdapterKeys, has: (key: string) => boolean): string | null {
  return spec.rank.find(has) ?? null;
}
