// Every wrapped op, forward and backward, against values recorded from PyTorch
// by scripts/record-engine-reference.py (test/fixtures/engine_reference.json).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { type DType, scope, type Tensor } from "../../src/engine/index.js";
import { assertClose, checkLeaks, testFixture } from "../helpers.js";

checkLeaks();

interface Stored {
  shape: number[];
  dtype: string;
  data: (number | boolean)[];
}

interface Case {
  inputs: Stored[];
  outputs: Stored[];
  multi: boolean;
  R?: Stored[];
  grads?: (Stored | null)[];
}

const reference = JSON.parse(readFileSync(testFixture("engine_reference.json"), "utf8")) as {
  cases: Record<string, Case>;
  random: Record<string, unknown>;
};

function build(s: Stored): Tensor {
  const dtype = s.dtype as DType;
  if (dtype === "int64")
    return E.tensor(
      BigInt64Array.from(s.data, (v) => BigInt(v as number)),
      { shape: s.shape },
    );
  if (dtype === "bool") {
    return scope(() =>
      E.tensor(
        Uint8Array.from(s.data, (v) => (v ? 1 : 0)),
        { shape: s.shape },
      ).to("bool"),
    );
  }
  return E.tensor(Float32Array.from(s.data as number[]), { shape: s.shape, dtype });
}

type Fn = (...xs: Tensor[]) => Tensor | Tensor[];

// The same computations as CASES in the recording script, written with Atelier's API.
const CASES: Record<string, Fn> = {
  reshape: (x) => x.reshape(4, 6),
  permute: (x) => x.permute(2, 0, 1),
  transpose: (x) => x.transpose(0, 2),
  cat: (a, b) => E.cat([a, b], 0),
  stack: (a, b) => E.stack([a, b], 1),
  split_sizes: (x) => E.split(x, [2, 3], 0),
  split_size: (x) => E.split(x, 2, 0),
  chunk: (x) => E.chunk(x, 3, 1),
  narrow: (x) => x.narrow(1, 1, 3),
  index_select: (x, i) => E.indexSelect(x, 0, i),
  gather: (x, i) => E.gather(x, 1, i),
  expand: (x) => x.expand(3, 4),
  flatten: (x) => x.flatten(1),
  contiguous_of_transpose: (x) => x.transpose(0, 1).contiguous(),
  squeeze_unsqueeze: (x) => x.squeeze(1).unsqueeze(0),
  slice_step: (x) => x.slice(0, 1, 6, 2),
  select: (x) => x.select(1, 2),
  repeat: (x) => x.repeat(2, 2),
  index_tensor: (x, i) => E.index(x, [i]),
  tril: (x) => x.tril(),
  flip: (x) => E.flip(x, [1]),
  add_broadcast: (a, b) => a.add(b, 2),
  add_scalar: (a) => a.add(1.5),
  sub: (a, b) => a.sub(b),
  rsub_scalar: (a) => E.rsub(1, a),
  mul: (a, b) => a.mul(b),
  div: (a, b) => a.div(b),
  pow_scalar: (a) => a.pow(2.5),
  pow_tensor: (a, b) => a.pow(b),
  unary_chain: (a) => a.log().exp().sqrt().rsqrt().neg().abs(),
  sin_cos_square: (a) => E.sin(a).add(E.cos(a).mul(a.square())),
  maximum: (a, b) => E.maximum(a, b),
  addcmul: (a, b, c) => E.addcmul(a, b, c, 0.5),
  addcdiv: (a, b, c) => E.addcdiv(a, b, c, 0.5),
  lerp: (a, b) => E.lerp(a, b, 0.3),
  gt: (a, b) => a.gt(b),
  eq_scalar: (a) => a.eq(1),
  where: (c, a, b) => E.where(c, a, b),
  where_scalar: (c, a) => E.where(c, a, 0.0),
  masked_fill: (a, m) => a.maskedFill(m, -2.0),
  clamp: (a) => a.clamp(-0.5, 0.7),
  sum_all: (a) => a.sum(),
  sum_dim: (a) => a.sum([0, 2]),
  mean_keepdim: (a) => a.mean(1, { keepdim: true }),
  var: (a) => E.variance(a, 1),
  var_population: (a) => E.variance(a, 1, { correction: 0 }),
  std_all: (a) => E.std(a),
  max_all: (a) => a.max(),
  amax_dim: (a) => a.max(1),
  argmax: (a) => a.argmax(1),
  norm: (a) => a.norm(),
  norm_dim: (a) => a.norm(2, 1),
  cumsum: (a) => E.cumsum(a, 1),
  cumprod: (a) => E.cumprod(a, 0),
  matmul: (a, b) => a.matmul(b),
  bmm: (a, b) => E.bmm(a, b),
  baddbmm: (i, a, b) => E.baddbmm(i, a, b, 0.5, 2.0),
  linear: (x, w, b) => E.linear(x, w, b),
  linear_nobias: (x, w) => E.linear(x, w),
  einsum: (a, b) => E.einsum("ij,jk->ik", a, b),
  kron: (a, b) => E.kron(a, b),
  conv2d: (x, w, b) => E.conv2d(x, w, b, { stride: 2, padding: 1 }),
  conv2d_groups: (x, w) => E.conv2d(x, w, null, { padding: 1, groups: 2 }),
  conv2d_1x1: (x, w, b) => E.conv2d(x, w, b),
  conv_transpose2d: (x, w, b) => E.convTranspose2d(x, w, b, { stride: 2, padding: 1, outputPadding: 1 }),
  group_norm: (x, w, b) => E.groupNorm(x, 4, w, b, 1e-6),
  layer_norm: (x, w, b) => E.layerNorm(x, [8], w, b, 1e-5),
  softmax: (x) => x.softmax(-1),
  log_softmax: (x) => E.logSoftmax(x, 1),
  silu: (x) => x.silu(),
  gelu: (x) => E.gelu(x),
  gelu_tanh: (x) => E.gelu(x, "tanh"),
  quick_gelu: (x) => E.quickGelu(x),
  sigmoid_tanh_relu: (x) => x.sigmoid().add(x.tanh().mul(x.relu())),
  embedding: (w, i) => E.embedding(w, i),
  interpolate_nearest: (x) => E.interpolate(x, { scaleFactor: 2 }),
  interpolate_nearest_size: (x) => E.interpolate(x, { size: [5, 7] }),
  interpolate_bilinear: (x) => E.interpolate(x, { size: [6, 5], mode: "bilinear" }),
  interpolate_bilinear_ac: (x) => E.interpolate(x, { scaleFactor: 2, mode: "bilinear", alignCorners: true }),
  pad_constant: (x) => E.pad(x, [1, 2, 0, 1], "constant", 0.5),
  pad_reflect: (x) => E.pad(x, [1, 1, 2, 0], "reflect"),
  pad_replicate: (x) => E.pad(x, [1, 1, 1, 1], "replicate"),
  attention: (q, k, v) => E.scaledDotProductAttention(q, k, v),
  attention_causal: (q, k, v) => E.scaledDotProductAttention(q, k, v, { causal: true }),
  attention_bool_mask: (q, k, v, m) =>
    E.scaledDotProductAttention(q, k, v, { mask: E.logicalOr(m, E.eye(3, 5, { dtype: "bool" })) }),
  attention_float_mask: (q, k, v, m) => E.scaledDotProductAttention(q, k, v, { mask: m }),
  mse_loss: (a, b) => E.mseLoss(a, b),
  mse_loss_sum: (a, b) => E.mseLoss(a, b, "sum"),
  mse_loss_none: (a, b) => E.mseLoss(a, b, "none"),
};

