// `atelier eval`'s engine: sample the evaluation prompts from the base model
// and from the evaluated one (a model, or the base with a LoRA attached) with
// the very same seeds, read every sample with the shapes analyser, and score
// both (score.ts) into one report. Samples come as 8-bit pixels
// (src/infer/generate-rgb.ts), so no tensor outlives a batch.
import type { EmbeddingLookup } from "../adapters/embeddings.js";
import { loadLora } from "../adapters/network.js";
import { generateRgb } from "../infer/generate-rgb.js";
import { latentScale } from "../infer/txt2img.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { type Analysis, analyse, type PixelImage } from "../shapes/analyser.js";
import type { Colour, Shape } from "../shapes/world.js";
import { type Sample, showsSubject } from "./metrics.js";
import { type EvalPrompt, evalPrompts, type PromptKind, type PromptSamples, type Scores, scoreRuns } from "./score.js";
import { checkSubjects, type EvalSubject, type Signature } from "./subject.js";

export interface EvalOptions {
  /** Samples per prompt (default 16). */
  samples?: number;
  /** Seed of the first sample (default 1000); see evaluateModel for the rest. */
  seed?: number;
  steps?: number;
  sampler?: string;
  cfg?: number;
  /** Samples generated at once (default min(samples, 8)); the noise depends on it. */
  batch?: number;
  /** Image size (default the model's own, 64 for the shapes base). */
  width?: number;
  height?: number;
  /** Textual-inversion embeddings the prompts' words may name (a trained embedding's word). */
  embeddings?: EmbeddingLookup;
  /** Called after each batch: batches done, batches in all, which model and prompt. */
  onProgress?: (done: number, total: number, what: string) => void;
}

export type EvalSettings = Required<Omit<EvalOptions, "onProgress" | "embeddings">>;

/** The options with defaults filled in and checked (sizes default to `model`'s). */
export function resolveEvalOptions(model: StableDiffusion, o: EvalOptions = {}): EvalSettings {
  const samples = o.samples ?? 16;
  const scale = latentScale(model.vae);
  const size = model.unet.config.sampleSize * scale;
  const s: EvalSettings = {
    samples,
    seed: o.seed ?? 1000,
    steps: o.steps ?? 20,
    sampler: o.sampler ?? "ddim",
    cfg: o.cfg ?? 5,
    batch: o.batch ?? Math.min(samples, 8),
    width: o.width ?? size,
    height: o.height ?? size,
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new Error(`eval: ${what}`);
  };
  check(Number.isInteger(s.samples) && s.samples >= 1, `samples must be a positive integer, got ${s.samples}`);
  check(Number.isSafeInteger(s.seed) && s.seed >= 0, `seed must be a non-negative integer, got ${s.seed}`);
  check(Number.isInteger(s.steps) && s.steps >= 1 && s.steps <= 1000, `steps must be in 1..1000, got ${s.steps}`);
  check(
    (SAMPLER_NAMES as readonly string[]).includes(s.sampler),
    `unknown sampler '${s.sampler}'; valid: ${SAMPLER_NAMES.join(", ")}`,
  );
  check(Number.isFinite(s.cfg) && s.cfg >= 0, `cfg must be a number >= 0, got ${s.cfg}`);
  check(Number.isInteger(s.batch) && s.batch >= 1 && s.batch <= 64, `batch must be in 1..64, got ${s.batch}`);
  check(Math.min(s.width, s.height) >= 8, `images of ${s.width}x${s.height} are too small to analyse (8 px at least)`);
  check(s.width % scale === 0 && s.height % scale === 0, `width and height must be multiples of ${scale}`);
  return s;
}

/**
 * Samples every evaluation prompt of `subjects`, `samples` per prompt, and
 * analyses them. Samples come in batches: the batch starting at sample k uses
 * seed `seed + k` (with batch 1, sample i is `atelier generate --seed seed+i`);
 * every prompt gets the same seeds, and so does every model given the same
 * settings. Class prompts keep their pixels (for the paired pixel distance).
 */
export function evaluateModel(
  model: StableDiffusion,
  subjects: readonly EvalSubject[],
  o: EvalOptions = {},
  label = model.name,
): PromptSamples[] {
  const s = resolveEvalOptions(model, o);
  const prompts = evalPrompts(subjects);
  const perPrompt = Math.ceil(s.samples / s.batch);
  let done = 0;
  return prompts.map((prompt) => {
    const samples: Analysis[] = [];
    const images: PixelImage[] = [];
    for (let start = 0; start < s.samples; start += s.batch) {
      const { images: rgb } = generateRgb(model, {
        prompt: prompt.text,
        seed: s.seed + start,
        batch: Math.min(s.batch, s.samples - start),
        steps: s.steps,
        cfg: s.cfg,
        sampler: s.sampler,
        width: s.width,
        height: s.height,
        ...(o.embeddings ? { embeddings: o.embeddings } : {}),
      });
      for (const img of rgb) {
        samples.push(analyse(img));
        images.push(img);
      }
      o.onProgress?.(++done, perPrompt * prompts.length, `${label}: ${prompt.text}`);
    }
    // Images of every prompt: class ones for pixel distances, all for the lab's picture statistics.
    return { prompt, samples, images };
  });
}

