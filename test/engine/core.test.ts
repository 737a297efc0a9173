// The engine's core contracts: data in and out, dtypes, ownership, random
// streams equal to PyTorch's, autograd, autocast, and errors that never crash.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { keep, liveTensors, scope, type Tensor } from "../../src/engine/index.js";
import { assertClose, checkLeaks, testFixture } from "../helpers.js";

checkLeaks();

const random = (
  JSON.parse(readFileSync(testFixture("engine_reference.json"), "utf8")) as {
    random: {
      manual_seed_42: { randn7: number[]; rand5: number[]; randint6: number[] };
      dropout_seed7: number[];
      generator_2024: { randn2x3: number[]; then_randn4: number[] };
      latent_seed0_1x4x64x64: { first8: number[]; sum: number; sumsq: number };
    };
  }
).random;

test("seeded randn, rand and randint equal PyTorch's default generator bit for bit", () => {
  scope(() => {
    E.manualSeed(42);
    assert.deepEqual(E.randn([7]).toArray(), random.manual_seed_42.randn7);
    assert.deepEqual(E.rand([5]).toArray(), random.manual_seed_42.rand5);
    assert.deepEqual(E.randint(0, 10, [6]).toArray(), random.manual_seed_42.randint6);
  });
});

test("a private Generator draws torch.Generator().manual_seed(s)'s stream", () => {
  scope(() => {
    const g = new E.Generator(2024);
    assert.deepEqual(E.randn([2, 3], { generator: g }).toArray(), random.generator_2024.randn2x3);
    assert.deepEqual(E.randn([4], { generator: g }).toArray(), random.generator_2024.then_randn4);
    g.manualSeed(2024);
    assert.deepEqual(E.randn([2, 3], { generator: g }).toArray(), random.generator_2024.randn2x3);
    g.dispose();
  });
});

test("SD initial latent noise for seed 0 equals PyTorch's, all 16384 values", () => {
  scope(() => {
    const g = new E.Generator(0);
    const x = E.randn([1, 4, 64, 64], { generator: g });
    g.dispose();
    const want = random.latent_seed0_1x4x64x64;
    assert.deepEqual(x.flatten().slice(0, 0, 8).toArray(), want.first8);
    const d = x.to("float64");
    assert.equal(d.sum().item(), want.sum);
    assert.equal(d.square().sum().item(), want.sumsq);
  });
});

test("generator state saves and restores the stream", () => {
  scope(() => {
    const g = new E.Generator(5);
    E.randn([3], { generator: g });
    const state = g.getState();
    const a = E.randn([4], { generator: g }).toArray();
    g.setState(state);
    assert.deepEqual(E.randn([4], { generator: g }).toArray(), a);
    const global = E.getRngState();
    const b = E.randn([4]).toArray();
    E.setRngState(global);
    assert.deepEqual(E.randn([4]).toArray(), b);
    g.dispose();
  });
});

test("dropout draws from the default generator as torch does", () => {
  scope(() => {
    E.manualSeed(7);
    assert.deepEqual(E.dropout(E.ones([12]), 0.5).toArray(), random.dropout_seed7);
    assert.deepEqual(E.dropout(E.ones([3]), 0.5, false).toArray(), [1, 1, 1]);
  });
});

