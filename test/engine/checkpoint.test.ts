// Gradient checkpointing: the gradients of a checkpointed run are bit-identical
// to the plain run's (tiny UNet, tiny text encoder, a dropout segment), and
// nothing is left behind when a graph is dropped without backward.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  checkpoint,
  Generator,
  manualSeed,
  mseLoss,
  noGrad,
  pendingCheckpoints,
  randn,
  scope,
  type Tensor,
} from "../../src/engine/index.js";
import { Dropout, Linear, type Module } from "../../src/nn/index.js";
import { checkLeaks } from "../helpers.js";
import { tinyNetworks } from "../tiny-model.js";

checkLeaks();

/** Raw bytes of each parameter's gradient (and of extra tensors' gradients), then clears them. */
function takeGrads(m: Module, extra: Tensor[] = []): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const entries: [string, Tensor][] = [
    ...m.namedParameters(),
    ...extra.map((t, i) => [`extra${i}`, t] as [string, Tensor]),
  ];
  for (const [k, p] of entries) {
    const g = p.grad;
    if (!g) continue;
    out.set(k, Buffer.from(g.toTypedArray().buffer as ArrayBuffer));
    g.dispose();
    p.grad = null;
  }
  return out;
}

function assertSameGrads(plain: Map<string, Buffer>, ckpt: Map<string, Buffer>): void {
  assert.ok(plain.size > 10, `too few gradients compared (${plain.size})`);
  assert.deepEqual([...ckpt.keys()].sort(), [...plain.keys()].sort());
  for (const [k, b] of plain) assert.ok(b.equals(ckpt.get(k) as Buffer), `gradient of ${k} differs`);
}

test("tiny UNet: checkpointed gradients are bit-identical, context gradient included", () => {
  const { unet, vae, textEncoder } = tinyNetworks(3);
  vae.dispose();
  textEncoder.dispose();
  unet.train();
  const g = new Generator(5);
  const sample = randn([2, 4, 8, 8], { generator: g });
  const context = randn([2, 7, 32], { generator: g }).requiresGrad_();
  const target = randn([2, 4, 8, 8], { generator: g });
  g.dispose();
  const step = () =>
    scope(() => {
      mseLoss(unet.forward(sample, 10, context), target).backward();
    });
  try {
    step();
    const plain = takeGrads(unet, [context]);
    unet.setGradientCheckpointing(true);
    step();
    assert.equal(pendingCheckpoints(), 0);
    assertSameGrads(plain, takeGrads(unet, [context]));
    // the forward values are the plain ones too
    const [a, b] = scope(() => {
      const y = unet.forward(sample, 10, context).detach();
      unet.setGradientCheckpointing(false);
      return [y, noGrad(() => unet.forward(sample, 10, context))];
    });
    assert.ok(
      Buffer.from(a.toTypedArray().buffer as ArrayBuffer).equals(Buffer.from(b.toTypedArray().buffer as ArrayBuffer)),
    );
    a.dispose();
    b.dispose();
  } finally {
    for (const t of [sample, context, target]) t.dispose();
    unet.dispose();
  }
  // the graph of that last checkpointed forward was dropped without backward
  assert.equal(pendingCheckpoints(), 0);
});

test("tiny UNet under a frozen base: only the trained layers get (identical) gradients", () => {
  const { unet, vae, textEncoder } = tinyNetworks(4);
  vae.dispose();
  textEncoder.dispose();
  unet.requiresGrad_(false);
  // train only the attention projections, as a LoRA run trains only its adapters
  for (const [k, p] of unet.namedParameters()) if (/attn[12]\.to_[qv]\./.test(k)) p.requiresGrad_(true);
  const g = new Generator(6);
  const sample = randn([1, 4, 8, 8], { generator: g });
  const context = randn([1, 5, 32], { generator: g });
  const target = randn([1, 4, 8, 8], { generator: g });
  g.dispose();
  const step = () => scope(() => mseLoss(unet.forward(sample, 500, context), target).backward());
  try {
    step();
    const plain = takeGrads(unet);
    unet.setGradientCheckpointing(true);
    step();
    const ckpt = takeGrads(unet);
    assert.ok([...plain.keys()].every((k) => /to_[qv]/.test(k)));
    assertSameGrads(plain, ckpt);
  } finally {
    for (const t of [sample, context, target]) t.dispose();
    unet.dispose();
  }
});

test("tiny text encoder: checkpointed layers give bit-identical gradients", () => {
  const { unet, vae, textEncoder } = tinyNetworks(7);
  unet.dispose();
  vae.dispose();
  const ids = scope(() =>
    randn([2, 77], { generator: new Generator(1) })
      .abs()
      .mul(1000)
      .to("int64"),
  );
  const step = () => scope(() => textEncoder.encode(ids).square().mean().backward());
  try {
    step();
    const plain = takeGrads(textEncoder);
    textEncoder.gradientCheckpointing = true;
    step();
    assertSameGrads(plain, takeGrads(textEncoder));
  } finally {
    ids.dispose();
    textEncoder.dispose();
  }
});

test("a segment with dropout draws the same masks when it is recomputed", () => {
  const lin = new Linear(16, 16, true, { generator: new Generator(2) });
  const drop = new Dropout(0.5);
  const x = randn([8, 16], { generator: new Generator(3) }).requiresGrad_();
  const seg = (h: Tensor) => drop.forward(lin.forward(h)).relu();
  const run = (ckpt: boolean) =>
    scope(() => {
      manualSeed(11);
      const y = ckpt ? checkpoint(seg, [x])[0] : seg(x);
      y.sum().backward();
      return takeGrads(lin, [x]);
    });
  try {
    const plain = run(false);
    const ckpt = run(true);
    assert.equal(plain.size, 3);
    for (const [k, b] of plain) assert.ok(b.equals(ckpt.get(k) as Buffer), `gradient of ${k} differs`);
  } finally {
    x.dispose();
    lin.dispose();
  }
});

test("an error inside the recomputed segment reaches the caller of backward", () => {
  const x = randn([3]).requiresGrad_();
  let calls = 0;
  const seg = (h: Tensor) => {
    calls++;
    if (calls > 1) throw new Error("segment broke on recompute");
    return h.mul(2);
  };
  try {
    assert.throws(() => scope(() => checkpoint(seg, [x])[0].sum().backward()), /segment broke on recompute/);
    assert.equal(pendingCheckpoints(), 0);
  } finally {
    x.dispose();
  }
});
