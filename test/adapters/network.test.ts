// A LoRA network over a tiny UNet + text encoder: only the adapters train
// (the base stays bit-identical), save → load round trip of kohya files,
// merged == bypass, multipliers, stacking and removal.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { disposeLoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { attachLora, injectLora, type LoraNetwork, loadLora, saveLora } from "../../src/adapters/network.js";
import { AdapterLayer } from "../../src/adapters/wrapped-layer.js";
import {
  AdamW,
  disposeAll,
  Generator,
  mseLoss,
  noGrad,
  normal_,
  randint,
  randn,
  scope,
  type Tensor,
} from "../../src/engine/index.js";
import { inspectSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel, tinyTextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { assertClose, checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-lora-");

interface Tiny {
  unet: UNet2DConditionModel;
  textEncoder: ClipTextModel;
}

function tiny(seed = 1): Tiny {
  const generator = new Generator(seed);
  const m = {
    unet: new UNet2DConditionModel("tiny", { generator }).eval(),
    textEncoder: new ClipTextModel(tinyTextConfig, { generator }).eval(),
  };
  generator.dispose();
  return m;
}

function disposeTiny(m: Tiny): void {
  m.unet.dispose();
  m.textEncoder.dispose();
}

/** The fixed inputs of every forward here. */
function inputs(): { ids: Tensor; sample: Tensor } {
  const g = new Generator(7);
  const r = { ids: randint(0, 1000, [2, 77], { generator: g }), sample: randn([2, 4, 8, 8], { generator: g }) };
  g.dispose();
  return r;
}

/** UNet(sample, 500, TE(ids)) under noGrad. */
function run(m: Tiny): number[] {
  return noGrad(() =>
    scope(() => {
      const { ids, sample } = inputs();
      return m.unet.forward(sample, 500, m.textEncoder.forward(ids).lastHiddenState).toArray();
    }),
  );
}

/** Gives every up factor random values, so the network changes the model. */
function randomizeUp(net: LoraNetwork, seed = 3): void {
  const g = new Generator(seed);
  noGrad(() => {
    for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.1, g);
  });
  g.dispose();
}

function snapshot(m: Tiny): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const part of ["unet", "textEncoder"] as const)
    for (const [k, t] of m[part].namedParameters()) out.set(`${part}.${k}`, t.toArray());
  return out;
}

test("one AdamW step trains only the LoRA tensors: every base weight is bit-identical, the LoRA weights move", () => {
  const m = tiny();
  const before = snapshot(m);
  const g = new Generator(5);
  const net = injectLora(m, { rank: 4, alpha: 2, convRank: 2, generator: g });
  g.dispose();
  try {
    m.unet.train();
    m.textEncoder.train();
    for (const t of m.unet.parameters()) assert.equal(t.requiresGrad, false);
    const params = net.trainableParameters();
    assert.ok(params.length > 0 && params.every((t) => t.requiresGrad));
    const upBefore = net
      .stateDict()
      .get("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight")!
      .toArray();
    assert.ok(
      upBefore.every((v) => v === 0),
      "lora_up starts at zero",
    );
    const opt = new AdamW(params, { lr: 1e-2 });
    scope(() => {
      const { ids, sample } = inputs();
      const out = m.unet.forward(sample, 500, m.textEncoder.forward(ids).lastHiddenState);
      mseLoss(out, sample).backward();
    });
    for (const t of m.unet.parameters()) assert.equal(t.grad, null, "a base weight got a gradient");
    opt.step();
    opt.zeroGrad();
    const upAfter = net
      .stateDict()
      .get("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight")!
      .toArray();
    assert.ok(
      upAfter.some((v) => v !== 0),
      "lora_up moved",
    );
    const te = net.stateDict().get("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight")!.toArray();
    assert.ok(
      te.some((v) => v !== 0),
      "text-encoder LoRA moved",
    );
    const after = snapshot(m);
    for (const [k, v] of before) assert.deepEqual(after.get(k), v, `${k} changed`);
    opt.dispose();
  } finally {
    net.remove();
  }
  for (const t of m.unet.parameters()) assert.equal(t.requiresGrad, true, "remove() unfreezes the base");
  disposeTiny(m);
});

