// The worker's class-image and evaluation jobs (job-worker.ts runs them): the
// class images Dreambooth's prior preservation uses, made by the library's
// own ensureClassImages (src/train/data/class-images.ts) into a new dataset
// folder; and `atelier eval`'s evaluate() (src/eval/evaluate.ts) against a
// base model, written as a report.html + eval.json (src/report/html.ts) under
// outputs/eval/NAME, which the Lab page lists. Only library calls here.
import { evalTable } from "../demo/demo.js";
import { evaluate } from "../eval/evaluate.js";
import { defaultSubject, parseSubjectSpec, resolveSubject } from "../eval/subject.js";
import { disposeStableDiffusion, loadStableDiffusion, type StableDiffusion } from "../models/stable-diffusion.js";
import { writeReport } from "../report/html.js";
import type { ConceptConfig } from "../train/config-core.js";
import { ensureClassImages } from "../train/data/class-images.js";

/** Class images into a new folder (absolute paths, checked by the server). */
export interface ClassImagesJob {
  kind: "class-images";
  model: string;
  dir: string;
  prompt: string;
  negative: string;
  count: number;
  steps: number;
  cfg: number;
  seed: number;
  sampler?: string;
  width?: number;
  height?: number;
}

/** An evaluation of `model` (with a LoRA, maybe) against `base`; paths absolute. */
export interface EvalJob {
  kind: "eval";
  name: string;
  model: string;
  modelName: string;
  base: string;
  baseName: string;
  lora?: { path: string; scale: number };
  /** TOKEN:CLASS[:COLOUR[:DOT]] (src/eval/subject.ts); default the built-in subject. */
  subject?: string;
  samples: number;
  steps: number;
  seed: number;
  /** The report's folder (outputs/eval/NAME). */
  out: string;
}

type Progress = (step: number, total: number) => void;

export async function classImages(job: ClassImagesJob, progress: Progress): Promise<Record<string, unknown>> {
  // a concept with only its class fields set: ensureClassImages reads nothing else of it
  const concept = {
    instance_data_dir: job.dir,
    instance_prompt: "",
    class_data_dir: job.dir,
    class_prompt: job.prompt,
    num_class_images: job.count,
    class_guidance_scale: job.cfg,
    class_infer_steps: job.steps,
    class_batch_size: 1,
    repeats: 1,
    caption_extension: ".txt",
    shuffle_tags: false,
    keep_tokens: 0,
  } as ConceptConfig;
  const model = loadStableDiffusion(job.model);
  try {
    progress(0, job.count);
    const r = await ensureClassImages(concept, model, {
      seed: job.seed,
      negative: job.negative,
      sampler: job.sampler,
      width: job.width,
      height: job.height,
      onProgress: (done, total) => progress(done, total),
    });
    return { output: r.dir, images: r.generated, seed: r.seed ?? job.seed };
  } finally {
    disposeStableDiffusion(model);
  }
}

export async function evaluation(job: EvalJob, progress: Progress): Promise<Record<string, unknown>> {
  const subjects = job.subject ? [resolveSubject(parseSubjectSpec(job.subject))] : [defaultSubject()];
  const base = loadStableDiffusion(job.base);
  let model: StableDiffusion = base;
  try {
    if (job.model !== job.base) model = loadStableDiffusion(job.model);
    const report = evaluate({
      model,
      base,
      subjects,
      lora: job.lora,
      options: { samples: job.samples, steps: job.steps, seed: job.seed, onProgress: (i, n) => progress(i, n) },
      names: { model: job.modelName, base: job.baseName },
    });
    const evaluated = job.lora ? `${job.modelName} + ${job.lora.path.split(/[\\/]/).pop()}` : job.modelName;
    const path = await writeReport(job.out, {
      title: `Evaluation ${job.name}`,
      subtitle: `${evaluated} against ${job.baseName}: ${job.samples} samples per prompt, ${job.steps} steps, seed ${job.seed}`,
      createdAt: new Date().toISOString(),
      runs: [],
      evalTable: evalTable({ [evaluated]: report.evaluated, [job.baseName]: report.base }),
      eval: report,
    });
    return { output: path, evaluated: report.evaluated, base: report.base };
  } finally {
    if (model !== base) disposeStableDiffusion(model);
    disposeStableDiffusion(base);
  }
}
