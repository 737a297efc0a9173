// The disk soak: `atelier train` writing into a small tmpfs that fills up.
// The run must stop with a message naming the folder and the space a save
// needs, every file its manifest lists must still load, and once the
// filesystem is grown the run resumes from the newest listed state to the
// weights of an uninterrupted run. Needs root (mount -t tmpfs); the suite
// covers the same path without it (test/train/run-safety.test.ts, by
// injecting ENOSPC). Run: node dist/test/soak/disk-soak.js [--size-kb N].
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { repoRoot, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "../train/baseline-runs.js";
import { checkListedFiles } from "./kill-soak.js";

const bin = join(repoRoot, "bin", "atelier.js");
const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};

const w = makeBaselineWorld();
const mnt = join(w.root, "small-disk");
mkdirSync(mnt);
const sizeKb = arg("size-kb", 40_000);
let mounted = false;
try {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeKb}k`, "tmpfs", mnt], { stdio: "pipe" });
    mounted = true;
  } catch (e) {
    console.log(`skipped: cannot mount a tmpfs here (${(e as Error).message.split("\n")[0]})`);
    process.exit(0);
  }
  const config = (name: string, dir: string) => {
    const file = join(w.root, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        model: w.ckpt,
        tokenizer: sharedFixture("tokenizer"),
        output_dir: dir,
        method: "dreambooth",
        resolution: 32,
        max_steps: 12,
        seed: 3,
        train_text_encoder: false,
        concepts: [{ instance_data_dir: w.instanceDir, instance_prompt: "a sks square" }],
        save: { formats: ["ldm_safetensors"], every_n_steps: 1, keep_last: 2, state: true },
      }),
    );
    return file;
  };
  const train = (...args: string[]) => spawnSync(process.execPath, [bin, "train", ...args], { encoding: "utf8" });
  const reference = train(config("reference", join(w.root, "reference")));
  if (reference.status !== 0) throw new Error(`the uninterrupted run failed: ${reference.stderr}`);

  const out = join(mnt, "run");
  const cfg = config("small", out);
  const full = train(cfg);
  const message = full.stderr.trim().split("\n").at(-1) ?? "";
  const report: Record<string, unknown> = { sizeKb, exit: full.status, message };
  const named =
    /no space left in .*small-disk\/run while .* step \d+ .*a save takes about [\d.]+ (bytes|KiB|MiB|GiB), [\d.]+ (bytes|KiB|MiB|GiB) is free/.test(
      message,
    );
  report.messageNamesFolderAndSpace = named;
  report.corruptAfterFull = await checkListedFiles(out);
  const manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8")) as {
    artifacts: { kind: string; path: string; step: number }[];
  };
  const state = manifest.artifacts.filter((a) => a.kind === "state").sort((a, b) => b.step - a.step)[0];
  report.newestState = state?.path ?? null;
  // Free space: grow the filesystem, then resume.
  execFileSync("mount", ["-o", "remount,size=256m", mnt]);
  const resumed = train(cfg, ...(state ? ["--resume", join(out, state.path)] : []));
  report.resumeExit = resumed.status;
  if (resumed.status !== 0) report.resumeError = resumed.stderr.trim().split("\n").at(-1);
  report.corruptAfterResume = await checkListedFiles(out);
  const a = loadSafetensors(join(w.root, "reference", "model.safetensors")).tensors;
  const b = existsSync(join(out, "model.safetensors")) ? loadSafetensors(join(out, "model.safetensors")).tensors : null;
  report.identical =
    b !== null && [...a].every(([k, t]) => JSON.stringify(b.get(k)?.toArray()) === JSON.stringify(t.toArray()));
  for (const m of [a, b]) for (const t of m?.values() ?? []) t.dispose();
  console.log(JSON.stringify(report, null, 2));
  const ok =
    full.status === 1 &&
    named &&
    (report.corruptAfterFull as string[]).length === 0 &&
    resumed.status === 0 &&
    report.identical === true;
  process.exitCode = ok ? 0 : 1;
} finally {
  if (mounted) execFileSync("umount", [mnt]);
  w.dispose();
}
