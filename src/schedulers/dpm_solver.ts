// DPM-Solver++(2M) (Lu et al. 2022), multistep, second order with the midpoint
// rule, data prediction, first-order steps at the start (and at the end for
// short runs), as diffusers 0.19.3 DPMSolverMultistepScheduler with
// algorithm_type "dpmsolver++", solver_order 2, lower_order_final
// (huggingface/diffusers src/diffusers/schedulers/scheduling_dpmsolver_multistep.py).
// With use_karras_sigmas the timesteps follow Karras et al.'s sigma spacing.
import * as E from "../engine/index.js";
import { keep, type Tensor } from "../engine/index.js";
import type { SchedulerConfig, SchedulerConfigInput } from "./config.js";
import { arange, f32, karrasSigmas, linspace, roundHalfEven, sigmaToT, sqrt32, trainSigmas } from "./numeric.js";
import { alias, checkSteps, type NoiseGenerator, type Sampler, type StepOptions, type StepOutput } from "./sampler.js";
import { NoiseSchedule } from "./schedule.js";

const DPM_DEFAULTS: Partial<SchedulerConfig> = { timestep_spacing: "linspace" };

export class DPMSolverMultistepSampler implements Sampler {
  readonly name: string;
  readonly config: SchedulerConfig;
  readonly schedule: NoiseSchedule;
  readonly initNoiseSigma = 1.0;
  readonly solverOrder = 2;
  readonly lowerOrderFinal = true;
  timesteps: number[] = [];
  /**
   * As diffusers 0.19.3 keeps them (the step does not use them): the 1000
   * training sigmas, or with Karras sigmas the n Karras sigmas in ascending order.
   */
  sigmas: number[];
  numInferenceSteps = 0;
  /** α_t = √ᾱ, σ_t = √(1−ᾱ), λ_t = log α_t − log σ_t, float32 like diffusers' tensors. */
  readonly alphaT: Float32Array;
  readonly sigmaT: Float32Array;
  readonly lambdaT: Float32Array;
  readonly #trainSigmas: Float32Array;
  /** The last `solverOrder` converted model outputs (x0 predictions), oldest first; kept tensors. */
  #modelOutputs: (Tensor | null)[] = [null, null];
  #lowerOrderNums = 0;