test("typed arrays round-trip for every dtype", () => {
  scope(() => {
    const cases: [E.DType, ArrayBufferView][] = [
      ["float32", new Float32Array([1.5, -2, 3.25])],
      ["float64", new Float64Array([1e-300, -2, Math.PI])],
      ["int32", new Int32Array([-5, 0, 2147483647])],
      ["int64", new BigInt64Array([-(2n ** 62n), 0n, 7n])],
      ["int16", new Int16Array([-32768, 1, 2])],
      ["int8", new Int8Array([-128, 1, 127])],
      ["uint8", new Uint8Array([0, 128, 255])],
    ];
    for (const [dtype, data] of cases) {
      const t = E.tensor(data);
      assert.equal(t.dtype, dtype);
      assert.deepEqual(t.toTypedArray(), data, dtype);
    }
    const half = E.tensor([1, 0.5, -2], { dtype: "float16" });
    assert.deepEqual(Array.from(half.toTypedArray() as Uint16Array), [0x3c00, 0x3800, 0xc000]);
    assert.deepEqual(half.toArray(), [1, 0.5, -2]);
    const bf = E.tensor([1, -2], { dtype: "bfloat16" });
    assert.deepEqual(Array.from(bf.toTypedArray() as Uint16Array), [0x3f80, 0xc000]);
    assert.deepEqual(
      E.tensor([
        [1, 2, 3],
        [4, 5, 6],
      ]).shape,
      [2, 3],
    );
    assert.deepEqual(E.tensor([[true, false]], { dtype: "bool" }).toArray(), [1, 0]);
  });
});

test("a non-contiguous view reads out in logical order", () => {
  scope(() => {
    const t = E.arange(6, undefined, 1, { dtype: "float32" }).reshape(2, 3).transpose(0, 1);
    assert.deepEqual(t.toArray(), [0, 3, 1, 4, 2, 5]);
    assert.deepEqual(t.shape, [3, 2]);
  });
});

test("creation ops: zeros, ones, full, arange, linspace, eye, like-ops", () => {
  scope(() => {
    assert.deepEqual(E.zeros([2]).toArray(), [0, 0]);
    assert.deepEqual(E.ones([2], { dtype: "int64" }).toArray(), [1, 1]);
    assert.deepEqual(E.full([2], 3.5).toArray(), [3.5, 3.5]);
    assert.equal(E.full([1], 3).dtype, "float32");
    assert.equal(E.arange(3).dtype, "int64");
    assert.deepEqual(E.arange(0, 1, 0.25).toArray(), [0, 0.25, 0.5, 0.75]);
    assertClose(E.linspace(0, 1, 5), [0, 0.25, 0.5, 0.75, 1]);
    assert.deepEqual(E.eye(2).toArray(), [1, 0, 0, 1]);
    const x = E.randn([2, 3]);
    assert.deepEqual(E.zerosLike(x).shape, [2, 3]);
    assert.deepEqual(E.fullLike(x, 2).toArray(), [2, 2, 2, 2, 2, 2]);
    assert.deepEqual(E.randnLike(x).shape, [2, 3]);
    assert.equal(E.zeros([1], { requiresGrad: true }).requiresGrad, true);
  });
});

test("scope frees what it made, keeps what it returns and what is kept", () => {
  const start = liveTensors();
  const kept: Tensor[] = [];
  const result = scope(() => {
    const a = E.ones([2]);
    const b = a.add(1);
    kept.push(keep(a.mul(3)));
    scope(() => b.mul(2)); // inner temporaries freed too
    return { sum: b.sum(), parts: [b] };
  });
  assert.equal(liveTensors(), start + 3); // sum, b, the kept one
  assert.equal(result.sum.item(), 4);
  scope(() => {
    const inner = scope(() => E.ones([1]));
    assert.equal(inner.disposed, false, "a returned tensor belongs to the outer scope");
  });
  E.disposeAll([result, kept]);
  assert.equal(liveTensors(), start);
  assert.throws(() => result.sum.item(), /disposed/);
});

test("a throwing scope frees its tensors and rethrows", () => {
  const start = liveTensors();
  assert.throws(
    () =>
      scope(() => {
        E.ones([3]);
        throw new Error("boom");
      }),
    /boom/,
  );
  assert.equal(liveTensors(), start);
});

test("async scopes free after the promise settles", async () => {
  const start = liveTensors();
  const out = await E.scopeAsync(async () => {
    const a = E.ones([2]);
    await new Promise((r) => setTimeout(r, 1));
    return a.add(1);
  });
  assert.equal(liveTensors(), start + 1);
  out.dispose();
  assert.throws(() => scope(() => Promise.resolve(1) as unknown as number), /scopeAsync/);
});

