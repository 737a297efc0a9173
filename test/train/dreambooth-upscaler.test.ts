// Dreambooth stage 2 (method dreambooth_upscaler): one fine-tuning step of the
// ×4 upscaler equals diffusers' (the fixture's train_step: loss, prediction,
// target and gradients), and a shortened run trains, saves an upscaler that
// loads back, and resumes.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { cat, disposeAll, Generator, noGrad, randn, scope, type Tensor, tensor } from "../../src/engine/index.js";
import { encodePng } from "../../src/formats/png.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { disposeUpscaler, loadUpscaler } from "../../src/models/upscaler/index.js";
import { NoiseSchedule } from "../../src/schedulers/index.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { diffusionLoss } from "../../src/train/losses.js";
import { downscale4, upscalerPrediction } from "../../src/train/methods/dreambooth-upscaler.js";
import { createTrainer, type TrainerEvent } from "../../src/train/trainer.js";
import { assertClose, checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

const F32 = { atol: 1e-5, rtol: 1e-4 };
const GRAD = { atol: 1e-4, rtol: 1e-3 };
const MODEL = sharedFixture("upscaler");
const TOKENIZER = sharedFixture("tokenizer");
const root = tempDir("atelier-upscaler-train-");
after(() => rmSync(root, { recursive: true, force: true }));

function get(m: Map<string, Tensor>, key: string): Tensor {
  const t = m.get(key);
  if (!t) throw new Error(`fixture has no ${key}`);
  return t;
}

test("stage-2 step: loss, prediction, target and gradients equal diffusers' train_step", (t) => {
  const io = loadSafetensors(sharedFixture("upscaler/train_step.safetensors")).tensors;
  const m = loadUpscaler(MODEL, { tokenizerDir: TOKENIZER });
  try {
    scope(() => {
      const hr = get(io, "in.hr_image");
      assertClose(downscale4(hr), get(io, "in.lr_image"), { ...F32, what: "avg_pool2d(hr, 4)" });
      const post = m.vae.encode(hr);
      const latents = post.mean.add(post.std.mul(get(io, "in.vae_sample_eps"))).mul(m.vae.scalingFactor);
      assertClose(latents, get(io, "latents"), { ...F32, what: "latents" });
      const schedule = new NoiseSchedule(m.scheduler);
      const ts = get(io, "in.timesteps");
      const noisy = schedule.addNoise(latents, get(io, "in.noise"), ts);
      assertClose(noisy, get(io, "noisy_latents"), { ...F32, what: "noisy_latents" });
      const lowResSchedule = new NoiseSchedule(m.lowResScheduler);
      const levels = get(io, "in.noise_level");
      assertClose(
        lowResSchedule.addNoise(get(io, "in.lr_image"), get(io, "in.lr_noise"), levels),
        get(io, "noisy_lr_image"),
        F32,
      );
      const ehs = m.textEncoder.encode(get(io, "in.input_ids"));
      assertClose(ehs, get(io, "encoder_hidden_states"), { ...F32, what: "encoder_hidden_states" });

      m.unet.requiresGrad_(true);
      const lr = { lowRes: get(io, "in.lr_image"), noise: get(io, "in.lr_noise"), levels };
      const pred = upscalerPrediction(m, lowResSchedule, noisy, ts, ehs, lr);
      assertClose(pred, get(io, "model_pred"), { ...F32, what: "model_pred" });
      const target = schedule.target(latents, get(io, "in.noise"), ts);
      assertClose(target, get(io, "target"), { ...F32, what: "target (velocity)" });
      const { loss } = diffusionLoss(pred, target, [false, false]);
      assertClose([loss.item()], get(io, "loss"), { ...F32, what: "loss" });
      assert.ok(Math.abs(loss.item() - get(io, "loss_if_epsilon_target").item()) > 0.1, "not the epsilon loss");
      loss.backward();
      const params = m.unet.namedParameters();
      for (const k of [...io.keys()].filter((k) => k.startsWith("grad.") && !k.endsWith(".rows"))) {
        const g = params.get(k.slice(5))?.grad;
        assert.ok(g, `no gradient for ${k}`);
        assertClose(g, get(io, k), { ...GRAD, what: k });
      }
      const rows = params.get("class_embedding.weight")!.grad!;
      const picked = cat([rows.select(0, 20).unsqueeze(0), rows.select(0, 250).unsqueeze(0)]);
      assertClose(picked, get(io, "grad.class_embedding.weight.rows"), { ...GRAD, what: "class rows" });
      t.diagnostic(`loss ${loss.item()} (diffusers ${get(io, "loss").item()})`);
    });
  } finally {
    disposeUpscaler(m);
    disposeAll(io);
  }
});

/** The stage-2 loss of `m` on pictures [B, 3, 64, 64] in [-1, 1] at fixed timesteps, noise and noise level 20. */
function evalLoss(m: ReturnType<typeof loadUpscaler>, pictures: Tensor): number {
  return noGrad(() =>
    scope(() => {
      const g = new Generator(123);
      const schedule = new NoiseSchedule(m.scheduler);
      const lowResSchedule = new NoiseSchedule(m.lowResScheduler);
      const latents = m.vae.encode(pictures).mean.mul(m.vae.scalingFactor);
      const context = m.textEncoder
        .encode(
          tensor(BigInt64Array.from(m.tokenizer.encodePadded("a photo of sks square", 77, 0), BigInt), {
            shape: [1, 77],
          }),
        )
        .expand(pictures.size(0), 77, -1);
      let total = 0;
      const steps = [50, 250, 450, 650, 850];
      for (const step of steps) {
        const b = pictures.size(0);
        const noise = randn(latents.shape, { generator: g });
        const ts = tensor(BigInt64Array.from({ length: b }, () => BigInt(step)));
        const lr = {
          lowRes: downscale4(pictures),
          noise: randn([b, 3, 16, 16], { generator: g }),
          levels: tensor(BigInt64Array.from({ length: b }, () => 20n)),
        };
        const pred = upscalerPrediction(m, lowResSchedule, schedule.addNoise(latents, noise, ts), ts, context, lr);
        total += diffusionLoss(pred, schedule.target(latents, noise, ts), Array(b).fill(false)).loss.item();
      }
      g.dispose();
      return total / steps.length;
    }),
  );
}

/** The raw RGB bytes of subjectPicture(i). */
function readPixels(i: number): Uint8Array {
  return subjectBytes(i);
}

/** A 64×64 picture: a grey square on white with a small red dot (the detail stage 2 is for). */
function subjectPicture(i: number): Buffer {
  return encodePng({ width: 64, height: 64, channels: 3, data: subjectBytes(i) });
}

function subjectBytes(i: number): Uint8Array {
  const data = new Uint8Array(64 * 64 * 3).fill(255);
  for (let y = 0; y < 64; y++)
    for (let x = 0; x < 64; x++) {
      const o = (y * 64 + x) * 3;
      const inSquare = x >= 12 + i && x < 52 + i && y >= 12 && y < 52;
      const dot = (x - 30 - i) ** 2 + (y - 30) ** 2 <= 4;
      const c = dot ? [220, 20, 20] : inSquare ? [90, 90, 90] : [255, 255, 255];
      data.set(c, o);
    }
  return data;
}

test("dreambooth_upscaler: a short run trains the UNet, saves an upscaler folder that loads, and resumes", async (t) => {
  const instance = join(root, "instance");
  mkdirSync(instance);
  for (let i = 0; i < 2; i++) writeFileSync(join(instance, `pic${i}.png`), subjectPicture(i));
  const raw = (extra: Record<string, unknown> = {}) => ({
    model: MODEL,
    tokenizer: TOKENIZER,
    method: "dreambooth_upscaler",
    output_dir: join(root, "run"),
    resolution: 64,
    max_steps: 6,
    learning_rate: 1e-3,
    seed: 5,
    concepts: [{ instance_data_dir: instance, instance_prompt: "a photo of sks square" }],
    save: { formats: ["diffusers"], state: true, every_n_steps: 1, keep_last: 2 },
    ...extra,
  });
  const c = loadTrainConfig(raw());
  assert.equal(c.upscaler.noise_level, null);
  assert.equal(c.upscaler.lora_rank, 0);
  assert.throws(() => loadTrainConfig(raw({ save: { formats: ["lora"] } })), /upscaler\.lora_rank is 0/);
  assert.throws(
    () => loadTrainConfig(raw({ method: "dreambooth", upscaler: { lora_rank: 2 } })),
    /upscaler\.lora_rank/,
  );
  // pictures that give a low-res input smaller than the UNet takes: refused before the run writes anything
  const small = loadTrainConfig(raw({ resolution: 16, output_dir: join(root, "small") }));
  await assert.rejects(createTrainer(small).run(), /4×4 low-res input, smaller than the upscaler's 8×8/);
  assert.equal(existsSync(join(root, "small")), false);
  const events: TrainerEvent[] = [];
  const trainer = createTrainer(c);
  trainer.on((e) => events.push(e));
  const r = await trainer.run();
  assert.equal(r.reason, "done");
  const losses = events.flatMap((e) => (e.type === "step" ? [e.loss] : []));
  assert.equal(losses.length, 6);
  assert.ok(losses.every(Number.isFinite), `losses ${losses}`);
  const folder = join(c.output_dir, "upscaler-diffusers");
  assert.ok(existsSync(join(folder, "low_res_scheduler", "scheduler_config.json")));
  const saved = loadUpscaler(folder, { tokenizerDir: TOKENIZER });
  const base = loadUpscaler(MODEL, { tokenizerDir: TOKENIZER });
  try {
    assert.equal(saved.maxNoiseLevel, 350);
    assert.equal(saved.scheduler.prediction_type, "v_prediction");
    assert.equal(saved.scheduler.beta_start, 0.0001);
    const key = "class_embedding.weight";
    const moved = scope(() =>
      saved.unet
        .stateDict()
        .get("conv_in.weight")!
        .sub(base.unet.stateDict().get("conv_in.weight")!)
        .abs()
        .max()
        .item(),
    );
    assert.ok(moved > 0, "conv_in trained");
    assert.ok(saved.unet.stateDict().has(key));
    // the stage-2 loss on the subject's pairs, over fixed draws, fell (the margin: at least 5 %)
    const pictures = scope(() =>
      cat(
        [0, 1].map((i) =>
          tensor(new Uint8Array(readPixels(i)), { shape: [1, 64, 64, 3] })
            .permute(0, 3, 1, 2)
            .float()
            .div(127.5)
            .sub(1),
        ),
      ),
    );
    const [before, afterTraining] = [evalLoss(base, pictures), evalLoss(saved, pictures)];
    pictures.dispose();
    t.diagnostic(`stage-2 eval loss: base ${before.toFixed(4)}, after 6 steps ${afterTraining.toFixed(4)}`);
    assert.ok(afterTraining < 0.95 * before, `eval loss ${before} → ${afterTraining}`);
  } finally {
    disposeUpscaler(saved);
    disposeUpscaler(base);
  }
  // resume from the step-1 state: two more steps
  const states = events.flatMap((e) => (e.type === "artifact" && e.kind === "state" ? [e.path] : []));
  assert.ok(states.length > 0, "a state was saved");
  const more = createTrainer(loadTrainConfig(raw({ max_steps: 7, output_dir: join(root, "run") })), {
    resume: states[states.length - 1],
  });
  const resumedSteps: TrainerEvent[] = [];
  more.on((e) => e.type === "step" && resumedSteps.push(e));
  const r2 = await more.run();
  assert.equal(r2.reason, "done");
  assert.equal(resumedSteps.length, 1, "the resumed run takes the one step left");
});

test("dreambooth_upscaler with prior preservation: class pairs from class pictures; missing ones are refused, nothing written", async () => {
  const instance = join(root, "pp-instance");
  const classes = join(root, "pp-class");
  mkdirSync(instance);
  writeFileSync(join(instance, "a.png"), subjectPicture(0));
  const base = {
    model: MODEL,
    tokenizer: TOKENIZER,
    method: "dreambooth_upscaler",
    resolution: 32,
    max_steps: 1,
    seed: 2,
    prior_loss_weight: 1,
    save: { formats: ["diffusers"], state: false },
  };
  const concept = {
    instance_data_dir: instance,
    instance_prompt: "a photo of sks square",
    class_data_dir: classes,
    class_prompt: "a photo of a square",
    num_class_images: 2,
  };
  const missing = loadTrainConfig({ ...base, output_dir: join(root, "pp-missing"), concepts: [concept] });
  await assert.rejects(
    createTrainer(missing).run(),
    /2 class pictures wanted, 0 in .*a ×4 upscaler cannot generate them/,
  );
  assert.equal(existsSync(join(root, "pp-missing")), false);
  assert.equal(existsSync(classes), false);

  mkdirSync(classes);
  for (let i = 0; i < 2; i++) writeFileSync(join(classes, `c${i}.png`), subjectPicture(3 + i));
  const c = loadTrainConfig({ ...base, output_dir: join(root, "pp"), concepts: [concept] });
  const events: TrainerEvent[] = [];
  const trainer = createTrainer(c);
  trainer.on((e) => events.push(e));
  assert.equal((await trainer.run()).reason, "done");
  const step = events.find((e) => e.type === "step");
  assert.ok(step && step.type === "step" && Number.isFinite(step.terms.prior_loss), "a prior term was trained");
});
