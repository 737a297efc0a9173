// The stage-2 lab measurement: the Dreambooth subject's dot detail at 256²
// (src/shapes/detail.ts) for 64² pictures made 256² three ways — a bilinear
// ×4 resize (stage 1 alone), a ×4 upscaler (the shapes base upscaler, or a
// stage-2 fine-tune of it), and the native 256² render as the ceiling. Same
// scenes and seeds for every upscaler.
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { noGrad, scope, type Tensor, tensor } from "../engine/index.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { generateRgb } from "../infer/generate-rgb.js";
import { upscale } from "../infer/upscale.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { disposeUpscaler, loadUpscaler } from "../models/upscaler/index.js";
import { shapesBasePath, shapesUpscalerPath } from "../shapes/base-path.js";
import { readDotDetail } from "../shapes/detail.js";
import { UPSCALER_RECIPE } from "../shapes/upscaler/recipe.js";
import { caption, generateSubject, type Image, renderScene, type Scene, writeSceneFolder } from "../shapes/world.js";
import { loadTrainConfig } from "../train/config.js";
import type { StepRecord } from "../train/progress.js";
import { train } from "../train/trainer.js";
import { checkBase } from "./demo.js";
import { runExperiment, withExperimentModel } from "./experiment.js";
import { labSpecs } from "./lab.js";

/** Stage-2 steps of the lab row. */
export const STAGE2_LAB_STEPS = 100;

export interface DetailRow {
  name: string;
  /** Mean crispness over the scenes. */
  crispness: number;
}

