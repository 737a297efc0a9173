// A CLIP BPE vocabulary of the shapes world's own, for a small CLIP-architecture
// text encoder trained from scratch: BPE trained the way GPT-2's and CLIP's
// vocabularies were built, written as a Hugging Face CLIP tokenizer folder
// (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)
// that ClipTokenizer.fromDir, transformers' CLIPTokenizer and diffusers load.
//
// The layout is CLIP's (openai/CLIP clip/simple_tokenizer.py SimpleTokenizer.__init__):
//   ids 0–255     the 256 byte symbols in bytes_to_unicode() order (printable bytes
//                 "!".."~", "¡".."¬", "®".."ÿ", then the other 68 bytes as U+0100…),
//   ids 256–511   the same symbols + "</w>",
//   then one id per merge, in merge order (a merge whose result is already a token
//                 adds none, so ids stay contiguous),
//   then <|startoftext|> and <|endoftext|> as the last two ids.
// With all 512 byte symbols in the vocabulary any text tokenizes: a word the
// merges do not cover falls back to (partly merged) byte symbols.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { BOS_TOKEN, ClipTokenizer, EOS_TOKEN } from "../models/clip/tokenizer.js";
import { COLOURS, type Colour, caption, type Pattern, type Scene, SHAPES } from "./world.js";

const END_OF_WORD = "</w>";

/** The most merges transformers' CLIPTokenizer reads from merges.txt (49152 − 256 − 2). */
export const MAX_CLIP_MERGES = 49152 - 256 - 2;

/** Dreambooth identifiers a world vocabulary keeps as single tokens ("a sks star"). */
export const DREAMBOOTH_IDENTIFIERS: readonly string[] = ["sks", "zwx", "ohwx"];

export interface BpeOptions {
  /** Stop after this many merges even if some words are still split (default and maximum: MAX_CLIP_MERGES). */
  maxMerges?: number;
  /** Words learnt as single tokens too, each with weight 1 (Dreambooth identifiers). */
  extraWords?: readonly string[];
}

export interface Bpe {
  /** token → id, ids 0 … size − 1 (see the layout above). */
  vocab: Map<string, number>;
  /** The merges in rank order, as merges.txt lists them ("a b" per line). */
  merges: [string, string][];
}

/** CLIP's byte symbols in vocab.json order: bytes_to_unicode()'s values (simple_tokenizer.py). */
export function clipByteSymbols(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  for (let b = 0; b < 256; b++) if (printable(b)) out.push(String.fromCharCode(b));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!printable(b)) out.push(String.fromCharCode(256 + n++));
  return out;
}

/** The 512 base tokens: the byte symbols, then each + "</w>". */
export function baseVocabulary(): string[] {
  const bytes = clipByteSymbols();
  return [...bytes, ...bytes.map((s) => s + END_OF_WORD)];
}

/**
 * Words of texts as the tokenizer sees them before its merges, with how often
 * each occurs: cleaned and lowercased (cleanText), split by CLIP's regex, as
 * byte symbols with "</w>" on the last. Uses ClipTokenizer itself with no merges,
 * so training and tokenizing cannot disagree on any of these steps.
 */
export function wordCounts(texts: readonly string[], into = new Map<string, number>()): Map<string, number> {
  const tok = bytesOnlyTokenizer();
  for (const text of texts) {
    let word: string[] = [];
    for (const sym of tok.tokenize(text)) {
      if (sym === BOS_TOKEN || sym === EOS_TOKEN) continue; // the specials are not words to learn
      word.push(sym);
      if (sym.endsWith(END_OF_WORD)) {
        const key = word.join(" ");
        into.set(key, (into.get(key) ?? 0) + 1);
        word = [];
      }
    }
  }
  return into;
}

let bytesOnly: ClipTokenizer | undefined;
function bytesOnlyTokenizer(): ClipTokenizer {
  if (!bytesOnly) {
    const vocab = new Map(baseVocabulary().map((t, i) => [t, i]));
    vocab.set(BOS_TOKEN, vocab.size);
    vocab.set(EOS_TOKEN, vocab.size);
    bytesOnly = new ClipTokenizer(vocab, []);
  }
  return bytesOnly;
}

