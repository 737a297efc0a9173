// Attention without score-sized copies: the sliced math path (queries in
// slices, q scaled instead of the scores) equals the textbook formula at
// float32 tolerance, with masks, causality and gradients.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { setAttentionSliceElements } from "../../src/engine/ops/nn.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-6, rtol: 1e-5 };

/** softmax(q·kᵀ·scale + mask)·v spelled out, as torch's math path does it. */
function textbook(q: E.Tensor, k: E.Tensor, v: E.Tensor, o: { causal?: boolean; mask?: E.Tensor }): E.Tensor {
  return E.scope(() => {
    const [L, S] = [q.size(-2), k.size(-2)];
    let s = E.matmul(q, k.transpose(-2, -1)).mul(1 / Math.sqrt(q.size(-1)));
    if (o.causal) s = E.maskedFill(s, E.logicalNot(E.ones([L, S], { dtype: "bool" }).tril()), -Infinity);
    if (o.mask) s = o.mask.dtype === "bool" ? E.maskedFill(s, E.logicalNot(o.mask), -Infinity) : s.add(o.mask);
    return E.matmul(E.softmax(s, -1), v);
  });
}

function withSlices<T>(elements: number, fn: () => T): T {
  const old = setAttentionSliceElements(elements);
  try {
    return fn();
  } finally {
    setAttentionSliceElements(old);
  }
}

const cases: [string, { causal?: boolean; mask?: "bool" | "float" }][] = [
  ["plain", {}],
  ["causal", { causal: true }],
  ["bool mask", { mask: "bool" }],
  ["float mask", { mask: "float" }],
];

for (const [name, c] of cases) {
  test(`sliced attention (${name}) equals the textbook formula, values and gradients`, () => {
    E.scope(() => {
      const g = new E.Generator(1);
      const q = E.randn([2, 3, 13, 8], { generator: g }).requiresGrad_();
      const k = E.randn([2, 3, 13, 8], { generator: g }).requiresGrad_();
      const v = E.randn([2, 3, 13, 8], { generator: g }).requiresGrad_();
      const mask =
        c.mask === "bool"
          ? E.logicalOr(E.randn([13, 13], { generator: g }).gt(0), E.eye(13, 13, { dtype: "bool" }))
          : c.mask === "float"
            ? E.randn([2, 1, 13, 13], { generator: g })
            : undefined;
      const w = E.randn([2, 3, 13, 8], { generator: g });
      g.dispose();
      const o = { causal: c.causal, mask };
      const run = (f: () => E.Tensor) => {
        const out = f();
        const grads = E.grad([out.mul(w).sum()], [q, k, v]) as E.Tensor[];
        return [out.detach(), ...grads];
      };
      const ref = run(() => textbook(q, k, v, o));
      // 2 · 3 · 13 = 78 scores per query row: slices of 2 rows (7 slices, the last of one row), and one slice
      for (const elements of [160, 78, Number.POSITIVE_INFINITY]) {
        const got = withSlices(elements, () =>
          run(() => E.scaledDotProductAttention(q, k, v, { ...o, forceMath: true })),
        );
        for (const [i, t] of got.entries()) assertClose(t, ref[i], F32);
      }
    });
  });
}

test("attention slice cap: refuses a cap below one element", () => {
  assert.throws(() => setAttentionSliceElements(0), /at least 1/);
});
