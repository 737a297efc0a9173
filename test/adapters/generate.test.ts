// <lora:NAME:te:unet> in txt2img: the tagged LoRA, applied in bypass mode from
// a LoRA folder, gives the latents of a model whose weights were merged by
// the formula W + m·(alpha/r)·up@down; several LoRAs add up; the model is
// restored afterwards; a missing name is an error listing where it looked.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { findLoraFile } from "../../src/adapters/prompt-loras.js";
import { Generator, noGrad, normal_, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { type StableDiffusion, txt2img } from "../../src/infer/txt2img.js";
import { ClipTextModel, ClipTokenizer } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { AutoencoderKL } from "../../src/models/vae/index.js";
import { SD15_SCHEDULER_CONFIG } from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG } from "../tiny-model.js";

checkLeaks();

const tokenizer = ClipTokenizer.fromDir(sharedFixture("tokenizer"));

/**
 * The tiny random model of test/infer/txt2img.test.ts, in float64 so that
 * bypass and merged weights agree far below the 1e-5 compared (float32
 * rounding, amplified by guidance and sigma, reaches ~1e-4 on latents of
 * size ~10). The same seed gives the same weights.
 */
function tinyModel(): StableDiffusion {
  const generator = new Generator(3);
  const init = { generator, dtype: "float64" as const };
  const model: StableDiffusion = {
    unet: new UNet2DConditionModel("tiny", init).eval(),
    vae: new AutoencoderKL("tiny", init).eval(),
    textEncoder: new ClipTextModel(TINY_TEXT_CONFIG, init).eval(),
    tokenizer,
    scheduler: SD15_SCHEDULER_CONFIG,
    kind: "sd1",
    device: "cpu",
    name: "tiny",
  };
  generator.dispose();
  // A1111's emphasis rescales by mean(z)/mean(z·w): with the random init's zero LayerNorm bias
  // mean(z) is ~0 and that ratio is noise (0/0 in a merged copy); a bias keeps it well defined
  noGrad(() => model.textEncoder.getModule("text_model.final_layer_norm").namedParameters().get("bias")!.fill_(0.5));
  return model;
}

function disposeModel(m: StableDiffusion): void {
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
}

const dir = tempDir("atelier-lora-gen-");
const loraDir = join(dir, "Lora");
mkdirSync(join(loraDir, "styles"), { recursive: true });

/** Saves a LoRA (LoCon: conv layers too) with random nonzero up factors for the tiny model. */
function makeLora(path: string, seed: number, o: { rank: number; alpha: number; convRank?: number }): void {
  const m = tinyModel();
  const net = injectLora(m, { ...o, generator: new Generator(seed) });
  const g = new Generator(seed + 1);
  noGrad(() => {
    for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.2, g);
  });
  g.dispose();
  saveLora(path, net);
  net.remove();
  disposeModel(m);
}

makeLora(join(loraDir, "star.safetensors"), 10, { rank: 4, alpha: 2, convRank: 2 });
makeLora(join(loraDir, "styles", "blue.safetensors"), 20, { rank: 2, alpha: 1 });

const model = tinyModel();
after(() => disposeModel(model));

const settings = { negative: "blurry", steps: 3, seed: 5, sampler: "euler", width: 16, height: 16 };

function latents(m: StableDiffusion, prompt: string, loraDirs?: string[]): number[] {
  const r = txt2img(m, { ...settings, prompt, loraDirs });
  const out = r.latents.toArray();
  r.latents.dispose();
  r.images.dispose();
  return out;
}

