// The subjects `atelier eval` scores: a Dreambooth identifier ("sks"), the
// class it was trained under (a shapes-world shape) and what the analyser must
// read off a sample for it to count as the subject (its signature). Subjects
// come from CLI specs ("sks:star:yellow:red"), the built-in SUBJECT, or the
// instance images themselves (majority vote of the analyser).
import { readdirSync, statSync } from "node:fs";
import { extname, join } from "node:path";
import { analyse } from "../shapes/analyser.js";
import { COLOURS, type Colour, SHAPES, type Shape, SUBJECT, SUBJECT_BACKGROUNDS } from "../shapes/world.js";
import { IMAGE_EXTENSIONS, loadImage } from "../train/data/image.js";

/** What a sample must show to be the subject: the analyser's shape, colour and centred dot (null: no dot). */
export interface Signature {
  shape: Shape;
  colour: Colour;
  dot: Colour | null;
}

export interface EvalSubject {
  /** The identifier in prompts: "a sks star". */
  token: string;
  /** The class noun, a shape: "a star" is the class prompt. */
  className: Shape;
  signature: Signature;
  /** Backgrounds of the instance images, when known (splits prompt following into seen/unseen). */
  seenBackgrounds: Colour[] | null;
}

/** A parsed `--subject` spec; colour (and so the dot) may be left to the instance images. */
export interface SubjectSpec {
  token: string;
  className: Shape;
  colour?: Colour;
  /** undefined: not given; null: "none" or a colour given without a dot. */
  dot?: Colour | null;
}

export class SubjectSpecError extends Error {}

/** The built-in Dreambooth subject of the shapes world (a yellow star with a red dot) under `token`. */
export function defaultSubject(token = "sks"): EvalSubject {
  return {
    token,
    className: SUBJECT.shape,
    signature: { shape: SUBJECT.shape, colour: SUBJECT.colour, dot: SUBJECT.patternColour },
    seenBackgrounds: [...SUBJECT_BACKGROUNDS],
  };
}

const isShape = (s: string): s is Shape => (SHAPES as readonly string[]).includes(s);
const isColour = (s: string): s is Colour => (COLOURS as readonly string[]).includes(s);

/** Parses "token:class[:colour[:dot]]"; dot "none" (or left out after a colour) means no dot. */
export function parseSubjectSpec(spec: string): SubjectSpec {
  const parts = spec.split(":").map((p) => p.trim());
  const usage = `subject '${spec}': expected TOKEN:CLASS[:COLOUR[:DOT]], e.g. sks:star:yellow:red`;
  if (parts.length < 2 || parts.length > 4) throw new SubjectSpecError(usage);
  const [token, className, colour, dot] = parts;
  // The token must stay one word: prompts are built as "a TOKEN CLASS".
  if (!/^[^\s:<>()[\]]+$/.test(token)) throw new SubjectSpecError(`${usage}; the token '${token}' must be one word`);
  const lc = className.toLowerCase();
  if (!isShape(lc))
    throw new SubjectSpecError(`subject '${spec}': unknown class '${className}'; valid classes: ${SHAPES.join(", ")}`);
  const out: SubjectSpec = { token, className: lc };
  if (colour === undefined) return out;
  if (!isColour(colour.toLowerCase()))
    throw new SubjectSpecError(`subject '${spec}': unknown colour '${colour}'; valid colours: ${COLOURS.join(", ")}`);
  out.colour = colour.toLowerCase() as Colour;
  out.dot = null;
  if (dot === undefined || dot.toLowerCase() === "none") return out;
  const d = dot.toLowerCase();
  if (!isColour(d))
    throw new SubjectSpecError(`subject '${spec}': unknown dot colour '${dot}'; valid: ${COLOURS.join(", ")} or none`);
  if (d === out.colour)
    throw new SubjectSpecError(`subject '${spec}': the dot cannot have the shape's own colour (${d})`);
  out.dot = d;
  return out;
}

