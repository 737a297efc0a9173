// The base model's training data: the world's scenes rendered once into one
// uint8 tensor (24k × 3 × 64 × 64 is 295 MB), batches drawn from it as
// [-1, 1] floats, and captions with the dropout the recipe asks for, so that
// "", "a star" and "a star on a blue background" are all prompts the model knows.
import { type Generator, randint, scope, type Tensor, tensor } from "../../engine/index.js";
import { pick, type Random, uniform, WorldRng } from "../rng.js";
import {
  COLOURS,
  caption,
  generateWorld,
  type Pattern,
  renderScene,
  type Scene,
  SUBJECT,
  sampleScene,
} from "../world.js";

export interface WorldImages {
  scenes: Scene[];
  /** [N, 3, S, S] uint8, channels first. */
  pixels: Tensor;
  size: number;
}

/** Renders the first `n` scenes of the world with `seed` (≈1 ms each). */
export function renderWorld(seed: number, n: number, size = 64): WorldImages {
  return renderScenes(generateWorld(seed, n, { imageSize: size }), size);
}

/**
 * `n` shapes with a dot or a second colour (any shape, colour and pattern
 * colour but the Dreambooth subject's own combination), for the VAE alone:
 * a codec trained on plain shapes only blends a red dot on yellow into one
 * orange star, so no subject could be learned through it. SD's VAE has seen
 * every kind of detail; the UNet never sees these scenes.
 */
export function patternedScenes(seed: number, n: number, size = 64): Scene[] {
  return Array.from({ length: n }, (_, i) => {
    const rng = new WorldRng(seed, i, 2);
    for (;;) {
      const scene = sampleScene(rng, { imageSize: size, minSize: 0.6 });
      const pattern: Pattern = pick(rng, ["dotted", "two-tone"] as const);
      const patternColour = pick(
        rng,
        COLOURS.filter((c) => c !== scene.colour && c !== scene.background),
      );
      const isSubject =
        scene.shape === SUBJECT.shape &&
        scene.colour === SUBJECT.colour &&
        pattern === SUBJECT.pattern &&
        patternColour === SUBJECT.patternColour;
      if (!isSubject) return { ...scene, pattern, patternColour };
    }
  });
}

/** Renders scenes into one uint8 tensor, channels first. */
export function renderScenes(scenes: Scene[], size = 64): WorldImages {
  const n = scenes.length;
  const plane = size * size;
  const out = new Uint8Array(n * 3 * plane);
  scenes.forEach((scene, i) => {
    const { data } = renderScene(scene, { imageSize: size });
    const base = i * 3 * plane;
    for (let p = 0; p < plane; p++) {
      out[base + p] = data[3 * p];
      out[base + plane + p] = data[3 * p + 1];
      out[base + 2 * plane + p] = data[3 * p + 2];
    }
  });
  return { scenes, pixels: tensor(out, { shape: [n, 3, size, size] }), size };
}

/** uint8 [B, 3, H, W] → float32 in [-1, 1] (diffusers' Normalize([0.5], [0.5])). */
export function toUnitRange(pixels: Tensor): Tensor {
  return scope(() => pixels.to("float32").div(127.5).sub(1));
}

/** `batch` random row indices of `n` (with replacement, from `generator`). */
export function drawIndices(n: number, batch: number, generator: Generator): Tensor {
  return randint(0, n, [batch], { generator });
}

/**
 * The caption a training example gets: "" with probability `dropCaption`,
 * else with probability `dropParts` one of three shorter forms (no colour,
 * no background, neither), else the full caption.
 */
export function trainingCaption(scene: Scene, rng: Random, dropCaption: number, dropParts: number): string {
  const u = uniform(rng, 0, 1);
  if (u < dropCaption) return "";
  if (u < dropCaption + dropParts) {
    const form = Math.floor(uniform(rng, 0, 3));
    return caption(scene, { dropColour: form !== 1, dropBackground: form !== 0 });
  }
  return caption(scene);
}