/** W += m·(alpha/r)·up@down for every module of a kohya file, by hand (docs/formats.md "LoRA, kohya format"). */
function mergeByFormula(m: StableDiffusion, path: string, te: number, unet: number): void {
  const { tensors } = loadSafetensors(path);
  const layers = new Map<string, Tensor>();
  for (const [part, prefix] of [
    [m.unet, "lora_unet_"],
    [m.textEncoder, "lora_te_"],
  ] as const)
    for (const [key, t] of part.namedParameters())
      if (key.endsWith(".weight")) layers.set(prefix + key.slice(0, -".weight".length).replaceAll(".", "_"), t);
  noGrad(() =>
    scope(() => {
      for (const [key, down] of tensors) {
        if (!key.endsWith(".lora_down.weight")) continue;
        const name = key.slice(0, -".lora_down.weight".length);
        const up = tensors.get(`${name}.lora_up.weight`)!;
        const alpha = tensors.get(`${name}.alpha`)!.item();
        const w = layers.get(name);
        assert.ok(w, `no layer for ${name}`);
        const r = down.size(0);
        const mult = name.startsWith("lora_unet_") ? unet : te;
        const delta = up
          .reshape(up.size(0), r)
          .matmul(down.reshape(r, -1))
          .reshape(...w.shape);
        w.add_(delta, (mult * alpha) / r);
      }
    }),
  );
  for (const t of tensors.values()) t.dispose();
}

test("<lora:star:1> equals the weights merged by the formula; the model is restored afterwards", () => {
  const base = latents(model, "a red star");
  const tagged = latents(model, "a red star <lora:star:1>", [loraDir]);
  assert.notDeepEqual(tagged, base);
  assert.deepEqual(latents(model, "a red star"), base, "the model is back after generation");

  const merged = tinyModel();
  mergeByFormula(merged, join(loraDir, "star.safetensors"), 1, 1);
  assertClose(tagged, latents(merged, "a red star"), { atol: 1e-5, rtol: 0, what: "bypass vs merged" });
  disposeModel(merged);
});

test("te/unet multipliers and two LoRAs at once (one in a subfolder) add up", () => {
  const tagged = latents(model, "<lora:star:0.5:1.5> a red star, <lora:blue:-0.7>", [join(dir, "missing"), loraDir]);
  const merged = tinyModel();
  mergeByFormula(merged, join(loraDir, "star.safetensors"), 0.5, 1.5);
  mergeByFormula(merged, join(loraDir, "styles", "blue.safetensors"), -0.7, -0.7);
  assertClose(tagged, latents(merged, "a red star, "), { atol: 1e-5, rtol: 0, what: "two LoRAs" });
  disposeModel(merged);
});

test("a missing LoRA is an error listing where it looked; without loraDirs the prompt is used as written", () => {
  const base = latents(model, "a red star");
  assert.throws(
    () => latents(model, "a red star <lora:nope:1>", [loraDir]),
    (e: Error) => e.message.includes("LoRA 'nope' not found") && e.message.includes(loraDir),
  );
  assert.throws(() => latents(model, "<lora:nope:1>", []), /LoRA 'nope' not found: no LoRA folder was given/);
  assert.throws(() => latents(model, "<foo:x:1> a", [loraDir]), /only <lora:…>/);
  assert.throws(
    () => latents(model, "<hypernet:x:1> a", [loraDir]),
    /hypernetwork 'x' not found: no hypernetwork folder was given/,
  );
  assert.deepEqual(latents(model, "a red star"), base, "a failed lookup leaves the model as it was");
  // no loraDirs: the tag stays text for the tokenizer, the model is not changed
  assert.notDeepEqual(
    latents(model, "a red star <lora:star:1>"),
    latents(model, "a red star <lora:star:1>", [loraDir]),
  );
  assert.equal(findLoraFile("blue", [loraDir]), join(loraDir, "styles", "blue.safetensors"));
  assert.equal(findLoraFile("styles/blue", [loraDir]), join(loraDir, "styles", "blue.safetensors"));
  assert.throws(() => findLoraFile("../Lora/star", [join(loraDir, "styles")]), /invalid LoRA name '\.\.\/Lora\/star'/);
  assert.throws(() => findLoraFile(join(loraDir, "star"), [dir]), /invalid LoRA name/);
});
