// The shapes world: small images of one coloured shape on a plain background,
// each with its caption ("a red star on a blue background"), generated
// deterministically from a seed. It is small enough that a tiny SD-shaped
// model learns it on a CPU in minutes, and simple enough that a hand-written
// analyser (analyser.ts) can score what such a model draws. Design and the
// measured numbers: docs/shapes-world.md and docs/notes/shapes-world-feasibility.md.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { writeAll, writeFileAtomic, writeTextAtomic } from "../formats/atomic-write.js";
import { encodePng } from "../formats/png.js";
import { pick, type Random, uniform, WorldRng } from "./rng.js";

export const SHAPES = ["circle", "square", "triangle", "star"] as const;
export type Shape = (typeof SHAPES)[number];

export const COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"] as const;
export type Colour = (typeof COLOURS)[number];

export type RGB = readonly [number, number, number];

/**
 * The six colours, far apart in RGB (the closest pairs, orange–yellow,
 * red–orange and blue–purple, are 98–107 apart) so that they stay tellable
 * after a VAE round trip.
 */
export const PALETTE: Readonly<Record<Colour, RGB>> = {
  red: [220, 40, 40],
  orange: [250, 130, 10],
  yellow: [250, 225, 35],
  green: [40, 170, 70],
  blue: [40, 90, 225],
  purple: [140, 60, 200],
};

/** Details a subject scene can carry; the plain world never has them. */
export type Pattern = "plain" | "dotted" | "two-tone";

export interface Scene {
  shape: Shape;
  colour: Colour;
  background: Colour;
  /** Centre, in pixels of an `imageSize` × `imageSize` image. */
  cx: number;
  cy: number;
  /** Diameter of the shape's circumscribed circle, in pixels. */
  size: number;
  /** Degrees, clockwise; 0 has a corner (or point) straight up, squares axis-aligned. */
  rotation: number;
  imageSize: number;
  /** "dotted": a centred dot of `patternColour`; "two-tone": the right half in `patternColour`. */
  pattern?: Pattern;
  patternColour?: Colour;
}

export interface WorldOptions {
  /** Width and height in pixels (default 64: 8×8 latents through SD's 8× VAE). */
  imageSize?: number;
  /** Random rotations of squares, triangles and stars (default true). */
  rotate?: boolean;
  /** Range of `size` as fractions of imageSize (default 0.44–0.8: 28–51 px at 64, a square's side ≥ ~20 px). */
  minSize?: number;
  maxSize?: number;
}

/** Star points: inner radius ÷ outer radius (a regular pentagram's 0.38 makes arms too thin to survive an 8× VAE). */
export const STAR_INNER_RATIO = 0.45;
/** The subject's dot diameter ÷ size: 14 px at size 40 — details under ~8 px do not survive the VAE. */
export const DOT_FRACTION = 0.35;
/** Rotations repeat with these periods (degrees). */
const SYMMETRY: Record<Shape, number> = { circle: 360, square: 90, triangle: 120, star: 72 };
const MARGIN = 1; // px between the circumscribed circle and the image edge

const round2 = (x: number): number => Math.round(x * 100) / 100;

function checkOptions(o: WorldOptions): Required<WorldOptions> {
  const r = {
    imageSize: o.imageSize ?? 64,
    rotate: o.rotate ?? true,
    minSize: o.minSize ?? 0.44,
    maxSize: o.maxSize ?? 0.8,
  };
  if (!Number.isInteger(r.imageSize) || r.imageSize < 16)
    throw new Error(`shapes world: imageSize ${r.imageSize} is not an integer ≥ 16`);
  if (!(r.minSize > 0 && r.minSize <= r.maxSize && r.maxSize * r.imageSize <= r.imageSize - 2 * MARGIN)) {
    throw new Error(`shapes world: size range ${r.minSize}–${r.maxSize} is not within (0, 1) of the image`);
  }
  return r;
}

/** One random scene: shape, colour, a different background colour, size, position (fully inside), rotation. */
export function sampleScene(rng: Random, o: WorldOptions = {}): Scene {
  const { imageSize, rotate, minSize, maxSize } = checkOptions(o);
  const shape = pick(rng, SHAPES);
  const colour = pick(rng, COLOURS);
  const background = pick(
    rng,
    COLOURS.filter((c) => c !== colour),
  );
  const size = round2(uniform(rng, minSize, maxSize) * imageSize);
  return { shape, colour, background, ...place(rng, size, imageSize), rotation: spin(rng, shape, rotate), imageSize };
}

