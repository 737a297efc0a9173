// Scheduler configuration with the field names of diffusers' scheduler_config.json,
// so that a model's `scheduler/scheduler_config.json` loads as is. Defaults are the
// diffusers 0.19.3 class defaults (huggingface/diffusers src/diffusers/schedulers/
// scheduling_ddpm.py, scheduling_ddim.py, scheduling_euler_discrete.py,
// scheduling_dpmsolver_multistep.py); fields they share but default differently
// (clip_sample, set_alpha_to_one, timestep_spacing) are filled in per sampler.
import { readFileSync } from "node:fs";

export type BetaSchedule = "linear" | "scaled_linear" | "squaredcos_cap_v2";
export type PredictionType = "epsilon" | "v_prediction";
export type TimestepSpacing = "leading" | "linspace" | "trailing";
export type VarianceType = "fixed_small" | "fixed_large";

/** A complete configuration, every field set (a type, not an interface, so it also fits SchedulerConfigInput). */
export type SchedulerConfig = {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  /** Explicit betas (one per training timestep); overrides the three fields above. */
  trained_betas: number[] | null;
  prediction_type: PredictionType;
  /** Added to every "leading" timestep (SD: 1, so DDIM's last step is t=1). */
  steps_offset: number;
  clip_sample: boolean;
  clip_sample_range: number;
  /** DDIM: the alpha-bar after the last step is 1 (true) or alphas_cumprod[0] (false). */
  set_alpha_to_one: boolean;
  timestep_spacing: TimestepSpacing;
  use_karras_sigmas: boolean;
  /** DDPM only. */
  variance_type: VarianceType;
  /** DPM-Solver: timesteps whose log-SNR is below this are not used (default −∞). */
  lambda_min_clipped: number;
};

/**
 * What callers pass: any subset of the fields, plus anything else a diffusers
 * config holds (`_class_name`, `skip_prk_steps`, …), which is ignored.
 */
export type SchedulerConfigInput = Partial<SchedulerConfig> & { readonly [key: string]: unknown };

/** Defaults shared by all diffusers scheduler classes of 0.19.3. */
export const BASE_DEFAULTS: Readonly<SchedulerConfig> = Object.freeze({
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: "linear",
  trained_betas: null,
  prediction_type: "epsilon",
  steps_offset: 0,
  clip_sample: true,
  clip_sample_range: 1.0,
  set_alpha_to_one: true,
  timestep_spacing: "leading",
  use_karras_sigmas: false,
  variance_type: "fixed_small",
  lambda_min_clipped: Number.NEGATIVE_INFINITY,
});

/** Stable Diffusion 1.x `scheduler/scheduler_config.json` (runwayml/stable-diffusion-v1-5). */
export const SD15_SCHEDULER_CONFIG: Readonly<SchedulerConfigInput> = Object.freeze({
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  steps_offset: 1,
  clip_sample: false,
  set_alpha_to_one: false,
  prediction_type: "epsilon",
});

/** SD 2.x 768-v models: the SD1 schedule with v-prediction. */
export const SD2_V_SCHEDULER_CONFIG: Readonly<SchedulerConfigInput> = Object.freeze({
  ...SD15_SCHEDULER_CONFIG,
  prediction_type: "v_prediction",
});

export class SchedulerConfigError extends Error {
  override name = "SchedulerConfigError";
}

const CHOICES = {
  beta_schedule: ["linear", "scaled_linear", "squaredcos_cap_v2"],
  prediction_type: ["epsilon", "v_prediction"],
  timestep_spacing: ["leading", "linspace", "trailing"],
  variance_type: ["fixed_small", "fixed_large"],
} as const;

function fail(field: string, want: string, got: unknown): never {
  const shown = typeof got === "string" ? JSON.stringify(got) : String(got);
  throw new SchedulerConfigError(`scheduler config: ${field} must be ${want}, got ${shown}`);
}

function choice<K extends keyof typeof CHOICES>(field: K, v: unknown): (typeof CHOICES)[K][number] {
  const allowed = CHOICES[field] as readonly string[];
  if (typeof v !== "string" || !allowed.includes(v)) fail(field, `one of ${allowed.join(", ")}`, v);
  return v as (typeof CHOICES)[K][number];
}

function int(field: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) fail(field, `an integer >= ${min}`, v);
  return v;
}

function num(field: string, v: unknown, ok: (x: number) => boolean, want: string): number {
  if (typeof v !== "number" || Number.isNaN(v) || !ok(v)) fail(field, want, v);
  return v;
}

function bool(field: string, v: unknown): boolean {
  if (typeof v !== "boolean") fail(field, "true or false", v);
  return v;
}

/**
 * Checks the fields a config sets and returns them (only those). Unknown
 * fields are ignored; a known field with a bad value, or a diffusers feature
 * this port does not implement (thresholding, zero-SNR rescaling, …), throws
 * an error that names the field. `null` means "the default", as in diffusers.
 */
