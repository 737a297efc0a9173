// Training methods as strategies over one loop (DESIGN.md principle 5): each
// says which parameters train (in which optimizer groups), names them for the
// resumable state, and writes its artifacts in its formats.
import { join } from "node:path";
import { injectLora, type LoraNetwork, saveLora } from "../adapters/network.js";
import { keep, noGrad, scope, type Tensor } from "../engine/index.js";
import type { Generator } from "../engine/random.js";
import { saveCheckpoint } from "../formats/checkpoint.js";
import type { LoadedStableDiffusion } from "../models/stable-diffusion.js";
import type { TrainConfig } from "./config.js";

export interface ParamGroupSpec {
  name: "unet" | "text_encoder";
  params: Tensor[];
  lr: number;
}

export interface SavedArtifact {
  path: string;
  kind: "checkpoint" | "lora" | "diffusers";
  format: string;
}

export interface TrainingMethod {
  readonly name: string;
  /** Whether the text encoder's weights change (so its embeddings cannot be cached). */
  readonly trainsTextEncoder: boolean;
  groups(): ParamGroupSpec[];
  /** Trainable tensors by a stable name, for the resumable state. */
  namedTrainable(): Map<string, Tensor>;
  /** Writes the method's artifacts for this step; `tag` is e.g. "-step000100" or "" for the final one. */
  save(outputDir: string, baseName: string, tag: string, metadata: Record<string, string>): SavedArtifact[];
  /** Puts the model back as it was (removes adapters). */
  dispose(): void;
}

function named(
  prefix: string,
  m: Map<string, Tensor>,
  filter: (t: Tensor) => boolean = () => true,
): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, t] of m) if (filter(t)) out.set(`${prefix}.${k}`, t);
  return out;
}

/** Full fine-tuning of the UNet (and the text encoder when asked): Dreambooth. */
export class DreamboothMethod implements TrainingMethod {
  readonly name = "dreambooth";
  readonly trainsTextEncoder: boolean;

  constructor(
    readonly model: LoadedStableDiffusion,
    readonly config: TrainConfig,
    setUp = true,
  ) {
    this.trainsTextEncoder = config.train_text_encoder;
    if (!setUp) return;
    model.vae.requiresGrad_(false);
    model.unet.requiresGrad_(true).train();
    model.textEncoder.requiresGrad_(this.trainsTextEncoder).train(this.trainsTextEncoder);
  }

  groups(): ParamGroupSpec[] {
    const g: ParamGroupSpec[] = [{ name: "unet", params: this.model.unet.parameters(), lr: this.config.learning_rate }];
    if (this.trainsTextEncoder) {
      g.push({ name: "text_encoder", params: this.model.textEncoder.parameters(), lr: this.config.text_encoder_lr });
    }
    return g;
  }

  namedTrainable(): Map<string, Tensor> {
    const out = named("unet", this.model.unet.stateDict());
    if (this.trainsTextEncoder)
      for (const [k, t] of named("text_encoder", this.model.textEncoder.stateDict())) out.set(k, t);
    return out;
  }

  save(outputDir: string, baseName: string, tag: string, metadata: Record<string, string>): SavedArtifact[] {
    const m = this.model;
    return this.saveComponents(outputDir, baseName, tag, metadata, m.unet.stateDict(), m.textEncoder.stateDict());
  }

  /** Writes the full-model formats from these UNet and text-encoder weights (and the model's VAE). */
  saveComponents(
    outputDir: string,
    baseName: string,
    tag: string,
    metadata: Record<string, string>,
    unet: Map<string, Tensor>,
    textEncoder: Map<string, Tensor>,
  ): SavedArtifact[] {
    const m = this.model;
    const components = { unet, vae: m.vae.stateDict(), textEncoder };
    const common = {
      dtype: this.config.save.half ? ("float16" as const) : undefined,
      configs: m.info.configs,
      predictionType: m.info.predictionType,
    };
    const out: SavedArtifact[] = [];
    for (const format of this.config.save.formats) {
      if (format === "ldm_safetensors") {
        const path = join(outputDir, `${baseName}${tag}.safetensors`);
        saveCheckpoint(components, path, { ...common, layout: "ldm", metadata });
        out.push({ path, kind: "checkpoint", format: `ldm_safetensors${this.config.save.half ? "_fp16" : ""}` });
      } else if (format === "diffusers") {
        const path = join(outputDir, `${baseName}${tag}-diffusers`);
        saveCheckpoint(components, path, {
          ...common,
          layout: "diffusers",
          overwrite: true,
          tokenizerFrom: m.tokenizerDir,
        });
        out.push({ path, kind: "diffusers", format: "diffusers" });
      } else {
        throw new Error(
          `save.formats: 'lora' needs use_lora (a full Dreambooth run saves ldm_safetensors or diffusers)`,
        );
      }
    }
    return out;
  }

  dispose(): void {
    this.model.unet.requiresGrad_(false).eval();
    this.model.textEncoder.requiresGrad_(false).eval();
  }
}

