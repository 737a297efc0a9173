// The diffusion training objective for one batch: noise (with offset),
// timesteps, the noisy latents, the target (epsilon or velocity), and the
// loss per example with min-SNR weighting, split into the instance term and
// the prior-preservation term (class examples), as diffusers'
// examples/dreambooth/train_dreambooth.py and kohya's train_util/custom_train_functions do.
import { type Generator, mseLoss, randint, randn, scope, type Tensor, tensor } from "../engine/index.js";
import type { NoiseSchedule } from "../schedulers/schedule.js";

export interface NoiseDraw {
  noise: Tensor;
  timesteps: Tensor;
}

/**
 * N(0,1) noise shaped like the latents plus `offset`·N(0,1) per image and
 * channel (noise offset: diffusers train_text_to_image.py / kohya
 * apply_noise_offset), and uniform integer timesteps in [0, T).
 */
export function drawNoise(
  latents: Tensor,
  trainSteps: number,
  o: { offset?: number; generator?: Generator },
): NoiseDraw {
  return scope(() => {
    const [b, c] = latents.shape;
    const device = latents.device;
    let noise = randn(latents.shape, { generator: o.generator }).to(device, latents.dtype);
    if (o.offset) {
      noise = noise.add(randn([b, c, 1, 1], { generator: o.generator }).to(device, latents.dtype).mul(o.offset));
    }
    const timesteps = randint(0, trainSteps, [b], { generator: o.generator }).to(device);
    return { noise, timesteps };
  });
}

/**
 * Min-SNR-γ weights per example (Hang et al. 2023; diffusers
 * compute_snr + train_text_to_image.py): min(SNR, γ)/SNR for epsilon
 * prediction and min(SNR, γ)/(SNR + 1) for v-prediction.
 */
export function minSnrWeights(schedule: NoiseSchedule, timesteps: Tensor, gamma: number): Tensor {
  return scope(() => {
    const snr = schedule.snr(timesteps);
    const clipped = snr.clamp(null, gamma);
    const denom = schedule.config.prediction_type === "v_prediction" ? snr.add(1) : snr;
    return clipped.div(denom);
  });
}

export interface LossTerms {
  /** What is backpropagated: instance + prior_loss_weight · prior. */
  loss: Tensor;
  /** Mean loss of the instance examples (0-d). */
  instance: Tensor;
  /** Mean loss of the class examples, or null when the batch has none. */
  prior: Tensor | null;
}

/**
 * The loss of a batch whose examples are instance or class ones (isClass).
 * Each example's loss is its mean squared error (in float32), times its
 * min-SNR weight when given; each term is the mean over its examples.
 */
export function diffusionLoss(
  prediction: Tensor,
  target: Tensor,
  isClass: readonly boolean[],
  o: { priorLossWeight?: number; weights?: Tensor | null } = {},
): LossTerms {
  if (isClass.length !== prediction.shape[0]) {
    throw new Error(`diffusionLoss: ${isClass.length} example flags for a batch of ${prediction.shape[0]}`);
  }
  return scope(() => {
    let perExample = mseLoss(prediction.to("float32"), target.to("float32"), "none").mean([1, 2, 3]);
    if (o.weights) perExample = perExample.mul(o.weights.to("float32"));
    const mask = (cls: boolean) =>
      tensor(
        Float32Array.from(isClass, (c) => (c === cls ? 1 : 0)),
        { device: prediction.device },
      );
    const nClass = isClass.filter(Boolean).length;
    const nInstance = isClass.length - nClass;
    if (nInstance === 0) throw new Error("diffusionLoss: a batch needs at least one instance example");
    const instance = perExample.mul(mask(false)).sum().div(nInstance);
    const prior = nClass > 0 ? perExample.mul(mask(true)).sum().div(nClass) : null;
    const loss = prior ? instance.add(prior, o.priorLossWeight ?? 1) : instance;
    return { loss, instance, prior };
  });
}
