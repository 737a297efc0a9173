// VAE key map, diffusers AutoencoderKL ⇄ LDM (`first_stage_model.*`), for any
// number of levels and layers per block. The decoder's levels are numbered in
// reverse in LDM (`decoder.up.{n-1-i}`), and the mid-block attention is 1×1
// convs there (q, k, v, proj_out) where diffusers has linears (to_q, to_k,
// to_v, to_out.0); their biases are [C] (LDM Conv2d), but files made by
// diffusers v0.25's script hold [C,1,1] (see keymap.ts `flatBias`). References: diffusers v0.25.0
// scripts/convert_diffusers_to_original_stable_diffusion.py (`vae_conversion_map*`),
// convert_from_ckpt.py `convert_ldm_vae_checkpoint`.
import type { VaeConfig } from "./configs.js";
import { KeyMap, type KeyMapEntry, type TransformName } from "./keymap.js";

export const VAE_PREFIX = "first_stage_model.";

const RESNET: [string, string][] = [
  ["norm1", "norm1"],
  ["conv1", "conv1"],
  ["norm2", "norm2"],
  ["conv2", "conv2"],
];

const ATTENTION: [string, string][] = [
  ["to_q", "q"],
  ["to_k", "k"],
  ["to_v", "v"],
  ["to_out.0", "proj_out"],
];

// diffusers < 0.17 spelled the VAE attention query/key/value/proj_attn.
const OLD_ATTENTION: [RegExp, string][] = [
  [/\.attentions\.0\.query\./, ".attentions.0.to_q."],
  [/\.attentions\.0\.key\./, ".attentions.0.to_k."],
  [/\.attentions\.0\.value\./, ".attentions.0.to_v."],
  [/\.attentions\.0\.proj_attn\./, ".attentions.0.to_out.0."],
];

class Builder {
  readonly entries: KeyMapEntry[] = [];

  module(d: string, l: string, weight: TransformName = "none", bias: TransformName = "none"): void {
    this.entries.push({ diffusers: [`${d}.weight`], ldm: `${VAE_PREFIX}${l}.weight`, transform: weight });
    this.entries.push({ diffusers: [`${d}.bias`], ldm: `${VAE_PREFIX}${l}.bias`, transform: bias });
  }

  resnet(d: string, l: string, shortcut: boolean): void {
    for (const [dn, ln] of RESNET) this.module(`${d}.${dn}`, `${l}.${ln}`);
    if (shortcut) this.module(`${d}.conv_shortcut`, `${l}.nin_shortcut`);
  }

  mid(side: "encoder" | "decoder"): void {
    this.resnet(`${side}.mid_block.resnets.0`, `${side}.mid.block_1`, false);
    this.module(`${side}.mid_block.attentions.0.group_norm`, `${side}.mid.attn_1.norm`);
    for (const [dn, ln] of ATTENTION)
      this.module(`${side}.mid_block.attentions.0.${dn}`, `${side}.mid.attn_1.${ln}`, "conv1x1", "flatBias");
    this.resnet(`${side}.mid_block.resnets.1`, `${side}.mid.block_2`, false);
  }
}

/** The VAE key map for a config. */
export function vaeKeyMap(c: VaeConfig): KeyMap {
  const n = c.blockOutChannels.length;
  const L = c.layersPerBlock;
  if (n < 1 || !Number.isInteger(L) || L < 1) throw new Error(`VAE config: ${n} levels, layers_per_block ${L}`);
  const b = new Builder();

  b.module("encoder.conv_in", "encoder.conv_in");
  let out = c.blockOutChannels[0];
  for (let i = 0; i < n; i++) {
    const input = out;
    out = c.blockOutChannels[i];
    for (let j = 0; j < L; j++) {
      b.resnet(
        `encoder.down_blocks.${i}.resnets.${j}`,
        `encoder.down.${i}.block.${j}`,
        (j === 0 ? input : out) !== out,
      );
    }
    if (i < n - 1) b.module(`encoder.down_blocks.${i}.downsamplers.0.conv`, `encoder.down.${i}.downsample.conv`);
  }
  b.mid("encoder");
  b.module("encoder.conv_norm_out", "encoder.norm_out");
  b.module("encoder.conv_out", "encoder.conv_out");

  b.module("decoder.conv_in", "decoder.conv_in");
  b.mid("decoder");
  const reversed = [...c.blockOutChannels].reverse();
  out = reversed[0];
  for (let i = 0; i < n; i++) {
    const input = out;
    out = reversed[i];
    const level = n - 1 - i;
    for (let j = 0; j <= L; j++) {
      b.resnet(
        `decoder.up_blocks.${i}.resnets.${j}`,
        `decoder.up.${level}.block.${j}`,
        (j === 0 ? input : out) !== out,
      );
    }
    if (i < n - 1) b.module(`decoder.up_blocks.${i}.upsamplers.0.conv`, `decoder.up.${level}.upsample.conv`);
  }
  b.module("decoder.conv_norm_out", "decoder.norm_out");
  b.module("decoder.conv_out", "decoder.conv_out");

  b.module("quant_conv", "quant_conv");
  b.module("post_quant_conv", "post_quant_conv");
  return new KeyMap({
    component: "vae",
    entries: b.entries,
    normalizeDiffusers: (k) => OLD_ATTENTION.reduce((s, [re, to]) => s.replace(re, to), k),
  });
}
