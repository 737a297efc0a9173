// One micro-batch of the diffusion objective with a method's hooks: noise
// and timesteps from the run's generator, the noisy latents, the text
// conditioning (cached, or the text encoder — or the method's encodeText),
// the prediction (the UNet, or the method's predict), the target (epsilon or
// velocity), the instance and prior-preservation terms with min-SNR weights,
// and the method's extra loss terms.
import { encodePrompts } from "../infer/prompt-encoding.js";
import type { Batch } from "./data/index.js";
import type { MicroLoss } from "./loop.js";
import { diffusionLoss, drawNoise, minSnrWeights } from "./losses.js";
import type { StepInputs } from "./methods/method.js";
import type { RunParts } from "./run-setup.js";

export function diffusionMicroLoss(p: RunParts, batch: Batch): MicroLoss {
  const { c, model, schedule, method } = p;
  const latents = batch.latents;
  if (!latents) throw new Error("a training batch has no latents (the data was opened without the VAE)");
  const { noise, timesteps } = drawNoise(latents, schedule.config.num_train_timesteps, {
    offset: c.noise_offset,
    generator: p.noiseGen,
  });
  const noisy = schedule.addNoise(latents, noise, timesteps);
  const s: StepInputs = {
    latents,
    noise,
    timesteps,
    noisy,
    prompts: batch.prompts,
    context: batch.context ?? null,
    isClass: batch.isClass,
    pixels: batch.pixels,
  };
  const context = method.encodeText
    ? method.encodeText(s)
    : (batch.context ??
      encodePrompts(model.textEncoder, model.tokenizer, batch.prompts, {
        clipSkip: c.clip_skip,
        padId: model.kind === "sd2" ? 0 : undefined,
      }));
  const prediction = method.predict ? method.predict(s, context) : model.unet.forward(noisy, timesteps, context);
  const target = schedule.target(latents, noise, timesteps);
  const weights = c.min_snr_gamma > 0 ? minSnrWeights(schedule, timesteps, c.min_snr_gamma) : null;
  const t = diffusionLoss(prediction, target, batch.isClass, { priorLossWeight: c.prior_loss_weight, weights });
  let loss = t.loss;
  const terms: MicroLoss["terms"] = { instance_loss: t.instance, prior_loss: t.prior };
  for (const [name, term] of Object.entries(method.extraLoss?.(s, prediction) ?? {})) {
    loss = loss.add(term);
    terms[name] = term;
  }
  return { loss, terms };
}
