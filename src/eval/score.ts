// Which prompts `atelier eval` samples for a set of subjects, and how the
// per-prompt readings become the four headline numbers (with their details)
// for one model. Pure: the sampling itself is evaluate.ts.
import type { PixelImage } from "../shapes/analyser.js";
import { type Colour, caption, type Scene, type Shape } from "../shapes/world.js";
import {
  type BleedScore,
  bleed,
  type ClassPreservationScore,
  classPreservation,
  followingBackgrounds,
  type IdentityScore,
  identity,
  meanPixelDistance,
  type PromptFollowingScore,
  promptFollowing,
  type Sample,
} from "./metrics.js";
import type { EvalSubject } from "./subject.js";

export type PromptKind = "identity" | "class" | "following";

export interface EvalPrompt {
  kind: PromptKind;
  text: string;
  /** The subject's token (identity and following prompts); null for a class prompt. */
  subject: string | null;
  className: Shape;
  /** The requested background (following prompts). */
  background: Colour | null;
}

/** One prompt's samples, in seed order; images kept where pixel distances are wanted (class prompts). */
export interface PromptSamples {
  prompt: EvalPrompt;
  samples: Sample[];
  images?: PixelImage[];
}

// caption() reads only these fields; the geometry is irrelevant to the words.
const wordsOf = (shape: Shape, background: Colour | null): Scene => ({
  shape,
  colour: "red",
  background: background ?? "red",
  cx: 0,
  cy: 0,
  size: 1,
  rotation: 0,
  imageSize: 64,
});

/**
 * The prompts, worded by the shapes world's caption() so that they read as
 * the training captions did: "a sks star" per subject, "a star" per class,
 * "a sks star on a green background" per subject and background asked.
 */
export function evalPrompts(subjects: readonly EvalSubject[]): EvalPrompt[] {
  const out: EvalPrompt[] = [];
  for (const s of subjects) {
    const text = caption(wordsOf(s.className, null), { token: s.token, dropBackground: true });
    out.push({ kind: "identity", text, subject: s.token, className: s.className, background: null });
  }
  for (const className of new Set(subjects.map((s) => s.className))) {
    const text = caption(wordsOf(className, null), { dropColour: true, dropBackground: true });
    out.push({ kind: "class", text, subject: null, className, background: null });
  }
  for (const s of subjects) {
    for (const bg of followingBackgrounds(s.signature)) {
      const text = caption(wordsOf(s.className, bg), { token: s.token });
      out.push({ kind: "following", text, subject: s.token, className: s.className, background: bg });
    }
  }
  return out;
}

export interface Scores {
  /** Mean over subjects of IdentityScore.share. */
  identity: number | null;
  identity_details: { per_subject: (IdentityScore & { token: string })[] } | null;
  /** Mean over classes of ClassPreservationScore.score. */
  class_preservation: number | null;
  class_preservation_details:
    | (Omit<ClassPreservationScore, "samples"> & { per_class: (ClassPreservationScore & { class: Shape })[] })
    | null;
  /** Mean over subjects of PromptFollowingScore.share. */
  prompt_following: number | null;
  prompt_following_details: {
    background_accuracy: number;
    seen: number | null;
    unseen: number | null;
    per_subject: (PromptFollowingScore & { token: string })[];
  } | null;
  /** BleedScore.share; null with one subject. */
  bleed: number | null;
  bleed_details: BleedScore | null;
}

const mean = (xs: readonly (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
};

function find(runs: readonly PromptSamples[], p: EvalPrompt): PromptSamples {
  const r = runs.find((x) => x.prompt.text === p.text);
  if (!r) throw new Error(`eval: no samples of the prompt '${p.text}'`);
  return r;
}

/**
 * The four scores of one model. `runs` are its samples, `baseRuns` the base
 * model's with the same prompts and seeds (pass `runs` twice to score the
 * base itself: class preservation is then 1 by definition).
 */
export function scoreRuns(
  subjects: readonly EvalSubject[],
  runs: readonly PromptSamples[],
  baseRuns: readonly PromptSamples[],
): Scores {
  const prompts = evalPrompts(subjects);
  const ids = subjects.map((s) => {
    const p = prompts.find((x) => x.kind === "identity" && x.subject === s.token)!;
    return { subject: s, samples: find(runs, p).samples };
  });
  const perSubject = ids.flatMap(({ subject, samples }) => {
    const score = identity(samples, subject.signature);
    return score ? [{ token: subject.token, ...score }] : [];
  });

  const perClass = prompts
    .filter((p) => p.kind === "class")
    .map((p) => {
      const [mine, base] = [find(runs, p), find(baseRuns, p)];
      const pixels =
        mine.images && base.images && mine.images.length === base.images.length
          ? mine.images.map((img, i) => meanPixelDistance(img, base.images![i]))
          : undefined;
      const sigs = subjects.filter((s) => s.className === p.className).map((s) => s.signature);
      return { class: p.className, ...classPreservation(mine.samples, base.samples, p.className, sigs, pixels) };
    });

  const following = subjects.flatMap((s) => {
    const groups = prompts
      .filter((p) => p.kind === "following" && p.subject === s.token)
      .map((p) => ({ background: p.background!, samples: find(runs, p).samples }));
    const score = promptFollowing(groups, s.signature, s.seenBackgrounds);
    return score ? [{ token: s.token, ...score }] : [];
  });

  const bleedScore = bleed(ids.map(({ subject, samples }) => ({ ...subject, samples })));
  const avg = (f: (c: ClassPreservationScore) => number | null) => mean(perClass.map(f));
  return {
    identity: mean(perSubject.map((s) => s.share)),
    identity_details: perSubject.length ? { per_subject: perSubject } : null,
    class_preservation: avg((c) => c.score),
    class_preservation_details: perClass.length
      ? {
          score: avg((c) => c.score)!,
          tv_distance: avg((c) => c.tv_distance)!,
          shape_fidelity: avg((c) => c.shape_fidelity)!,
          colour_diversity: avg((c) => c.colour_diversity)!,
          changed: avg((c) => c.changed)!,
          subject_like: avg((c) => c.subject_like)!,
          pixel_distance: avg((c) => c.pixel_distance),
          per_class: perClass,
        }
      : null,
    prompt_following: mean(following.map((f) => f.share)),
    prompt_following_details: following.length
      ? {
          background_accuracy: mean(following.map((f) => f.background_accuracy))!,
          seen: mean(following.map((f) => f.seen?.share ?? null)),
          unseen: mean(following.map((f) => f.unseen?.share ?? null)),
          per_subject: following,
        }
      : null,
    bleed: bleedScore?.share ?? null,
    bleed_details: bleedScore,
  };
}