test("bypass changes the output; merge gives the same output; remove() restores the model exactly", () => {
  const m = tiny();
  const base = run(m);
  const layers = [...m.unet.namedModules()];
  const net = injectLora(m, { rank: 4, alpha: 1, convRank: 4, convAlpha: 2 });
  randomizeUp(net);
  const bypass = run(m);
  assert.notDeepEqual(bypass, base);
  net.setMultiplier(0);
  assert.deepEqual(run(m), base, "multiplier 0 is the base model");
  net.setMultiplier(0.5, 1.5);
  const half = run(m);
  net.setMultiplier(1);
  net.merge();
  assert.ok(
    [...m.unet.namedModules().values()].every((x) => !(x instanceof AdapterLayer)),
    "merge puts the layers back",
  );
  assertClose(run(m), bypass, { atol: 1e-5, rtol: 1e-4, what: "merged vs bypass" });
  net.remove();
  // the merged weights stay; the LoRA is gone: a fresh network on the same layers starts from them
  assert.notDeepEqual(half, bypass);
  disposeTiny(m);

  const m2 = tiny();
  const net2 = injectLora(m2, { rank: 2 });
  randomizeUp(net2);
  net2.remove();
  assert.deepEqual(run(m2), base, "remove() restores the exact output");
  const after = [...m2.unet.namedModules()];
  assert.equal(after.length, layers.length);
  assert.ok(after.every(([, x]) => !(x instanceof AdapterLayer)));
  assert.throws(() => net2.stateDict(), /removed/);
  disposeTiny(m2);
});

test("save → load round trip: kohya keys, shapes, values and ss_*/modelspec.* metadata; the loaded LoRA gives the same output", () => {
  const m = tiny();
  const seeded = new Generator(9);
  const net = injectLora(m, {
    rank: 4,
    alpha: 2,
    convRank: 2,
    convAlpha: 1,
    dropout: 0.1,
    generator: seeded,
  });
  seeded.dispose();
  randomizeUp(net);
  const path = join(dir, "round-trip.safetensors");
  saveLora(path, net, { ss_learning_rate: "0.0001", ss_steps: "10", ss_network_dim: "999" });
  const expected = run(m);
  const sd = new Map([...net.stateDict()].map(([k, t]) => [k, { shape: t.shape, values: t.toArray() }]));
  net.remove();

  const header = inspectSafetensors(path);
  const md = header.metadata;
  assert.equal(md.ss_network_module, "networks.lora");
  assert.equal(md.ss_network_dim, "4", "the network's own dim wins over the caller's");
  assert.equal(md.ss_network_alpha, "2");
  assert.deepEqual(JSON.parse(md.ss_network_args), { conv_dim: "2", conv_alpha: "1" });
  assert.equal(md.ss_network_dropout, "0.1");
  assert.equal(md.ss_base_model_version, "sd_v1");
  assert.equal(md.ss_v2, "False");
  assert.equal(md.ss_output_name, "round-trip");
  assert.equal(md.ss_learning_rate, "0.0001");
  assert.equal(md.ss_steps, "10");
  assert.equal(md["modelspec.sai_model_spec"], "1.0.0");
  assert.equal(md["modelspec.architecture"], "stable-diffusion-v1/lora");
  assert.equal(md["modelspec.implementation"], "diffusers");
  assert.equal(md["modelspec.title"], "round-trip");
  assert.equal(md["modelspec.resolution"], "512x512");
  assert.equal(md["modelspec.prediction_type"], "epsilon");
  assert.match(md["modelspec.date"], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/);
  for (const v of Object.values(md)) assert.equal(typeof v, "string");

  const file = loadLoraFile(path);
  assert.equal(file.format, "kohya");
  const loaded = new Map<string, { shape: number[]; values: number[] }>();
  for (const [name, tensors] of file.modules)
    for (const [k, t] of tensors) loaded.set(`${name}.${k}`, { shape: t.shape, values: t.toArray() });
  assert.deepEqual([...loaded.keys()].sort(), [...sd.keys()].sort());
  for (const [k, v] of sd) assert.deepEqual(loaded.get(k), v, k);
  for (const [k, t] of header.tensors) assert.equal(t.dtype, "float32", k);
  disposeLoraFile(file);

  const back = loadLora(m, path);
  assertClose(run(m), expected, { atol: 0, rtol: 0, what: "loaded LoRA" });
  back.remove();

  // fp16 save precision
  const net3 = injectLora(m, { rank: 2 });
  saveLora(join(dir, "half.safetensors"), net3, {}, { dtype: "float16", title: "Half" });
  net3.remove();
  const half = inspectSafetensors(join(dir, "half.safetensors"));
  assert.ok([...half.tensors.values()].every((t) => t.dtype === "float16"));
  assert.equal(half.metadata["modelspec.title"], "Half");
  assert.equal(half.metadata.ss_network_args, undefined);
  disposeTiny(m);
});

