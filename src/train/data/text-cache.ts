// Text-embedding cache for frozen text encoders (kohya
// cache_text_encoder_outputs, library/train_util.py): each prompt's
// conditioning is computed once, the A1111 way (src/infer/prompt-encoding.ts
// encodePrompt), and kept in memory and optionally as safetensors files. The
// key is the prompt, clip skip, pad id, emphasis mode and a fingerprint of the
// encoder's weights. A cache over an encoder that trains would go stale, so
// encoding refuses while any of its parameters requires grad, or when its
// parameter tensors were replaced since the fingerprint was taken.
import { createHash } from "node:crypto";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { cat, keep, noGrad, scope, type Tensor } from "../../engine/index.js";
import { loadSafetensors, saveSafetensors } from "../../formats/safetensors.js";
import { type EmphasisMode, encodePrompt } from "../../infer/prompt-encoding.js";
import type { ClipTextModel } from "../../models/clip/text-encoder.js";
import type { ClipTokenizer } from "../../models/clip/tokenizer.js";
import { moduleFingerprint } from "./latent-cache.js";

export interface TextEmbeddingCacheOptions {
  textEncoder: ClipTextModel;
  tokenizer: ClipTokenizer;
  /** A1111 "Clip skip" (default 1). */
  clipSkip?: number;
  /** The id after the first EOS (SD2: 0); default EOS. */
  padId?: number;
  emphasis?: EmphasisMode;
  /** The encoder's identity; default: a hash of its weights, taken once. */
  fingerprint?: string;
  /** Also keep the embeddings as files here. */
  dir?: string;
  /** Where `encode` puts its result (default the encoder's device). */
  device?: string;
  onWarning?: (message: string) => void;
}

export class TextEmbeddingCache {
  readonly #o: TextEmbeddingCacheOptions;
  readonly #memory = new Map<string, Tensor>();
  #fingerprint: string | undefined;
  #paramIds: string;

  constructor(o: TextEmbeddingCacheOptions) {
    this.#o = o;
    this.#fingerprint = o.fingerprint;
    this.#paramIds = this.#idsOfParams();
    if (o.dir) mkdirSync(o.dir, { recursive: true });
  }

  #idsOfParams(): string {
    return this.#o.textEncoder
      .parameters()
      .map((t) => t.id)
      .join(",");
  }

  /** The encoder fingerprint in use (computed on first use unless given). */
  get fingerprint(): string {
    this.#fingerprint ??= moduleFingerprint(this.#o.textEncoder);
    return this.#fingerprint;
  }

  #check(): void {
    const enc = this.#o.textEncoder;
    if (enc.parameters().some((t) => t.requiresGrad)) {
      throw new Error("TextEmbeddingCache: the text encoder has trainable parameters; its outputs cannot be cached");
    }
    if (this.#idsOfParams() !== this.#paramIds) {
      throw new Error(
        "TextEmbeddingCache: the text encoder's parameters were replaced since the cache was made; make a new cache",
      );
    }
  }

  #key(prompt: string): { id: string; text: string } {
    const o = this.#o;
    const text = JSON.stringify([
      "atelier-text/1",
      prompt,
      o.clipSkip ?? 1,
      o.padId ?? null,
      o.emphasis ?? "original",
      this.fingerprint,
    ]);
    return { id: createHash("sha256").update(text).digest("hex"), text };
  }

  #fromDisk(id: string, text: string): Tensor | undefined {
    const path = join(this.#o.dir!, `${id}.safetensors`);
    if (!statSync(path, { throwIfNoEntry: false })?.isFile()) return undefined;
    let loaded: ReturnType<typeof loadSafetensors> | undefined;
    try {
      loaded = loadSafetensors(path);
      const t = loaded.tensors.get("embedding");
      if (loaded.metadata.key !== text || !t || t.ndim !== 3)
        throw new Error("the file does not hold this prompt's embedding");
      loaded.tensors.delete("embedding");
      return t;
    } catch (e) {
      this.#o.onWarning?.(`text cache ${path}: ${(e as Error).message}; recomputing`);
      return undefined;
    } finally {
      for (const t of loaded?.tensors.values() ?? []) t.dispose();
    }
  }

  /** One prompt's conditioning [1, 77·chunks, H] (a new tensor the caller owns). */
  get(prompt: string): Tensor {
    this.#check();
    const { id, text } = this.#key(prompt);
    let stored = this.#memory.get(id);
    if (!stored) {
      const o = this.#o;
      stored = (o.dir ? this.#fromDisk(id, text) : undefined) as Tensor | undefined;
      if (!stored) {
        stored = noGrad(() =>
          scope(() =>
            encodePrompt(o.textEncoder, o.tokenizer, prompt, {
              clipSkip: o.clipSkip,
              padId: o.padId,
              emphasis: o.emphasis,
            }).to("cpu"),
          ),
        );
        if (o.dir)
          saveSafetensors(join(o.dir, `${id}.safetensors`), { embedding: stored }, { format: "pt", key: text });
      }
      this.#memory.set(id, keep(stored));
    }
    return stored.clone();
  }

  /**
   * The conditioning of a batch [B, T, H]: each prompt from the cache, the
   * shorter ones lengthened by repeating their last vector (A1111
   * prompt_parser.py stack_conds, as encodePrompts).
   */
  encode(prompts: readonly string[]): Tensor {
    if (prompts.length === 0) throw new Error("TextEmbeddingCache.encode: no prompts");
    const device = this.#o.device ?? this.#o.textEncoder.parameters()[0].device;
    return scope(() => {
      const conds = prompts.map((p) => this.get(p));
      const length = Math.max(...conds.map((c) => c.size(1)));
      const padded = conds.map((c) => {
        const missing = length - c.size(1);
        return missing === 0 ? c : cat([c, c.narrow(1, c.size(1) - 1, 1).expand(1, missing, c.size(2))], 1);
      });
      return cat(padded, 0).to(device);
    });
  }

  /** Prompts held in memory. */
  get size(): number {
    return this.#memory.size;
  }

  dispose(): void {
    for (const t of this.#memory.values()) t.dispose();
    this.#memory.clear();
  }
}
