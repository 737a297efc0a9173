// Does the base model follow prompts? Samples of "a red circle" (every colour
// × shape) and of "a red circle on a blue background", read by the analyser:
// the share whose colour, shape and background are the ones asked for.

import { noGrad, scope } from "../../engine/index.js";
import { generateRgb } from "../../infer/generate-rgb.js";
import { toRgbBytes } from "../../infer/txt2img.js";
import { disposeStableDiffusion, loadStableDiffusion, type StableDiffusion } from "../../models/stable-diffusion.js";
import type { AutoencoderKL } from "../../models/vae/index.js";
import { type Analysis, analyse } from "../analyser.js";
import {
  COLOURS,
  type Colour,
  caption,
  generateSubject,
  generateWorld,
  type Scene,
  SHAPES,
  type Shape,
  SUBJECT,
} from "../world.js";
import { renderScenes, toUnitRange } from "./data.js";

export interface PromptScore {
  prompt: string;
  shape: Shape;
  colour: Colour;
  background: Colour | null;
  samples: number;
  shapeRight: number;
  colourRight: number;
  /** Shape and colour both right. */
  bothRight: number;
  backgroundRight: number | null;
}

export interface BaseQuality {
  sampling: { sampler: string; steps: number; cfg: number; samples: number; seed: number };
  /** Shares over every prompt's samples. */
  colour: number;
  shape: number;
  both: number;
  /** Over the prompts that name a background. */
  background: number;
  /** Share of the prompts most of whose samples have shape and colour right ("most samples of 'a red circle' are red circles"). */
  mostlyRight: number;
  /** What the VAE alone keeps: the ceiling of every sample. */
  vae: VaeReconstruction;
  prompts: PromptScore[];
}

/** Generates `samples` images per prompt (seed fixed per prompt) and analyses them. */
export function sampleAnalyses(
  model: StableDiffusion,
  prompt: string,
  o: { samples: number; seed: number; sampler: string; steps: number; cfg: number },
): Analysis[] {
  const { samples, ...sampling } = o;
  return generateRgb(model, { prompt, ...sampling, batch: samples }).images.map((img) => analyse(img));
}

export interface VaeReconstruction {
  /** Unseen world scenes: shares of reconstructions the analyser reads right. */
  world: { scenes: number; shape: number; colour: number; background: number };
  /** The Dreambooth subject (never trained on): star, yellow, and its red dot. */
  subject: { scenes: number; shape: number; colour: number; dot: number };
}

/** Encodes and decodes unseen world scenes and subject pictures, and reads them back with the analyser. */
export function measureVaeReconstruction(
  vae: AutoencoderKL,
  o: { world?: number; subject?: number } = {},
): VaeReconstruction {
  const world = generateWorld(4242, o.world ?? 400);
  const subject = generateSubject(4243, o.subject ?? 64);
  // Each chunk in one scope: its pixels, latents and decoded images are freed once read as bytes.
  const readBack = (scenes: Scene[]): Analysis[] => {
    const out: Analysis[] = [];
    for (let i = 0; i < scenes.length; i += 64) {
      const rgb = noGrad(() =>
        scope(() => {
          const x = toUnitRange(renderScenes(scenes.slice(i, i + 64), vae.config.sampleSize).pixels);
          return toRgbBytes(vae.decode(vae.encode(x).mean).div(2).add(0.5).clamp(0, 1));
        }),
      );
      out.push(...rgb.map((img) => analyse(img)));
    }
    return out;
  };
  const w = readBack(world);
  const s = readBack(subject);
  const count = (a: Analysis[], f: (x: Analysis, i: number) => boolean) => share(a.filter(f).length, a.length);
  return {
    world: {
      scenes: w.length,
      shape: count(w, (a, i) => a.shape === world[i].shape),
      colour: count(w, (a, i) => a.colour === world[i].colour),
      background: count(w, (a, i) => a.background === world[i].background),
    },
    subject: {
      scenes: s.length,
      shape: count(s, (a) => a.shape === SUBJECT.shape),
      colour: count(s, (a) => a.colour === SUBJECT.colour),
      dot: count(s, (a) => a.dot === SUBJECT.patternColour),
    },
  };
}

const share = (n: number, d: number): number => (d === 0 ? 0 : Math.round((n / d) * 1000) / 1000);

export async function measureBaseQuality(
  path: string,
  o: { samples: number; seed?: number; sampling: { sampler: string; steps: number; cfg: number } },
): Promise<BaseQuality> {
  const model = loadStableDiffusion(path);
  const seed = o.seed ?? 1;
  const settings = { ...o.sampling, samples: o.samples, seed };
  const prompts: PromptScore[] = [];
  let vae: VaeReconstruction;
  try {
    vae = measureVaeReconstruction(model.vae);
    for (const [i, shape] of SHAPES.entries()) {
      for (const [j, colour] of COLOURS.entries()) {
        const background = COLOURS[(j + 1 + ((i + j) % 5)) % COLOURS.length];
        for (const bg of [null, background]) {
          // Worded by caption(), as the training captions were ("an orange background").
          const scene = { shape, colour, background: bg ?? colour, cx: 0, cy: 0, size: 1, rotation: 0, imageSize: 64 };
          const prompt = caption(scene, { dropBackground: bg === null });
          const analyses = sampleAnalyses(model, prompt, {
            ...o.sampling,
            samples: o.samples,
            seed: seed + prompts.length,
          });
          prompts.push({
            prompt,
            shape,
            colour,
            background: bg,
            samples: analyses.length,
            shapeRight: analyses.filter((a) => a.shape === shape).length,
            colourRight: analyses.filter((a) => a.colour === colour).length,
            bothRight: analyses.filter((a) => a.colour === colour && a.shape === shape).length,
            backgroundRight: bg ? analyses.filter((a) => a.background === bg).length : null,
          });
        }
      }
    }
  } finally {
    disposeStableDiffusion(model);
  }
  const total = prompts.reduce((a, p) => a + p.samples, 0);
  const withBg = prompts.filter((p) => p.background);
  return {
    sampling: settings,
    colour: share(
      prompts.reduce((a, p) => a + p.colourRight, 0),
      total,
    ),
    shape: share(
      prompts.reduce((a, p) => a + p.shapeRight, 0),
      total,
    ),
    both: share(
      prompts.reduce((a, p) => a + p.bothRight, 0),
      total,
    ),
    background: share(
      withBg.reduce((a, p) => a + (p.backgroundRight ?? 0), 0),
      withBg.reduce((a, p) => a + p.samples, 0),
    ),
    mostlyRight: share(prompts.filter((p) => p.bothRight * 2 > p.samples).length, prompts.length),
    vae,
    prompts,
  };
}