test("two LoRAs stack; taking out the lower one keeps the upper one; merging a stack equals its bypass", () => {
  const m = tiny();
  const base = run(m);
  const layer = (n: number) => ({ rank: n, textEncoder: false, freezeBase: false });
  const g = new Generator(31);
  const a = injectLora(m, { ...layer(2), generator: g });
  randomizeUp(a, 11);
  const b = injectLora(m, { ...layer(3), generator: g });
  randomizeUp(b, 12);
  const both = run(m);
  a.remove();
  const onlyB = run(m);
  b.remove();
  assert.deepEqual(run(m), base);
  // b alone, made the same way, gives what was left of the stack
  g.manualSeed(31);
  const a2 = injectLora(m, { ...layer(2), generator: g });
  const b2 = injectLora(m, { ...layer(3), generator: g });
  a2.remove();
  randomizeUp(b2, 12);
  assert.deepEqual(run(m), onlyB);
  b2.remove();
  // merging the lower network of a stack, then the upper one, keeps the stack's output
  g.manualSeed(31);
  const a3 = injectLora(m, { ...layer(2), generator: g });
  randomizeUp(a3, 11);
  const b3 = injectLora(m, { ...layer(3), generator: g });
  randomizeUp(b3, 12);
  assert.deepEqual(run(m), both);
  a3.merge();
  assertClose(run(m), both, { atol: 1e-5, rtol: 1e-4, what: "lower merged" });
  b3.merge();
  assertClose(run(m), both, { atol: 1e-5, rtol: 1e-4, what: "both merged" });
  assert.ok([...m.unet.namedModules().values()].every((x) => !(x instanceof AdapterLayer)));
  a3.remove();
  b3.remove();
  g.dispose();
  disposeTiny(m);
});

test("dropout acts only while training; attach refuses a file for another model, naming it", () => {
  const m = tiny();
  const net = injectLora(m, { rank: 4, dropout: 0.5, rankDropout: 0.3, moduleDropout: 0.2, textEncoder: false });
  randomizeUp(net);
  const evalOut = run(m);
  assert.deepEqual(run(m), evalOut);
  m.unet.train();
  assert.notDeepEqual(run(m), evalOut);
  m.unet.eval();
  const path = join(dir, "for-tiny.safetensors");
  saveLora(path, net);
  net.remove();

  // a tiny UNet with other channel counts: every module name exists, the shapes do not fit
  const generator = new Generator(2);
  const other = {
    unet: new UNet2DConditionModel({ ...m.unet.config, blockOutChannels: [64, 64] }, { generator }),
  };
  generator.dispose();
  const before = [...other.unet.namedModules().values()];
  assert.throws(
    () => loadLora(other, path),
    (e: Error) => e.message.startsWith(path) && /lora_unet_\w+: lora_(down|up)/.test(e.message),
  );
  assert.deepEqual([...other.unet.namedModules().values()], before, "nothing stays attached");
  other.unet.dispose();
  // a model without a text encoder cannot take a text-encoder LoRA
  const withTe = injectLora(m, { rank: 2 });
  saveLora(path, withTe);
  withTe.remove();
  const file = loadLoraFile(path);
  assert.throws(
    () => attachLora({ unet: m.unet }, file),
    /match no layer of this model \(it has no text encoder\): lora_te_/,
  );
  assert.equal(file.modules.size, 0, "attach consumes the file");
  disposeAll(file.modules);
  disposeTiny(m);
});
