// A LoRA run with 8-bit AdamW (min_8bit_size=0: every state in uint8, through
// the state's safetensors), stopped and resumed from its saved state, gives
// the uninterrupted run's losses and LoRA weights bit for bit. (Every
// optimizer's save/load is checked bit for bit in test/engine/optim-extra.test.ts.)
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { train } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();
const w = makeBaselineWorld();
after(() => w.dispose());

const quiet = { log: () => {}, progressOut: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream };
const config = (name: string, extra: Record<string, unknown>) =>
  loadTrainConfig({
    model: w.ckpt,
    tokenizer: sharedFixture("tokenizer"),
    output_dir: join(w.root, name),
    method: "lora",
    resolution: 32,
    max_steps: 3,
    seed: 5,
    train_text_encoder: false,
    concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
    save: { formats: ["lora"], state: true },
    ...extra,
  });

test("AdamW8bit: stop after 1 step, resume, the same run bit for bit", async () => {
  const extra = { optimizer: "AdamW8bit", learning_rate: 1e-3, optimizer_args: ["min_8bit_size=0"] };
  const whole = await train(config("whole", extra), quiet);
  const part = config("part", extra);
  assert.equal((await train(part, { ...quiet, stopAfter: 1 })).steps, 1);
  const resumed = await train(part, { ...quiet, resume: join(part.output_dir, "state-step000001") });
  assert.equal(resumed.steps, 3);
  assert.deepEqual(
    resumed.losses.map((s) => s.loss),
    whole.losses.map((s) => s.loss),
  );
  const state = loadSafetensors(join(part.output_dir, "state-step000001", "optimizer.safetensors")).tensors;
  assert.ok(
    [...state.values()].some((t) => t.dtype === "uint8"),
    "8-bit states were saved",
  );
  const a = loadSafetensors(join(whole.outputDir, "lora.safetensors")).tensors;
  const b = loadSafetensors(join(resumed.outputDir, "lora.safetensors")).tensors;
  assert.ok(a.size > 0);
  for (const [k, t] of a) assert.deepEqual(b.get(k)!.toArray(), t.toArray(), k);
  for (const m of [a, b, state]) for (const t of m.values()) t.dispose();
});
