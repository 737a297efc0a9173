// transformers' CLIPTextModel (huggingface/transformers v4.31
// src/transformers/models/clip/modeling_clip.py: CLIPTextEmbeddings,
// CLIPAttention, CLIPMLP, CLIPEncoderLayer, CLIPTextTransformer). Parameter
// paths are the transformers keys ("text_model.encoder.layers.0.self_attn.q_proj.weight").
import {
  arange,
  checkpoint,
  type DType,
  gelu,
  index,
  quickGelu,
  scaledDotProductAttention,
  scope,
  type Tensor,
} from "../../engine/index.js";
import { loadSafetensors } from "../../formats/safetensors.js";
import { Embedding, type Forward, type InitOptions, LayerNorm, Linear, Module } from "../../nn/index.js";
import { Block, type Layer, ModuleList } from "../blocks/tree.js";

export interface ClipTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  hiddenAct: "quick_gelu" | "gelu";
  layerNormEps: number;
}

/** SD1.x: OpenAI CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14 config.json). */
export const sd15TextConfig: ClipTextConfig = {
  vocabSize: 49408,
  hiddenSize: 768,
  intermediateSize: 3072,
  numLayers: 12,
  numHeads: 12,
  maxPositions: 77,
  hiddenAct: "quick_gelu",
  layerNormEps: 1e-5,
};

/**
 * SD2.x: OpenCLIP ViT-H/14's text tower as diffusers stores it
 * (stabilityai/stable-diffusion-2-1 text_encoder/config.json): 23 of the 24
 * layers, since SD2 conditions on the penultimate one.
 */
export const sd21TextConfig: ClipTextConfig = {
  vocabSize: 49408,
  hiddenSize: 1024,
  intermediateSize: 4096,
  numLayers: 23,
  numHeads: 16,
  maxPositions: 77,
  hiddenAct: "gelu",
  layerNormEps: 1e-5,
};

/**
 * The config of the shared fixtures' tiny text encoder (models/text_encoder_tiny.safetensors,
 * which test/models/text-encoder.test.ts loads).
 */
export const tinyTextConfig: ClipTextConfig = {
  vocabSize: 1000,
  hiddenSize: 32,
  intermediateSize: 37,
  numLayers: 2,
  numHeads: 4,
  maxPositions: 77,
  hiddenAct: "quick_gelu",
  layerNormEps: 1e-5,
};

/** A transformers CLIPTextConfig config.json (a diffusers model's text_encoder/config.json) as a ClipTextConfig. */
export function clipTextConfigFromJson(json: Record<string, unknown>): ClipTextConfig {
  const num = (k: string, fallback?: number): number => {
    const v = json[k] ?? fallback;
    if (typeof v !== "number") throw new Error(`CLIP text config: '${k}' is missing or not a number`);
    return v;
  };
  const act = json.hidden_act ?? "quick_gelu";
  if (act !== "quick_gelu" && act !== "gelu") throw new Error(`CLIP text config: hidden_act '${act}' is not supported`);
  return {
    vocabSize: num("vocab_size"),
    hiddenSize: num("hidden_size"),
    intermediateSize: num("intermediate_size"),
    numLayers: num("num_hidden_layers"),
    numHeads: num("num_attention_heads"),
    maxPositions: num("max_position_embeddings", 77),
    hiddenAct: act,
    layerNormEps: num("layer_norm_eps", 1e-5),
  };
}

export const POSITION_IDS_KEY = "text_model.embeddings.position_ids";

/** CLIPTextEmbeddings: token_embedding + position_embedding (positions 0..L−1). */
export class ClipTextEmbeddings extends Module {
  constructor(
    readonly config: ClipTextConfig,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("token_embedding", new Embedding(config.vocabSize, config.hiddenSize, init));
    this.add("position_embedding", new Embedding(config.maxPositions, config.hiddenSize, init));
  }

  /** Token vectors [B, L, H] of ids [B, L], before the position embedding (what textual inversion replaces). */
  tokenEmbeds(inputIds: Tensor): Tensor {
    return this.mod<Embedding>("token_embedding").forward(inputIds);
  }

  /** `tokenEmbeds` [B, L, H] plus the position embedding of 0..L−1. */
  forward(tokenEmbeds: Tensor): Tensor {
    return scope(() => {
      const length = tokenEmbeds.size(1);
      if (length > this.config.maxPositions) {
        throw new Error(`CLIP text encoder: ${length} tokens, at most ${this.config.maxPositions} fit`);
      }
      const pos = this.mod<Embedding>("position_embedding").weight.narrow(0, 0, length);
      return tokenEmbeds.add(pos);
    });
  }
}

