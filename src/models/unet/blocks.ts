// The UNet's down, mid and up blocks as diffusers v0.19.3 builds them
// (huggingface/diffusers src/diffusers/models/unet_2d_blocks.py:
// CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
// CrossAttnUpBlock2D, UpBlock2D).
import { cat, checkpoint, scope, type Tensor } from "../../engine/index.js";
import type { InitOptions } from "../../nn/index.js";
import { Block, Downsample2D, ModuleList, ResnetBlock2D, Transformer2DModel, Upsample2D } from "../blocks/index.js";

/** What every UNet block shares. */
export interface UNetBlockConfig {
  numLayers: number;
  tembChannels: number;
  groups: number;
  eps: number;
  dropout: number;
}

/** The cross-attention settings of a block with attentions. */
export interface CrossAttnConfig {
  heads: number;
  crossAttentionDim: number;
  transformerLayers: number;
  useLinearProjection: boolean;
  upcastAttention: boolean;
  /** attn1 attends to the context as well (diffusers only_cross_attention). */
  onlyCrossAttention?: boolean;
}

export type DownBlockType = "CrossAttnDownBlock2D" | "DownBlock2D";
export type UpBlockType = "CrossAttnUpBlock2D" | "UpBlock2D";

/** Output of a down block: the hidden state and the skip connections it leaves for the up blocks. */
export interface DownOutput {
  hidden: Tensor;
  skips: Tensor[];
}

function resnet(c: UNetBlockConfig, inChannels: number, outChannels: number, init: InitOptions): ResnetBlock2D {
  return new ResnetBlock2D(
    { inChannels, outChannels, tembChannels: c.tembChannels, groups: c.groups, eps: c.eps, dropout: c.dropout },
    init,
  );
}

function transformer(c: UNetBlockConfig, a: CrossAttnConfig, channels: number, init: InitOptions) {
  if (channels % a.heads !== 0) throw new Error(`${channels} channels do not split into ${a.heads} attention heads`);
  return new Transformer2DModel(
    {
      heads: a.heads,
      headDim: channels / a.heads,
      inChannels: channels,
      numLayers: a.transformerLayers,
      crossAttentionDim: a.crossAttentionDim,
      normNumGroups: c.groups,
      useLinearProjection: a.useLinearProjection,
      upcastAttention: a.upcastAttention,
      onlyCrossAttention: a.onlyCrossAttention,
      dropout: c.dropout,
    },
    init,
  );
}

/**
 * Base of the UNet blocks: with `gradientCheckpointing` on, each resnet and
 * each transformer is a checkpointed segment, as diffusers' blocks do under
 * `gradient_checkpointing` (torch.utils.checkpoint around each of them).
 */
export class UNetBlock extends Block {
  gradientCheckpointing = false;

  protected segment(fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[]): Tensor {
    // Without checkpointing each input still enters the segment through one
    // alias, so autograd sums the segment's uses of it first, then adds the
    // other consumers — the order the checkpointed run has: both runs give
    // bit-identical gradients.
    if (!this.gradientCheckpointing) return fn(...inputs.map((x) => (x.requiresGrad ? x.view(...x.shape) : x)));
    const trainable = this.parameters().some((p) => p.requiresGrad);
    return checkpoint(fn, inputs, { trainable })[0];
  }

  protected resnet(r: ResnetBlock2D, h: Tensor, temb: Tensor): Tensor {
    return this.segment((x, t) => r.forward(x, t), [h, temb]);
  }

  protected attention(a: Transformer2DModel, h: Tensor, context: Tensor): Tensor {
    return this.segment((x, c) => a.forward(x, c), [h, context]);
  }
}

/** resnets (+ attentions), then an optional stride-2 downsampler; every stage output is a skip. */
export class DownBlock extends UNetBlock {
  readonly hasAttention: boolean;
  readonly hasDownsample: boolean;

  constructor(
    c: UNetBlockConfig & {
      inChannels: number;
      outChannels: number;
      addDownsample: boolean;
      attention: CrossAttnConfig | null;
    },
    init: InitOptions = {},
  ) {
    super(init);
    this.hasAttention = c.attention !== null;
    this.hasDownsample = c.addDownsample;
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    for (let i = 0; i < c.numLayers; i++)
      resnets.push(resnet(c, i === 0 ? c.inChannels : c.outChannels, c.outChannels, init));
    if (c.attention) {
      const attentions = this.add("attentions", new ModuleList<Transformer2DModel>());
      for (let i = 0; i < c.numLayers; i++) attentions.push(transformer(c, c.attention, c.outChannels, init));
    }
    if (c.addDownsample) {
      this.add("downsamplers", new ModuleList()).push(new Downsample2D(c.outChannels, c.outChannels, 1, init));
    }
  }

