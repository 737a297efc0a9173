// Dreambooth stage 2 (Ruiz et al. 2023, §4: the super-resolution component
// fine-tuned on low/high-resolution pairs of the subject): the model is a
// latent ×4 upscaler; each picture at `resolution` is the high-resolution
// target (its latents), the same picture averaged down ×4 is the input,
// noised by the low-res scheduler at a noise level drawn per example (LDM
// ImageConcatWithNoiseAugmentation: randint(0, max_noise_level)), as the
// UNet's class label. The loss is the usual one (v-prediction for the x4
// model), so prior preservation, the loop, saving and resume are the
// trainer's. The UNet trains in full or through LoRA; the text encoder stays
// frozen. Reference for one step: the fixture README's train_step (diffusers
// v0.19.3 DDPMScheduler.add_noise / get_velocity, UNet2DConditionModel with class_labels).
import { join } from "node:path";
import { injectLora, type LoraNetwork, saveLora } from "../../adapters/network.js";
import { cat, keep, noGrad, randint, randn, scope, type Tensor, tensor } from "../../engine/index.js";
import type { LoadedStableDiffusion } from "../../models/stable-diffusion.js";
import { completeUpscalerFolder, type Upscaler, upscalerExtras } from "../../models/upscaler/index.js";
import { NoiseSchedule } from "../../schedulers/index.js";
import { f } from "../config-fields.js";
import { prefixed, saveFullModel } from "./dreambooth.js";
import { defineMethod, type SavedArtifact, type TrainingMethod } from "./method.js";

/** The low-resolution input: 4×4 box averages (torch avg_pool2d(x, 4)), [B, C, H/4, W/4]. */
export function downscale4(x: Tensor): Tensor {
  const [b, c, h, w] = x.shape;
  if (h % 4 !== 0 || w % 4 !== 0) throw new Error(`downscale ×4: ${w}×${h} is not a multiple of 4`);
  return scope(() => x.reshape(b, c, h / 4, 4, w / 4, 4).mean([3, 5]));
}

/** What one stage-2 prediction reads besides the UNet's usual inputs. */
export interface LowResInputs {
  /** The low-resolution pictures [B, 3, h, w] in [-1, 1]. */
  lowRes: Tensor;
  /** Their augmentation noise [B, 3, h, w]. */
  noise: Tensor;
  /** One noise level per example, int64 [B]. */
  levels: Tensor;
}

/**
 * The upscaler's prediction for noisy latents: cat([noisy, add_noise(lowRes,
 * noise, levels)]) through the UNet with the levels as class labels.
 */
export function upscalerPrediction(
  model: Pick<Upscaler, "unet">,
  lowResSchedule: NoiseSchedule,
  noisy: Tensor,
  timesteps: Tensor,
  context: Tensor,
  lr: LowResInputs,
): Tensor {
  return scope(() => {
    const noisedLowRes = lowResSchedule.addNoise(lr.lowRes, lr.noise, lr.levels).to(noisy.dtype);
    return model.unet.forward(cat([noisy, noisedLowRes], 1), timesteps, context, lr.levels);
  });
}

const UPSCALER_FIELDS = {
  noise_level: f.nullable(
    f.int({ min: 0, max: 999, doc: "one noise level for every example (must be <= the model's max_noise_level)" }),
    { default: null },
  ),
  lora_rank: f.int({ min: 0, max: 1024, default: 0, doc: "0 = full fine-tune of the UNet; > 0 = a LoRA of this rank" }),
  lora_alpha: f.number({ above: 0, auto: "lora_rank (scale 1)", doc: "LoRA alpha (with lora_rank > 0)" }),
};

