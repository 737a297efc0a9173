// The eval metrics on hand-built analyser readings: every definition pinned
// to exact numbers, without a model.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  bleed,
  classPreservation,
  colourDiversity,
  followingBackgrounds,
  identity,
  meanPixelDistance,
  promptFollowing,
  type Sample,
  sceneKey,
  showsSubject,
  tvDistance,
} from "../../src/eval/metrics.js";
import { evalPrompts, type PromptSamples, scoreRuns } from "../../src/eval/score.js";
import { defaultSubject, type EvalSubject, type Signature } from "../../src/eval/subject.js";
import type { Colour, Shape } from "../../src/shapes/world.js";

const S = (shape: Shape, colour: Colour | null, background: Colour | null, dot: Colour | null = null): Sample => ({
  found: true,
  shape,
  colour,
  background,
  dot,
});
const NONE = (background: Colour | null = "green"): Sample => ({
  found: false,
  shape: null,
  colour: null,
  background,
  dot: null,
});
const close = (a: number | null | undefined, b: number, what = "") => {
  assert.ok(a !== null && a !== undefined && Math.abs(a - b) < 1e-12, `${what}: ${a} != ${b}`);
};

const SIG: Signature = { shape: "star", colour: "yellow", dot: "red" };

test("showsSubject needs shape, colour and dot (and no dot where the subject has none)", () => {
  assert.equal(showsSubject(S("star", "yellow", "blue", "red"), SIG), true);
  assert.equal(showsSubject(S("star", "yellow", "blue"), SIG), false);
  assert.equal(showsSubject(S("circle", "yellow", "blue", "red"), SIG), false);
  assert.equal(showsSubject(NONE(), SIG), false);
  const plain: Signature = { shape: "circle", colour: "blue", dot: null };
  assert.equal(showsSubject(S("circle", "blue", "red"), plain), true);
  assert.equal(showsSubject(S("circle", "blue", "red", "yellow"), plain), false);
});

test("identity: the share showing the subject, and each part's share", () => {
  const samples = [
    S("star", "yellow", "blue", "red"), // the subject
    S("star", "yellow", "green"), // no dot
    S("star", "orange", "green", "red"), // wrong colour
    S("circle", "yellow", "purple", "red"), // wrong shape
    NONE(),
  ];
  const r = identity(samples, SIG)!;
  assert.deepEqual(r, { share: 0.2, shape: 0.6, colour: 0.6, dot: 0.6, samples: 5 });
  assert.equal(identity([], SIG), null);
});

test("class preservation: 1 − TV distance, fidelity, diversity, changed seeds, subject-like, pixel distance", () => {
  const evaluated = [
    S("star", "yellow", "blue", "red"),
    S("star", "yellow", "green"),
    S("circle", "red", "blue"),
    NONE(),
  ];
  const base = [
    S("star", "yellow", "blue"),
    S("circle", "red", "blue"),
    S("circle", "red", "green"),
    S("circle", "blue", "red"),
  ];
  // p: star/yellow ½, circle/red ¼, none ¼; q: star/yellow ¼, circle/red ½, circle/blue ¼ → ½·(¼+¼+¼+¼)
  assert.equal(tvDistance(evaluated, base), 0.5);
  const r = classPreservation(evaluated, base, "star", [SIG], [0.1, 0.3]);
  assert.equal(r.score, 0.5);
  assert.equal(r.tv_distance, 0.5);
  assert.equal(r.shape_fidelity, 0.5);
  // seeds 1 (star/yellow → circle/red) and 3 (none → circle/blue) changed; a dot alone is no change
  assert.equal(r.changed, 0.5);
  assert.equal(r.subject_like, 0.25);
  close(r.pixel_distance, 0.2, "pixel distance");
  close(r.colour_diversity, (-(2 / 3) * Math.log(2 / 3) - (1 / 3) * Math.log(1 / 3)) / Math.log(6), "diversity");
  assert.equal(r.samples, 4);
  // Against itself: nothing moved.
  const self = classPreservation(base, base, "star", [SIG]);
  assert.equal(self.score, 1);
  assert.equal(self.changed, 0);
  assert.equal(self.pixel_distance, null);
  assert.throws(() => classPreservation(evaluated, base.slice(1), "star", [SIG]), /paired/);
});

test("colour diversity: 1 for all six colours evenly, 0 for one colour or none; sceneKey names misses", () => {
  const six = (["red", "orange", "yellow", "green", "blue", "purple"] as const).map((c) => S("square", c, null));
  close(colourDiversity(six), 1, "six");
  assert.equal(colourDiversity([S("star", "red", "blue"), S("circle", "red", "green"), NONE()]), 0);
  assert.equal(colourDiversity([NONE(), S("star", null, "blue")]), 0);
  assert.equal(sceneKey(NONE()), "none");
  assert.equal(sceneKey(S("star", null, "blue")), "star/unnamed");
});

test("mean pixel distance is the mean absolute byte difference over 255", () => {
  const a = { width: 2, height: 1, data: Uint8Array.from([0, 0, 0, 255, 255, 255]) };
  const b = { width: 2, height: 1, data: Uint8Array.from([255, 0, 0, 255, 255, 0]) };
  close(meanPixelDistance(a, b), 1 / 3, "distance");
  assert.equal(meanPixelDistance(a, a), 0);
  assert.throws(() => meanPixelDistance(a, { width: 1, height: 2, data: a.data }), /1x2/);
});

