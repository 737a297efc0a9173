// Trainable LyCORIS methods against LyCORIS 3.2 (the shared fixtures'
// adapters/lycoris_train.safetensors + lycoris_train_meta.json): ΔW as the
// forward applies it, the output at multiplier 1 and 0.5, merged == bypass,
// gradients of L = Σ y·dy, and save → load round trips. Where the fixture
// README says LyCORIS is wrong, the exact math is checked instead: the
// LoHa-Tucker gradients are the exact ones (grad.*), DoRA's multiplier scales
// W' − W0 (0 gives the base layer), and bypass equals merged for every method.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import type { AdapterMethod, AdapterModule } from "../../src/adapters/adapter.js";
import { dora } from "../../src/adapters/dora.js";
import { full } from "../../src/adapters/full.js";
import { ia3 } from "../../src/adapters/ia3.js";
import { loha } from "../../src/adapters/loha.js";
import { lokr } from "../../src/adapters/lokr.js";
import { lora } from "../../src/adapters/lora.js";
import { layerKind, weightShape } from "../../src/adapters/wrapped-layer.js";
import { disposeAll, noGrad, scope, type Tensor, zeros } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { Conv2d, Linear } from "../../src/nn/index.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const { tensors: fx } = loadSafetensors(sharedFixture("adapters/lycoris_train.safetensors"));
after(() => disposeAll(fx));
const meta = JSON.parse(readFileSync(sharedFixture("adapters/lycoris_train_meta.json"), "utf8")) as {
  cases: Record<string, { trainable_to_saved_key: Record<string, string>; lora_name: string }>;
};

const DELTA = { rtol: 1e-5, atol: 1e-6 };
const Y = { rtol: 1e-4, atol: 1e-5 };
const GRAD = { rtol: 1e-4, atol: 1e-5 };

function get(key: string): Tensor {
  const t = fx.get(key);
  if (!t) throw new Error(`fixture has no ${key}`);
  return t;
}

function methodOf(name: string): AdapterMethod<never> {
  const m = name.startsWith("dora_")
    ? dora
    : name.startsWith("locon")
      ? lora
      : name.startsWith("loha")
        ? loha
        : name.startsWith("lokr")
          ? lokr
          : name.startsWith("ia3")
            ? ia3
            : full;
  return m as AdapterMethod<never>;
}

function build(name: string): { layer: Linear | Conv2d; m: AdapterModule; saved: Map<string, Tensor> } {
  const w = get(`${name}.org.weight`);
  const conv = w.ndim === 4;
  const bias = fx.has(`${name}.org.bias`);
  const layer = conv
    ? new Conv2d(w.size(1), w.size(0), w.size(2), { padding: 1, bias }, { mode: "empty" })
    : new Linear(w.size(1), w.size(0), bias, { mode: "empty" });
  layer.setParameter("weight", w);
  if (bias) layer.setParameter("bias", get(`${name}.org.bias`));
  const moduleName = meta.cases[name].lora_name;
  const saved = new Map<string, Tensor>();
  for (const [k, t] of fx)
    if (k.startsWith(`${name}.${moduleName}.`)) saved.set(k.slice(name.length + moduleName.length + 2), t);
  const target = {
    name: moduleName,
    path: "layer",
    component: "unet" as const,
    kind: layerKind(layer),
    weightShape: weightShape(layer),
  };
  const own = new Map([...saved].map(([k, t]) => [k, t.clone()] as [string, Tensor]));
  const m = methodOf(name).fromTensors(target, layer, own);
  return { layer, m, saved };
}

const CASES = Object.keys(meta.cases);
test("the fixture has every algorithm", () => {
  for (const p of ["locon", "loha", "lokr", "dora_locon", "dora_loha", "ia3", "full"])
    assert.ok(
      CASES.some((c) => c.startsWith(`${p}_`)),
      p,
    );
});

