// Every key of every LyCORIS file Atelier writes is one that AUTOMATIC1111's
// built-in Lora extension and ComfyUI map, by their key rules as read from
// their public source:
// - A1111 extensions-builtin/Lora/networks.py convert_diffusers_name_to_compvis
//   (module names) and the module types' create_module key sets
//   (network_lora.py, network_hada.py, network_ia3.py, network_lokr.py,
//   network_full.py), plus the keys NetworkModule reads in network.py
//   (alpha, scale, bias, dora_scale) and the per-type extras (lora_mid.weight,
//   hada_t1/t2, lokr_t2, on_input);
// - ComfyUI comfy/lora.py load_lora (the keys it marks loaded; others are
//   "lora key not loaded") and model_lora_keys_clip / model_lora_keys_unet
//   (module names), comfy/weight_adapter/lora.py, loha.py, lokr.py for
//   dora_scale. ComfyUI has no (IA)³ loader: that is asserted, not hidden.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { saveLora } from "../../src/adapters/network.js";
import { type Algo, injectAlgo, type NetworkOptions } from "../../src/adapters/network-algo.js";
import { Generator } from "../../src/engine/index.js";
import { openSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkLeaks, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG } from "../tiny-model.js";

checkLeaks();
const dir = tempDir("atelier-webui-keys-");

// networks.py convert_diffusers_name_to_compvis: the module names it converts (SD 1.x/2.x)
const A1111_NAMES = [
  /^lora_unet_conv_in$/,
  /^lora_unet_conv_out$/,
  /^lora_unet_time_embedding_linear_\d+$/,
  /^lora_unet_(down_blocks_\d+|up_blocks_\d+)_(attentions|resnets)_\d+_.+$/,
  /^lora_unet_mid_block_(attentions|resnets)_\d+_.+$/,
  /^lora_unet_down_blocks_\d+_downsamplers_0_conv$/,
  /^lora_unet_up_blocks_\d+_upsamplers_0_conv$/,
  /^lora_te_text_model_encoder_layers_\d+_.+$/,
];
// network_*.py ModuleType.create_module, in networks.py module_types order
const A1111_TYPES: [string, (k: Set<string>) => boolean][] = [
  ["lora", (k) => k.has("lora_up.weight") && k.has("lora_down.weight")],
  ["hada", (k) => ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"].every((x) => k.has(x))],
  ["ia3", (k) => k.has("weight")],
  [
    "lokr",
    (k) =>
      (k.has("lokr_w1") || (k.has("lokr_w1_a") && k.has("lokr_w1_b"))) &&
      (k.has("lokr_w2") || (k.has("lokr_w2_a") && k.has("lokr_w2_b"))),
  ],
  ["full", (k) => k.has("diff")],
];
const A1111_READS: Record<string, string[]> = {
  lora: ["lora_up.weight", "lora_down.weight", "lora_mid.weight"],
  hada: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"],
  ia3: ["weight", "on_input"],
  lokr: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"],
  full: ["diff", "diff_b"],
};
const A1111_COMMON = ["alpha", "scale", "bias", "dora_scale"];

// comfy/lora.py model_lora_keys_clip: LORA_CLIP_MAP's layers; model_lora_keys_unet: every diffusers UNet weight
const COMFY_TE = /^lora_te_text_model_encoder_layers_\d+_(mlp_fc1|mlp_fc2|self_attn_[qkv]_proj|self_attn_out_proj)$/;
// comfy/lora.py load_lora + comfy/weight_adapter/*.py: the keys marked loaded
const COMFY_LOADS = new Set([
  "alpha",
  "dora_scale",
  "lora_up.weight",
  "lora_down.weight",
  "lora_mid.weight",
  ...A1111_READS.hada,
  ...A1111_READS.lokr,
  "diff",
  "diff_b",
  "w_norm",
  "b_norm",
]);

const CASES: Record<string, NetworkOptions> = {
  locon: { algo: "locon", rank: 2, convRank: 2, useTucker: true },
  loha: { algo: "loha", rank: 2, convRank: 2, useTucker: true },
  lokr: { algo: "lokr", rank: 2, convRank: 2, factor: 4, decomposeBoth: true },
  dora: { algo: "dora", rank: 2, convRank: 2 },
  "dora-loha": { algo: "loha", rank: 2, weightDecompose: true },
  ia3: { algo: "ia3" as Algo, rank: 1 },
  full: { algo: "full", rank: 1 },
};

function write(name: string): string {
  const g = new Generator(1);
  const m = {
    unet: new UNet2DConditionModel("tiny", { generator: g }),
    textEncoder: new ClipTextModel(TINY_TEXT_CONFIG, { generator: g }),
  };
  g.dispose();
  const net = injectAlgo(m, { ...CASES[name], generator: new Generator(2) });
  const path = join(dir, `${name}.safetensors`);
  saveLora(path, net);
  net.remove();
  m.unet.dispose();
  m.textEncoder.dispose();
  return path;
}

for (const name of Object.keys(CASES)) {
  test(`${name}: every module and key is one A1111's Lora extension and ComfyUI map`, () => {
    const f = openSafetensors(write(name));
    const keys = f.keys();
    assert.equal(f.metadata.ss_network_module, "lycoris.kohya");
    assert.ok(f.metadata["modelspec.sai_model_spec"]);
    f.close();
    const modules = new Map<string, Set<string>>();
    for (const k of keys) {
      const dot = k.indexOf(".");
      const m = k.slice(0, dot);
      if (!modules.has(m)) modules.set(m, new Set());
      modules.get(m)!.add(k.slice(dot + 1));
    }
    assert.ok(modules.size > 0);
    for (const [m, k] of modules) {
      assert.ok(
        A1111_NAMES.some((re) => re.test(m)),
        `A1111 converts no module named ${m}`,
      );
      const type = A1111_TYPES.find(([, accepts]) => accepts(k));
      assert.ok(type, `${m}: no A1111 module type accepts ${[...k]}`);
      for (const key of k)
        assert.ok(
          [...A1111_READS[type[0]], ...A1111_COMMON].includes(key),
          `${m}.${key}: A1111 (${type[0]}) does not read it`,
        );
      if (m.startsWith("lora_te_")) assert.match(m, COMFY_TE, `ComfyUI maps no text-encoder module ${m}`);
      const unloaded = [...k].filter((key) => !COMFY_LOADS.has(key));
      if (name === "ia3") assert.deepEqual(unloaded.sort(), ["on_input", "weight"], "ComfyUI has no (IA)³ loader");
      else assert.deepEqual(unloaded, [], `${m}: ComfyUI leaves ${unloaded} unloaded`);
    }
  });
}

test("inspect names the algorithm, ranks and modules of a LyCORIS file", async () => {
  const { inspectFile } = await import("../../src/tools/inspect.js");
  const r = inspectFile(write("lokr")) as unknown as Record<string, unknown>;
  const text = JSON.stringify(r);
  assert.match(text, /LyCORIS \(LoKr\): \d+ modules \(\d+ text encoder\), rank 2/);
  assert.match(JSON.stringify(inspectFile(write("dora-loha"))), /LyCORIS \(DoRA\): \d+ modules/);
});