/** simple_tokenizer.py bpe()'s merge of one pair, left to right. */
function applyMerge(word: string[], first: string, second: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < word.length; i++) {
    if (word[i] === first && i < word.length - 1 && word[i + 1] === second) {
      out.push(first + second);
      i++;
    } else {
      out.push(word[i]);
    }
  }
  return out;
}

/**
 * Byte-level BPE training (Sennrich et al.; GPT-2's and CLIP's vocabularies):
 * every word of `corpus` counts once per occurrence and each of `extraWords`
 * once more; then, repeatedly, the adjacent pair with the highest total count
 * is merged everywhere (ties: the smallest pair, comparing the first symbol and
 * then the second by UTF-16 code units), until every word is one token or
 * `maxMerges` merges are made. The result depends only on the multiset of
 * words, not on the order of the corpus.
 */
export function trainBpe(corpus: readonly string[], o: BpeOptions = {}): Bpe {
  const maxMerges = o.maxMerges ?? MAX_CLIP_MERGES;
  if (!Number.isInteger(maxMerges) || maxMerges < 0 || maxMerges > MAX_CLIP_MERGES) {
    throw new Error(`trainBpe: maxMerges must be an integer in 0…${MAX_CLIP_MERGES}, got ${maxMerges}`);
  }
  const counts = wordCounts(corpus);
  wordCounts(o.extraWords ?? [], counts);
  const words = [...counts].map(([key, count]) => ({ symbols: key.split(" "), count }));

  const merges: [string, string][] = [];
  while (merges.length < maxMerges) {
    const pairs = new Map<string, { first: string; second: string; count: number }>();
    for (const w of words) {
      for (let i = 0; i < w.symbols.length - 1; i++) {
        const key = `${w.symbols[i]} ${w.symbols[i + 1]}`;
        const p = pairs.get(key);
        if (p) p.count += w.count;
        else pairs.set(key, { first: w.symbols[i], second: w.symbols[i + 1], count: w.count });
      }
    }
    let best: { first: string; second: string; count: number } | undefined;
    for (const p of pairs.values()) {
      if (
        !best ||
        p.count > best.count ||
        (p.count === best.count && (p.first < best.first || (p.first === best.first && p.second < best.second)))
      ) {
        best = p;
      }
    }
    if (!best) break; // every word is a single token
    merges.push([best.first, best.second]);
    for (const w of words) {
      if (w.symbols.length > 1) w.symbols = applyMerge(w.symbols, best.first, best.second);
    }
  }

  const vocab = new Map(baseVocabulary().map((t, i) => [t, i]));
  for (const [a, b] of merges) if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  vocab.set(BOS_TOKEN, vocab.size);
  vocab.set(EOS_TOKEN, vocab.size);
  return { vocab, merges };
}

/**
 * Every caption the world's caption() makes, each once, in a fixed order: for
 * every shape, colour and background (never the shape's colour, as in the
 * world) the plain scene, the dotted and the two-tone ones (every other
 * pattern colour), each with and without its colour and its background.
 * Dreambooth identifiers are not in it (give them as trainBpe's extraWords).
 */
export function worldCorpus(): string[] {
  const out = new Set<string>();
  const forms = [{}, { dropColour: true }, { dropBackground: true }, { dropColour: true, dropBackground: true }];
  const patterns: [Pattern, Colour | undefined][] = [["plain", undefined]];
  for (const p of ["dotted", "two-tone"] as const) for (const c of COLOURS) patterns.push([p, c]);
  for (const shape of SHAPES) {
    for (const colour of COLOURS) {
      for (const [pattern, patternColour] of patterns) {
        if (patternColour === colour) continue;
        for (const background of COLOURS) {
          if (background === colour) continue;
          const scene: Scene = {
            shape,
            colour,
            background,
            cx: 32,
            cy: 32,
            size: 40,
            rotation: 0,
            imageSize: 64,
            ...(patternColour ? { pattern, patternColour } : {}),
          };
          for (const f of forms) out.add(caption(scene, f));
        }
      }
    }
  }
  return [...out];
}

