// The numbers `atelier eval` reports, as pure functions over the analyser's
// readings of generated samples (no model, no tensors), so each definition can
// be pinned by a test on hand-built readings. docs/eval.md has the same
// definitions in prose. Every share is over all samples of the prompt: a
// sample where the analyser found nothing counts as a miss, never as absent.
import type { Analysis, PixelImage } from "../shapes/analyser.js";
import { COLOURS, type Colour, type Shape } from "../shapes/world.js";
import type { Signature } from "./subject.js";

/** The analyser fields the metrics read (hand-built in tests). */
export type Sample = Pick<Analysis, "found" | "shape" | "colour" | "background" | "dot">;

/** The subject: found, and shape, colour and dot (null: none) all as the signature says. */
export function showsSubject(s: Sample, sig: Signature): boolean {
  return s.found && s.shape === sig.shape && s.colour === sig.colour && s.dot === sig.dot;
}

const share = (xs: readonly Sample[], f: (s: Sample) => boolean): number =>
  xs.length === 0 ? 0 : xs.filter(f).length / xs.length;

export interface IdentityScore {
  /** Share of the identity prompt's samples that show the subject (headline). */
  share: number;
  /** Shares with each part of the signature right, whatever the others: where a near miss goes wrong. */
  shape: number;
  colour: number;
  dot: number;
  samples: number;
}

/** Identity: of the samples of "a TOKEN CLASS", the share that show the subject. null without samples. */
export function identity(samples: readonly Sample[], sig: Signature): IdentityScore | null {
  if (samples.length === 0) return null;
  return {
    share: share(samples, (s) => showsSubject(s, sig)),
    shape: share(samples, (s) => s.found && s.shape === sig.shape),
    colour: share(samples, (s) => s.found && s.colour === sig.colour),
    dot: share(samples, (s) => s.found && s.dot === sig.dot),
    samples: samples.length,
  };
}

/** The (shape, colour) a sample shows: "star/yellow"; "star/unnamed" for an unnamed colour; "none" when nothing was found. */
export function sceneKey(s: Sample): string {
  return s.found ? `${s.shape ?? "unnamed"}/${s.colour ?? "unnamed"}` : "none";
}

/** Total-variation distance between the (shape, colour) distributions of two sample sets: ½ Σ |p − q|. */
export function tvDistance(a: readonly Sample[], b: readonly Sample[]): number {
  if (a.length === 0 || b.length === 0) throw new Error("tvDistance: an empty sample set");
  const p = new Map<string, number>();
  for (const s of a) p.set(sceneKey(s), (p.get(sceneKey(s)) ?? 0) + 1 / a.length);
  for (const s of b) p.set(sceneKey(s), (p.get(sceneKey(s)) ?? 0) - 1 / b.length);
  let sum = 0;
  for (const d of p.values()) sum += Math.abs(d);
  return sum / 2;
}

/**
 * Normalised entropy of the named colours: −Σ p log p / log 6 over the
 * samples with a named colour; 1 = all six colours equally often, 0 = one
 * colour only (or no named colour at all).
 */
export function colourDiversity(samples: readonly Sample[]): number {
  const named = samples.filter((s) => s.found && s.colour !== null);
  if (named.length === 0) return 0;
  let h = 0;
  for (const c of COLOURS) {
    const p = named.filter((s) => s.colour === c).length / named.length;
    if (p > 0) h -= p * Math.log(p);
  }
  return h / Math.log(COLOURS.length);
}

/** Mean absolute difference of two same-sized 8-bit images, over every channel, in [0, 1]. */
export function meanPixelDistance(a: PixelImage, b: PixelImage): number {
  if (a.width !== b.width || a.height !== b.height || a.data.length !== b.data.length)
    throw new Error(`meanPixelDistance: ${a.width}x${a.height} vs ${b.width}x${b.height} images`);
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i] - b.data[i]);
  return a.data.length === 0 ? 0 : sum / a.data.length / 255;
}

export interface ClassPreservationScore {
  /** 1 − tv_distance (headline): 1 = the class prompt's (shape, colour) mix is the base model's. */
  score: number;
  tv_distance: number;
  /** Share of the evaluated class samples that show the class shape. */
  shape_fidelity: number;
  /** colourDiversity of the evaluated class samples. */
  colour_diversity: number;
  /** Share of seeds whose (shape, colour) differs between the evaluated and the base sample. */
  changed: number;
  /** Share of the evaluated class samples that show a subject of this class (the class turning into the subject). */
  subject_like: number;
  /** Mean pixel distance between the paired images, when they were kept; else null. */
  pixel_distance: number | null;
  samples: number;
}

/**
 * Class preservation: "a CLASS" sampled by the evaluated and the base model
 * with the same seeds, `evaluated[i]` paired with `base[i]`. `signatures` are
 * the subjects of this class (for subject_like); `pixelDistances` the paired
 * images' meanPixelDistance, when known.
 */
