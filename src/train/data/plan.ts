// The order of an epoch as plain data. As kohya's BaseDataset.make_buckets /
// shuffle_buckets (library/train_util.py): every instance image appears
// `repeats` times in its bucket, each bucket is shuffled and cut into batches
// of batchSize (the last one may be smaller), and the list of all batches is
// shuffled, so a batch always comes from one bucket. With prior preservation
// each instance example gets a class example of its concept from the same
// bucket (the A1111 extension's DbDataset.shuffle_buckets pairs them by
// bucket; diffusers train_dreambooth's collate_fn puts instance examples
// first, then class ones). Everything random comes from Rng streams named by
// (seed, epoch, …), so planEpoch(input, e) is a pure function: a run saves
// (epoch, step), or the plan itself, and resumes exactly.
import { createHash } from "node:crypto";
import { bucketKey, type Size } from "./buckets.js";
import { type CaptionOptions, processCaption } from "./captions.js";
import { Rng } from "./rng.js";

export const PLAN_FORMAT = "atelier-epoch-plan/1";

/** One image as the planner sees it. */
export interface PlanImage {
  path: string;
  bucket: Size;
  concept: number;
  /** The prompt before caption processing (template applied). */
  prompt: string;
}

export interface PlanInput {
  seed: number;
  /** Instance examples per batch. */
  batchSize: number;
  instances: readonly PlanImage[];
  /** Class images; empty without prior preservation. */
  classes: readonly PlanImage[];
  /** Per concept: repeats and caption processing. */
  concepts: readonly (CaptionOptions & { repeats?: number })[];
}

export interface PlannedItem {
  path: string;
  isClass: boolean;
  concept: number;
  /** The prompt after caption processing (shuffle, dropout). */
  prompt: string;
}

export interface PlannedBatch {
  bucket: Size;
  /** Instance items first, then their class partners in the same order. */
  items: PlannedItem[];
}

export interface EpochPlan {
  format: typeof PLAN_FORMAT;
  epoch: number;
  seed: number;
  /** planFingerprint of the dataset it was made for. */
  dataset: string;
  batches: PlannedBatch[];
}

/** What decides the order: images, buckets, repeats, batch size, seed. A saved plan fits only its dataset. */
export function planFingerprint(input: PlanInput): string {
  const h = createHash("sha256");
  h.update(JSON.stringify([PLAN_FORMAT, input.seed, input.batchSize]));
  for (const [list, isClass] of [
    [input.instances, false],
    [input.classes, true],
  ] as const) {
    for (const im of list) {
      const repeats = isClass ? 0 : (input.concepts[im.concept]?.repeats ?? 1);
      h.update(JSON.stringify([im.path, isClass, im.concept, bucketKey(im.bucket), repeats]));
    }
  }
  return h.digest("hex");
}

/** Instance images (with repeats) by bucket, buckets in sorted order. */
function byBucket(input: PlanInput): { bucket: Size; items: PlanImage[] }[] {
  const groups = new Map<string, { bucket: Size; items: PlanImage[] }>();
  for (const im of input.instances) {
    const key = bucketKey(im.bucket);
    if (!groups.has(key)) groups.set(key, { bucket: im.bucket, items: [] });
    const repeats = input.concepts[im.concept]?.repeats ?? 1;
    for (let r = 0; r < repeats; r++) groups.get(key)!.items.push(im);
  }
  return [...groups.values()].sort((a, b) => a.bucket[0] - b.bucket[0] || a.bucket[1] - b.bucket[1]);
}

/** Batches per epoch: Σ over buckets of ceil(examples / batchSize). */
export function planLength(input: PlanInput): number {
  return byBucket(input).reduce((n, g) => n + Math.ceil(g.items.length / input.batchSize), 0);
}

/**
 * The class images a (concept, bucket) draws from: those of the concept in
 * the bucket, or, when it has none there, all of the concept's (they are then
 * resized and cropped to the bucket).
 */
export function classPool(input: PlanInput, concept: number, bucket: Size): PlanImage[] {
  const mine = input.classes.filter((c) => c.concept === concept);
  const same = mine.filter((c) => c.bucket[0] === bucket[0] && c.bucket[1] === bucket[1]);
  return same.length > 0 ? same : mine;
}

/** Cycles through a pool in shuffled order, reshuffling at each pass. */
class PoolCursor {
  #order: PlanImage[] = [];
  #at = 0;
  constructor(
    readonly pool: PlanImage[],
    readonly rng: Rng,
  ) {}
  next(): PlanImage {
    if (this.#at >= this.#order.length) {
      this.#order = this.rng.shuffle([...this.pool]);
      this.#at = 0;
    }
    return this.#order[this.#at++];
  }
}

export function planEpoch(input: PlanInput, epoch: number): EpochPlan {
  if (!Number.isInteger(epoch) || epoch < 0) throw new Error(`epoch must be an integer >= 0, got ${epoch}`);
  const { seed, batchSize } = input;
  const order = new Rng(seed, epoch, "order");
  const raw: { bucket: Size; items: PlanImage[] }[] = [];
  for (const g of byBucket(input)) {
    const items = order.shuffle([...g.items]);
    for (let i = 0; i < items.length; i += batchSize)
      raw.push({ bucket: g.bucket, items: items.slice(i, i + batchSize) });
  }
  order.shuffle(raw);

  const cursors = new Map<string, PoolCursor | null>();
  const partner = (concept: number, bucket: Size): PlanImage | undefined => {
    const key = `${concept}/${bucketKey(bucket)}`;
    if (!cursors.has(key)) {
      const pool = classPool(input, concept, bucket);
      cursors.set(
        key,
        pool.length ? new PoolCursor(pool, new Rng(seed, epoch, "class", concept, bucketKey(bucket))) : null,
      );
    }
    return cursors.get(key)?.next();
  };

  const batches = raw.map((b, k): PlannedBatch => {
    const inst = b.items.map((im, slot) => ({
      path: im.path,
      isClass: false,
      concept: im.concept,
      prompt: processCaption(im.prompt, input.concepts[im.concept] ?? {}, new Rng(seed, epoch, "caption", k, slot)),
    }));
    const cls: PlannedItem[] = [];
    for (const im of b.items) {
      const c = partner(im.concept, b.bucket);
      if (c) cls.push({ path: c.path, isClass: true, concept: c.concept, prompt: c.prompt });
    }
    return { bucket: b.bucket, items: [...inst, ...cls] };
  });
  return { format: PLAN_FORMAT, epoch, seed, dataset: planFingerprint(input), batches };
}

/** Checks that a plan (e.g. read back from a checkpoint's JSON) has the right shape and belongs to this dataset. */
export function checkPlan(plan: EpochPlan, input: PlanInput): void {
  if (plan?.format !== PLAN_FORMAT || !Array.isArray(plan.batches)) {
    throw new Error(`not an epoch plan (expected format ${PLAN_FORMAT})`);
  }
  if (plan.dataset !== planFingerprint(input)) {
    throw new Error(
      "the epoch plan was made for another dataset (its images, buckets, repeats, batch size or seed differ), so its order cannot be resumed here",
    );
  }
}
