// `atelier lab`: the fine-tuning claims practitioners make, measured on the
// shapes world with `atelier eval`'s metrics. Each claim compares runs that
// differ in one setting (docs/lab.md has the table and how to reproduce it):
//  1. prior preservation reduces drift of the class: Dreambooth with (rendered
//     class pictures, or the base's own samples as in the paper) and without;
//  2. class images that are not clean pull background into the subject: prior
//     with clean vs degraded (noise + colour cast) class pictures;
//  3. LoRA overfits less but varies less: LoRA vs Dreambooth, both without prior;
//  4. two subjects trained together bleed into each other; defining them as one
//     concept, or cleaner captions (backgrounds named), changes that;
//  5, 6. Textual Inversion, hypernetworks and pivotal tuning (lab-embeddings.ts);
//  7. LyCORIS: loss ranking, LoHa greyness, LoCon edges (lab-lycoris.ts).
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { type EvalOptions, evaluateModel } from "../eval/evaluate.js";
import { type ImageStats, meanImageStats } from "../eval/image-stats.js";
import { evalPrompts, type PromptSamples, type Scores, scoreRuns } from "../eval/score.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { shapesBasePath } from "../shapes/base-path.js";
import { addNoise, colourCast } from "../shapes/degrade.js";
import { WorldRng } from "../shapes/rng.js";
import {
  COLOURS,
  caption,
  DEFAULT_SUBJECT,
  generateWorld,
  type Image,
  type Scene,
  type SubjectDefinition,
  writeSceneFolder,
} from "../shapes/world.js";
import { checkBase } from "./demo.js";
import {
  type ExperimentResult,
  type ExperimentSpec,
  evalSubjectOf,
  runExperiment,
  type SubjectData,
  sampleExperiment,
  writeSubject,
} from "./experiment.js";
import { EMBEDDING_RUNS, embeddingSpecs } from "./lab-embeddings.js";
import { LYCORIS_RUNS, lycorisSpecs } from "./lab-lycoris.js";

/** The lab's second subject: a blue star with a yellow dot, of the same class as the first. */
export const SECOND_SUBJECT: SubjectDefinition = {
  shape: "star",
  colour: "blue",
  pattern: "dotted",
  patternColour: "yellow",
  backgrounds: ["red", "orange", "green"],
};

export interface LabOptions {
  out: string;
  base?: string;
  quick?: boolean;
  steps?: number;
  samples?: number;
  /** Only these runs (names from labSpecs). */
  only?: string[];
  /** Also save every run's file at these steps and evaluate each (rows RUN@STEP), same prompts and seeds. */
  checkpoints?: number[];
  log?: (line: string) => void;
}

export interface LabRow {
  name: string;
  label: string;
  claim: number;
  seconds: number;
  scores: Scores;
  /** Normalised entropy of the backgrounds of "a TOKEN star" samples (variety of the subject's pictures). */
  subject_variety: number;
  /** Share of the identity samples whose background is one the subject's pictures had. */
  seen_background: number;
  /** Training loss: last step, and mean of the last tenth of the steps (null for the base). */
  final_loss: number | null;
  tail_loss: number | null;
  /** Saturation, contrast and edge sharpness of all samples (src/eval/image-stats.ts). */
  pictures: ImageStats;
}

/** Class pictures of stars rendered from the world (clean), or degraded with noise and a colour cast. */
function writeClassPictures(dir: string, n: number, dirty: boolean): void {
  const stars = generateWorld(99, n * 6)
    .filter((s) => s.shape === "star")
    .slice(0, n);
  const caption = { dropColour: true, dropBackground: true };
  if (!dirty) {
    writeSceneFolder(dir, stars, { caption }, { kind: "class, clean" });
    return;
  }
  const transform = (img: Image, i: number): Image => {
    const rng = new WorldRng(99, i, 3);
    return colourCast(addNoise(img, 40, rng), 60, rng);
  };
  writeSceneFolder(dir, stars, { caption, transform }, { kind: "class, noise σ40 and a ±60 colour cast" });
}

