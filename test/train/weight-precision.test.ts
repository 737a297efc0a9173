// Weight storage precision: frozen weights in bf16 (weight_dtype), trained
// ones in float32 or, with full_bf16, bf16; training still learns, gradients
// reach only the trained weights; full_fp16/weight_dtype without the matching
// mixed_precision are refused naming both fields.
import assert from "node:assert/strict";
import { test } from "node:test";
import { injectLora } from "../../src/adapters/network.js";
import {
  autocast,
  Generator,
  LRScheduler,
  mseLoss,
  randn,
  SGD,
  scope,
  type Tensor,
  zeros,
} from "../../src/engine/index.js";
import { GradScaler } from "../../src/train/grad-scaler.js";
import { StepCore } from "../../src/train/loop.js";
import { storeWeights } from "../../src/train/weight-precision.js";
import { checkLeaks } from "../helpers.js";
import { tinyNetworks } from "../tiny-model.js";
import { fails, load, minimal } from "./config-world.js";

checkLeaks();

const base = { weight_dtype: "bf16", full_fp16: false, full_bf16: false, mixed_precision: "bf16" } as const;

function trainTiny(fullBf16: boolean) {
  const { unet, vae, textEncoder } = tinyNetworks(9);
  vae.dispose();
  textEncoder.dispose();
  unet.train();
  // conv_in stands for an adapter: the only trained weights
  for (const [k, t] of unet.namedParameters()) t.requiresGrad_(k.startsWith("conv_in."));
  const stored = storeWeights({ ...base, full_bf16: fullBf16 }, [unet]);
  const g = new Generator(2);
  const sample = randn([1, 4, 8, 8], { generator: g });
  const context = randn([1, 5, 32], { generator: g });
  const target = randn([1, 4, 8, 8], { generator: g });
  g.dispose();
  const trained = unet.getModule("conv_in").parameters();
  const opt = new SGD(trained, { lr: fullBf16 ? 0.5 : 0.2 });
  const losses: number[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      scope(() => {
        const loss: Tensor = autocast("cpu", "bfloat16", () =>
          mseLoss(unet.forward(sample, 100, context).float(), target),
        );
        loss.backward();
        losses.push(loss.item());
        for (const [k, t] of unet.namedParameters()) {
          if (k.startsWith("conv_in.")) assert.ok(t.grad, `${k} has a gradient`);
          else assert.equal(t.grad, null, `frozen ${k} got a gradient`);
        }
        opt.step();
        opt.zeroGrad();
      });
    }
    const dtypes = new Map([...unet.namedParameters()].map(([k, t]) => [k, t.dtype]));
    return { stored, losses, dtypes };
  } finally {
    opt.dispose?.();
    unet.dispose();
    sample.dispose();
    context.dispose();
    target.dispose();
  }
}

test("weight_dtype bf16: frozen weights stored in bf16, the trained ones stay float32, training learns", () => {
  const { stored, losses, dtypes } = trainTiny(false);
  assert.ok(stored.frozen > 10, `frozen cast: ${stored.frozen}`);
  assert.equal(stored.trained, 0);
  for (const [k, d] of dtypes) assert.equal(d, k.startsWith("conv_in.") ? "float32" : "bfloat16", k);
  assert.ok(losses.at(-1)! < losses[0] * 0.98, `loss ${losses[0]} → ${losses.at(-1)}`);
});

test("full_bf16: the trained weights themselves in bf16, still learning", () => {
  const { stored, losses, dtypes } = trainTiny(true);
  assert.equal(stored.trained, 2);
  for (const [k, d] of dtypes) assert.equal(d, "bfloat16", k);
  assert.ok(losses.at(-1)! < losses[0] * 0.98, `loss ${losses[0]} → ${losses.at(-1)}`);
});

test("weight_dtype bf16 under a LoRA: the wrapped layers' own weights are cast (not the adapter's), the forward runs", () => {
  const { unet, vae, textEncoder } = tinyNetworks(9);
  vae.dispose();
  textEncoder.dispose();
  const net = injectLora({ unet }, { rank: 2, alpha: 1 });
  try {
    const before = unet.namedParameters().size;
    const stored = storeWeights(base, [unet]);
    assert.equal(stored.frozen, before, "every UNet parameter is frozen under the LoRA");
    for (const m of net.modules)
      for (const [k, t] of m.original.namedParameters()) assert.equal(t.dtype, "bfloat16", `${m.target.name} ${k}`);
    for (const t of net.trainableParameters()) assert.equal(t.dtype, "float32");
    const loss = scope(() => {
      const x = randn([1, 4, 8, 8]);
      const c = randn([1, 5, 32]);
      return autocast("cpu", "bfloat16", () => unet.forward(x, 10, c).float().square().mean().item());
    });
    assert.ok(Number.isFinite(loss), `loss ${loss}`);
  } finally {
    net.remove();
    unet.dispose();
  }
});

test("weight_dtype float32 and no full_*: nothing is cast", () => {
  const { unet, vae, textEncoder } = tinyNetworks(9);
  try {
    const s = storeWeights({ ...base, weight_dtype: "float32" }, [unet, vae, textEncoder]);
    assert.deepEqual(s, { frozen: 0, trained: 0 });
    for (const t of unet.parameters()) assert.equal(t.dtype, "float32");
  } finally {
    unet.dispose();
    vae.dispose();
    textEncoder.dispose();
  }
});

test("config: full_fp16/full_bf16/weight_dtype without the matching mixed_precision are refused, naming both fields", () => {
  fails(
    () => load(minimal({ full_fp16: true, mixed_precision: "bf16" })),
    /full_fp16 = true needs mixed_precision = "fp16", got mixed_precision = "bf16"/,
    "full_fp16",
  );
  fails(() => load(minimal({ full_bf16: true })), /full_bf16 = true needs mixed_precision = "bf16"/, "full_bf16");
  fails(
    () => load(minimal({ weight_dtype: "fp16", mixed_precision: "bf16" })),
    /weight_dtype = "fp16" needs mixed_precision = "fp16"/,
    "weight_dtype",
  );
  const ok = load(minimal({ full_bf16: true, weight_dtype: "bf16", mixed_precision: "bf16" }));
  assert.equal(ok.full_bf16, true);
  assert.equal(ok.weight_dtype, "bf16");
});

test("full_fp16 weights: the loss scaler sees their float16 gradients overflow and skips the step", () => {
  const w = zeros([4], { dtype: "float16" }).requiresGrad_();
  const optimizer = new SGD([w], { lr: 0.1 });
  const scheduler = new LRScheduler(optimizer, "constant");
  const scaler = new GradScaler({ initScale: 2 ** 16 });
  const core = new StepCore({ optimizer, scheduler, gradScaler: scaler, onNonFinite: "stop" });
  try {
    // gradient 1 per element · 2^16 = 65536 > float16's max 65504: inf in the half gradient
    core.micro(() => ({ loss: w.float().sum() }));
    const r = core.step(0);
    assert.equal(r.overflow, true);
    assert.deepEqual(w.toArray(), [0, 0, 0, 0]);
    assert.equal(scaler.scale, 2 ** 15);
    core.micro(() => ({ loss: w.float().sum() }));
    assert.equal(core.step(0).skipped, undefined);
    for (const v of w.toArray()) assert.ok(Math.abs(v + 0.1) < 1e-3, `float16 weight ${v} after one step`);
  } finally {
    w.dispose();
  }
});
