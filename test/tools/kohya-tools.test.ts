// The LoRA tools against kohya's own scripts (the fixture README, kohya_tools):
// merge equals merge_lora.py's weights; svd merge, extract and resize give
// the recorded S, products (sign-aligned before the clamp, as the README
// says) and ranks, at the README's tolerances.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { disposeAll, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { type ExtractOptions, extractLora, type WeightSource } from "../../src/tools/extract-lora.js";
import { concatLoras, svdMergeLoras } from "../../src/tools/lora-arithmetic.js";
import { asMatrix, moduleDelta } from "../../src/tools/lora-math.js";
import { type AdaptedComponent, layerWeights, mergedWeight, planKey, planMerge } from "../../src/tools/lora-plan.js";
import { type ResizeOptions, resizeLora } from "../../src/tools/resize-lora.js";
import type { KohyaLora } from "../../src/tools/tool-io.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const { tensors: fx } = loadSafetensors(sharedFixture("adapters/kohya_tools.safetensors"));
const meta = JSON.parse(readFileSync(sharedFixture("adapters/kohya_tools_meta.json"), "utf8"));
after(() => disposeAll(fx));

const get = (k: string): Tensor => {
  const t = fx.get(k);
  if (!t) throw new Error(`fixture has no ${k}`);
  return t;
};

/** The kohya LoRA stored under `prefix.` (module → key → tensor; the fixture's own tensors, not copies). */
function loraAt(prefix: string): KohyaLora {
  const out: KohyaLora = new Map();
  for (const [k, t] of fx) {
    if (!k.startsWith(`${prefix}.`)) continue;
    const rest = k.slice(prefix.length + 1);
    if (!/^lora_(unet|te)_/.test(rest)) continue;
    const dot = rest.indexOf(".");
    const key = rest.slice(dot + 1);
    if (!["lora_down.weight", "lora_up.weight", "alpha"].includes(key)) continue;
    const name = rest.slice(0, dot);
    if (!out.has(name)) out.set(name, new Map());
    out.get(name)!.set(key, t);
  }
  return out;
}

const maxAbs = (t: Tensor) => scope(() => t.abs().max().item());

/** Products and S of an SVD result, at the README tolerances (abs ≤ 1e-5·max|M|, S ≤ 1e-5·S[0]). */
function checkSvd(what: string, product: Tensor, expected: Tensor, M: Tensor): void {
  assertClose(product, expected, { atol: 1e-5 * maxAbs(M), rtol: 0, what });
}

test("merge: W + 0.7·ΔW equals kohya merge_to_sd_model, unmatched modules skipped as kohya does", () => {
  const shapes: Record<AdaptedComponent, Map<string, readonly number[]>> = { unet: new Map(), textEncoder: new Map() };
  const org = new Map<string, Tensor>();
  for (const [k, t] of fx) {
    const m = /^merge\.org\.(te|unet)\.(.+)$/.exec(k);
    if (!m) continue;
    const c: AdaptedComponent = m[1] === "te" ? "textEncoder" : "unet";
    shapes[c].set(m[2], t.shape);
    org.set(planKey(c, m[2]), t);
  }
  const lora = { path: "merge.input_lora", weight: 0.7, modules: loraAt("merge.input_lora") };
  const weights = layerWeights(shapes);
  assert.throws(() => planMerge([lora], weights), /1 of 6 modules match no layer.*mid_block_attentions_0_proj_out/);
  const plan = planMerge([lora], weights, { skipUnmatched: true });
  assert.deepEqual(plan.skipped, ["merge.input_lora: lora_unet_mid_block_attentions_0_proj_out"]);
  assert.equal(plan.byKey.size, 5);
  for (const [k, w] of org) {
    const [c, key] = [k.slice(0, k.indexOf(":")), k.slice(k.indexOf(":") + 1)];
    const list = plan.byKey.get(k);
    assert.ok(list, `${k} is merged`);
    scope(() => {
      const merged = mergedWeight(w, list);
      assertClose(merged, get(`merge.merged.${c === "unet" ? "unet" : "te"}.${key}`), {
        rtol: 1e-5,
        atol: 1e-6,
        what: k,
      });
      // +w then −w gives the original back within float32 rounding
      const back = mergedWeight(
        merged,
        list.map((x) => ({ ...x, weight: -x.weight })),
      );
      assertClose(back, w, { rtol: 0, atol: 4 * 1.2e-7 * Math.max(1, maxAbs(merged)), what: `${k} back` });
    });
  }
});

