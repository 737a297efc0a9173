// PEFT's DoRA (huggingface/peft src/peft/tuners/lora/dora.py), as diffusers
// saves it: lora_A / lora_B with a `lora_magnitude_vector` per layer ([out]
// for a Linear, [1, out, 1, 1] for a Conv2d) and use_dora in
// adapter_config.json. It is read as LyCORIS' output-axis DoRA: each adapted
// layer's output must equal PEFT's own forward (base(x) + (m/‖W‖ − 1)·W0x +
// (m/‖W‖)·s·B(A(x)), ‖W‖ the row norms of W0 + s·BA), the file rescues into
// kohya's layout with the same numbers, and the compatibility check says what
// A1111, Forge and ComfyUI make of its output-axis dora_scale.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { disposeLoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { attachLora } from "../../src/adapters/network.js";
import { baseLayer } from "../../src/adapters/wrapped-layer.js";
import { conv2d, Generator, randn, scope, type Tensor } from "../../src/engine/index.js";
import { saveSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel, tinyTextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkFile } from "../../src/tools/compat-check.js";
import { rescueAdapter } from "../../src/tools/rescue.js";
import { assertClose, checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-peft-dora-");
const Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const CONV = "down_blocks.0.resnets.0.conv1";
const TE = "text_model.encoder.layers.0.self_attn.v_proj";
const RANK = 2;
const ALPHA = 4;
const SCALE = ALPHA / RANK;

const layers = [
  { key: `unet.${Q}`, kohya: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", conv: false },
  { key: `unet.${CONV}`, kohya: "lora_unet_down_blocks_0_resnets_0_conv1", conv: true },
  { key: `text_encoder.${TE}`, kohya: "lora_te_text_model_encoder_layers_0_self_attn_v_proj", conv: false },
];

function tinyModel() {
  const g = new Generator(5);
  const model = {
    unet: new UNet2DConditionModel("tiny", { generator: g }),
    textEncoder: new ClipTextModel(tinyTextConfig, { generator: g }),
  };
  g.dispose();
  return model;
}

/** ‖W0 + s·BA‖ per output row, as DoraLinearLayer.get_weight_norm / DoraConv2dLayer.get_weight_norm. */
function rowNorms(w0: Tensor, a: Tensor, b: Tensor): Tensor {
  const ba = b
    .flatten(1)
    .matmul(a.flatten(1))
    .reshape(...w0.shape);
  return w0.add(ba.mul(SCALE)).flatten(1).norm(2, 1);
}

/** A PEFT DoRA folder for the tiny model: magnitudes near the merged row norms, so the decomposition matters. */
function writePeftDora(model: ReturnType<typeof tinyModel>, name: string, config: object = {}): string {
  const folder = join(dir, name);
  mkdirSync(folder, { recursive: true });
  const w0 = new Map([
    [`unet.${Q}`, model.unet.stateDict().get(`${Q}.weight`)!],
    [`unet.${CONV}`, model.unet.stateDict().get(`${CONV}.weight`)!],
    [`text_encoder.${TE}`, model.textEncoder.stateDict().get(`${TE}.weight`)!],
  ]);
  scope(() => {
    const g = new Generator(9);
    const t = new Map<string, Tensor>();
    for (const l of layers) {
      const w = w0.get(l.key)!;
      const [out, inp] = w.shape;
      const a = randn(l.conv ? [RANK, inp, 3, 3] : [RANK, inp], { generator: g }).mul(0.1);
      const b = randn(l.conv ? [out, RANK, 1, 1] : [out, RANK], { generator: g }).mul(0.1);
      const m = rowNorms(w, a, b).mul(randn([out], { generator: g }).mul(0.2).add(1));
      t.set(`${l.key}.lora_A.weight`, a);
      t.set(`${l.key}.lora_B.weight`, b);
      t.set(`${l.key}.lora_magnitude_vector`, l.conv ? m.reshape(1, out, 1, 1) : m);
    }
    g.dispose();
    saveSafetensors(join(folder, "adapter_model.safetensors"), t);
  });
  writeFileSync(
    join(folder, "adapter_config.json"),
    JSON.stringify({ r: RANK, lora_alpha: ALPHA, use_dora: true, ...config }),
  );
  return folder;
}

/** PEFT's forward of one DoRA layer (dora.py forward, added to the base layer's output). */
function peftForward(x: Tensor, w0: Tensor, bias: Tensor | null, a: Tensor, b: Tensor, m: Tensor, conv: boolean) {
  const n = rowNorms(w0, a, b);
  const ratio = m.flatten().div(n);
  if (!conv) {
    const base = x.matmul(w0.transpose(0, 1));
    const lora = x.matmul(a.transpose(0, 1)).matmul(b.transpose(0, 1));
    const out = base.add(ratio.sub(1).mul(base)).add(ratio.mul(lora).mul(SCALE));
    return bias ? out.add(bias) : out;
  }
  const r = ratio.reshape(1, -1, 1, 1);
  const base = conv2d(x, w0, null, { padding: 1 });
  const lora = conv2d(conv2d(x, a, null, { padding: 1 }), b);
  const out = base.add(r.sub(1).mul(base)).add(r.mul(lora).mul(SCALE));
  return bias ? out.add(bias.reshape(1, -1, 1, 1)) : out;
}

test("PEFT DoRA: read as output-axis dora_scale ([out, 1] / [out, 1, 1, 1]) with the config's alpha", () => {
  const model = tinyModel();
  try {
    const f = loadLoraFile(writePeftDora(model, "shapes"));
    try {
      assert.equal(f.format, "peft");
      assert.deepEqual([...f.modules.keys()].sort(), layers.map((l) => l.kohya).sort());
      const q = f.modules.get(layers[0].kohya)!;
      assert.deepEqual([...q.keys()].sort(), ["alpha", "dora_scale", "lora_down.weight", "lora_up.weight"]);
      assert.deepEqual(q.get("dora_scale")!.shape, [32, 1]);
      assert.equal(q.get("alpha")!.item(), ALPHA);
      assert.deepEqual(f.modules.get(layers[1].kohya)!.get("dora_scale")!.shape, [32, 1, 1, 1]);
    } finally {
      disposeLoraFile(f);
    }
  } finally {
    model.unet.dispose();
    model.textEncoder.dispose();
  }
});

test("PEFT DoRA: every adapted layer's output equals PEFT's forward; a kohya rescue gives the same", () => {
  const model = tinyModel();
  const folder = writePeftDora(model, "forward");
  const rescued = join(dir, "rescued.safetensors");
  const r = rescueAdapter(folder, rescued);
  assert.equal(r.modules, 3);
  try {
    for (const path of [folder, rescued]) {
      const file = loadLoraFile(path);
      const factors = new Map(
        layers.map((l) => {
          const m = file.modules.get(l.kohya)!;
          return [l.kohya, ["lora_down.weight", "lora_up.weight", "dora_scale"].map((k) => m.get(k)!.clone())];
        }),
      );
      const net = attachLora(model, file);
      try {
        scope(() => {
          const g = new Generator(3);
          for (const l of layers) {
            const module = net.modules.find((m) => m.target.name === l.kohya)!;
            const base = baseLayer(module.original)!;
            const [a, b, m] = factors.get(l.kohya)!;
            const x = randn(l.conv ? [2, 32, 6, 6] : [2, 5, 32], { generator: g });
            const bias = base.bias ? (base.stateDict().get("bias") ?? null) : null;
            const expected = peftForward(x, base.weight, bias, a, b, m, l.conv);
            assertClose(module.forward(x), expected, { atol: 1e-5, rtol: 1e-4, what: `${path}: ${l.kohya}` });
          }
          g.dispose();
        });
      } finally {
        net.remove();
        for (const ts of factors.values()) for (const t of ts) t.dispose();
      }
    }
  } finally {
    model.unet.dispose();
    model.textEncoder.dispose();
  }
});

test("PEFT DoRA in the compatibility check: A1111 and Forge misapply the output axis, ComfyUI approximates it", () => {
  const model = tinyModel();
  const rescued = join(dir, "check.safetensors");
  rescueAdapter(writePeftDora(model, "check"), rescued);
  model.unet.dispose();
  model.textEncoder.dispose();
  const v = Object.fromEntries(checkFile(rescued).loaders.map((l) => [l.loader, l]));
  assert.equal(v.a1111.verdict, "misapplies");
  assert.match(v.a1111.reason!, /input columns only.*dora_scale \[32,1\]/);
  assert.equal(v.a1111.modules, 3);
  assert.equal(v.forge.verdict, "misapplies");
  assert.equal(v.comfyui.verdict, "approximates");
  assert.match(v.comfyui.reason!, /‖W0‖/);
  // an input-axis dora_scale ([1, in]: what Atelier trains by default) loads exactly in all three
  const inputAxis = join(dir, "input-axis.safetensors");
  scope(() => {
    const g = new Generator(1);
    const name = layers[0].kohya;
    saveSafetensors(
      inputAxis,
      new Map([
        [`${name}.lora_down.weight`, randn([RANK, 32], { generator: g })],
        [`${name}.lora_up.weight`, randn([32, RANK], { generator: g })],
        [`${name}.dora_scale`, randn([1, 32], { generator: g })],
      ]),
    );
    g.dispose();
  });
  for (const l of checkFile(inputAxis).loaders.filter((x) => ["a1111", "forge", "comfyui"].includes(x.loader)))
    assert.equal(l.verdict, "loads", l.name);
});

test("PEFT DoRA refused by name: magnitude without factors, of the wrong size, use_dora without magnitudes", () => {
  const write = (name: string, tensors: Record<string, number[]>, config?: object) => {
    const folder = join(dir, name);
    mkdirSync(folder, { recursive: true });
    scope(() => {
      const g = new Generator(2);
      const t = new Map(Object.entries(tensors).map(([k, s]) => [k, randn(s, { generator: g })]));
      g.dispose();
      saveSafetensors(join(folder, "adapter_model.safetensors"), t);
    });
    if (config) writeFileSync(join(folder, "adapter_config.json"), JSON.stringify(config));
    return folder;
  };
  const cases: [string, Record<string, number[]>, object | undefined, RegExp][] = [
    [
      "orphan",
      { [`unet.${Q}.lora_magnitude_vector`]: [32], [`unet.${CONV}.lora_A.weight`]: [2, 32, 3, 3] },
      undefined,
      /module lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q has a DoRA magnitude \(lora_magnitude_vector\) but no lora_A\/lora_B/,
    ],
    [
      "size",
      {
        [`unet.${Q}.lora_A.weight`]: [2, 32],
        [`unet.${Q}.lora_B.weight`]: [32, 2],
        [`unet.${Q}.lora_magnitude_vector`]: [16],
      },
      undefined,
      /lora_magnitude_vector \[16\] holds 16 values for a layer of 32 output rows \(lora_B \[32,2\]\)/,
    ],
    [
      "nomag",
      { [`unet.${Q}.lora_A.weight`]: [2, 32], [`unet.${Q}.lora_B.weight`]: [32, 2] },
      { r: 2, lora_alpha: 2, use_dora: true },
      /adapter_config\.json says use_dora, but the file holds no lora_magnitude_vector/,
    ],
    [
      "named",
      { [`unet.${Q}.lora_A.weight`]: [2, 32], [`unet.${Q}.lora_B.weight`]: [32, 2], [`unet.${Q}.dora_scale`]: [32, 1] },
      undefined,
      /a dora_scale outside kohya\/LyCORIS module names/,
    ],
  ];
  for (const [name, tensors, config, message] of cases)
    assert.throws(() => loadLoraFile(write(name, tensors, config)), message, name);
});
