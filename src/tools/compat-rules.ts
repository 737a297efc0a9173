// What each program's LoRA loader accepts, as data: which module names it
// maps to an SD 1.x/2.x layer and which weight parts (after the module name)
// its module types consume. Each rule set is read from that loader's source:
//
// - A1111: AUTOMATIC1111/stable-diffusion-webui extensions-builtin/Lora/networks.py
//   load_network (key split at the first "."; lora_convert / convert_diffusers_name_to_compvis
//   maps kohya names `lora_unet_<diffusers path>` and `lora_te_text_model_…`; the SDXL-style
//   `lora_unet_<compvis path>` is tried next; `bundle_emb.*` are embeddings; unmatched keys
//   are only logged at debug level; a matched module that no module type accepts raises
//   "Could not find a module type") and network_lora.py / network_hada.py / network_lokr.py /
//   network_ia3.py / network_oft.py / network_full.py / network_norm.py / network_glora.py
//   (their create_module key tests).
// - ComfyUI: comfyanonymous/ComfyUI comfy/lora.py load_lora (the weight-part formats:
//   `.lora_up.weight`, `_lora.up.weight`, `.lora_B.weight`, `.lora.up.weight`,
//   `.lora_linear_layer.up.weight`, LoHa, LoKr, GLoRA, diff, set; every key not consumed
//   is warned "lora key not loaded" and skipped) and model_lora_keys_unet / _clip (the names:
//   `lora_unet_` + diffusers or compvis path, `lycoris_` + diffusers path, the compvis path
//   itself, `[unet.]` + diffusers path with `.to_` → `.processor.to_` (to_out.0 → to_out),
//   `lora_te_` / `lora_te1_`, `text_encoder.text_model.encoder.layers.N.<attn/mlp>`).
// - Forge: lllyasviel/stable-diffusion-webui-forge extensions-builtin/sd_forge_lora/networks.py
//   load_lora_for_models calls backend/patcher/lora.py load_lora / model_lora_keys_unet / _clip,
//   which take them from packages_3rdparty/comfyui_lora_collection/lora.py (webui_lora_collection/
//   lora.py, first in the priority list, is an empty "TODO"). That is an older copy of ComfyUI's
//   comfy/lora.py and differs from it: no `.reshape_weight` or `.set_weight` part, no `lycoris_`
//   name prefix (its model_lora_keys_unet maps `lora_unet_` + compvis / diffusers path, the compvis
//   path itself, `[unet.]` + processor path; _clip maps `lora_te_`, `lora_te1_` and
//   `text_encoder.text_model.encoder.layers.N.<attn/mlp>`), no OFT ("TODO: OFT"), and no
//   bundled embeddings (`bundle_emb.*` keys are just unmatched). And networks.py refuses the
//   whole file — "LoRA version mismatch", nothing applied — when more than 12 keys are left
//   unmatched after the UNet and CLIP passes (ComfyUI only warns per key).
// - diffusers: huggingface/diffusers loaders/lora_pipeline.py load_lora_weights with
//   loaders/lora_conversion_utils.py _convert_non_diffusers_lora_to_diffusers (kohya
//   `lora_unet_`/`lora_te_` names with lora_down/lora_up/alpha, dora_scale; any other
//   part left over fails "The following keys have not been correctly renamed"), diffusers
//   `unet.`/`text_encoder.` files, PEFT `lora_A/lora_B` under those prefixes, and the old
//   attn-processor names (converted with a deprecation warning).
// - kohya: kohya-ss/sd-scripts networks/lora.py create_network_from_weights (modules from
//   `<name>.lora_down.weight` keys, `lora_unet_`/`lora_te_` names of its target layers,
//   load_state_dict(strict=False): other keys are ignored).

export type LoaderId = "a1111" | "forge" | "comfyui" | "diffusers" | "kohya";

/** How a loader turns a key into (module name, weight part). */
export interface LoaderRules {
  id: LoaderId;
  name: string;
  /** "first-dot": the module name is everything before the first "." (A1111, kohya); "suffix": a known part is stripped from the end. */
  split: "first-dot" | "suffix";
  /** Weight parts a module type consumes, by method (a part starting "_" follows the name without a dot). */
  parts: Record<string, readonly string[]>;
  /** Module-name families this loader maps to layers (see moduleNames). */
  names: readonly NameFamily[];
  /** A module matched but with parts of no method: the whole file fails to load (A1111) or the keys are skipped. */
  unknownPartsFail: boolean;
  /** Keys outside every module are an error (diffusers) rather than ignored. */
  unmatchedFail: boolean;
  /** Key prefixes the loader takes as something else (A1111 bundled embeddings). */
  extras?: readonly string[];
  /** More keys than this left unmatched: the whole file is refused (Forge's networks.py: 12). */
  maxUnmatched?: number;
  /**
   * How its DoRA treats a dora_scale on the output axis ([out, 1(, 1, 1)]: LyCORIS' wd_on_out,
   * its default, and PEFT's magnitude). Every loader here reads the input axis ([1, in, …]) exactly.
   */
  doraOutputAxis?: { verdict: "misapplies" | "approximates"; why: string };
}

// A1111 extensions-builtin/Lora/network.py apply_weight_decompose and Forge's
// backend/patcher/lora.py weight_decompose take ‖W0 + ΔW‖ per input column
// only (transpose(0, 1) … norm(dim=1)): a [out, 1] dora_scale broadcasts
// against the [1, in] norm into a full matrix, with no error.
const DORA_INPUT_ONLY = {
  verdict: "misapplies",
  why: "its DoRA divides by the norms of the input columns only; an output-axis dora_scale ([out, 1, …]: LyCORIS' wd_on_out, PEFT's magnitude) broadcasts into wrong weights without an error",
} as const;

