// The CLIP byte-level BPE tokenizer (openai/CLIP clip/simple_tokenizer.py;
// transformers models/clip/tokenization_clip.py reads the same vocab.json +
// merges.txt from a diffusers `tokenizer/` folder), and where to find one.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { cleanText } from "./text-clean.js";

export const BOS_TOKEN = "<|startoftext|>";
export const EOS_TOKEN = "<|endoftext|>";

// simple_tokenizer.py's pattern; the text is already lowercased, the "i" flag is kept as the reference has it.
const PRETOKENIZE = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/giu;

/** GPT-2's reversible byte → printable character table (simple_tokenizer.py bytes_to_unicode). */
function bytesToUnicode(): string[] {
  const table = new Array<string>(256);
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCharCode(printable(b) ? b : 256 + n++);
  return table;
}

const BYTE_ENCODER = bytesToUnicode();
const BYTE_DECODER = new Map(BYTE_ENCODER.map((c, b) => [c, b]));
const utf8 = new TextEncoder();

export class ClipTokenizer {
  readonly #encoder: Map<string, number>;
  readonly #decoder: Map<number, string>;
  readonly #ranks: Map<string, number>;
  readonly #cache = new Map<string, string[]>();
  readonly bosId: number;
  readonly eosId: number;

  /** `vocab`: token → id (vocab.json); `merges`: "a b" pairs in rank order (merges.txt without its header). */
  constructor(vocab: Map<string, number> | Record<string, number>, merges: readonly string[]) {
    this.#encoder = vocab instanceof Map ? new Map(vocab) : new Map(Object.entries(vocab));
    this.#decoder = new Map([...this.#encoder].map(([k, v]) => [v, k]));
    this.#ranks = new Map(merges.map((m, i) => [m, i]));
    const bos = this.#encoder.get(BOS_TOKEN);
    const eos = this.#encoder.get(EOS_TOKEN);
    if (bos === undefined || eos === undefined) throw new Error(`CLIP vocabulary lacks ${BOS_TOKEN} or ${EOS_TOKEN}`);
    this.bosId = bos;
    this.eosId = eos;
  }

  /** Reads `vocab.json` and `merges.txt` from a tokenizer folder. */
  static fromDir(dir: string): ClipTokenizer {
    const vocabPath = join(dir, "vocab.json");
    const mergesPath = join(dir, "merges.txt");
    for (const p of [vocabPath, mergesPath]) {
      if (!existsSync(p)) throw new Error(`CLIP tokenizer folder ${dir}: ${p} is missing`);
    }
    let vocab: Record<string, number>;
    try {
      vocab = JSON.parse(readFileSync(vocabPath, "utf8"));
    } catch (e) {
      throw new Error(`${vocabPath}: not valid JSON (${(e as Error).message})`);
    }
    return new ClipTokenizer(vocab, readMerges(readFileSync(mergesPath, "utf8")));
  }

  get vocabSize(): number {
    return this.#encoder.size;
  }

  /** The id of a BPE token string ("cat</w>", ",</w>"), if the vocabulary has it. */
  tokenId(token: string): number | undefined {
    return this.#encoder.get(token);
  }

