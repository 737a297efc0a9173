// A LoHa (with a Tucker LoHa on the 3×3 convs), a LoKr and a DoRA network,
// each trained a few steps on the tiny model and saved as a LyCORIS file:
// generating with <lora:name:1> (and <lyco:name:1>) gives the latents of the
// model with the same network merged into its weights, the file carries
// lycoris.kohya metadata, and loading it back gives the trained ΔW exactly.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { loadLora, saveLora } from "../../src/adapters/network.js";
import { type Algo, injectAlgo } from "../../src/adapters/network-algo.js";
import { Generator, mseLoss, noGrad, randint, randn, scope } from "../../src/engine/index.js";
import { openSafetensors } from "../../src/formats/safetensors.js";
import { type StableDiffusion, txt2img } from "../../src/infer/txt2img.js";
import { ClipTextModel, ClipTokenizer } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { AutoencoderKL } from "../../src/models/vae/index.js";
import { SD15_SCHEDULER_CONFIG } from "../../src/schedulers/index.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG } from "../tiny-model.js";

checkLeaks();

const tokenizer = ClipTokenizer.fromDir(sharedFixture("tokenizer"));

/** The tiny random model of test/adapters/generate.test.ts (float64, so bypass and merged agree far below 1e-5). */
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
  noGrad(() => model.textEncoder.getModule("text_model.final_layer_norm").namedParameters().get("bias")!.fill_(0.5));
  return model;
}

function disposeModel(m: StableDiffusion): void {
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
}

const dir = tempDir("atelier-lycoris-gen-");
const loraDir = join(dir, "Lora");
mkdirSync(loraDir, { recursive: true });

export const NETWORKS: Record<string, Parameters<typeof injectAlgo>[1]> = {
  loha: { algo: "loha", rank: 4, alpha: 2, convRank: 2, convAlpha: 1, useTucker: true },
  lokr: { algo: "lokr", rank: 4, alpha: 2, convRank: 2, convAlpha: 1, factor: 4 },
  dora: { algo: "dora" as Algo, rank: 4, alpha: 2, convRank: 2, convAlpha: 1 },
};

/** Injects the network, takes a few SGD steps on a toy denoising loss (large enough to move every factor), saves it. */
function train(name: string): void {
  const m = tinyModel();
  const net = injectAlgo(m, { ...NETWORKS[name], generator: new Generator(11) });
  m.unet.train();
  m.textEncoder.train();
  const params = net.trainableParameters();
  const g = new Generator(12);
  for (let step = 0; step < 3; step++) {
    scope(() => {
      const ids = randint(0, 1000, [1, 77], { generator: g });
      const ctx = m.textEncoder.forward(ids).lastHiddenState;
      const x = randn([1, 4, 8, 8], { generator: g, dtype: "float64" });
      const target = randn([1, 4, 8, 8], { generator: g, dtype: "float64" });
      mseLoss(m.unet.forward(x, 500, ctx), target).backward();
    });
    noGrad(() => {
      for (const p of params) {
        const grad = p.grad;
        if (grad) {
          p.add_(grad, -50);
          grad.dispose();
        }
        p.grad = null;
      }
    });
  }
  g.dispose();
  saveLora(join(loraDir, `${name}.safetensors`), net, { ss_learning_rate: "50" });
  net.remove();
  disposeModel(m);
}

for (const name of Object.keys(NETWORKS)) train(name);

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

for (const name of Object.keys(NETWORKS)) {
  test(`${name}: <lora:${name}:1> and <lyco:${name}:1> equal the network merged into the weights`, () => {
    const path = join(loraDir, `${name}.safetensors`);
    const f = openSafetensors(path);
    assert.equal(f.metadata.ss_network_module, "lycoris.kohya");
    assert.equal(JSON.parse(f.metadata.ss_network_args).algo, name === "dora" ? "locon" : name);
    if (name === "dora") assert.ok(f.keys().some((k) => k.endsWith(".dora_scale")));
    if (name === "loha") assert.ok(f.keys().some((k) => k.endsWith(".hada_t1")));
    f.close();

    const base = latents(model, "a red star");
    const tagged = latents(model, `a red star <lora:${name}:1>`, [loraDir]);
    assert.notDeepEqual(tagged, base);
    assert.deepEqual(latents(model, `a red star <lyco:${name}:1>`, [loraDir]), tagged);
    assert.deepEqual(latents(model, "a red star"), base, "the model is back after generation");

    const merged = tinyModel();
    const net = loadLora(merged, path);
    net.merge();
    net.remove();
    assertClose(tagged, latents(merged, "a red star"), { atol: 1e-5, rtol: 0, what: "bypass vs merged" });
    disposeModel(merged);
  });
}
