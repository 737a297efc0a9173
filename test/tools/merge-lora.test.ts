// Merging LoRA files into a checkpoint file: <lora:a:0.7> generates what the
// checkpoint merged at 0.7 generates (tiny model, same seed); +w then −w
// gives the weights back; the record of the merge is in the metadata;
// fp16 and diffusers outputs; and bad input (an output over an input, a
// LoRA of another base or architecture) is a clear error that writes nothing.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { disposeAll, Generator, noGrad, normal_ } from "../../src/engine/index.js";
import { loadSafetensors, openSafetensors } from "../../src/formats/safetensors.js";
import { txt2img } from "../../src/infer/txt2img.js";
import { loadStableDiffusion, type StableDiffusion } from "../../src/models/stable-diffusion.js";
import { layerWeights, loadLoras, planMerge } from "../../src/tools/lora-plan.js";
import { mergeLorasIntoCheckpoint } from "../../src/tools/merge-lora.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { tinyTokenizerDir, writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-merge-lora-");
const base = join(dir, "base.safetensors");
writeTinyCheckpoint(base, 7, "float64");
const loraDir = join(dir, "Lora");
mkdirSync(loraDir);
const loraPath = join(loraDir, "a.safetensors");

const load = (p: string) => loadStableDiffusion(p, { tokenizerDir: tinyTokenizerDir(), dtype: "float64" });
const dispose = (m: StableDiffusion) => {
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
};

{
  // a LoCon (conv layers too) with random non-zero up factors
  const m = load(base);
  const net = injectLora(m, { rank: 4, alpha: 2, convRank: 2, generator: new Generator(11) });
  const g = new Generator(12);
  noGrad(() => {
    for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.2, g);
  });
  g.dispose();
  saveLora(loraPath, net);
  net.remove();
  dispose(m);
}

function latents(m: StableDiffusion, prompt: string, loraDirs?: string[]): number[] {
  const r = txt2img(m, { prompt, negative: "", steps: 3, seed: 5, sampler: "euler", width: 16, height: 16, loraDirs });
  const out = r.latents.toArray();
  disposeAll(r);
  return out;
}

test("<lora:a:0.7> generates what the checkpoint merged at 0.7 generates (streaming pass, record in metadata)", () => {
  const out = join(dir, "merged.safetensors");
  const r = mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 0.7 }], out);
  assert.equal(r.streamed, true);
  assert.ok(r.weightsChanged > 20, `${r.weightsChanged} weights changed`);
  const f = openSafetensors(out);
  const record = JSON.parse(f.metadata.atelier_merged_loras);
  f.close();
  assert.deepEqual(record, [{ file: "a.safetensors", weight: 0.7, modules: r.merged[0].modules }]);
  const original = load(base);
  const merged = load(out);
  try {
    const tagged = latents(original, "a red star <lora:a:0.7>", [loraDir]);
    assert.notDeepEqual(tagged, latents(original, "a red star"));
    assertClose(latents(merged, "a red star"), tagged, { atol: 1e-7, rtol: 1e-7, what: "merged vs <lora:a:0.7>" });
  } finally {
    dispose(original);
    dispose(merged);
  }
});

test("merging at +w and then at −w gives the original weights back within float32 rounding", () => {
  const b32 = join(dir, "b32.safetensors");
  writeTinyCheckpoint(b32, 8, "float32");
  const plus = join(dir, "plus.safetensors");
  const minus = join(dir, "minus.safetensors");
  mergeLorasIntoCheckpoint(b32, [{ path: loraPath, weight: 0.9 }], plus);
  mergeLorasIntoCheckpoint(plus, [{ path: loraPath, weight: -0.9 }], minus);
  const a = loadSafetensors(b32).tensors;
  const p = loadSafetensors(plus).tensors;
  const b = loadSafetensors(minus).tensors;
  try {
    assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
    let changed = 0;
    for (const [k, t] of a) {
      const x = t.toArray();
      const y = b.get(k)!.toArray();
      const px = p.get(k)!.toArray();
      const scale = px.reduce((m, v) => Math.max(m, Math.abs(v)), 1);
      if (x.some((v, i) => v !== px[i])) changed++;
      assertClose(y, x, { atol: 2 * 2 ** -23 * scale, rtol: 0, what: k });
    }
    assert.ok(changed > 20);
  } finally {
    disposeAll([a, p, b]);
  }
});

test("fp16 single-file and diffusers outputs", () => {
  const half = join(dir, "half.safetensors");
  mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 1 }], half, { dtype: "float16" });
  const f = openSafetensors(half);
  assert.ok(f.keys().every((k) => f.info(k).dtype === "float16" || !k.endsWith("weight")));
  f.close();
  const folder = join(dir, "merged-diffusers");
  const r = mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 1 }], folder, { layout: "diffusers" });
  assert.equal(r.streamed, false);
  assert.ok(existsSync(join(folder, "unet", "diffusion_pytorch_model.safetensors")));
  assert.deepEqual(JSON.parse(readFileSync(join(folder, "atelier_merge.json"), "utf8"))[0].weight, 1);
  const single = load(join(dir, "merged-diffusers"));
  const ref = load(half);
  try {
    const a = single.unet.namedParameters().get("conv_in.weight")!.toArray();
    const b = ref.unet.namedParameters().get("conv_in.weight")!.toArray();
    assertClose(a, b, { atol: 2e-3, rtol: 2e-3 });
  } finally {
    dispose(single);
    dispose(ref);
  }
});

