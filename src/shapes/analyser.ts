// Reads a shapes-world image back: the object's shape, colour, the background
// colour (and a centred dot, the Dreambooth subject's detail), with no learned
// model, so that it can score what a model draws. Pure TypeScript over the
// pixels, deterministic, about a millisecond for a 64×64 image.
//
// - background: the per-channel median of a border ring, named by the nearest palette colour;
// - object: the largest 8-connected region of pixels far from the background
//   (beyond 40, or 3× the border's own median scatter when it is noisy), holes filled;
// - colour: each region pixel is named by the palette colour c whose segment
//   background→c passes closest to it (a blurred or shrunken object is a mix of
//   its colour and the background's); the most named colour wins, so a dot
//   does not sway it;
// - shape: soft coverage α = clamp(t), t the pixel's position on the
//   background→object colour segment (anti-aliasing and blur become sub-pixel
//   edge positions); the radial profile r(θ) = ∫α along rays from the centroid,
//   and its Fourier harmonics: a triangle's profile repeats 3 times a turn, a
//   square's 4, a star's 5, a circle's not at all. Rotation does not matter;
// - dot: a centred patch inside the object off that colour segment (or a hole).
import { COLOURS, type Colour, PALETTE, type RGB, type Shape } from "./world.js";

export interface PixelImage {
  width: number;
  height: number;
  /** 8-bit RGB or RGBA, rows top to bottom. */
  data: Uint8Array;
  channels?: 3 | 4;
}

export interface Analysis {
  /** false: no object stands out from the background (shape, colour and dot are then null). */
  found: boolean;
  shape: Shape | null;
  /** null also when found but far from every palette colour (as `background` for a white or grey border). */
  colour: Colour | null;
  background: Colour | null;
  /** Colour of a dot in the object's centre (the subject's detail), or null. */
  dot: Colour | null;
  /** 0–1: the least sure of the three answers (each is a margin over the runner-up). */
  confidence: number;
  confidences: { shape: number; colour: number; background: number };
  /** What the answers were read from. */
  measured: {
    background: RGB;
    colour: RGB | null;
    /** Object area in pixels (soft coverage) and centroid. */
    area: number;
    cx: number;
    cy: number;
    /** Relative amplitudes of harmonics 1–8 of the radial profile. */
    harmonics: number[];
  };
}

/**
 * Which harmonic of the radial profile marks each shape, and its weight. Clean
 * shapes give a3 = 0.27 (triangle), a4 = 0.14 (square), a5 = 0.31 (star) and
 * under 0.005 elsewhere; blur shrinks the star's thin points most, hence its 1.3.
 */
const HARMONIC: Record<Exclude<Shape, "circle">, [number, number]> = {
  triangle: [3, 1],
  square: [4, 1],
  star: [5, 1.3],
};
/** A profile whose weighted harmonics all stay below this is round (a circle scores ≤ 0.03 even after an 8× down-up). */
const CIRCLE_BELOW = 0.03;
/** Further than this from every palette colour (or mix), a colour has no name (white, black, grey…). */
const UNNAMED = 100;
/** The least share of its own colour a pixel is taken to hold when named by its mix with the background. */
const MIN_MIX = 0.2;
const ANGLES = 128;
const STEP = 0.25;

/** The value of rank ⌊q·(n−1)⌋ among `values[idx]` (quickselect on a copy: linear time). */
function quantile(values: ArrayLike<number>, idx: ArrayLike<number>, q: number): number {
  const a = new Float64Array(idx.length);
  for (let i = 0; i < a.length; i++) a[i] = values[idx[i]];
  if (a.length === 0) return Number.NaN;
  const k = Math.floor(q * (a.length - 1));
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        [a[i], a[j]] = [a[j], a[i]];
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break;
  }
  return a[k];
}

