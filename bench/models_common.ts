// Shared pieces of bench/models.ts and bench/models_load.ts: their exit,
// per-run measurements (wall clock, process CPU time, page faults), result rows.
// What all three benchmarks share is in bench/common.ts.
import { loadavg } from "node:os";
import { join } from "node:path";
import { type Fail, failer, median, REPO } from "./common.js";

export const FIXTURES = join(REPO, "..", "shared", "fixtures");

export const fail: Fail = failer("bench/models");

export const load1 = () => loadavg()[0].toFixed(2);

/** One timed run: wall clock, process CPU time (user + system, all threads), minor page faults. */
export interface Measured {
  ms: number;
  cpu_ms: number;
  faults: number;
}

/** Starts a measurement; call the result to read it (as Meter in models_ref.py). */
export function meter(): () => Measured {
  const [t, cpu, faults] = [performance.now(), process.cpuUsage(), process.resourceUsage().minorPageFault];
  return () => {
    const d = process.cpuUsage(cpu);
    return {
      ms: performance.now() - t,
      cpu_ms: (d.user + d.system) / 1e3,
      faults: process.resourceUsage().minorPageFault - faults,
    };
  };
}

export interface Row {
  key: string;
  label: string;
  /** Medians of the runs. */
  atelier_ms: number;
  pytorch_ms: number;
  /** Atelier ÷ PyTorch of the wall-clock medians. */
  ratio: number;
  /** The same on process CPU time, which leaves out the time other processes hold the CPU. */
  cpu_ratio: number;
  atelier_runs: Measured[];
  pytorch_runs: Measured[];
  notes: string[];
}

export function row(key: string, label: string, a: Measured[], p: Measured[]): Row {
  const m = (rs: Measured[], k: keyof Measured) => median(rs.map((r) => r[k]));
  const [am, pm] = [m(a, "ms"), m(p, "ms")];
  const cpu = m(a, "cpu_ms") / m(p, "cpu_ms");
  return {
    key,
    label,
    atelier_ms: am,
    pytorch_ms: pm,
    ratio: am / pm,
    cpu_ratio: cpu,
    atelier_runs: a,
    pytorch_runs: p,
    notes: [],
  };
}

export const faultsNote = (a: Measured[], p: Measured[]) =>
  `minor page faults per run: Atelier ${median(a.map((r) => r.faults)).toFixed(0)}, PyTorch ${median(p.map((r) => r.faults)).toFixed(0)}`;