/** What the instance images show, by majority of the analyser's readings. */
export interface ImageSignature {
  signature: Signature;
  /** Backgrounds seen on at least one image where an object was found, in COLOURS order. */
  backgrounds: Colour[];
  /** Images read, and how many of them agree with each majority answer. */
  images: number;
  agreement: { shape: number; colour: number; dot: number };
}

function imageFiles(dir: string, depth = 0): string[] {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    throw new SubjectSpecError(`instance images: cannot read the folder ${dir} (${(e as Error).message})`);
  }
  const out: string[] = [];
  for (const n of names) {
    const p = join(dir, n);
    // kohya layouts put images one folder down ("10_sks star/"); look two levels deep at most.
    if (statSync(p).isDirectory()) {
      if (depth < 2) out.push(...imageFiles(p, depth + 1));
    } else if (IMAGE_EXTENSIONS.has(extname(n).toLowerCase())) out.push(p);
  }
  return out;
}

function majority<T>(values: readonly T[]): { value: T; count: number } {
  const counts = new Map<T, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best: { value: T; count: number } | null = null;
  // Ties go to the first seen (files are sorted), so the result is deterministic.
  for (const [value, count] of counts) if (!best || count > best.count) best = { value, count };
  return best!;
}

/** Analyses every image (PNG, JPEG, … via sharp) under `dir` and takes the majority shape, colour and dot. */
export async function signatureFromImages(dir: string): Promise<ImageSignature> {
  const files = imageFiles(dir);
  if (files.length === 0)
    throw new SubjectSpecError(
      `instance images: no images (${[...IMAGE_EXTENSIONS].join(", ")}) in ${dir} or its subfolders`,
    );
  const found = [];
  for (const f of files) {
    const a = analyse(await loadImage(f));
    if (a.found && a.shape && a.colour) found.push({ shape: a.shape, colour: a.colour, dot: a.dot, bg: a.background });
  }
  if (found.length === 0)
    throw new SubjectSpecError(
      `instance images: the analyser found no coloured shape in any of the ${files.length} images in ${dir}`,
    );
  const shape = majority(found.map((a) => a.shape));
  const colour = majority(found.map((a) => a.colour));
  const dot = majority(found.map((a) => a.dot));
  const seen = new Set(found.map((a) => a.bg));
  return {
    signature: { shape: shape.value, colour: colour.value, dot: dot.value },
    backgrounds: COLOURS.filter((c) => seen.has(c)),
    images: files.length,
    agreement: { shape: shape.count, colour: colour.count, dot: dot.count },
  };
}

/**
 * A subject from a spec, with what it leaves out taken from the instance
 * images. The images must show the spec's class; where the spec names a colour
 * or dot it wins, the images still give the seen backgrounds.
 */
export function resolveSubject(spec: SubjectSpec, images?: ImageSignature, dir = "the instance images"): EvalSubject {
  if (images && images.signature.shape !== spec.className)
    throw new SubjectSpecError(
      `${dir} show mostly ${images.signature.shape}s (${images.agreement.shape} of ${images.images}), but subject '${spec.token}' has the class ${spec.className}`,
    );
  const colour = spec.colour ?? images?.signature.colour;
  if (!colour)
    throw new SubjectSpecError(
      `subject '${spec.token}:${spec.className}' names no colour: give TOKEN:CLASS:COLOUR[:DOT] or --instance-dir`,
    );
  const dot = spec.colour !== undefined ? (spec.dot ?? null) : (images?.signature.dot ?? null);
  return {
    token: spec.token,
    className: spec.className,
    signature: { shape: spec.className, colour, dot },
    seenBackgrounds: images ? images.backgrounds : null,
  };
}

/** Subjects must have distinct tokens: prompts and bleed are keyed by them. */
export function checkSubjects(subjects: readonly EvalSubject[]): void {
  if (subjects.length === 0) throw new SubjectSpecError("no subject to evaluate");
  const seen = new Set<string>();
  for (const s of subjects) {
    if (seen.has(s.token)) throw new SubjectSpecError(`two subjects have the token '${s.token}'`);
    seen.add(s.token);
  }
}