/** One folder holding both subjects' pictures, captioned with their own tokens (optionally naming backgrounds). */
function writeJointFolder(dir: string, subjects: SubjectData[], withBackground: boolean): void {
  const scenes = subjects.flatMap((s) => s.scenes);
  const tokens = subjects.flatMap((s) => s.scenes.map(() => s.token));
  const captionOf = (scene: Scene, i: number): string =>
    caption(scene, { token: tokens[i], dropBackground: !withBackground });
  writeSceneFolder(dir, scenes, { captionOf }, { kind: "subjects", tokens });
}

/** The lab's runs, in the order they run (`--only` takes a comma-separated list of these). */
export const LAB_RUNS = [
  "db-prior",
  "db-prior-generated",
  "db-no-prior",
  "db-prior-dirty",
  "lora",
  "two-concepts",
  "one-concept",
  "one-concept-captioned",
  ...EMBEDDING_RUNS,
  ...LYCORIS_RUNS,
] as const;

export function labSpecs(out: string, steps: number): (ExperimentSpec & { claim: number })[] {
  const data = join(out, "data");
  const sks = writeSubject(join(data, "sks"), "sks", DEFAULT_SUBJECT, 8, 7);
  const zwx = writeSubject(join(data, "zwx"), "zwx", SECOND_SUBJECT, 8, 8);
  writeClassPictures(join(data, "class-clean"), 64, false);
  writeClassPictures(join(data, "class-dirty"), 64, true);
  writeJointFolder(join(data, "joint"), [sks, zwx], false);
  writeJointFolder(join(data, "joint-captioned"), [sks, zwx], true);
  const clean = () => join(data, "class-clean");
  const db = { method: "dreambooth" as const, steps, batch: 4, learningRate: 2e-4, trainTextEncoder: true, seed: 1 };
  return [
    {
      ...db,
      claim: 1,
      name: "db-prior",
      label: "Dreambooth + prior (clean class pictures)",
      subjects: [sks],
      classImages: 64,
      classDir: clean,
    },
    {
      ...db,
      claim: 1,
      name: "db-prior-generated",
      label: "Dreambooth + prior (class pictures generated by the base)",
      subjects: [sks],
      classImages: 64,
      // Empty at first: the trainer fills it with the base's own "a star" samples, as the Dreambooth paper does.
      classDir: () => join(data, "class-generated"),
    },
    { ...db, claim: 1, name: "db-no-prior", label: "Dreambooth, no prior", subjects: [sks], classImages: 0 },
    {
      ...db,
      claim: 2,
      name: "db-prior-dirty",
      label: "Dreambooth + prior (noisy, colour-cast class pictures)",
      subjects: [sks],
      classImages: 64,
      classDir: () => join(data, "class-dirty"),
    },
    {
      ...db,
      claim: 3,
      name: "lora",
      label: "LoRA rank 8 with convolutions (LoCon), no prior",
      method: "lora",
      learningRate: 3e-3,
      rank: 8,
      convRank: 8,
      subjects: [sks],
      classImages: 0,
    },
    {
      ...db,
      claim: 4,
      name: "two-concepts",
      label: "sks + zwx as two concepts, + prior",
      subjects: [sks, zwx],
      classImages: 64,
      classDir: clean,
    },
    {
      ...db,
      claim: 4,
      name: "one-concept",
      label: "sks + zwx as one concept, + prior",
      subjects: [sks, zwx],
      classImages: 64,
      classDir: clean,
      oneConcept: join(data, "joint"),
    },
    {
      ...db,
      claim: 4,
      name: "one-concept-captioned",
      label: "sks + zwx as one concept, backgrounds captioned, + prior",
      subjects: [sks, zwx],
      classImages: 64,
      classDir: clean,
      oneConcept: join(data, "joint-captioned"),
    },
    ...embeddingSpecs(data, sks, zwx, db),
    ...lycorisSpecs(sks, steps),
  ];
}

function entropy(values: readonly string[], k: number): number {
  if (values.length === 0) return 0;
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let h = 0;
  for (const c of counts.values()) h -= (c / values.length) * Math.log(c / values.length);
  return h / Math.log(k);
}

