// A process killed (SIGKILL) while it writes a checkpoint or a training state
// leaves the previous one whole and loadable, and no half-written file under
// the real name.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { scope } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { disposeTrainingState, loadTrainingState } from "../../src/train/state.js";
import { checkLeaks, repoRoot, tempDir } from "../helpers.js";

checkLeaks();

const dist = (p: string) => pathToFileURL(join(repoRoot, "dist", "src", p)).href;

/** A child that writes generation 0 once, prints "ready", then rewrites forever with growing generations. */
function writerScript(target: string, kind: "file" | "state"): string {
  return `
import { full } from ${JSON.stringify(dist("engine/index.js"))};
import { saveSafetensors } from ${JSON.stringify(dist("formats/safetensors.js"))};
import { saveTrainingState } from ${JSON.stringify(dist("train/state.js"))};
const write = (gen) => {
  const big = full([4, 1024, 1024], gen); // 16 MB: the write takes a while
  const tensors = new Map([["w", big], ["gen", full([1], gen)]]);
  if (${JSON.stringify(kind)} === "file") saveSafetensors(${JSON.stringify(target)}, tensors, { generation: String(gen) });
  else saveTrainingState(${JSON.stringify(target)}, { progress: { step: gen, epoch: 0, batchInEpoch: 0 }, weights: tensors,
    optimizer: { json: {}, tensors: new Map() }, scheduler: { step: gen }, rng: new Map(), extra: {} });
  big.dispose();
};
write(0);
console.log("ready");
for (let gen = 1; ; gen++) write(gen);
`;
}

async function killMidWrite(target: string, kind: "file" | "state", dir: string): Promise<void> {
  const script = join(dir, `writer-${kind}.mjs`);
  writeFileSync(script, writerScript(target, kind));
  const child = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.on("exit", (code) => reject(new Error(`writer exited early (${code})`)));
  });
  await new Promise((r) => setTimeout(r, 150 + Math.random() * 300));
  child.kill("SIGKILL");
  await new Promise((r) => child.on("exit", r));
}

test("SIGKILL during a safetensors checkpoint write leaves the previous file loadable", async () => {
  const dir = tempDir("atelier-kill-");
  const target = join(dir, "model.safetensors");
  for (let round = 0; round < 3; round++) {
    await killMidWrite(target, "file", dir);
    const { tensors, metadata } = loadSafetensors(target);
    const gen = Number(metadata.generation);
    assert.ok(Number.isInteger(gen) && gen >= 0);
    assert.equal(tensors.get("gen")!.item(), gen, "data and metadata are of the same write");
    assert.equal(
      scope(() => tensors.get("w")!.max().item()),
      gen,
    );
    for (const t of tensors.values()) t.dispose();
  }
});

test("SIGKILL during a training-state save leaves the previous state loadable", async () => {
  const dir = tempDir("atelier-kill-");
  const target = join(dir, "state-step000001");
  await killMidWrite(target, "state", dir);
  assert.ok(existsSync(join(target, "state.json")), readdirSync(dir).join(", "));
  const s = loadTrainingState(target);
  assert.equal(s.weights.get("gen")!.item(), s.progress.step);
  disposeTrainingState(s);
});