test("svd merge: [1.0, −0.5] to rank 3 / conv 2 gives kohya's S, ranks, alphas and clamped products", () => {
  const inputs = [
    { lora: loraAt("svd_merge.input0"), weight: 1.0, name: "in0" },
    { lora: loraAt("svd_merge.input1"), weight: -0.5, name: "in1" },
  ];
  const r = svdMergeLoras(inputs, {
    rank: 3,
    convRank: 2,
    signsLike: (m) => fx.get(`svd_merge.${m}.up_unclamped`),
  });
  try {
    const expected = meta.svd_merge.modules as Record<string, { rank: number; alpha: number; clamp_hi: number }>;
    assert.deepEqual([...r.lora.keys()].sort(), Object.keys(expected).sort());
    for (const info of r.modules) {
      const e = expected[info.name];
      const M = get(`svd_merge.${info.name}.merged_weight`);
      assert.equal(info.rank, e.rank, info.name);
      const S = get(`svd_merge.${info.name}.S`).toArray();
      assertClose(info.S, S, { atol: 1e-5 * S[0], rtol: 0, what: `${info.name} S` });
      assert.ok(Math.abs(info.clampHi! - e.clamp_hi) <= 1e-5 * maxAbs(M), `${info.name} clamp ${info.clampHi}`);
      const m = r.lora.get(info.name)!;
      assert.equal(m.get("alpha")!.dtype, "int64");
      assert.equal(m.get("alpha")!.item(), e.alpha);
      assert.deepEqual(m.get("lora_up.weight")!.shape, get(`svd_merge.out.${info.name}.lora_up.weight`).shape);
      assert.deepEqual(m.get("lora_down.weight")!.shape, get(`svd_merge.out.${info.name}.lora_down.weight`).shape);
      scope(() => {
        const product = asMatrix(m.get("lora_up.weight")!).matmul(asMatrix(m.get("lora_down.weight")!));
        checkSvd(info.name, product.reshape(...M.shape), get(`svd_merge.out.${info.name}.product`), M);
        // the accumulated ΔW is kohya's (no SVD involved: rtol 1e-5, atol 1e-6)
        const sources = inputs.filter((i) => i.lora.has(info.name));
        let W: Tensor | null = null;
        for (const s of sources) {
          const d = moduleDelta(info.name, s.lora.get(info.name)!, M.shape).mul(s.weight);
          W = W ? W.add(d) : d;
        }
        assertClose(W!, M, { rtol: 1e-5, atol: 1e-6, what: `${info.name} merged_weight` });
      });
    }
  } finally {
    disposeAll(r.lora);
  }
});

test("concat: the exact sum keeps Σ weight·ΔW with ranks added", () => {
  const inputs = [
    { lora: loraAt("svd_merge.input0"), weight: 1.0, name: "in0" },
    { lora: loraAt("svd_merge.input1"), weight: -0.5, name: "in1" },
  ];
  const out = concatLoras(inputs);
  try {
    const q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    assert.equal(out.get(q)!.get("lora_down.weight")!.size(0), 10);
    for (const name of out.keys()) {
      const M = get(`svd_merge.${name}.merged_weight`);
      scope(() => assertClose(moduleDelta(name, out.get(name)!, M.shape), M, { rtol: 1e-5, atol: 1e-6, what: name }));
    }
  } finally {
    disposeAll(out);
  }
});

function weightSource(prefix: string): WeightSource {
  const shapes: WeightSource["shapes"] = { unet: new Map(), textEncoder: new Map() };
  for (const [k, t] of fx) {
    const m = new RegExp(`^${prefix.replaceAll(".", "\\.")}\\.(te|unet)\\.(.+)$`).exec(k);
    if (m) shapes[m[1] === "te" ? "textEncoder" : "unet"].set(m[2], t.shape);
  }
  return {
    shapes,
    get: (c, key) =>
      get(`${prefix}.${c === "unet" ? "unet" : "te"}.${key}`)
        .float()
        .clone(),
  };
}

