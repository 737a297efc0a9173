// LoRA / LoCon / LoHa / LoKr math against LyCORIS 3.2 (the shared fixtures'
// adapters/lycoris_deltas.safetensors): ΔW, the bypass forward at multiplier 1 and 0.5,
// and merged == bypass.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { AdapterMethod, AdapterModule } from "../../src/adapters/adapter.js";
import { loraDeltaWeight, loraScale } from "../../src/adapters/functional/lora.js";
import { lora } from "../../src/adapters/lora.js";
import { loha, lokr } from "../../src/adapters/lycoris.js";
import { layerKind, weightShape } from "../../src/adapters/wrapped-layer.js";
import { disposeAll, noGrad, scope, type Tensor, tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { Conv2d, Linear } from "../../src/nn/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const { tensors: fx } = loadSafetensors(sharedFixture("adapters/lycoris_deltas.safetensors"));
after(() => disposeAll(fx));

const DELTA = { rtol: 1e-5, atol: 1e-6 };
const Y = { rtol: 1e-4, atol: 1e-5 };

function get(key: string): Tensor {
  const t = fx.get(key);
  if (!t) throw new Error(`fixture has no ${key}`);
  return t;
}

/** The case's original layer with its weights, and the adapter built from the case's saved state dict. */
function build(name: string, method: AdapterMethod<never> | typeof lora): { layer: Linear | Conv2d; m: AdapterModule } {
  const w = get(`${name}.org.weight`);
  const conv = w.ndim === 4;
  const layer = conv
    ? new Conv2d(w.size(1), w.size(0), w.size(2), { padding: 1 }, { mode: "empty" })
    : new Linear(w.size(1), w.size(0), true, { mode: "empty" });
  layer.setParameter("weight", w);
  layer.setParameter("bias", get(`${name}.org.bias`));
  const moduleName = conv ? "lora_test_conv" : "lora_test_linear";
  const own = new Map<string, Tensor>();
  for (const [k, t] of fx)
    if (k.startsWith(`${name}.${moduleName}.`)) own.set(k.slice(name.length + moduleName.length + 2), t.clone());
  const target = {
    name: moduleName,
    path: "layer",
    component: "unet" as const,
    kind: layerKind(layer),
    weightShape: weightShape(layer),
  };
  return { layer, m: (method as AdapterMethod<unknown>).fromTensors(target, layer, own) };
}

const CASES: [string, AdapterMethod<never> | typeof lora][] = [
  ["locon_linear", lora],
  ["locon_conv3x3", lora],
  ["locon_conv3x3_tucker", lora],
  ["loha_linear", loha],
  ["loha_conv3x3", loha],
  ["loha_conv3x3_tucker", loha],
  ["lokr_linear", lokr],
  ["lokr_linear_decompose_both", lokr],
  ["lokr_linear_full", lokr],
  ["lokr_conv3x3", lokr],
  ["lokr_conv3x3_tucker", lokr],
  ["lokr_conv3x3_full", lokr],
];

for (const [name, method] of CASES) {
  test(`${name}: ΔW, bypass forward (multiplier 1 and 0.5) and merge match LyCORIS`, () => {
    const { layer, m } = build(name, method);
    try {
      noGrad(() =>
        scope(() => {
          const x = get(`${name}.x`);
          assertClose(m.deltaWeight(), get(`${name}.delta_weight`), { ...DELTA, what: "delta_weight" });
          assertClose(m.forward(x), get(`${name}.y`), { ...Y, what: "y" });
          m.multiplier = 0.5;
          const bypass = m.forward(x);
          assertClose(bypass, get(`${name}.y_multiplier_0.5`), { ...Y, what: "y_multiplier_0.5" });
          // merged == bypass: fold 0.5·ΔW into the weight, the plain layer now gives the same output
          const before = layer.weight.clone();
          m.merge();
          assert.equal(m.merged, true);
          assertClose(layer.forward(x), bypass, { ...Y, what: "merged layer" });
          assertClose(m.forward(x), bypass, { ...Y, what: "merged module" });
          m.unmerge();
          assertClose(layer.weight, before, { atol: 1e-6, rtol: 0, what: "unmerged weight" });
        }),
      );
    } finally {
      m.disposeAdapter();
      layer.dispose();
    }
  });
}

test("loraScale: alpha/rank, with alpha 0 or absent meaning rank", () => {
  assert.equal(loraScale(2, 4), 0.5);
  assert.equal(loraScale(0, 4), 1);
  assert.equal(loraScale(undefined, 8), 1);
  assert.equal(loraScale(null, 8), 1);
  assert.throws(() => loraScale(1, 0), /rank must be positive/);
});

test("loraDeltaWeight: a 3×3 conv multiplies over the flattened [in·kh·kw] axis", () => {
  scope(() => {
    const down = tensor(
      Array.from({ length: 2 * 3 * 9 }, (_, i) => (i % 7) - 3),
      { shape: [2, 3, 3, 3] },
    );
    const up = tensor([1, 2, -1, 0.5], { shape: [2, 2, 1, 1] });
    const d = loraDeltaWeight({ down, up }, 0.25);
    assert.deepEqual(d.shape, [2, 3, 3, 3]);
    const expect = up.reshape(2, 2).matmul(down.reshape(2, 27)).mul(0.25).reshape(2, 3, 3, 3);
    assertClose(d, expect, { atol: 0, rtol: 0 });
  });
});

test("fromTensors refuses factors that do not fit the layer, naming the module", () => {
  const layer = new Linear(8, 4, true, { mode: "empty" });
  const target = {
    name: "lora_x",
    path: "x",
    component: "unet" as const,
    kind: "linear" as const,
    weightShape: [4, 8],
  };
  const bad = (tensors: Record<string, number[]>, message: RegExp) => {
    const own = new Map(
      Object.entries(tensors).map(([k, s]) => [
        k,
        scope(() => tensor(new Float32Array(s.reduce((a, b) => a * b, 1)), { shape: s })),
      ]),
    );
    assert.throws(() => lora.fromTensors(target, layer, own), message);
    for (const t of own.values()) assert.equal(t.disposed, true);
  };
  bad({ "lora_down.weight": [2, 9], "lora_up.weight": [4, 2] }, /lora_x: lora_down takes 9 inputs, the layer 8/);
  bad({ "lora_down.weight": [2, 8], "lora_up.weight": [5, 2] }, /lora_x: lora_up has 5 outputs/);
  bad({ "lora_down.weight": [2, 8], "lora_up.weight": [4, 3] }, /rank 3 differs/);
  bad({ "lora_down.weight": [2, 8] }, /'lora_up.weight' is missing/);
  bad({ "lora_down.weight": [2, 8], "lora_up.weight": [4, 2], dora_scale: [1, 8] }, /unexpected LoRA key 'dora_scale'/);
  bad({ lokr_w1: [2, 2], lokr_w2: [2, 3] }, /unexpected LoRA key/);
  layer.dispose();
});
