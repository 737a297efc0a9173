// The queue survives: a studio killed (SIGKILL) during a training job is
// started again and the job resumes from its last saved state; a trainer
// process killed under a running studio is resumed the same way; both runs
// finish with the losses of the same run left alone.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { cpSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { repoRoot } from "../helpers.js";
import { call, gentleEnv, studioDirs, subjectPictures, tinyLora, waitJob } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-restart-");
const running: ChildProcess[] = [];
after(() => {
  for (const p of running) if (p.exitCode === null) p.kill("SIGKILL");
});

/** `atelier studio` as its own process; its URL once it listens. */
async function startServer(): Promise<{ proc: ChildProcess; base: string }> {
  const proc = spawn(
    process.execPath,
    [join(repoRoot, "bin", "atelier.js"), "studio", "--workspace", dirs.workspace, "--port", "0"],
    {
      env: gentleEnv(),
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  running.push(proc);
  const base = await new Promise<string>((resolve, reject) => {
    let out = "";
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /open (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1].replace(/#.*$/, ""));
    });
    proc.once("exit", (code) => reject(new Error(`the studio exited (${code}) before listening: ${out}`)));
  });
  return { proc, base };
}

const lossesOf = (run: string) =>
  readFileSync(join(dirs.workspace, "runs", run, "logs", "loss.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { step: number; loss: number }).loss);

// Long enough that a kill sent after step 2 lands before the last state on a fast machine too.
const STEPS = 12;

/** "resuming from the state of step N" with from ≤ N ≤ to. */
function resumedBetween(log: string, from: number, to: number): void {
  const m = /resuming from the state of step (\d+)/.exec(log);
  assert.ok(m, `no resume in the log:\n${log}`);
  const n = Number(m[1]);
  assert.ok(n >= from && n <= to, `resumed from step ${n}, expected ${from}..${to}:\n${log}`);
}

test("SIGKILL of the studio mid-run, then of a trainer process: each job resumes and ends with the uninterrupted losses", async () => {
  // pictures dropped into datasets/ by hand
  const pictures = subjectPictures(join(dirs.root, "pictures"), 3);
  for (const p of pictures) cpSync(p, join(dirs.workspace, "datasets", "star", p.split("/").at(-1)!));
  let { proc, base } = await startServer();
  const model = await call(base, "POST", "/api/models", { name: "shapes", source: "builtin:shapes-base" });
  assert.equal((await waitJob(base, model.body.id as number)).status, "done");
  const config = { ...tinyLora("shapes", "star", STEPS, 1), sample: { every_n_steps: 0 } };
  const killed = (await call(base, "POST", "/api/train", { name: "server-killed", config })).body.id as number;
  const workerKilled = (await call(base, "POST", "/api/train", { name: "worker-killed", config })).body.id as number;
  const reference = (await call(base, "POST", "/api/train", { name: "reference", config })).body.id as number;

  await waitJob(base, killed, { until: (j) => (j.step as number) >= 2 });
  proc.kill("SIGKILL");
  await new Promise((r) => proc.once("exit", r));
  ({ proc, base } = await startServer());
  const first = await waitJob(base, killed);
  assert.equal(first.status, "done", String(first.error));
  const log = (first.log as { message: string }[]).map((l) => l.message).join("\n");
  assert.match(log, /the studio was restarted; resuming from the state of step \d+/);
  resumedBetween(log, 2, STEPS);

  const second = await waitJob(base, workerKilled, { until: (j) => (j.step as number) >= 2 });
  process.kill(second.worker_pid as number, "SIGKILL");
  const resumed = await waitJob(base, workerKilled);
  assert.equal(resumed.status, "done", String(resumed.error));
  const resumedLog = (resumed.log as { message: string }[]).map((l) => l.message).join("\n");
  assert.match(resumedLog, /was killed by SIGKILL.*; resuming from the state of step \d+/);
  resumedBetween(resumedLog, 1, STEPS - 1); // a resume mid-run, before the last step
  assert.equal(resumed.attempts, 2);

  const ref = await waitJob(base, reference);
  assert.equal(ref.status, "done", String(ref.error));
  const want = lossesOf("reference");
  assert.equal(want.length, STEPS);
  assert.deepEqual(lossesOf("server-killed"), want, "the resumed run's losses are the uninterrupted run's");
  assert.deepEqual(lossesOf("worker-killed"), want);
  // the job's own record (the Jobs page's chart) holds each step once, with the same losses
  assert.deepEqual(
    (first.losses as { loss: number }[]).map((l) => l.loss),
    want,
  );
  proc.kill("SIGTERM");
  await new Promise((r) => proc.once("exit", r));
});
