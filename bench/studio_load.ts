// The studio under load: a LoRA run on the shapes base alone, then the same
// run while CLIENTS clients poll the job (GET /api/jobs/ID every 250 ms) and
// stream its events (SSE), half each. Prints failed requests, request
// latencies and the run's median step time with and without the clients
// (the ratio is the figure: the trainer runs in its own process, so the
// server's work should cost it little). The clients run in this process,
// the studio in a child, the trainer in the studio's child.
//
// The trainer gets --threads intra-op threads (default: the studio's, every core but one: the other core
// is the server's and the clients'; with both, every request stalls libtorch's thread pool).
//
//   node dist/bench/studio_load.js [--clients 50] [--steps 30] [--threads 1] [--json]
import { type ChildProcess, spawn } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { generateSubject, writeSceneFolder } from "../src/shapes/world.js";

const { values } = parseArgs({
  options: {
    clients: { type: "string" },
    steps: { type: "string" },
    threads: { type: "string" },
    json: { type: "boolean" },
  },
});
const CLIENTS = Number(values.clients ?? 50);
const STEPS = Number(values.steps ?? 30);
const BIN = fileURLToPath(new URL("../../bin/atelier.js", import.meta.url));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)] ?? Number.NaN;

async function startServer(workspace: string): Promise<{ proc: ChildProcess; base: string }> {
  const proc = spawn(process.execPath, [BIN, "studio", "--workspace", workspace, "--port", "0"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...(values.threads ? { ATELIER_NUM_THREADS: values.threads } : {}) },
  });
  const base = await new Promise<string>((resolve, reject) => {
    let out = "";
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /open (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    proc.once("exit", (code) => reject(new Error(`the studio exited (${code}): ${out}`)));
  });
  return { proc, base };
}

async function json(base: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(new URL(path, base), {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const out = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(out)}`);
  return out;
}

async function waitDone(base: string, id: number): Promise<void> {
  for (;;) {
    const j = await json(base, "GET", `/api/jobs/${id}`);
    if (j.status === "done") return;
    if (j.status === "failed" || j.status === "cancelled") throw new Error(`job ${id}: ${j.status} ${j.error}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** Step times (ms) of a run, from the arrival times of its step events on one SSE stream. */
async function stepTimes(base: string, id: number): Promise<number[]> {
  const res = await fetch(new URL(`/api/jobs/${id}/events`, base));
  const reader = res.body!.getReader();
  const at: number[] = [];
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += new TextDecoder().decode(value);
    const frames = buf.split("\n\n");
    buf = frames.pop() ?? "";
    for (const f of frames) {
      if (f.includes("event: step\n")) at.push(performance.now());
      if (f.includes('"status":"done"') || f.includes('"status":"failed"')) {
        await reader.cancel();
        return at.slice(2).map((t, i) => t - at[i + 1]); // the first steps carry the start-up
      }
    }
  }
  return [];
}

interface Load {
  ok: number;
  failed: number;
  latencies: number[];
  stop: () => Promise<void>;
}

function clients(base: string, id: number, n: number): Load {
  const load: Load = { ok: 0, failed: 0, latencies: [], stop: async () => {} };
  let running = true;
  const tasks: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    if (i % 2 === 0) {
      tasks.push(
        (async () => {
          while (running) {
            const t0 = performance.now();
            try {
              const res = await fetch(new URL(`/api/jobs/${id}`, base));
              await res.arrayBuffer();
              if (res.ok) load.ok++;
              else load.failed++;
            } catch {
              load.failed++;
            }
            load.latencies.push(performance.now() - t0);
            await new Promise((r) => setTimeout(r, 250));
          }
        })(),
      );
    } else {
      const ac = new AbortController();
      tasks.push(
        (async () => {
          try {
            const res = await fetch(new URL(`/api/jobs/${id}/events`, base), { signal: ac.signal });
            if (!res.ok) load.failed++;
            const reader = res.body!.getReader();
            while (running) {
              const { done } = await reader.read();
              if (done) break;
            }
            load.ok++;
          } catch (e) {
            if (running) load.failed++;
            else if ((e as Error).name !== "AbortError") load.failed++;
          }
        })(),
      );
      tasks.push(
        new Promise<void>((r) => {
          const check = setInterval(() => {
            if (!running) {
              clearInterval(check);
              ac.abort();
              r();
            }
          }, 100);
        }),
      );
    }
  }
  load.stop = async () => {
    running = false;
    await Promise.all(tasks);
  };
  return load;
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "atelier-studio-load-"));
  const workspace = join(root, "workspace");
  mkdirSync(join(workspace, "datasets", "star"), { recursive: true });
  const pics = writeSceneFolder(join(root, "pictures"), generateSubject(7, 4), { captions: false });
  for (const p of pics) cpSync(p.image, join(workspace, "datasets", "star", p.image.split("/").at(-1)!));
  const { proc, base } = await startServer(workspace);
  try {
    const m = await json(base, "POST", "/api/models", { name: "shapes", source: "builtin:shapes-base" });
    await waitDone(base, m.id as number);
    const config = (name: string) => ({
      name,
      config: {
        model: "shapes",
        method: "dreambooth",
        use_lora: true,
        lora: { rank: 4 },
        max_steps: STEPS,
        resolution: 64,
        learning_rate: 1e-3,
        seed: 1,
        train_text_encoder: false,
        save: { formats: ["lora"] },
        concepts: [{ instance_data_dir: "datasets/star", instance_prompt: "a sks star" }],
      },
    });
    const quiet = (await json(base, "POST", "/api/train", config("quiet"))).id as number;
    const quietSteps = await stepTimes(base, quiet);
    const loaded = (await json(base, "POST", "/api/train", config("loaded"))).id as number;
    const load = clients(base, loaded, CLIENTS);
    const loadedSteps = await stepTimes(base, loaded);
    await load.stop();
    const figures = {
      clients: CLIENTS,
      steps: STEPS,
      requests_ok: load.ok,
      requests_failed: load.failed,
      poll_latency_ms: { median: median(load.latencies), p99: pct(load.latencies, 0.99) },
      step_ms_alone: median(quietSteps),
      step_ms_loaded: median(loadedSteps),
      ratio: median(loadedSteps) / median(quietSteps),
    };
    if (values.json) console.log(JSON.stringify(figures));
    else {
      console.log(
        `${CLIENTS} clients (half polling every 250 ms, half streaming), ${STEPS}-step LoRA runs on the shapes base`,
      );
      console.log(`requests: ${figures.requests_ok} ok, ${figures.requests_failed} failed`);
      console.log(
        `poll latency: median ${figures.poll_latency_ms.median.toFixed(1)} ms, p99 ${figures.poll_latency_ms.p99.toFixed(1)} ms`,
      );
      console.log(
        `median step: ${figures.step_ms_alone.toFixed(0)} ms alone, ${figures.step_ms_loaded.toFixed(0)} ms under load (×${figures.ratio.toFixed(3)})`,
      );
    }
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => proc.once("exit", r));
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
