// kohya's LoRA / LoCon targets on full-size SD1.5: the module names, the saved
// keys and their shapes equal kohya-ss/sd-scripts networks/lora.py's
// (the shared fixtures' adapters/kohya_lora_sd15_names.json, kohya_locon_sd15_names.json).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { injectLora } from "../../src/adapters/network.js";
import { kohyaName, layerIndex, loraTargets } from "../../src/adapters/targets.js";
import { ClipTextModel, sd15TextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

interface KohyaModule {
  lora_name: string;
  module_path: string;
  org_class: string;
  org_weight_shape: number[];
  keys: Record<string, number[]>;
}

function fixture(name: string): { summary: Record<string, number>; modules: KohyaModule[] } {
  return JSON.parse(readFileSync(sharedFixture(`adapters/${name}`), "utf8"));
}

// Full-size SD1.5, uninitialised (mode "empty"); the LoRA tensors are rank 4.
const model = {
  unet: new UNet2DConditionModel("sd15", { mode: "empty" }),
  textEncoder: new ClipTextModel(sd15TextConfig, { mode: "empty" }),
};
after(() => {
  model.unet.dispose();
  model.textEncoder.dispose();
});

function check(file: string, conv: boolean): void {
  const ref = fixture(file);
  const targets = loraTargets(model, { conv });
  const want = new Map(ref.modules.map((m) => [m.lora_name, m]));
  assert.equal(targets.length, ref.summary.n_modules);
  assert.equal(targets.filter((t) => t.component === "textEncoder").length, ref.summary.n_te);
  assert.deepEqual(targets.map((t) => t.name).sort(), [...want.keys()].sort());
  for (const t of targets) {
    const m = want.get(t.name)!;
    const prefix = t.component === "unet" ? "unet." : "text_encoder.";
    assert.equal(`${prefix}${t.path}`, m.module_path);
    assert.deepEqual(t.weightShape, m.org_weight_shape, t.name);
    assert.equal(t.kind === "linear" ? "Linear" : "Conv2d", m.org_class, t.name);
  }
  // the state dict of a network built with kohya's create_network settings (dim 4, alpha 1; conv_dim 4, conv_alpha 1)
  const net = injectLora(model, { rank: 4, alpha: 1, ...(conv ? { convRank: 4, convAlpha: 1 } : {}) });
  try {
    const shapes = new Map([...net.stateDict()].map(([k, v]) => [k, v.shape]));
    const wantKeys = new Map(ref.modules.flatMap((m) => Object.entries(m.keys)));
    assert.equal(shapes.size, ref.summary.n_keys);
    assert.deepEqual([...shapes.keys()].sort(), [...wantKeys.keys()].sort());
    for (const [k, s] of shapes) assert.deepEqual(s, wantKeys.get(k), k);
    assert.equal(net.stateDict().get(`${ref.modules[0].lora_name}.alpha`)!.item(), 1);
  } finally {
    net.remove();
  }
  // the tree is back as it was: the same parameter keys, no adapter left
  assert.equal(loraTargets(model, { conv }).length, ref.summary.n_modules);
}

test("LoRA targets and keys on SD1.5 equal kohya's (264 modules, 792 keys)", () =>
  check("kohya_lora_sd15_names.json", false));

test("LoCon targets and keys on SD1.5 equal kohya's (350 modules, 1050 keys)", () =>
  check("kohya_locon_sd15_names.json", true));

test("names: prefix + path with '.' → '_'; every layer of the model is indexed by its kohya name", () => {
  assert.equal(
    kohyaName("lora_unet", "down_blocks.0.attentions.0.proj_in"),
    "lora_unet_down_blocks_0_attentions_0_proj_in",
  );
  const index = layerIndex(model);
  for (const m of fixture("kohya_locon_sd15_names.json").modules) assert.ok(index.has(m.lora_name), m.lora_name);
  assert.equal(index.get("lora_unet_conv_in")?.path, "conv_in");
  assert.equal(index.get("lora_te_text_model_encoder_layers_11_mlp_fc2")?.component, "textEncoder");
});

test("injecting keeps the model's parameter keys and count (the adapters are not in the tree's state dict)", () => {
  const before = [...model.unet.namedParameters().keys()];
  const count = model.unet.parameterCount();
  const net = injectLora(model, { rank: 2, textEncoder: false });
  try {
    assert.deepEqual([...model.unet.namedParameters().keys()], before);
    assert.equal(model.unet.parameterCount(), count);
    assert.equal(net.trainableParameters("textEncoder").length, 0);
    assert.equal(net.trainableParameters("unet").length, 2 * 192);
  } finally {
    net.remove();
  }
});
