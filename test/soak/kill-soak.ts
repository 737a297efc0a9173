// The kill soak: `atelier train` SIGKILLed at random moments (during class
// images, steps, saves, sample grids), resumed each time from the newest
// state its manifest lists; after every kill every file the manifest lists
// must load, and the final weights must equal an uninterrupted run's.
// `node dist/test/soak/kill-soak.js [--kills N] [--seed S]` runs it long;
// kill-soak.test.ts runs a short one.
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { loadImage } from "../../src/train/data/image.js";
import { readStateInfo } from "../../src/train/state.js";
import { repoRoot, sharedFixture } from "../helpers.js";
import { makeBaselineWorld } from "../train/baseline-runs.js";

export interface SoakReport {
  kills: number;
  /** What each kill interrupted, as the run's own output last said. */
  phases: Record<string, number>;
  /** Files the manifest listed after a kill that did not load (must be 0). */
  corrupt: string[];
  resumes: number;
  /** Whether the final weights equal the uninterrupted run's, bit for bit. */
  identical: boolean;
  seconds: number;
}

const bin = join(repoRoot, "bin", "atelier.js");

/** Runs `atelier train`; resolves with its exit, or kills it after `killAfterMs`. */
function trainProcess(args: string[], killAfterMs: number | null) {
  const child = spawn(process.execPath, [bin, "train", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d) => {
    out += String(d);
  });
  child.stderr.on("data", (d) => {
    out += String(d);
  });
  const timer = killAfterMs === null ? null : setTimeout(() => child.kill("SIGKILL"), killAfterMs);
  return new Promise<{ code: number | null; signal: string | null; out: string }>((resolve) =>
    child.on("exit", (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, out });
    }),
  );
}

/** Where the killed run was, from what it left: half-written files, class images, loss-log lines. */
function phaseOf(dir: string, classDir: string, classWanted: number): string {
  const temps = existsSync(dir)
    ? readdirSync(dir, { recursive: true })
        .map(String)
        .filter((f) => f.includes(".tmp-"))
    : [];
  if (temps.some((f) => f.startsWith("samples"))) return "sample grid";
  if (temps.length) return "save";
  const classImages = existsSync(classDir) ? readdirSync(classDir).filter((f) => f.endsWith(".png")).length : 0;
  if (classImages < classWanted) return "class images";
  const log = join(dir, "logs", "loss.jsonl");
  return existsSync(log) && readFileSync(log, "utf8").trim() ? "steps" : "start-up";
}

/** Every file the manifest lists loads (safetensors, states, PNGs, JSON); returns those that do not. */
export async function checkListedFiles(dir: string): Promise<string[]> {
  const bad: string[] = [];
  const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as {
    artifacts: { path: string; kind: string }[];
  };
  for (const a of manifest.artifacts) {
    const p = join(dir, a.path);
    try {
      if (!existsSync(p)) throw new Error("listed but missing");
      if (a.kind === "state") {
        readStateInfo(p);
        for (const f of ["weights", "optimizer", "rng"]) {
          for (const t of loadSafetensors(join(p, `${f}.safetensors`)).tensors.values()) t.dispose();
        }
      } else if (p.endsWith(".safetensors")) {
        for (const t of loadSafetensors(p).tensors.values()) t.dispose();
      } else if (p.endsWith(".png")) await loadImage(p);
      else if (p.endsWith(".json")) JSON.parse(readFileSync(p, "utf8"));
      else if (a.kind === "log") for (const l of readFileSync(p, "utf8").split("\n").filter(Boolean)) JSON.parse(l);
      else if (!statSync(p)) throw new Error("unreadable");
    } catch (e) {
      bad.push(`${a.path}: ${(e as Error).message}`);
    }
  }
  return bad;
}

function sameTensors(a: string, b: string): boolean {
  const x = loadSafetensors(a).tensors;
  const y = loadSafetensors(b).tensors;
  try {
    if (x.size !== y.size) return false;
    for (const [k, t] of x) {
      const u = y.get(k);
      if (!u || JSON.stringify(u.toArray()) !== JSON.stringify(t.toArray())) return false;
    }
    return true;
  } finally {
    for (const m of [x, y]) for (const t of m.values()) t.dispose();
  }
}