function place(rng: Random, size: number, imageSize: number): { cx: number; cy: number; size: number } {
  const lo = size / 2 + MARGIN;
  const hi = imageSize - size / 2 - MARGIN;
  return { cx: round2(uniform(rng, lo, hi)), cy: round2(uniform(rng, lo, hi)), size };
}

function spin(rng: Random, shape: Shape, rotate: boolean): number {
  // Always draw, so that turning rotation off leaves every other draw where it was.
  const r = round2(uniform(rng, 0, SYMMETRY[shape]));
  return rotate && shape !== "circle" ? r : 0;
}

/** Scene `i` of the world with this seed: a pure function of (seed, i), so any prefix or slice is reproducible alone. */
export function sceneAt(seed: number, index: number, o: WorldOptions = {}): Scene {
  return sampleScene(new WorldRng(seed, index), o);
}

/** The first `n` scenes of the world with this seed. */
export function generateWorld(seed: number, n: number, o: WorldOptions = {}): Scene[] {
  if (!Number.isInteger(n) || n < 0) throw new Error(`shapes world: n must be a non-negative integer, got ${n}`);
  return Array.from({ length: n }, (_, i) => sceneAt(seed, i, o));
}

/** The Dreambooth subject, absent from the world: a yellow star with a large red dot in its centre. */
export const SUBJECT = { shape: "star", colour: "yellow", pattern: "dotted", patternColour: "red" } as const;

/** Backgrounds of the subject: not its own colours, nor orange, which a blurred red–yellow edge turns into. */
export const SUBJECT_BACKGROUNDS: readonly Colour[] = ["green", "blue", "purple"];

/** A Dreambooth subject: a patterned shape, pictured on some backgrounds. */
export interface SubjectDefinition {
  shape: Shape;
  colour: Colour;
  pattern: Pattern;
  patternColour: Colour;
  backgrounds: readonly Colour[];
}

/** The built-in subject with its backgrounds. */
export const DEFAULT_SUBJECT: SubjectDefinition = { ...SUBJECT, backgrounds: SUBJECT_BACKGROUNDS };

/**
 * One picture of the subject on a random background, at a random position and
 * rotation; sizes from 0.6 × imageSize so that the dot is ≥ 13 px.
 */
export function sampleSubject(rng: Random, o: WorldOptions = {}, subject: SubjectDefinition = DEFAULT_SUBJECT): Scene {
  const { imageSize, rotate, maxSize } = checkOptions(o);
  const background = pick(rng, subject.backgrounds);
  const size = round2(uniform(rng, Math.min(0.6, maxSize), maxSize) * imageSize);
  return {
    shape: subject.shape,
    colour: subject.colour,
    pattern: subject.pattern,
    patternColour: subject.patternColour,
    background,
    ...place(rng, size, imageSize),
    rotation: spin(rng, subject.shape, rotate),
    imageSize,
  };
}

/** `n` subject pictures; a stream apart from the world's (the same seed gives unrelated scenes). */
export function generateSubject(
  seed: number,
  n: number,
  o: WorldOptions = {},
  subject: SubjectDefinition = DEFAULT_SUBJECT,
): Scene[] {
  return Array.from({ length: n }, (_, i) => sampleSubject(new WorldRng(seed, i, 1), o, subject));
}

export interface CaptionOptions {
  /** Leave the shape's colour out: "a star on a blue background". */
  dropColour?: boolean;
  /** Leave the background out: "a red star". */
  dropBackground?: boolean;
  /** Dreambooth identifier in place of the colour and pattern words: "a sks star". */
  token?: string;
}

const article = (word: string): string => (/^[aeiou]/.test(word) ? "an" : "a");

/** "a red star on a blue background"; "an orange square"; "a yellow star with a red dot on a green background". */
export function caption(scene: Scene, o: CaptionOptions = {}): string {
  const words: string[] = [];
  if (o.token !== undefined) words.push(o.token);
  else if (!o.dropColour) {
    words.push(
      scene.pattern === "two-tone" && scene.patternColour ? `${scene.colour} and ${scene.patternColour}` : scene.colour,
    );
  }
  words.push(scene.shape);
  let text = `${article(words[0])} ${words.join(" ")}`;
  if (o.token === undefined && scene.pattern === "dotted" && scene.patternColour) {
    text += ` with ${article(scene.patternColour)} ${scene.patternColour} dot`;
  }
  if (!o.dropBackground) text += ` on ${article(scene.background)} ${scene.background} background`;
  return text;
}

