// LyCORIS train_norm (lycoris/modules/norms.py NormModule, created by
// lycoris/kohya.py create_single_module for the "Norm" modules inside the
// target containers): on a tiny model the w_norm / b_norm deltas start at
// zero, get gradients, move the output when trained, save in the norm's
// weight shape (A1111 extensions-builtin/Lora/network_norm.py takes
// output_shape = w_norm.shape), load back bit for bit, merge == bypass, and
// the file passes the compatibility check for A1111 and ComfyUI.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { loadLora, saveLora } from "../../src/adapters/network.js";
import { injectAlgo, type NetworkOptions, networkArgs } from "../../src/adapters/network-algo.js";
import { NormModule } from "../../src/adapters/norm.js";
import { Generator, mseLoss, noGrad, randint, randn, scope, type Tensor } from "../../src/engine/index.js";
import { openSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkFile } from "../../src/tools/compat-check.js";
import { assertClose, checkLeaks, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG } from "../tiny-model.js";

checkLeaks();
const dir = tempDir("atelier-train-norm-");
const OPTS: NetworkOptions = { algo: "locon", rank: 2, convRank: 2, trainNorm: true };

function tinyModel() {
  const g = new Generator(1);
  const m = {
    unet: new UNet2DConditionModel("tiny", { generator: g }),
    textEncoder: new ClipTextModel(TINY_TEXT_CONFIG, { generator: g }),
  };
  g.dispose();
  return m;
}
type Tiny = ReturnType<typeof tinyModel>;
const dispose = (m: Tiny) => {
  m.unet.dispose();
  m.textEncoder.dispose();
};

const g0 = new Generator(5);
const IDS = randint(0, 1000, [1, 77], { generator: g0 });
const X = randn([1, 4, 8, 8], { generator: g0 });
const TARGET = randn([1, 4, 8, 8], { generator: g0 });
g0.dispose();

const output = (m: Tiny): Tensor =>
  noGrad(() => scope(() => m.unet.forward(X, 500, m.textEncoder.forward(IDS).lastHiddenState)));

/** One SGD step on a toy denoising loss; returns the norm modules' gradient sizes. */
function step(m: Tiny, params: Tensor[], norms: NormModule[]): number[] {
  scope(() => mseLoss(m.unet.forward(X, 500, m.textEncoder.forward(IDS).lastHiddenState), TARGET).backward());
  const sizes = norms.map((n) =>
    scope(() => (n.wNorm.grad?.abs().sum().item() ?? 0) + (n.bNorm.grad?.abs().sum().item() ?? 0)),
  );
  noGrad(() => {
    for (const p of params) {
      const grad = p.grad;
      if (grad) {
        p.add_(grad, -1);
        grad.dispose();
      }
      p.grad = null;
    }
  });
  return sizes;
}

test("train_norm: norm modules on the blocks' GroupNorm/LayerNorm, named as LyCORIS names them, zero at start", () => {
  const m = tinyModel();
  const base = output(m);
  const net = injectAlgo(m, { ...OPTS, generator: new Generator(2) });
  try {
    const norms = net.modules.filter((x) => x instanceof NormModule);
    const names = norms.map((n) => n.target.name);
    for (const n of [
      "lora_unet_down_blocks_0_attentions_0_norm", // Transformer2DModel's GroupNorm
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1", // LayerNorm
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm3",
      "lora_unet_down_blocks_0_resnets_0_norm1", // ResnetBlock2D (conv_dim)
      "lora_unet_up_blocks_1_resnets_0_norm2",
    ])
      assert.ok(names.includes(n), `${n} is a norm module (${names.slice(0, 4)}, …)`);
    // CLIPAttention / CLIPMLP, LyCORIS' text-encoder containers, hold no norm
    assert.ok(!names.some((n) => n.startsWith("lora_te_")));
    for (const n of norms) {
      assert.deepEqual(n.wNorm.shape, n.target.weightShape);
      assert.ok(net.trainableParameters().includes(n.wNorm) && net.trainableParameters().includes(n.bNorm));
      assert.equal(
        scope(() => n.wNorm.abs().sum().item() + n.bNorm.abs().sum().item()),
        0,
      );
    }
    assert.equal(networkArgs(OPTS).train_norm, "True");
    assert.equal(net.spec.module, "lycoris.kohya");
    const y = output(m);
    assertClose(y, base, { atol: 0, rtol: 0, what: "output at init" });
    y.dispose();
  } finally {
    base.dispose();
    net.remove();
    dispose(m);
  }
});

