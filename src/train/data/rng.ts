// A small seeded PRNG for the data pipeline (bucket and batch order, caption
// shuffling and dropout, class-image pairing). Each use draws from its own
// stream, derived from (seed, epoch, purpose, …) by SHA-256, so the order of
// one epoch never depends on what another part consumed: the data order of
// epoch e is a pure function of the seed, and a run resumed at step k sees
// exactly the batches it would have seen. The generator is sfc32 (Chris
// Doty-Humphrey's Small Fast Counting RNG, PractRand-clean).
import { createHash } from "node:crypto";
import { Sfc32 } from "../../engine/sfc32.js";

export class Rng {
  readonly #g: Sfc32;

  /** A stream named by its parts (numbers and strings), e.g. `new Rng(seed, epoch, "order")`. */
  constructor(...parts: (number | string)[]) {
    const h = createHash("sha256").update(JSON.stringify(parts)).digest();
    this.#g = new Sfc32(h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12));
  }

  #next32(): number {
    return this.#g.next32();
  }

  /** Uniform in [0, 1), 53 bits. */
  next(): number {
    const hi = this.#next32() >>> 5;
    const lo = this.#next32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n), without modulo bias. */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 2 ** 32) throw new Error(`Rng.int: bad range ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const x = this.#next32();
      if (x < limit) return x % n;
    }
  }

  /** Fisher–Yates, in place; returns the array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }

  /** A non-negative integer below 2^53, e.g. a torch Generator seed. */
  seed(): number {
    return Math.floor(this.next() * 2 ** 53);
  }
}
