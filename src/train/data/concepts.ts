// Concepts: an instance folder with its prompt, and optionally a class folder
// for prior preservation — the A1111 Dreambooth extension's Concept
// (d8ahazard/sd_dreambooth_extension dreambooth/dataclasses/db_concept.py) and
// kohya's DreamBoothSubset (library/train_util.py) under one shape, the
// training config's concept (src/train/config-core.ts CONCEPT_FIELDS), read
// as the config resolved it. Scanning lists image files only, sorted; every
// image is decoded once to check it and to learn its (oriented) size; a
// corrupt one is skipped with a warning.
import { readdirSync, statSync } from "node:fs";
import { stat } from "node:fs/promises";
import { extname, join, resolve } from "node:path";
import type { ConceptConfig } from "../config-core.js";
import { buildPrompt, checkCaptionOptions, readCaption } from "./captions.js";
import { type Background, decodeImage, hashBytes, IMAGE_EXTENSIONS, readImageBytes } from "./image.js";

/** One usable image of a concept. */
export interface ImageEntry {
  path: string;
  /** Size after EXIF orientation. */
  width: number;
  height: number;
  /** SHA-256 of the file's bytes when it was checked. */
  hash: string;
  /** The file's stat signature before that read (fileSignature). */
  signature: string;
  caption: string;
  captionFromFile: boolean;
  /** The prompt before caption processing (buildPrompt of the concept's prompt and the caption). */
  prompt: string;
  concept: number;
  isClass: boolean;
}

export interface LoadedConcept {
  config: ConceptConfig;
  index: number;
  instance: ImageEntry[];
  /** The first num_class_images usable class images (sorted), if the concept has a class folder. */
  class: ImageEntry[];
  /** The number of class images asked for (0 when the concept has none). */
  classWanted: number;
  warnings: string[];
}

/** Whether a symbolic link leads to a folder; a broken or looping link does not (its file is skipped later, by name). */
function linksToFolder(p: string): boolean {
  try {
    return statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    return false;
  }
}

/**
 * Image files in `dir` (by extension, case-insensitive), sorted by path in
 * code-point order so every machine sees the same order. Hidden files
 * (macOS `._name` forks among them) are left out.
 */
export function scanImages(dir: string, recursive = false): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith(".")) continue;
      const p = join(d, e.name);
      const isDir = e.isDirectory() || (e.isSymbolicLink() && linksToFolder(p));
      if (isDir) {
        if (recursive) walk(p);
      } else if (IMAGE_EXTENSIONS.has(extname(e.name).toLowerCase())) {
        out.push(p);
      }
    }
  };
  walk(dir);
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export interface CheckedImage {
  path: string;
  width: number;
  height: number;
  hash: string;
  /** The file's stat signature taken before it was read (see fileSignature). */
  signature: string;
}

/**
 * Device, inode, size and nanosecond mtime/ctime: any write to the file
 * changes it. A content hash stays valid while the signature is unchanged.
 */
