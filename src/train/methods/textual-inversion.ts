// Textual Inversion (method textual_inversion), as AUTOMATIC1111 trains it
// (AUTOMATIC1111/stable-diffusion-webui modules/textual_inversion/
// textual_inversion.py `create_embedding`, `train_embedding`; dataset.py for
// the prompt templates): the whole model is frozen and only the vectors of a
// new word learn. The word's vectors start from the token vectors of an
// initialisation text; each image's prompt is a template line with [name]
// replaced by the word and [filewords] by the image's caption. Only the new
// vectors are trainable: they live beside the text encoder (put in place of
// the word's tokens as A1111's EmbeddingsWithFixes does), so every weight of
// the text encoder stays bit-identical. Saved as A1111's embedding .pt (and,
// on request, the emb_params .safetensors), loadable by A1111, Forge, ComfyUI
// and Atelier's embeddings folder.
import { basename, join } from "node:path";
import { saveEmbeddingFile } from "../../adapters/embedding-file.js";
import { type EmbeddingLookup, embeddingWordClash } from "../../adapters/embeddings.js";
import { injectLora, saveLora } from "../../adapters/network.js";
import { keep, noGrad, scope, type Tensor, tensor, zeros } from "../../engine/index.js";
import { loadSafetensors, saveSafetensors } from "../../formats/safetensors.js";
import { encodePrompts } from "../../infer/prompt-encoding.js";
import type { LoadedStableDiffusion } from "../../models/stable-diffusion.js";
import { f } from "../config-fields.js";
import { defineMethod, type SavedArtifact, type TrainingMethod } from "./method.js";

/** A1111's textual_inversion_templates/subject_filewords.txt, first lines. */
export const SUBJECT_FILEWORDS_TEMPLATES = [
  "a photo of a [name], [filewords]",
  "a rendering of a [name], [filewords]",
  "a cropped photo of the [name], [filewords]",
  "the photo of a [name], [filewords]",
  "a photo of a clean [name], [filewords]",
  "a photo of a dirty [name], [filewords]",
  "a dark photo of the [name], [filewords]",
  "a photo of my [name], [filewords]",
  "a photo of the cool [name], [filewords]",
  "a close-up photo of a [name], [filewords]",
];

// Characters the prompt parser reads as syntax (emphasis, scheduling, extra networks, BREAK's separators).
const SYNTAX = /[()[\]{}<>:|\\,\s]/;

const TI_FIELDS = {
  token: f.text({ default: "", doc: "the new word a prompt uses (the embedding file's stem), e.g. sks-cat" }),
  init_text: f.text({ default: "*", doc: 'the text whose token vectors start the embedding ("" = zeros)' }),
  vectors: f.int({ min: 1, max: 75, default: 1, doc: "vectors per token (A1111 'Number of vectors per token')" }),
  templates: f.list(f.text({ doc: "" }), {
    default: SUBJECT_FILEWORDS_TEMPLATES,
    nonEmpty: true,
    doc: "prompt template lines; [name] = the token, [filewords] = the image's caption (A1111 templates)",
  }),
  lora_rank: f.int({
    min: 0,
    max: 1024,
    default: 0,
    doc: "pivotal tuning: also train a UNet LoRA of this rank, jointly with the embedding (0 = off)",
  }),
  lora_lr: f.number({ above: 0, default: 1e-4, doc: "pivotal tuning: the LoRA's learning rate" }),
  embedding_steps: f.int({
    min: 0,
    default: 0,
    doc: "pivotal tuning: steps the embedding trains alone (the LoRA frozen) before both train jointly; 0 = jointly from the start",
  }),
  bundle: f.bool({
    default: false,
    doc: "pivotal tuning: also put the embedding in the LoRA file as bundle_emb.<token>.string_to_param.* (A1111, Forge)",
  }),
};