/** Per-channel median of the pixels `idx` (256-bin histograms). */
function medianColour(data: Uint8Array, ch: number, idx: ArrayLike<number>): RGB {
  const out = [0, 0, 0];
  for (let c = 0; c < 3; c++) {
    const hist = new Uint32Array(256);
    for (let i = 0; i < idx.length; i++) hist[data[idx[i] * ch + c]]++;
    let seen = hist[0];
    let v = 0;
    while (v < 255 && seen * 2 < idx.length) seen += hist[++v];
    out[c] = v;
  }
  return out as unknown as RGB;
}

const norm3 = (a: number, b: number, c: number): number => Math.sqrt(a * a + b * b + c * c);
const dist = (a: RGB, b: RGB): number => norm3(a[0] - b[0], a[1] - b[1], a[2] - b[2]);

/** The nearest colours' names, best first, with their distances. */
function rank(scores: [Colour, number][]): { best: Colour | null; confidence: number } {
  scores.sort((a, b) => a[1] - b[1]);
  const [d1, d2] = [scores[0][1], scores[1]?.[1] ?? Number.POSITIVE_INFINITY];
  if (d1 > UNNAMED) return { best: null, confidence: 0 };
  return { best: scores[0][0], confidence: d2 > 0 ? Math.max(0, Math.min(1, 1 - d1 / d2)) : 0 };
}

/** Names `rgb`, seen on background `bg`, by the palette colour whose mix with bg comes closest. */
function nameOnBackground(rgb: RGB, bg: RGB, exclude: Colour | null): { best: Colour | null; confidence: number } {
  const scores: [Colour, number][] = [];
  for (const c of COLOURS) {
    if (c === exclude) continue;
    const p = PALETTE[c];
    const v = [p[0] - bg[0], p[1] - bg[1], p[2] - bg[2]];
    const q = [rgb[0] - bg[0], rgb[1] - bg[1], rgb[2] - bg[2]];
    const vv = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    const a = vv > 0 ? Math.max(MIN_MIX, Math.min(1, (q[0] * v[0] + q[1] * v[1] + q[2] * v[2]) / vv)) : 1;
    scores.push([c, norm3(q[0] - a * v[0], q[1] - a * v[1], q[2] - a * v[2])]);
  }
  return rank(scores);
}

/** Each pixel of `idx` named as in nameOnBackground (inlined: this runs per pixel); the most named colour. */
function voteColours(data: Uint8Array, ch: number, idx: Int32Array, bg: RGB, exclude: Colour | null) {
  const names = COLOURS.filter((c) => c !== exclude);
  const vs = names.map((c) => [PALETTE[c][0] - bg[0], PALETTE[c][1] - bg[1], PALETTE[c][2] - bg[2]]);
  const vvs = vs.map((v) => Math.max(1, v[0] * v[0] + v[1] * v[1] + v[2] * v[2]));
  const of = new Uint8Array(idx.length);
  const counts = new Uint32Array(names.length);
  for (let k = 0; k < idx.length; k++) {
    const j = idx[k] * ch;
    const q0 = data[j] - bg[0];
    const q1 = data[j + 1] - bg[1];
    const q2 = data[j + 2] - bg[2];
    let best = 0;
    let bestD = Number.POSITIVE_INFINITY;
    for (let c = 0; c < names.length; c++) {
      const v = vs[c];
      const a = Math.max(MIN_MIX, Math.min(1, (q0 * v[0] + q1 * v[1] + q2 * v[2]) / vvs[c]));
      const e = (q0 - a * v[0]) ** 2 + (q1 - a * v[1]) ** 2 + (q2 - a * v[2]) ** 2;
      if (e < bestD) [best, bestD] = [c, e];
    }
    of[k] = best;
    counts[best]++;
  }
  let best = 0;
  for (let c = 1; c < names.length; c++) if (counts[c] > counts[best]) best = c;
  return { of, best, names };
}

function nearest(rgb: RGB, exclude: Colour | null = null): { best: Colour | null; confidence: number } {
  return rank(COLOURS.filter((c) => c !== exclude).map((c): [Colour, number] => [c, dist(rgb, PALETTE[c])]));
}