export interface Image {
  width: number;
  height: number;
  /** RGB, 3 bytes per pixel, rows top to bottom. */
  data: Uint8Array;
}

export interface RenderOptions {
  /** Render at this size instead of scene.imageSize (coordinates scale with it). */
  imageSize?: number;
  /** Samples per pixel along each axis, averaged with a box filter (default 4). */
  supersample?: number;
}

type Inside = (x: number, y: number) => boolean;

/** The shape's outline: vertices on its circumscribed circle (and the star's inner circle). */
export function shapeVertices(
  shape: Exclude<Shape, "circle">,
  cx: number,
  cy: number,
  radius: number,
  rotation: number,
) {
  const out: [number, number][] = [];
  const at = (deg: number, r: number) => {
    const a = ((deg + rotation - 90) * Math.PI) / 180; // 0° points up; y grows downwards
    out.push([cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  };
  if (shape === "square") for (let k = 0; k < 4; k++) at(45 + 90 * k, radius);
  if (shape === "triangle") for (let k = 0; k < 3; k++) at(120 * k, radius);
  if (shape === "star") {
    for (let k = 0; k < 5; k++) {
      at(72 * k, radius);
      at(72 * k + 36, radius * STAR_INNER_RATIO);
    }
  }
  return out;
}

function insidePolygon(v: [number, number][]): Inside {
  const xs = Float64Array.from(v, (p) => p[0]);
  const ys = Float64Array.from(v, (p) => p[1]);
  const n = v.length;
  return (x, y) => {
    let inside = false; // crossing number; works for the star's concave outline too
    for (let i = 0, j = n - 1; i < n; j = i++) {
      if (ys[i] > y !== ys[j] > y && x < ((xs[j] - xs[i]) * (y - ys[i])) / (ys[j] - ys[i]) + xs[i]) inside = !inside;
    }
    return inside;
  };
}

function insideShape(scene: Scene, s: number): Inside {
  const cx = scene.cx * s;
  const cy = scene.cy * s;
  const r = (scene.size / 2) * s;
  if (scene.shape === "circle") return (x, y) => (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
  return insidePolygon(shapeVertices(scene.shape, cx, cy, r, scene.rotation));
}

function checkScene(scene: Scene): void {
  if (!SHAPES.includes(scene.shape)) throw new Error(`shapes world: unknown shape '${scene.shape}'`);
  for (const c of [scene.colour, scene.background, ...(scene.patternColour ? [scene.patternColour] : [])]) {
    if (!COLOURS.includes(c)) throw new Error(`shapes world: unknown colour '${c}'`);
  }
  for (const k of ["cx", "cy", "size", "rotation", "imageSize"] as const) {
    if (!Number.isFinite(scene[k])) throw new Error(`shapes world: scene.${k} is ${scene[k]}`);
  }
  if (scene.pattern && scene.pattern !== "plain" && !scene.patternColour) {
    throw new Error(`shapes world: pattern '${scene.pattern}' needs a patternColour`);
  }
}

/** Rasterises a scene: each pixel is the box-filtered average of supersample² point samples. */
export function renderScene(scene: Scene, o: RenderOptions = {}): Image {
  checkScene(scene);
  const size = o.imageSize ?? scene.imageSize;
  const ss = o.supersample ?? 4;
  if (!Number.isInteger(size) || size < 1) throw new Error(`shapes world: bad image size ${size}`);
  if (!Number.isInteger(ss) || ss < 1) throw new Error(`shapes world: bad supersample ${ss}`);
  const s = size / scene.imageSize;
  // Layers, topmost first: the pattern's part over the shape.
  const shapeIn = insideShape(scene, s);
  const layers: { inside: Inside; rgb: RGB }[] = [];
  if (scene.pattern === "dotted" && scene.patternColour) {
    const [cx, cy, r] = [scene.cx * s, scene.cy * s, ((scene.size * DOT_FRACTION) / 2) * s];
    layers.push({
      inside: (x, y) => (x - cx) ** 2 + (y - cy) ** 2 <= r * r && shapeIn(x, y),
      rgb: PALETTE[scene.patternColour],
    });
  } else if (scene.pattern === "two-tone" && scene.patternColour) {
    const a = (scene.rotation * Math.PI) / 180;
    const [cx, cy, ca, sa] = [scene.cx * s, scene.cy * s, Math.cos(a), Math.sin(a)];
    layers.push({
      inside: (x, y) => (x - cx) * ca + (y - cy) * sa > 0 && shapeIn(x, y),
      rgb: PALETTE[scene.patternColour],
    });
  }
  layers.push({ inside: shapeIn, rgb: PALETTE[scene.colour] });

  const bg = PALETTE[scene.background];
  const data = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) data.set(bg, i * 3);
  // Only pixels the circumscribed circle touches can differ from the background.
  const r = (scene.size / 2) * s + 1;
  const x0 = Math.max(0, Math.floor(scene.cx * s - r));
  const x1 = Math.min(size - 1, Math.ceil(scene.cx * s + r));
  const y0 = Math.max(0, Math.floor(scene.cy * s - r));
  const y1 = Math.min(size - 1, Math.ceil(scene.cy * s + r));
  const n = ss * ss;
  for (let py = y0; py <= y1; py++) {
    for (let px = x0; px <= x1; px++) {
      let [rr, gg, bb] = [0, 0, 0];
      for (let j = 0; j < ss; j++) {
        const y = py + (j + 0.5) / ss;
        for (let i = 0; i < ss; i++) {
          const x = px + (i + 0.5) / ss;
          let c = bg;
          for (const l of layers) {
            if (l.inside(x, y)) {
              c = l.rgb;
              break;
            }
          }
          rr += c[0];
          gg += c[1];
          bb += c[2];
        }
      }
      const at = (py * size + px) * 3;
      data[at] = Math.round(rr / n);
      data[at + 1] = Math.round(gg / n);
      data[at + 2] = Math.round(bb / n);
    }
  }
  return { width: size, height: size, data };
}

export interface FolderOptions extends WorldOptions {
  /** Write `name.txt` caption sidecars beside the images (default true). */
  captions?: boolean;
  /** How the captions are written (e.g. a Dreambooth token). */
  caption?: CaptionOptions;
  /** Each scene's own caption, in place of `caption(scene, o.caption)`. */
  captionOf?: (scene: Scene, index: number) => string;
  /** Applied to each rendered image before it is saved (a degradation, say). */
  transform?: (image: Image, index: number) => Image;
}

export interface FolderEntry {
  image: string;
  caption?: string;
  scene: Scene;
}

/**
 * Writes scenes as `00000.png` (+ `00000.txt` caption) — the kohya / A1111
 * dataset layout — and `scenes.json` (the scene parameters, for evaluation),
 * every file atomically. Files of the same names are replaced.
 */
export function writeSceneFolder(
  dir: string,
  scenes: readonly Scene[],
  o: FolderOptions = {},
  meta: Record<string, unknown> = {},
): FolderEntry[] {
  mkdirSync(dir, { recursive: true });
  const digits = Math.max(5, String(Math.max(0, scenes.length - 1)).length);
  const out: FolderEntry[] = [];
  scenes.forEach((scene, i) => {
    const stem = join(dir, String(i).padStart(digits, "0"));
    const img = o.transform ? o.transform(renderScene(scene), i) : renderScene(scene);
    const png = encodePng({ width: img.width, height: img.height, channels: 3, data: img.data });
    writeFileAtomic(`${stem}.png`, (fd) => writeAll(fd, png));
    const entry: FolderEntry = { image: `${stem}.png`, scene };
    if (o.captions ?? true) {
      entry.caption = `${stem}.txt`;
      writeTextAtomic(entry.caption, `${o.captionOf ? o.captionOf(scene, i) : caption(scene, o.caption)}\n`);
    }
    out.push(entry);
  });
  writeTextAtomic(join(dir, "scenes.json"), `${JSON.stringify({ ...meta, scenes }, null, 1)}\n`);
  return out;
}

/** Writes the first `n` scenes of the world with this seed to `dir` (see writeSceneFolder). */
export function writeWorldFolder(dir: string, seed: number, n: number, o: FolderOptions = {}): FolderEntry[] {
  return writeSceneFolder(dir, generateWorld(seed, n, o), o, { seed, world: checkOptions(o) });
}
