// A bidirectional key map between the diffusers layout and the original LDM
// single-file layout of one model component (docs/design.md §3.3: formats are
// data). Each entry pairs diffusers keys with one LDM key and names the
// transform between their tensors; `unmap(map(k)) === k` for every 1:1 entry.
import { cat, reshape, type Tensor } from "../../engine/index.js";

/**
 * - `none`: the same tensor under another name.
 * - `conv1x1`: an LDM 1×1 conv weight [C,C,1,1] ⇄ a diffusers linear weight [C,C] (VAE mid-attention).
 * - `flatBias`: a bias [C] on both sides; [C,1,1] read from LDM files written by
 *   diffusers v0.25's conversion script is accepted too (A1111 refuses that
 *   shape, huggingface/diffusers#6226, so [C] is what gets written).
 * - `qkv`: one fused LDM tensor ⇄ three diffusers tensors (q, k, v) split along dim 0 (OpenCLIP `in_proj_*`).
 */
export type TransformName = "none" | "conv1x1" | "flatBias" | "qkv";

export interface KeyMapEntry {
  readonly diffusers: readonly string[];
  readonly ldm: string;
  readonly transform: TransformName;
}

export type Component = "unet" | "vae" | "textEncoder";

export interface KeyMapSpec {
  component: Component;
  entries: KeyMapEntry[];
  /** LDM keys that hold no diffusers parameter and are dropped on load (position_ids, text_projection…). */
  ignoreLdm?: (key: string) => boolean;
  /** Diffusers keys that are dropped on load (buffers such as position_ids). */
  ignoreDiffusers?: (key: string) => boolean;
  /** Rewrites older spellings of an LDM key to the one in the map. */
  normalizeLdm?: (key: string) => string;
  /** Rewrites older spellings of a diffusers key to the one in the map. */
  normalizeDiffusers?: (key: string) => string;
}

export class KeyMap {
  readonly component: Component;
  readonly entries: readonly KeyMapEntry[];
  readonly #byDiffusers = new Map<string, KeyMapEntry>();
  readonly #byLdm = new Map<string, KeyMapEntry>();
  readonly #spec: KeyMapSpec;