test("bad input: output over an input, existing output, another architecture — clear errors, nothing written", () => {
  const before = readFileSync(base);
  assert.throws(
    () => mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 1 }], base, { overwrite: true }),
    /is the input/,
  );
  assert.throws(
    () => mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 1 }], loraPath, { overwrite: true }),
    /is the input/,
  );
  const exists = join(dir, "exists.safetensors");
  copyFileSync(base, exists);
  const mtime = statSync(exists).mtimeMs;
  assert.throws(() => mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: 1 }], exists), /already exists/);
  assert.equal(statSync(exists).mtimeMs, mtime);
  const flux = join(dir, "flux.safetensors");
  assert.throws(
    () =>
      mergeLorasIntoCheckpoint(
        base,
        [
          {
            path: join(sharedFixture(".."), "realworld/other/flux_aitoolkit_lora_mislabeled_sd15.safetensors"),
            weight: 1,
          },
        ],
        flux,
      ),
    /not a Stable Diffusion 1\.x\/2\.x LoRA.*Flux/,
  );
  // a full-size SD2 LoRA on the tiny SD1 model: refused by its shapes before anything is written
  const sd2 = join(sharedFixture(".."), "realworld/sd2/diffusers_unet_dot_lora_r4_bf16_sd2.safetensors");
  assert.throws(
    () => mergeLorasIntoCheckpoint(base, [{ path: sd2, weight: 1 }], flux),
    /ΔW is \[\d+, \d+\], the layer's weight/,
  );
  assert.throws(() => mergeLorasIntoCheckpoint(base, [{ path: loraPath, weight: Number.NaN }], flux), /not a finite/);
  assert.equal(existsSync(flux), false);
  assert.deepEqual(readFileSync(base), before);
});

/** SD1.5's diffusers weights and shapes (fixture), as the merge plan sees a real checkpoint. */
function sd15Shapes() {
  const keys = JSON.parse(readFileSync(sharedFixture("models/sd15_diffusers_keys.json"), "utf8"));
  const toMap = (o: Record<string, { shape: number[] }>) =>
    new Map(Object.entries(o).map(([k, v]) => [k, v.shape as readonly number[]]));
  return { unet: toMap(keys.unet), textEncoder: toMap(keys.text_encoder) };
}

test("real files: SD1 LoRAs of every format match every module of SD1.5; an SD2 LoRA is refused as another base", () => {
  const weights = layerWeights(sd15Shapes());
  const rw = (p: string) => join(sharedFixture(".."), "realworld", p);
  for (const p of [
    "sd1/diffusers_unet_dot_lora_r4_flower.safetensors",
    "sd1/diffusers_attnproc_lora_r4_weapons.safetensors",
    "sd1/cloneofsimo_analog_svd_r4_f16.safetensors",
    "sd1/cloneofsimo_kiriko2_text_encoder_list.pt",
    "sd1/peft_text_encoder_qv_r8/adapter_model.safetensors",
    "sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors",
  ]) {
    const loras = loadLoras([{ path: rw(p), weight: 1 }]);
    try {
      const plan = planMerge(loras, weights);
      assert.equal(plan.counts[0].modules, loras[0].modules.size, p);
      assert.deepEqual(plan.skipped, []);
    } finally {
      disposeAll(loras.map((l) => l.modules));
    }
  }
  const sd2 = loadLoras([{ path: rw("sd2/diffusers_unet_dot_lora_r4_bf16_sd2.safetensors"), weight: 1 }]);
  try {
    assert.throws(
      () => planMerge(sd2, weights),
      /attn2_to_k: its ΔW is \[\d+, 1024\].*\[\d+, 768\].*a LoRA for SD 2\.x on an SD 1\.x checkpoint/,
    );
  } finally {
    disposeAll(sd2.map((l) => l.modules));
  }
});

/**
 * SD 2.x's UNet shapes for the layers a LoRA touches, from SD1.5's: the same
 * blocks with cross_attention_dim 1024 (attn2 to_k / to_v take [out, 1024]);
 * the text encoder's width 1024 (OpenCLIP ViT-H as diffusers converts it).
 */
function sd2Shapes() {
  const s = sd15Shapes();
  for (const [k, v] of s.unet) if (/attn2\.to_[kv]\.weight$/.test(k)) s.unet.set(k, [v[0], 1024]);
  for (const [k, v] of s.textEncoder)
    s.textEncoder.set(
      k,
      v.map((d) => (d === 768 ? 1024 : d === 3072 ? 4096 : d)),
    );
  return s;
}

test("an SD1 LoRA on an SD2 checkpoint: refused naming the module and both bases", () => {
  const weights = layerWeights(sd2Shapes());
  const rw = (p: string) => join(sharedFixture(".."), "realworld", p);
  for (const [p, module] of [
    ["sd1/diffusers_unet_dot_lora_r4_flower.safetensors", /attn2_to_[kv]/],
    [
      "sd1/peft_text_encoder_qv_r8/adapter_model.safetensors",
      /lora_te_text_model_encoder_layers_\d+_self_attn_[qv]_proj/,
    ],
  ] as const) {
    const loras = loadLoras([{ path: rw(p), weight: 1 }]);
    try {
      assert.throws(
        () => planMerge(loras, weights),
        (e: Error) => module.test(e.message) && /a LoRA for SD 1\.x on an SD 2\.x checkpoint/.test(e.message),
        p,
      );
    } finally {
      disposeAll(loras.map((l) => l.modules));
    }
  }
});