for (const name of CASES) {
  test(`${name}: ΔW, forward, merged == bypass, gradients and save → load match the math`, () => {
    const { layer, m, saved } = build(name);
    const isDora = name.startsWith("dora_");
    try {
      noGrad(() =>
        scope(() => {
          const x = get(`${name}.x`);
          assertClose(m.deltaWeight(), get(`${name}.forward_delta_weight`), { ...DELTA, what: "ΔW" });
          assertClose(m.forward(x), get(`${name}.y`), { ...Y, what: "y" });
          m.multiplier = 0.5;
          const half = m.forward(x);
          if (isDora) {
            // W0 + m·(W' − W0): halfway between the base layer and multiplier 1
            const base = layer.forward(x);
            assertClose(half, base.add(get(`${name}.y`)).mul(0.5), { ...Y, what: "y at 0.5" });
            m.multiplier = 0;
            assertClose(m.forward(x), base, { atol: 0, rtol: 0, what: "multiplier 0 is the base layer" });
            m.multiplier = 0.5;
          } else assertClose(half, get(`${name}.y_multiplier_0.5`), { ...Y, what: "y_multiplier_0.5" });
          const before = layer.weight.clone();
          m.merge();
          assertClose(layer.forward(x), half, { ...Y, what: "merged layer" });
          assertClose(m.deltaWeight(), get(`${name}.forward_delta_weight`).mul(0.5), { ...DELTA, what: "ΔW merged" });
          m.unmerge();
          assertClose(layer.weight, before, { atol: 1e-6, rtol: 0, what: "unmerged weight" });
          m.multiplier = 1;
        }),
      );
      // gradients of L = Σ y·dy at multiplier 1
      const params = m.trainableParameters();
      for (const p of params) p.requiresGrad_(true);
      const x = scope(() => get(`${name}.x`).clone()).requiresGrad_(true);
      scope(() =>
        m
          .forward(x)
          .mul(get(`${name}.dy`))
          .sum()
          .backward(),
      );
      const tensors = m.adapterTensors();
      for (const [param, key] of Object.entries(meta.cases[name].trainable_to_saved_key)) {
        const t = tensors.get(key);
        assert.ok(t && params.includes(t), `${key} is trainable`);
        const g = t.grad!;
        assertClose(g, get(`${name}.grad.${param}`), { ...GRAD, what: `grad.${param}` });
        g.dispose();
      }
      const gx = x.grad!;
      assertClose(gx, get(`${name}.grad.x`), { ...GRAD, what: "grad.x" });
      gx.dispose();
      x.dispose();
      // save → load: the same keys, the same values, bit for bit
      assert.deepEqual([...tensors.keys()].sort(), [...saved.keys()].sort(), "saved keys");
      for (const [k, t] of tensors)
        scope(() => assertClose(t.float(), saved.get(k)!.float(), { atol: 0, rtol: 0, what: `saved ${k}` }));
    } finally {
      m.disposeAdapter();
      layer.dispose();
    }
  });
}

/** The Atelier options of a fixture case's LyCORIS constructor kwargs. */
function optionsOf(name: string): Record<string, unknown> {
  const k = (meta.cases[name] as unknown as { kwargs: Record<string, number | boolean> }).kwargs;
  const inner = name.startsWith("dora_loha") ? "loha" : "lora";
  return {
    inner,
    rank: k.lora_dim,
    alpha: k.alpha,
    factor: k.factor,
    decomposeBoth: k.decompose_both,
    useTucker: k.use_tucker,
    onOutput: true, // the fixture's LyCORIS default wd_on_out
  };
}

for (const name of CASES) {
  test(`${name}: create() makes LyCORIS' keys and shapes, trainable, with ΔW starting at zero`, () => {
    const { layer, m: loaded } = build(name);
    loaded.disposeAdapter();
    const target = { ...loaded.target };
    const m = (methodOf(name) as AdapterMethod<unknown>).create(target, layer, optionsOf(name));
    try {
      const want = (meta.cases[name] as unknown as { saved_file_keys: Record<string, number[]> }).saved_file_keys;
      const got = Object.fromEntries([...m.adapterTensors()].map(([k, t]) => [`${target.name}.${k}`, t.shape]));
      assert.deepEqual(got, want);
      const alpha = m.adapterTensors().get("alpha");
      if (alpha)
        assert.equal(
          scope(() => alpha.item()),
          (meta.cases[name] as unknown as { alpha_buffer: number }).alpha_buffer,
        );
      for (const p of m.trainableParameters()) assert.equal(p.requiresGrad, true);
      scope(() => assert.ok(m.deltaWeight().abs().max().item() < 1e-5, "ΔW starts at zero"));
    } finally {
      m.disposeAdapter();
      layer.dispose();
    }
  });
}

test("factors that do not fit the layer are refused, naming the module; the tensors are freed", () => {
  const layer = new Linear(8, 4, true, { mode: "empty" });
  const target = {
    name: "lora_x",
    path: "x",
    component: "unet" as const,
    kind: "linear" as const,
    weightShape: [4, 8],
  };
  const bad = (method: AdapterMethod<never>, shapes: Record<string, number[]>, message: RegExp) => {
    const own = new Map(
      Object.entries(shapes).map(([k, s]) => [
        k,
        scope(() => zeros(s, { dtype: k === "on_input" ? "int64" : "float32" })),
      ]),
    );
    assert.throws(() => method.fromTensors(target, layer, own), message);
    for (const t of own.values()) assert.equal(t.disposed, true);
  };
  const d = dora as AdapterMethod<never>;
  bad(
    d,
    { "lora_down.weight": [2, 8], "lora_up.weight": [4, 2], dora_scale: [5, 1] },
    /lora_x: dora_scale \[5,1\] fits neither/,
  );
  bad(d, { dora_scale: [4, 1] }, /lora_x: dora_scale without LoRA, LoHa or LoKr factors/);
  bad(ia3 as AdapterMethod<never>, { weight: [5], on_input: [] }, /lora_x: the \(IA\)³ weight \[5\] does not fit/);
  bad(full as AdapterMethod<never>, { diff: [4, 9] }, /lora_x: the full diff \[4,9\] does not fit/);
  bad(
    loha as AdapterMethod<never>,
    { hada_w1_a: [4, 2], hada_w1_b: [2, 9], hada_w2_a: [4, 2], hada_w2_b: [2, 9] },
    /lora_x: the LoHa factors/,
  );
  const t = { ...target };
  assert.throws(
    () => (loha as AdapterMethod<unknown>).create(t, layer, { rank: 5 }),
    /lora_x: LoHa rank 5 is larger than the layer/,
  );
  layer.dispose();
});
