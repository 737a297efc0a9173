// Text encoder key maps, transformers CLIPTextModel (diffusers `text_encoder/`)
// ⇄ single-file LDM:
// - SD1 ("clip"): `cond_stage_model.transformer.` + the transformers key.
// - SD2 ("openclip"): OpenCLIP's tower under `cond_stage_model.model.`:
//   `transformer.resblocks.N` ⇄ `text_model.encoder.layers.N`, fused
//   `attn.in_proj_{weight,bias}` ⇄ q/k/v projections, `ln_1/ln_2` ⇄
//   `layer_norm1/2`, `mlp.c_fc/c_proj` ⇄ `mlp.fc1/fc2`, `ln_final` ⇄
//   `final_layer_norm`, `positional_embedding` ⇄ `position_embedding.weight`.
//   `text_projection`, `logit_scale` and the layers past num_hidden_layers
//   (SD2 uses the penultimate of 24) are dropped on load.
// References: diffusers v0.19.3 convert_from_ckpt.py (`convert_open_clip_checkpoint`,
// `textenc_transformer_conversion_lst`); kohya-ss/sd-scripts library/model_util.py
// (`convert_ldm_clip_checkpoint_v2`).
import type { TextEncoderConfig, TextLayout } from "./configs.js";
import { KeyMap, type KeyMapEntry } from "./keymap.js";

export const CLIP_PREFIX = "cond_stage_model.transformer.";
export const OPENCLIP_PREFIX = "cond_stage_model.model.";

const POSITION_IDS = "text_model.embeddings.position_ids";

// Older transformers CLIPTextModel state dicts had no `text_model.` level; some
// SD1 checkpoints still carry them (A1111 modules/sd_models.py `checkpoint_dict_replacements`).
const OLD_CLIP: [string, string][] = [
  ["cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.text_model.embeddings."],
  ["cond_stage_model.transformer.encoder.", "cond_stage_model.transformer.text_model.encoder."],
  ["cond_stage_model.transformer.final_layer_norm.", "cond_stage_model.transformer.text_model.final_layer_norm."],
];

// SD2 weights saved by Stability's sgm code keep the text tower under this prefix (ComfyUI supported_models.py SD20).
const SGM_OPENCLIP = "conditioner.embedders.0.model.";

function clipEntries(c: TextEncoderConfig): KeyMapEntry[] {
  const keys = ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"];
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const l = `text_model.encoder.layers.${i}`;
    for (const m of [
      "self_attn.k_proj",
      "self_attn.v_proj",
      "self_attn.q_proj",
      "self_attn.out_proj",
      "layer_norm1",
      "mlp.fc1",
      "mlp.fc2",
      "layer_norm2",
    ]) {
      keys.push(`${l}.${m}.weight`, `${l}.${m}.bias`);
    }
  }
  keys.push("text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias");
  return keys.map((k) => ({ diffusers: [k], ldm: CLIP_PREFIX + k, transform: "none" }));
}

function openclipEntries(c: TextEncoderConfig): KeyMapEntry[] {
  const P = OPENCLIP_PREFIX;
  const e: KeyMapEntry[] = [];
  const one = (d: string, l: string) => e.push({ diffusers: [d], ldm: P + l, transform: "none" });
  const pair = (d: string, l: string) => {
    one(`${d}.weight`, `${l}.weight`);
    one(`${d}.bias`, `${l}.bias`);
  };
  one("text_model.embeddings.token_embedding.weight", "token_embedding.weight");
  one("text_model.embeddings.position_embedding.weight", "positional_embedding");
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const d = `text_model.encoder.layers.${i}`;
    const l = `transformer.resblocks.${i}`;
    for (const w of ["weight", "bias"]) {
      e.push({
        diffusers: ["q_proj", "k_proj", "v_proj"].map((p) => `${d}.self_attn.${p}.${w}`),
        ldm: `${P}${l}.attn.in_proj_${w}`,
        transform: "qkv",
      });
    }
    pair(`${d}.self_attn.out_proj`, `${l}.attn.out_proj`);
    pair(`${d}.layer_norm1`, `${l}.ln_1`);
    pair(`${d}.mlp.fc1`, `${l}.mlp.c_fc`);
    pair(`${d}.mlp.fc2`, `${l}.mlp.c_proj`);
    pair(`${d}.layer_norm2`, `${l}.ln_2`);
  }
  pair("text_model.final_layer_norm", "ln_final");
  return e;
}

/** Rewrites the older spellings of single-file text encoder keys (old transformers CLIP, sgm OpenCLIP) to the ones in the maps. */
export function normalizeLdmTextKey(k: string): string {
  for (const [from, to] of OLD_CLIP) if (k.startsWith(from)) return to + k.slice(from.length);
  return k.startsWith(SGM_OPENCLIP) ? OPENCLIP_PREFIX + k.slice(SGM_OPENCLIP.length) : k;
}

/** The text encoder key map for a config and a single-file layout. */
export function textEncoderKeyMap(c: TextEncoderConfig, layout: TextLayout): KeyMap {
  if (!Number.isInteger(c.numHiddenLayers) || c.numHiddenLayers < 1) {
    throw new Error(`text encoder config: num_hidden_layers ${c.numHiddenLayers}`);
  }
  const ignoreDiffusers = (k: string) => k === POSITION_IDS;
  if (layout === "clip") {
    return new KeyMap({
      component: "textEncoder",
      entries: clipEntries(c),
      ignoreLdm: (k) => k === CLIP_PREFIX + POSITION_IDS,
      ignoreDiffusers,
      normalizeLdm: normalizeLdmTextKey,
    });
  }
  const layer = new RegExp(`^${OPENCLIP_PREFIX.replace(/\./g, "\\.")}transformer\\.resblocks\\.(\\d+)\\.`);
  return new KeyMap({
    component: "textEncoder",
    entries: openclipEntries(c),
    ignoreLdm: (k) => {
      const rest = k.startsWith(OPENCLIP_PREFIX) ? k.slice(OPENCLIP_PREFIX.length) : "";
      if (rest === "text_projection" || rest === "logit_scale" || rest === "attn_mask") return true;
      const m = layer.exec(k);
      return m !== null && Number(m[1]) >= c.numHiddenLayers;
    },
    ignoreDiffusers,
    normalizeLdm: normalizeLdmTextKey,
  });
}