export const textualInversion = defineMethod({
  name: "textual_inversion",
  doc: "Textual Inversion: only a new word's vectors learn (A1111 embedding .pt)",
  schema: { textual_inversion: f.group(TI_FIELDS, "Textual Inversion settings (method textual_inversion)") },
  formats: ["embedding_pt", "embedding_safetensors"],
  // A1111's default embedding learning rate.
  defaultLearningRate: 5e-3,
  resolve(c, r) {
    const t = c.textual_inversion;
    if (!r.active) {
      for (const [k, fd] of Object.entries(TI_FIELDS))
        if (fd.default !== undefined && k !== "templates")
          r.pointless(`textual_inversion.${k}`, fd.default, "method is not textual_inversion");
      return;
    }
    if (t.token === "") throw r.error("textual_inversion.token", "textual_inversion.token is empty: name the new word");
    if (SYNTAX.test(t.token) || t.token === "BREAK")
      throw r.error(
        "textual_inversion.token",
        `textual_inversion.token '${t.token}' holds prompt syntax or spaces; use letters, digits, '-', '_' or '.'`,
      );
    const missing = t.templates.filter((l) => !l.includes("[name]"));
    if (missing.length === t.templates.length)
      throw r.error(
        "textual_inversion.templates",
        "no template line holds [name]: the embedding's word would never be in a prompt",
      );
    if (t.bundle && t.lora_rank === 0)
      throw r.error(
        "textual_inversion.bundle",
        "textual_inversion.bundle needs a LoRA (set textual_inversion.lora_rank)",
      );
    if (t.embedding_steps > 0 && t.lora_rank === 0)
      throw r.error(
        "textual_inversion.embedding_steps",
        "textual_inversion.embedding_steps needs a LoRA (set textual_inversion.lora_rank)",
      );
    if (r.given("train_text_encoder") === true)
      throw r.error(
        "train_text_encoder",
        "textual_inversion trains only the new word's vectors; drop train_text_encoder",
      );
    c.train_text_encoder = false;
  },
  create(c, ctx): TrainingMethod {
    const { model } = ctx;
    const t = c.textual_inversion;
    // A word that is a vocabulary token would replace that word everywhere (diffusers refuses it): nothing runs.
    const clash = embeddingWordClash(model.tokenizer, t.token);
    if (clash) throw new Error(`textual_inversion.token: ${clash}`);
    model.vae.requiresGrad_(false);
    model.unet.requiresGrad_(false).eval();
    model.textEncoder.requiresGrad_(false).eval();
    const vectors = keep(initVectors(model, t.init_text, t.vectors)).requiresGrad_(true);
    // pivotal tuning (cloneofsimo/lora, kohya): a UNet LoRA trains with the embedding
    const network =
      t.lora_rank > 0
        ? injectLora(model, {
            rank: t.lora_rank,
            alpha: t.lora_rank,
            unet: true,
            textEncoder: false,
            generator: ctx.generator,
          })
        : null;
    if (network) model.unet.train();
    // Embedding first, then jointly (issue 15 "the embedding first or jointly"): during the first
    // embedding_steps the LoRA's tensors take no gradient, so the optimizer leaves them (and their
    // moments) untouched; a resumed run past that point starts with them trainable.
    const loraParams = network ? network.trainableParameters("unet") : [];
    const embeddingSteps = t.embedding_steps;
    let loraFrozen = network !== null && embeddingSteps > (ctx.startStep ?? 0);
    if (loraFrozen) for (const p of loraParams) p.requiresGrad_(false);
    const ids = model.tokenizer.encodeTokens(t.token);
    const lookup: EmbeddingLookup = {
      findAt(tokens, position) {
        if (!ids.every((id, i) => tokens[position + i] === id)) return undefined;
        return { name: t.token, vectors, length: ids.length };
      },
    };
    // A template line per image (A1111: random.choice per item), drawn from the seed and the image's
    // timestep: the noise generator is part of the resumable state, so a resumed run draws the same lines.
    const template = (caption: string, salt: number) => {
      const line = t.templates[mix(c.seed, salt) % t.templates.length];
      return line.replaceAll("[name]", t.token).replaceAll("[filewords]", caption);
    };
    ctx.log(`textual inversion: '${t.token}' (${ids.length} tokens) → ${t.vectors} vector(s) from '${t.init_text}'`);

    return {
      name: "textual_inversion",
      trainsTextEncoder: true,
      groups: () => [
        { name: "embedding", params: [vectors], lr: c.learning_rate },
        ...(network ? [{ name: "unet", params: loraParams, lr: t.lora_lr }] : []),
      ],
      namedTrainable: () => {
        const out = new Map([[`textual_inversion.${t.token}`, vectors]]);
        if (network) {
          const trainable = new Set(network.trainableParameters());
          for (const [k, x] of network.stateDict()) if (trainable.has(x)) out.set(`lora.${k}`, x);
        }
        return out;
      },
      afterStep(step) {
        if (loraFrozen && step + 1 >= embeddingSteps) {
          for (const p of loraParams) p.requiresGrad_(true);
          loraFrozen = false;
        }
      },
      encodeText(s) {
        const steps = s.timesteps.toArray();
        const prompts = s.prompts.map((p, i) => template(p, steps[i] * 64 + i));
        return encodePrompts(model.textEncoder, model.tokenizer, prompts, {
          clipSkip: c.clip_skip,
          padId: model.kind === "sd2" ? 0 : undefined,
          embeddings: lookup,
        });
      },
      save(r) {
        const out: SavedArtifact[] = [];
        const stem = `${t.token}${r.tag}`;
        const meta = {
          step: stepOf(r.tag),
          sdCheckpoint: null,
          sdCheckpointName: basename(model.info.path).replace(/\.[^.]*$/, ""),
        };
        for (const [format, ext] of [
          ["embedding_pt", ".pt"],
          ["embedding_safetensors", ".safetensors"],
        ] as const) {
          if (!c.save.formats.includes(format)) continue;
          const path = join(r.outputDir, `${stem}${ext}`);
          saveEmbeddingFile(path, vectors, meta);
          out.push({ path, kind: "embedding", format });
        }
        if (network) {
          const path = join(r.outputDir, `${stem}-lora.safetensors`);
          saveLora(path, network, r.metadata, { resolution: c.resolution, clipSkip: c.clip_skip });
          if (t.bundle) bundleEmbedding(path, t.token, vectors);
          out.push({ path, kind: "lora", format: "kohya_lora" });
        }
        return out;
      },
      dispose() {
        network?.remove();
        model.unet.eval();
        vectors.dispose();
      },
    };
  },
});