  constructor(config: SchedulerConfigInput = {}, name = "dpmpp_2m") {
    this.name = name;
    this.schedule = new NoiseSchedule(config, DPM_DEFAULTS);
    this.config = this.schedule.config;
    const ac = this.schedule.alphasCumprod;
    this.alphaT = ac.map(sqrt32);
    this.sigmaT = ac.map((a) => sqrt32(f32(1 - a)));
    this.lambdaT = this.alphaT.map((a, i) => f32(f32(Math.log(a)) - f32(Math.log(this.sigmaT[i]))));
    this.#trainSigmas = trainSigmas(ac);
    this.sigmas = [...this.#trainSigmas];
  }

  setTimesteps(n: number): void {
    const c = this.config;
    const T = c.num_train_timesteps;
    checkSteps(n, T);
    // Leave out the timesteps whose λ is below lambda_min_clipped (torch.searchsorted on the flipped λ).
    const clippedIdx = [...this.lambdaT].reverse().filter((l) => l < c.lambda_min_clipped).length;
    const last = T - clippedIdx;
    let timesteps: number[];
    if (c.timestep_spacing === "linspace") {
      timesteps = linspace(0, last - 1, n + 1)
        .map(roundHalfEven)
        .reverse()
        .slice(0, -1);
    } else if (c.timestep_spacing === "leading") {
      const ratio = Math.floor(last / (n + 1));
      timesteps = Array.from({ length: n }, (_, i) => (n - i) * ratio + c.steps_offset);
    } else {
      timesteps = arange(last, 0, -T / n).map((t) => roundHalfEven(t) - 1);
    }
    this.sigmas = [...this.#trainSigmas];
    if (c.use_karras_sigmas) {
      const logSigmas = this.#trainSigmas.map(Math.log);
      // 0.19.3 passes the ascending training sigmas, so these Karras sigmas ascend too.
      this.sigmas = karrasSigmas(this.#trainSigmas, n);
      timesteps = this.sigmas.map((s) => roundHalfEven(sigmaToT(s, logSigmas))).reverse();
    }
    // With as many steps as training timesteps rounding can repeat one: keep the first of each.
    this.timesteps = timesteps.filter((t, i) => timesteps.indexOf(t) === i);
    this.numInferenceSteps = this.timesteps.length;
    this.dispose();
  }

  scaleModelInput(sample: Tensor, _t: number): Tensor {
    return alias(sample);
  }

  /** Frees the kept model outputs and restarts the multistep history. */
  dispose(): void {
    for (const m of this.#modelOutputs) m?.dispose();
    this.#modelOutputs = [null, null];
    this.#lowerOrderNums = 0;
  }

  /** x0 from the model output at t (dpmsolver++ works on data predictions). */
  #convert(modelOutput: Tensor, t: number, sample: Tensor): Tensor {
    const a = this.alphaT[t];
    const s = this.sigmaT[t];
    if (this.config.prediction_type === "epsilon") return E.div(E.sub(sample, E.mul(modelOutput, s)), a);
    return E.sub(E.mul(sample, a), E.mul(modelOutput, s));
  }

  step(
    modelOutput: Tensor,
    t: number,
    sample: Tensor,
    _generator?: NoiseGenerator | null,
    _o?: StepOptions,
  ): StepOutput {
    const ts = this.timesteps;
    if (ts.length === 0) throw new Error(`${this.name}: call setTimesteps(n) before stepping`);
    this.schedule.alphaCumprodAt(t);
    let i = ts.indexOf(t);
    if (i < 0) i = ts.length - 1; // as diffusers: an unknown timestep counts as the last
    const prevT = i === ts.length - 1 ? 0 : ts[i + 1];
    const lowerOrderFinal = i === ts.length - 1 && this.lowerOrderFinal && ts.length < 15;

    const x0 = E.scope(() => keep(this.#convert(modelOutput, t, sample)));
    this.#modelOutputs[0]?.dispose();
    this.#modelOutputs = [this.#modelOutputs[1], x0];

    const firstOrder = this.#lowerOrderNums < 1 || lowerOrderFinal;
    const prevSample = E.scope(() =>
      firstOrder ? this.#firstOrder(x0, t, prevT, sample) : this.#secondOrder(ts[i - 1], t, prevT, sample),
    );
    if (this.#lowerOrderNums < this.solverOrder) this.#lowerOrderNums++;
    return { prevSample, predOriginalSample: alias(x0) };
  }

  /** DPM-Solver++ first order (= DDIM): x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x0. */
  #firstOrder(x0: Tensor, s: number, t: number, sample: Tensor): Tensor {
    const h = f32(this.lambdaT[t] - this.lambdaT[s]);
    const ratio = f32(this.sigmaT[t] / this.sigmaT[s]);
    const c = f32(this.alphaT[t] * f32(f32(Math.exp(-h)) - 1));
    return E.sub(E.mul(sample, ratio), E.mul(x0, c));
  }

  /** DPM-Solver++(2M), midpoint: D0 = m0, D1 = (m0 − m1)/r0, x_t = (σ_t/σ_s0)·x − c·D0 − ½c·D1. */
  #secondOrder(s1: number, s0: number, t: number, sample: Tensor): Tensor {
    const [m1, m0] = this.#modelOutputs as [Tensor, Tensor];
    const lt = this.lambdaT;
    const h = f32(lt[t] - lt[s0]);
    const h0 = f32(lt[s0] - lt[s1]);
    const r0 = f32(h0 / h);
    const ratio = f32(this.sigmaT[t] / this.sigmaT[s0]);
    const c = f32(this.alphaT[t] * f32(f32(Math.exp(-h)) - 1));
    const d1 = E.mul(E.sub(m0, m1), f32(1 / r0));
    return E.sub(E.sub(E.mul(sample, ratio), E.mul(m0, c)), E.mul(d1, f32(0.5 * c)));
  }
}