test("dispose twice is harmless; use after dispose is a clear error", () => {
  const t = E.ones([1]);
  t.dispose();
  t.dispose();
  assert.throws(() => t.shape, /disposed tensor/);
});

test("torch errors become JS errors with torch's message, never a crash", () => {
  scope(() => {
    assert.throws(() => E.matmul(E.zeros([2, 3]), E.zeros([2, 3])), /cannot be multiplied \(2x3 and 2x3\)/);
    assert.throws(() => E.zeros([2]).add(E.zeros([3])), /must match the size/);
    assert.throws(() => E.conv2d(E.zeros([1, 3, 4, 4]), E.zeros([2, 4, 3, 3])), /expected input.*to have 4 channels/);
    assert.throws(() => E.zeros([2]).item(), /has 2 elements, not 1/);
    assert.throws(() => E.reshape(E.zeros([6]), [4]), /invalid for input of size 6/);
    assert.throws(() => E.zeros([1.5]), /non-negative integers/);
    assert.throws(() => E.defOp("aten::no_such_op").t(), /has no operator aten::no_such_op/);
    assert.throws(() => E.defOp("aten::add.Tensor").t(1.5), /argument 'self' expects a tensor/);
    assert.throws(() => E.interpolate(E.zeros([1, 1, 2, 2]), {}), /exactly one of size and scaleFactor/);
  });
});

test("autograd: backward accumulates into .grad, which can be cleared", () => {
  scope(() => {
    const w = E.tensor([1, 2, 3]).requiresGrad_();
    w.mul(w).sum().backward();
    assert.deepEqual(w.grad?.toArray(), [2, 4, 6]);
    w.mul(3).sum().backward();
    assert.deepEqual(w.grad?.toArray(), [5, 7, 9]);
    w.grad = null;
    assert.equal(w.grad, null);
    assert.equal(w.isLeaf, true);
    const y = w.mul(2);
    assert.equal(y.isLeaf, false);
    y.retainGrad();
    y.sum().backward();
    assert.deepEqual(y.grad?.toArray(), [1, 1, 1]);
    assert.throws(() => y.backward(), /grad can be implicitly created only for scalar outputs/);
  });
});

test("noGrad records nothing; enableGrad records inside it", () => {
  scope(() => {
    const w = E.ones([2]).requiresGrad_();
    const a = E.noGrad(() => w.mul(2));
    assert.equal(a.requiresGrad, false);
    const b = E.noGrad(() => E.enableGrad(() => w.mul(2)));
    assert.equal(b.requiresGrad, true);
    assert.equal(E.isGradEnabled(), true);
    assert.equal(w.detach().requiresGrad, false);
  });
});

test("grad() of chosen outputs w.r.t. chosen inputs, with output gradients and second order", () => {
  scope(() => {
    const x = E.tensor([1, 2]).requiresGrad_();
    const y = x.pow(3);
    const [gx] = E.grad([y], [x], { gradOutputs: [E.tensor([1, 10])], createGraph: true });
    assert.deepEqual(gx?.toArray(), [3, 120]); // 3x² · [1, 10]
    assert.equal(x.grad, null, ".grad untouched");
    const [gxx] = E.grad([gx!.sum()], [x]);
    assert.deepEqual(gxx?.toArray(), [6, 120]); // d/dx of 3x²·g = 6x·g
    const unused = E.tensor([1]).requiresGrad_();
    assert.deepEqual(E.grad([x.sum()], [x, unused], { allowUnused: true })[1], null);
    assert.throws(() => E.grad([x.sum()], [unused]), /not have been used in the graph/);
  });
});

