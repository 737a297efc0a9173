// weight_dtype = "bf16" in whole runs (createTrainer from a config, tiny
// model): a LoRA run with the frozen UNet stored in bf16 under bf16 autocast
// trains, saves a LoRA in the dtype the user asked for (float32, or float16
// with save.half) that loads back; a Dreambooth run with the frozen VAE and
// text encoder stored in bf16 saves a checkpoint whose every tensor is in the
// dtype asked for, not in the bf16 the run kept them in, and that loads back.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { disposeLoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { disposeAll, scope } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { createTrainer, type TrainerEvent } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { baselineConfigs, makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();

const w = makeBaselineWorld();
after(() => w.dispose());

type Shape = "lora_locon" | "dreambooth_prior";

async function run(shape: Shape, name: string, extra: Record<string, unknown>) {
  const base = JSON.parse(JSON.stringify(baselineConfigs(w)[shape])) as Record<string, unknown>;
  delete base.workspace;
  const c = loadTrainConfig({ ...base, mixed_precision: "bf16", ...extra, output_dir: join(w.root, name) });
  const trainer = createTrainer(c);
  const losses: number[] = [];
  const logs: string[] = [];
  trainer.on((e: TrainerEvent) => {
    if (e.type === "step") losses.push(e.loss);
    if (e.type === "log" || e.type === "warning") logs.push(e.message);
  });
  const result = await trainer.run();
  assert.equal(result.reason, "done");
  const dir = join(w.root, name);
  const files = (readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith(".safetensors"));
  return { losses, logs, dir, files };
}

/** The dtypes of a safetensors file's tensors, counted. */
function dtypesOf(path: string): Map<string, number> {
  const { tensors } = loadSafetensors(path);
  const out = new Map<string, number>();
  for (const t of tensors.values()) out.set(t.dtype, (out.get(t.dtype) ?? 0) + 1);
  disposeAll([tensors]);
  return out;
}

test("LoRA with weight_dtype bf16: the same losses as float32 storage under bf16 autocast, a float32 (or float16) LoRA that loads", async () => {
  const lora = { lora: { rank: 4, alpha: 2 }, max_steps: 4 };
  const f32 = await run("lora_locon", "lora-f32", { ...lora, weight_dtype: "float32" });
  const bf = await run("lora_locon", "lora-bf16", { ...lora, weight_dtype: "bf16" });
  const half = await run("lora_locon", "lora-bf16-half", { ...lora, weight_dtype: "bf16", save: { half: true } });
  assert.ok(
    bf.logs.some((m) => /weights stored: \d+ frozen in bf16/.test(m)),
    bf.logs.join("; "),
  );
  assert.equal(bf.losses.length, 4);
  for (const l of bf.losses) assert.ok(Number.isFinite(l), `loss ${l}`);
  // autocast rounds every frozen weight to bf16 where it is used: stored so, nothing changes
  assert.deepEqual(bf.losses, f32.losses);
  assert.deepEqual(half.losses, bf.losses);
  for (const [r, want] of [
    [bf, "float32"],
    [half, "float16"],
  ] as const) {
    assert.equal(r.files.length, 1, r.files.join(", "));
    const path = join(r.dir, r.files[0]);
    assert.deepEqual([...dtypesOf(path).keys()], [want], `${r.files[0]} dtypes`);
    const file = loadLoraFile(path);
    try {
      assert.ok(file.modules.size > 10, `${file.modules.size} modules`);
      // lora_up starts at zero: trained, it is not
      let moved = 0;
      for (const m of file.modules.values()) {
        const up = m.get("lora_up.weight");
        if (up && scope(() => up.abs().max().item()) > 0) moved++;
      }
      assert.ok(moved > file.modules.size / 2, `${moved} of ${file.modules.size} lora_up trained`);
    } finally {
      disposeLoraFile(file);
    }
  }
});

test("Dreambooth with weight_dtype bf16 (frozen VAE and text encoder in bf16): the checkpoint is saved in float32, loads, its UNet trained", async () => {
  const db = { weight_dtype: "bf16", cache_latents: true, max_steps: 4 };
  const r = await run("dreambooth_prior", "db-bf16", db);
  assert.ok(
    r.logs.some((m) => /weights stored: \d+ frozen in bf16/.test(m)),
    r.logs.join("; "),
  );
  for (const l of r.losses) assert.ok(Number.isFinite(l), `loss ${l}`);
  const ckpts = r.files.filter((f) => !f.includes("cache"));
  assert.equal(ckpts.length, 1, r.files.join(", "));
  const path = join(r.dir, ckpts[0]);
  assert.deepEqual([...dtypesOf(path).keys()], ["float32"], `${ckpts[0]} dtypes`);
  const tokenizerDir = sharedFixture("tokenizer");
  const [sd, base] = [path, w.ckpt].map((p) => loadStableDiffusion(p, { tokenizerDir }));
  try {
    const key = "conv_in.weight";
    const [a, b] = [sd, base].map((m) => m.unet.namedParameters().get(key)!);
    assert.equal(a.dtype, "float32");
    assert.ok(scope(() => a.sub(b).abs().max().item()) > 0, `${key} unchanged by training`);
    // the frozen parts come back as they were (bf16 in the run, float32 in the file: rounded once)
    const [ta, tb] = [sd, base].map((m) => m.textEncoder.parameters()[0]);
    assert.ok(scope(() => ta.sub(tb).abs().max().item()) <= scope(() => tb.abs().max().item()) * 2 ** -8);
  } finally {
    disposeStableDiffusion(sd);
    disposeStableDiffusion(base);
  }
});
