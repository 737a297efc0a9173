// The adapter registry: its key list and classification cover every adapter
// key of the fixture and realworld files the other tests load, and adding a
// method is one file (here a toy method defined below) plus one line in the
// registry's list: detection, injection, saving, inspect and loading follow.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { AdapterMethod, AdapterTarget, Layer } from "../../src/adapters/adapter.js";
import { dora } from "../../src/adapters/dora.js";
import { full } from "../../src/adapters/full.js";
import { applyWeight } from "../../src/adapters/functional/lora.js";
import { ia3 } from "../../src/adapters/ia3.js";
import { loha } from "../../src/adapters/loha.js";
import { lokr } from "../../src/adapters/lokr.js";
import { lora } from "../../src/adapters/lora.js";
import { disposeLoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { injectNetwork, loadLora, saveLora } from "../../src/adapters/network.js";
import { ADAPTER_KEYS, ADAPTER_REGISTRY, ADAPTERS, adapterRegistry, methodFor } from "../../src/adapters/registry.js";
import { AdapterLayer, baseLayer, weightShape } from "../../src/adapters/wrapped-layer.js";
import { Generator, keep, noGrad, normal_, randint, randn, scope, type Tensor, zeros } from "../../src/engine/index.js";
import { inspectSafetensors, openSafetensors } from "../../src/formats/safetensors.js";
import { ClipTextModel, tinyTextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { fileKind } from "../../src/tools/inspect.js";
import { assertClose, checkLeaks, repoRoot, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-registry-");
const realworld = (p: string) => join(repoRoot, "..", "shared", "realworld", p);
const present = existsSync(realworld("README.md"));

const keysOf = (path: string): string[] => [...inspectSafetensors(path).tensors.keys()];

test("each method's key data is consistent: detection, required and rank keys are its keys, refused ones are not", () => {
  for (const m of ADAPTER_REGISTRY.methods) {
    const all = new Set(m.keys.all);
    for (const k of [...m.keys.detect.flat(), ...m.keys.required.flat(2), ...m.keys.rank])
      assert.ok(all.has(k), `${m.name}: ${k}`);
    for (const k of Object.keys(m.keys.refused)) assert.ok(!all.has(k), `${m.name}: ${k}`);
    // a complete module of the method is detected as it and lacks nothing
    const complete = m.keys.required.flatMap((alternatives) => alternatives[0]);
    assert.equal(methodFor(complete), m, `${m.name}: ${complete.join(", ")}`);
  }
});

test("lycoris_deltas: every module's keys are registry keys, of the method its case names; nothing else is taken for a module", () => {
  const keys = keysOf(sharedFixture("adapters/lycoris_deltas.safetensors"));
  const modules = ADAPTER_REGISTRY.modules(keys);
  const expect = { locon: lora, loha, lokr };
  // <case>.<lora_test_linear|lora_test_conv>.<key>; the case's own tensors (org.weight, x, y, delta_weight) are not adapter keys
  const adapterKeys = keys.filter((k) => /^[a-z0-9_]+\.lora_test_(linear|conv)\./.test(k));
  assert.equal([...modules.values()].flat().length, adapterKeys.length);
  assert.equal(modules.size, 12);
  for (const [name, k] of modules) {
    for (const key of k) assert.ok(ADAPTER_KEYS.has(key), `${name}.${key}`);
    const method = methodFor(k);
    assert.equal(method, expect[name.split("_")[0] as keyof typeof expect], `${name}: ${k.join(", ")}`);
  }
  assert.deepEqual(ADAPTER_REGISTRY.methodsIn(keys), [lora, loha, lokr]);
  assert.equal(fileKind(keys), "lycoris");
});

test("lycoris_train: every module's keys are registry keys of its case's method (DoRA, (IA)³ and full included)", () => {
  const keys = keysOf(sharedFixture("adapters/lycoris_train.safetensors"));
  // the saved modules are <case>.lora_test_*; the recorded gradients (<case>.grad.<key>) are not modules
  const modules = new Map([...ADAPTER_REGISTRY.modules(keys)].filter(([n]) => /\.lora_test_(linear|conv)$/.test(n)));
  const expect: Record<string, AdapterMethod<never>> = { locon: lora, loha, lokr, dora, ia3, full };
  assert.equal(modules.size, 18);
  for (const [name, k] of modules) {
    for (const key of k) assert.ok(ADAPTER_KEYS.has(key), `${name}.${key}`);
    assert.equal(methodFor(k), expect[name.split("_")[0]], `${name}: ${k.join(", ")}`);
  }
  assert.ok(ADAPTER_KEYS.has("dora_scale") && !ADAPTER_REGISTRY.refused.has("dora_scale"));
  assert.equal(fileKind(keys), "lycoris");
});

// The realworld files realworld.test.ts loads, with the method of their modules once read into kohya's layout.
const LOADED: [string, AdapterMethod<never>][] = [
  ["sd1/cloneofsimo_analog_svd_r4_f16.safetensors", lora],
  ["sd1/cloneofsimo_lora_disney_r1_f32_with_ti.safetensors", lora],
  ["sd1/cloneofsimo_lora_disney_inpainting_r1_f16_f32_mixed.safetensors", lora],
  ["sd1/cloneofsimo_kiriko2_text_encoder_list.pt", lora],
  ["sd1/diffusers_attnproc_lora_r4_weapons.safetensors", lora],
  ["sd1/diffusers_attnproc_lora_r4_weapons.bin", lora],
  ["sd1/diffusers_unet_dot_lora_r4_flower.safetensors", lora],
  ["sd1/peft_text_encoder_qv_r8/adapter_model.safetensors", lora],
  ["sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors", lokr],
  ["sd2/cloneofsimo_disney_unet_list_sd2.pt", lora],
  ["sd2/diffusers_unet_dot_lora_r4_bf16_sd2.safetensors", lora],
];

for (const [file, method] of LOADED)
  test(`${file}: every module's keys are registry keys of ${method.label}`, { skip: !present }, () => {
    const f = loadLoraFile(realworld(file));
    try {
      for (const [name, m] of f.modules) {
        const k = [...m.keys()];
        for (const key of k) assert.ok(ADAPTER_KEYS.has(key), `${name}.${key}`);
        assert.equal(methodFor(k), method, name);
      }
    } finally {
      disposeLoraFile(f);
    }
  });

test("a kohya-layout LyCORIS file: every key belongs to a module the registry detects; inspect says lycoris", {
  skip: !present,
}, () => {
  const keys = keysOf(realworld("sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors"));
  const modules = ADAPTER_REGISTRY.modules(keys);
  assert.equal([...modules.values()].flat().length, keys.length);
  for (const k of modules.values()) assert.equal(methodFor(k), lokr);
  assert.equal(fileKind(keys), "lycoris");
});

test("inspect's classifier follows the registry: LoRA modules are lora, any LoHa/LoKr module makes it lycoris", () => {
  const m = "lora_unet_mid_block_attentions_0_proj_in";
  const loraKeys = [`${m}.lora_down.weight`, `${m}.lora_up.weight`, `${m}.alpha`];
  assert.equal(fileKind(loraKeys), "lora");
  assert.equal(fileKind([...loraKeys, "lora_te_x.hada_w1_a", "lora_te_x.hada_w1_b"]), "lycoris");
  assert.equal(fileKind(["lora_te_x.lokr_w1", "lora_te_x.lokr_w2"]), "lycoris");
  assert.equal(fileKind([`${m}.alpha`, "other"]), "tensors");
});

// ---- a toy method, as its own file would define it ----------------------------------------

/** ΔW held in full under one key (like LyCORIS full.py, under a name no real method uses). */
class ToyModule extends AdapterLayer {
  #delta: Tensor;

  constructor(target: AdapterTarget, original: Layer, delta: Tensor) {
    super(target, original);
    this.#delta = delta;
  }

  protected delta(): Tensor {
    return this.#delta.mul(1);
  }

  protected bypass(x: Tensor): Tensor {
    return applyWeight(x, this.#delta, this.op);
  }

  adapterTensors(): Map<string, Tensor> {
    return new Map([["toy_delta", this.#delta]]);
  }

  trainableParameters(): Tensor[] {
    return [this.#delta];
  }

  disposeAdapter(): void {
    this.#delta.dispose();
  }
}

const toy: AdapterMethod<Record<string, never>> = {
  name: "toy",
  label: "Toy",
  kind: "weight-delta",
  networkModule: "toy.network",
  keys: { all: ["toy_delta"], detect: [["toy_delta"]], required: [[["toy_delta"]]], rank: [], refused: {} },
  supports: () => true,
  create(target, original) {
    const w = baseLayer(original)!.weight;
    const d = keep(zeros(target.weightShape, { dtype: w.dtype, device: w.device }));
    d.requiresGrad_(true);
    return new ToyModule(target, original, d);
  },
  fromTensors(target, original, tensors) {
    try {
      const base = baseLayer(original)!;
      const d = tensors.get("toy_delta");
      if (!d || tensors.size !== 1) throw new Error(`${target.name}: a toy module holds toy_delta only`);
      if (d.shape.join() !== weightShape(base).join()) throw new Error(`${target.name}: toy_delta [${d.shape}]`);
      return new ToyModule(target, original, keep(d.to(base.weight.device, base.weight.dtype)));
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};

// --------------------------------------------------------------------------------------------

function tiny(): { unet: UNet2DConditionModel; textEncoder: ClipTextModel } {
  const generator = new Generator(1);
  const m = {
    unet: new UNet2DConditionModel("tiny", { generator }).eval(),
    textEncoder: new ClipTextModel(tinyTextConfig, { generator }).eval(),
  };
  generator.dispose();
  return m;
}

function run(m: ReturnType<typeof tiny>): number[] {
  return noGrad(() =>
    scope(() => {
      const g = new Generator(7);
      const ids = randint(0, 1000, [1, 77], { generator: g });
      const sample = randn([1, 4, 8, 8], { generator: g });
      g.dispose();
      return m.unet.forward(sample, 500, m.textEncoder.forward(ids).lastHiddenState).toArray();
    }),
  );
}

test("adding a method is its file and one registry line: detection, inject, save, inspect and load follow", () => {
  const registry = adapterRegistry([...ADAPTERS, toy]);
  assert.ok(registry.keys.has("toy_delta") && !ADAPTER_KEYS.has("toy_delta"));
  assert.deepEqual(registry.labels, ["LoRA/LoCon", "LoHa", "LoKr", "DoRA", "(IA)³", "full", "norm", "Toy"]);
  assert.equal(registry.methodFor(["toy_delta"]), toy);
  assert.equal(registry.methodFor(["lora_down.weight", "lora_up.weight"]), lora);
  assert.match(String(methodFor(["toy_delta"])), /no adapter factors/);
  assert.throws(() => adapterRegistry([lora, { ...toy, name: "lora" }]), /two adapter methods are named 'lora'/);

  const a = tiny();
  const b = tiny();
  const base = run(a);
  // a method that cannot wrap a target is refused by name, and the model is left as it was
  assert.throws(
    () => injectNetwork(a, { ...toy, supports: (k) => k === "linear" }, { moduleOptions: () => ({}), conv: true }),
    /Toy does not adapt conv3x3 layers/,
  );
  const net = injectNetwork(a, toy, { moduleOptions: () => ({}), conv: true });
  let loaded: ReturnType<typeof loadLora> | undefined;
  try {
    assert.ok(net.modules.length > 0 && net.modules.every((m) => m instanceof ToyModule));
    assert.ok(net.modules.some((m) => m.target.kind === "conv3x3"));
    assert.deepEqual(run(a), base, "a fresh toy network is zero");
    const g = new Generator(3);
    noGrad(() => {
      for (const t of net.trainableParameters()) normal_(t, 0, 0.01, g);
    });
    g.dispose();
    const bypass = run(a);
    assert.notDeepEqual(bypass, base);

    const path = join(dir, "toy.safetensors");
    saveLora(path, net);
    const saved = openSafetensors(path);
    const keys = saved.keys();
    assert.equal(saved.metadata.ss_network_module, "toy.network");
    saved.close();
    assert.ok(keys.every((k) => k.endsWith(".toy_delta")));
    assert.equal(fileKind(keys, registry), "lycoris");
    assert.equal(fileKind(keys), "tensors");
    assert.throws(
      () => loadLoraFile(path),
      /keys of no supported adapter \(LoRA\/LoCon, LoHa, LoKr, DoRA, \(IA\)³, full, norm\)/,
    );

    loaded = loadLora(b, path, { registry });
    assert.equal(loaded.modules.length, net.modules.length);
    assert.equal(loaded.spec.module, "toy.network");
    assertClose(run(b), bypass, { atol: 1e-6, rtol: 1e-5, what: "loaded toy network" });
  } finally {
    net.remove();
    loaded?.remove();
  }
  assert.deepEqual(run(a), base, "remove() restores the model");
  for (const m of [a, b]) {
    m.unet.dispose();
    m.textEncoder.dispose();
  }
});
