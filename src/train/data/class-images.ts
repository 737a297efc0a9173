// Class images for prior preservation: when a concept's class folder holds
// fewer usable images than it asks for, the missing ones are generated with
// the base model from the class prompt and saved in the folder, so later runs
// reuse them (diffusers examples/dreambooth/train_dreambooth.py "Generate
// class images if prior preservation is enabled"; the A1111 extension's
// generate_classifiers + db_save_image, dreambooth/utils/gen_utils.py and
// image_utils.py: a PNG named by the SHA-1 of its pixels, with A1111
// "parameters" text and a caption file beside it). Every file is written
// atomically (caption first), under a name no existing file has.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { writeAll, writeFileAtomic, writeTextAtomic } from "../../formats/atomic-write.js";
import { a1111Parameters, encodePng } from "../../formats/png.js";
import { A1111_SAMPLER_NAMES } from "../../infer/save-images.js";
import { type StableDiffusion, toRgbBytes, txt2img } from "../../infer/txt2img.js";
import { applyTemplate, captionPath } from "./captions.js";
import { type ConceptConfig, checkImages, classImagesWanted, scanImages } from "./concepts.js";

export interface EnsureClassImagesOptions {
  /** Class images wanted; default the concept's numClassImages (or numClassImagesPer × instance images). */
  count?: number;
  sampler?: string;
  /** Default the concept's classInferSteps, else 40. */
  steps?: number;
  /** Default the concept's classGuidanceScale, else 7.5. */
  cfg?: number;
  /** First seed; batch i uses seed + (images in the folder before it). Default random. */
  seed?: number;
  /** Images per txt2img call (default 1). */
  batch?: number;
  /** Default the concept's classNegativePrompt. */
  negative?: string;
  width?: number;
  height?: number;
  clipSkip?: number;
  /** After each saved image: (generated so far, to generate in all, its path). */
  onProgress?: (done: number, total: number, path: string) => void;
}

export interface EnsureClassImagesResult {
  dir: string;
  /** Usable images found before generating. */
  existing: number;
  /** Paths of the new images. */
  generated: string[];
  /** The count asked for. */
  wanted: number;
  /** The first seed used (when something was generated). */
  seed?: number;
  /** Unreadable files in the folder (skipped, not counted). */
  warnings: string[];
}

/** A name in `dir` that no file has: `<sha1>.png`, else `<sha1>-1.png`, … (and no caption beside it either). */
function freeName(dir: string, stem: string, captionExt: string): string {
  for (let i = 0; ; i++) {
    const png = join(dir, `${i === 0 ? stem : `${stem}-${i}`}.png`);
    if (!existsSync(png) && !existsSync(captionPath(png, captionExt))) return png;
  }
}

/** The prompt class images are generated from: the class prompt, `[filewords]` left empty. */
export function classGenerationPrompt(concept: ConceptConfig): string {
  const prompt = applyTemplate(concept.classPrompt ?? "", "");
  if (prompt === "") {
    throw new Error(`${concept.classDataDir}: a class prompt is needed to generate class images`);
  }
  return prompt;
}

/**
 * Fills the concept's class folder to its wanted count with images generated
 * by `model` (txt2img with the class prompt). Existing usable images count;
 * nothing is regenerated. Creates the folder when missing.
 */
export async function ensureClassImages(
  concept: ConceptConfig,
  model: StableDiffusion,
  o: EnsureClassImagesOptions = {},
): Promise<EnsureClassImagesResult> {
  if (!concept.classDataDir)
    throw new Error(`concept ${concept.instanceDataDir}: no class folder (classDataDir) is set`);
  const dir = resolve(concept.classDataDir);
  let wanted = o.count;
  if (wanted === undefined) {
    const instances = existsSync(concept.instanceDataDir)
      ? scanImages(concept.instanceDataDir, concept.recursive).length
      : 0;
    wanted = classImagesWanted(concept, instances);
  }
  if (!Number.isInteger(wanted) || wanted < 0)
    throw new Error(`class image count must be an integer >= 0, got ${wanted}`);
  const batch = o.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`batch must be an integer >= 1, got ${batch}`);

  mkdirSync(dir, { recursive: true });
  const checked = await checkImages(scanImages(dir, concept.recursive));
  const existing = checked.images.length;
  const result: EnsureClassImagesResult = { dir, existing, generated: [], wanted, warnings: checked.warnings };
  const missing = wanted - existing;
  if (missing <= 0) return result;

  const prompt = classGenerationPrompt(concept);
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
  result.seed = seed;
  while (result.generated.length < missing) {
    const n = Math.min(batch, missing - result.generated.length);
    const batchSeed = seed + existing + result.generated.length;
    const r = txt2img(model, {
      prompt,
      negative: o.negative ?? concept.classNegativePrompt ?? "",
      sampler: o.sampler,
      steps: o.steps ?? concept.classInferSteps ?? 40,
      cfg: o.cfg ?? concept.classGuidanceScale ?? 7.5,
      seed: batchSeed,
      width: o.width,
      height: o.height,
      batch: n,
      clipSkip: o.clipSkip,
    });
    try {
      const s = r.settings;
      const text = a1111Parameters({
        prompt: s.prompt,
        negative: s.negative,
        steps: s.steps,
        sampler: A1111_SAMPLER_NAMES[s.sampler] ?? s.sampler,
        cfg: s.cfg,
        seed: s.seed,
        width: s.width,
        height: s.height,
        model: model.name,
        clipSkip: s.clipSkip,
        extra: n > 1 ? { "Batch size": n } : {},
      });
      for (const img of toRgbBytes(r.images)) {
        const captionExt = concept.captionExtension ?? ".txt";
        const path = freeName(dir, createHash("sha1").update(img.data).digest("hex"), captionExt);
        writeTextAtomic(captionPath(path, captionExt), prompt);
        const png = encodePng({ ...img, channels: 3 }, { parameters: text });
        writeFileAtomic(path, (fd) => writeAll(fd, png));
        result.generated.push(path);
        o.onProgress?.(result.generated.length, missing, path);
      }
    } finally {
      r.latents.dispose();
      r.images.dispose();
    }
  }
  return result;
}
