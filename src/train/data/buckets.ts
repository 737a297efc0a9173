// Aspect-ratio buckets as kohya sd-scripts makes them: the bucket set from
// library/model_util.py make_bucket_resolutions, and the choice of bucket per
// image from library/train_util.py BucketManager.select_bucket (the
// predefined-bucket branch: nearest aspect ratio, first one on a tie, an exact
// size match wins). Sizes are (width, height).

export type Size = [number, number];

export interface BucketOptions {
  /** min_bucket_reso (kohya default 256). */
  minReso?: number;
  /** max_bucket_reso (kohya default 1024). */
  maxReso?: number;
  /** bucket_reso_steps (kohya default 64). */
  step?: number;
}

/**
 * kohya make_bucket_resolutions(max_reso, min_size, max_size, divisible):
 * the square of the largest multiple of `step` within the area, and for each
 * width from min to max in steps, the tallest height (a multiple of step,
 * capped at max) whose area stays within `resolution`'s area; both
 * orientations; sorted by (width, height).
 */
export function makeBucketResolutions(resolution: Size | number, o: BucketOptions = {}): Size[] {
  const [maxW, maxH] = typeof resolution === "number" ? [resolution, resolution] : resolution;
  const minSize = o.minReso ?? 256;
  const maxSize = o.maxReso ?? 1024;
  const step = o.step ?? 64;
  checkBucketOptions(maxW, maxH, minSize, maxSize, step);
  const maxArea = maxW * maxH;
  const resos = new Map<string, Size>();
  const add = (w: number, h: number) => resos.set(`${w}x${h}`, [w, h]);

  const square = Math.floor(Math.sqrt(maxArea) / step) * step;
  add(square, square);
  for (let width = minSize; width <= maxSize; width += step) {
    const height = Math.min(maxSize, Math.floor(Math.floor(maxArea / width) / step) * step);
    if (height >= minSize) {
      add(width, height);
      add(height, width);
    }
  }
  return [...resos.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
}

function checkBucketOptions(maxW: number, maxH: number, minSize: number, maxSize: number, step: number): void {
  const positive = (v: number) => Number.isInteger(v) && v > 0;
  if (![maxW, maxH, minSize, maxSize, step].every(positive)) {
    throw new Error(
      `bucket settings must be positive integers (resolution ${maxW}x${maxH}, min ${minSize}, max ${maxSize}, step ${step})`,
    );
  }
  // kohya BucketManager.__init__ asserts these.
  if (maxSize < maxW || maxSize < maxH)
    throw new Error(`max bucket reso ${maxSize} is below the resolution ${maxW}x${maxH}`);
  if (maxSize < minSize) throw new Error(`max bucket reso ${maxSize} is below min bucket reso ${minSize}`);
}

/**
 * kohya select_bucket (no_upscale off): the bucket itself when the image has
 * exactly its size, else the one with the nearest aspect ratio (np.argmin:
 * the first in sorted order on a tie).
 */
export function selectBucket(width: number, height: number, buckets: readonly Size[]): Size {
  if (buckets.length === 0) throw new Error("selectBucket: no buckets");
  const exact = buckets.find(([w, h]) => w === width && h === height);
  if (exact) return exact;
  const ar = width / height;
  let best = buckets[0];
  let bestError = Number.POSITIVE_INFINITY;
  for (const b of buckets) {
    const error = Math.abs(b[0] / b[1] - ar);
    if (error < bestError) {
      best = b;
      bestError = error;
    }
  }
  return best;
}

/** A bucket's key in maps and plans. */
export const bucketKey = (s: Size): string => `${s[0]}x${s[1]}`;