test("autocast runs matmul in bfloat16 and keeps float32 outside", () => {
  scope(() => {
    const a = E.randn([4, 4]);
    const inside = E.autocast("cpu", "bfloat16", () => a.matmul(a));
    assert.equal(inside.dtype, "bfloat16");
    assert.equal(a.matmul(a).dtype, "float32");
    assertClose(inside, a.matmul(a), { atol: 0.1, rtol: 0.02 });
    assert.throws(() => E.autocast("cpu", "float32", () => 0), /bfloat16 or float16/);
  });
});

test("dtype and device conversions", () => {
  scope(() => {
    const x = E.tensor([1.7, -2.2]);
    assert.deepEqual(x.to("int32").toArray(), [1, -2]);
    assert.equal(x.to("float64").dtype, "float64");
    assert.equal(x.to("cpu").device, "cpu");
    assert.equal(x.to("cpu", "float16").dtype, "float16");
    assert.throws(() => E.checkDevice("tpu"), /unknown device/);
    if (!E.cudaAvailable()) assert.throws(() => E.checkDevice("cuda"), /no CUDA GPU/);
  });
});

test("linear algebra: svd and qr reconstruct the matrix, kron of identities", () => {
  scope(() => {
    const a = E.randn([5, 3], { dtype: "float64" });
    const { U, S, Vh } = E.svd(a);
    assert.deepEqual([U.shape, S.shape, Vh.shape], [[5, 3], [3], [3, 3]]);
    assertClose(U.mul(S).matmul(Vh), a, { atol: 1e-12 });
    const { Q, R } = E.qr(a);
    assertClose(Q.matmul(R), a, { atol: 1e-12 });
    assertClose(Q.mT.matmul(Q), E.eye(3, 3, { dtype: "float64" }), { atol: 1e-12 });
    assert.deepEqual(E.kron(E.eye(2), E.eye(2)).toArray(), E.eye(4).toArray());
  });
});

test("scaled dot-product attention: fused path (when present) equals the math path", () => {
  scope(() => {
    const q = E.randn([2, 4, 6, 8]);
    const k = E.randn([2, 4, 7, 8]);
    const v = E.randn([2, 4, 7, 8]);
    const fast = E.scaledDotProductAttention(q, k, v, { scale: 0.3 });
    const math = E.scaledDotProductAttention(q, k, v, { scale: 0.3, forceMath: true });
    assertClose(fast, math, { atol: 1e-5 });
  });
});

test("in-place updates change the tensor itself", () => {
  scope(() => {
    const p = E.tensor([1, 2]);
    E.add_(p, E.tensor([1, 1]), 2);
    assert.deepEqual(p.toArray(), [3, 4]);
    E.addcdiv_(p, E.tensor([2, 2]), E.tensor([2, 4]), 2);
    assert.deepEqual(p.toArray(), [5, 5]);
    E.lerp_(p, E.tensor([7, 9]), 0.5);
    assert.deepEqual(p.toArray(), [6, 7]);
    p.mul_(2).add_(1);
    assert.deepEqual(p.toArray(), [13, 15]);
    E.clamp_(p, null, 14);
    assert.deepEqual(p.toArray(), [13, 14]);
    p.copy_(E.tensor([0, 1]));
    assert.deepEqual(p.toArray(), [0, 1]);
    p.zero_().fill_(2);
    assert.deepEqual(p.toArray(), [2, 2]);
  });
});

test("a byte view is detached after use: it cannot keep a disposed tensor's memory alive", () => {
  const t = E.tensor([1, 2, 3]);
  let kept: Uint8Array | undefined;
  t.withBytes((bytes) => {
    assert.equal(bytes.byteLength, 12);
    bytes.fill(0, 0, 4); // writes go to the tensor: the first float becomes 0
    kept = bytes;
  });
  assert.equal(kept!.byteLength, 0, "detached after the callback");
  assert.deepEqual(t.toArray(), [0, 2, 3]);
  t.dispose();
});
