// Ctrl-C in `atelier train`: the run stops after its current step, leaves a
// resumable state and says how to go on (exit 130); `--resume` with that
// state finishes the run, and its loss log then holds every step once.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { repoRoot, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "../train/baseline-runs.js";

const w = makeBaselineWorld();
after(() => w.dispose());
const bin = join(repoRoot, "bin", "atelier.js");

function start(args: string[]) {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => {
    err += String(d);
  });
  const done = new Promise<{ code: number | null; err: string }>((resolve) =>
    child.on("exit", (code) => resolve({ code, err })),
  );
  return { child, done };
}

const lines = (file: string) =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as { step: number })
    : [];

test("SIGINT to atelier train saves a resumable state and exits 130; --resume finishes the run", async () => {
  const out = join(w.root, "sigint");
  const cfg = join(w.root, "sigint.json");
  writeFileSync(
    cfg,
    JSON.stringify({
      model: w.ckpt,
      tokenizer: sharedFixture("tokenizer"),
      output_dir: out,
      method: "lora",
      resolution: 32,
      max_steps: 400,
      seed: 3,
      cache_latents: false,
      concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
    }),
  );
  const log = join(out, "logs", "loss.jsonl");
  const run = start(["train", cfg]);
  // Wait for training to be under way, then press Ctrl-C.
  const t0 = Date.now();
  while (lines(log).length < 2) {
    if (Date.now() - t0 > 60_000) throw new Error("training did not start within 60 s");
    if (run.child.exitCode !== null) throw new Error(`atelier train ended early: ${(await run.done).err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  run.child.kill("SIGINT");
  const stopped = await run.done;
  assert.equal(stopped.code, 130, stopped.err);
  const m = /--resume (\S+)/.exec(stopped.err);
  assert.ok(m, `the message says how to resume: ${stopped.err}`);
  const state = m[1];
  assert.ok(existsSync(join(state, "state.json")), `${state} is a complete state`);
  const at = lines(log).length;
  assert.ok(at >= 2 && at < 400, `stopped mid-run (step ${at})`);
  assert.ok(existsSync(join(out, `lora-step${String(at).padStart(6, "0")}.safetensors`)), "the LoRA at the stop");

  const resumed = start(["train", cfg, "--resume", state, "--max_steps", String(at + 3)]);
  const end = await resumed.done;
  assert.equal(end.code, 0, end.err);
  assert.deepEqual(
    lines(log).map((r) => r.step),
    Array.from({ length: at + 3 }, (_, i) => i + 1),
  );
  assert.ok(existsSync(join(out, "lora.safetensors")));
});
