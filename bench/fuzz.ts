// The long fuzz run (the short one is test/fuzz/fuzz.test.ts): each target in
// a child process that records which case it is on, so that a case that never
// returns is killed after a minute and one that kills the process (an abort,
// the OOM killer) is named; the run then goes on from the next case.
//
//   node dist/bench/fuzz.js [--cases N] [--seed S] [--target NAME|all] [--jobs J] [--budget SECONDS] [--out FILE]
//   (--budget: wall seconds per target; a target stops at N cases or then, whichever comes first)
//   node dist/bench/fuzz.js --target NAME --seed S --case I [--dump FILE]   (rerun one case, save its input)
//   (--profile ci: the CI test's smaller cases, to rerun one that test reports)
//
// Prints per target: cases, crashes, hangs (> 5 s), big allocations (> 1 GB
// growth), leaks, accepted-invalid and rejected-valid (safetensors, against
// the reference built from the Rust crate's rules), slowest case.
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runCase } from "../test/fuzz/harness.js";
import { caseInput, details, emptyTally, fuzz, merge, type Tally, table } from "../test/fuzz/tally.js";
import { makeTarget, TARGET_NAMES, type TargetName } from "../test/fuzz/targets/index.js";

/** A case still running after this long is killed (and counted as a hang). */
const KILL_MS = 60_000;

interface Args {
  cases: number;
  seed: number;
  targets: TargetName[];
  jobs: number;
  budgetS: number;
  out?: string;
  child: boolean;
  from: number;
  skip: Set<number>;
  /** The child's state file: the case it is on, and the counts so far. */
  state?: string;
  deadline: number;
  caseIndex?: number;
  dump?: string;
  /** "long" (the default) or "ci", the CI test's smaller cases (to rerun one of them). */
  profile: "ci" | "long";
}

function parseArgs(argv: string[]): Args {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, dflt: number) => {
    const v = get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (Number.isNaN(n)) throw new Error(`--${name} must be a number, got '${v}'`);
    return n;
  };
  const target = get("target") ?? "all";
  const targets = target === "all" ? TARGET_NAMES : (target.split(",") as TargetName[]);
  for (const t of targets) {
    if (!TARGET_NAMES.includes(t)) throw new Error(`unknown target '${t}' (targets: ${TARGET_NAMES.join(", ")}, all)`);
  }
  return {
    cases: num("cases", 100_000),
    seed: num("seed", 1),
    targets,
    jobs: num("jobs", 1),
    budgetS: num("budget", Number.POSITIVE_INFINITY),
    out: get("out"),
    child: argv.includes("--child"),
    from: num("from", 0),
    skip: new Set((get("skip") ?? "").split(",").filter(Boolean).map(Number)),
    state: get("state"),
    deadline: num("deadline", Number.POSITIVE_INFINITY),
    caseIndex: get("case") === undefined ? undefined : num("case", 0),
    dump: get("dump"),
    profile: get("profile") === "ci" ? "ci" : "long",
  };
}

const scratch = () => mkdtempSync(join(tmpdir(), "atelier-fuzz-"));

/** What a child leaves in its state file: the counts of the cases before `next`, and the case it is on. */
interface ChildState {
  tally: Tally;
  next: number;
  current: number;
  done: boolean;
}

/** In the child: run cases [from, cases) until the deadline, keeping the state file current. */
function child(a: Args): void {
  const name = a.targets[0];
  const dir = scratch();
  const target = makeTarget(name, { dir, profile: a.profile });
  const file = a.state!;
  const progress = openSync(`${file}.current`, "w");
  let saved = 0;
  const save = (t: Tally, next: number, done: boolean) => {
    writeFileSync(`${file}.tmp`, JSON.stringify({ tally: t, next, current: next, done } satisfies ChildState));
    renameSync(`${file}.tmp`, file);
    saved = Date.now();
  };
  let next = a.from;
  const t = fuzz(target, {
    seed: a.seed,
    from: a.from,
    to: a.cases,
    skip: a.skip,
    until: a.deadline,
    beforeCase: (i) => {
      writeSync(progress, `${i}`.padEnd(16), 0);
    },
    afterCase: (r, tally) => {
      next = r.index + 1;
      if (Date.now() - saved > 2000) save(tally, next, false);
    },
  });
  closeSync(progress);
  save(t, Date.now() > a.deadline ? next : a.cases, true);
  rmSync(dir, { recursive: true, force: true });
}

