// Transformer2DModel (continuous input) and BasicTransformerBlock as diffusers
// v0.19.3 builds them for SD1.x/SD2.x (huggingface/diffusers
// src/diffusers/models/transformer_2d.py and attention.py): layer_norm blocks,
// GEGLU feed-forward, no attention bias.
import { scope, type Tensor } from "../../engine/index.js";
import { Conv2d, GroupNorm, type InitOptions, LayerNorm, Linear } from "../../nn/index.js";
import { Attention, FeedForward } from "./attention.js";
import { Block, ModuleList } from "./tree.js";

export interface TransformerBlockConfig {
  dim: number;
  heads: number;
  headDim: number;
  /** Context width for attn2 (cross-attention). */
  crossAttentionDim: number;
  dropout?: number;
  upcastAttention?: boolean;
  /** attn1 attends to the context too (diffusers only_cross_attention; the ×4 upscaler). */
  onlyCrossAttention?: boolean;
}

/** x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)). */
export class BasicTransformerBlock extends Block {
  readonly onlyCrossAttention: boolean;

  constructor(c: TransformerBlockConfig, init: InitOptions = {}) {
    super(init);
    this.onlyCrossAttention = c.onlyCrossAttention ?? false;
    const attn = {
      queryDim: c.dim,
      heads: c.heads,
      dimHead: c.headDim,
      dropout: c.dropout,
      upcastAttention: c.upcastAttention,
    };
    this.add("norm1", new LayerNorm(c.dim, 1e-5, init));
    const attn1 = this.onlyCrossAttention ? { ...attn, crossAttentionDim: c.crossAttentionDim } : attn;
    this.add("attn1", new Attention(attn1, init));
    this.add("norm2", new LayerNorm(c.dim, 1e-5, init));
    this.add("attn2", new Attention({ ...attn, crossAttentionDim: c.crossAttentionDim }, init));
    this.add("norm3", new LayerNorm(c.dim, 1e-5, init));
    this.add("ff", new FeedForward(c.dim, { dropout: c.dropout }, init));
  }

  /** x [B, L, dim], context [B, S, crossAttentionDim]. */
  forward(x: Tensor, context: Tensor): Tensor {
    return scope(() => {
      const ctx1 = this.onlyCrossAttention ? context : null;
      let h = this.mod<Attention>("attn1").forward(this.call("norm1", x), ctx1).add(x);
      h = this.mod<Attention>("attn2").forward(this.call("norm2", h), context).add(h);
      return this.call("ff", this.call("norm3", h)).add(h);
    });
  }
}

export interface Transformer2DConfig {
  heads: number;
  headDim: number;
  inChannels: number;
  /** transformer_layers_per_block (1 for SD1/SD2). */
  numLayers?: number;
  crossAttentionDim: number;
  normNumGroups: number;
  /** proj_in/proj_out as Linear (SD2.x) instead of 1×1 Conv2d (SD1.x). */
  useLinearProjection?: boolean;
  upcastAttention?: boolean;
  dropout?: number;
  onlyCrossAttention?: boolean;
}

/**
 * GroupNorm (eps 1e-6) → proj_in → tokens [B, HW, inner] → transformer_blocks
 * → proj_out → + input.
 */
export class Transformer2DModel extends Block {
  readonly useLinearProjection: boolean;
  readonly inner: number;

  constructor(c: Transformer2DConfig, init: InitOptions = {}) {
    super(init);
    const inner = c.heads * c.headDim;
    this.inner = inner;
    this.useLinearProjection = c.useLinearProjection ?? false;
    this.add("norm", new GroupNorm(c.normNumGroups, c.inChannels, 1e-6, init));
    const proj = (i: number, o: number) =>
      this.useLinearProjection ? new Linear(i, o, true, init) : new Conv2d(i, o, 1, {}, init);
    this.add("proj_in", proj(c.inChannels, inner));
    const blocks = this.add("transformer_blocks", new ModuleList<BasicTransformerBlock>());
    const blockConfig = {
      dim: inner,
      heads: c.heads,
      headDim: c.headDim,
      crossAttentionDim: c.crossAttentionDim,
      dropout: c.dropout,
      upcastAttention: c.upcastAttention,
      onlyCrossAttention: c.onlyCrossAttention,
    };
    for (let i = 0; i < (c.numLayers ?? 1); i++) blocks.push(new BasicTransformerBlock(blockConfig, init));
    this.add("proj_out", proj(inner, c.inChannels));
  }

  /** x [B, C, H, W], context [B, S, crossAttentionDim]. */
  forward(x: Tensor, context: Tensor): Tensor {
    return scope(() => {
      const [b, , height, width] = x.shape;
      const toTokens = (t: Tensor) => t.permute(0, 2, 3, 1).reshape(b, height * width, t.size(1));
      const toMap = (t: Tensor) => t.reshape(b, height, width, t.size(2)).permute(0, 3, 1, 2).contiguous();
      let h = this.call("norm", x);
      h = this.useLinearProjection ? this.call("proj_in", toTokens(h)) : toTokens(this.call("proj_in", h));
      for (const block of this.mod<ModuleList<BasicTransformerBlock>>("transformer_blocks"))
        h = block.forward(h, context);
      h = this.useLinearProjection ? toMap(this.call("proj_out", h)) : this.call("proj_out", toMap(h));
      return h.add(x);
    });
  }
}
