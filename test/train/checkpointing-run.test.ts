// gradient_checkpointing = true in a real run: the same per-step losses and
// the same saved weights, bit for bit, as without it (Dreambooth + LoRA with
// the text encoder trained, so both the UNet's and CLIP's segments run).
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { disposeAll, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { createTrainer, type TrainerEvent } from "../../src/train/trainer.js";
import { checkLeaks } from "../helpers.js";
import { baselineConfigs, makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();

const w = makeBaselineWorld();
after(() => w.dispose());

async function run(name: string, checkpointing: boolean) {
  const base = JSON.parse(JSON.stringify(baselineConfigs(w).dreambooth_lora_te)) as Record<string, unknown>;
  delete base.workspace;
  const c = loadTrainConfig({
    ...base,
    max_steps: 2,
    gradient_checkpointing: checkpointing,
    output_dir: join(w.root, name),
  });
  const trainer = createTrainer(c);
  const warnings: string[] = [];
  const losses: number[] = [];
  trainer.on((e: TrainerEvent) => {
    if (e.type === "step") losses.push(e.loss);
    if (e.type === "warning") warnings.push(e.message);
  });
  const result = await trainer.run();
  assert.equal(result.reason, "done");
  return { losses, warnings, dir: join(w.root, name) };
}

test("gradient_checkpointing: bit-identical losses and saved LoRA to the run without it", async () => {
  const plain = await run("plain", false);
  const ckpt = await run("ckpt", true);
  assert.equal(plain.losses.length, 2);
  assert.deepEqual(ckpt.losses, plain.losses);
  assert.ok(!ckpt.warnings.some((m) => /checkpointing/.test(m)), ckpt.warnings.join("; "));
  const weights = (d: string) =>
    (readdirSync(d, { recursive: true }) as string[]).filter((f) => f.endsWith(".safetensors")).sort();
  const files = weights(plain.dir);
  assert.ok(files.length > 0, "the run saved no weights");
  assert.deepEqual(weights(ckpt.dir), files);
  // the tensors, not the files: the metadata holds times and paths
  for (const f of files) {
    const [a, b] = [plain, ckpt].map((r) => loadSafetensors(join(r.dir, f)).tensors);
    try {
      assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
      for (const [k, t] of a) {
        const bytes = (x: Tensor) => Buffer.from(x.toTypedArray().buffer as ArrayBuffer);
        assert.ok(bytes(t).equals(bytes(b.get(k) as Tensor)), `${f}: ${k} differs`);
      }
    } finally {
      disposeAll([a, b]);
    }
  }
});
