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
import { encodePng } from "../../formats/png.js";
import { generateRgb } from "../../infer/generate-rgb.js";
import { parametersText } from "../../infer/save-images.js";
import type { StableDiffusion } from "../../infer/txt2img.js";
import { notAnUpscaler } from "../../models/upscaler/index.js";
import type { ConceptConfig } from "../config-core.js";
import { applyTemplate, captionPath } from "./captions.js";
import { checkImages, classImagesWanted, scanImages } from "./concepts.js";

/**
 * How class images are generated besides what the concept says (its
 * num_class_images, class_infer_steps, class_guidance_scale and
 * class_batch_size: images per txt2img call).
 */
export interface EnsureClassImagesOptions {
  sampler?: string;
  /** First seed; batch i uses seed + (images in the folder before it). Default random. */
  seed?: number;
  /** Negative prompt (default none). */
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
  const prompt = applyTemplate(concept.class_prompt ?? "", "");
  if (prompt === "") {
    throw new Error(`${concept.class_data_dir}: a class prompt is needed to generate class images`);
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
  if (!concept.class_data_dir)
    throw new Error(`concept ${concept.instance_data_dir}: no class folder (class_data_dir) is set`);
  const dir = resolve(concept.class_data_dir);
  const wanted = classImagesWanted(concept);
  if (!Number.isInteger(wanted) || wanted < 0)
    throw new Error(`num_class_images must be an integer >= 0, got ${wanted}`);
  const batch = concept.class_batch_size;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`class_batch_size must be an integer >= 1, got ${batch}`);

  if (notAnUpscaler(model) === null) {
    // An upscaler makes no pictures from text: stage-2 class pairs come from class pictures already there.
    const have = existsSync(dir) ? (await checkImages(scanImages(dir))).images.length : 0;
    if (have < wanted)
      throw new Error(
        `concept ${concept.instance_data_dir}: ${wanted} class pictures wanted, ${have} in ${dir}; a ×4 upscaler cannot generate them — put the class pictures there (or lower num_class_images)`,
      );
  }
  mkdirSync(dir, { recursive: true });
  const checked = await checkImages(scanImages(dir));
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
    const { images, settings: s } = generateRgb(model, {
      prompt,
      negative: o.negative ?? "",
      sampler: o.sampler,
      steps: concept.class_infer_steps,
      cfg: concept.class_guidance_scale,
      seed: batchSeed,
      width: o.width,
      height: o.height,
      batch: n,
      clipSkip: o.clipSkip,
    });
    const text = parametersText(s, model.name);
    for (const img of images) {
      const captionExt = concept.caption_extension;
      const path = freeName(dir, createHash("sha1").update(img.data).digest("hex"), captionExt);
      writeTextAtomic(captionPath(path, captionExt), prompt);
      const png = encodePng(img, { parameters: text });
      writeFileAtomic(path, (fd) => writeAll(fd, png));
      result.generated.push(path);
      o.onProgress?.(result.generated.length, missing, path);
    }
  }
  return result;
}