  /** The BPE strings of a text, without BOS/EOS ("a</w>", "photo</w>", …). */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const [word] of cleanText(text).matchAll(PRETOKENIZE)) {
      if (word === BOS_TOKEN || word === EOS_TOKEN) {
        out.push(word);
        continue;
      }
      let encoded = "";
      for (const b of utf8.encode(word)) encoded += BYTE_ENCODER[b];
      out.push(...this.#bpe(encoded));
    }
    return out;
  }

  /** Token ids of a text without BOS/EOS, untruncated (what A1111 chunks). */
  encodeTokens(text: string): number[] {
    // transformers maps an unknown token to unk = <|endoftext|>; a full vocabulary has every byte and merge
    return this.tokenize(text).map((t) => this.#encoder.get(t) ?? this.eosId);
  }

  /** BOS + ids + EOS, untruncated and unpadded. */
  encode(text: string): number[] {
    return [this.bosId, ...this.encodeTokens(text), this.eosId];
  }

  /**
   * BOS + ids + EOS padded to `length` with `padId` (SD1: EOS 49407; SD2 and
   * clip.tokenize: 0). Longer texts keep BOS, the first length − 2 ids and EOS.
   */
  encodePadded(text: string, length = 77, padId = this.eosId): number[] {
    const ids = this.encodeTokens(text).slice(0, length - 2);
    const out = [this.bosId, ...ids, this.eosId];
    while (out.length < length) out.push(padId);
    return out;
  }

  /** 1 for BOS, the kept ids and EOS, 0 for padding (transformers' attention_mask). */
  attentionMask(text: string, length = 77): number[] {
    const n = Math.min(this.encodeTokens(text).length, length - 2) + 2;
    return Array.from({ length }, (_, i) => (i < n ? 1 : 0));
  }

  /** Text of ids: BPE strings joined, bytes decoded as UTF-8, "</w>" → " " (simple_tokenizer.py decode). */
  decode(ids: readonly number[]): string {
    const text = ids.map((id) => this.#decoder.get(id) ?? "").join("");
    const bytes: number[] = [];
    for (const ch of text) {
      const b = BYTE_DECODER.get(ch);
      if (b !== undefined) bytes.push(b);
    }
    return new TextDecoder("utf-8").decode(Uint8Array.from(bytes)).replaceAll("</w>", " ");
  }

  /** simple_tokenizer.py bpe(): merge the lowest-ranked adjacent pair until none is in merges.txt. */
  #bpe(token: string): string[] {
    const hit = this.#cache.get(token);
    if (hit) return hit;
    let word = [...token.slice(0, -1), `${token.slice(-1)}</w>`];
    while (word.length > 1) {
      let best = -1;
      let bestRank = Number.POSITIVE_INFINITY;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.#ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const [first, second] = [word[best], word[best + 1]];
      const merged: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (word[i] === first && i < word.length - 1 && word[i + 1] === second) {
          merged.push(first + second);
          i++;
        } else {
          merged.push(word[i]);
        }
      }
      word = merged;
    }
    if (this.#cache.size < 100_000) this.#cache.set(token, word);
    return word;
  }
}

// tokenization_clip.py reads merges[1 : 49152 - 256 - 2 + 1]: at most 48894 merges.
const MAX_MERGES = 49152 - 256 - 2;

/** merges.txt lines after the "#version" header, as "a b" pairs. */
function readMerges(text: string): string[] {
  const lines = text.split("\n").map((l) => l.replace(/\r$/, ""));
  const start = lines[0]?.startsWith("#version") ? 1 : 0;
  return lines
    .slice(start)
    .filter((l) => l.trim() !== "")
    .slice(0, MAX_MERGES);
}

// ---- finding a tokenizer ------------------------------------------------------------

export type TokenizerKind = "sd1" | "sd2";

export interface FindTokenizerOptions {
  /** An explicit folder (`--tokenizer DIR`): vocab.json + merges.txt, or a model folder with tokenizer/. */
  tokenizerDir?: string;
  /** A diffusers model folder; its `tokenizer/` is used when present. */
  modelDir?: string;
  kind: TokenizerKind;
  /** The environment to read ATELIER_TOKENIZER, HF_HOME, … from (default process.env). */
  env?: Record<string, string | undefined>;
  /** The home folder for ~/.cache (default os.homedir()). */
  home?: string;
}

export interface FoundTokenizer {
  dir: string;
  source: "option" | "model" | "env" | "hub-cache";
}

const HUB_CANDIDATES: Record<TokenizerKind, [repo: string, sub: string][]> = {
  sd1: [
    ["openai/clip-vit-large-patch14", ""],
    ["runwayml/stable-diffusion-v1-5", "tokenizer"],
    ["stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"],
    ["CompVis/stable-diffusion-v1-4", "tokenizer"],
  ],
  sd2: [
    ["stabilityai/stable-diffusion-2-1", "tokenizer"],
    ["stabilityai/stable-diffusion-2-1-base", "tokenizer"],
    ["stabilityai/stable-diffusion-2", "tokenizer"],
    ["laion/CLIP-ViT-H-14-laion2B-s32B-b79K", ""],
  ],
};

