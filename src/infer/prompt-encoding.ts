// Prompt → conditioning the way AUTOMATIC1111 computes it
// (AUTOMATIC1111/stable-diffusion-webui modules/sd_hijack_clip.py,
// FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line / forward /
// process_tokens; modules/sd_emphasis.py; modules/prompt_parser.py stack_conds):
// weighted pieces are tokenized, packed into 75-token chunks (BREAK and the
// comma backtrack decide where a chunk ends), each chunk is encoded as
// BOS + 75 + EOS, the emphasis is applied, and the chunks are concatenated.

import type { EmbeddingLookup } from "../adapters/embeddings.js";
import { all, cat, scope, type Tensor, tensor } from "../engine/index.js";
import type { ClipTextModel } from "../models/clip/text-encoder.js";
import type { ClipTokenizer } from "../models/clip/tokenizer.js";
import { parsePromptAttention, type WeightedText } from "./prompt-parser.js";

export const CHUNK_LENGTH = 75;

/** A1111's emphasis modes (settings "Emphasis mode"); "original" is its default. */
export type EmphasisMode = "original" | "no-norm" | "ignore" | "none";

/** chunk_length + 2 tokens (BOS … EOS) and one multiplier per token. */
export interface PromptChunk {
  tokens: number[];
  multipliers: number[];
  /**
   * Textual-inversion vectors that replace token vectors (sd_hijack.py
   * PromptChunkFix): at `offset` of the 75 tokens, i.e. after BOS.
   */
  fixes?: { offset: number; vectors: Tensor }[];
}

export interface TokenizePromptOptions {
  /** "none" reads brackets as plain text; the other modes parse weights. */
  emphasis?: EmphasisMode;
  /** opts.comma_padding_backtrack (default 20; 0 turns it off). */
  commaBacktrack?: number;
  /** Textual-inversion embeddings the prompt's words may name (adapters/embeddings.ts). */
  embeddings?: EmbeddingLookup;
}

/**
 * tokenize_line: the chunks of one prompt and its token count (a multiple of
 * 75 except for the last chunk's own length).
 */
export function tokenizePrompt(
  tokenizer: ClipTokenizer,
  prompt: string,
  o: TokenizePromptOptions = {},
): { chunks: PromptChunk[]; tokenCount: number } {
  const parsed: WeightedText[] = (o.emphasis ?? "original") === "none" ? [[prompt, 1.0]] : parsePromptAttention(prompt);
  const backtrack = o.commaBacktrack ?? 20;
  const comma = tokenizer.tokenId(",</w>");
  const [bos, eos] = [tokenizer.bosId, tokenizer.eosId];

  const chunks: PromptChunk[] = [];
  let chunk: PromptChunk = { tokens: [], multipliers: [] };
  let tokenCount = 0;
  let lastComma = -1;

  const nextChunk = (isLast = false) => {
    tokenCount += isLast ? chunk.tokens.length : CHUNK_LENGTH;
    const toAdd = CHUNK_LENGTH - chunk.tokens.length;
    for (let i = 0; i < toAdd; i++) {
      chunk.tokens.push(eos);
      chunk.multipliers.push(1.0);
    }
    chunk.tokens = [bos, ...chunk.tokens, eos];
    chunk.multipliers = [1.0, ...chunk.multipliers, 1.0];
    lastComma = -1;
    chunks.push(chunk);
    chunk = { tokens: [], multipliers: [] };
  };
  const addFix = (offset: number, vectors: Tensor) => {
    chunk.fixes ??= [];
    chunk.fixes.push({ offset, vectors });
  };

  for (const [text, weight] of parsed) {
    if (text === "BREAK" && weight === -1) {
      nextChunk();
      continue;
    }
    const tokens = tokenizer.encodeTokens(text);
    for (let position = 0; position < tokens.length; ) {
      const token = tokens[position];
      if (token === comma) {
        lastComma = chunk.tokens.length;
      } else if (
        backtrack !== 0 &&
        chunk.tokens.length === CHUNK_LENGTH &&
        lastComma !== -1 &&
        chunk.tokens.length - lastComma <= backtrack
      ) {
        // the chunk is full and a comma is near its end: move what follows the comma to the next chunk
        const at = lastComma + 1;
        const relocTokens = chunk.tokens.slice(at);
        const relocMults = chunk.multipliers.slice(at);
        const relocFixes = chunk.fixes
          ?.filter((f) => f.offset >= at)
          .map((f) => ({ offset: f.offset - at, vectors: f.vectors }));
        chunk.tokens = chunk.tokens.slice(0, at);
        chunk.multipliers = chunk.multipliers.slice(0, at);
        chunk.fixes = chunk.fixes?.filter((f) => f.offset < at);
        nextChunk();
        chunk = { tokens: relocTokens, multipliers: relocMults };
        if (relocFixes?.length) chunk.fixes = relocFixes;
      }
      if (chunk.tokens.length === CHUNK_LENGTH) nextChunk();
      // textual inversion (sd_hijack_clip.py tokenize_line): an embedding's word becomes its vectors,
      // starting a new chunk when they do not fit in this one
      const found = o.embeddings?.findAt(tokens, position);
      if (found) {
        const count = found.vectors.size(0);
        if (chunk.tokens.length + count > CHUNK_LENGTH) nextChunk();
        addFix(chunk.tokens.length, found.vectors);
        for (let i = 0; i < count; i++) {
          chunk.tokens.push(0);
          chunk.multipliers.push(weight);
        }
        position += found.length;
        continue;
      }
      chunk.tokens.push(token);
      chunk.multipliers.push(weight);
      position++;
    }
  }
  if (chunk.tokens.length > 0 || chunks.length === 0) nextChunk(true);
  return { chunks, tokenCount };
}

