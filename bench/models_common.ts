// Shared pieces of bench/models.ts and bench/models_load.ts: exits, medians,
// per-run measurements (wall clock, process CPU time, page faults), result rows.
import { loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../", import.meta.url));
export const FIXTURES = join(REPO, "..", "shared", "fixtures");

export function fail(message: string, code = 2): never {
  console.error(`bench/models: ${message}`);
  process.exit(code);
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** Peak resident set of this process so far, MiB (getrusage ru_maxrss). */
export const maxRssMb = () => process.resourceUsage().maxRSS / 1024;
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