function hasFiles(dir: string): boolean {
  return existsSync(join(dir, "vocab.json")) && existsSync(join(dir, "merges.txt"));
}

/** `dir` itself or its tokenizer/ subfolder, whichever holds vocab.json + merges.txt. */
function tokenizerIn(dir: string): string | undefined {
  if (hasFiles(dir)) return dir;
  if (hasFiles(join(dir, "tokenizer"))) return join(dir, "tokenizer");
  return undefined;
}

/** The Hugging Face hub cache folder, as huggingface_hub resolves it. */
export function hubCacheDir(env: Record<string, string | undefined> = process.env, home = homedir()): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, "hub");
  return join(env.XDG_CACHE_HOME || join(home, ".cache"), "huggingface", "hub");
}

/** Snapshot folders of a cached hub repo: the one refs/main names first, then the others by name. */
function snapshots(cache: string, repo: string): string[] {
  const root = join(cache, `models--${repo.replace("/", "--")}`);
  const snapDir = join(root, "snapshots");
  if (!existsSync(snapDir)) return [];
  let names: string[];
  try {
    names = readdirSync(snapDir)
      .filter((n) => statSync(join(snapDir, n)).isDirectory())
      .sort();
  } catch {
    return [];
  }
  let main: string | undefined;
  try {
    main = readFileSync(join(root, "refs", "main"), "utf8").trim();
  } catch {
    main = undefined;
  }
  if (main && names.includes(main)) names = [main, ...names.filter((n) => n !== main)];
  return names.map((n) => join(snapDir, n));
}

function howToProvide(kind: TokenizerKind, cache: string): string {
  const [repo, sub] = HUB_CANDIDATES[kind][0];
  return [
    `no CLIP tokenizer (${kind}) found. Atelier never downloads one; provide it in one of these ways:`,
    "  1. pass --tokenizer DIR, a folder holding vocab.json and merges.txt (a diffusers model's tokenizer/ folder);",
    "  2. use a diffusers model folder that has a tokenizer/ subfolder;",
    "  3. set ATELIER_TOKENIZER=DIR;",
    `  4. have the Hugging Face hub cache (${cache}) hold ${repo}${sub ? ` (its ${sub}/ folder)` : ""}, e.g. with` +
      ` \`huggingface-cli download ${repo} ${sub ? `--include '${sub}/*'` : "vocab.json merges.txt"}\`` +
      " on a machine with network access.",
  ].join("\n");
}

/**
 * Where the CLIP tokenizer is, in this order: the explicit folder, the model
 * folder's tokenizer/, env ATELIER_TOKENIZER, the Hugging Face hub cache.
 * Throws an Error saying how to provide one when none is found.
 */
export function findTokenizer(o: FindTokenizerOptions): FoundTokenizer {
  const env = o.env ?? process.env;
  if (o.tokenizerDir !== undefined) {
    const dir = tokenizerIn(o.tokenizerDir);
    if (!dir)
      throw new Error(`--tokenizer ${o.tokenizerDir}: no vocab.json + merges.txt there (nor in its tokenizer/)`);
    return { dir, source: "option" };
  }
  if (o.modelDir !== undefined && hasFiles(join(o.modelDir, "tokenizer"))) {
    return { dir: join(o.modelDir, "tokenizer"), source: "model" };
  }
  const fromEnv = env.ATELIER_TOKENIZER;
  if (fromEnv) {
    const dir = tokenizerIn(fromEnv);
    if (!dir) throw new Error(`ATELIER_TOKENIZER=${fromEnv}: no vocab.json + merges.txt there (nor in its tokenizer/)`);
    return { dir, source: "env" };
  }
  const cache = hubCacheDir(env, o.home ?? homedir());
  for (const [repo, sub] of HUB_CANDIDATES[o.kind]) {
    for (const snap of snapshots(cache, repo)) {
      const dir = sub ? join(snap, sub) : snap;
      if (hasFiles(dir)) return { dir, source: "hub-cache" };
    }
  }
  throw new Error(howToProvide(o.kind, cache));
}

/** findTokenizer + ClipTokenizer.fromDir. */
export function loadTokenizer(o: FindTokenizerOptions): ClipTokenizer {
  return ClipTokenizer.fromDir(findTokenizer(o).dir);
}