/** CLIPAttention: causal multi-head self-attention, scale head_dim^-0.5. */
export class ClipAttention extends Block implements Forward {
  readonly heads: number;
  readonly headDim: number;

  constructor(config: ClipTextConfig, init: InitOptions = {}) {
    super(init);
    const h = config.hiddenSize;
    if (h % config.numHeads !== 0)
      throw new Error(`CLIP text encoder: ${h} hidden does not split into ${config.numHeads} heads`);
    this.heads = config.numHeads;
    this.headDim = h / config.numHeads;
    for (const name of ["k_proj", "v_proj", "q_proj", "out_proj"]) this.add(name, new Linear(h, h, true, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const [b, l, h] = x.shape;
      const split = (t: Tensor) => t.view(b, l, this.heads, this.headDim).transpose(1, 2);
      const q = split(this.call("q_proj", x));
      const k = split(this.call("k_proj", x));
      const v = split(this.call("v_proj", x));
      // transformers adds a causal mask of finfo.min; masking with −inf gives the same softmax
      const o = scaledDotProductAttention(q, k, v, { causal: true });
      return this.call("out_proj", o.transpose(1, 2).reshape(b, l, h));
    });
  }
}

/** CLIPMLP: fc1 → quick_gelu (x·σ(1.702x)) or exact gelu → fc2. */
export class ClipMlp extends Block implements Forward {
  constructor(
    readonly config: ClipTextConfig,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("fc1", new Linear(config.hiddenSize, config.intermediateSize, true, init));
    this.add("fc2", new Linear(config.intermediateSize, config.hiddenSize, true, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const h = this.call("fc1", x);
      return this.call("fc2", this.config.hiddenAct === "gelu" ? gelu(h) : quickGelu(h));
    });
  }
}

/** CLIPEncoderLayer: pre-norm attention and MLP, each with a residual. */
export class ClipEncoderLayer extends Block implements Forward {
  constructor(config: ClipTextConfig, init: InitOptions = {}) {
    super(init);
    this.add("self_attn", new ClipAttention(config, init));
    this.add("layer_norm1", new LayerNorm(config.hiddenSize, config.layerNormEps, init));
    this.add("mlp", new ClipMlp(config, init));
    this.add("layer_norm2", new LayerNorm(config.hiddenSize, config.layerNormEps, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const h = x.add(this.call("self_attn", this.call("layer_norm1", x)));
      return h.add(this.call("mlp", this.call("layer_norm2", h)));
    });
  }
}

/** CLIPEncoder: the layers, as `layers.N`. */
export class ClipEncoder extends Module {
  constructor(config: ClipTextConfig, init: InitOptions = {}) {
    super(init);
    const layers = this.add("layers", new ModuleList<Layer>());
    for (let i = 0; i < config.numLayers; i++) layers.push(new ClipEncoderLayer(config, init));
  }
}

/** CLIPTextTransformer: embeddings, encoder.layers.N, final_layer_norm. */
export class ClipTextTransformer extends Block {
  constructor(
    readonly config: ClipTextConfig,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("embeddings", new ClipTextEmbeddings(config, init));
    this.add("encoder", new ClipEncoder(config, init));
    this.add("final_layer_norm", new LayerNorm(config.hiddenSize, config.layerNormEps, init));
  }
}

export interface TextEncoderOptions {
  /** Also return every hidden state: the embeddings, then each layer's output (before final_layer_norm). */
  outputHiddenStates?: boolean;
  /** Token vectors [B, L, H] to use instead of looking up the ids (textual inversion); the ids still give the pooled position. */
  tokenEmbeds?: Tensor;
}

export interface TextEncoderOutput {
  /** [B, L, H], after final_layer_norm. */
  lastHiddenState: Tensor;
  /** [B, H]: lastHiddenState at argmax(input_ids), i.e. the first EOS for SD1.x ids. */
  pooled: Tensor;
  /** numLayers + 1 tensors [B, L, H] when asked for. */
  hiddenStates?: Tensor[];
}

/** transformers' CLIPTextModel; its one child `text_model` gives the key prefix. */
export class ClipTextModel extends Module {
  constructor(
    readonly config: ClipTextConfig,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("text_model", new ClipTextTransformer(config, init));
  }

  /** Recompute each encoder layer in backward (transformers' gradient_checkpointing). */
  gradientCheckpointing = false;

  get embeddings(): ClipTextEmbeddings {
    return this.getModule("text_model.embeddings") as ClipTextEmbeddings;
  }