/** Families of module names, each generated from SD 1.x/2.x layer paths in compat-check.ts. */
export type NameFamily =
  | "kohya-diffusers" // lora_unet_<diffusers path _>, lora_te_text_model_<…>
  | "kohya-compvis" // lora_unet_<compvis path _> (A1111's SDXL-style fallback, ComfyUI)
  | "kohya-te1" // lora_te1_text_model_<…>
  | "lycoris-diffusers" // lycoris_<diffusers path _> (ComfyUI, SimpleTuner)
  | "compvis-plain" // diffusion_model.<compvis path> (ComfyUI's generic format)
  | "diffusers-processor" // [unet.]<diffusers path with .processor.to_> (old attn processors)
  | "diffusers-unet" // unet.<diffusers path>, text_encoder.<transformers path>
  | "te-diffusers-attn" // text_encoder.text_model.encoder.layers.N.{self_attn,mlp}.* (ComfyUI)
  | "kohya-targets"; // kohya networks/lora.py target layers only (attention, MLP, conv blocks)

const LORA = ["lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha"];
const LOHA = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"];
const LOKR = ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"];

const A1111_PARTS: Record<string, readonly string[]> = {
  lora: [...LORA, "dora_scale"],
  loha: [...LOHA, "dora_scale"],
  lokr: [...LOKR, "dora_scale"],
  ia3: ["weight", "on_input"],
  oft: ["oft_blocks", "oft_diag", "rescale", "alpha"],
  full: ["diff", "diff_b"],
  norm: ["w_norm", "b_norm"],
  glora: ["a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"],
};

const COMFY_PARTS: Record<string, readonly string[]> = {
  lora: [...LORA, "dora_scale", "reshape_weight"],
  "diffusers-processor": ["_lora.up.weight", "_lora.down.weight", "alpha"],
  peft: ["lora_B.weight", "lora_A.weight", "alpha", "dora_scale"],
  diffusers: ["lora.up.weight", "lora.down.weight", "alpha"],
  transformers: ["lora_linear_layer.up.weight", "lora_linear_layer.down.weight", "alpha"],
  loha: [...LOHA, "dora_scale"],
  lokr: [...LOKR, "dora_scale"],
  glora: ["a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"],
  diff: ["w_norm", "b_norm", "diff", "diff_b", "set_weight"],
};

/** Forge's packages_3rdparty/comfyui_lora_collection/lora.py load_lora: ComfyUI's parts less reshape_weight and set_weight. */
const FORGE_PARTS: Record<string, readonly string[]> = {
  ...COMFY_PARTS,
  lora: [...LORA, "dora_scale"],
  diff: ["w_norm", "b_norm", "diff", "diff_b"],
};

const COMFYUI: LoaderRules = {
  id: "comfyui",
  name: "ComfyUI",
  split: "suffix",
  parts: COMFY_PARTS,
  names: [
    "kohya-diffusers",
    "kohya-compvis",
    "kohya-te1",
    "lycoris-diffusers",
    "compvis-plain",
    "diffusers-processor",
    "te-diffusers-attn",
  ],
  unknownPartsFail: false,
  unmatchedFail: false,
  // comfy/weight_adapter/base.py weight_decompose: wd_on_output_axis = dora_scale.shape[0] == out, then
  // the norm is that of the base weight W0, where LyCORIS and PEFT take ‖W0 + ΔW‖
  doraOutputAxis: {
    verdict: "approximates",
    why: "its DoRA reads an output-axis dora_scale but divides by the row norms of the base weight ‖W0‖, where LyCORIS and PEFT divide by ‖W0 + ΔW‖: close for small changes, not equal",
  },
};

export const LOADERS: readonly LoaderRules[] = [
  {
    id: "a1111",
    name: "A1111 (built-in Lora extension)",
    split: "first-dot",
    parts: A1111_PARTS,
    names: ["kohya-diffusers", "kohya-compvis", "kohya-te1"],
    unknownPartsFail: true,
    unmatchedFail: false,
    extras: ["bundle_emb."],
    doraOutputAxis: DORA_INPUT_ONLY,
  },
  {
    id: "forge",
    name: "Forge",
    split: "suffix",
    parts: FORGE_PARTS,
    names: COMFYUI.names.filter((n) => n !== "lycoris-diffusers"),
    unknownPartsFail: false,
    unmatchedFail: false,
    maxUnmatched: 12,
    doraOutputAxis: DORA_INPUT_ONLY,
  },
  COMFYUI,
  {
    id: "diffusers",
    name: "diffusers (load_lora_weights)",
    split: "suffix",
    parts: {
      kohya: ["lora_up.weight", "lora_down.weight", "alpha", "dora_scale"],
      diffusers: ["lora.up.weight", "lora.down.weight", "alpha"],
      peft: ["lora_B.weight", "lora_A.weight"],
      processor: ["_lora.up.weight", "_lora.down.weight"],
    },
    names: ["kohya-diffusers", "diffusers-unet", "diffusers-processor"],
    unknownPartsFail: true,
    unmatchedFail: true,
  },
  {
    id: "kohya",
    name: "kohya sd-scripts (networks.lora)",
    split: "first-dot",
    parts: { lora: ["lora_up.weight", "lora_down.weight", "alpha"] },
    names: ["kohya-targets"],
    unknownPartsFail: false,
    unmatchedFail: false,
  },
];
