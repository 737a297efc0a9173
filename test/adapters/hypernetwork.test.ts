// A1111 hypernetworks (src/adapters/hypernetwork.ts): the fixture files load
// with their settings and give the recorded k/v outputs at the README's
// tolerance; files written read back bit-exactly with A1111's keys in order;
// old linear1/linear2 files load; attached to the UNet's attentions they
// change its output and detach cleanly; bad files and widths are refused.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  applyHypernetworks,
  createHypernetwork,
  type Hypernetwork,
  HypernetworkError,
  loadHypernetwork,
  saveHypernetwork,
} from "../../src/adapters/hypernetwork.js";
import { Generator, noGrad, randn, scope, tensor } from "../../src/engine/index.js";
import { loadTorchFile } from "../../src/formats/ckpt.js";
import { PyOrderedDict, PyTuple, savePt } from "../../src/formats/pt-write.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { PickleWriter, torchZip } from "../formats/torch-builder.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const meta = JSON.parse(readFileSync(sharedFixture("adapters/a1111_hypernetwork_meta.json"), "utf8"));
const STEMS = ["a1111_hypernetwork_relu", "a1111_hypernetwork_swish_ln"];

function withHn<T>(path: string, fn: (hn: Hypernetwork) => T): T {
  const hn = loadHypernetwork(path);
  try {
    return fn(hn);
  } finally {
    hn.dispose();
  }
}

test("the fixture files load with their settings and give the recorded k/v outputs (rtol 1e-4, atol 1e-5)", () => {
  const ref = loadSafetensors(sharedFixture("adapters/a1111_hypernetwork_ref.safetensors")).tensors;
  try {
    for (const stem of STEMS) {
      const m = meta.files[`${stem}.pt`].metadata;
      withHn(sharedFixture(`adapters/${stem}.pt`), (hn) => {
        assert.equal(hn.name, m.name);
        assert.deepEqual(hn.sizes, [32, 64]);
        assert.deepEqual(hn.settings.layerStructure, m.layer_structure);
        assert.equal(hn.settings.activation, m.activation_func);
        assert.equal(hn.settings.layerNorm, m.is_layer_norm);
        assert.equal(hn.settings.activateOutput, m.activate_output);
        assert.deepEqual(hn.settings.dropoutStructure, m.dropout_structure);
        assert.equal(hn.meta.step, m.step);
        assert.equal(hn.meta.sdCheckpoint, m.sd_checkpoint);
        for (const size of [32, 64]) {
          const r = (k: string) => ref.get(`${stem}.${size}.${k}`)!;
          const ctx = r("context");
          noGrad(() =>
            scope(() => {
              for (const [mult, training, suffix] of [
                [1, false, "mult1"],
                [0.5, false, "mult0.5"],
                [0.5, true, "train_mode_mult0.5"],
              ] as const) {
                hn.multiplier = mult;
                hn.training = training;
                const [k, v] = hn.apply(ctx, ctx)!;
                assertClose(k, r(`k_${suffix}`), { rtol: 1e-4, atol: 1e-5, what: `${stem} ${size} k ${suffix}` });
                assertClose(v, r(`v_${suffix}`), { rtol: 1e-4, atol: 1e-5, what: `${stem} ${size} v ${suffix}` });
              }
            }),
          );
        }
      });
    }
  } finally {
    for (const t of ref.values()) t.dispose();
  }
});

test("written files read back bit-exactly, with A1111's keys and values in its order", () => {
  const dir = tempDir("hn-write-");
  for (const stem of STEMS) {
    const src = sharedFixture(`adapters/${stem}.pt`);
    const out = join(dir, `${stem}.pt`);
    withHn(src, (hn) => saveHypernetwork(out, hn));
    const [a, b] = [loadTorchFile(src) as Map<unknown, unknown>, loadTorchFile(out) as Map<unknown, unknown>];
    try {
      assert.deepEqual(
        [...b.keys()].map((k) => (typeof k === "number" ? String(k) : `'${k}'`)),
        meta.files[`${stem}.pt`].keys_in_order,
      );
      for (const [k, v] of a) {
        if (typeof k === "number") {
          const [x, y] = [v as Map<string, never>[], b.get(k) as Map<string, never>[]];
          for (const i of [0, 1]) {
            assert.deepEqual([...y[i].keys()], [...x[i].keys()]);
            for (const [name, t] of x[i])
              assert.deepEqual(
                (y[i].get(name) as unknown as { toArray(): number[] }).toArray(),
                (t as { toArray(): number[] }).toArray(),
              );
          }
        } else assert.deepEqual(b.get(k), v, String(k));
      }
    } finally {
      for (const m of [a, b])
        for (const [k, v] of m)
          if (typeof k === "number")
            for (const sd of v as Map<string, { dispose(): void }>[]) for (const t of sd.values()) t.dispose();
    }
  }
});

