// Precision: float16 loss scaling (skip an overflowed step, back off, recover,
// grow), and a bf16 autocast training step of the tiny UNet on the CPU.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  autocast,
  Generator,
  LRScheduler,
  mseLoss,
  ones,
  randn,
  SGD,
  scope,
  type Tensor,
  zeros,
} from "../../src/engine/index.js";
import { GradScaler } from "../../src/train/grad-scaler.js";
import { StepCore } from "../../src/train/loop.js";
import { checkLeaks } from "../helpers.js";
import { tinyNetworks } from "../tiny-model.js";

checkLeaks();

test("loss scaling: an overflowed step is skipped, the scale halves, the next step updates, the scale grows", () => {
  const w = zeros([4]).requiresGrad_();
  const optimizer = new SGD([w], { lr: 0.1 });
  const scheduler = new LRScheduler(optimizer, "constant");
  const scaler = new GradScaler({ initScale: 2 ** 16, growthInterval: 2 });
  const core = new StepCore({ optimizer, scheduler, gradScaler: scaler, onNonFinite: "stop" });
  const x = ones([4]);
  // a finite loss whose gradient times 2^16 overflows float32: 1e35 · 65536 > 3.4e38
  const step = (factor: number) => {
    core.micro(() => ({ loss: w.mul(x).sum().mul(factor) }));
    return core.step(0);
  };
  try {
    const first = step(1e35);
    assert.equal(first.overflow, true);
    assert.match(first.skipped ?? "", /overflowed at loss scale 65536/);
    assert.deepEqual(w.toArray(), [0, 0, 0, 0], "the overflowed step must not touch the weights");
    assert.equal(scaler.scale, 2 ** 15);
    const second = step(1);
    assert.equal(second.skipped, undefined);
    // unscaled gradient 1 per element: w = −lr · 1
    for (const v of w.toArray()) assert.ok(Math.abs(v + 0.1) < 1e-7, `weight ${v} after one SGD step`);
    assert.equal(scaler.scale, 2 ** 15);
    step(1);
    assert.equal(scaler.scale, 2 ** 16, "two good steps in a row (growthInterval 2) double the scale");
    assert.deepEqual(scaler.state(), { scale: 2 ** 16, growthTracker: 0 });
  } finally {
    w.dispose();
    x.dispose();
  }
});

test("loss scaling: bad settings and saved states are refused", () => {
  assert.throws(() => new GradScaler({ initScale: 0 }), /initScale must be a positive number/);
  assert.throws(() => new GradScaler({ growthInterval: 1.5 }), /growthInterval must be a positive integer/);
  assert.throws(() => new GradScaler().load({ scale: -1, growthTracker: 0 }), /bad saved state/);
});

test("bf16 autocast on the CPU: a tiny UNet training step runs, close to float32", () => {
  const { unet, vae, textEncoder } = tinyNetworks(9);
  vae.dispose();
  textEncoder.dispose();
  unet.train();
  const g = new Generator(2);
  const sample = randn([1, 4, 8, 8], { generator: g });
  const context = randn([1, 5, 32], { generator: g });
  const target = randn([1, 4, 8, 8], { generator: g });
  g.dispose();
  const lossOf = (bf16: boolean) =>
    scope(() => {
      const f = () => mseLoss(unet.forward(sample, 100, context).float(), target);
      const loss: Tensor = bf16 ? autocast("cpu", "bfloat16", f) : f();
      loss.backward();
      const grad = unet.getModule("conv_in").parameters()[0].grad as Tensor;
      const out = { loss: loss.item(), gradNorm: grad.norm().item() };
      for (const p of unet.parameters()) p.grad = null;
      return out;
    });
  try {
    const f32 = lossOf(false);
    const bf = lossOf(true);
    assert.ok(Math.abs(bf.loss - f32.loss) < 0.02 * f32.loss, `bf16 loss ${bf.loss} vs float32 ${f32.loss}`);
    assert.ok(Number.isFinite(bf.gradNorm) && bf.gradNorm > 0);
    assert.ok(Math.abs(bf.gradNorm - f32.gradNorm) < 0.1 * f32.gradNorm, `grad norm ${bf.gradNorm} vs ${f32.gradNorm}`);
  } finally {
    for (const t of [sample, context, target]) t.dispose();
    unet.dispose();
  }
});
