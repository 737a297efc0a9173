// NaN and infinity in training: NaN weights in the base, a diverging
// learning rate and an infinity in a batch are each caught within the step
// they appear in, named, never stepped into the weights nor saved; the run
// fails (exit 1 from the CLI) naming the newest good state — or, with
// on_nan skip, drops that step's update and goes on.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { all, fill_, isfinite, noGrad, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { NonFiniteError } from "../../src/train/loop.js";
import { dreambooth } from "../../src/train/methods/dreambooth.js";
import { defineMethod, registerMethod } from "../../src/train/methods/index.js";
import { createTrainer, type TrainerEvent } from "../../src/train/trainer.js";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();
const w = makeBaselineWorld();
after(() => w.dispose());

/** Dreambooth that puts an infinity into the noisy latents of the batches of the steps in `poisonSteps` (1-based). */
const poisonSteps = new Set<number>();
let microCalls = 0;
registerMethod(
  defineMethod({
    ...dreambooth,
    name: "dreambooth_inf",
    create(c, ctx) {
      const m = dreambooth.create(c, ctx);
      return {
        ...m,
        encodeText(s) {
          microCalls++;
          if (poisonSteps.has(microCalls)) noGrad(() => fill_(s.noisy, Number.POSITIVE_INFINITY));
          return s.context!;
        },
      };
    },
  }),
);

const raw = (name: string, extra: Record<string, unknown> = {}) => ({
  model: w.ckpt,
  tokenizer: sharedFixture("tokenizer"),
  output_dir: join(w.root, name),
  method: "dreambooth",
  resolution: 32,
  max_steps: 6,
  seed: 3,
  train_text_encoder: false,
  concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
  save: { formats: ["ldm_safetensors"], every_n_steps: 1, state: true },
  ...extra,
});

async function run(c: ReturnType<typeof loadTrainConfig>) {
  const events: TrainerEvent[] = [];
  const t = createTrainer(c);
  t.on((e) => events.push(e));
  try {
    return { result: await t.run(), events, error: null as Error | null };
  } catch (e) {
    return { result: null, events, error: e as Error };
  }
}

/** Every float tensor of a saved file is finite. */
function allFinite(file: string): boolean {
  const m = loadSafetensors(file).tensors;
  try {
    return [...m.values()].every((t: Tensor) => scope(() => Boolean(all(isfinite(t)).item())));
  } finally {
    for (const t of m.values()) t.dispose();
  }
}

const losses = (dir: string) =>
  readFileSync(join(dir, "logs", "loss.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { step: number; loss: number });

test("NaN in the base weights: caught at step 1, named, nothing saved; the CLI exits 1", async () => {
  const broken = join(w.root, "nan-base.safetensors");
  const m = loadSafetensors(w.ckpt);
  const key = [...m.tensors.keys()].find((k) => k.startsWith("model.diffusion_model.") && k.endsWith("weight"))!;
  noGrad(() => fill_(m.tensors.get(key)!, Number.NaN));
  saveSafetensors(broken, m.tensors, m.metadata);
  for (const t of m.tensors.values()) t.dispose();

  const c = loadTrainConfig(raw("nan-base", { model: broken }));
  const r = await run(c);
  assert.ok(r.error instanceof NonFiniteError, String(r.error));
  assert.match(r.error.message, /step 1: the loss is NaN \(instance_loss NaN/);
  assert.match(r.error.message, /nothing was saved before it/);
  assert.equal(r.events.filter((e) => e.type === "step").length, 0);
  assert.equal(existsSync(join(c.output_dir, "model-step000001.safetensors")), false);

  const cfg = join(w.root, "nan-base.json");
  writeFileSync(cfg, JSON.stringify(raw("nan-base-cli", { model: broken })));
  const out = await cli("train", cfg);
  assert.equal(out.code, 1, out.err);
  assert.match(out.err, /the loss is NaN/);
});

test("a diverging learning rate: stopped at the first non-finite step, every saved file finite, the newest good state named", async () => {
  const c = loadTrainConfig(
    raw("diverge", {
      optimizer: "sgd",
      learning_rate: 1,
      max_grad_norm: 0,
      max_steps: 60,
      save: { every_n_steps: 1, state: true, keep_last: 2 },
    }),
  );
  const r = await run(c);
  assert.ok(r.error instanceof NonFiniteError, `the run diverged: ${String(r.error)}`);
  const at = r.error.step;
  assert.match(r.error.message, new RegExp(`step ${at}: (the loss is (NaN|Infinity)|the gradients of unet)`));
  assert.match(
    r.error.message,
    new RegExp(`the newest complete state is .*state-step${String(at - 1).padStart(6, "0")}`),
  );
  const logged = losses(c.output_dir);
  assert.equal(logged.length, at - 1, "the bad step is not logged");
  assert.ok(logged.every((l) => Number.isFinite(l.loss)));
  for (const step of [at - 1, at - 2].filter((s) => s > 0)) {
    const tag = String(step).padStart(6, "0");
    assert.ok(allFinite(join(c.output_dir, `model-step${tag}.safetensors`)), `model at step ${step}`);
    assert.ok(allFinite(join(c.output_dir, `state-step${tag}`, "weights.safetensors")), `state at step ${step}`);
  }
});

test("an infinity in a batch: stop names the step; on_nan skip drops that update, warns, and trains on", async () => {
  poisonSteps.clear();
  poisonSteps.add(3);
  microCalls = 0;
  const stop = await run(
    loadTrainConfig(raw("inf-stop", { method: "dreambooth_inf", save: { formats: ["ldm_safetensors"] } })),
  );
  assert.ok(stop.error instanceof NonFiniteError);
  assert.match(stop.error.message, /step 3: the loss is (NaN|Infinity)/);

  microCalls = 0;
  const c = loadTrainConfig(
    raw("inf-skip", { method: "dreambooth_inf", on_nan: "skip", save: { formats: ["ldm_safetensors"] } }),
  );
  const skip = await run(c);
  assert.equal(skip.error, null, String(skip.error));
  assert.equal(skip.result?.steps, 6);
  assert.ok(
    skip.events.some((e) => e.type === "warning" && /step 3: the loss is .*its update was skipped/.test(e.message)),
  );
  assert.deepEqual(
    losses(c.output_dir).map((l) => l.step),
    [1, 2, 4, 5, 6],
  );
  assert.ok(allFinite(join(c.output_dir, "model.safetensors")));

  // Five non-finite steps in a row: the data or the weights are broken, the run ends.
  microCalls = 0;
  for (const s of [1, 2, 3, 4, 5]) poisonSteps.add(s);
  const broken = await run(
    loadTrainConfig(
      raw("inf-all", { method: "dreambooth_inf", on_nan: "skip", save: { formats: ["ldm_safetensors"] } }),
    ),
  );
  assert.ok(broken.error instanceof NonFiniteError);
  assert.match(broken.error.message, /5 steps in a row were not finite/);
});