/** LoRA (method: lora, or Dreambooth with use_lora): only the adapters train; the base stays bit-identical. */
export class LoraMethod implements TrainingMethod {
  readonly name = "lora";
  readonly trainsTextEncoder: boolean;
  readonly network: LoraNetwork;

  constructor(
    readonly model: LoadedStableDiffusion,
    readonly config: TrainConfig,
    generator: Generator,
  ) {
    const l = config.lora;
    this.trainsTextEncoder = l.text_encoder && (config.method === "lora" || config.train_text_encoder);
    model.vae.requiresGrad_(false);
    model.unet.requiresGrad_(false);
    model.textEncoder.requiresGrad_(false);
    this.network = injectLora(model, {
      rank: l.rank,
      alpha: l.alpha,
      dropout: l.dropout,
      unet: l.unet,
      textEncoder: this.trainsTextEncoder,
      convRank: l.conv_rank > 0 ? l.conv_rank : undefined,
      convAlpha: l.conv_rank > 0 ? l.conv_alpha : undefined,
      generator,
    });
    model.unet.train();
    model.textEncoder.train(this.trainsTextEncoder);
  }

  groups(): ParamGroupSpec[] {
    const g: ParamGroupSpec[] = [];
    const unet = this.network.trainableParameters("unet");
    if (unet.length) g.push({ name: "unet", params: unet, lr: this.config.learning_rate });
    const te = this.network.trainableParameters("textEncoder");
    if (te.length) g.push({ name: "text_encoder", params: te, lr: this.config.text_encoder_lr });
    if (g.length === 0) throw new Error("lora: nothing to train (lora.unet and lora.text_encoder are both off)");
    return g;
  }

  namedTrainable(): Map<string, Tensor> {
    const trainable = new Set(this.network.trainableParameters());
    const out = new Map<string, Tensor>();
    for (const [k, t] of this.network.stateDict()) if (trainable.has(t)) out.set(k, t);
    return out;
  }

  save(outputDir: string, baseName: string, tag: string, metadata: Record<string, string>): SavedArtifact[] {
    const out: SavedArtifact[] = [];
    const full = this.config.save.formats.filter((f) => f !== "lora");
    if (this.config.save.formats.includes("lora")) {
      const path = join(outputDir, `${baseName}${tag}.safetensors`);
      saveLora(path, this.network, metadata, {
        dtype: this.config.save.half ? "float16" : undefined,
        vPrediction: this.model.info.predictionType === "v_prediction",
        resolution: this.config.resolution,
        clipSkip: this.config.clip_skip,
      });
      out.push({ path, kind: "lora", format: "kohya_lora" });
    }
    if (full.length) {
      // The base with the LoRA merged in, built as new tensors: the live base weights stay untouched.
      const unet = this.#merged("unet", this.model.unet.stateDict());
      const te = this.#merged("textEncoder", this.model.textEncoder.stateDict());
      try {
        const merged = new DreamboothMethod(
          this.model,
          { ...this.config, save: { ...this.config.save, formats: full } },
          false,
        );
        out.push(...merged.saveComponents(outputDir, `${baseName}-merged`, tag, metadata, unet.sd, te.sd));
      } finally {
        for (const t of [...unet.temps, ...te.temps]) t.dispose();
      }
    }
    return out;
  }

  #merged(component: "unet" | "textEncoder", sd: Map<string, Tensor>): { sd: Map<string, Tensor>; temps: Tensor[] } {
    const out = new Map(sd);
    const temps: Tensor[] = [];
    for (const m of this.network.modules) {
      if (m.target.component !== component) continue;
      const key = `${m.target.path}.weight`;
      const w = out.get(key);
      if (!w) throw new Error(`merging the LoRA: no weight '${key}' in the ${component}`);
      const merged = keep(noGrad(() => scope(() => w.float().add(m.deltaWeight()).to(w.dtype))));
      temps.push(merged);
      out.set(key, merged);
    }
    return { sd: out, temps };
  }

  dispose(): void {
    this.network.remove();
    this.model.unet.eval();
    this.model.textEncoder.eval();
  }
}

/** Copies saved tensors into the live trainable ones (resume), by name; every name must match. */
export function restoreTrainable(trainable: Map<string, Tensor>, saved: Map<string, Tensor>, where: string): void {
  const missing = [...trainable.keys()].filter((k) => !saved.has(k));
  const extra = [...saved.keys()].filter((k) => !trainable.has(k));
  if (missing.length || extra.length) {
    throw new Error(
      `${where}: the saved weights do not fit this run (missing ${missing.slice(0, 3).join(", ") || "none"}; ` +
        `unexpected ${extra.slice(0, 3).join(", ") || "none"}): was it saved with another config?`,
    );
  }
  noGrad(() =>
    scope(() => {
      for (const [k, t] of trainable) t.copy_(saved.get(k)!);
    }),
  );
  keep(trainable);
}