/** Pixels of `mask` 8-connected to each other; the largest such region (a list of pixel indices). */
function largestComponent(mask: Uint8Array, w: number, h: number): Int32Array {
  const seen = new Uint8Array(mask.length);
  const queue = new Int32Array(mask.length);
  let best: Int32Array = new Int32Array(0);
  for (let s = 0; s < mask.length; s++) {
    if (!mask[s] || seen[s]) continue;
    let head = 0;
    let tail = 0;
    queue[tail++] = s;
    seen[s] = 1;
    while (head < tail) {
      const p = queue[head++];
      const x = p % w;
      const y = (p - x) / w;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          const ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
          const q = ny * w + nx;
          if (mask[q] && !seen[q]) {
            seen[q] = 1;
            queue[tail++] = q;
          }
        }
      }
    }
    if (tail > best.length) best = queue.slice(0, tail);
  }
  return best;
}

/** Pixels not in `region` that cannot reach the image border through non-region pixels (4-connected). */
function holes(region: Uint8Array, w: number, h: number): Uint8Array {
  const outside = new Uint8Array(region.length);
  const queue = new Int32Array(region.length);
  let tail = 0;
  const push = (q: number) => {
    if (!region[q] && !outside[q]) {
      outside[q] = 1;
      queue[tail++] = q;
    }
  };
  for (let x = 0; x < w; x++) {
    push(x);
    push((h - 1) * w + x);
  }
  for (let y = 0; y < h; y++) {
    push(y * w);
    push(y * w + w - 1);
  }
  for (let head = 0; head < tail; head++) {
    const p = queue[head];
    const x = p % w;
    if (x > 0) push(p - 1);
    if (x < w - 1) push(p + 1);
    if (p >= w) push(p - w);
    if (p < (h - 1) * w) push(p + w);
  }
  const out = new Uint8Array(region.length);
  for (let i = 0; i < out.length; i++) out[i] = region[i] | outside[i] ? 0 : 1;
  return out;
}

/** Chebyshev dilation by `r` pixels (separable max filter). */
function dilate(mask: Uint8Array, w: number, h: number, r: number): Uint8Array {
  const a = new Uint8Array(mask.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!mask[y * w + x]) continue;
      for (let k = Math.max(0, x - r); k <= Math.min(w - 1, x + r); k++) a[y * w + k] = 1;
    }
  }
  const b = new Uint8Array(mask.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!a[y * w + x]) continue;
      for (let k = Math.max(0, y - r); k <= Math.min(h - 1, y + r); k++) b[k * w + x] = 1;
    }
  }
  return b;
}

function notFound(background: Colour | null, bg: RGB, bgConfidence: number): Analysis {
  return {
    found: false,
    shape: null,
    colour: null,
    background,
    dot: null,
    confidence: 0,
    confidences: { shape: 0, colour: 0, background: bgConfidence },
    measured: { background: bg, colour: null, area: 0, cx: Number.NaN, cy: Number.NaN, harmonics: [] },
  };
}

/**
 * Relative amplitudes of harmonics 1–8 of the radial profile r(θ) = ∫ α along
 * rays from (cx, cy), α bilinear between pixel centres (read from a zero-padded
 * copy, so rays need no bounds checks until they leave the band).
 */