/** trainBpe over worldCorpus() with the Dreambooth identifiers as extra words. */
export function worldBpe(o: BpeOptions = {}): Bpe {
  return trainBpe(worldCorpus(), { extraWords: DREAMBOOTH_IDENTIFIERS, ...o });
}

/** vocab.json as CLIP's is written: one line, in id order, Python json.dumps spacing, non-ASCII kept. */
export function vocabJson(bpe: Bpe): string {
  const entries = [...bpe.vocab].sort((x, y) => x[1] - y[1]);
  return `{${entries.map(([t, id]) => `${JSON.stringify(t)}: ${id}`).join(", ")}}`;
}

/** merges.txt: the "#version: 0.2" header, then "a b" per merge, each line ending in "\n". */
export function mergesTxt(bpe: Bpe): string {
  return `#version: 0.2\n${bpe.merges.map(([a, b]) => `${a} ${b}\n`).join("")}`;
}

function checkBpe(bpe: Bpe): void {
  const ids = [...bpe.vocab.values()].sort((a, b) => a - b);
  if (ids.some((id, i) => id !== i)) throw new Error("tokenizer vocabulary: ids are not 0 … size − 1, each once");
  const bos = bpe.vocab.get(BOS_TOKEN);
  const eos = bpe.vocab.get(EOS_TOKEN);
  if (bos === undefined || eos === undefined)
    throw new Error(`tokenizer vocabulary lacks ${BOS_TOKEN} or ${EOS_TOKEN}`);
  if (bpe.merges.length > MAX_CLIP_MERGES) {
    throw new Error(`tokenizer: ${bpe.merges.length} merges, CLIPTokenizer reads at most ${MAX_CLIP_MERGES}`);
  }
  for (const [a, b] of bpe.merges) {
    if (!a || !b || /\s/.test(a + b))
      throw new Error(`tokenizer merge ${JSON.stringify([a, b])}: empty or has whitespace`);
    if (!bpe.vocab.has(a) || !bpe.vocab.has(b) || !bpe.vocab.has(a + b)) {
      throw new Error(`tokenizer merge "${a} ${b}": its parts or its result are not in the vocabulary`);
    }
  }
}

const specialToken = (content: string) => ({
  content,
  lstrip: false,
  normalized: true,
  rstrip: false,
  single_word: false,
});

/** tokenizer_config.json as transformers (≥ 4.34) writes it for CLIPTokenizer. */
export function tokenizerConfig(bpe: Bpe): Record<string, unknown> {
  const added: Record<string, unknown> = {};
  for (const t of [BOS_TOKEN, EOS_TOKEN]) added[String(bpe.vocab.get(t))] = { ...specialToken(t), special: true };
  return {
    added_tokens_decoder: added,
    bos_token: BOS_TOKEN,
    clean_up_tokenization_spaces: true,
    do_lower_case: true,
    eos_token: EOS_TOKEN,
    errors: "replace",
    model_max_length: 77,
    pad_token: EOS_TOKEN,
    tokenizer_class: "CLIPTokenizer",
    unk_token: EOS_TOKEN,
  };
}

/** special_tokens_map.json as SD1's tokenizer folder has it (pad = EOS). */
export function specialTokensMap(): Record<string, unknown> {
  return {
    bos_token: specialToken(BOS_TOKEN),
    eos_token: specialToken(EOS_TOKEN),
    pad_token: EOS_TOKEN,
    unk_token: specialToken(EOS_TOKEN),
  };
}

/**
 * Writes a CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
 * special_tokens_map.json), each file atomically; creates `dir`. Returns the paths.
 */
export function writeTokenizerFiles(dir: string, bpe: Bpe): string[] {
  checkBpe(bpe);
  mkdirSync(dir, { recursive: true });
  const files: [string, string][] = [
    ["vocab.json", vocabJson(bpe)],
    ["merges.txt", mergesTxt(bpe)],
    ["tokenizer_config.json", `${JSON.stringify(tokenizerConfig(bpe), null, 2)}\n`],
    ["special_tokens_map.json", `${JSON.stringify(specialTokensMap(), null, 2)}\n`],
  ];
  return files.map(([name, text]) => {
    const path = join(dir, name);
    writeTextAtomic(path, text);
    return path;
  });
}