test("prompt following: requested background and the subject, pooled and split seen / new", () => {
  assert.deepEqual(followingBackgrounds(SIG), ["orange", "green", "blue", "purple"]);
  assert.deepEqual(followingBackgrounds({ shape: "circle", colour: "blue", dot: null }), [
    "red",
    "orange",
    "yellow",
    "green",
    "purple",
  ]);
  const groups = [
    {
      background: "green" as const,
      samples: [S("star", "yellow", "green", "red"), S("star", "yellow", "blue", "red"), S("star", "red", "green")],
    },
    { background: "orange" as const, samples: [S("star", "yellow", "orange", "red"), NONE("orange")] },
  ];
  const r = promptFollowing(groups, SIG, ["green", "blue", "purple"])!;
  assert.equal(r.share, 0.4);
  assert.equal(r.background_accuracy, 0.8);
  assert.equal(r.samples, 5);
  assert.deepEqual(r.seen, { share: 1 / 3, background_accuracy: 2 / 3, samples: 3 });
  assert.deepEqual(r.unseen, { share: 0.5, background_accuracy: 1, samples: 2 });
  assert.deepEqual(
    r.per_background.map((b) => [b.background, b.seen, b.share, b.background_accuracy]),
    [
      ["green", true, 1 / 3, 2 / 3],
      ["orange", false, 0.5, 1],
    ],
  );
  const unknown = promptFollowing(groups, SIG)!;
  assert.equal(unknown.seen, null);
  assert.equal(unknown.unseen, null);
  assert.equal(unknown.per_background[0].seen, null);
  // Only new backgrounds asked: no "seen" part.
  assert.equal(promptFollowing(groups.slice(1), SIG, ["green"])!.seen, null);
  assert.equal(promptFollowing([], SIG), null);
});

test("bleed: per ordered pair, the share of A's samples with B's distinguishing colour or dot", () => {
  const A = { token: "sks", signature: SIG };
  const B = { token: "zwx", signature: { shape: "circle", colour: "blue", dot: null } as Signature };
  const aSamples = [
    S("star", "yellow", "green", "red"),
    S("star", "blue", "green", "red"), // B's colour
    S("star", "blue", "purple"), // B's colour
    NONE(),
  ];
  const bSamples = [
    S("circle", "blue", "red"),
    S("circle", "blue", "red"),
    S("circle", "blue", "green", "red"), // A's dot
    S("circle", "blue", "green"),
  ];
  assert.equal(bleed([{ ...A, samples: aSamples }]), null);
  const r = bleed([
    { ...A, samples: aSamples },
    { ...B, samples: bSamples },
  ])!;
  assert.deepEqual(r.pairs, [
    // B has no dot: only its colour is looked for in A's samples.
    { from: "sks", to: "zwx", attributes: { colour: "blue" }, share: 0.5 },
    { from: "zwx", to: "sks", attributes: { colour: "yellow", dot: "red" }, share: 0.25 },
  ]);
  assert.equal(r.share, 0.375);
  // A subject that differs only in shape has nothing to bleed: that pair is null and left out of the mean.
  const C = { token: "qrs", signature: { shape: "circle", colour: "yellow", dot: "red" } as Signature };
  const r3 = bleed([
    { ...A, samples: aSamples },
    { ...C, samples: [S("circle", "yellow", "blue", "red")] },
  ])!;
  assert.deepEqual(
    r3.pairs.map((p) => p.share),
    [null, null],
  );
  assert.equal(r3.share, null);
});

test("evalPrompts words the prompts as the training captions, and scoreRuns scores them", () => {
  const subjects: EvalSubject[] = [defaultSubject()];
  const prompts = evalPrompts(subjects);
  assert.deepEqual(
    prompts.map((p) => p.text),
    [
      "a sks star",
      "a star",
      "a sks star on an orange background",
      "a sks star on a green background",
      "a sks star on a blue background",
      "a sks star on a purple background",
    ],
  );
  const subject = (bg: Colour) => S("star", "yellow", bg, "red");
  const runs: PromptSamples[] = prompts.map((prompt) => ({
    prompt,
    samples:
      prompt.kind === "class"
        ? [S("star", "yellow", "blue", "red"), S("star", "green", "blue")]
        : [subject(prompt.background ?? "green"), S("star", "yellow", "purple")],
  }));
  const baseRuns: PromptSamples[] = prompts.map((prompt) => ({
    prompt,
    samples: [S("star", "red", "blue"), S("star", "green", "blue")],
  }));
  const s = scoreRuns(subjects, runs, baseRuns);
  assert.equal(s.identity, 0.5);
  assert.equal(s.class_preservation, 0.5);
  assert.equal(s.class_preservation_details!.changed, 0.5);
  assert.equal(s.class_preservation_details!.subject_like, 0.5);
  assert.equal(s.prompt_following, 0.5);
  assert.equal(s.prompt_following_details!.seen, 0.5);
  assert.equal(s.prompt_following_details!.unseen, 0.5);
  assert.equal(s.bleed, null);
  const b = scoreRuns(subjects, baseRuns, baseRuns);
  assert.equal(b.identity, 0);
  assert.equal(b.class_preservation, 1);
  assert.equal(b.prompt_following, 0);
  assert.equal(b.prompt_following_details!.background_accuracy, 0.25); // only the blue-background prompt
});