/**
 * create_embedding: vector i is the token vector of the init text's token
 * i·count/n (A1111 copies rows of `encode_embedding_init_text`); zeros for "".
 */
export function initVectors(
  model: Pick<LoadedStableDiffusion, "textEncoder" | "tokenizer">,
  initText: string,
  n: number,
): Tensor {
  const width = model.textEncoder.config.hiddenSize;
  const ids = initText === "" ? [] : model.tokenizer.encodeTokens(initText);
  return noGrad(() =>
    scope(() => {
      if (ids.length === 0) return zeros([n, width]);
      const rows = Array.from({ length: n }, (_, i) => BigInt(ids[Math.floor((i * ids.length) / n)]));
      const embeds = model.textEncoder.tokenEmbeds(tensor(BigInt64Array.from(rows), { shape: [1, n] }));
      return embeds.squeeze(0).float().cpu().contiguous().clone();
    }),
  );
}

/**
 * Adds the embedding to a LoRA file as `bundle_emb.<word>.string_to_param.*`,
 * the layout A1111 reads from a LoRA (extensions-builtin/Lora/networks.py
 * `bundle_embeddings`), rewriting the file atomically.
 */
function bundleEmbedding(path: string, word: string, vectors: Tensor): void {
  const { tensors, metadata } = loadSafetensors(path);
  try {
    tensors.set(
      `bundle_emb.${word}.string_to_param.*`,
      scope(() => vectors.detach().float().cpu().clone()),
    );
    saveSafetensors(path, tensors, metadata);
  } finally {
    for (const x of tensors.values()) x.dispose();
  }
}

/** The step of a save tag ("-step000100" → 100); the final save has none. */
function stepOf(tag: string): number | null {
  const m = /step0*(\d+)/.exec(tag);
  return m ? Number(m[1]) : null;
}

/** A 32-bit mix of (seed, i): splitmix-like, for drawing template lines. */
function mix(seed: number, i: number): number {
  let h = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