test("an old file (linear1 / linear2, no settings) loads as A1111's fix_old_state_dict maps it", () => {
  const dir = tempDir("hn-old-");
  const path = join(dir, "old.pt");
  const g = new Generator(1);
  const w1 = randn([16, 8], { generator: g });
  const b1 = tensor(new Float32Array(16).fill(0.1));
  const w2 = randn([8, 16], { generator: g });
  const b2 = tensor(new Float32Array(8).fill(-0.2));
  const sd = () =>
    new PyOrderedDict(
      new Map([
        ["linear1.weight", w1],
        ["linear1.bias", b1],
        ["linear2.weight", w2],
        ["linear2.bias", b2],
      ]),
    );
  savePt(path, new Map<number | string, never>([[8, new PyTuple([sd(), sd()]) as never]]));
  try {
    withHn(path, (hn) => {
      assert.equal(hn.name, "old");
      assert.deepEqual(hn.settings.layerStructure, [1, 2, 1]);
      assert.equal(hn.settings.activation, null);
      noGrad(() =>
        scope(() => {
          const x = randn([1, 3, 8], { generator: g });
          const [k] = hn.apply(x, x)!;
          const want = x.add(x.matmul(w1.transpose(0, 1)).add(b1).matmul(w2.transpose(0, 1)).add(b2));
          assertClose(k, want, { rtol: 1e-5, atol: 1e-6 });
        }),
      );
    });
  } finally {
    for (const t of [w1, b1, w2, b2]) t.dispose();
    g.dispose();
  }
});

test("attached to the UNet: every attention of a width it has, output changed, detached bit-exactly", () => {
  const g = new Generator(7);
  const unet = new UNet2DConditionModel("tiny", { generator: g }).eval().requiresGrad_(false);
  g.dispose();
  const hn = loadHypernetwork(sharedFixture("adapters/a1111_hypernetwork_relu.pt"));
  try {
    noGrad(() =>
      scope(() => {
        const gen = new Generator(1);
        const x = randn([1, 4, 8, 8], { generator: gen });
        const ctx = randn([1, 77, 32], { generator: gen });
        gen.dispose();
        const t = tensor(BigInt64Array.from([500n]));
        const base = unet.forward(x, t, ctx).toArray();
        const applied = applyHypernetworks(unet, [hn]);
        // cross-attentions (context 32), 32-channel self-attentions, the 64-channel mid-block self-attention
        assert.ok(applied.attached.some((p) => p.endsWith("attn2")));
        assert.ok(applied.attached.some((p) => p.startsWith("mid_block") && p.endsWith("attn1")));
        const withHn = unet.forward(x, t, ctx).toArray();
        assert.notDeepEqual(withHn, base);
        applied.remove();
        assert.deepEqual(unet.forward(x, t, ctx).toArray(), base);
      }),
    );
    const other = createHypernetwork({ name: "sd1", sizes: [768, 1280] });
    try {
      assert.throws(
        () => applyHypernetworks(unet, [other]),
        /hypernetwork 'sd1' has widths 768, 1280, and no attention layer of this model has any of them \(its context widths: 32, 64\)/,
      );
    } finally {
      other.dispose();
    }
  } finally {
    hn.dispose();
    unet.dispose();
  }
});

test("bad files: a global outside the allow-list, a truncated file, a settings mismatch — each named", () => {
  const dir = tempDir("hn-bad-");
  const evil = join(dir, "evil.pt");
  const pkl = new PickleWriter().proto(2).global("os", "system").str("echo hi").tuple().reduce().stop().bytes();
  writeFileSync(evil, torchZip(pkl, new Map(), "evil"));
  assert.throws(
    () => loadHypernetwork(evil),
    (e: Error) =>
      e instanceof HypernetworkError &&
      e.message.includes(evil) &&
      /'os\.system', which is not allowed/.test(e.message),
  );
  const cut = join(dir, "cut.pt");
  const whole = readFileSync(sharedFixture("adapters/a1111_hypernetwork_relu.pt"));
  writeFileSync(cut, whole.subarray(0, Math.floor(whole.length / 2)));
  assert.throws(
    () => loadHypernetwork(cut),
    (e: Error) => e instanceof HypernetworkError && e.message.includes(cut),
  );
  // the relu file's tensors under swish + layer-norm settings do not fit the layer plan
  const relu = loadTorchFile(sharedFixture("adapters/a1111_hypernetwork_relu.pt")) as Map<unknown, unknown>;
  const mixed = join(dir, "mixed.pt");
  try {
    relu.set("is_layer_norm", true);
    savePt(mixed, relu as never);
  } finally {
    for (const [k, v] of relu)
      if (typeof k === "number")
        for (const sd of v as Map<string, { dispose(): void }>[]) for (const t of sd.values()) t.dispose();
  }
  assert.throws(
    () => loadHypernetwork(mixed),
    /mixed\.pt: width 32 \(k\): linear\.2\.weight is \[32,64\], the settings' layer plan needs \[64\]/,
  );
});
