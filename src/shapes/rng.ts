// The shapes world's own seeded PRNG: sfc32 (Chris Doty-Humphrey's Small Fast
// Counting RNG, PractRand-clean) seeded by hashing the stream's parts with
// murmur3's finaliser. Pure 32-bit integer arithmetic, so the same parts give
// the same numbers on every platform and Node version; never Math.random.

import { Sfc32 } from "../engine/sfc32.js";

/** What the world's samplers draw from; `next()` is uniform in [0, 1). */
export interface Random {
  next(): number;
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class WorldRng implements Random {
  readonly #g: Sfc32;

  /** A stream named by integers in [0, 2^53), e.g. `new WorldRng(seed, index)`. */
  constructor(...parts: number[]) {
    let h = 0x9e3779b9;
    const words: number[] = [parts.length];
    for (const p of parts) {
      if (!Number.isSafeInteger(p) || p < 0)
        throw new Error(`WorldRng: seed parts must be integers in [0, 2^53), got ${p}`);
      words.push(p >>> 0, Math.floor(p / 2 ** 32) >>> 0);
    }
    const state = [0, 0, 0, 0];
    for (let i = 0; i < 4; i++) {
      for (const w of words) h = fmix32((h ^ w) + Math.imul(i + 1, 0x27d4eb2f));
      state[i] = h;
    }
    this.#g = new Sfc32(state[0], state[1], state[2], state[3]);
  }

  /** Uniform in [0, 1) with 32 bits of resolution. */
  next(): number {
    return this.#g.next32() / 4294967296;
  }
}

/** Uniform integer in [0, n). */
export function randInt(rng: Random, n: number): number {
  return Math.min(n - 1, Math.floor(rng.next() * n));
}

/** Uniform in [lo, hi). */
export function uniform(rng: Random, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.next();
}

export function pick<T>(rng: Random, items: readonly T[]): T {
  return items[randInt(rng, items.length)];
}

/** Standard normal (Box–Muller; one of the pair is dropped to keep the stream simple). */
export function normal(rng: Random): number {
  const u = 1 - rng.next(); // (0, 1]: log stays finite
  const v = rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}
