// What a run never does to the user's files: a resume of a missing state
// writes nothing; a finished run is refused (or extended when max_steps
// grew); nothing is written before the inputs are checked; files a killed
// save left half-written are swept; a looping symlink is skipped by name; a
// full disk stops with the folder, the space needed and the newest good
// state named, every earlier file intact, and the run resumes once there is
// room.
import assert from "node:assert/strict";
import fs, { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { after, test } from "node:test";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { createTrainer, type TrainerEvent, train } from "../../src/train/trainer.js";
import { checkLeaks, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "./baseline-runs.js";

checkLeaks();
const w = makeBaselineWorld();
after(() => w.dispose());

const quiet = { log: () => {}, progressOut: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream };
const config = (name: string, extra: Record<string, unknown> = {}) =>
  loadTrainConfig({
    model: w.ckpt,
    tokenizer: sharedFixture("tokenizer"),
    output_dir: join(w.root, name),
    method: "dreambooth",
    resolution: 32,
    max_steps: 4,
    seed: 3,
    train_text_encoder: false,
    concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
    save: { formats: ["ldm_safetensors"], state: true },
    ...extra,
  });

const snapshot = (dir: string) =>
  readdirSync(dir)
    .sort()
    .map((f) => {
      const p = join(dir, f);
      const s = statSync(p);
      return `${f}:${s.mtimeMs}:${s.isFile() ? readFileSync(p).length : "dir"}`;
    });

test("resume: a missing state writes nothing; a finished run is refused, and extended when max_steps grew", async () => {
  const c = config("finished");
  const done = await train(c, quiet);
  assert.equal(done.steps, 4);
  const before = snapshot(c.output_dir);
  await assert.rejects(
    train(c, { ...quiet, resume: join(c.output_dir, "state-step000099") }),
    /no such training state folder/,
  );
  const finalState = join(c.output_dir, "state-step000004");
  await assert.rejects(train(c, { ...quiet, resume: finalState }), /the run is finished at step 4 .*raise max_steps/);
  assert.deepEqual(snapshot(c.output_dir), before, "the run's files are untouched");

  const longer = await train(config("finished", { max_steps: 6 }), { ...quiet, resume: finalState });
  assert.equal(longer.steps, 6);
  assert.deepEqual(
    longer.losses.map((l) => l.step),
    [1, 2, 3, 4, 5, 6],
  );
});

test("an epoch-based run resumed from an epoch's state gives the uninterrupted steps, no extra one", async () => {
  const extra = { max_steps: 0, epochs: 2, save: { formats: ["ldm_safetensors"], state: true, every_n_epochs: 1 } };
  const whole = await train(config("epochs-whole", extra), quiet);
  const c = config("epochs-part", extra);
  await train(c, quiet);
  const resumed = await train(c, { ...quiet, resume: join(c.output_dir, "state-epoch0001") });
  assert.deepEqual(
    resumed.losses.map((l) => [l.step, l.loss]),
    whole.losses.map((l) => [l.step, l.loss]),
  );
});

test("nothing is written before the inputs are checked: an empty instance folder, a model that is a text file", async () => {
  const empty = join(w.root, "empty-instance");
  mkdirSync(empty);
  const a = config("no-images", { concepts: [{ instance_data_dir: empty, instance_prompt: "x" }] });
  await assert.rejects(train(a, quiet), /no usable images in .*empty-instance: no image files/);
  assert.equal(existsSync(a.output_dir), false, "no output folder");
  const text = join(w.root, "model.txt");
  writeFileSync(text, "not a model");
  const b = loadTrainConfig({ ...JSON.parse(JSON.stringify(config("text-model"))), model: text, workspace: undefined });
  await assert.rejects(train(b, quiet));
  assert.equal(existsSync(b.output_dir), false, "no output folder");
});

test("half-written files of a killed save are swept at the start; a looping symlink is skipped by name", async () => {
  const dir = join(w.root, "instance-loop");
  mkdirSync(dir);
  for (const f of readdirSync(w.instanceDir)) writeFileSync(join(dir, f), readFileSync(join(w.instanceDir, f)));
  symlinkSync("loop.png", join(dir, "loop.png"));
  const c = config("sweep", { concepts: [{ instance_data_dir: dir, instance_prompt: "a sks square" }] });
  mkdirSync(c.output_dir, { recursive: true });
  writeFileSync(join(c.output_dir, "model.safetensors.tmp-999999-abc123"), "torn");
  mkdirSync(join(c.output_dir, ".state-step000002.tmp-999999-1733000000000"));
  const messages: string[] = [];
  const r = await train(c, { ...quiet, log: (m) => messages.push(m) });
  assert.equal(r.steps, 4);
  assert.ok(
    messages.some((m) => /removed 2 unfinished file\(s\) of an interrupted save/.test(m)),
    messages.join("\n"),
  );
  assert.deepEqual(
    readdirSync(c.output_dir).filter((f) => f.includes(".tmp-")),
    [],
  );
  assert.ok(
    messages.some((m) => m.includes("loop.png")),
    messages.join("\n"),
  );
});

test("a full disk: the error names the folder, the space a save takes and the newest good state; a resume finishes", async () => {
  const extra = { max_steps: 5, save: { formats: ["ldm_safetensors"], state: true, every_n_steps: 1 } };
  const whole = await train(config("disk-whole", extra), quiet);
  const c = config("disk-full", extra);
  const realWrite = fs.writeSync;
  let full = false;
  fs.writeSync = ((...a: Parameters<typeof fs.writeSync>) => {
    if (full) throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    return (realWrite as (...x: unknown[]) => number)(...a);
  }) as typeof fs.writeSync;
  syncBuiltinESMExports();
  const events: TrainerEvent[] = [];
  try {
    const t = createTrainer(c);
    t.on((e) => {
      events.push(e);
      if (e.type === "step" && e.step === 3) full = true;
    });
    await assert.rejects(
      t.run(),
      /no space left in .*disk-full while saving step 3 .*a save takes about [\d.]+ (bytes|KiB|MiB|GiB), [\d.]+ (bytes|KiB|MiB|GiB) is free; the newest complete state is .*state-step000002 \(step 2\)/,
    );
  } finally {
    fs.writeSync = realWrite;
    syncBuiltinESMExports();
  }
  assert.deepEqual(
    readdirSync(c.output_dir).filter((f) => f.includes(".tmp-")),
    [],
    "no torn files",
  );
  const m = loadSafetensors(join(c.output_dir, "model-step000002.safetensors"));
  for (const t of m.tensors.values()) t.dispose();
  const resumed = await train(c, { ...quiet, resume: join(c.output_dir, "state-step000002") });
  assert.deepEqual(
    resumed.losses.map((l) => l.loss),
    whole.losses.map((l) => l.loss),
  );
});
