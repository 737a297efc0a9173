// UNet key map, diffusers ⇄ LDM (`model.diffusion_model.*`), for any number of
// levels and layers per block. Block numbering, with L = layers_per_block
// (diffusers scripts/convert_diffusers_to_original_stable_diffusion.py, made
// general the way convert_from_ckpt.py `convert_ldm_unet_checkpoint` reads it):
//   down_blocks.i.resnets.j / attentions.j  ⇄ input_blocks.{(L+1)i+j+1}.0 / .1
//   down_blocks.i.downsamplers.0.conv       ⇄ input_blocks.{(L+1)(i+1)}.0.op
//   up_blocks.i.resnets.j / attentions.j    ⇄ output_blocks.{(L+1)i+j}.0 / .1   (j ≤ L)
//   up_blocks.i.upsamplers.0                ⇄ output_blocks.{(L+1)i+L}.{1, or 2 after an attention}
//   mid_block.resnets.j ⇄ middle_block.{2j}; mid_block.attentions.0 ⇄ middle_block.1
import type { UNetConfig } from "./configs.js";
import { KeyMap, type KeyMapEntry } from "./keymap.js";

export const UNET_PREFIX = "model.diffusion_model.";

// diffusers ResnetBlock2D ⇄ LDM ResBlock (inside one block).
const RESNET: [string, string][] = [
  ["norm1", "in_layers.0"],
  ["conv1", "in_layers.2"],
  ["time_emb_proj", "emb_layers.1"],
  ["norm2", "out_layers.0"],
  ["conv2", "out_layers.3"],
];

class Builder {
  readonly entries: KeyMapEntry[] = [];

  /** weight + bias of one module. */
  module(d: string, l: string, bias = true): void {
    this.entries.push({ diffusers: [`${d}.weight`], ldm: `${UNET_PREFIX}${l}.weight`, transform: "none" });
    if (bias) this.entries.push({ diffusers: [`${d}.bias`], ldm: `${UNET_PREFIX}${l}.bias`, transform: "none" });
  }

  resnet(d: string, l: string, shortcut: boolean): void {
    for (const [dn, ln] of RESNET) this.module(`${d}.${dn}`, `${l}.${ln}`);
    if (shortcut) this.module(`${d}.conv_shortcut`, `${l}.skip_connection`);
  }

  /** Transformer2DModel: the same names on both sides. */
  transformer(d: string, l: string, depth: number): void {
    const same = (name: string, bias = true) => this.module(`${d}.${name}`, `${l}.${name}`, bias);
    same("norm");
    same("proj_in");
    for (let t = 0; t < depth; t++) {
      const b = `transformer_blocks.${t}`;
      for (const attn of ["attn1", "attn2"]) {
        same(`${b}.${attn === "attn1" ? "norm1" : "norm2"}`);
        for (const p of ["to_q", "to_k", "to_v"]) same(`${b}.${attn}.${p}`, false);
        same(`${b}.${attn}.to_out.0`);
      }
      same(`${b}.norm3`);
      same(`${b}.ff.net.0.proj`);
      same(`${b}.ff.net.2`);
    }
    same("proj_out");
  }
}

function checkConfig(c: UNetConfig): void {
  const n = c.blockOutChannels.length;
  if (n < 1 || c.downBlockTypes.length !== n || c.upBlockTypes.length !== n) {
    throw new Error(
      `UNet config: ${n} block_out_channels, ${c.downBlockTypes.length} down and ${c.upBlockTypes.length} up blocks`,
    );
  }
  if (!Number.isInteger(c.layersPerBlock) || c.layersPerBlock < 1)
    throw new Error(`UNet config: layers_per_block ${c.layersPerBlock}`);
}

/** The UNet key map for a config (every parameter the diffusers model has). */
export function unetKeyMap(c: UNetConfig): KeyMap {
  checkConfig(c);
  const b = new Builder();
  const L = c.layersPerBlock;
  const n = c.blockOutChannels.length;
  const depth = c.transformerLayersPerBlock;
  b.module("conv_in", "input_blocks.0.0");
  b.module("time_embedding.linear_1", "time_embed.0");
  b.module("time_embedding.linear_2", "time_embed.2");
  // diffusers convert_from_ckpt.py: class_embedding.weight = label_emb.weight (StableDiffusionUpscalePipeline).
  if (c.numClassEmbeds !== undefined) b.module("class_embedding", "label_emb", false);

  let out = c.blockOutChannels[0];
  for (let i = 0; i < n; i++) {
    const input = out;
    out = c.blockOutChannels[i];
    const attn = c.downBlockTypes[i] === "CrossAttnDownBlock2D";
    for (let j = 0; j < L; j++) {
      const slot = (L + 1) * i + j + 1;
      // A resnet has a 1×1 shortcut where its channel count changes (diffusers ResnetBlock2D).
      b.resnet(`down_blocks.${i}.resnets.${j}`, `input_blocks.${slot}.0`, (j === 0 ? input : out) !== out);
      if (attn) b.transformer(`down_blocks.${i}.attentions.${j}`, `input_blocks.${slot}.1`, depth);
    }
    if (i < n - 1) b.module(`down_blocks.${i}.downsamplers.0.conv`, `input_blocks.${(L + 1) * (i + 1)}.0.op`);
  }

  b.resnet("mid_block.resnets.0", "middle_block.0", false);
  b.transformer("mid_block.attentions.0", "middle_block.1", depth);
  b.resnet("mid_block.resnets.1", "middle_block.2", false);

  for (let i = 0; i < n; i++) {
    const attn = c.upBlockTypes[i] === "CrossAttnUpBlock2D";
    // Up resnets take the skip connection concatenated, so their input width always differs: all have shortcuts.
    for (let j = 0; j <= L; j++) {
      const slot = (L + 1) * i + j;
      b.resnet(`up_blocks.${i}.resnets.${j}`, `output_blocks.${slot}.0`, true);
      if (attn) b.transformer(`up_blocks.${i}.attentions.${j}`, `output_blocks.${slot}.1`, depth);
    }
    if (i < n - 1)
      b.module(`up_blocks.${i}.upsamplers.0.conv`, `output_blocks.${(L + 1) * i + L}.${attn ? 2 : 1}.conv`);
  }

  b.module("conv_norm_out", "out.0");
  b.module("conv_out", "out.2");
  return new KeyMap({ component: "unet", entries: b.entries });
}
