// UNet2DConditionModel for SD1.x/SD2.x, parameter paths = diffusers keys
// (huggingface/diffusers v0.19.3 src/diffusers/models/unet_2d_condition.py).
import { full, scope, type Tensor } from "../../engine/index.js";
import { Conv2d, Embedding, GroupNorm, type InitOptions } from "../../nn/index.js";
import { Block, ModuleList, TimestepEmbedding, timestepFeatures } from "../blocks/index.js";
import { type CrossAttnConfig, DownBlock, UNetBlock, UNetMidBlock2DCrossAttn, UpBlock } from "./blocks.js";
import { type UNetConfig, type UNetPreset, unetPresets } from "./config.js";

/** One value per block: a number for all blocks, or a list. */
function perBlock(v: number | number[], n: number, what: string): number[] {
  if (typeof v === "number") return Array(n).fill(v);
  if (v.length !== n) throw new Error(`UNet config: ${what} has ${v.length} entries for ${n} blocks`);
  return [...v];
}

/**
 * The denoiser: forward(noisy latents, timestep, text embeddings) → the model
 * output (noise, or v for v-prediction checkpoints).
 */
export class UNet2DConditionModel extends Block {
  readonly config: UNetConfig;
  /** How many up blocks upsample: inputs whose size is not a multiple of 2^n pass explicit sizes. */
  readonly numUpsamplers: number;

  constructor(config: UNetConfig | UNetPreset, init: InitOptions = {}) {
    super(init);
    const c = typeof config === "string" ? unetPresets[config] : config;
    this.config = c;
    const n = c.blockOutChannels.length;
    if (c.downBlockTypes.length !== n || c.upBlockTypes.length !== n) {
      throw new Error("UNet config: down/up block types must have one entry per block_out_channels entry");
    }
    const heads = perBlock(c.numAttentionHeads ?? c.attentionHeadDim, n, "attention heads");
    const layers = perBlock(c.transformerLayersPerBlock ?? 1, n, "transformer_layers_per_block");
    const oc = c.onlyCrossAttention ?? false;
    const onlyCross = typeof oc === "boolean" ? Array<boolean>(n).fill(oc) : oc;
    if (onlyCross.length !== n)
      throw new Error(`UNet config: only_cross_attention has ${onlyCross.length} entries for ${n} blocks`);
    const ch0 = c.blockOutChannels[0];
    const timeDim = ch0 * 4;
    const base = { tembChannels: timeDim, groups: c.normNumGroups, eps: c.normEps, dropout: c.dropout ?? 0 };
    const attn = (i: number, mid = false): CrossAttnConfig => ({
      onlyCrossAttention: !mid && onlyCross[i],
      heads: heads[i],
      crossAttentionDim: c.crossAttentionDim,
      transformerLayers: layers[i],
      useLinearProjection: c.useLinearProjection,
      upcastAttention: c.upcastAttention,
    });

    this.add("conv_in", new Conv2d(c.inChannels, ch0, 3, { padding: 1 }, init));
    this.add("time_embedding", new TimestepEmbedding(ch0, timeDim, init));
    if (c.numClassEmbeds !== undefined) this.add("class_embedding", new Embedding(c.numClassEmbeds, timeDim, init));

    const down = this.add("down_blocks", new ModuleList<DownBlock>());
    let out = ch0;
    for (let i = 0; i < n; i++) {
      const input = out;
      out = c.blockOutChannels[i];
      const block = {
        ...base,
        numLayers: c.layersPerBlock,
        inChannels: input,
        outChannels: out,
        addDownsample: i < n - 1,
        attention: c.downBlockTypes[i] === "CrossAttnDownBlock2D" ? attn(i) : null,
      };
      down.push(new DownBlock(block, init));
    }

    const last = c.blockOutChannels[n - 1];
    const mid = { ...base, numLayers: 1, channels: last, attention: attn(n - 1, true) };
    this.add("mid_block", new UNetMidBlock2DCrossAttn(mid, init));

    // Up blocks mirror the down path; their heads and layers are the reversed lists.
    const reversed = [...c.blockOutChannels].reverse();
    const up = this.add("up_blocks", new ModuleList<UpBlock>());
    let upsamplers = 0;
    out = reversed[0];
    for (let i = 0; i < n; i++) {
      const prev = out;
      out = reversed[i];
      const addUpsample = i < n - 1;
      if (addUpsample) upsamplers++;
      const r = n - 1 - i;
      const block = {
        ...base,
        numLayers: c.layersPerBlock + 1,
        inChannels: reversed[Math.min(i + 1, n - 1)],
        prevOutputChannels: prev,
        outChannels: out,
        addUpsample,
        attention: c.upBlockTypes[i] === "CrossAttnUpBlock2D" ? attn(r) : null,
      };
      up.push(new UpBlock(block, init));
    }
    this.numUpsamplers = upsamplers;

    this.add("conv_norm_out", new GroupNorm(c.normNumGroups, ch0, c.normEps, init));
    this.add("conv_out", new Conv2d(ch0, c.outChannels, 3, { padding: 1 }, init));
  }