function varietyOf(runs: readonly PromptSamples[], subjects: SubjectData[]): { variety: number; seen: number } {
  const ids = runs.filter((r) => r.prompt.kind === "identity");
  const bgs = ids.flatMap((r) => r.samples.map((s) => s.background ?? "none"));
  const seenSets = new Map(subjects.map((s) => [s.token, new Set(s.scenes.map((x) => x.background))]));
  const seen = ids.flatMap((r) =>
    r.samples.map((s) => (s.background && seenSets.get(r.prompt.subject!)?.has(s.background) ? 1 : 0)),
  );
  return {
    variety: entropy(bgs, COLOURS.length),
    seen: seen.length ? seen.reduce<number>((a, b) => a + b, 0) / seen.length : 0,
  };
}

export async function runLab(o: LabOptions): Promise<{ rows: LabRow[]; table: string; json: string }> {
  const log = o.log ?? (() => {});
  const out = resolve(o.out);
  const basePath = checkBase(o.base ?? shapesBasePath());
  const steps = o.steps ?? (o.quick ? 40 : 300);
  const samples = o.samples ?? (o.quick ? 4 : 24);
  const unknown = (o.only ?? []).filter((name) => !(LAB_RUNS as readonly string[]).includes(name));
  if (unknown.length > 0 || o.only?.length === 0) {
    throw new Error(`lab: --only: no run named '${unknown.join("', '")}'; the runs are ${LAB_RUNS.join(", ")}`);
  }
  const checkpoints = [...new Set(o.checkpoints ?? [])].sort((a, b) => a - b);
  const bad = checkpoints.find((c) => !Number.isInteger(c) || c < 1 || c > steps);
  if (bad !== undefined || o.checkpoints?.length === 0) {
    throw new Error(
      `lab: --checkpoints: step ${bad ?? "(none)"} is not a step of the ${steps}-step runs (1 to ${steps})`,
    );
  }
  mkdirSync(out, { recursive: true });
  const specs = labSpecs(out, steps)
    .filter((s) => !o.only || o.only.includes(s.name))
    .map((s) => (checkpoints.length > 0 ? { ...s, checkpoints } : s));
  const evalOptions: EvalOptions = { samples, seed: 1000, steps: 20, sampler: "ddim", cfg: 5 };
  const rows: LabRow[] = [];
  const base = loadStableDiffusion(basePath);
  const baseRuns = new Map<string, { runs: PromptSamples[]; subjects: SubjectData[]; pictures: ImageStats }>();
  try {
    for (const spec of specs) {
      log(`lab: ${spec.name} (${spec.label}), ${spec.steps} steps`);
      const result: ExperimentResult = await runExperiment(spec, { base: basePath, out, log, quiet: true });
      const subjects = spec.subjects.map(evalSubjectOf);
      const key = subjects.map((s) => s.token).join("+");
      if (!baseRuns.has(key)) {
        const runs = evaluateModel(base, subjects, evalOptions, "base");
        const pictures = meanImageStats(runs.flatMap((r) => r.images ?? []));
        baseRuns.set(key, { runs, subjects: spec.subjects, pictures });
        log(`  base-${key}: ${pictureLine({ pictures, final_loss: null, tail_loss: null })}`);
      }
      // The run's files to evaluate: each checkpoint (RUN@STEP), then the final one unless a checkpoint is it.
      const files: { step: number; name: string; artifact?: string; loraArtifact?: string }[] = [
        ...(result.checkpoints ?? []).map((c) => ({ ...c, name: `${spec.name}@${c.step}` })),
        ...(result.checkpoints?.some((c) => c.step === spec.steps) ? [] : [{ step: spec.steps, name: spec.name }]),
      ];
      for (const file of files) {
        const at: ExperimentResult = file.artifact
          ? { ...result, artifact: file.artifact, ...(file.loraArtifact ? { loraArtifact: file.loraArtifact } : {}) }
          : result;
        const runs = sampleExperiment(at, base, subjects, evalOptions);
        const { variety, seen } = varietyOf(runs, spec.subjects);
        const losses = result.losses.filter((r) => r.step <= file.step);
        const tail = losses.slice(-Math.max(1, Math.floor(losses.length / 10)));
        rows.push({
          final_loss: losses.at(-1)?.loss ?? null,
          tail_loss: tail.length ? tail.reduce((a, r) => a + r.loss, 0) / tail.length : null,
          pictures: meanImageStats(runs.flatMap((r) => r.images ?? [])),
          name: file.name,
          label: spec.label,
          claim: spec.claim,
          seconds: Math.round(result.seconds),
          scores: scoreRuns(subjects, runs, baseRuns.get(key)!.runs),
          subject_variety: variety,
          seen_background: seen,
        });
        log(`  ${file.name}: ${formatRow(rows.at(-1)!)}`);
      }
    }
    for (const [key, { runs, subjects, pictures }] of baseRuns) {
      const { variety, seen } = varietyOf(runs, subjects);
      const scores = scoreRuns(subjects.map(evalSubjectOf), runs, runs);
      const label = "the base model, same prompts and seeds";
      rows.unshift({
        final_loss: null,
        tail_loss: null,
        pictures,
        name: `base-${key}`,
        label,
        claim: 0,
        seconds: 0,
        scores,
        subject_variety: variety,
        seen_background: seen,
      });
    }
  } finally {
    disposeStableDiffusion(base);
  }
  const table = labTable(rows, {
    steps,
    samples,
    prompts: evalPrompts([evalSubjectOf({ token: "sks", definition: DEFAULT_SUBJECT, dir: "", scenes: [] })]).length,
  });
  const json = JSON.stringify({ version: 1, base: basePath, steps, eval: evalOptions, rows }, null, 2);
  writeTextAtomic(join(out, "lab.json"), `${json}\n`);
  writeTextAtomic(join(out, "lab.md"), table);
  return { rows, table, json };
}

