// Dreambooth: full fine-tuning of the UNet (and the text encoder when
// train_text_encoder), saved as a single-file LDM checkpoint or a diffusers
// folder that A1111, ComfyUI and diffusers load.
import { join } from "node:path";
import type { Tensor } from "../../engine/index.js";
import { saveCheckpoint } from "../../formats/checkpoint.js";
import type { LoadedStableDiffusion } from "../../models/stable-diffusion.js";
import type { SaveConfig } from "../config-core.js";
import { defineMethod, type SavedArtifact, type SaveRequest, type TrainingMethod } from "./method.js";

/** Trainable tensors under a prefix (`unet.…`), for the resumable state. */
export function prefixed(prefix: string, m: Map<string, Tensor>): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, t] of m) out.set(`${prefix}.${k}`, t);
  return out;
}

/** Writes the full-model formats of `formats` from these UNet and text-encoder weights (and the model's VAE). */
export function saveFullModel(
  model: LoadedStableDiffusion,
  save: SaveConfig,
  formats: readonly string[],
  stem: string,
  r: SaveRequest,
  weights: { unet: Map<string, Tensor>; textEncoder: Map<string, Tensor> },
): SavedArtifact[] {
  const components = { unet: weights.unet, vae: model.vae.stateDict(), textEncoder: weights.textEncoder };
  const common = {
    // float32 unless save.half, whatever the run kept them in (weight_dtype bf16 stores the frozen
    // VAE and text encoder in bf16: written as is, a float32 checkpoint would hold bf16 tensors)
    dtype: save.half ? ("float16" as const) : ("float32" as const),
    configs: model.info.configs,
    predictionType: model.info.predictionType,
  };
  const out: SavedArtifact[] = [];
  for (const format of formats) {
    if (format === "ldm_safetensors") {
      const path = join(r.outputDir, `${stem}${r.tag}.safetensors`);
      saveCheckpoint(components, path, { ...common, layout: "ldm", metadata: r.metadata });
      out.push({ path, kind: "checkpoint", format: `ldm_safetensors${save.half ? "_fp16" : ""}` });
    } else if (format === "diffusers") {
      const path = join(r.outputDir, `${stem}${r.tag}-diffusers`);
      saveCheckpoint(components, path, {
        ...common,
        layout: "diffusers",
        overwrite: true,
        tokenizerFrom: model.tokenizerDir,
      });
      out.push({ path, kind: "diffusers", format: "diffusers" });
    } else {
      throw new Error(`save.formats: a full-model save cannot write '${format}'`);
    }
  }
  return out;
}

export const dreambooth = defineMethod({
  name: "dreambooth",
  doc: "full weights of the UNet (and the text encoder with train_text_encoder)",
  schema: {},
  formats: ["ldm_safetensors", "diffusers"],
  defaultLearningRate: 2e-6,
  create(c, { model }): TrainingMethod {
    const trainsTextEncoder = c.train_text_encoder;
    model.vae.requiresGrad_(false);
    model.unet.requiresGrad_(true).train();
    model.textEncoder.requiresGrad_(trainsTextEncoder).train(trainsTextEncoder);
    return {
      name: "dreambooth",
      trainsTextEncoder,
      groups() {
        const g = [{ name: "unet", params: model.unet.parameters(), lr: c.learning_rate }];
        if (trainsTextEncoder)
          g.push({ name: "text_encoder", params: model.textEncoder.parameters(), lr: c.text_encoder_lr });
        return g;
      },
      namedTrainable() {
        const out = prefixed("unet", model.unet.stateDict());
        if (trainsTextEncoder)
          for (const [k, t] of prefixed("text_encoder", model.textEncoder.stateDict())) out.set(k, t);
        return out;
      },
      save(r) {
        const weights = { unet: model.unet.stateDict(), textEncoder: model.textEncoder.stateDict() };
        return saveFullModel(model, c.save, c.save.formats, "model", r, weights);
      },
      dispose() {
        model.unet.requiresGrad_(false).eval();
        model.textEncoder.requiresGrad_(false).eval();
      },
    };
  },
});
