// The textual-inversion embeddings a prompt can use, as AUTOMATIC1111's
// EmbeddingDatabase keeps them (AUTOMATIC1111/stable-diffusion-webui
// modules/textual_inversion/textual_inversion.py: `register_embedding_by_name`,
// `load_from_dir`, `find_embedding_at_position`): each word is tokenized, and
// a prompt's tokens are matched against the words that start with the same
// id, longest first. Files whose width does not fit the text encoder (SD1 768
// vs SD2 1024), and files that cannot be read, are kept as refusals: a prompt
// that uses such a word is an error naming the file, not silent plain text.
import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, extname, join } from "node:path";
import type { Tensor } from "../engine/index.js";
import type { ClipTokenizer } from "../models/clip/tokenizer.js";
import { EMBEDDING_EXTENSIONS, loadEmbeddingFile, type TextualEmbedding } from "./embedding-file.js";

export class EmbeddingError extends Error {
  override name = "EmbeddingError";
}

/** What a prompt tokenizer asks: the embedding whose word starts at `position` of `tokens`. */
export interface EmbeddingLookup {
  findAt(tokens: readonly number[], position: number): { name: string; vectors: Tensor; length: number } | undefined;
}

interface Entry {
  ids: number[];
  name: string;
  embedding?: TextualEmbedding;
  /** Why this word's file cannot be used. */
  refusal?: string;
}

/**
 * Why `word` should not be an embedding's word: it is one token of the
 * tokenizer's own vocabulary, so the embedding would replace that ordinary
 * word in every prompt (diffusers' `load_textual_inversion` refuses tokens
 * already in the vocabulary). Undefined when the word is free.
 */
export function embeddingWordClash(tokenizer: ClipTokenizer, word: string): string | undefined {
  const ids = tokenizer.encodeTokens(word);
  if (ids.length === 0) return `the embedding word '${word}' has no tokens`;
  if (ids.length === 1)
    return `the embedding word '${word}' is a word of the tokenizer's vocabulary (token ${ids[0]}): it would replace that word in every prompt, and diffusers refuses such tokens; choose a word that is not one token (e.g. '${word}-emb')`;
  return undefined;
}

/** The embeddings of one text encoder (its width), by word. Owns their tensors: call dispose(). */
export class EmbeddingDatabase implements EmbeddingLookup {
  readonly #byFirst = new Map<number, Entry[]>();
  readonly #byName = new Map<string, Entry>();

  constructor(
    readonly tokenizer: ClipTokenizer,
    /** The text encoder's hidden size: 768 for SD1, 1024 for SD2. */
    readonly width: number,
  ) {}

