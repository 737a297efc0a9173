// One training experiment on the shapes-world base: a Dreambooth or LoRA run
// of Atelier's own trainer over one or more subjects (each a folder of
// rendered pictures), then its samples on `atelier eval`'s prompts and seeds.
// The demo runs two of these; the lab (lab.ts) runs many.
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { loadEmbeddingFile } from "../adapters/embedding-file.js";
import { EmbeddingDatabase } from "../adapters/embeddings.js";
import { applyHypernetworks, loadHypernetwork } from "../adapters/hypernetwork.js";
import { loadLora } from "../adapters/network.js";
import { type EvalOptions, evaluateModel } from "../eval/evaluate.js";
import type { PromptSamples } from "../eval/score.js";
import type { EvalSubject } from "../eval/subject.js";
import { disposeStableDiffusion, loadStableDiffusion, type StableDiffusion } from "../models/stable-diffusion.js";
import { caption, generateSubject, type Scene, type SubjectDefinition, writeSceneFolder } from "../shapes/world.js";
import { loadTrainConfig } from "../train/config.js";
import type { StepRecord } from "../train/progress.js";
import { train } from "../train/trainer.js";

/** A subject of an experiment: its identifier, what it looks like, and its pictures. */
export interface SubjectData {
  token: string;
  definition: SubjectDefinition;
  dir: string;
  scenes: Scene[];
}

/** Renders `n` pictures of a subject into `dir` (captioned "a TOKEN star"), once. */
export function writeSubject(
  dir: string,
  token: string,
  definition: SubjectDefinition,
  n: number,
  seed: number,
): SubjectData {
  const scenes = generateSubject(seed, n, {}, definition);
  if (!existsSync(join(dir, "scenes.json"))) {
    writeSceneFolder(dir, scenes, { caption: { token, dropBackground: true } }, { seed, token, kind: "subject" });
  }
  return { token, definition, dir, scenes };
}

export function evalSubjectOf(s: SubjectData): EvalSubject {
  const d = s.definition;
  return {
    token: s.token,
    className: d.shape,
    signature: { shape: d.shape, colour: d.colour, dot: d.pattern === "dotted" ? d.patternColour : null },
    seenBackgrounds: [...new Set(s.scenes.map((x) => x.background))],
  };
}

export interface ExperimentSpec {
  name: string;
  /** One line for tables: what this run changes. */
  label: string;
  /** pivotal = textual_inversion with a UNet LoRA (textual_inversion.lora_rank). */
  method: "dreambooth" | "lora" | "textual_inversion" | "hypernetwork" | "pivotal";
  subjects: SubjectData[];
  /** Class images per class (prior preservation), or 0 for none. */
  classImages: number;
  /** Where class images are (generated there by the trainer when missing); per class. */
  classDir?: (className: string) => string;
  steps: number;
  batch: number;
  learningRate: number;
  trainTextEncoder: boolean;
  rank?: number;
  /** LoRA of the 3×3 convolutions too (LoCon, kohya's conv_dim), at this rank; 0 or absent: none. */
  convRank?: number;
  /** LyCORIS algorithm of a LoRA run (lora.algo); absent: lora (LoCon when convRank > 0). */
  algo?: "lora" | "locon" | "loha" | "lokr" | "dora" | "ia3" | "full";
  seed: number;
  priorLossWeight?: number;
  /** Train the subjects as one concept (one folder of captioned pictures) instead of one concept each. */
  oneConcept?: string;
  /** Textual Inversion / pivotal: the new word (subjects[0].token), its init text and template lines. */
  embedding?: { initText: string; vectors: number; templates: string[] };
  /** Pivotal tuning: the LoRA's learning rate (learningRate is the embedding's). */
  loraLearningRate?: number;
  /** Also save the trained file at these steps (save.every_n_steps = their gcd), listed in the result's checkpoints. */
  checkpoints?: number[];
}

export type ExperimentKind = "checkpoint" | "lora" | "embedding" | "hypernetwork" | "pivotal";

export interface ExperimentResult {
  spec: ExperimentSpec;
  outputDir: string;
  artifact: string;
  /** Pivotal tuning: the LoRA file beside the embedding (artifact). */
  loraArtifact?: string;
  /** Textual Inversion of several subjects (one run each): every subject's word and embedding file. */
  embeddings?: { word: string; path: string }[];
  kind: ExperimentKind;
  /** The files saved at spec.checkpoints' steps (a step equal to spec.steps is the final file). */
  checkpoints?: { step: number; artifact: string; loraArtifact?: string }[];
  losses: StepRecord[];
  seconds: number;
  settings: Record<string, string | number | boolean>;
}

