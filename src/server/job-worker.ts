// The worker process of the studio's non-training jobs (training runs in the
// trainer's own child, src/train/remote-child.ts): one job per process, so a
// crash or an out-of-memory kill ends the job, never the server. The parent
// (runner.ts) sends one "run" message; the worker answers with "progress"
// messages, then "result" or "error", and exits. It only calls the library.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import {
  createModel,
  disposeStableDiffusion,
  disposeUpscaler,
  EmbeddingDatabase,
  type GenerateRgbOptions,
  generateRgb,
  generateTwoStage,
  loadStableDiffusion,
  loadUpscaler,
  mergeCheckpoints,
  mergeLorasIntoCheckpoint,
  type SAMPLER_NAMES,
  saveImages,
  saveUpscaled,
} from "../index.js";
import { type ClassImagesJob, classImages, type EvalJob, evaluation } from "./job-worker-extra.js";

export interface CreateModelJob {
  kind: "create-model";
  name: string;
  /** The source checkpoint, absolute (checked by the server). */
  from: string;
  /** Where working models live (WORKSPACE/models/atelier). */
  modelsDir: string;
  scheduler: (typeof SAMPLER_NAMES)[number];
  overwrite: boolean;
}

export interface GenerateJob {
  kind: "generate";
  /** The weights to load, absolute. */
  model: string;
  modelName: string;
  loraDir: string;
  /** The workspace's embeddings/ (textual inversion words the prompts may name). */
  embeddingsDir: string;
  /** The workspace's models/hypernetworks (for <hypernet:NAME:m>). */
  hypernetworkDir: string;
  /** The PNG to write, absolute (out-0.png, out-1.png, … for a batch). */
  out: string;
  prompt: string;
  negative: string;
  sampler: string;
  steps: number;
  cfg: number;
  seed: number;
  width: number;
  height: number;
  batch: number;
  /** A second stage: ×4 through this upscaler folder (absolute). */
  upscaler?: { path: string; noiseLevel?: number; steps?: number };
}

/** LoRA files baked into a checkpoint (src/tools/merge-lora.ts); paths absolute. */
export interface MergeLoraJob {
  kind: "merge-lora";
  checkpoint: string;
  loras: { path: string; weight: number }[];
  out: string;
}

/** A1111's checkpoint merger (src/tools/checkpoint-merger.ts); paths absolute. */
export interface MergeCheckpointsJob {
  kind: "merge-checkpoints";
  a: string;
  b?: string;
  c?: string;
  mode: "weighted_sum" | "add_difference" | "none";
  multiplier: number;
  out: string;
}

export type WorkerJob = CreateModelJob | GenerateJob | MergeLoraJob | MergeCheckpointsJob | ClassImagesJob | EvalJob;

export type FromWorker =
  | { type: "progress"; step: number; total: number }
  | { type: "result"; result: Record<string, unknown> }
  | { type: "error"; message: string };

async function run(job: WorkerJob): Promise<Record<string, unknown>> {
  const progress = (step: number, total: number) => send({ type: "progress", step, total });
  if (job.kind === "class-images") return classImages(job, progress);
  if (job.kind === "eval") return evaluation(job, progress);
  if (job.kind === "create-model") {
    const m = createModel(job.name, {
      from: job.from,
      workspace: job.modelsDir,
      scheduler: job.scheduler,
      overwrite: job.overwrite,
    });
    return { name: m.name, scheduler: m.meta.scheduler, notes: m.meta.architecture.notes };
  }
  if (job.kind === "merge-lora") {
    send({ type: "progress", step: 0, total: 1 });
    const r = mergeLorasIntoCheckpoint(job.checkpoint, job.loras, job.out);
    send({ type: "progress", step: 1, total: 1 });
    return { output: job.out, merged: r.merged, weights_changed: r.weightsChanged, skipped: r.skipped };
  }
  if (job.kind === "merge-checkpoints") {
    send({ type: "progress", step: 0, total: 1 });
    const r = mergeCheckpoints(job.a, job.out, { mode: job.mode, b: job.b, c: job.c, multiplier: job.multiplier });
    send({ type: "progress", step: 1, total: 1 });
    return { output: job.out, merged: r.merged, copied: r.copied };
  }
  const model = loadStableDiffusion(job.model);
  const embeddings = new EmbeddingDatabase(model.tokenizer, model.textEncoder.config.hiddenSize);
  try {
    // files that do not fit this model are left out (A1111 skips them too) and said in the result
    const { refused } = embeddings.loadDir(job.embeddingsDir);
    const options: GenerateRgbOptions = {
      prompt: job.prompt,
      negative: job.negative,
      sampler: job.sampler,
      steps: job.steps,
      cfg: job.cfg,
      seed: job.seed,
      width: job.width,
      height: job.height,
      batch: job.batch,
      loraDirs: [job.loraDir],
      hypernetworkDirs: [job.hypernetworkDir],
      embeddings,
      onStep: (step, total) => send({ type: "progress", step, total }),
    };
    const embeddingsRefused = refused.map((r) => r.reason);
    mkdirSync(dirname(job.out), { recursive: true });
    if (job.upscaler) {
      const upscaler = loadUpscaler(job.upscaler.path);
      try {
        const { noiseLevel, steps } = job.upscaler;
        const r = generateTwoStage(model, upscaler, { ...options, upscale: { noiseLevel, steps } });
        const lowRes = saveImages(
          { images: r.lowRes, settings: r.settings },
          job.out.replace(/\.png$/, "-base.png"),
          job.modelName,
        );
        const images = saveUpscaled({ images: r.images, settings: r.upscaleSettings }, job.out, upscaler.name);
        return { images, low_res: lowRes, seed: r.settings.seed, embeddings_refused: embeddingsRefused };
      } finally {
        disposeUpscaler(upscaler);
      }
    }
    const result = generateRgb(model, options);
    const images = saveImages(result, job.out, job.modelName);
    return { images, seed: result.settings.seed, embeddings_refused: embeddingsRefused };
  } finally {
    embeddings.dispose();
    disposeStableDiffusion(model);
  }
}

function send(m: FromWorker, done?: () => void): void {
  if (process.connected) process.send!(m, undefined, undefined, () => done?.());
  else done?.();
}

if (!process.send) {
  console.error("atelier: job-worker.js runs only as the studio's child (it needs an IPC channel)");
  process.exit(2);
}
process.on("disconnect", () => process.exit(0));
process.once("message", (m: { type: "run"; job: WorkerJob }) => {
  run(m.job).then(
    (result) => send({ type: "result", result }, () => process.exit(0)),
    (e) => send({ type: "error", message: e instanceof Error ? e.message : String(e) }, () => process.exit(1)),
  );
});
