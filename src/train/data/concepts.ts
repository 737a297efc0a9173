// Concepts: an instance folder with its prompt, and optionally a class folder
// for prior preservation — the A1111 Dreambooth extension's Concept
// (d8ahazard/sd_dreambooth_extension dreambooth/dataclasses/db_concept.py) and
// kohya's DreamBoothSubset (library/train_util.py) under one shape. Scanning
// lists image files only, sorted; every image is decoded once to check it and
// to learn its (oriented) size; a corrupt one is skipped with a warning.
import { readdirSync, statSync } from "node:fs";
import { stat } from "node:fs/promises";
import { extname, join, resolve } from "node:path";
import { buildPrompt, type CaptionOptions, checkCaptionOptions, readCaption } from "./captions.js";
import { type Background, decodeImage, hashBytes, IMAGE_EXTENSIONS, readImageBytes } from "./image.js";

export interface ConceptConfig extends CaptionOptions {
  instanceDataDir: string;
  /**
   * Instance prompt: with `[filewords]`, an A1111 template the caption fills;
   * without, the prompt of images that have no caption file (kohya). See buildPrompt.
   */
  instancePrompt?: string;
  /** Folder of class (regularization) images for prior preservation. */
  classDataDir?: string;
  /** Class prompt, read as instancePrompt is (also the prompt class images are generated from). */
  classPrompt?: string;
  /** Negative prompt for generating class images. */
  classNegativePrompt?: string;
  /** Class images wanted in total (diffusers/A1111 num_class_images); 0 = none. */
  numClassImages?: number;
  /** Class images wanted per instance image (A1111 num_class_images_per); used when numClassImages is absent. */
  numClassImagesPer?: number;
  /** Times each instance image appears per epoch (kohya num_repeats, default 1). */
  repeats?: number;
  /** Caption sidecar extension (default ".txt"). */
  captionExtension?: string;
  /** Also scan subfolders (the A1111 extension does; kohya does not). Default false. */
  recursive?: boolean;
  /** Guidance scale and steps for class-image generation (A1111 class_guidance_scale, class_infer_steps). */
  classGuidanceScale?: number;
  classInferSteps?: number;
}

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
  /** The first numClassImages usable class images (sorted), if the concept has a class folder. */
  class: ImageEntry[];
  /** The number of class images asked for (0 when the concept has none). */
  classWanted: number;
  warnings: string[];
}

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
const num = (v: unknown): number | undefined =>
  typeof v === "number"
    ? v
    : typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))
      ? Number(v)
      : undefined;
const bool = (v: unknown): boolean | undefined => (typeof v === "boolean" ? v : undefined);

/**
 * A ConceptConfig from JSON as A1111's concepts_list.json or a kohya dataset
 * config writes it (snake_case: instance_data_dir, class_prompt,
 * num_class_images, num_repeats, caption_extension, shuffle_caption, …);
 * camelCase keys are read too.
 */
export function conceptFromJson(json: Record<string, unknown>): ConceptConfig {
  const pick = (...keys: string[]) => keys.map((k) => json[k]).find((v) => v !== undefined && v !== null);
  const instanceDataDir = str(pick("instanceDataDir", "instance_data_dir", "image_dir"));
  if (!instanceDataDir) throw new Error("concept: instance_data_dir is missing");
  const c: ConceptConfig = {
    instanceDataDir,
    instancePrompt: str(pick("instancePrompt", "instance_prompt")),
    classDataDir: str(pick("classDataDir", "class_data_dir")) || undefined,
    classPrompt: str(pick("classPrompt", "class_prompt")),
    classNegativePrompt: str(pick("classNegativePrompt", "class_negative_prompt")),
    numClassImages: num(pick("numClassImages", "num_class_images")),
    numClassImagesPer: num(pick("numClassImagesPer", "num_class_images_per")),
    repeats: num(pick("repeats", "num_repeats")),
    captionExtension: str(pick("captionExtension", "caption_extension")),
    recursive: bool(pick("recursive")),
    shuffleCaption: bool(pick("shuffleCaption", "shuffle_caption", "shuffle_tags")),
    keepTokens: num(pick("keepTokens", "keep_tokens")),
    keepTokensSeparator: str(pick("keepTokensSeparator", "keep_tokens_separator")) || undefined,
    captionSeparator: str(pick("captionSeparator", "caption_separator")),
    captionDropoutRate: num(pick("captionDropoutRate", "caption_dropout_rate")),
    captionTagDropoutRate: num(pick("captionTagDropoutRate", "caption_tag_dropout_rate")),
    classGuidanceScale: num(pick("classGuidanceScale", "class_guidance_scale")),
    classInferSteps: num(pick("classInferSteps", "class_infer_steps")),
  };
  for (const k of Object.keys(c) as (keyof ConceptConfig)[]) if (c[k] === undefined) delete c[k];
  return c;
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
      const isDir = e.isDirectory() || (e.isSymbolicLink() && statSync(p, { throwIfNoEntry: false })?.isDirectory());
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

/** The class images a concept asks for, given its instance count. */
export function classImagesWanted(c: ConceptConfig, instanceCount: number): number {
  if (!c.classDataDir) return 0;
  if (c.numClassImages !== undefined) return c.numClassImages;
  if (c.numClassImagesPer !== undefined) return c.numClassImagesPer * instanceCount;
  return 0;
}

export function checkConcept(c: ConceptConfig, what: string): void {
  if (!c.instanceDataDir) throw new Error(`${what}: instanceDataDir is missing`);
  const r = c.repeats ?? 1;
  if (!(Number.isInteger(r) && r >= 1)) throw new Error(`${what}: repeats must be an integer >= 1, got ${r}`);
  for (const [name, v] of [
    ["numClassImages", c.numClassImages],
    ["numClassImagesPer", c.numClassImagesPer],
  ] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) {
      throw new Error(`${what}: ${name} must be a non-negative integer, got ${v}`);
    }
  }
  checkCaptionOptions(c, what);
}

function entries(checked: CheckedImage[], c: ConceptConfig, index: number, isClass: boolean): ImageEntry[] {
  const template = isClass ? c.classPrompt : c.instancePrompt;
  return checked.map((img) => {
    const { caption, fromFile } = readCaption(img.path, c.captionExtension ?? ".txt");
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
  const dir = resolve(config.instanceDataDir);
  if (!isDirectory(dir)) throw new Error(`${what}: the instance folder ${dir} does not exist or is not a folder`);
  const found = scanImages(dir, config.recursive);
  const inst = await checkImages(found, o);
  if (inst.images.length === 0) {
    const why =
      found.length === 0
        ? `no image files (${[...IMAGE_EXTENSIONS].join(" ")})`
        : `none of its ${found.length} image files could be read:\n  ${inst.warnings.join("\n  ")}`;
    throw new Error(`${what}: no usable images in ${dir}: ${why}`);
  }
  const warnings = [...inst.warnings];
  const classWanted = classImagesWanted(config, inst.images.length);
  let cls: CheckedImage[] = [];
  if (config.classDataDir && classWanted > 0) {
    const cdir = resolve(config.classDataDir);
    if (isDirectory(cdir)) {
      const checked = await checkImages(scanImages(cdir, config.recursive), o);
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
