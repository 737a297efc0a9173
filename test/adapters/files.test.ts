// LoRA file layouts of other tools, written here with known values: kohya and
// OneTrainer names, LoCon's Tucker core, diffusers (old and new) and PEFT keys
// become kohya modules with the right alpha; what cannot be applied is refused
// by name.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeLoraFile, type LoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { attachLora } from "../../src/adapters/network.js";
import { full, Generator, randn, scope, type Tensor } from "../../src/engine/index.js";
import { saveSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel, tinyTextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-lora-files-");
let counter = 0;

/** Writes a safetensors file of random tensors with these shapes (0-d: the value given as [[v]]). */
function write(spec: Record<string, number[] | [[number]]>, metadata?: Record<string, string>, name?: string): string {
  const path = join(dir, name ?? `f${counter++}.safetensors`);
  scope(() => {
    const g = new Generator(counter);
    const tensors = new Map<string, Tensor>();
    for (const [k, s] of Object.entries(spec))
      tensors.set(k, Array.isArray(s[0]) ? full([], (s[0] as number[])[0]) : randn(s as number[], { generator: g }));
    g.dispose();
    saveSafetensors(path, tensors, metadata);
  });
  return path;
}

function summary(f: LoraFile): Record<string, Record<string, number[] | number>> {
  const out: Record<string, Record<string, number[] | number>> = {};
  for (const [name, m] of f.modules) {
    out[name] = {};
    for (const [k, t] of m) out[name][k] = k === "alpha" ? t.item() : t.shape;
  }
  return out;
}

function load(path: string): Record<string, Record<string, number[] | number>> {
  const f = loadLoraFile(path);
  try {
    return summary(f);
  } finally {
    disposeLoraFile(f);
  }
}

const Q = "text_model.encoder.layers.0.self_attn";
const ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";

test("kohya: OneTrainer's lora_te1_ reads as lora_te_; a LoCon Tucker core and 0-d alpha are kept", () => {
  const path = write({
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [2, 32],
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [32, 2],
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha": [[1]],
    "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": [2, 32, 1, 1],
    "lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight": [2, 2, 3, 3],
    "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": [32, 2, 1, 1],
    "lora_unet_down_blocks_0_resnets_0_conv1.alpha": [[2]],
  });
  assert.deepEqual(load(path), {
    lora_te_text_model_encoder_layers_0_self_attn_q_proj: {
      "lora_down.weight": [2, 32],
      "lora_up.weight": [32, 2],
      alpha: 1,
    },
    lora_unet_down_blocks_0_resnets_0_conv1: {
      "lora_down.weight": [2, 32, 1, 1],
      "lora_mid.weight": [2, 2, 3, 3],
      "lora_up.weight": [32, 2, 1, 1],
      alpha: 2,
    },
  });
  // and it attaches to the tiny model: the Tucker LoCon on a 3×3 conv, the text encoder q_proj
  const g = new Generator(1);
  const model = {
    unet: new UNet2DConditionModel("tiny", { generator: g }),
    textEncoder: new ClipTextModel(tinyTextConfig, { generator: g }),
  };
  g.dispose();
  const net = attachLora(model, loadLoraFile(path));
  assert.equal(net.modules.length, 2);
  scope(() =>
    assert.deepEqual(net.modules.find((m) => m.target.component === "unet")!.deltaWeight().shape, [32, 32, 3, 3]),
  );
  net.remove();
  model.unet.dispose();
  model.textEncoder.dispose();
});

test("diffusers: the attention-processor era, .lora.down, .lora_linear_layer and lora_A/B with alpha keys become kohya modules", () => {
  const path = write({
    [`${ATTN}.processor.to_q_lora.down.weight`]: [4, 320],
    [`${ATTN}.processor.to_q_lora.up.weight`]: [320, 4],
    [`${ATTN}.processor.to_out_lora.down.weight`]: [4, 320],
    [`${ATTN}.processor.to_out_lora.up.weight`]: [320, 4],
  });
  assert.deepEqual(Object.keys(load(path)).sort(), [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
  ]);
  const te = write({
    [`text_encoder.${Q}.to_k_lora.down.weight`]: [4, 768],
    [`text_encoder.${Q}.to_k_lora.up.weight`]: [768, 4],
    [`text_encoder.${Q}.to_out_lora.down.weight`]: [4, 768],
    [`text_encoder.${Q}.to_out_lora.up.weight`]: [768, 4],
    "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": [4, 768],
    "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight": [3072, 4],
    [`unet.${ATTN}.to_v.lora_A.weight`]: [8, 320],
    [`unet.${ATTN}.to_v.lora_B.weight`]: [320, 8],
    [`unet.${ATTN}.to_v.alpha`]: [[4]],
  });
  const s = load(te);
  assert.deepEqual(Object.keys(s).sort(), [
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
    "lora_te_text_model_encoder_layers_0_self_attn_out_proj",
    "lora_te_text_model_encoder_layers_1_mlp_fc1",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v",
  ]);
  assert.equal(s.lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.alpha, 4);
  assert.equal(s.lora_te_text_model_encoder_layers_1_mlp_fc1.alpha, undefined, "no alpha: scale 1");
});

test("PEFT: adapter_config.json gives alpha, alpha_pattern and rsLoRA's alpha·√r; use_dora needs magnitudes", () => {
  const folder = join(dir, "peft");
  mkdirSync(folder);
  write(
    {
      [`base_model.model.${Q}.q_proj.lora_A.weight`]: [4, 768],
      [`base_model.model.${Q}.q_proj.lora_B.weight`]: [768, 4],
      [`base_model.model.${Q}.v_proj.lora_A.weight`]: [4, 768],
      [`base_model.model.${Q}.v_proj.lora_B.weight`]: [768, 4],
    },
    { format: "pt" },
    "peft/adapter_model.safetensors",
  );
  const config = { r: 4, lora_alpha: 8, alpha_pattern: { v_proj: 2 }, use_rslora: false };
  writeFileSync(join(folder, "adapter_config.json"), JSON.stringify(config));
  const f = loadLoraFile(folder);
  assert.equal(f.format, "peft");
  const s = summary(f);
  disposeLoraFile(f);
  assert.equal(s.lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha, 8);
  assert.equal(s.lora_te_text_model_encoder_layers_0_self_attn_v_proj.alpha, 2);
  writeFileSync(join(folder, "adapter_config.json"), JSON.stringify({ ...config, use_rslora: true }));
  assert.equal(load(folder).lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha, 16);
  writeFileSync(join(folder, "adapter_config.json"), JSON.stringify({ ...config, use_dora: true }));
  assert.throws(() => loadLoraFile(folder), /says use_dora, but the file holds no lora_magnitude_vector/);
});

test("refused by name: a half PEFT DoRA, SDXL, unknown keys, half modules, non-LoRA files, missing files", () => {
  const name = "lora_unet_down_blocks_0_attentions_0_proj_in";
  const cases: [Record<string, number[] | [[number]]>, RegExp][] = [
    [
      { [`unet.${ATTN}.to_q.lora_A.weight`]: [2, 8], [`unet.${ATTN}.to_q.lora_magnitude_vector`]: [8] },
      /a DoRA magnitude \(lora_magnitude_vector\) but no lora_A\/lora_B/,
    ],
    [
      { "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [2, 8] },
      /an SDXL LoRA \(lora_te1_\/lora_te2_ modules\)/,
    ],
    [{ "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": [2, 8] }, /LDM\/SGM layout/],
    [
      { [`${name}.oft_blocks`]: [8, 8] },
      /1 keys of no supported adapter \(LoRA\/LoCon, LoHa, LoKr, DoRA, \(IA\)³, full, norm\): lora_unet_down_blocks_0_attentions_0_proj_in\.oft_blocks/,
    ],
    [
      { [`${name}.lora_down.weight`]: [2, 8] },
      /module lora_unet_down_blocks_0_attentions_0_proj_in: lora_down\.weight without lora_up\.weight/,
    ],
    [{ [`${name}.hada_w1_a`]: [8, 2] }, /module lora_unet_down_blocks_0_attentions_0_proj_in: hada_w1_b is missing/],
    [
      { "model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3] },
      /not a LoRA file this reader knows \(keys: model\.diffusion_model\.input_blocks/,
    ],
    [
      { "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight": [2, 8] },
      /second text encoder \(text_encoder_2\): an SDXL LoRA/,
    ],
    [{}, /holds no tensors, not a LoRA/],
  ];
  for (const [spec, message] of cases) {
    const path = write(spec);
    assert.throws(
      () => loadLoraFile(path),
      (e: Error) => e.message.startsWith(path) && message.test(e.message),
      JSON.stringify(Object.keys(spec)),
    );
  }
  assert.throws(() => loadLoraFile(join(dir, "nope.safetensors")), /nope\.safetensors: no such file/);
  const text = join(dir, "notes.txt");
  writeFileSync(text, "hello, this is not a model");
  assert.throws(() => loadLoraFile(text), /notes\.txt: neither a safetensors file nor a PyTorch/);
});
