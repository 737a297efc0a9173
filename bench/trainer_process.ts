// What running the trainer off the main thread costs (docs/trainer-threads.md):
// a child process (startTrainerProcess, src/train/remote.ts) against a
// worker_thread and against this thread. Prints startup times (spawn → ready,
// → the run's first event), the round trip of step-sized messages, how long a
// run holds this thread's event loop, whether the addon's tables survive a
// worker using them next to this thread, and the figures an async addon would
// be priced by (ops per step, a thread-pool hop). There is no PyTorch analogue
// of any of this, so unlike the other benchmarks it prints no ratio.
//
//   node dist/bench/trainer_process.js [--reps N] [--json]
//
// Top-level imports are node: modules only, so the echo child and the bare
// worker measure Node alone; the library is imported where it is measured.
import { type ChildProcess, fork, type SerializationType } from "node:child_process";
import { randomFill } from "node:crypto";
import { fileURLToPath } from "node:url";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

const SELF = fileURLToPath(import.meta.url);
const REMOTE_CHILD = fileURLToPath(new URL("../src/train/remote-child.js", import.meta.url));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now();

/** A step event as the trainer sends it (src/train/events.ts), wrapped as remote.ts wraps it. */
const STEP_MESSAGE = {
  type: "event",
  event: {
    type: "step",
    step: 123,
    total: 1000,
    epoch: 2,
    loss: 0.123456789,
    terms: { instance_loss: 0.1, prior_loss: 0.0234 },
    lr: 1e-4,
    itPerSec: 1.2345,
    etaSeconds: 876.5,
  },
};

// ---- the other sides: echo child, workers, the race probe ---------------------------------

/** Worker modes: "echo" (bare Node), "trainer" (loads the trainer and the addon), "race". */
async function workerMain(mode: string): Promise<void> {
  const port = parentPort!;
  if (mode === "trainer") await import("../src/train/trainer.js");
  if (mode === "race") {
    const { native } = await import("../src/engine/native.js");
    port.postMessage({ liveSeen: native.liveCount() });
    port.once("message", async () => port.postMessage(await churn()));
    return;
  }
  port.on("message", (m) => port.postMessage(m));
  port.postMessage("ready");
}

/** N × (x + 1, dispose) on a 4-element tensor; counts the addon's errors. */
async function churn(n = 200_000): Promise<{ errors: number; first: string | null }> {
  const e = await import("../src/engine/index.js");
  const x = e.ones([4]);
  let errors = 0;
  let first: string | null = null;
  for (let i = 0; i < n; i++) {
    try {
      x.add(1).dispose();
    } catch (err) {
      errors++;
      first ??= (err as Error).message;
    }
  }
  x.dispose();
  return { errors, first };
}

/** --race: this thread and a worker churn tensors at once; prints what the shared tables did. */
async function raceMain(): Promise<void> {
  const e = await import("../src/engine/index.js");
  const { native } = await import("../src/engine/native.js");
  const mine = e.ones([3]); // a tensor of this thread, before the worker loads the addon
  const w = new Worker(SELF, { workerData: { mode: "race" } });
  const seen = (await new Promise((r) => w.once("message", r))) as { liveSeen: number };
  w.postMessage("go");
  const theirs = new Promise((r) => w.once("message", r));
  const main = await churn();
  const worker = await theirs;
  mine.dispose();
  console.log(JSON.stringify({ workerSawLive: seen.liveSeen, main, worker, liveAfter: native.liveCount() }));
  await w.terminate();
}

// ---- measurements -------------------------------------------------------------------------