  constructor(spec: KeyMapSpec) {
    this.component = spec.component;
    this.entries = spec.entries;
    this.#spec = spec;
    for (const e of spec.entries) {
      if (e.transform === "qkv" ? e.diffusers.length !== 3 : e.diffusers.length !== 1) {
        throw new Error(
          `key map ${spec.component}: entry ${e.ldm} has ${e.diffusers.length} diffusers keys for '${e.transform}'`,
        );
      }
      if (this.#byLdm.has(e.ldm)) throw new Error(`key map ${spec.component}: duplicate LDM key ${e.ldm}`);
      this.#byLdm.set(e.ldm, e);
      for (const d of e.diffusers) {
        if (this.#byDiffusers.has(d)) throw new Error(`key map ${spec.component}: duplicate diffusers key ${d}`);
        this.#byDiffusers.set(d, e);
      }
    }
  }

  /** The LDM key holding a diffusers key (the fused key for q/k/v parts), or undefined. */
  map(diffusersKey: string): string | undefined {
    return this.#byDiffusers.get(this.normalizeDiffusers(diffusersKey))?.ldm;
  }

  /** The diffusers key an LDM key holds; undefined when unknown or when it holds several (see unmapAll). */
  unmap(ldmKey: string): string | undefined {
    const e = this.#byLdm.get(this.normalizeLdm(ldmKey));
    return e && e.diffusers.length === 1 ? e.diffusers[0] : undefined;
  }

  /** Every diffusers key an LDM key holds (three for a fused q/k/v), or undefined. */
  unmapAll(ldmKey: string): readonly string[] | undefined {
    return this.#byLdm.get(this.normalizeLdm(ldmKey))?.diffusers;
  }

  entryForLdm(ldmKey: string): KeyMapEntry | undefined {
    return this.#byLdm.get(this.normalizeLdm(ldmKey));
  }

  entryForDiffusers(diffusersKey: string): KeyMapEntry | undefined {
    return this.#byDiffusers.get(this.normalizeDiffusers(diffusersKey));
  }

  diffusersKeys(): string[] {
    return this.entries.flatMap((e) => e.diffusers);
  }

  ldmKeys(): string[] {
    return this.entries.map((e) => e.ldm);
  }

  isIgnoredLdm(key: string): boolean {
    return this.#spec.ignoreLdm?.(key) ?? false;
  }

  isIgnoredDiffusers(key: string): boolean {
    return this.#spec.ignoreDiffusers?.(key) ?? false;
  }

  normalizeLdm(key: string): string {
    return this.#spec.normalizeLdm ? this.#spec.normalizeLdm(key) : key;
  }

  normalizeDiffusers(key: string): string {
    return this.#spec.normalizeDiffusers ? this.#spec.normalizeDiffusers(key) : key;
  }
}

/** Diffusers tensors from the LDM tensor of one entry; `none` returns the input itself. */
export function toDiffusersTensors(e: KeyMapEntry, t: Tensor): Tensor[] {
  switch (e.transform) {
    case "none":
      return [t];
    case "conv1x1": {
      const s = t.shape;
      if (s.length === 2) return [t];
      if (s.length !== 4 || s[2] !== 1 || s[3] !== 1)
        throw new Error(`${e.ldm}: expected a [C,C,1,1] weight, got [${s}]`);
      return [reshape(t, [s[0], s[1]])];
    }
    case "flatBias": {
      const s = t.shape;
      if (s.length === 1) return [t];
      if (s.length !== 3 || s[1] !== 1 || s[2] !== 1)
        throw new Error(`${e.ldm}: expected a [C] or [C,1,1] bias, got [${s}]`);
      return [reshape(t, [s[0]])];
    }
    case "qkv": {
      const s = t.shape;
      if (s.length < 1 || s[0] % 3 !== 0)
        throw new Error(`${e.ldm}: a fused q/k/v tensor needs a first dimension divisible by 3, got [${s}]`);
      // OpenCLIP `nn.MultiheadAttention.in_proj_*` stacks q, k, v along dim 0
      // (diffusers convert_from_ckpt.py `convert_open_clip_checkpoint`).
      return t.chunk(3, 0);
    }
  }
}

/** The LDM tensor of one entry from its diffusers tensors; `none` returns the input itself. */
export function toLdmTensor(e: KeyMapEntry, parts: readonly Tensor[]): Tensor {
  switch (e.transform) {
    case "none":
      return parts[0];
    case "flatBias":
      return parts[0].ndim === 1 ? parts[0] : reshape(parts[0], [parts[0].shape[0]]);
    case "conv1x1": {
      const s = parts[0].shape;
      if (s.length === 4) return parts[0];
      if (s.length !== 2) throw new Error(`${e.diffusers[0]}: expected a [C,C] weight, got [${s}]`);
      return reshape(parts[0], [s[0], s[1], 1, 1]);
    }
    case "qkv":
      return cat(parts, 0);
  }
}

export interface ConvertResult {
  tensors: Map<string, Tensor>;
  /** Input keys that the map does not know and does not ignore. */
  unexpected: string[];
  /** Keys of the map that the input lacks. */
  missing: string[];
}

/**
 * Renames an in-memory state dict from one layout to the other. Entries with
 * transform `none` (and already-shaped ones) put the input Tensor itself in
 * the result; the others make new tensors. Inputs are never disposed.
 */
export function convertStateDict(map: KeyMap, input: Map<string, Tensor>, to: "ldm" | "diffusers"): ConvertResult {
  const tensors = new Map<string, Tensor>();
  const unexpected: string[] = [];
  const missing: string[] = [];
  if (to === "diffusers") {
    const byEntry = new Map<KeyMapEntry, Tensor>();
    for (const [k, t] of input) {
      const e = map.entryForLdm(k);
      if (e) byEntry.set(e, t);
      else if (!map.isIgnoredLdm(k)) unexpected.push(k);
    }
    for (const e of map.entries) {
      const t = byEntry.get(e);
      if (!t) {
        missing.push(e.ldm);
        continue;
      }
      const out = toDiffusersTensors(e, t);
      for (const [i, d] of e.diffusers.entries()) tensors.set(d, out[i]);
    }
  } else {
    const byKey = new Map<string, Tensor>();
    for (const [k, t] of input) {
      const n = map.normalizeDiffusers(k);
      if (map.entryForDiffusers(n)) byKey.set(n, t);
      else if (!map.isIgnoredDiffusers(k)) unexpected.push(k);
    }
    for (const e of map.entries) {
      const parts = e.diffusers.map((d) => byKey.get(d));
      const absent = e.diffusers.filter((_, i) => !parts[i]);
      if (absent.length > 0) {
        missing.push(...absent);
        continue;
      }
      tensors.set(e.ldm, toLdmTensor(e, parts as Tensor[]));
    }
  }
  return { tensors, unexpected, missing };
}