  /** The usable embeddings' words, sorted. */
  get names(): string[] {
    return [...this.#byName.values()]
      .filter((e) => e.embedding)
      .map((e) => e.name)
      .sort();
  }

  /** The words that cannot be used, with the reason. */
  get refused(): { name: string; reason: string }[] {
    return [...this.#byName.values()]
      .filter((e) => e.refusal)
      .map((e) => ({ name: e.name, reason: e.refusal as string }));
  }

  get(name: string): TextualEmbedding | undefined {
    return this.#byName.get(name)?.embedding;
  }

  /** Adds an embedding (the database takes its tensor); a width that does not fit is an error naming the file. */
  add(e: TextualEmbedding): void {
    const width = e.vectors.shape[1];
    if (width !== this.width) {
      const what = e.path ?? `embedding '${e.name}'`;
      e.vectors.dispose();
      throw new EmbeddingError(
        `${what}: embedding width ${width} does not fit this text encoder (width ${this.width}: ${widthKind(this.width)}); it was made for ${widthKind(width)}`,
      );
    }
    if (e.vectors.shape[0] > 75) {
      e.vectors.dispose();
      throw new EmbeddingError(
        `${e.path ?? e.name}: ${e.vectors.shape[0]} vectors do not fit one 75-token chunk of a prompt`,
      );
    }
    this.#register({ ids: this.tokenizer.encodeTokens(e.name), name: e.name, embedding: e });
  }

  /** Marks `name` as unusable: a prompt that uses it is an error with this reason. */
  refuse(name: string, reason: string): void {
    this.#register({ ids: this.tokenizer.encodeTokens(name), name, refusal: reason });
  }

  #register(entry: Entry): void {
    if (entry.ids.length === 0) {
      entry.embedding?.vectors.dispose();
      throw new EmbeddingError(`embedding word '${entry.name}' has no tokens`);
    }
    const old = this.#byName.get(entry.name);
    if (old) {
      old.embedding?.vectors.dispose();
      const list = this.#byFirst.get(old.ids[0]) ?? [];
      this.#byFirst.set(
        old.ids[0],
        list.filter((x) => x !== old),
      );
    }
    this.#byName.set(entry.name, entry);
    const list = [...(this.#byFirst.get(entry.ids[0]) ?? []), entry];
    list.sort((a, b) => b.ids.length - a.ids.length);
    this.#byFirst.set(entry.ids[0], list);
  }

  /**
   * Reads every embedding file under `dir` (subfolders too, as A1111 walks
   * it). Files that cannot be read or do not fit are kept as refusals, so
   * one bad file does not stop the others. Returns the words loaded and refused.
   */
  loadDir(
    dir: string,
    o: { refuseWordClash?: boolean } = {},
  ): { loaded: string[]; refused: { name: string; path: string; reason: string }[] } {
    if (!existsSync(dir) || !statSync(dir).isDirectory())
      throw new EmbeddingError(`embeddings folder ${dir} does not exist`);
    const loaded: string[] = [];
    const refused: { name: string; path: string; reason: string }[] = [];
    const seen = new Map<string, string>();
    for (const path of embeddingFiles(dir)) {
      const name = basename(path, extname(path));
      const first = seen.get(name);
      if (first !== undefined) {
        const reason = `${path}: a second file for the embedding word '${name}' (the first is ${first}); rename one`;
        this.refuse(name, reason);
        refused.push({ name, path, reason });
        continue;
      }
      seen.set(name, path);
      const clash = o.refuseWordClash ? embeddingWordClash(this.tokenizer, name) : undefined;
      if (clash !== undefined) {
        const reason = `${path}: ${clash}`;
        this.refuse(name, reason);
        refused.push({ name, path, reason });
        continue;
      }
      try {
        this.add(loadEmbeddingFile(path));
        loaded.push(name);
      } catch (e) {
        const reason = e instanceof Error ? e.message : String(e);
        this.refuse(name, reason);
        refused.push({ name, path, reason });
      }
    }
    return { loaded, refused };
  }

  findAt(tokens: readonly number[], position: number): { name: string; vectors: Tensor; length: number } | undefined {
    const candidates = this.#byFirst.get(tokens[position]);
    if (!candidates) return undefined;
    for (const c of candidates) {
      if (c.ids.every((id, i) => tokens[position + i] === id)) {
        if (c.refusal)
          throw new EmbeddingError(`the prompt uses the embedding '${c.name}', which cannot be used: ${c.refusal}`);
        return { name: c.name, vectors: (c.embedding as TextualEmbedding).vectors, length: c.ids.length };
      }
    }
    return undefined;
  }

  dispose(): void {
    for (const e of this.#byName.values()) e.embedding?.vectors.dispose();
    this.#byName.clear();
    this.#byFirst.clear();
  }
}

/**
 * The embeddings of the folders `dirs` for a text encoder of `width`, as
 * `--embeddings-dir` loads them: a missing folder is an error; files that
 * cannot be read, do not fit the width, or whose word is one vocabulary token
 * (when `refuseWordClash`) are refusals naming the file, so a prompt that
 * uses such a word fails with that reason.
 */
export function loadEmbeddingDirs(
  tokenizer: ClipTokenizer,
  width: number,
  dirs: readonly string[],
  o: { refuseWordClash?: boolean } = {},
): EmbeddingDatabase {
  const db = new EmbeddingDatabase(tokenizer, width);
  try {
    for (const d of dirs) db.loadDir(d, o);
  } catch (e) {
    db.dispose();
    throw e;
  }
  return db;
}

function widthKind(width: number): string {
  if (width === 768) return "SD1";
  if (width === 1024) return "SD2";
  return `a width-${width} model`;
}

/** Embedding files below `dir`, sorted, at most 8 folders deep. */
function embeddingFiles(dir: string, depth = 0): string[] {
  if (depth > 8) return [];
  const out: string[] = [];
  for (const e of readdirSync(dir).sort()) {
    const p = join(dir, e);
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) out.push(...embeddingFiles(p, depth + 1));
    else if (st.size > 0 && (EMBEDDING_EXTENSIONS as readonly string[]).includes(extname(e).toLowerCase())) out.push(p);
  }
  return out;
}
