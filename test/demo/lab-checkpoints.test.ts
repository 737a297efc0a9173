// `atelier lab --checkpoints`: a run saves its file at the listed steps too
// (save.every_n_steps = their gcd) and runExperiment names each, so the lab
// evaluates every checkpoint with the same prompts and seeds (src/demo/lab.ts).
// A 4-step LoRA run on the shapes base; a few seconds of CPU.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { runExperiment, writeSubject } from "../../src/demo/experiment.js";
import { lycorisSpecs } from "../../src/demo/lab-lycoris.js";
import { shapesBasePath } from "../../src/shapes/base-path.js";
import { DEFAULT_SUBJECT } from "../../src/shapes/world.js";
import { tempDir } from "../helpers.js";

const root = tempDir("atelier-lab-ckpt-");
after(() => rmSync(root, { recursive: true, force: true }));

test("runExperiment with checkpoints: one file per listed step, the last one the final file", async () => {
  const sks = writeSubject(join(root, "data", "sks"), "sks", DEFAULT_SUBJECT, 4, 7);
  const loha = lycorisSpecs(sks, 4).find((s) => s.name === "loha")!;
  const r = await runExperiment(
    { ...loha, batch: 2, checkpoints: [4, 2] },
    { base: shapesBasePath(), out: root, quiet: true },
  );
  assert.deepEqual(
    r.checkpoints?.map((c) => c.step),
    [2, 4],
  );
  const [at2, at4] = r.checkpoints!;
  assert.equal(at4.artifact, r.artifact, "the step equal to the run's steps is its final file");
  assert.notEqual(at2.artifact, r.artifact);
  assert.ok(existsSync(at2.artifact));
  assert.notDeepEqual(readFileSync(at2.artifact), readFileSync(at4.artifact), "two more steps changed the weights");
});

test("runExperiment refuses a checkpoint past the run's steps, naming it", async () => {
  const sks = writeSubject(join(root, "data", "sks"), "sks", DEFAULT_SUBJECT, 4, 7);
  const lora = { ...lycorisSpecs(sks, 4)[3], name: "late" };
  await assert.rejects(
    runExperiment({ ...lora, checkpoints: [2, 9] }, { base: shapesBasePath(), out: root, quiet: true }),
    /late: checkpoint step 9 is not a step of the run \(1 to 4\)/,
  );
  assert.ok(!existsSync(join(root, "runs", "late")), "nothing written");
});