function profileHarmonics(
  alpha: Float32Array,
  band: Uint8Array,
  w: number,
  h: number,
  cx: number,
  cy: number,
): number[] {
  const n = w * h;
  const pw = w + 2;
  const padded = new Float32Array(pw * (h + 2));
  let reach = 0;
  for (let i = 0; i < n; i++) {
    if (!band[i]) continue;
    const x = i % w;
    const y = (i - x) / w;
    padded[(y + 1) * pw + x + 1] = alpha[i];
    reach = Math.max(reach, Math.hypot(Math.abs(x + 0.5 - cx) + 1, Math.abs(y + 0.5 - cy) + 1));
  }
  const profile = new Float64Array(ANGLES);
  for (let k = 0; k < ANGLES; k++) {
    const a = (2 * Math.PI * k) / ANGLES;
    const [dx, dy] = [Math.cos(a), Math.sin(a)];
    let r = 0;
    for (let s = STEP / 2; s < reach; s += STEP) {
      const fx = cx + s * dx + 0.5; // pixel-centre coordinates, +1 for the padding
      const fy = cy + s * dy + 0.5;
      if (fx < 0 || fy < 0 || fx >= w + 1 || fy >= h + 1) break;
      const x0 = Math.floor(fx);
      const y0 = Math.floor(fy);
      const ax = fx - x0;
      const ay = fy - y0;
      const o = y0 * pw + x0;
      r +=
        (1 - ay) * ((1 - ax) * padded[o] + ax * padded[o + 1]) +
        ay * ((1 - ax) * padded[o + pw] + ax * padded[o + pw + 1]);
    }
    profile[k] = r * STEP;
  }
  const mean = profile.reduce((a, b) => a + b, 0) / ANGLES;
  return Array.from({ length: 8 }, (_, j) => {
    let re = 0;
    let im = 0;
    for (let k = 0; k < ANGLES; k++) {
      const a = (2 * Math.PI * (j + 1) * k) / ANGLES;
      re += profile[k] * Math.cos(a);
      im -= profile[k] * Math.sin(a);
    }
    return (2 * Math.hypot(re, im)) / ANGLES / mean;
  });
}

/** Reads shape, colour and background of a shapes-world image (any size; clean, blurred or noisy). */
export function analyse(img: PixelImage): Analysis {
  const { width: w, height: h, data } = img;
  const ch = img.channels ?? (data.length === w * h * 4 ? 4 : 3);
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 8 || h < 8) throw new Error(`analyse: bad size ${w}x${h}`);
  if (data.length !== w * h * ch) throw new Error(`analyse: ${data.length} bytes for ${w}x${h}x${ch}`);
  const n = w * h;

  // Background: the border ring's median colour.
  const ring = Math.max(1, Math.round(Math.min(w, h) / 32));
  const border: number[] = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (x < ring || y < ring || x >= w - ring || y >= h - ring) border.push(y * w + x);
    }
  }
  const bg = medianColour(data, ch, border);
  const bgName = nearest(bg);
  const d = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    d[i] = norm3(data[i * ch] - bg[0], data[i * ch + 1] - bg[1], data[i * ch + 2] - bg[2]);
  }
  // A pixel stands out when it is much further from bg than the border's own scatter (noise).
  const threshold = Math.max(40, 3 * quantile(d, border, 0.5));
  const minArea = Math.max(6, Math.round(n * 0.003));
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = d[i] > threshold ? 1 : 0;
  const comp = largestComponent(mask, w, h);
  if (comp.length < minArea) return notFound(bgName.best, bg, bgName.confidence);

  // Object colour: the palette colour most of the region's pixels are a mix of
  // (with the background), so a dot or a two-tone part does not sway it; its
  // RGB is the median of the purest (furthest from bg) of those pixels.
  const votes = voteColours(data, ch, comp, bg, bgName.best);
  const voters = comp.filter((_, k) => votes.of[k] === votes.best);
  const pure = 0.9 * quantile(d, voters, 0.9);
  const fg = medianColour(
    data,
    ch,
    voters.filter((i) => d[i] >= pure),
  );
  const colour = nameOnBackground(fg, bg, bgName.best);

  // Soft coverage α: clamp(t), t the position on the background→object colour
  // segment (anti-aliasing and blur become sub-pixel edge positions); 1 for
  // holes and for pixels off that segment (another colour inside the object).
  const v = [fg[0] - bg[0], fg[1] - bg[1], fg[2] - bg[2]];
  const vv = Math.max(1, v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  const t = new Float32Array(n);
  const off = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const q0 = data[i * ch] - bg[0];
    const q1 = data[i * ch + 1] - bg[1];
    const q2 = data[i * ch + 2] - bg[2];
    t[i] = (q0 * v[0] + q1 * v[1] + q2 * v[2]) / vv;
    const a = Math.max(0, Math.min(1, t[i]));
    off[i] = norm3(q0 - a * v[0], q1 - a * v[1], q2 - a * v[2]) > threshold ? 1 : 0;
  }
  const region = new Uint8Array(n);
  for (const i of comp) region[i] = 1;
  const hole = holes(region, w, h);
  const filled = new Uint8Array(n);
  for (let i = 0; i < n; i++) filled[i] = region[i] | hole[i];
  const band = dilate(filled, w, h, Math.max(2, Math.round(Math.min(w, h) / 24)));
  const inner = new Uint8Array(n);
  for (let y = 1; y < h - 1; y++) {
    for (let i = y * w + 1; i < y * w + w - 1; i++) {
      inner[i] = filled[i] & filled[i - 1] & filled[i + 1] & filled[i - w] & filled[i + w];
    }
  }
  const alpha = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    alpha[i] = hole[i] || (filled[i] && off[i]) ? 1 : band[i] ? Math.max(0, Math.min(1, t[i])) : 0;
  }
  let area = 0;
  let sx = 0;
  let sy = 0;
  for (let i = 0; i < n; i++) {
    area += alpha[i];
    sx += alpha[i] * ((i % w) + 0.5);
    sy += alpha[i] * (Math.floor(i / w) + 0.5);
  }
  const cx = sx / area;
  const cy = sy / area;

  const harmonics = profileHarmonics(alpha, band, w, h, cx, cy);
  const shapeScores = (Object.keys(HARMONIC) as Exclude<Shape, "circle">[])
    .map((s): [Shape, number] => [s, harmonics[HARMONIC[s][0] - 1] * HARMONIC[s][1]])
    .sort((a, b) => b[1] - a[1]);
  const [top, second] = shapeScores;
  const shape: Shape = top[1] < CIRCLE_BELOW ? "circle" : top[0];
  const shapeConfidence =
    shape === "circle" ? 1 - top[1] / CIRCLE_BELOW : Math.min(1 - second[1] / top[1], top[1] / CIRCLE_BELOW - 1, 1);

  const dot = findDot(data, ch, w, h, { fg, hole, inner, off, cx, cy, area });
  const confidences = { shape: Math.max(0, shapeConfidence), colour: colour.confidence, background: bgName.confidence };
  return {
    found: true,
    shape,
    colour: colour.best,
    background: bgName.best,
    dot,
    confidence: Math.min(confidences.shape, confidences.colour, confidences.background),
    confidences,
    measured: { background: bg, colour: fg, area, cx, cy, harmonics },
  };
}