test("train_norm: gradients reach w_norm/b_norm, a step changes the output, save → load exact, merged == bypass, A1111/ComfyUI load it", () => {
  const m = tinyModel();
  const net = injectAlgo(m, { ...OPTS, generator: new Generator(2) });
  const path = join(dir, "norm.safetensors");
  const loaded = tinyModel();
  let net2: ReturnType<typeof loadLora> | undefined;
  const outs: Tensor[] = [];
  try {
    m.unet.train();
    m.textEncoder.train();
    const norms = net.modules.filter((x) => x instanceof NormModule);
    const before = output(m);
    outs.push(before);
    const sizes = step(m, net.trainableParameters(), norms);
    for (const [i, s] of sizes.entries()) assert.ok(s > 0, `${norms[i].target.name} got no gradient`);
    step(m, net.trainableParameters(), norms);
    m.unet.eval();
    m.textEncoder.eval();
    for (const n of norms) assert.ok(scope(() => n.wNorm.abs().sum().item()) > 0, `${n.target.name} moved`);
    const after = output(m);
    outs.push(after);
    assert.ok(scope(() => after.sub(before).abs().max().item()) > 1e-4, "a trained step changes the output");

    saveLora(path, net);
    const f = openSafetensors(path);
    try {
      for (const n of norms)
        for (const k of ["w_norm", "b_norm"]) {
          const info = f.info(`${n.target.name}.${k}`);
          assert.deepEqual(info.shape, n.target.weightShape, `${n.target.name}.${k} in the norm's weight shape`);
          assert.equal(info.dtype, "float32");
        }
      assert.equal(JSON.parse(f.metadata.ss_network_args).train_norm, "True");
    } finally {
      f.close();
    }

    net2 = loadLora(loaded, path);
    const state = net.stateDict();
    const state2 = net2.stateDict();
    assert.deepEqual([...state2.keys()].sort(), [...state.keys()].sort());
    for (const [k, t] of state) assertClose(state2.get(k)!, t, { atol: 0, rtol: 0, what: `loaded ${k}` });
    const bypass = output(loaded);
    outs.push(bypass);
    assertClose(bypass, after, { atol: 1e-6, rtol: 1e-6, what: "loaded file's output" });
    net2.merge();
    const merged = output(loaded);
    outs.push(merged);
    assertClose(merged, bypass, { atol: 1e-5, rtol: 1e-4, what: "merged == bypass" });

    const verdicts = Object.fromEntries(checkFile(path).loaders.map((l) => [l.loader, l]));
    for (const id of ["a1111", "comfyui"]) {
      const v = verdicts[id];
      assert.equal(v.verdict, "loads", `${v.name}: ${v.verdict} ${v.reason ?? ""} ${JSON.stringify(v.ignored)}`);
      assert.equal(v.ignored.count, 0, `${v.name} ignores ${JSON.stringify(v.ignored.examples)}`);
    }
  } finally {
    for (const t of outs) t.dispose();
    net.remove();
    net2?.remove();
    dispose(m);
    dispose(loaded);
  }
});

test("a file with w_norm but no b_norm is refused naming the module", () => {
  const m = tinyModel();
  const net = injectAlgo(m, { ...OPTS, generator: new Generator(2) });
  const path = join(dir, "half.safetensors");
  const other = tinyModel();
  try {
    const norm = net.modules.find((x) => x instanceof NormModule)!;
    const state = new Map([[`${norm.target.name}.w_norm`, (norm as NormModule).wNorm]]);
    saveSafetensors(path, state);
    assert.throws(() => loadLora(other, path), new RegExp(`${norm.target.name}: b_norm is missing`));
  } finally {
    net.remove();
    dispose(m);
    dispose(other);
  }
});