/** One case again, its input saved: for writing up what a run found. */
function oneCase(a: Args): void {
  const name = a.targets[0];
  const dir = scratch();
  const target = makeTarget(name, { dir, profile: a.profile });
  const input = caseInput(target, target.seeds(), a.seed, a.caseIndex ?? 0);
  if (a.dump) writeFileSync(a.dump, target.toBytes(input));
  const r = runCase(target, input, a.caseIndex ?? 0);
  console.log(JSON.stringify({ ...r, outcome: r.outcome && { ...r.outcome, thrown: undefined } }, null, 2));
  rmSync(dir, { recursive: true, force: true });
}

function readState(file: string): ChildState | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as ChildState;
  } catch {
    return undefined;
  }
}

/** In the parent: one target through as many child processes as it takes. */
async function runTarget(a: Args, name: TargetName, deadline: number): Promise<Tally> {
  const dir = scratch();
  const state = join(dir, "state");
  let total = emptyTally(name, makeTarget(name, { dir, profile: "long" }).hasReference);
  let from = 0;
  const skip = new Set<number>();
  let fruitless = 0;
  while (from < a.cases && Date.now() < deadline) {
    rmSync(state, { force: true });
    const args = [fileURLToPath(import.meta.url), "--child", "--target", name, "--seed", String(a.seed), "--from"];
    args.push(String(from), "--cases", String(a.cases), "--state", state, "--deadline", String(deadline));
    args.push("--profile", a.profile);
    if (skip.size) args.push("--skip", [...skip].join(","));
    const proc = spawn(process.execPath, args, { stdio: ["ignore", "inherit", "inherit"] });
    const { killed, code } = await watch(proc, `${state}.current`);
    const s = readState(state);
    if (s) total = merge(total, s.tally);
    if (s?.done) {
      from = s.next;
      break;
    }
    fruitless = s && s.tally.cases > 0 ? 0 : fruitless + 1;
    if (fruitless >= 3) throw new Error(`${name}: the child process dies before running a case (${code})`);
    // The case on which the child stopped never returned, or took the process down: count it, skip it, go on
    // from the first case whose counts were not saved.
    let at = from;
    try {
      at = Number(readFileSync(`${state}.current`, "utf8").trim() || from);
    } catch {}
    const lost = emptyTally(name, total.hasReference);
    lost.cases = 1;
    const kind = killed ? "hang" : `crash: process died (${code})`;
    if (killed) lost.hangs = 1;
    else {
      lost.crashes = 1;
      lost.byKind[kind] = 1;
    }
    lost.examples[kind] = [{ index: at, what: killed ? `killed after ${KILL_MS / 1000} s` : code }];
    total = merge(total, lost);
    skip.add(at);
    from = s ? s.next : from;
  }
  rmSync(dir, { recursive: true, force: true });
  return total;
}

function watch(proc: ChildProcess, current: string): Promise<{ killed: boolean; code: string }> {
  return new Promise((done) => {
    let last = "";
    let since = Date.now();
    let killed = false;
    const timer = setInterval(() => {
      let now = "";
      try {
        now = readFileSync(current, "utf8");
      } catch {}
      if (now !== last) [last, since] = [now, Date.now()];
      else if (Date.now() - since > KILL_MS) {
        killed = true;
        proc.kill("SIGKILL");
      }
    }, 1000);
    proc.on("exit", (code, signal) => {
      clearInterval(timer);
      done({ killed, code: signal ?? `exit ${code}` });
    });
  });
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  if (a.child) return child(a);
  if (a.caseIndex !== undefined) return oneCase(a);
  const started = Date.now();
  const queue = [...a.targets];
  const results = new Map<TargetName, Tally>();
  const worker = async () => {
    for (let name = queue.shift(); name; name = queue.shift()) {
      const t0 = Date.now();
      results.set(name, await runTarget(a, name, t0 + a.budgetS * 1000));
      console.error(`${name}: ${results.get(name)?.cases} cases in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, a.jobs) }, worker));
  const tallies = a.targets.map((n) => results.get(n)!);
  console.log(
    `seed ${a.seed}, ${((Date.now() - started) / 1000).toFixed(0)} s\n\n${table(tallies)}\n\n${details(tallies)}`,
  );
  if (a.out) writeFileSync(a.out, JSON.stringify(tallies, null, 2));
}

await main();