  /** Recompute each resnet and transformer in backward instead of keeping its activations. */
  setGradientCheckpointing(on: boolean): this {
    for (const m of this.namedModules().values()) if (m instanceof UNetBlock) m.gradientCheckpointing = on;
    return this;
  }

  /**
   * sample [B, in, H, W]; timestep a number, a 0-d tensor or a [B] tensor (int or
   * float); context (encoder hidden states) [B, S, crossAttentionDim];
   * classLabels [B] int64, required when the config has numClassEmbeds (the
   * ×4 upscaler's noise level): that row of class_embedding is added to the
   * time embedding after its MLP (diffusers get_class_embed).
   */
  forward(sample: Tensor, timestep: number | Tensor, context: Tensor, classLabels?: Tensor): Tensor {
    return scope(() => {
      const [batch, , height, width] = sample.shape;
      let emb = this.call("time_embedding", this.timeFeatures(timestep, batch, sample));
      if (this.config.numClassEmbeds !== undefined) {
        if (!classLabels) throw new Error("UNet: this model has a class embedding, so class_labels must be given");
        if (classLabels.ndim !== 1 || classLabels.size(0) !== batch)
          throw new Error(`UNet: class_labels must hold ${batch} values, got shape [${classLabels.shape}]`);
        const labels = classLabels.device === sample.device ? classLabels : classLabels.to(sample.device);
        const rows = this.mod<Embedding>("class_embedding").forward(labels);
        emb = emb.add(rows.dtype === emb.dtype ? rows : rows.to(emb.dtype));
      }

      // Sizes that are not multiples of 2^upsamplers need explicit upsample sizes.
      const factor = 2 ** this.numUpsamplers;
      const forwardSizes = height % factor !== 0 || width % factor !== 0;

      let h = this.call("conv_in", sample);
      const skips: Tensor[] = [h];
      for (const block of this.mod<ModuleList<DownBlock>>("down_blocks")) {
        const r = block.forward(h, emb, context);
        h = r.hidden;
        skips.push(...r.skips);
      }
      h = this.mod<UNetMidBlock2DCrossAttn>("mid_block").forward(h, emb, context);
      const ups = this.mod<ModuleList<UpBlock>>("up_blocks");
      for (let i = 0; i < ups.length; i++) {
        const block = ups.at(i);
        const mine = skips.splice(skips.length - block.numLayers, block.numLayers);
        const next = skips[skips.length - 1];
        const size =
          forwardSizes && i < ups.length - 1 ? ([next.size(2), next.size(3)] as [number, number]) : undefined;
        h = block.forward(h, mine, emb, context, size);
      }
      h = this.call("conv_norm_out", h).silu();
      return this.call("conv_out", h);
    });
  }

  /** The [B, ch0] sinusoidal features of the timesteps, in the sample's dtype. */
  timeFeatures(timestep: number | Tensor, batch: number, like: Tensor): Tensor {
    return scope(() => {
      let t: Tensor;
      if (typeof timestep === "number") {
        const dtype = Number.isInteger(timestep) ? "int64" : "float32";
        t = full([batch], timestep, { dtype, device: like.device });
      } else if (timestep.ndim === 0 || timestep.numel === 1) {
        t = timestep.reshape(1).expand(batch);
      } else if (timestep.ndim === 1 && timestep.size(0) === batch) {
        t = timestep;
      } else {
        throw new Error(`UNet: timestep must be a number or hold 1 or ${batch} values, got shape [${timestep.shape}]`);
      }
      if (t.device !== like.device) t = t.to(like.device);
      const c = this.config;
      const features = timestepFeatures(t, c.blockOutChannels[0], {
        flipSinToCos: c.flipSinToCos,
        freqShift: c.freqShift,
      });
      return features.dtype === like.dtype ? features : features.to(like.dtype);
    });
  }
}
