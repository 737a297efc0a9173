// `full` with a bias difference (KohakuBlueleaf/LyCORIS lycoris/modules/full.py:
// `bias` = zeros_like(org bias), saved as diff_b; A1111 extensions-builtin/
// Lora/network_full.py ex_bias = diff_b; ComfyUI comfy/lora.py adds diff_b to
// the bias): y = x(W0 + m·diff)ᵀ + b0 + m·diff_b, zero at start, trainable,
// merged == bypass, unmerge restores, save → load exact, misfits refused.
import assert from "node:assert/strict";
import { test } from "node:test";
import { full } from "../../src/adapters/full.js";
import { layerKind, weightShape } from "../../src/adapters/wrapped-layer.js";
import { Generator, linear, noGrad, normal_, randn, scope, type Tensor, zeros } from "../../src/engine/index.js";
import { Linear } from "../../src/nn/index.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();

const targetOf = (l: Linear) => ({
  name: "lora_unet_x",
  path: "x",
  component: "unet" as const,
  kind: layerKind(l),
  weightShape: weightShape(l),
});

test("full on a layer with a bias: diff_b starts at zero, trains, merged == bypass, round trips", () => {
  const g = new Generator(3);
  const layer = new Linear(6, 4, true, { generator: g });
  const x = randn([2, 6], { generator: g });
  const m = full.create(targetOf(layer), layer, {});
  let loaded: ReturnType<typeof full.fromTensors> | undefined;
  try {
    const t = m.adapterTensors();
    assert.deepEqual([...t.keys()], ["diff", "diff_b"]);
    assert.deepEqual(t.get("diff_b")!.shape, [4]);
    assert.ok(m.trainableParameters().includes(t.get("diff_b")!));
    noGrad(() => scope(() => assertClose(m.forward(x), layer.forward(x), { atol: 0, rtol: 0, what: "at init" })));
    // gradient reaches diff_b: dL/d(diff_b) = Σ_rows dy for L = Σ y
    for (const p of m.trainableParameters()) p.requiresGrad_(true);
    scope(() => m.forward(x).sum().backward());
    const gb = t.get("diff_b")!.grad!;
    scope(() => assertClose(gb, zeros([4]).add(2), { atol: 1e-6, rtol: 0, what: "grad diff_b" }));
    gb.dispose();
    t.get("diff")!.grad?.dispose();
    noGrad(() => {
      for (const p of m.trainableParameters()) normal_(p, 0, 0.1, g);
    });
    m.multiplier = 0.5;
    const bias0 = scope(() => layer.namedParameters().get("bias")!.clone());
    const w0 = scope(() => layer.weight.clone());
    noGrad(() =>
      scope(() => {
        const want = linear(x, w0.add(t.get("diff")!, 0.5), bias0.add(t.get("diff_b")!, 0.5));
        const bypass = m.forward(x);
        assertClose(bypass, want, { atol: 1e-6, rtol: 1e-5, what: "bypass" });
        m.merge();
        assertClose(m.forward(x), bypass, { atol: 1e-6, rtol: 1e-5, what: "merged == bypass" });
        m.unmerge();
        assertClose(layer.namedParameters().get("bias")!, bias0, { atol: 1e-6, rtol: 0, what: "unmerged bias" });
      }),
    );
    bias0.dispose();
    w0.dispose();
    const copies = new Map([...t].map(([k, v]) => [k, scope(() => v.clone())] as [string, Tensor]));
    loaded = full.fromTensors(targetOf(layer), layer, copies);
    for (const [k, v] of t) assertClose(loaded.adapterTensors().get(k)!, v, { atol: 0, rtol: 0, what: `loaded ${k}` });
  } finally {
    m.disposeAdapter();
    loaded?.disposeAdapter();
    x.dispose();
    layer.dispose();
    g.dispose();
  }
});

test("full diff_b that does not fit is refused naming the module", () => {
  const noBias = new Linear(6, 4, false);
  const withBias = new Linear(6, 4, true);
  try {
    assert.throws(
      () =>
        full.fromTensors(
          targetOf(noBias),
          noBias,
          new Map([
            ["diff", zeros([4, 6])],
            ["diff_b", zeros([4])],
          ]),
        ),
      /lora_unet_x: diff_b for a layer without a bias/,
    );
    assert.throws(
      () =>
        full.fromTensors(
          targetOf(withBias),
          withBias,
          new Map([
            ["diff", zeros([4, 6])],
            ["diff_b", zeros([5])],
          ]),
        ),
      /lora_unet_x: the full diff_b \[5\] does not fit the layer's bias \[4\]/,
    );
  } finally {
    noBias.dispose();
    withBias.dispose();
  }
});