export function parseSchedulerConfig(raw: unknown): Partial<SchedulerConfig> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SchedulerConfigError(
      `scheduler config must be a JSON object, got ${Array.isArray(raw) ? "an array" : raw}`,
    );
  }
  const r = raw as Record<string, unknown>;
  const out: Partial<SchedulerConfig> = {};
  const has = (k: string) => r[k] !== undefined && r[k] !== null;
  if (has("num_train_timesteps")) out.num_train_timesteps = int("num_train_timesteps", r.num_train_timesteps, 2);
  const beta = (x: number) => x >= 0 && x < 1;
  if (has("beta_start")) out.beta_start = num("beta_start", r.beta_start, beta, "a number in [0, 1)");
  if (has("beta_end")) out.beta_end = num("beta_end", r.beta_end, beta, "a number in [0, 1)");
  if (has("beta_schedule")) out.beta_schedule = choice("beta_schedule", r.beta_schedule);
  if (has("trained_betas")) {
    const tb = r.trained_betas;
    if (!Array.isArray(tb) || tb.length < 2 || tb.some((b) => typeof b !== "number" || !(b > 0 && b < 1))) {
      fail("trained_betas", "null or an array of numbers in (0, 1)", Array.isArray(tb) ? "another array" : tb);
    }
    out.trained_betas = [...(tb as number[])];
  }
  if (has("prediction_type")) out.prediction_type = choice("prediction_type", r.prediction_type);
  if (has("steps_offset")) out.steps_offset = int("steps_offset", r.steps_offset, 0);
  if (has("clip_sample")) out.clip_sample = bool("clip_sample", r.clip_sample);
  if (has("clip_sample_range")) {
    out.clip_sample_range = num("clip_sample_range", r.clip_sample_range, (x) => x > 0, "a positive number");
  }
  if (has("set_alpha_to_one")) out.set_alpha_to_one = bool("set_alpha_to_one", r.set_alpha_to_one);
  if (has("timestep_spacing")) out.timestep_spacing = choice("timestep_spacing", r.timestep_spacing);
  if (has("use_karras_sigmas")) out.use_karras_sigmas = bool("use_karras_sigmas", r.use_karras_sigmas);
  if (has("variance_type")) out.variance_type = choice("variance_type", r.variance_type);
  if (has("lambda_min_clipped")) {
    // Python's json writes −inf as the bare token -Infinity; loadSchedulerConfig turns it into a string.
    const v = r.lambda_min_clipped;
    const parsed = v === "-Infinity" ? Number.NEGATIVE_INFINITY : v === "Infinity" ? Number.POSITIVE_INFINITY : v;
    out.lambda_min_clipped = num("lambda_min_clipped", parsed, () => true, "a number");
  }
  // diffusers features left out: refuse rather than silently sample differently.
  for (const k of ["thresholding", "rescale_betas_zero_snr"]) {
    if (has(k) && bool(k, r[k])) fail(k, "false (not supported)", true);
  }
  if (has("interpolation_type") && r.interpolation_type !== "linear") {
    fail("interpolation_type", '"linear" (the only one supported)', r.interpolation_type);
  }
  if (out.trained_betas && out.num_train_timesteps !== undefined) {
    if (out.trained_betas.length !== out.num_train_timesteps) {
      fail("trained_betas", `an array of num_train_timesteps (${out.num_train_timesteps}) numbers`, "another length");
    }
  }
  return out;
}

/** Fills in defaults: `defaults` first (a sampler's class defaults), then the config's fields. */
export function resolveSchedulerConfig(
  input: SchedulerConfigInput = {},
  defaults: Partial<SchedulerConfig> = {},
): SchedulerConfig {
  const c: SchedulerConfig = { ...BASE_DEFAULTS, ...defaults, ...parseSchedulerConfig(input) };
  if (c.trained_betas) {
    if (input.num_train_timesteps == null) c.num_train_timesteps = c.trained_betas.length;
    if (c.trained_betas.length !== c.num_train_timesteps) {
      fail("trained_betas", `an array of num_train_timesteps (${c.num_train_timesteps}) numbers`, "another length");
    }
  }
  return c;
}

/**
 * JSON.parse for what Python's json module writes: bare -Infinity, Infinity
 * and NaN values (e.g. lambda_min_clipped) become the strings "-Infinity", ….
 */
export function parsePythonJson(text: string): unknown {
  // Strings are matched first so that their contents stay as they are.
  return JSON.parse(text.replace(/"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g, (m) => (m.startsWith('"') ? m : `"${m}"`)));
}

/** Reads a diffusers `scheduler_config.json`; errors name the file. */
export function loadSchedulerConfig(path: string): SchedulerConfigInput {
  let raw: unknown;
  try {
    raw = parsePythonJson(readFileSync(path, "utf8"));
  } catch (e) {
    throw new SchedulerConfigError(`${path}: cannot read a scheduler config: ${(e as Error).message}`);
  }
  try {
    parseSchedulerConfig(raw);
  } catch (e) {
    throw new SchedulerConfigError(`${path}: ${(e as Error).message}`);
  }
  return raw as SchedulerConfigInput;
}
