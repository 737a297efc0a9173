// The VAE's Encoder and Decoder with their blocks, as diffusers v0.19.3 builds
// them (huggingface/diffusers src/diffusers/models/vae.py: Encoder, Decoder;
// unet_2d_blocks.py: DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D).
// No time embedding; GroupNorm eps 1e-6 throughout.
import { scope, type Tensor } from "../../engine/index.js";
import { Conv2d, GroupNorm, type InitOptions } from "../../nn/index.js";
import { Attention, Block, Downsample2D, ModuleList, ResnetBlock2D, Upsample2D } from "../blocks/index.js";

const EPS = 1e-6;

function resnet(inChannels: number, outChannels: number, groups: number, init: InitOptions): ResnetBlock2D {
  return new ResnetBlock2D({ inChannels, outChannels, tembChannels: null, groups, eps: EPS }, init);
}

/** resnets.0, attentions.0 (one head over all channels, with group_norm and a residual), resnets.1. */
export class UNetMidBlock2D extends Block {
  constructor(channels: number, groups: number, init: InitOptions = {}) {
    super(init);
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    resnets.push(resnet(channels, channels, groups, init));
    // diffusers: heads = channels // attention_head_dim with attention_head_dim = channels
    const attention = new Attention(
      {
        queryDim: channels,
        heads: 1,
        dimHead: channels,
        bias: true,
        normNumGroups: groups,
        eps: EPS,
        residualConnection: true,
      },
      init,
    );
    this.add("attentions", new ModuleList<Attention>()).push(attention);
    resnets.push(resnet(channels, channels, groups, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      const resnets = this.mod<ModuleList<ResnetBlock2D>>("resnets");
      let h = resnets.at(0).forward(x);
      h = this.mod<ModuleList<Attention>>("attentions").at(0).forward(h);
      return resnets.at(1).forward(h);
    });
  }
}

/** resnets, then an optional stride-2 downsampler with the (0,1,0,1) pad. */
export class DownEncoderBlock2D extends Block {
  constructor(
    numLayers: number,
    inChannels: number,
    outChannels: number,
    groups: number,
    readonly addDownsample: boolean,
    init: InitOptions = {},
  ) {
    super(init);
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    for (let i = 0; i < numLayers; i++)
      resnets.push(resnet(i === 0 ? inChannels : outChannels, outChannels, groups, init));
    if (addDownsample)
      this.add("downsamplers", new ModuleList()).push(new Downsample2D(outChannels, outChannels, 0, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = x;
      for (const r of this.mod<ModuleList<ResnetBlock2D>>("resnets")) h = r.forward(h);
      if (this.addDownsample) h = this.mod<ModuleList<Downsample2D>>("downsamplers").at(0).forward(h);
      return h;
    });
  }
}

/** resnets, then an optional nearest ×2 upsampler. */
export class UpDecoderBlock2D extends Block {
  constructor(
    numLayers: number,
    inChannels: number,
    outChannels: number,
    groups: number,
    readonly addUpsample: boolean,
    init: InitOptions = {},
  ) {
    super(init);
    const resnets = this.add("resnets", new ModuleList<ResnetBlock2D>());
    for (let i = 0; i < numLayers; i++)
      resnets.push(resnet(i === 0 ? inChannels : outChannels, outChannels, groups, init));
    if (addUpsample) this.add("upsamplers", new ModuleList()).push(new Upsample2D(outChannels, outChannels, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = x;
      for (const r of this.mod<ModuleList<ResnetBlock2D>>("resnets")) h = r.forward(h);
      if (this.addUpsample) h = this.mod<ModuleList<Upsample2D>>("upsamplers").at(0).forward(h);
      return h;
    });
  }
}

export interface CoderConfig {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
}

/** image [B, in, H, W] → [B, 2·latent, H/f, W/f] (mean and logvar before quant_conv). */
export class Encoder extends Block {
  constructor(c: CoderConfig & { latentChannels: number }, init: InitOptions = {}) {
    super(init);
    const ch = c.blockOutChannels;
    const n = ch.length;
    this.add("conv_in", new Conv2d(c.inChannels, ch[0], 3, { padding: 1 }, init));
    const down = this.add("down_blocks", new ModuleList<DownEncoderBlock2D>());
    for (let i = 0; i < n; i++) {
      const input = ch[Math.max(i - 1, 0)];
      down.push(new DownEncoderBlock2D(c.layersPerBlock, input, ch[i], c.normNumGroups, i < n - 1, init));
    }
    this.add("mid_block", new UNetMidBlock2D(ch[n - 1], c.normNumGroups, init));
    this.add("conv_norm_out", new GroupNorm(c.normNumGroups, ch[n - 1], EPS, init));
    this.add("conv_out", new Conv2d(ch[n - 1], 2 * c.latentChannels, 3, { padding: 1 }, init));
  }

  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = this.call("conv_in", x);
      for (const b of this.mod<ModuleList<DownEncoderBlock2D>>("down_blocks")) h = b.forward(h);
      h = this.call("mid_block", h);
      return this.call("conv_out", this.call("conv_norm_out", h).silu());
    });
  }
}

/** latent [B, latent, h, w] (after post_quant_conv) → image [B, out, h·f, w·f]. */
export class Decoder extends Block {
  constructor(c: CoderConfig & { latentChannels: number }, init: InitOptions = {}) {
    super(init);
    const reversed = [...c.blockOutChannels].reverse();
    const n = reversed.length;
    this.add("conv_in", new Conv2d(c.latentChannels, reversed[0], 3, { padding: 1 }, init));
    this.add("mid_block", new UNetMidBlock2D(reversed[0], c.normNumGroups, init));
    const up = this.add("up_blocks", new ModuleList<UpDecoderBlock2D>());
    for (let i = 0; i < n; i++) {
      const prev = reversed[Math.max(i - 1, 0)];
      up.push(new UpDecoderBlock2D(c.layersPerBlock + 1, prev, reversed[i], c.normNumGroups, i < n - 1, init));
    }
    this.add("conv_norm_out", new GroupNorm(c.normNumGroups, c.blockOutChannels[0], EPS, init));
    this.add("conv_out", new Conv2d(c.blockOutChannels[0], c.outChannels, 3, { padding: 1 }, init));
  }

  forward(z: Tensor): Tensor {
    return scope(() => {
      let h = this.call("mid_block", this.call("conv_in", z));
      for (const b of this.mod<ModuleList<UpDecoderBlock2D>>("up_blocks")) h = b.forward(h);
      return this.call("conv_out", this.call("conv_norm_out", h).silu());
    });
  }
}