/** Spawn → the child's first message ("ready"), then a disconnect; ms. */
async function forkReady(file: string, args: string[] = []): Promise<number> {
  const t0 = now();
  const child = fork(file, args, { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
  await new Promise((r) => child.once("message", r));
  const ms = now() - t0;
  child.disconnect();
  await new Promise((r) => child.once("exit", r));
  return ms;
}

async function workerReady(mode: string): Promise<number> {
  const t0 = now();
  const w = new Worker(SELF, { workerData: { mode } });
  await new Promise((r) => w.once("message", r));
  const ms = now() - t0;
  await w.terminate();
  return ms;
}

/** µs per round trip of `n` step messages, one after the other (each waits for its echo). */
async function roundTrips(send: (m: unknown) => void, onMessage: (f: () => void) => void, n: number): Promise<number> {
  let left = n;
  let t0 = 0;
  return new Promise((resolve) => {
    onMessage(() => {
      if (--left > 0) send(STEP_MESSAGE);
      else resolve(((now() - t0) * 1000) / n);
    });
    t0 = now();
    send(STEP_MESSAGE);
  });
}

async function childRoundTrip(serialization: SerializationType, n: number): Promise<number> {
  const child: ChildProcess = fork(SELF, ["--echo"], { serialization, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  await new Promise((r) => child.once("message", r));
  const warm = () =>
    roundTrips(
      (m) => child.send(m as object),
      (f) => child.on("message", f),
      100,
    );
  await warm();
  child.removeAllListeners("message");
  const us = await roundTrips(
    (m) => child.send(m as object),
    (f) => child.on("message", f),
    n,
  );
  child.disconnect();
  return us;
}

async function workerRoundTrip(n: number): Promise<number> {
  const w = new Worker(SELF, { workerData: { mode: "echo" } });
  await new Promise((r) => w.once("message", r));
  await roundTrips(
    (m) => w.postMessage(m),
    (f) => w.on("message", f),
    100,
  );
  w.removeAllListeners("message");
  const us = await roundTrips(
    (m) => w.postMessage(m),
    (f) => w.on("message", f),
    n,
  );
  await w.terminate();
  return us;
}

/** µs per thread-pool hop: a 4-byte randomFill, one after the other (what one async op would add at least). */
async function threadPoolHop(n = 5000): Promise<number> {
  const buf = new Uint8Array(4);
  const one = () => new Promise<void>((r) => randomFill(buf, () => r()));
  for (let i = 0; i < 200; i++) await one();
  const t0 = now();
  for (let i = 0; i < n; i++) await one();
  return ((now() - t0) * 1000) / n;
}

/** µs per synchronous `x.add(1)` + dispose (the addon's cost per small op today). */
async function syncOp(n = 20_000): Promise<number> {
  const e = await import("../src/engine/index.js");
  const x = e.ones([4]);
  for (let i = 0; i < 2000; i++) x.add(1).dispose();
  const t0 = now();
  for (let i = 0; i < n; i++) x.add(1).dispose();
  const us = ((now() - t0) * 1000) / n;
  x.dispose();
  return us;
}

interface NativeCounts {
  calls: number;
  backward_ms: number;
  native_ms: number;
  longest_ms: number;
}

/** Wraps the addon's op entry points (and backward) to count calls and time spent in them. */
async function instrumentNative(): Promise<{ counts: NativeCounts; reset: () => void }> {
  const { native } = await import("../src/engine/native.js");
  const counts: NativeCounts = { calls: 0, backward_ms: 0, native_ms: 0, longest_ms: 0 };
  const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const name of ["call", "callVoid", "backward"]) {
    const f = n[name];
    n[name] = (...a: unknown[]) => {
      const t0 = now();
      try {
        return f(...a);
      } finally {
        const ms = now() - t0;
        counts.calls++;
        counts.native_ms += ms;
        counts.longest_ms = Math.max(counts.longest_ms, ms);
        if (name === "backward") counts.backward_ms += ms;
      }
    };
  }
  const reset = () => Object.assign(counts, { calls: 0, backward_ms: 0, native_ms: 0, longest_ms: 0 });
  return { counts, reset };
}

/** One training step of an SD1.5-layout UNet at 1/10 width (bench/train.ts --quick): op count and times. */
async function sd15LayoutStep(counts: NativeCounts, reset: () => void): Promise<Record<string, number>> {
  const e = await import("../src/engine/index.js");
  const { UNet2DConditionModel, unetPresets } = await import("../src/models/unet/index.js");
  const unet = new UNet2DConditionModel({ ...unetPresets.sd15, blockOutChannels: [32, 64, 128, 128] }).train();
  const params = unet.parameters();
  const opt = new e.AdamW(params, { lr: 1e-4 });
  const step = () => {
    e.scope(() => {
      const x = e.randn([1, 4, 16, 16]);
      const ctx = e.randn([1, 77, 768]);
      const out = unet.forward(x, 500, ctx);
      out.sub(x).pow(2).mean().backward();
    });
    opt.step();
    opt.zeroGrad();
  };
  step(); // warm-up (optimizer state, allocator)
  reset();
  const t0 = now();
  step();
  const r = { ...counts, step_ms: now() - t0, params: params.length };
  unet.dispose();
  opt.dispose();
  return r;
}

/** Max gap of a 10 ms timer from a run's start event to its end, and the ms per step. */
async function holdOfRun(inChild: boolean, config: unknown): Promise<Record<string, number>> {
  const { createTrainer } = await import("../src/train/trainer.js");
  const { startTrainerProcess } = await import("../src/train/remote.js");
  // biome-ignore lint/suspicious/noExplicitAny: the config comes from the test world
  const t = inChild ? startTrainerProcess(config as any) : createTrainer(config as any);
  let last = 0;
  let on = false;
  let maxGap = 0;
  let tStart = 0;
  let firstEvent = 0;
  const t0 = now();
  const timer = setInterval(() => {
    if (!on) return;
    const n = now();
    maxGap = Math.max(maxGap, n - last);
    last = n;
  }, 10);
  let steps = 0;
  t.on((ev) => {
    firstEvent ||= now() - t0;
    if (ev.type === "start") {
      on = true;
      last = tStart = now();
    } else if (ev.type === "step") steps++;
    else if (ev.type === "end") on = false;
  });
  await t.run().finally(() => clearInterval(timer));
  return { to_first_event_ms: firstEvent, max_gap_ms: maxGap, ms_per_step: (now() - tStart) / steps, steps };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const reps = Number(argv[argv.indexOf("--reps") + 1]) || 5;
  const json = argv.includes("--json");
  const out: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, reps };
  const say = (s: string) => {
    if (!json) console.log(s);
  };
  const row = (what: string, ms: number[], unit = "ms") =>
    say(
      `${what.padEnd(58)} ${median(ms)
        .toFixed(unit === "ms" ? 1 : 2)
        .padStart(9)} ${unit}  (${ms.map((m) => m.toFixed(1)).join(" ")})`,
    );
  const rep = async (f: () => Promise<number>) => {
    const xs: number[] = [];
    for (let i = 0; i < reps; i++) xs.push(await f());
    return xs;
  };

  say("startup (median of reps, all reps in parentheses)");
  const startup: Record<string, number[]> = {
    fork_bare_node_ready: await rep(() => forkReady(SELF, ["--echo"])),
    fork_remote_child_ready: await rep(() => forkReady(REMOTE_CHILD)),
    worker_bare_ready: await rep(() => workerReady("echo")),
    worker_trainer_loaded_ready: await rep(() => workerReady("trainer")),
  };
  for (const [k, v] of Object.entries(startup)) row(k, v);
  out.startup_ms = startup;

  say("\nround trip of one step event (µs)");
  const n = 1000;
  const ipc: Record<string, number[]> = {
    child_advanced: await rep(() => childRoundTrip("advanced", n)),
    child_json: await rep(() => childRoundTrip("json", n)),
    worker_postMessage: await rep(() => workerRoundTrip(n)),
  };
  for (const [k, v] of Object.entries(ipc)) row(`${k} (${n} in a row)`, v, "µs");
  out.round_trip_us = ipc;

  say("\na tiny run (test/train/baseline-runs.ts dreambooth_prior, 10 steps)");
  const { baselineConfigs, makeBaselineWorld } = await import("../test/train/baseline-runs.js");
  const w = makeBaselineWorld();
  try {
    const c = baselineConfigs(w).dreambooth_prior;
    await holdOfRun(false, { ...c, max_steps: 1, output_dir: `${c.output_dir}-warm` }); // class images, caches
    const runs: Record<string, Record<string, number>[]> = { this_thread: [], child: [] };
    for (let i = 0; i < Math.min(reps, 3); i++) {
      for (const k of ["this_thread", "child"] as const)
        runs[k].push(await holdOfRun(k === "child", { ...c, max_steps: 10, output_dir: `${c.output_dir}-${k}${i}` }));
    }
    for (const [k, rs] of Object.entries(runs)) {
      row(
        `${k}: run() → first event`,
        rs.map((r) => r.to_first_event_ms),
      );
      row(
        `${k}: max gap of a 10 ms timer during the steps`,
        rs.map((r) => r.max_gap_ms),
      );
      row(
        `${k}: ms per step`,
        rs.map((r) => r.ms_per_step),
      );
    }
    out.tiny_run = runs;

    say("\nwhat an async addon would be priced by");
    const { counts, reset } = await instrumentNative();
    reset();
    const { createTrainer } = await import("../src/train/trainer.js");
    const t = createTrainer({ ...c, max_steps: 5, output_dir: `${c.output_dir}-count` });
    let steps = 0;
    let stepCalls = 0;
    t.on((ev) => {
      if (ev.type === "start") reset();
      if (ev.type === "step") {
        steps++;
        stepCalls = counts.calls;
      }
    });
    await t.run();
    const tiny = { calls_per_step: stepCalls / steps, longest_call_ms: counts.longest_ms };
    say(
      `tiny run: native calls per step ${tiny.calls_per_step.toFixed(0)}, longest call ${tiny.longest_call_ms.toFixed(1)} ms`,
    );
    const sd = await sd15LayoutStep(counts, reset);
    say(
      `SD1.5-layout UNet (1/10 width, 16×16 latent), AdamW: ${sd.calls} native calls per step over ${sd.params} parameters, ` +
        `step ${sd.step_ms.toFixed(0)} ms, in native calls ${sd.native_ms.toFixed(0)} ms, backward ${sd.backward_ms.toFixed(0)} ms`,
    );
    const hop = await rep(() => threadPoolHop());
    const op = await rep(() => syncOp());
    row("thread-pool hop (randomFill of 4 bytes, awaited)", hop, "µs");
    row("synchronous x.add(1) + dispose", op, "µs");
    out.async_inputs = { tiny, sd15_layout_step: sd, thread_pool_hop_us: hop, sync_op_us: op };
  } finally {
    w.dispose();
  }

  say("\nthe addon in a worker next to this thread (3 subprocesses, each: both threads 200,000 × add/dispose)");
  const races: unknown[] = [];
  for (let i = 0; i < 3; i++) {
    const child = fork(SELF, ["--race"], { stdio: ["ignore", "pipe", "inherit", "ipc"] });
    let text = "";
    child.stdout!.on("data", (d) => {
      text += d;
    });
    const [code, signal] = await new Promise<[number | null, string | null]>((r) =>
      child.on("exit", (c, s) => r([c, s])),
    );
    const r = { code, signal, ...(text.trim() ? JSON.parse(text) : {}) };
    races.push(r);
    say(JSON.stringify(r));
  }
  out.worker_race = races;
  if (json) console.log(JSON.stringify(out));
}

if (!isMainThread) await workerMain((workerData as { mode: string }).mode);
else if (process.argv.includes("--echo")) {
  process.on("message", (m) => process.send!(m));
  process.on("disconnect", () => process.exit(0));
  process.send!("ready");
} else if (process.argv.includes("--race")) await raceMain();
else await main();