export interface EncodePromptOptions extends TokenizePromptOptions {
  /** 1 = last layer; N = final_layer_norm(hidden_states[−N]) (A1111 "Clip skip"). */
  clipSkip?: number;
  /**
   * The id after the first EOS of each chunk (process_tokens): SD1 pads with
   * EOS (the default); SD2's tokenizer pads with 0.
   */
  padId?: number;
}

/**
 * Emphasis of one encoded chunk batch z [B, 77, H] by per-token multipliers
 * [B, 77] (sd_emphasis.py): "original" multiplies, then rescales so the mean
 * of all of z is unchanged; "no-norm" only multiplies; "ignore"/"none" leave z.
 */
export function applyEmphasis(z: Tensor, multipliers: Tensor, mode: EmphasisMode = "original"): Tensor {
  if (mode === "ignore" || mode === "none") return z;
  // All weights 1 leave z as it is; skipping also avoids 0/0 when z's mean is exactly 0.
  if (scope(() => all(multipliers.eq(1)).item()) === 1) return z.clone();
  return scope(() => {
    const weighted = z.mul(multipliers.to(z.dtype).unsqueeze(-1));
    if (mode === "no-norm") return weighted;
    // A1111 divides by the weighted mean as it is; where that is exactly 0
    // (a text encoder whose final layer norm leaves every token at mean 0,
    // as an untrained one does) it yields NaN/Inf conditioning: keep the
    // weighted z unscaled instead.
    const ratio = z.mean().div(weighted.mean());
    if (!Number.isFinite(ratio.item())) return weighted;
    return weighted.mul(ratio);
  });
}

/** The 77 ids of a chunk with every id after the first EOS set to `padId` (SD2). */
function chunkIds(tokens: readonly number[], eos: number, padId: number): number[] {
  if (padId === eos) return [...tokens];
  const first = tokens.indexOf(eos);
  return tokens.map((t, i) => (first >= 0 && i > first ? padId : t));
}

/**
 * The token vectors of a chunk with its textual-inversion vectors in place
 * (sd_hijack.py EmbeddingsWithFixes: rows offset+1… after BOS); undefined
 * when the chunk has none, so the text encoder looks the ids up itself.
 */
function withFixes(model: ClipTextModel, ids: Tensor, fixes: PromptChunk["fixes"]): Tensor | undefined {
  if (!fixes || fixes.length === 0) return undefined;
  const embeds = model.tokenEmbeds(ids);
  const length = embeds.size(1);
  const parts: Tensor[] = [];
  let at = 0;
  for (const f of [...fixes].sort((a, b) => a.offset - b.offset)) {
    const start = f.offset + 1;
    const count = Math.min(f.vectors.size(0), length - start - 1);
    if (start > at) parts.push(embeds.narrow(1, at, start - at));
    parts.push(f.vectors.narrow(0, 0, count).to(embeds.device, embeds.dtype).unsqueeze(0));
    at = start + count;
  }
  if (at < length) parts.push(embeds.narrow(1, at, length - at));
  return cat(parts, 1);
}

/**
 * The conditioning of one prompt: [1, 77·chunks, H], each chunk encoded by
 * the text encoder (with clip skip), weighted by its emphasis and concatenated.
 * Autograd records as the caller's mode says: wrap in noGrad() for inference.
 */
export function encodePrompt(
  model: ClipTextModel,
  tokenizer: ClipTokenizer,
  prompt: string,
  o: EncodePromptOptions = {},
): Tensor {
  const { chunks } = tokenizePrompt(tokenizer, prompt, o);
  const padId = o.padId ?? tokenizer.eosId;
  const device = model.embeddings.parameters()[0].device;
  return scope(() => {
    const zs = chunks.map((c) => {
      const ids = tensor(BigInt64Array.from(chunkIds(c.tokens, tokenizer.eosId, padId), BigInt), {
        shape: [1, c.tokens.length],
        device,
      });
      const z = model.encode(ids, { clipSkip: o.clipSkip, tokenEmbeds: withFixes(model, ids, c.fixes) });
      const mults = tensor(Float32Array.from(c.multipliers), { shape: [1, c.multipliers.length], device });
      return applyEmphasis(z, mults, o.emphasis ?? "original");
    });
    return zs.length === 1 ? zs[0] : cat(zs, 1);
  });
}

/**
 * The conditioning of several prompts, [B, T, H]: each encoded on its own
 * (A1111 encodes prompt by prompt), the shorter ones lengthened by repeating
 * their last vector (prompt_parser.py stack_conds).
 */
export function encodePrompts(
  model: ClipTextModel,
  tokenizer: ClipTokenizer,
  prompts: readonly string[],
  o: EncodePromptOptions = {},
): Tensor {
  if (prompts.length === 0) throw new Error("encodePrompts: no prompts");
  return scope(() => {
    const conds = prompts.map((p) => encodePrompt(model, tokenizer, p, o));
    const length = Math.max(...conds.map((c) => c.size(1)));
    const padded = conds.map((c) => {
      const missing = length - c.size(1);
      return missing === 0 ? c : cat([c, c.narrow(1, c.size(1) - 1, 1).expand(1, missing, c.size(2))], 1);
    });
    return cat(padded, 0);
  });
}