  forward(x: Tensor, temb: Tensor, context: Tensor): DownOutput {
    return scope(() => {
      const resnets = this.mod<ModuleList<ResnetBlock2D>>("resnets");
      const attentions = this.hasAttention ? this.mod<ModuleList<Transformer2DModel>>("attentions") : null;
      const skips: Tensor[] = [];
      let h = x;
      for (let i = 0; i < resnets.length; i++) {
        h = this.resnet(resnets.at(i), h, temb);
        if (attentions) h = this.attention(attentions.at(i), h, context);
        skips.push(h);
      }
      if (this.hasDownsample) {
        h = this.mod<ModuleList<Downsample2D>>("downsamplers").at(0).forward(h);
        skips.push(h);
      }
      return { hidden: h, skips };
    });
  }
}

/** resnets.0, then (attentions.i, resnets.i+1) pairs. */
export class UNetMidBlock2DCrossAttn extends UNetBlock {
  constructor(c: UNetBlockConfig & { channels: number; attention: CrossAttnConfig }, init: InitOptions = {}) {
    super(init);
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    const attentions = this.add("attentions", new ModuleList<Transformer2DModel>());
    resnets.push(resnet(c, c.channels, c.channels, init));
    for (let i = 0; i < c.numLayers; i++) {
      attentions.push(transformer(c, c.attention, c.channels, init));
      resnets.push(resnet(c, c.channels, c.channels, init));
    }
  }

  forward(x: Tensor, temb: Tensor, context: Tensor): Tensor {
    return scope(() => {
      const resnets = this.mod<ModuleList<ResnetBlock2D>>("resnets");
      const attentions = this.mod<ModuleList<Transformer2DModel>>("attentions");
      let h = this.resnet(resnets.at(0), x, temb);
      for (let i = 0; i < attentions.length; i++) {
        h = this.attention(attentions.at(i), h, context);
        h = this.resnet(resnets.at(i + 1), h, temb);
      }
      return h;
    });
  }
}

/**
 * numLayers = layers_per_block + 1 resnets, each fed cat([h, skip]) with the
 * skips taken last-first (+ attentions), then an optional upsampler.
 */
export class UpBlock extends UNetBlock {
  readonly hasAttention: boolean;
  readonly hasUpsample: boolean;
  readonly numLayers: number;

  constructor(
    c: UNetBlockConfig & {
      inChannels: number;
      prevOutputChannels: number;
      outChannels: number;
      addUpsample: boolean;
      attention: CrossAttnConfig | null;
    },
    init: InitOptions = {},
  ) {
    super(init);
    this.hasAttention = c.attention !== null;
    this.hasUpsample = c.addUpsample;
    this.numLayers = c.numLayers;
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    for (let i = 0; i < c.numLayers; i++) {
      const skipChannels = i === c.numLayers - 1 ? c.inChannels : c.outChannels;
      const inChannels = i === 0 ? c.prevOutputChannels : c.outChannels;
      resnets.push(resnet(c, inChannels + skipChannels, c.outChannels, init));
    }
    if (c.attention) {
      const attentions = this.add("attentions", new ModuleList<Transformer2DModel>());
      for (let i = 0; i < c.numLayers; i++) attentions.push(transformer(c, c.attention, c.outChannels, init));
    }
    if (c.addUpsample)
      this.add("upsamplers", new ModuleList()).push(new Upsample2D(c.outChannels, c.outChannels, init));
  }

  /** `skips`: this block's numLayers skip tensors in the order the down path made them. */
  forward(x: Tensor, skips: readonly Tensor[], temb: Tensor, context: Tensor, upsampleSize?: [number, number]): Tensor {
    if (skips.length !== this.numLayers)
      throw new Error(`UpBlock: expected ${this.numLayers} skips, got ${skips.length}`);
    return scope(() => {
      const resnets = this.mod<ModuleList<ResnetBlock2D>>("resnets");
      const attentions = this.hasAttention ? this.mod<ModuleList<Transformer2DModel>>("attentions") : null;
      let h = x;
      for (let i = 0; i < resnets.length; i++) {
        const r = resnets.at(i);
        const skip = skips[skips.length - 1 - i];
        h = this.segment((x, s, t) => r.forward(cat([x, s], 1), t), [h, skip, temb]);
        if (attentions) h = this.attention(attentions.at(i), h, context);
      }
      if (this.hasUpsample) h = this.mod<ModuleList<Upsample2D>>("upsamplers").at(0).forward(h, upsampleSize);
      return h;
    });
  }
}