  /** The current module at encoder.layers.i (after any replacement). */
  layer(i: number): Layer {
    return this.getModule(`text_model.encoder.layers.${i}`) as Layer;
  }

  finalLayerNorm(x: Tensor): Tensor {
    return (this.getModule("text_model.final_layer_norm") as Layer).forward(x);
  }

  /** Ids [B, L] (int64 preferred) → token vectors [B, L, H] from token_embedding. */
  tokenEmbeds(inputIds: Tensor): Tensor {
    return scope(() => this.embeddings.tokenEmbeds(this.#ids(inputIds)));
  }

  #ids(inputIds: Tensor): Tensor {
    const device = this.embeddings.parameters()[0].device;
    let ids = inputIds.dtype === "int64" ? inputIds : inputIds.to("int64");
    if (ids.device !== device) ids = ids.to(device);
    return ids;
  }

  /** Runs the first `count` layers from the embeddings; returns every state on the way when `all`. */
  #run(inputIds: Tensor, count: number, tokenEmbeds: Tensor | undefined, all: boolean): Tensor[] {
    const embeds = tokenEmbeds ?? this.embeddings.tokenEmbeds(inputIds);
    let h = this.embeddings.forward(embeds);
    const states = [h];
    for (let i = 0; i < count; i++) {
      const layer = this.layer(i);
      if (this.gradientCheckpointing) {
        const trainable = layer.parameters().some((p) => p.requiresGrad);
        h = checkpoint((x) => layer.forward(x), [h], { trainable })[0];
      } else {
        h = layer.forward(h);
      }
      if (all) states.push(h);
    }
    return all ? states : [h];
  }

  /** CLIPTextModel.forward(input_ids) without attention_mask, as Stable Diffusion calls it. */
  forward(inputIds: Tensor, o: TextEncoderOptions = {}): TextEncoderOutput {
    return scope(() => {
      const ids = this.#ids(inputIds);
      const states = this.#run(ids, this.config.numLayers, o.tokenEmbeds, o.outputHiddenStates ?? false);
      const lastHiddenState = this.finalLayerNorm(states[states.length - 1]);
      const rows = arange(ids.size(0), undefined, 1, { device: ids.device });
      const pooled = index(lastHiddenState, [rows, ids.argmax(-1)]);
      return o.outputHiddenStates ? { lastHiddenState, pooled, hiddenStates: states } : { lastHiddenState, pooled };
    });
  }

  /**
   * The conditioning Stable Diffusion uses: final_layer_norm(hidden_states[−clipSkip])
   * ([B, L, H]); clipSkip 1 is last_hidden_state. Only the layers needed run.
   */
  encode(inputIds: Tensor, o: { clipSkip?: number; tokenEmbeds?: Tensor } = {}): Tensor {
    const skip = o.clipSkip ?? 1;
    if (!Number.isInteger(skip) || skip < 1 || skip > this.config.numLayers + 1) {
      throw new Error(`clip skip must be an integer in 1..${this.config.numLayers + 1}, got ${skip}`);
    }
    return scope(() => {
      const [h] = this.#run(this.#ids(inputIds), this.config.numLayers - (skip - 1), o.tokenEmbeds, false);
      return this.finalLayerNorm(h);
    });
  }
}

export interface LoadTextEncoderOptions {
  dtype?: DType;
  device?: string;
  /** Take only keys with this prefix, without it (e.g. "cond_stage_model.transformer." in an LDM checkpoint). */
  prefix?: string;
}

/**
 * A ClipTextModel with the weights of a safetensors file (path) or a state
 * dict. Loading is strict, except that text_model.embeddings.position_ids
 * (in older files) is ignored.
 */
export function loadClipTextModel(
  source: string | Map<string, Tensor>,
  config: ClipTextConfig,
  o: LoadTextEncoderOptions = {},
): ClipTextModel {
  const prefix = o.prefix ?? "";
  const fromFile = typeof source === "string";
  const all = fromFile
    ? loadSafetensors(source, { dtype: o.dtype, filter: (k) => k.startsWith(prefix) && !k.endsWith("position_ids") })
        .tensors
    : source;
  const state = new Map<string, Tensor>();
  for (const [k, t] of all) if (k.startsWith(prefix)) state.set(k.slice(prefix.length), t);
  const model = new ClipTextModel(config, { mode: "empty", dtype: o.dtype, device: o.device });
  try {
    model.loadStateDict(state, { ignore: (k) => k === POSITION_IDS_KEY });
  } catch (e) {
    model.dispose();
    throw e;
  } finally {
    if (fromFile) for (const t of all.values()) t.dispose();
  }
  return model;
}