export const dreamboothUpscaler = defineMethod({
  name: "dreambooth_upscaler",
  doc: "Dreambooth stage 2: the ×4 upscaler on low/high-resolution pairs of the subject (full or LoRA)",
  schema: {
    upscaler: f.group(
      UPSCALER_FIELDS,
      "stage-2 settings (method dreambooth_upscaler): noise_level null draws one per example in 0..max_noise_level",
    ),
  },
  formats: ["diffusers", "ldm_safetensors", "lora"],
  defaultLearningRate: 1e-5,
  resolve(c, r) {
    const u = c.upscaler;
    if (r.isAuto(u.lora_alpha)) u.lora_alpha = Math.max(u.lora_rank, 1);
    if (!r.active) {
      r.pointless("upscaler.lora_rank", 0, "method is not dreambooth_upscaler");
      r.pointless("upscaler.noise_level", null, "method is not dreambooth_upscaler");
      return;
    }
    if (u.lora_rank === 0) r.pointless("upscaler.lora_alpha", 1, "upscaler.lora_rank is 0 (a full fine-tune)");
    if (u.lora_rank === 0 && c.save.formats.includes("lora"))
      throw r.error("save.formats", "save.formats has lora but upscaler.lora_rank is 0 (a full fine-tune)");
    if (r.given("train_text_encoder") === true)
      throw r.error("train_text_encoder", "dreambooth_upscaler keeps the upscaler's text encoder frozen");
    c.train_text_encoder = false;
    if (c.sample.prompts.length > 0)
      throw r.error(
        "sample.prompts",
        "samples during a dreambooth_upscaler run are not supported (an upscaler needs a picture, not only a prompt)",
      );
  },
  create(c, { model, generator }): TrainingMethod {
    const extras = upscalerExtras(model.info.path, model);
    const u = c.upscaler;
    if (u.noise_level !== null && u.noise_level > extras.maxNoiseLevel)
      throw new Error(
        `upscaler.noise_level ${u.noise_level} is above the model's max_noise_level ${extras.maxNoiseLevel}`,
      );
    const min = 2 ** (model.unet.config.blockOutChannels.length - 1);
    if (c.resolution / 4 < min)
      throw new Error(
        `resolution ${c.resolution} gives a ${c.resolution / 4}×${c.resolution / 4} low-res input, smaller than the upscaler's ${min}×${min}`,
      );
    const lowResSchedule = new NoiseSchedule(extras.lowResScheduler);
    model.vae.requiresGrad_(false);
    model.textEncoder.requiresGrad_(false).eval();
    let network: LoraNetwork | null = null;
    if (u.lora_rank > 0) {
      model.unet.requiresGrad_(false);
      network = injectLora(model, {
        rank: u.lora_rank,
        alpha: u.lora_alpha,
        unet: true,
        textEncoder: false,
        generator,
      });
    } else {
      model.unet.requiresGrad_(true);
    }
    model.unet.train();

    const lowResInputs = (pixels: Tensor): LowResInputs =>
      scope(() => {
        const lowRes = downscale4(pixels);
        const b = lowRes.size(0);
        const noise = randn(lowRes.shape, { generator }).to(lowRes.device, lowRes.dtype);
        const levels =
          u.noise_level === null
            ? randint(0, extras.maxNoiseLevel + 1, [b], { generator }).to(lowRes.device)
            : tensor(
                BigInt64Array.from({ length: b }, () => BigInt(u.noise_level!)),
                { device: lowRes.device },
              );
        return { lowRes, noise, levels };
      });

    return {
      name: "dreambooth_upscaler",
      trainsTextEncoder: false,
      needsPixels: true,
      groups() {
        const params = network ? network.trainableParameters("unet") : model.unet.parameters();
        return [{ name: "unet", params, lr: c.learning_rate }];
      },
      namedTrainable() {
        if (!network) return prefixed("unet", model.unet.stateDict());
        const trainable = new Set(network.trainableParameters());
        const out = new Map<string, Tensor>();
        for (const [k, t] of network.stateDict()) if (trainable.has(t)) out.set(k, t);
        return out;
      },
      predict(s, context) {
        if (!s.pixels)
          throw new Error("dreambooth_upscaler: the batch has no pictures (the data was opened without them)");
        return scope(() =>
          upscalerPrediction(model, lowResSchedule, s.noisy, s.timesteps, context, lowResInputs(s.pixels!)),
        );
      },
      save(r) {
        const out: SavedArtifact[] = [];
        const formats = c.save.formats;
        if (network && formats.includes("lora")) {
          const path = join(r.outputDir, `upscaler-lora${r.tag}.safetensors`);
          saveLora(path, network, r.metadata, {
            dtype: c.save.half ? "float16" : undefined,
            vPrediction: model.info.predictionType === "v_prediction",
            resolution: c.resolution,
            clipSkip: c.clip_skip,
          });
          out.push({ path, kind: "lora", format: "kohya_lora" });
        }
        const full = formats.filter((x) => x !== "lora");
        if (full.length === 0) return out;
        const { sd, temps } = network ? mergedUnet(model, network) : { sd: model.unet.stateDict(), temps: [] };
        try {
          const saved = saveFullModel(model, c.save, full, "upscaler", r, {
            unet: sd,
            textEncoder: model.textEncoder.stateDict(),
          });
          for (const a of saved) if (a.format === "diffusers") completeUpscalerFolder(a.path, extras);
          out.push(...saved);
        } finally {
          for (const t of temps) t.dispose();
        }
        return out;
      },
      dispose() {
        network?.remove();
        model.unet.requiresGrad_(false).eval();
      },
    };
  },
});

/** The UNet's weights with the LoRA merged in, as new tensors (the live UNet stays untouched). */
function mergedUnet(model: LoadedStableDiffusion, network: LoraNetwork): { sd: Map<string, Tensor>; temps: Tensor[] } {
  const sd = new Map(model.unet.stateDict());
  const temps: Tensor[] = [];
  for (const m of network.modules) {
    if (m.target.component !== "unet") continue;
    const key = `${m.target.path}.weight`;
    const w = sd.get(key);
    if (!w) throw new Error(`merging the LoRA: no weight '${key}' in the UNet`);
    const t = keep(noGrad(() => scope(() => w.float().add(m.deltaWeight()).to(w.dtype))));
    temps.push(t);
    sd.set(key, t);
  }
  return { sd, temps };
}
