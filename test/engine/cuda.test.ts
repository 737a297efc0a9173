// The CUDA path against the CPU path: the same ops and the same tiny UNet
// step, on both devices, agree. Skipped where no CUDA GPU is present (CI);
// scripts/gpu/run.sh runs it on GPU machines. No shared fixtures: that
// runner carries only the repository.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  all,
  autocast,
  conv2d,
  cudaAvailable,
  Generator,
  groupNorm,
  isfinite,
  matmul,
  mseLoss,
  randn,
  scaledDotProductAttention,
  scope,
  softmax,
  type Tensor,
} from "../../src/engine/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();
const skip = !cudaAvailable() && "no CUDA GPU";

/** max |a − b| ≤ tol · max |b|: cuDNN's convolutions may run in TF32, so element-wise float32 tolerances are too tight. */
function closeRelMax(a: Tensor, b: Tensor, tol: number, what: string): void {
  const x = a.to("cpu").toArray();
  const y = b.to("cpu").toArray();
  assert.equal(x.length, y.length, `${what}: length`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < x.length; i++) {
    diff = Math.max(diff, Math.abs(x[i] - y[i]));
    scale = Math.max(scale, Math.abs(y[i]));
  }
  assert.ok(Number.isFinite(diff) && diff <= tol * scale, `${what}: max |cuda − cpu| ${diff} vs max |cpu| ${scale}`);
}

test("ops agree between CUDA and CPU", { skip }, () => {
  scope(() => {
    const g = new Generator(3);
    const a = randn([64, 96], { generator: g });
    const b = randn([96, 48], { generator: g });
    const x = randn([2, 8, 16, 16], { generator: g });
    const w = randn([12, 8, 3, 3], { generator: g });
    const q = randn([2, 4, 64, 16], { generator: g });
    g.dispose();
    const on = (t: Tensor) => t.to("cuda");
    closeRelMax(matmul(on(a), on(b)), matmul(a, b), 1e-3, "matmul");
    closeRelMax(conv2d(on(x), on(w), null, { padding: 1 }), conv2d(x, w, null, { padding: 1 }), 1e-3, "conv2d");
    closeRelMax(groupNorm(on(x), 4), groupNorm(x, 4), 1e-4, "group_norm");
    closeRelMax(softmax(on(a), 1), softmax(a, 1), 1e-5, "softmax");
    closeRelMax(scaledDotProductAttention(on(q), on(q), on(q)), scaledDotProductAttention(q, q, q), 1e-3, "attention");
    assertClose([mseLoss(on(a), on(a).mul(0.5)).item()], [mseLoss(a, a.mul(0.5)).item()], { rtol: 1e-5 });
  });
});

test("a tiny UNet's forward, loss and gradients agree between CUDA and CPU; bf16 autocast stays finite", {
  skip,
}, () => {
  const generator = new Generator(11);
  const cpu = new UNet2DConditionModel("tiny", { generator }).train();
  generator.dispose();
  const gpu = new UNet2DConditionModel("tiny", { mode: "empty", device: "cuda" }).train();
  for (const [k, v] of cpu.namedParameters()) gpu.setParameter(k, v);
  try {
    scope(() => {
      const g = new Generator(5);
      const latents = randn([2, 4, 16, 16], { generator: g });
      const context = randn([2, 77, cpu.config.crossAttentionDim], { generator: g });
      const target = randn([2, 4, 16, 16], { generator: g });
      g.dispose();
      const lossCpu = mseLoss(cpu.forward(latents, 500, context), target);
      const lossGpu = mseLoss(gpu.forward(latents.to("cuda"), 500, context.to("cuda")), target.to("cuda"));
      lossCpu.backward();
      lossGpu.backward();
      assertClose([lossGpu.item()], [lossCpu.item()], { rtol: 1e-3, what: "loss" });
      const grads = gpu.namedParameters();
      for (const [k, p] of cpu.namedParameters()) {
        const gg = grads.get(k)?.grad;
        assert.ok(p.grad && gg, `${k}: a gradient on both devices`);
        closeRelMax(gg, p.grad, 5e-3, `grad ${k}`);
      }
      const half = autocast("cuda", "bfloat16", () =>
        gpu.forward(latents.to("cuda"), 500, context.to("cuda")).to("float32"),
      );
      assert.ok(all(isfinite(half)).item(), "bf16 forward is finite");
      closeRelMax(half, gpu.forward(latents.to("cuda"), 500, context.to("cuda")), 0.05, "bf16 vs fp32");
    });
  } finally {
    cpu.dispose();
    gpu.dispose();
  }
});
