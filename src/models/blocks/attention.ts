// diffusers' `Attention` (huggingface/diffusers v0.19.3
// src/diffusers/models/attention_processor.py, `Attention` + `AttnProcessor2_0`)
// and the GEGLU feed-forward (src/diffusers/models/attention.py, `FeedForward`,
// `GEGLU`). Parameter names are diffusers': to_q, to_k, to_v, to_out.0,
// group_norm, ff.net.0.proj, ff.net.2.
import { gelu, mul, scaledDotProductAttention, scope, type Tensor } from "../../engine/index.js";
import { Dropout, type Forward, GroupNorm, type InitOptions, Linear } from "../../nn/index.js";
import { Block, type Layer, ModuleList } from "./tree.js";

export interface AttentionConfig {
  queryDim: number;
  /** Width of the context (encoder hidden states); defaults to queryDim (self-attention). */
  crossAttentionDim?: number;
  heads: number;
  dimHead: number;
  /** Bias on to_q/to_k/to_v (false in the UNet, true in the VAE mid-block). */
  bias?: boolean;
  /** Bias on to_out.0 (default true). */
  outBias?: boolean;
  dropout?: number;
  /** Compute the attention in float32 when the inputs are float16/bfloat16 (SD2.1-768). */
  upcastAttention?: boolean;
  /** A GroupNorm ("group_norm") on the input, as the VAE mid-block attention has. */
  normNumGroups?: number;
  /** eps of that GroupNorm (default 1e-5). */
  eps?: number;
  /** Adds the input to the output (VAE mid-block). */
  residualConnection?: boolean;
  /** The output is divided by this (default 1). */
  rescaleOutputFactor?: number;
}

/**
 * Multi-head attention over [B, L, C] tokens, or over the pixels of a
 * [B, C, H, W] map (VAE mid-block). Scale is dimHead^-0.5 (diffusers scale_qk).
 */
export class Attention extends Block {
  readonly heads: number;
  readonly dimHead: number;
  readonly upcastAttention: boolean;
  readonly residualConnection: boolean;
  readonly rescaleOutputFactor: number;
  readonly hasGroupNorm: boolean;
  /**
   * Replaces the context of the keys and of the values (AUTOMATIC1111
   * modules/hypernetworks/hypernetwork.py apply_hypernetworks); set by adapters.
   */
  kvContext: ((context: Tensor) => [Tensor, Tensor]) | null = null;

  constructor(
    readonly config: AttentionConfig,
    init: InitOptions = {},
  ) {
    super(init);
    const { queryDim, heads, dimHead } = config;
    const inner = heads * dimHead;
    const ctx = config.crossAttentionDim ?? queryDim;
    const bias = config.bias ?? false;
    this.heads = heads;
    this.dimHead = dimHead;
    this.upcastAttention = config.upcastAttention ?? false;
    this.residualConnection = config.residualConnection ?? false;
    this.rescaleOutputFactor = config.rescaleOutputFactor ?? 1;
    this.hasGroupNorm = config.normNumGroups !== undefined;
    if (config.normNumGroups !== undefined) {
      this.add("group_norm", new GroupNorm(config.normNumGroups, queryDim, config.eps ?? 1e-5, init));
    }
    this.add("to_q", new Linear(queryDim, inner, bias, init));
    this.add("to_k", new Linear(ctx, inner, bias, init));
    this.add("to_v", new Linear(ctx, inner, bias, init));
    const out = this.add("to_out", new ModuleList<Layer>());
    out.push(new Linear(inner, queryDim, config.outBias ?? true, init));
    out.push(new Dropout(config.dropout ?? 0));
  }

  /** Attention of `x` to `context` (to itself when context is absent). */
  forward(x: Tensor, context?: Tensor | null): Tensor {
    return scope(() => {
      const spatial = x.ndim === 4;
      const [b, c, h, w] = x.shape;
      let tokens = x;
      if (this.hasGroupNorm) tokens = this.call("group_norm", tokens);
      // [B, C, H, W] → [B, HW, C]; GroupNorm over either layout is the same
      if (spatial) tokens = tokens.view(b, c, h * w).transpose(1, 2);
      const ctx = context ?? tokens;
      const heads = this.heads;
      const split = (t: Tensor) => t.view(b, -1, heads, this.dimHead).transpose(1, 2);
      let q = split(this.call("to_q", tokens));
      const [ctxK, ctxV] = this.kvContext ? this.kvContext(ctx) : [ctx, ctx];
      let k = split(this.call("to_k", ctxK));
      let v = split(this.call("to_v", ctxV));
      const dtype = q.dtype;
      const upcast = this.upcastAttention && (dtype === "float16" || dtype === "bfloat16");
      if (upcast) [q, k, v] = [q.float(), k.float(), v.float()];
      let o = scaledDotProductAttention(q, k, v);
      if (upcast) o = o.to(dtype);
      // [B, heads, L, D] → [B, L, heads·D]
      o = o.transpose(1, 2).reshape(b, -1, heads * this.dimHead);
      for (const m of this.mod<ModuleList<Layer>>("to_out")) o = m.forward(o);
      if (spatial) o = o.transpose(1, 2).reshape(b, c, h, w);
      if (this.residualConnection) o = o.add(x);
      if (this.rescaleOutputFactor !== 1) o = o.div(this.rescaleOutputFactor);
      return o;
    });
  }
}

/** GEGLU: proj to 2×inner, split, hidden·gelu(gate) (exact erf GELU). */
export class GEGLU extends Block implements Forward {
  constructor(dimIn: number, dimOut: number, init: InitOptions = {}) {
    super(init);
    this.add("proj", new Linear(dimIn, dimOut * 2, true, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const [hidden, gate] = this.call("proj", x).chunk(2, -1);
      return mul(hidden, gelu(gate));
    });
  }
}

/** FeedForward with GEGLU: net.0 (GEGLU), net.1 (Dropout), net.2 (Linear); inner = 4·dim. */
export class FeedForward extends Block implements Forward {
  constructor(dim: number, o: { mult?: number; dropout?: number } = {}, init: InitOptions = {}) {
    super(init);
    const inner = dim * (o.mult ?? 4);
    const net = this.add("net", new ModuleList<Layer>());
    net.push(new GEGLU(dim, inner, init));
    net.push(new Dropout(o.dropout ?? 0));
    net.push(new Linear(inner, dim, true, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = x;
      for (const m of this.mod<ModuleList<Layer>>("net")) h = m.forward(h);
      return h;
    });
  }
}
