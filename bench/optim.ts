// Optimizer step time: Atelier against PyTorch on the same tensors (the
// shapes below, gradients c·p + 3·cos(3p)), one thread each, the median of
// --reps steps after a first step that makes the states. The PyTorch twin is
// bench/optim_ref.py (torch.optim.AdamW, and the pure-torch re-implementations
// of scripts/record-optim-extra-reference.py for the others). Prints
// Atelier ÷ PyTorch per optimizer (lower is better).
//
//   node dist/bench/optim.js [--reps N] [--rounds N] [--python PATH]
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import {
  Adafactor,
  AdamW,
  AdamW8bit,
  add,
  cos,
  Lion,
  manualSeed,
  mul,
  type Optimizer,
  Prodigy,
  randn,
  scope,
  setNumThreads,
  type Tensor,
} from "../src/engine/index.js";
import { REPO } from "./common.js";

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1] : dflt;
};
const reps = Number(flag("reps", "9"));
const roundCount = Number(flag("rounds", "3"));
const python = flag("python", "/usr/bin/python3");
// An SD-like mix: a large linear weight, a conv kernel, a bias (about 2.4 M values).
const SHAPES = [[1280, 1280], [320, 320, 3, 3], [1280]];

setNumThreads(1);
const MAKERS: Record<string, (ps: Tensor[]) => Optimizer<{ lr: number }>> = {
  AdamW: (ps) => new AdamW(ps, { lr: 1e-3 }),
  AdamW8bit: (ps) => new AdamW8bit(ps, { lr: 1e-3 }),
  Lion: (ps) => new Lion(ps, { lr: 1e-4 }),
  Adafactor: (ps) => new Adafactor(ps),
  Prodigy: (ps) => new Prodigy(ps),
};

function timeOurs(): Record<string, number> {
  const ours: Record<string, number> = {};
  for (const [name, make] of Object.entries(MAKERS)) {
    manualSeed(0);
    const params = SHAPES.map((s) => randn(s).requiresGrad_());
    params.forEach((p, i) => {
      const g = scope(() => add(mul(p, i + 1), mul(cos(mul(p, 3)), 3)));
      p.grad = g;
      g.dispose();
    });
    const opt = make(params);
    opt.step();
    const times: number[] = [];
    for (let r = 0; r < reps; r++) {
      const t0 = process.hrtime.bigint();
      opt.step();
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    ours[name] = median(times);
    opt.dispose();
    for (const p of params) {
      p.grad = null;
      p.dispose();
    }
  }
  return ours;
}

function timeTheirs(): Record<string, number> {
  const out = execFileSync(python, [join(REPO, "bench", "optim_ref.py"), JSON.stringify(SHAPES), String(reps)], {
    encoding: "utf8",
  });
  return JSON.parse(out.trim().split("\n").pop()!) as Record<string, number>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// Rounds alternate Atelier and PyTorch, so that a change of machine load hits both; the ratio is the median of the rounds'.
const rounds: { ours: Record<string, number>; theirs: Record<string, number> }[] = [];
for (let r = 0; r < roundCount; r++) rounds.push({ ours: timeOurs(), theirs: timeTheirs() });
const values = SHAPES.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
console.log(`optimizer step, ${values} values, 1 thread, median of ${reps} steps × ${roundCount} alternating rounds`);
console.log("| optimizer | Atelier ms | PyTorch ms | ratio |");
console.log("| --- | --- | --- | --- |");
for (const name of Object.keys(MAKERS)) {
  const a = median(rounds.map((r) => r.ours[name])) * 1e3;
  const b = median(rounds.map((r) => r.theirs[name])) * 1e3;
  const ratio = median(rounds.map((r) => r.ours[name] / r.theirs[name]));
  console.log(`| ${name} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${ratio.toFixed(2)} |`);
}