/** Bilinear ×4 (half-pixel centres, as torch interpolate align_corners=False). */
export function resize4(img: Image): Image {
  const [w, h] = [img.width * 4, img.height * 4];
  const data = new Uint8Array(w * h * 3);
  const at = (x: number, y: number, c: number) =>
    img.data[(Math.min(img.height - 1, Math.max(0, y)) * img.width + Math.min(img.width - 1, Math.max(0, x))) * 3 + c];
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const sx = (x + 0.5) / 4 - 0.5;
      const sy = (y + 0.5) / 4 - 0.5;
      const [x0, y0] = [Math.floor(sx), Math.floor(sy)];
      const [fx, fy] = [sx - x0, sy - y0];
      for (let c = 0; c < 3; c++) {
        const top = at(x0, y0, c) * (1 - fx) + at(x0 + 1, y0, c) * fx;
        const bottom = at(x0, y0 + 1, c) * (1 - fx) + at(x0 + 1, y0 + 1, c) * fx;
        data[(y * w + x) * 3 + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  return { width: w, height: h, data };
}

/** Pixels of a 64² picture as [1, 3, 64, 64] in [0, 1]. */
function toInput(img: Image): Tensor {
  return tensor(new Uint8Array(img.data), { shape: [1, img.height, img.width, 3] })
    .permute(0, 3, 1, 2)
    .float()
    .div(255);
}

/** The ×4 upscales of 64² pictures by the upscaler at `path`, picture i with prompts[i] and seed `seed + i`. */
export function upscaleAll(
  path: string,
  pictures: readonly Image[],
  prompts: readonly string[],
  o: { steps: number; noiseLevel: number; seed: number },
): Image[] {
  const m = loadUpscaler(path);
  try {
    return pictures.map((low, i) =>
      noGrad(() =>
        scope(() => {
          const r = upscale(m, toInput(low), {
            prompt: prompts[i],
            steps: o.steps,
            cfg: 1,
            noiseLevel: o.noiseLevel,
            seed: o.seed + i,
          });
          const bytes = r.images.clamp(0, 1).mul(255).add(0.5).to("uint8").permute(0, 2, 3, 1).contiguous();
          const data = new Uint8Array(bytes.toTypedArray() as Uint8Array);
          r.latents.dispose();
          r.images.dispose();
          return { width: low.width * 4, height: low.height * 4, data };
        }),
      ),
    );
  } finally {
    disposeUpscaler(m);
  }
}

const mean = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

/** Mean readDotDetail crispness of 256² pictures. */
export function meanCrispness(pictures: readonly Image[]): number {
  return mean(pictures.map((img) => readDotDetail(img).crispness));
}

export interface DotDetailOptions {
  scenes?: number;
  seed?: number;
  steps?: number;
  noiseLevel?: number;
  /** The upscaler's prompt for a scene (default its caption, "a yellow star with a red dot on …"). */
  prompt?: (scene: Scene) => string;
}

/** The table on held-out subject renders: naive resize, each upscaler in `upscalers`, native 256². */
export function measureDotDetail(upscalers: { name: string; path: string }[], o: DotDetailOptions = {}): DetailRow[] {
  const seed = o.seed ?? 11;
  const scenes = generateSubject(seed, o.scenes ?? 4);
  const lows = scenes.map((s) => renderScene(s, { imageSize: 64 }));
  const prompts = scenes.map((s) => (o.prompt ? o.prompt(s) : caption(s)));
  const rows: DetailRow[] = [{ name: "stage 1 alone (bilinear ×4)", crispness: meanCrispness(lows.map(resize4)) }];
  for (const u of upscalers)
    rows.push({
      name: u.name,
      crispness: meanCrispness(
        upscaleAll(u.path, lows, prompts, { steps: o.steps ?? 20, noiseLevel: o.noiseLevel ?? 20, seed }),
      ),
    });
  rows.push({
    name: "native 256² render (ceiling)",
    crispness: meanCrispness(scenes.map((s) => renderScene(s, { imageSize: 256 }))),
  });
  return rows;
}

/** The Dreambooth subject's identifier in both stages (the lab's "sks"). */
export const STAGE2_TOKEN = "sks";
/** The stage-2 prompt: the identifier and class, as stage 1's captions ("a sks star"). */
export const STAGE2_PROMPT = caption(generateSubject(0, 1)[0], { token: STAGE2_TOKEN, dropBackground: true });

export interface Stage2Options {
  /** Where the pictures and the run go (OUT/data/sks-256, OUT/runs/NAME). */
  out: string;
  /** The upscaler to fine-tune (default the built-in shapes upscaler). */
  upscaler?: string;
  steps: number;
  name?: string;
  /** Subject pictures at 256² and their seed (default 8, seed 7: the lab's sks pictures, ×4). */
  pictures?: number;
  pictureSeed?: number;
  /**
   * Train on this side's window of each 256² picture around the subject's
   * centre (its dot) instead of the whole picture: the same scale, fewer
   * pixels (the networks are convolutional; the upscaler's build trains on
   * crops too; at 256² a step costs ~10× a 128² one here). Default 128.
   */
  crop?: number;
  batch?: number;
  learningRate?: number;
  /** One noise level for every pair, or null: drawn per pair in 0..max_noise_level. */
  noiseLevel?: number | null;
  seed?: number;
  log?: (line: string) => void;
}

/** Scene i's centre (x, y) in pixels of its 256² render. */
function subjectCentre(seed: number, n: number, i: number): [number, number] {
  const s = generateSubject(seed, n, { imageSize: 256 })[i];
  return [s.cx, s.cy];
}

/** The side² window of `img` centred on (x, y) as far as the picture allows. */
function window(img: Image, side: number, [cx, cy]: [number, number]): Image {
  const left = Math.max(0, Math.min(img.width - side, Math.round(cx - side / 2)));
  const top = Math.max(0, Math.min(img.height - side, Math.round(cy - side / 2)));
  const data = new Uint8Array(side * side * 3);
  for (let y = 0; y < side; y++)
    data.set(
      img.data.subarray(((top + y) * img.width + left) * 3, ((top + y) * img.width + left + side) * 3),
      y * side * 3,
    );
  return { width: side, height: side, data };
}

/**
 * Stage 2 of a two-stage Dreambooth with Atelier's trainer (the same path as
 * `atelier train --method dreambooth_upscaler`): the upscaler fully
 * fine-tuned on the subject's pictures rendered at 256², captioned with its
 * identifier. Returns the fine-tuned upscaler's folder.
 */
export async function trainStage2(o: Stage2Options): Promise<{ path: string; seconds: number; losses: StepRecord[] }> {
  const n = o.pictures ?? 8;
  const seed = o.pictureSeed ?? 7;
  const crop = o.crop ?? 128;
  if (!Number.isInteger(crop) || crop % 8 !== 0 || crop < 32 || crop > 256)
    throw new Error(`stage 2: crop ${crop} is not a multiple of 8 in 32..256`);
  const dir = join(o.out, "data", `sks-256-${seed}-${n}-${crop}`);
  if (!existsSync(join(dir, "scenes.json")))
    writeSceneFolder(
      dir,
      generateSubject(seed, n, { imageSize: 256 }),
      {
        caption: { token: STAGE2_TOKEN, dropBackground: true },
        transform: (img, i) => (crop === 256 ? img : window(img, crop, subjectCentre(seed, n, i))),
      },
      { seed, token: STAGE2_TOKEN, kind: `subject at 256², ${crop}² windows around the dot` },
    );
  const outputDir = join(o.out, "runs", o.name ?? "stage2");
  const config = loadTrainConfig({
    model: o.upscaler ?? shapesUpscalerPath(),
    method: "dreambooth_upscaler",
    output_dir: outputDir,
    resolution: crop,
    batch_size: o.batch ?? 4,
    max_steps: o.steps,
    learning_rate: o.learningRate ?? 1e-4,
    lr_scheduler: "constant_with_warmup",
    lr_warmup_steps: Math.min(10, Math.floor(o.steps / 10)),
    seed: o.seed ?? 1,
    max_grad_norm: 1,
    concepts: [{ instance_data_dir: dir, instance_prompt: "" }],
    upscaler: { noise_level: o.noiseLevel === undefined ? null : o.noiseLevel },
    save: { formats: ["diffusers"], state: false },
  });
  const start = performance.now();
  const quietOut = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;
  const r = await train(config, { log: o.log ?? (() => {}), progressOut: quietOut });
  const saved = r.manifest.latest("diffusers");
  if (!saved) throw new Error(`stage 2: the run in ${outputDir} wrote no upscaler folder`);
  return { path: join(outputDir, saved.path), seconds: (performance.now() - start) / 1000, losses: r.losses };
}

export interface UpscalerLabOptions {
  out: string;
  base?: string;
  upscaler?: string;
  /** Stage 1's run (a Dreambooth run of lab.ts, default db-prior-generated) and its steps (300). */
  stage1?: string;
  steps?: number;
  /** Stage 2's steps. */
  stage2Steps?: number;
  /** Stage-1 samples of "a sks star" (seeds from 1000, DDIM 20, CFG 5) and held-out subject renders. */
  samples?: number;
  scenes?: number;
  quick?: boolean;
  log?: (line: string) => void;
}

export interface UpscalerLabRow {
  /** What the 64² pictures are: stage-1 samples or renders of held-out subject scenes. */
  input: "stage-1 samples" | "64² renders";
  name: string;
  crispness: number;
  /** Pictures in which the reader finds a red dot at all (crispness > 0). */
  withDot: number;
  pictures: number;
}

/** The lab's Dreambooth's-second-stage table (docs/lab.md): both inputs × resize / base upscaler / stage-2 fine-tune. */
export async function runUpscalerLab(o: UpscalerLabOptions): Promise<{ rows: UpscalerLabRow[]; table: string }> {
  const log = o.log ?? (() => {});
  const out = resolve(o.out);
  const basePath = checkBase(o.base ?? shapesBasePath());
  const upscalerPath = o.upscaler ?? shapesUpscalerPath();
  const steps = o.steps ?? (o.quick ? 40 : 300);
  const stage2Steps = o.stage2Steps ?? (o.quick ? 10 : STAGE2_LAB_STEPS);
  const samples = o.samples ?? (o.quick ? 4 : 16);
  if (!existsSync(join(upscalerPath, "model_index.json")))
    throw new Error(`lab --stage2: no upscaler folder at ${upscalerPath} (atelier shapes build-upscaler)`);
  const stage1Name = o.stage1 ?? "db-prior-generated";
  const spec = labSpecs(out, steps).find((s) => s.name === stage1Name);
  if (spec?.method !== "dreambooth" || spec.subjects.length !== 1)
    throw new Error(`lab --stage2: stage 1 must be a one-subject Dreambooth run of the lab, not '${stage1Name}'`);
  mkdirSync(out, { recursive: true });
  log(`lab stage 2: stage 1 = ${spec.name} (${spec.label}), ${steps} steps`);
  const stage1 = await runExperiment(spec, { base: basePath, out, log, quiet: true });
  const prompt = caption(spec.subjects[0].scenes[0], { token: spec.subjects[0].token, dropBackground: true });
  const base = loadStableDiffusion(basePath);
  let lows: Image[];
  try {
    lows = withExperimentModel(
      stage1,
      base,
      (m) =>
        generateRgb(m, { prompt, seed: 1000, batch: samples, steps: 20, cfg: 5, sampler: "ddim" }).images as Image[],
    );
  } finally {
    disposeStableDiffusion(base);
  }
  log(`lab stage 2: fine-tuning ${upscalerPath}, ${stage2Steps} steps`);
  const stage2 = await trainStage2({ out, upscaler: upscalerPath, steps: stage2Steps, log });
  const heldOut = generateSubject(11, o.scenes ?? (o.quick ? 2 : 8));
  const renders = heldOut.map((s) => renderScene(s, { imageSize: 64 }));
  const rows: UpscalerLabRow[] = [];
  const row = (input: UpscalerLabRow["input"], name: string, pictures: Image[]) => {
    const read = pictures.map((img) => readDotDetail(img).crispness);
    rows.push({ input, name, crispness: mean(read), withDot: read.filter((c) => c > 0).length, pictures: read.length });
    log(`  ${input}, ${name}: ${rows.at(-1)!.crispness.toFixed(3)}`);
  };
  const settings = { steps: 20, noiseLevel: UPSCALER_RECIPE.sampling.noiseLevel, seed: 11 };
  for (const [input, pictures] of [
    ["stage-1 samples", lows],
    ["64² renders", renders],
  ] as const) {
    const prompts = pictures.map(() => prompt);
    row(input, "stage 1 alone (bilinear ×4)", pictures.map(resize4));
    row(input, "stage 1 + base upscaler", upscaleAll(upscalerPath, pictures, prompts, settings));
    row(input, "both stages fine-tuned", upscaleAll(stage2.path, pictures, prompts, settings));
  }
  row(
    "64² renders",
    "native 256² render (ceiling)",
    heldOut.map((s) => renderScene(s, { imageSize: 256 })),
  );
  const table = [
    `Stage 1: ${spec.name}, ${steps} steps; ${samples} samples of "${prompt}" (seeds from 1000, DDIM 20, CFG 5).`,
    `Stage 2: dreambooth_upscaler on ${upscalerPath}, ${stage2Steps} steps (${Math.round(stage2.seconds)} s); upscales with "${prompt}", DDIM 20, noise level ${settings.noiseLevel}, cfg 1.`,
    `Held-out renders: ${heldOut.length} subject scenes, seed 11.`,
    "",
    "| 64² input | 256² by | dot crispness | pictures with a dot |",
    "|---|---|---|---|",
    ...rows.map((r) => `| ${r.input} | ${r.name} | ${r.crispness.toFixed(3)} | ${r.withDot} / ${r.pictures} |`),
    "",
  ].join("\n");
  const json = JSON.stringify(
    { version: 1, base: basePath, upscaler: upscalerPath, stage1: spec.name, steps, stage2Steps, samples, rows },
    null,
    2,
  );
  writeTextAtomic(join(out, "lab-upscaler.json"), `${json}\n`);
  writeTextAtomic(join(out, "lab-upscaler.md"), table);
  return { rows, table };
}