export async function fileSignature(path: string): Promise<string> {
  const s = await stat(path, { bigint: true });
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

/** Decodes each file (a few at a time) to check it; unreadable ones come back as warnings. */
export async function checkImages(
  paths: readonly string[],
  o: { background?: Background; concurrency?: number } = {},
): Promise<{ images: CheckedImage[]; warnings: string[] }> {
  const results: (CheckedImage | string)[] = new Array(paths.length);
  let next = 0;
  const worker = async () => {
    while (next < paths.length) {
      const i = next++;
      try {
        const signature = await fileSignature(paths[i]).catch(() => "");
        const bytes = await readImageBytes(paths[i]);
        const img = await decodeImage(bytes, paths[i], { background: o.background });
        results[i] = { path: paths[i], width: img.width, height: img.height, hash: hashBytes(bytes), signature };
      } catch (e) {
        results[i] = `skipped ${(e as Error).message}`;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, worker));
  return {
    images: results.filter((r): r is CheckedImage => typeof r !== "string"),
    warnings: results.filter((r): r is string => typeof r === "string"),
  };
}

function isDirectory(dir: string): boolean {
  return statSync(dir, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/** Before anything is written: the instance folder exists and holds image files (their decoding is checked later). */
export function checkInstanceFolder(c: ConceptConfig, what: string): void {
  const dir = resolve(c.instance_data_dir);
  if (!isDirectory(dir)) throw new Error(`${what}: the instance folder ${dir} does not exist or is not a folder`);
  if (scanImages(dir).length === 0) {
    throw new Error(`${what}: no usable images in ${dir}: no image files (${[...IMAGE_EXTENSIONS].join(" ")})`);
  }
}

/** The class images a concept asks for: num_class_images, when it has a class folder. */
export function classImagesWanted(c: ConceptConfig): number {
  return c.class_data_dir ? c.num_class_images : 0;
}

/** What the data layer relies on (the config checks it too; a concept built in code may not be). */
export function checkConcept(c: ConceptConfig, what: string): void {
  if (!c.instance_data_dir) throw new Error(`${what}: instance_data_dir is missing`);
  const r = c.repeats;
  if (!(Number.isInteger(r) && r >= 1)) throw new Error(`${what}: repeats must be an integer >= 1, got ${r}`);
  const n = c.num_class_images;
  if (!(Number.isInteger(n) && n >= 0)) {
    throw new Error(`${what}: num_class_images must be a non-negative integer, got ${n}`);
  }
  checkCaptionOptions(c, what);
}

/** The images' entries; the concept's prompt may be an A1111 `[filewords]` template (buildPrompt). */
function entries(checked: CheckedImage[], c: ConceptConfig, index: number, isClass: boolean): ImageEntry[] {
  const template = (isClass ? c.class_prompt : c.instance_prompt) ?? "";
  return checked.map((img) => {
    const { caption, fromFile } = readCaption(img.path, c.caption_extension);
    return {
      ...img,
      caption,
      captionFromFile: fromFile,
      prompt: buildPrompt(template, { caption, fromFile }),
      concept: index,
      isClass,
    };
  });
}

/**
 * Scans and checks a concept's folders. Throws when the instance folder is
 * missing or holds no usable image (naming the folder and what was skipped);
 * unreadable images are skipped and named in `warnings`. A missing class
 * folder counts as empty (ensureClassImages fills it).
 */
export async function loadConcept(
  config: ConceptConfig,
  index = 0,
  o: { background?: Background; concurrency?: number } = {},
): Promise<LoadedConcept> {
  const what = `concept ${index + 1}`;
  checkConcept(config, what);
  const dir = resolve(config.instance_data_dir);
  if (!isDirectory(dir)) throw new Error(`${what}: the instance folder ${dir} does not exist or is not a folder`);
  const found = scanImages(dir);
  const inst = await checkImages(found, o);
  if (inst.images.length === 0) {
    const why =
      found.length === 0
        ? `no image files (${[...IMAGE_EXTENSIONS].join(" ")})`
        : `none of its ${found.length} image files could be read:\n  ${inst.warnings.join("\n  ")}`;
    throw new Error(`${what}: no usable images in ${dir}: ${why}`);
  }
  const warnings = [...inst.warnings];
  const classWanted = classImagesWanted(config);
  let cls: CheckedImage[] = [];
  if (config.class_data_dir && classWanted > 0) {
    const cdir = resolve(config.class_data_dir);
    if (isDirectory(cdir)) {
      const checked = await checkImages(scanImages(cdir), o);
      warnings.push(...checked.warnings);
      cls = checked.images.slice(0, classWanted);
    }
    if (cls.length < classWanted) {
      warnings.push(`${what}: ${cdir} holds ${cls.length} usable class images of the ${classWanted} wanted`);
    }
  }
  return {
    config,
    index,
    instance: entries(inst.images, config, index, false),
    class: entries(cls, config, index, true),
    classWanted,
    warnings,
  };
}
