// sfc32, Chris Doty-Humphrey's Small Fast Counting RNG (PractRand-clean): the
// generator behind Atelier's JS-side randomness (data order, caption
// shuffling, the shapes world). Pure 32-bit integer arithmetic, so the same
// state gives the same numbers everywhere. Callers derive the four state
// words from their own seeds.
export class Sfc32 {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(a: number, b: number, c: number, d: number) {
    [this.#a, this.#b, this.#c, this.#d] = [a | 0, b | 0, c | 0, d | 0];
    for (let i = 0; i < 12; i++) this.next32(); // mix the seed before use
  }

  /** Uniform in [0, 2^32). */
  next32(): number {
    let t = (this.#a + this.#b) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#d = (this.#d + 1) | 0;
    t = (t + this.#d) | 0;
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }
}