const f2 = (x: number | null): string => (x === null ? "–" : x.toFixed(2));

function formatRow(r: LabRow): string {
  const s = r.scores;
  return `identity ${f2(s.identity)}, class preservation ${f2(s.class_preservation)}, prompt following ${f2(s.prompt_following)}, bleed ${f2(s.bleed)}, variety ${f2(r.subject_variety)}, ${pictureLine(r)}`;
}

const f4 = (x: number | null): string => (x === null ? "–" : x.toFixed(4));

function pictureLine(r: Pick<LabRow, "pictures" | "final_loss" | "tail_loss">): string {
  const p = r.pictures;
  return `loss ${f4(r.final_loss)} (tail mean ${f4(r.tail_loss)}), saturation ${f4(p.saturation)}, contrast ${f4(p.contrast)}, edge ${f4(p.edge)}, laplacian var ${f4(p.laplacian_var)}`;
}

export function labTable(rows: readonly LabRow[], o: { steps: number; samples: number; prompts: number }): string {
  const head =
    "| claim | run | identity | class preservation | subject-like class samples | prompt following | bleed | subject variety | on seen backgrounds | train s |";
  const lines = rows.map((r) => {
    const s = r.scores;
    const subjectLike = s.class_preservation_details?.subject_like ?? null;
    return `| ${r.claim || "–"} | ${r.label} (${r.name}) | ${f2(s.identity)} | ${f2(s.class_preservation)} | ${f2(subjectLike)} | ${f2(s.prompt_following)} | ${f2(s.bleed)} | ${f2(r.subject_variety)} | ${f2(r.seen_background)} | ${r.seconds} |`;
  });
  return [
    `Runs of ${o.steps} steps; ${o.samples} samples per prompt, seeds from 1000, DDIM 20, CFG 5.`,
    "",
    head,
    `|${"---|".repeat(10)}`,
    ...lines,
    "",
    "| run | final loss | loss, last tenth mean | saturation | contrast (RMS luma) | edge (mean Sobel) | Laplacian variance |",
    `|${"---|".repeat(7)}`,
    ...rows.map(
      (r) =>
        `| ${r.name} | ${f4(r.final_loss)} | ${f4(r.tail_loss)} | ${f4(r.pictures.saturation)} | ${f4(r.pictures.contrast)} | ${f4(r.pictures.edge)} | ${f4(r.pictures.laplacian_var)} |`,
    ),
    "",
  ].join("\n");
}
