// The numpy and float32 arithmetic diffusers' schedulers do on the host, in JS
// numbers, so that timesteps and sigmas come out the same to the last bit (or
// within one float32 ulp where numpy's transcendental functions are involved).

/** Rounds to float32: scalar maths on 0-d float32 tensors is emulated with this. */
export const f32 = Math.fround;

/** float32 sqrt, as `t ** 0.5` on a float32 tensor. */
export const sqrt32 = (x: number): number => Math.fround(Math.sqrt(x));

/** numpy.round / numpy.rint: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round sends .5 up; numpy sends it to the even integer.
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** numpy.linspace(start, stop, num) with endpoint=True, float64. */
export function linspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  const out: number[] = [];
  for (let i = 0; i < num; i++) out.push(step === 0 ? (i / (num - 1)) * (stop - start) + start : i * step + start);
  out[num - 1] = stop;
  return out;
}

/** numpy.arange(start, stop, step) with a float step: length ceil((stop−start)/step), start + i·delta. */
export function arange(start: number, stop: number, step: number): number[] {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  // numpy fills from the first two values: delta = (start + step) − start.
  const delta = start + step - start;
  return Array.from({ length: n }, (_, i) => start + i * delta);
}

/** numpy.interp(x, xp = [0, 1, …, n−1], fp) for one x (float64 arithmetic on the float32 fp values). */
export function interpIndex(x: number, fp: ArrayLike<number>): number {
  const n = fp.length;
  if (Number.isNaN(x)) return x;
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const j = Math.floor(x);
  if (j === x) return fp[j];
  const slope = fp[j + 1] - fp[j];
  return slope * (x - j) + fp[j];
}

/**
 * The Karras et al. (2022) sigmas, as diffusers' `_convert_to_karras` (rho 7):
 * from in_sigmas[0] to in_sigmas[last], whichever way round they are.
 */
export function karrasSigmas(inSigmas: ArrayLike<number>, n: number): number[] {
  const rho = 7.0;
  const sigmaMin = inSigmas[inSigmas.length - 1];
  const sigmaMax = inSigmas[0];
  const minInvRho = sigmaMin ** (1 / rho);
  const maxInvRho = sigmaMax ** (1 / rho);
  return linspace(0, 1, n).map((r) => (maxInvRho + r * (minInvRho - maxInvRho)) ** rho);
}

/**
 * diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is
 * `sigma`, interpolating log-sigma linearly. `logSigmas` (float32 values) must
 * ascend, as log((1 − ᾱ)/ᾱ)^½ does with t.
 */
export function sigmaToT(sigma: number, logSigmas: ArrayLike<number>): number {
  const logSigma = Math.log(sigma);
  const n = logSigmas.length;
  // cumsum(dists >= 0).argmax() is the last index with logSigmas[i] <= logSigma (0 when none).
  let low = 0;
  for (let i = 0; i < n; i++) if (logSigma - logSigmas[i] >= 0) low = i;
  low = Math.min(low, n - 2);
  const high = low + 1;
  const lo = logSigmas[low];
  const hi = logSigmas[high];
  let w = (lo - logSigma) / (lo - hi);
  w = Math.min(Math.max(w, 0), 1);
  return (1 - w) * low + w * high;
}

/**
 * The training sigmas ((1 − ᾱ)/ᾱ)^½, computed as diffusers does, in float32
 * torch ops on alphas_cumprod.
 */
export function trainSigmas(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((a) => sqrt32(f32(f32(1 - a) / a)));
}

/**
 * Inference timesteps, descending, by diffusers' `timestep_spacing` (DDPM,
 * DDIM, Euler `set_timesteps`): "linspace" spreads n over [0, T−1] (rounded
 * unless `roundLinspace` is false, as Euler keeps fractions), "leading" takes
 * multiples of ⌊T/n⌋ plus steps_offset, "trailing" counts down from T−1.
 */
export function spacedTimesteps(
  T: number,
  n: number,
  spacing: "leading" | "linspace" | "trailing",
  stepsOffset: number,
  roundLinspace = true,
): number[] {
  switch (spacing) {
    case "linspace":
      return linspace(0, T - 1, n)
        .map((t) => (roundLinspace ? roundHalfEven(t) : t))
        .reverse();
    case "leading": {
      const ratio = Math.floor(T / n);
      return Array.from({ length: n }, (_, i) => (n - 1 - i) * ratio + stepsOffset);
    }
    case "trailing":
      return arange(T, 0, -T / n).map((t) => roundHalfEven(t) - 1);
  }
}