export function classPreservation(
  evaluated: readonly Sample[],
  base: readonly Sample[],
  className: Shape,
  signatures: readonly Signature[],
  pixelDistances?: readonly number[],
): ClassPreservationScore {
  if (evaluated.length !== base.length || evaluated.length === 0)
    throw new Error(`classPreservation: needs paired samples, got ${evaluated.length} and ${base.length}`);
  const tv = tvDistance(evaluated, base);
  const changed = evaluated.filter((s, i) => sceneKey(s) !== sceneKey(base[i])).length / evaluated.length;
  return {
    score: 1 - tv,
    tv_distance: tv,
    shape_fidelity: share(evaluated, (s) => s.found && s.shape === className),
    colour_diversity: colourDiversity(evaluated),
    changed,
    subject_like: share(evaluated, (s) => signatures.some((sig) => showsSubject(s, sig))),
    pixel_distance:
      pixelDistances && pixelDistances.length > 0
        ? pixelDistances.reduce((a, b) => a + b, 0) / pixelDistances.length
        : null,
    samples: evaluated.length,
  };
}

/** The backgrounds prompt following asks for: every colour but the subject's own (its body and its dot). */
export function followingBackgrounds(sig: Signature): Colour[] {
  return COLOURS.filter((c) => c !== sig.colour && c !== sig.dot);
}

export interface FollowingPart {
  /** Share of samples on the requested background that also show the subject. */
  share: number;
  /** Share on the requested background, subject or not. */
  background_accuracy: number;
  samples: number;
}

export interface PromptFollowingScore extends FollowingPart {
  /** Backgrounds the instance images had, and ones they never had (null when unknown or none asked). */
  seen: FollowingPart | null;
  unseen: FollowingPart | null;
  per_background: (FollowingPart & { background: Colour; seen: boolean | null })[];
}

function followingPart(groups: readonly { background: Colour; samples: readonly Sample[] }[], sig: Signature) {
  const all = groups.flatMap((g) => g.samples.map((s) => ({ s, bg: g.background })));
  if (all.length === 0) return null;
  return {
    share: all.filter(({ s, bg }) => s.background === bg && showsSubject(s, sig)).length / all.length,
    background_accuracy: all.filter(({ s, bg }) => s.background === bg).length / all.length,
    samples: all.length,
  };
}

/**
 * Prompt following: samples of "a TOKEN CLASS on a BG background" for each
 * requested BG; a sample follows when its background is BG and it shows the
 * subject. Pooled over all backgrounds (headline), and split by whether the
 * instance images had that background (`seen`, when known).
 */
export function promptFollowing(
  groups: readonly { background: Colour; samples: readonly Sample[] }[],
  sig: Signature,
  seen: readonly Colour[] | null = null,
): PromptFollowingScore | null {
  const total = followingPart(groups, sig);
  if (!total) return null;
  const known = seen !== null;
  return {
    ...total,
    seen: known
      ? followingPart(
          groups.filter((g) => seen.includes(g.background)),
          sig,
        )
      : null,
    unseen: known
      ? followingPart(
          groups.filter((g) => !seen.includes(g.background)),
          sig,
        )
      : null,
    per_background: groups.map((g) => ({
      background: g.background,
      seen: known ? seen.includes(g.background) : null,
      ...followingPart([g], sig)!,
    })),
  };
}

export interface BleedPair {
  /** The subject whose identity prompt was sampled (A) … */
  from: string;
  /** … and the subject whose attributes leaked into it (B). */
  to: string;
  /** B's distinguishing attributes looked for: its colour where A's differs, its dot where A's differs and B has one. */
  attributes: { colour?: Colour; dot?: Colour };
  /** Share of A's samples showing any of them; null when B has none (it differs from A only in shape or not at all). */
  share: number | null;
}

export interface BleedScore {
  /** Mean of the pairs' shares (headline); null when no pair has distinguishing attributes. */
  share: number | null;
  pairs: BleedPair[];
}

/**
 * Bleed between subjects trained together: for each ordered pair A ≠ B, the
 * share of A's identity samples ("a A-TOKEN A-CLASS") whose colour is B's
 * colour or whose dot is B's dot, counting only what sets B apart from A.
 * null with fewer than two subjects.
 */
export function bleed(
  subjects: readonly { token: string; signature: Signature; samples: readonly Sample[] }[],
): BleedScore | null {
  if (subjects.length < 2) return null;
  const pairs: BleedPair[] = [];
  for (const a of subjects) {
    for (const b of subjects) {
      if (a === b) continue;
      const attributes: BleedPair["attributes"] = {};
      if (b.signature.colour !== a.signature.colour) attributes.colour = b.signature.colour;
      // B having no dot is not a trait to find in A's samples (a missed dot is A's own failure).
      if (b.signature.dot !== null && b.signature.dot !== a.signature.dot) attributes.dot = b.signature.dot;
      const none = attributes.colour === undefined && attributes.dot === undefined;
      pairs.push({
        from: a.token,
        to: b.token,
        attributes,
        share:
          none || a.samples.length === 0
            ? null
            : share(
                a.samples,
                (s) =>
                  s.found &&
                  ((attributes.colour !== undefined && s.colour === attributes.colour) ||
                    (attributes.dot !== undefined && s.dot === attributes.dot)),
              ),
      });
    }
  }
  const defined = pairs.map((p) => p.share).filter((x): x is number => x !== null);
  return { share: defined.length ? defined.reduce((x, y) => x + y, 0) / defined.length : null, pairs };
}
