// Does the base model follow prompts? Samples of "a red circle" (every colour
// × shape) and of "a red circle on a blue background", read by the analyser:
// the share whose colour, shape and background are the ones asked for.

import { toRgbBytes, txt2img } from "../../infer/txt2img.js";
import { disposeStableDiffusion, loadStableDiffusion, type StableDiffusion } from "../../models/stable-diffusion.js";
import { type Analysis, analyse } from "../analyser.js";
import { COLOURS, type Colour, caption, SHAPES, type Shape } from "../world.js";

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
  prompts: PromptScore[];
}

/** Generates `samples` images per prompt (seed fixed per prompt) and analyses them. */
export function sampleAnalyses(
  model: StableDiffusion,
  prompt: string,
  o: { samples: number; seed: number; sampler: string; steps: number; cfg: number },
): Analysis[] {
  const r = txt2img(model, { prompt, batch: o.samples, seed: o.seed, sampler: o.sampler, steps: o.steps, cfg: o.cfg });
  try {
    return toRgbBytes(r.images).map((img) => analyse(img));
  } finally {
    r.images.dispose();
    r.latents.dispose();
  }
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
  try {
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
    prompts,
  };
}