interface DotContext {
  fg: RGB;
  hole: Uint8Array;
  inner: Uint8Array;
  off: Uint8Array;
  cx: number;
  cy: number;
  area: number;
}

/**
 * A centred patch of another colour inside the object: interior pixels off the
 * background→object colour segment (edge pixels are mixes on it), or holes.
 */
function findDot(data: Uint8Array, ch: number, w: number, h: number, c: DotContext): Colour | null {
  const mask = new Uint8Array(w * h);
  for (let i = 0; i < mask.length; i++) mask[i] = c.hole[i] | (c.inner[i] & c.off[i]);
  const comp = largestComponent(mask, w, h);
  if (comp.length < Math.max(4, 0.03 * c.area)) return null;
  let sx = 0;
  let sy = 0;
  for (const i of comp) {
    sx += (i % w) + 0.5;
    sy += Math.floor(i / w) + 0.5;
  }
  const off = Math.hypot(sx / comp.length - c.cx, sy / comp.length - c.cy);
  if (off > 0.35 * Math.sqrt(c.area / Math.PI)) return null;
  // Its purest pixels (furthest from the object's colour): a blurred dot's rim is a mix.
  const away = new Float32Array(w * h);
  for (const i of comp) away[i] = norm3(data[i * ch] - c.fg[0], data[i * ch + 1] - c.fg[1], data[i * ch + 2] - c.fg[2]);
  const pure = 0.9 * quantile(away, comp, 0.9);
  return nearest(
    medianColour(
      data,
      ch,
      comp.filter((i) => away[i] >= pure),
    ),
  ).best;
}