function classPromptOf(shape: string): string {
  return caption(
    { shape, colour: "red", background: "red", cx: 0, cy: 0, size: 1, rotation: 0, imageSize: 64 } as Scene,
    {
      dropColour: true,
      dropBackground: true,
    },
  );
}

/** Trains the experiment with the trainer (the same code path as `atelier train`). */
export async function runExperiment(
  spec: ExperimentSpec,
  o: { base: string; out: string; log?: (m: string) => void; quiet?: boolean },
): Promise<ExperimentResult> {
  const checkpoints = spec.checkpoints ?? [];
  const late = checkpoints.find((c) => !Number.isInteger(c) || c < 1 || c > spec.steps);
  if (late !== undefined) {
    throw new Error(`${spec.name}: checkpoint step ${late} is not a step of the run (1 to ${spec.steps})`);
  }
  if (spec.method === "textual_inversion" && spec.subjects.length > 1) {
    if (checkpoints.length > 0)
      throw new Error(`${spec.name}: checkpoints of a several-subject embedding run are not supported`);
    return runEmbeddings(spec, o);
  }
  const outputDir = join(o.out, "runs", spec.name);
  mkdirSync(outputDir, { recursive: true });
  const concepts = (spec.oneConcept ? [spec.subjects[0]] : spec.subjects).map((s) => {
    const classPrompt = classPromptOf(s.definition.shape);
    const prior = spec.classImages > 0 && spec.classDir;
    return {
      instance_data_dir: spec.oneConcept ?? s.dir,
      instance_prompt: "",
      ...(prior
        ? {
            class_data_dir: spec.classDir!(s.definition.shape),
            class_prompt: classPrompt,
            num_class_images: spec.classImages,
            class_guidance_scale: 5,
            class_infer_steps: 20,
            class_batch_size: 16,
          }
        : {}),
    };
  });
  const settings = {
    method: spec.method,
    steps: spec.steps,
    batch_size: spec.batch,
    learning_rate: spec.learningRate,
    train_text_encoder: spec.trainTextEncoder,
    prior_preservation: spec.classImages > 0,
    class_images: spec.classImages,
    ...(spec.method === "lora"
      ? { rank: spec.rank ?? 8, conv_rank: spec.convRank ?? 0, ...(spec.algo ? { algo: spec.algo } : {}) }
      : {}),
    ...(spec.method === "pivotal" ? { rank: spec.rank ?? 8, lora_lr: spec.loraLearningRate ?? 1e-4 } : {}),
    ...(spec.embedding ? { init_text: spec.embedding.initText, vectors: spec.embedding.vectors } : {}),
  };
  const ti = spec.method === "textual_inversion" || spec.method === "pivotal";
  if (ti && !spec.embedding) throw new Error(`${spec.name}: a ${spec.method} run needs its embedding settings`);
  const methodConfig = ti
    ? {
        textual_inversion: {
          token: spec.subjects[0].token,
          init_text: spec.embedding!.initText,
          vectors: spec.embedding!.vectors,
          templates: spec.embedding!.templates,
          ...(spec.method === "pivotal" ? { lora_rank: spec.rank ?? 8, lora_lr: spec.loraLearningRate ?? 1e-4 } : {}),
        },
      }
    : spec.method === "hypernetwork"
      ? { hypernetwork: { name: spec.name } }
      : spec.method === "lora"
        ? {
            lora: {
              rank: spec.rank ?? 8,
              conv_rank: spec.convRank ?? 0,
              text_encoder: spec.trainTextEncoder,
              ...(spec.algo ? { algo: spec.algo } : {}),
            },
          }
        : {};
  const format = ti
    ? "embedding_pt"
    : spec.method === "hypernetwork"
      ? "hypernetwork_pt"
      : spec.method === "lora"
        ? "lora"
        : "diffusers";
  const config = loadTrainConfig({
    model: o.base,
    method: ti ? "textual_inversion" : spec.method,
    output_dir: outputDir,
    resolution: 64,
    batch_size: spec.batch,
    max_steps: spec.steps,
    learning_rate: spec.learningRate,
    lr_scheduler: "constant_with_warmup",
    lr_warmup_steps: Math.min(20, Math.floor(spec.steps / 10)),
    seed: spec.seed,
    ...(ti || spec.method === "hypernetwork" ? {} : { train_text_encoder: spec.trainTextEncoder }),
    prior_loss_weight: spec.priorLossWeight ?? 1,
    max_grad_norm: 1,
    cache_latents: true,
    concepts,
    ...methodConfig,
    save: { formats: [format], state: false, every_n_steps: checkpoints.reduce(gcd, 0) },
  });
  const start = performance.now();
  const quietOut = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;
  const r = await train(config, { log: o.log, progressOut: o.quiet ? quietOut : undefined });
  const kind: ExperimentKind =
    spec.method === "lora"
      ? "lora"
      : spec.method === "dreambooth"
        ? "checkpoint"
        : spec.method === "textual_inversion"
          ? "embedding"
          : spec.method;
  const artifactKind = kind === "pivotal" ? "embedding" : kind;
  const artifact =
    (kind === "checkpoint" ? r.manifest.latest("diffusers") : undefined) ?? r.manifest.latest(artifactKind);
  if (!artifact) throw new Error(`${spec.name}: the run wrote no ${artifactKind}`);
  const lora = kind === "pivotal" ? r.manifest.latest("lora") : undefined;
  if (kind === "pivotal" && !lora) throw new Error(`${spec.name}: the pivotal run wrote no LoRA`);
  const atStep = (step: number, k: string) => r.manifest.artifacts.find((a) => a.step === step && a.kind === k);
  const saved = [...new Set(checkpoints)]
    .sort((a, b) => a - b)
    .map((step) => {
      const file = (kind === "checkpoint" ? atStep(step, "diffusers") : undefined) ?? atStep(step, artifactKind);
      const loraFile = kind === "pivotal" ? atStep(step, "lora") : undefined;
      if (!file || (kind === "pivotal" && !loraFile))
        throw new Error(`${spec.name}: the run saved no file at step ${step}`);
      return {
        step,
        artifact: join(outputDir, file.path),
        ...(loraFile ? { loraArtifact: join(outputDir, loraFile.path) } : {}),
      };
    });
  return {
    ...(saved.length > 0 ? { checkpoints: saved } : {}),
    spec,
    outputDir,
    artifact: join(outputDir, artifact.path),
    ...(lora ? { loraArtifact: join(outputDir, lora.path) } : {}),
    kind,
    losses: r.losses,
    seconds: (performance.now() - start) / 1000,
    settings,
  };
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** Textual Inversion of several subjects: one run per subject (its own word), the embeddings used together. */
async function runEmbeddings(spec: ExperimentSpec, o: Parameters<typeof runExperiment>[1]): Promise<ExperimentResult> {
  const parts: ExperimentResult[] = [];
  for (const s of spec.subjects)
    parts.push(await runExperiment({ ...spec, name: join(spec.name, s.token), subjects: [s] }, o));
  return {
    ...parts[0],
    spec,
    outputDir: join(o.out, "runs", spec.name),
    embeddings: parts.map((r) => ({ word: r.spec.subjects[0].token, path: r.artifact })),
    losses: parts.flatMap((r) => r.losses),
    seconds: parts.reduce((a, r) => a + r.seconds, 0),
  };
}

/**
 * Runs `f` with the experiment's model: its own (loaded once, freed after), or
 * the base with its LoRA or hypernetwork attached; for an embedding (and
 * pivotal tuning) `f` also gets the embedding's word to put in prompts.
 */
export function withExperimentModel<T>(
  result: ExperimentResult,
  base: StableDiffusion,
  f: (m: StableDiffusion, embeddings?: EmbeddingDatabase) => T,
): T {
  if (result.kind === "embedding" || result.kind === "pivotal") {
    const db = new EmbeddingDatabase(base.tokenizer, base.textEncoder.config.hiddenSize);
    const network = result.loraArtifact ? loadLora(base, result.loraArtifact, { multiplier: 1 }) : null;
    try {
      const files = result.embeddings ?? [{ word: result.spec.subjects[0].token, path: result.artifact }];
      for (const e of files) db.add({ ...loadEmbeddingFile(e.path), name: e.word });
      return f(base, db);
    } finally {
      network?.remove();
      db.dispose();
    }
  }
  if (result.kind === "hypernetwork") {
    const hn = loadHypernetwork(result.artifact);
    const applied = applyHypernetworks(base.unet, [hn]);
    try {
      return f(base);
    } finally {
      applied.remove();
      hn.dispose();
    }
  }
  if (result.kind === "lora") {
    const network = loadLora(base, result.artifact, { multiplier: 1 });
    try {
      return f(base);
    } finally {
      network.remove();
    }
  }
  const model = loadStableDiffusion(result.artifact);
  try {
    return f(model);
  } finally {
    disposeStableDiffusion(model);
  }
}

/** Samples the evaluation prompts with the experiment's result: its model, or the base plus its LoRA. */
export function sampleExperiment(
  result: ExperimentResult,
  base: StableDiffusion,
  subjects: readonly EvalSubject[],
  options: EvalOptions,
): PromptSamples[] {
  return withExperimentModel(result, base, (m, embeddings) =>
    evaluateModel(m, subjects, embeddings ? { ...options, embeddings } : options, result.spec.name),
  );
}
