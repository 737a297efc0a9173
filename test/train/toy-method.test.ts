// Adding a training method is a file (toy-method.ts) and one registry line:
// its config section is parsed, checked and listed like the built-in ones,
// `method = "toy"` runs it on the one trainer, its hooks run, its format is
// the only one its runs may save.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { scope } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { describeConfig, loadTrainConfig } from "../../src/train/config.js";
import { registerMethod } from "../../src/train/methods/index.js";
import { createTrainer, type TrainerEvent } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";
import { toy, toyLog } from "./toy-method.js";

registerMethod(toy); // the one registry line

checkLeaks();
const w = makeBaselineWorld();
after(() => w.dispose());

const raw = (extra: Record<string, unknown> = {}) => ({
  model: w.ckpt,
  tokenizer: sharedFixture("tokenizer"),
  output_dir: join(w.root, "toy"),
  method: "toy",
  resolution: 32,
  max_steps: 3,
  seed: 3,
  concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
  ...extra,
});

test("a registered method's config section is parsed, defaulted, checked and listed", () => {
  const c = loadTrainConfig(raw());
  assert.equal((c as unknown as { toy: { l2: number } }).toy.l2, 0.5);
  assert.equal(c.learning_rate, 1e-2, "the method's default learning rate");
  assert.deepEqual(c.save.formats, ["toy_safetensors"], "the method's default format");
  assert.throws(() => loadTrainConfig(raw({ toy: { l2: -1 } })), /toy\.l2 must be a number >= 0/);
  assert.throws(() => loadTrainConfig(raw({ toy: { l3: 1 } })), /unknown field "toy\.l3"/);
  assert.throws(
    () => loadTrainConfig(raw({ save: { formats: ["ldm_safetensors"] } })),
    /save\.formats has "ldm_safetensors", which method toy does not write \(it writes toy_safetensors\)/,
  );
  assert.match(describeConfig(), /toy\.l2\s+weight of the L2 term/);
  assert.throws(() => registerMethod(toy), /already registered/);
});

test("method toy trains on the one trainer: its loss term, its after-step hook, its file", async () => {
  const c = loadTrainConfig(raw({ toy: { l2: 2 } }));
  const trainer = createTrainer(c);
  const events: TrainerEvent[] = [];
  trainer.on((e) => events.push(e));
  const r = await trainer.run();
  assert.equal(r.reason, "done");
  const steps = events.filter((e) => e.type === "step");
  assert.equal(steps.length, 3);
  for (const s of steps) {
    assert.ok(s.type === "step" && typeof s.terms.toy_l2 === "number", "the extra term is reported");
    if (s.type === "step") {
      const sum = s.terms.instance_loss! + s.terms.toy_l2!;
      assert.ok(Math.abs(s.loss - sum) < 1e-5, `loss = instance + toy_l2 (${s.loss} vs ${sum})`);
    }
  }
  assert.deepEqual(toyLog.afterSteps, [0, 1, 2]);
  const file = join(c.output_dir, "toy.safetensors");
  assert.ok(existsSync(file));
  assert.ok(events.some((e) => e.type === "artifact" && e.format === "toy_safetensors" && e.path === file));
  const saved = loadSafetensors(file).tensors;
  const base = loadSafetensors(w.ckpt).tensors;
  try {
    const before = base.get("model.diffusion_model.input_blocks.0.0.bias")!;
    const moved = scope(() => saved.get("bias")!.float().sub(before.float()).abs().max().item());
    assert.ok(moved > 0, "the bias trained");
  } finally {
    for (const m of [saved, base]) for (const t of m.values()) t.dispose();
  }
});