/** A small deterministic generator for the kill moments. */
function lcg(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export async function runKillSoak(o: { kills: number; seed?: number; steps?: number; log?: (m: string) => void }) {
  const started = Date.now();
  const log = o.log ?? (() => {});
  const w = makeBaselineWorld();
  try {
    const config = (name: string) => {
      const file = join(w.root, `${name}.json`);
      writeFileSync(
        file,
        JSON.stringify({
          model: w.ckpt,
          tokenizer: sharedFixture("tokenizer"),
          output_dir: join(w.root, name),
          method: "dreambooth",
          resolution: 32,
          max_steps: o.steps ?? 12,
          seed: 3,
          train_text_encoder: false,
          prior_loss_weight: 0.5,
          concepts: [
            {
              instance_data_dir: w.instanceDir,
              instance_prompt: "a sks square",
              class_data_dir: join(w.root, `${name}-class`),
              class_prompt: "a square",
              num_class_images: 4,
              class_infer_steps: 4,
            },
          ],
          save: { formats: ["ldm_safetensors"], every_n_steps: 1, keep_last: 2, state: true },
          sample: { prompts: ["a sks square"], steps: 2, every_n_steps: 3 },
        }),
      );
      return { file, dir: join(w.root, name) };
    };
    const ref = config("reference");
    const t0 = Date.now();
    const whole = await trainProcess([ref.file], null);
    if (whole.code !== 0) throw new Error(`the uninterrupted run failed: ${whole.out}`);
    const runMs = Date.now() - t0;
    log(`uninterrupted run: ${runMs} ms`);

    const soak = config("soaked");
    const random = lcg(o.seed ?? 1);
    const report: SoakReport = { kills: 0, phases: {}, corrupt: [], resumes: 0, identical: false, seconds: 0 };
    const lastStep = o.steps ?? 12;
    const newestState = () => {
      if (!existsSync(join(soak.dir, "manifest.json"))) return null;
      const m = JSON.parse(readFileSync(join(soak.dir, "manifest.json"), "utf8")) as {
        artifacts: { path: string; kind: string; step: number }[];
      };
      return m.artifacts.filter((a) => a.kind === "state").sort((a, b) => b.step - a.step)[0] ?? null;
    };
    const resumeArgs = () => {
      const s = newestState();
      return s ? ["--resume", join(soak.dir, s.path)] : [];
    };
    /** Killed after its final state: the run is complete (its model is written before that state). */
    const complete = () => (newestState()?.step ?? -1) >= lastStep;
    const startOver = () => {
      for (const f of readdirSync(w.root))
        if (f.startsWith("soaked")) rmSync(join(w.root, f), { recursive: true, force: true });
      config("soaked");
    };
    while (report.kills < o.kills) {
      if (complete()) startOver(); // so that every kill interrupts a run
      const args = [soak.file, ...resumeArgs()];
      if (args.length > 1) report.resumes++;
      // Node and libtorch take the first ~30 % of a short run: kill later than that, mostly.
      const r = await trainProcess(args, Math.floor((0.25 + 0.75 * random()) * runMs));
      if (r.signal === "SIGKILL") {
        report.kills++;
        const phase = phaseOf(soak.dir, `${soak.dir}-class`, 4);
        report.phases[phase] = (report.phases[phase] ?? 0) + 1;
        if (existsSync(join(soak.dir, "manifest.json"))) report.corrupt.push(...(await checkListedFiles(soak.dir)));
        log(`kill ${report.kills} (${phase})`);
      } else if (r.code === 0) {
        // finished before the kill came: start over so that every kill interrupts a run
        log("a run finished before its kill; starting the soaked run over");
        startOver();
      } else throw new Error(`the soaked run failed (exit ${r.code}): ${r.out}`);
    }
    if (!complete()) {
      const last = await trainProcess([soak.file, ...resumeArgs()], null);
      if (last.code !== 0) throw new Error(`the last resume failed: ${last.out}`);
      report.resumes++;
    }
    report.corrupt.push(...(await checkListedFiles(soak.dir)));
    report.identical = sameTensors(join(ref.dir, "model.safetensors"), join(soak.dir, "model.safetensors"));
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    w.dispose();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name: string, dflt: number) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : dflt;
  };
  const r = await runKillSoak({ kills: arg("kills", 20), seed: arg("seed", 1), log: (m) => console.error(m) });
  console.log(JSON.stringify(r, null, 2));
  process.exitCode = r.corrupt.length === 0 && r.identical ? 0 : 1;
}
