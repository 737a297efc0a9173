// Degradations that stand in for what a VAE round trip or a model's sampling
// does to a world image, to measure how the analyser holds up: Gaussian blur,
// additive Gaussian noise, a colour cast, and an antialiased bilinear resize
// (Pillow's BILINEAR: a triangle filter widened by the scale factor when shrinking).
import { normal, type Random, uniform } from "./rng.js";
import type { Image } from "./world.js";

const clampByte = (v: number): number => (v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v));

/** One separable pass along x (`horizontal`) or y, with a row of weights per output index. */
function pass(
  src: Float32Array,
  w: number,
  h: number,
  outLen: number,
  horizontal: boolean,
  taps: (o: number) => { first: number; weights: number[] },
): Float32Array {
  const ow = horizontal ? outLen : w;
  const oh = horizontal ? h : outLen;
  const out = new Float32Array(ow * oh * 3);
  const inLen = horizontal ? w : h;
  for (let o = 0; o < outLen; o++) {
    const { first, weights } = taps(o);
    const lines = horizontal ? h : w;
    for (let l = 0; l < lines; l++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let k = 0; k < weights.length; k++) {
        const i = Math.min(inLen - 1, Math.max(0, first + k)); // edges repeat
        const at = (horizontal ? l * w + i : i * w + l) * 3;
        r += weights[k] * src[at];
        g += weights[k] * src[at + 1];
        b += weights[k] * src[at + 2];
      }
      const to = (horizontal ? l * ow + o : o * ow + l) * 3;
      out[to] = r;
      out[to + 1] = g;
      out[to + 2] = b;
    }
  }
  return out;
}

function toImage(f: Float32Array, width: number, height: number): Image {
  return { width, height, data: Uint8Array.from(f, clampByte) };
}

/** Gaussian blur with standard deviation `sigma` pixels (kernel radius ⌈3σ⌉, edges repeated). */
export function gaussianBlur(img: Image, sigma: number): Image {
  if (!(sigma > 0)) return { ...img, data: img.data.slice() };
  const radius = Math.ceil(3 * sigma);
  const k = Array.from({ length: 2 * radius + 1 }, (_, i) => Math.exp(-((i - radius) ** 2) / (2 * sigma * sigma)));
  const sum = k.reduce((a, b) => a + b, 0);
  const weights = k.map((v) => v / sum);
  const taps = (o: number) => ({ first: o - radius, weights });
  const { width: w, height: h } = img;
  const x = pass(Float32Array.from(img.data), w, h, w, true, taps);
  return toImage(pass(x, w, h, h, false, taps), w, h);
}

/** Adds independent N(0, sigma²) noise (sigma in 0–255 units) to every channel, then rounds and clamps. */
export function addNoise(img: Image, sigma: number, rng: Random): Image {
  return { ...img, data: Uint8Array.from(img.data, (v) => clampByte(v + sigma * normal(rng))) };
}

/** Shifts each channel of the whole image by its own uniform offset in [−amplitude, amplitude] (a VAE's colour cast). */
export function colourCast(img: Image, amplitude: number, rng: Random): Image {
  const off = [0, 1, 2].map(() => uniform(rng, -amplitude, amplitude));
  return { ...img, data: Uint8Array.from(img.data, (v, i) => clampByte(v + off[i % 3])) };
}

// Pillow's resample support for BILINEAR: a triangle filter of radius 1, scaled by the shrink factor.
function triangleTaps(inLen: number, outLen: number) {
  const scale = inLen / outLen;
  const support = Math.max(1, scale);
  return (o: number) => {
    const centre = (o + 0.5) * scale; // in input pixel units, pixel i spans [i, i + 1)
    const first = Math.floor(centre - support);
    const last = Math.ceil(centre + support);
    const weights: number[] = [];
    for (let i = first; i <= last; i++) weights.push(Math.max(0, 1 - Math.abs(i + 0.5 - centre) / support));
    const sum = weights.reduce((a, b) => a + b, 0);
    return { first, weights: weights.map((v) => v / sum) };
  };
}

/** Resizes with an antialiased bilinear filter (as Pillow's Image.resize(…, BILINEAR)). */
export function resizeBilinear(img: Image, width: number, height: number): Image {
  const { width: w, height: h } = img;
  const x = pass(Float32Array.from(img.data), w, h, width, true, triangleTaps(w, width));
  return toImage(pass(x, width, h, height, false, triangleTaps(h, height)), width, height);
}

/** Shrinks by `factor` and enlarges back: what an 8× latent grid keeps, roughly (a real VAE keeps more). */
export function downUp(img: Image, factor: number): Image {
  const small = resizeBilinear(
    img,
    Math.max(1, Math.round(img.width / factor)),
    Math.max(1, Math.round(img.height / factor)),
  );
  return resizeBilinear(small, img.width, img.height);
}