test("every recorded case has an implementation and vice versa", () => {
  assert.deepEqual(Object.keys(CASES).sort(), Object.keys(reference.cases).sort());
});

const isFloat = (dtype: string) => dtype.startsWith("float");

for (const [name, c] of Object.entries(reference.cases)) {
  test(`op ${name}: forward and backward match PyTorch`, () => {
    scope(() => {
      const inputs = c.inputs.map(build);
      for (const x of inputs) if (isFloat(x.dtype)) x.requiresGrad_();
      const result = CASES[name](...inputs);
      const outputs = Array.isArray(result) ? result : [result];
      assert.equal(outputs.length, c.outputs.length, "number of outputs");
      outputs.forEach((o, i) => {
        const want = c.outputs[i];
        assert.deepEqual(o.shape, want.shape, `output ${i} shape`);
        assert.equal(o.dtype, want.dtype, `output ${i} dtype`);
        if (isFloat(want.dtype)) assertClose(o, want.data as number[], { what: `output ${i}` });
        else assert.deepEqual(o.toArray(), want.data.map(Number), `output ${i}`);
      });
      if (!c.R || !c.grads) return;
      const floatOutputs = outputs.filter((o) => isFloat(o.dtype) && o.requiresGrad);
      const wrt = inputs.filter((x) => x.requiresGrad);
      const grads = E.grad(floatOutputs, wrt, { gradOutputs: c.R.map(build), allowUnused: true });
      const expected = c.grads.filter((_, i) => inputs[i].requiresGrad);
      for (const [i, g] of grads.entries()) {
        const want = expected[i];
        if (want === null) {
          assert.equal(g, null, `gradient ${i} should be unused`);
          continue;
        }
        assert.ok(g, `gradient ${i} missing`);
        assertClose(g, want.data as number[], { what: `gradient ${i}` });
      }
    });
  });
}