for (const [run, o] of [
  ["extract_dim4", { dim: 4, clampQuantile: 0.99, minDiff: 0.01 }],
  ["extract_dim4_conv6_te_same", { dim: 4, convDim: 6, clampQuantile: 0.99, minDiff: 0.5 }],
] as [string, ExtractOptions][]) {
  test(`extract ${run}: kohya's modules, ranks, S and clamped products at 0.99; the default (no clamp) within 1 % of the truncated SVD's`, () => {
    const r = extractLora(weightSource("extract.model_org"), weightSource("extract.model_tuned"), {
      ...o,
      signsLike: (m) => fx.get(`${run}.${m}.up_unclamped`),
    });
    try {
      const expected = Object.keys(meta.extract[run].modules).sort();
      assert.deepEqual([...r.lora.keys()].sort(), expected);
      assert.equal(r.textEncoderSame, run.endsWith("te_same"));
      for (const info of r.modules) {
        const e = meta.extract[run].modules[info.name];
        assert.equal(info.rank, e.rank, info.name);
        const m = r.lora.get(info.name)!;
        assert.equal(m.get("alpha")!.item(), e.alpha);
        assert.deepEqual(m.get("lora_up.weight")!.shape, get(`${run}.${info.name}.lora_up.weight`).shape);
        assert.deepEqual(m.get("lora_down.weight")!.shape, get(`${run}.${info.name}.lora_down.weight`).shape);
        const S = get(`${run}.${info.name}.S`).toArray();
        assertClose(info.S, S, { atol: 1e-5 * S[0], rtol: 0, what: `${info.name} S` });
        scope(() => {
          const recorded = get(`${run}.${info.name}.product`);
          const M = get(`extract.model_tuned.${e.weight}`).sub(get(`extract.model_org.${e.weight}`));
          const product = asMatrix(m.get("lora_up.weight")!).matmul(asMatrix(m.get("lora_down.weight")!));
          checkSvd(info.name, product.reshape(...recorded.shape), recorded, M);
          assert.ok(Math.abs(info.clampHi! - e.clamp_hi) <= 1e-5 * maxAbs(M), `${info.name} clamp`);
        });
        // nothing beats the truncated SVD (Eckart–Young); kohya's clamp costs some of it
        assert.ok(
          info.relError >= info.bestRelError - 1e-6,
          `${info.name}: ${info.relError} < best ${info.bestRelError}`,
        );
      }
    } finally {
      disposeAll(r.lora);
    }
    // Atelier's default (no clampQuantile given) is the truncated SVD: within 1 % of the best error
    const { clampQuantile: _kohyaClamp, ...defaults } = o;
    const exact = extractLora(weightSource("extract.model_org"), weightSource("extract.model_tuned"), defaults);
    try {
      assert.equal(exact.modules.length, r.modules.length);
      let worst = 0;
      for (const info of exact.modules) {
        assert.equal(info.clampHi, undefined, `${info.name}: clamped by default`);
        assert.ok(
          info.relError <= info.bestRelError * 1.01 + 1e-6,
          `${info.name}: ${info.relError} vs best ${info.bestRelError}`,
        );
        worst = Math.max(worst, info.relError / info.bestRelError);
      }
      const clamped = Math.max(...r.modules.map((i) => i.relError / i.bestRelError));
      console.log(
        `${run}: error / best, worst module: default ${worst.toFixed(6)}, kohya clamp 0.99 ${clamped.toFixed(4)}`,
      );
    } finally {
      disposeAll(exact.lora);
    }
  });
}

const RESIZE_RUNS: [string, ResizeOptions][] = [
  ["resize_fixed_r4", { rank: 4, convRank: 4 }],
  ["resize_fixed_r4_conv2", { rank: 4, convRank: 2 }],
  ["resize_sv_ratio", { rank: 8, convRank: 8, dynamic: { method: "sv_ratio", param: 4.0 } }],
  ["resize_sv_fro", { rank: 8, convRank: 8, dynamic: { method: "sv_fro", param: 0.9 } }],
  ["resize_sv_cumulative", { rank: 8, convRank: 8, dynamic: { method: "sv_cumulative", param: 0.7 } }],
];

for (const [run, o] of RESIZE_RUNS) {
  test(`resize ${run}: kohya's ranks, alphas, products and energy kept`, () => {
    const input = loraAt("resize.input");
    const r = resizeLora(input, o);
    try {
      const expected = meta.resize[run].modules as Record<
        string,
        { rank: number; alpha: number; sum_retained: number | null; fro_retained: number | null }
      >;
      assert.deepEqual([...r.lora.keys()].sort(), Object.keys(expected).sort());
      for (const info of r.modules) {
        const e = expected[info.name];
        assert.equal(info.rank, e.rank, `${info.name} rank`);
        assert.equal(
          scope(() => r.lora.get(info.name)!.get("alpha")!.item()),
          e.alpha,
          `${info.name} alpha`,
        );
        if (e.fro_retained === null) assert.equal(info.froRetained, null);
        else {
          assert.ok(Math.abs(info.froRetained! - e.fro_retained) < 1e-5, `${info.name} fro ${info.froRetained}`);
          assert.ok(Math.abs(info.sumRetained! - e.sum_retained!) < 1e-5, `${info.name} sum`);
        }
        scope(() => {
          const m = r.lora.get(info.name)!;
          const recorded = get(`${run}.${info.name}.product`);
          const inp = input.get(info.name)!;
          const M = asMatrix(inp.get("lora_up.weight")!).matmul(asMatrix(inp.get("lora_down.weight")!));
          const product = asMatrix(m.get("lora_up.weight")!).matmul(asMatrix(m.get("lora_down.weight")!));
          checkSvd(info.name, product.reshape(...recorded.shape), recorded, M);
        });
      }
    } finally {
      disposeAll(r.lora);
    }
  });
}
