// Captions and prompts: sidecar caption files, the A1111 file-name caption,
// `[filewords]` templates, and kohya's caption processing (tag shuffle with
// keep_tokens, tag dropout, caption dropout).
import { readFileSync } from "node:fs";
import { basename, extname } from "node:path";
import type { Rng } from "./rng.js";

/** `.txt` → the sidecar path `dir/name.txt` of `dir/name.png` (kohya caption_extension, with or without the dot). */
export function captionPath(imagePath: string, extension = ".txt"): string {
  const ext = extension.startsWith(".") ? extension : `.${extension}`;
  return imagePath.slice(0, imagePath.length - extname(imagePath).length) + ext;
}

/**
 * The caption text of an image: its sidecar file, trimmed; or, without one,
 * the file name with its extension and leading counters removed (A1111
 * modules/textual_inversion/dataset.py re_numbers_at_start, as the Dreambooth
 * extension's FilenameTextGetter.read_text: "00012-a red car.png" → "a red car").
 */
export function readCaption(imagePath: string, extension = ".txt"): { caption: string; fromFile: boolean } {
  let text: string | undefined;
  try {
    text = readFileSync(captionPath(imagePath, extension), "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "ENOTDIR") {
      throw new Error(`${captionPath(imagePath, extension)}: cannot read the caption: ${(e as Error).message}`);
    }
  }
  if (text !== undefined) return { caption: text.replace(/^\uFEFF/, "").trim(), fromFile: true };
  return { caption: filenameCaption(imagePath), fromFile: false };
}

export function filenameCaption(imagePath: string): string {
  const name = basename(imagePath);
  return name.slice(0, name.length - extname(name).length).replace(/^[-\d]+\s*/, "");
}

/**
 * A prompt template with `[filewords]` replaced by the caption (A1111
 * FilenameTextGetter.create_text), whitespace runs collapsed. An empty
 * template means the caption alone.
 */
export function applyTemplate(template: string | undefined, caption: string): string {
  const t = template && template.trim() !== "" ? template : "[filewords]";
  return t.split("[filewords]").join(caption).replace(/\s+/g, " ").trim();
}

/**
 * An image's prompt from its concept's prompt and its caption:
 * - a prompt with `[filewords]` is an A1111 template: the caption (its file,
 *   else its file name) goes in its place;
 * - otherwise, as kohya: the caption file when the image has a non-empty one,
 *   else the prompt (kohya's class tokens), else the file-name caption.
 */
export function buildPrompt(prompt: string | undefined, read: { caption: string; fromFile: boolean }): string {
  const p = (prompt ?? "").trim();
  if (p.includes("[filewords]")) return applyTemplate(p, read.caption);
  if (read.fromFile && read.caption !== "") return applyTemplate("", read.caption);
  return applyTemplate(p, read.caption);
}

/**
 * How an image's caption is processed: the concept config's shuffle_tags and
 * keep_tokens (src/train/config-core.ts CONCEPT_FIELDS), and kohya's other
 * caption options under their kohya names, which the config does not expose.
 */
export interface CaptionOptions {
  /** kohya shuffle_caption: shuffle the tags after the first keep_tokens. */
  shuffle_tags?: boolean;
  /** kohya keep_tokens: the leading tags that stay in place. */
  keep_tokens?: number;
  /** kohya keep_tokens_separator (e.g. "|||"): tags before it stay in place, and after a second one. */
  keep_tokens_separator?: string;
  /** kohya caption_separator (default ","). */
  caption_separator?: string;
  /** kohya caption_dropout_rate: the whole caption becomes "" with this probability. */
  caption_dropout_rate?: number;
  /** kohya caption_tag_dropout_rate: each movable tag is dropped with this probability. */
  caption_tag_dropout_rate?: number;
}

/** True when processCaption can change a caption (so its text encoding cannot be computed once). */
export function captionsVary(o: CaptionOptions): boolean {
  return !!o.shuffle_tags || (o.caption_dropout_rate ?? 0) > 0 || (o.caption_tag_dropout_rate ?? 0) > 0;
}

/**
 * kohya BaseDataset.process_caption (library/train_util.py): caption dropout
 * first, then — when shuffling or tag dropout is on — split on the separator,
 * keep the first keep_tokens (or the part before keep_tokens_separator), shuffle
 * the rest, drop tags, join with ", ". Draws only from `rng`.
 */
export function processCaption(caption: string, o: CaptionOptions, rng: Rng): string {
  const dropRate = o.caption_dropout_rate ?? 0;
  if (dropRate > 0 && rng.next() < dropRate) return "";
  const tagDrop = o.caption_tag_dropout_rate ?? 0;
  if (!o.shuffle_tags && tagDrop <= 0) return caption;

  const sep = o.caption_separator ?? ",";
  const split = (s: string) =>
    s
      .split(sep)
      .map((t) => t.trim())
      .filter((t) => t !== "");
  let fixed: string[] = [];
  let flex: string[];
  let fixedSuffix: string[] = [];
  const kts = o.keep_tokens_separator;
  if (kts && caption.includes(kts)) {
    const at = caption.indexOf(kts);
    fixed = split(caption.slice(0, at));
    let rest = caption.slice(at + kts.length);
    const at2 = rest.indexOf(kts);
    if (at2 >= 0) {
      fixedSuffix = split(rest.slice(at2 + kts.length));
      rest = rest.slice(0, at2);
    }
    flex = split(rest);
  } else {
    const tokens = caption
      .trim()
      .split(sep)
      .map((t) => t.trim());
    const keep = o.keep_tokens ?? 0;
    fixed = keep > 0 ? tokens.slice(0, keep) : [];
    flex = keep > 0 ? tokens.slice(keep) : tokens;
  }
  if (o.shuffle_tags) rng.shuffle(flex);
  if (tagDrop > 0) flex = flex.filter(() => rng.next() >= tagDrop);
  return [...fixed, ...flex, ...fixedSuffix].join(", ");
}

export function checkCaptionOptions(o: CaptionOptions, what: string): void {
  for (const [name, v] of [
    ["caption_dropout_rate", o.caption_dropout_rate],
    ["caption_tag_dropout_rate", o.caption_tag_dropout_rate],
  ] as const) {
    if (v !== undefined && !(Number.isFinite(v) && v >= 0 && v <= 1)) {
      throw new Error(`${what}: ${name} must be in [0, 1], got ${v}`);
    }
  }
  if (o.keep_tokens !== undefined && !(Number.isInteger(o.keep_tokens) && o.keep_tokens >= 0)) {
    throw new Error(`${what}: keep_tokens must be a non-negative integer, got ${o.keep_tokens}`);
  }
}