export interface EvaluateInput {
  /** The model to evaluate; may be `base` itself (with `lora`: the base plus that LoRA). */
  model: StableDiffusion;
  base: StableDiffusion;
  subjects: readonly EvalSubject[];
  /** A LoRA file attached to `model` (bypass mode) for its samples, and removed afterwards. */
  lora?: { path: string; scale?: number };
  options?: EvalOptions;
  /** How the report names the models (default their names). */
  names?: { model?: string; base?: string };
}

/** One sample as the report lists it. */
export interface SampleReading {
  shape: Shape | null;
  colour: Colour | null;
  background: Colour | null;
  dot: Colour | null;
}

export interface PromptSummary {
  /** Share showing the prompt's subject (null for class prompts). */
  subject: number | null;
  /** Share on the requested background (following prompts only). */
  background: number | null;
  samples: SampleReading[];
}

export interface EvalReport {
  version: 1;
  settings: EvalSettings & {
    model: string;
    base: string;
    lora: { path: string; scale: number } | null;
    /** The evaluated model is the base itself (no LoRA): the two columns are the same samples. */
    same_model: boolean;
    prompts: number;
  };
  subjects: { token: string; class: Shape; signature: Signature; seen_backgrounds: Colour[] | null }[];
  evaluated: Scores;
  base: Scores;
  per_prompt: {
    kind: PromptKind;
    prompt: string;
    subject: string | null;
    class: Shape;
    background: Colour | null;
    base: PromptSummary;
    evaluated: PromptSummary;
  }[];
}

function summary(p: EvalPrompt, samples: readonly Sample[], subjects: readonly EvalSubject[]): PromptSummary {
  const subject = subjects.find((s) => s.token === p.subject);
  const share = (f: (s: Sample) => boolean) => samples.filter(f).length / Math.max(1, samples.length);
  return {
    subject: subject ? share((s) => showsSubject(s, subject.signature)) : null,
    background: p.background ? share((s) => s.background === p.background) : null,
    samples: samples.map((s) => ({ shape: s.shape, colour: s.colour, background: s.background, dot: s.dot })),
  };
}

/** Samples both models (base first) on the same prompts and seeds and scores them. */
export function evaluate(input: EvaluateInput): EvalReport {
  const { model, base, subjects, lora } = input;
  checkSubjects(subjects);
  const settings = resolveEvalOptions(base, input.options);
  const o: EvalOptions = { ...settings, onProgress: input.options?.onProgress };
  const sameModel = model === base && !lora;
  const names = { model: input.names?.model ?? model.name, base: input.names?.base ?? base.name };
  const baseRuns = evaluateModel(base, subjects, o, names.base);
  let runs: PromptSamples[];
  if (lora) {
    const network = loadLora(model, lora.path, { multiplier: lora.scale ?? 1 });
    try {
      runs = evaluateModel(model, subjects, o, `${names.model} + ${lora.path}`);
    } finally {
      network.remove();
    }
  } else {
    runs = sameModel ? baseRuns : evaluateModel(model, subjects, o, names.model);
  }
  return {
    version: 1,
    settings: {
      ...settings,
      model: names.model,
      base: names.base,
      lora: lora ? { path: lora.path, scale: lora.scale ?? 1 } : null,
      same_model: sameModel,
      prompts: runs.length,
    },
    subjects: subjects.map((s) => ({
      token: s.token,
      class: s.className,
      signature: s.signature,
      seen_backgrounds: s.seenBackgrounds,
    })),
    evaluated: scoreRuns(subjects, runs, baseRuns),
    base: scoreRuns(subjects, baseRuns, baseRuns),
    per_prompt: runs.map((r, i) => ({
      kind: r.prompt.kind,
      prompt: r.prompt.text,
      subject: r.prompt.subject,
      class: r.prompt.className,
      background: r.prompt.background,
      base: summary(r.prompt, baseRuns[i].samples, subjects),
      evaluated: summary(r.prompt, r.samples, subjects),
    })),
  };
}

/** The report as JSON text, numbers rounded to 6 decimals (the shares are counts over at most thousands). */
export function reportJson(report: EvalReport): string {
  return `${JSON.stringify(report, (_k, v) => (typeof v === "number" ? Math.round(v * 1e6) / 1e6 : v), 2)}\n`;
}
