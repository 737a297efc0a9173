// ResnetBlock2D, Downsample2D and Upsample2D as diffusers v0.19.3 builds them
// (huggingface/diffusers src/diffusers/models/resnet.py), SD's settings only:
// pre-norm, "default" time-embedding norm (add), silu, use_conv=True.
import { dropout, interpolate, pad, scope, type Tensor } from "../../engine/index.js";
import { Conv2d, GroupNorm, type InitOptions, Linear } from "../../nn/index.js";
import { Block } from "./tree.js";

export interface ResnetConfig {
  inChannels: number;
  /** Defaults to inChannels. */
  outChannels?: number;
  /** Width of the time embedding; null (the VAE) drops time_emb_proj. */
  tembChannels: number | null;
  groups: number;
  /** GroupNorm eps: 1e-5 in the UNet (norm_eps), 1e-6 in the VAE. */
  eps: number;
  dropout?: number;
  /** The output is divided by this (default 1). */
  outputScaleFactor?: number;
}

/**
 * out = (shortcut(x) + conv2(drop(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))))) / scale;
 * conv_shortcut (1×1) exists when the channel count changes.
 */
export class ResnetBlock2D extends Block {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly dropout: number;
  readonly outputScaleFactor: number;
  readonly hasTimeProj: boolean;
  readonly hasShortcut: boolean;

  constructor(c: ResnetConfig, init: InitOptions = {}) {
    super(init);
    const out = c.outChannels ?? c.inChannels;
    this.inChannels = c.inChannels;
    this.outChannels = out;
    this.dropout = c.dropout ?? 0;
    this.outputScaleFactor = c.outputScaleFactor ?? 1;
    this.hasTimeProj = c.tembChannels !== null;
    this.hasShortcut = c.inChannels !== out;
    this.add("norm1", new GroupNorm(c.groups, c.inChannels, c.eps, init));
    this.add("conv1", new Conv2d(c.inChannels, out, 3, { padding: 1 }, init));
    if (c.tembChannels !== null) this.add("time_emb_proj", new Linear(c.tembChannels, out, true, init));
    this.add("norm2", new GroupNorm(c.groups, out, c.eps, init));
    this.add("conv2", new Conv2d(out, out, 3, { padding: 1 }, init));
    if (this.hasShortcut) this.add("conv_shortcut", new Conv2d(c.inChannels, out, 1, {}, init));
  }

  /** `temb` [B, tembChannels] (after the UNet's time_embedding), or null. */
  forward(x: Tensor, temb: Tensor | null = null): Tensor {
    return scope(() => {
      let h = this.call("conv1", this.call("norm1", x).silu());
      if (temb && this.hasTimeProj) {
        const t = this.call("time_emb_proj", temb.silu());
        h = h.add(t.view(t.size(0), t.size(1), 1, 1));
      }
      h = this.call("norm2", h).silu();
      if (this.dropout > 0 && this.training) h = dropout(h, this.dropout, true);
      h = this.call("conv2", h);
      const skip = this.hasShortcut ? this.call("conv_shortcut", x) : x;
      const out = skip.add(h);
      return this.outputScaleFactor === 1 ? out : out.div(this.outputScaleFactor);
    });
  }
}

/**
 * 3×3 conv with stride 2 ("conv"). With padding 0 (the VAE encoder) the input
 * is first padded by one zero row/column at the bottom/right.
 */
export class Downsample2D extends Block {
  constructor(
    readonly channels: number,
    readonly outChannels: number = channels,
    readonly padding = 1,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("conv", new Conv2d(channels, outChannels, 3, { stride: 2, padding }, init));
  }

  forward(x: Tensor): Tensor {
    if (this.padding !== 0) return this.call("conv", x);
    return scope(() => this.call("conv", pad(x, [0, 1, 0, 1])));
  }
}

/** Nearest-neighbour ×2 (or to `size`), then a 3×3 conv ("conv"). */
export class Upsample2D extends Block {
  constructor(
    readonly channels: number,
    readonly outChannels: number = channels,
    init: InitOptions = {},
  ) {
    super(init);
    this.add("conv", new Conv2d(channels, outChannels, 3, { padding: 1 }, init));
  }

  /** `size`: the output height and width, where the input size is not a multiple of 2. */
  forward(x: Tensor, size?: [number, number]): Tensor {
    return scope(() => {
      // diffusers upsamples bfloat16 in float32 (no bf16 nearest kernel in older torch)
      const bf16 = x.dtype === "bfloat16";
      let h = bf16 ? x.float() : x;
      h = size ? interpolate(h, { size, mode: "nearest" }) : interpolate(h, { scaleFactor: 2, mode: "nearest" });
      if (bf16) h = h.to("bfloat16");
      return this.call("conv", h);
    });
  }
}
