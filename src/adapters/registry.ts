// The adapter methods Atelier knows, in one list (after KohakuBlueleaf/LyCORIS
// lycoris/modules/__init__.py MODULE_LIST and get_module). Adding a method
// is its own file and one line in ADAPTERS: the key list the file reader
// accepts, which method a module's keys belong to, the messages for
// incomplete or refused modules, and tools/inspect.ts's classifier are all
// derived here from what each method declares (AdapterKeys).
import { type Adapter, type AdapterMethod, isWeightDelta } from "./adapter.js";
import { dora } from "./dora.js";
import { full } from "./full.js";
import { ia3 } from "./ia3.js";
import { detects, missingKey, partialDetection } from "./keys.js";
import { loha } from "./loha.js";
import { lokr } from "./lokr.js";
import { lora } from "./lora.js";
import { norm } from "./norm.js";

/** Every adapter method, in detection order. */
export const ADAPTERS: readonly Adapter[] = [lora, loha, lokr, dora, ia3, full, norm];

/** A set of methods and what is derived from their keys. */
export interface AdapterRegistry {
  readonly adapters: readonly Adapter[];
  /** The weight-delta methods (those with keys per module), in order. */
  readonly methods: readonly AdapterMethod<never>[];
  /** Every key a module of a weight-delta method may hold (without the module name). */
  readonly keys: ReadonlySet<string>;
  /** Keys recognised and refused (dora_scale), with what they are. */
  readonly refused: ReadonlyMap<string, string>;
  /** The weight-delta methods' labels, for messages: LoRA/LoCon, LoHa, LoKr. */
  readonly labels: readonly string[];
  /** The method whose keys these are (one module's, without its name), or an explanation of why none is. */
  methodFor(keys: readonly string[]): AdapterMethod<never> | string;
  /**
   * A file's keys by module: `<module>.<key>` for every key a method holds or
   * refuses (the longest that fits), the module's keys in file order. Other
   * keys are left out.
   */
  modules(fileKeys: readonly string[]): Map<string, string[]>;
  /** The methods of the modules in a file's keys, in registry order (none: not a kohya-layout adapter file). */
  methodsIn(fileKeys: readonly string[]): AdapterMethod<never>[];
}

/** The registry of a list of methods; names must be unique. */
export function adapterRegistry(adapters: readonly Adapter[]): AdapterRegistry {
  const names = new Set<string>();
  for (const a of adapters) {
    if (names.has(a.name)) throw new Error(`two adapter methods are named '${a.name}'`);
    names.add(a.name);
  }
  const methods = adapters.filter(isWeightDelta);
  const keys = new Set(methods.flatMap((m) => m.keys.all));
  const refused = new Map<string, string>();
  for (const m of methods)
    for (const [k, what] of Object.entries(m.keys.refused)) if (!keys.has(k) && !refused.has(k)) refused.set(k, what);
  // longest first, so `lora_down.weight` wins over a shorter key it ends with
  const suffixes = [...keys, ...refused.keys()].sort((a, b) => b.length - a.length);

  /** The methods that detect these keys, less those another detecting method overrides (DoRA over LoRA). */
  const detecting = (k: readonly string[]): AdapterMethod<never>[] => {
    const found = methods.filter((m) => detects(m.keys, k));
    const overridden = new Set(found.flatMap((m) => m.keys.overrides ?? []));
    return found.filter((m) => !overridden.has(m.name));
  };

  const methodFor = (k: readonly string[]): AdapterMethod<never> | string => {
    const found = detecting(k);
    if (found.length === 1) {
      const missing = missingKey(found[0].keys, k);
      return missing ? `${missing} is missing` : found[0];
    }
    if (found.length > 1) return `keys of several methods (${found.map((m) => m.name).join(", ")})`;
    for (const m of methods) {
      const partial = partialDetection(m.keys, k);
      if (partial) return partial;
    }
    return `no adapter factors (keys: ${k.join(", ")})`;
  };

  const modules = (fileKeys: readonly string[]): Map<string, string[]> => {
    const out = new Map<string, string[]>();
    for (const key of fileKeys) {
      const suffix = suffixes.find((s) => key.length > s.length && key.endsWith(`.${s}`));
      if (!suffix) continue;
      const name = key.slice(0, key.length - suffix.length - 1);
      const list = out.get(name);
      if (list) list.push(suffix);
      else out.set(name, [suffix]);
    }
    // (IA)³'s bare `weight` names a module only beside another adapter key (on_input): not every `x.weight` is one
    for (const [name, k] of out) if (k.every((key) => key === "weight")) out.delete(name);
    return out;
  };

  const methodsIn = (fileKeys: readonly string[]): AdapterMethod<never>[] => {
    const seen = new Set<AdapterMethod<never>>();
    for (const k of modules(fileKeys).values()) for (const m of detecting(k)) seen.add(m);
    return methods.filter((m) => seen.has(m));
  };

  return { adapters, methods, keys, refused, labels: methods.map((m) => m.label), methodFor, modules, methodsIn };
}

/** Atelier's methods. */
export const ADAPTER_REGISTRY: AdapterRegistry = adapterRegistry(ADAPTERS);

/** The weight-delta methods Atelier can apply from files. */
export const ADAPTER_METHODS: readonly AdapterMethod<never>[] = ADAPTER_REGISTRY.methods;

/** Every key a module of a supported method may hold (without the module name). */
export const ADAPTER_KEYS: ReadonlySet<string> = ADAPTER_REGISTRY.keys;

/** The method whose keys these are, or an explanation of why none is. */
export function methodFor(keys: readonly string[]): AdapterMethod<never> | string {
  return ADAPTER_REGISTRY.methodFor(keys);
}
