// `atelier demo`: trains a subject into the built-in shapes base with
// Dreambooth and LoRA, evaluates both and writes an HTML report.
import { resolve } from "node:path";
import { runDemo } from "../demo/demo.js";
import { runLab } from "../demo/lab.js";
import { runUpscalerLab } from "../demo/lab-upscaler.js";
import { num, parse, str, UsageError } from "./args.js";

const FLAGS = {
  out: { type: "string" },
  base: { type: "string" },
  quick: { type: "boolean" },
  steps: { type: "string" },
  samples: { type: "string" },
} as const;

const NO_POSITIONALS = { min: 0, max: 0, names: "no arguments (flags only)" };

export async function demoCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, FLAGS, NO_POSITIONALS);
  const out = resolve(str(values, "out") ?? "atelier-demo");
  const r = await runDemo({
    out,
    base: str(values, "base"),
    quick: values.quick === true,
    steps: num(values, "steps", { integer: true, min: 1, max: 100000 }),
    samples: num(values, "samples", { integer: true, min: 1, max: 1000 }),
    log: (line) => console.error(line),
  });
  const fmt = (x: number | null) => (x === null ? "–" : x.toFixed(2));
  console.log("model        identity  class_pres.  prompt_following");
  for (const [name, s] of Object.entries(r.scores)) {
    console.log(
      `${name.padEnd(12)} ${fmt(s.identity).padStart(8)}  ${fmt(s.class_preservation).padStart(11)}  ${fmt(s.prompt_following).padStart(16)}`,
    );
  }
  console.log(`\nreport: ${r.report}\neval:   ${r.evalJson}\n(${(r.seconds / 60).toFixed(1)} min)`);
  return 0;
}

export async function labCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...FLAGS,
      only: { type: "string" },
      checkpoints: { type: "string" },
      stage2: { type: "boolean" },
      "stage2-steps": { type: "string" },
      upscaler: { type: "string" },
    },
    NO_POSITIONALS,
  );
  const out = resolve(str(values, "out") ?? "atelier-lab");
  const steps = num(values, "steps", { integer: true, min: 1, max: 100000 });
  const samples = num(values, "samples", { integer: true, min: 1, max: 1000 });
  if (!values.stage2) {
    for (const flag of ["stage2-steps", "upscaler"] as const)
      if (values[flag] !== undefined) throw new UsageError(`--${flag} goes with --stage2`);
  } else {
    for (const flag of ["only", "checkpoints"] as const)
      if (values[flag] !== undefined) throw new UsageError(`--${flag} is not a flag of lab --stage2`);
    const r = await runUpscalerLab({
      out,
      base: str(values, "base"),
      upscaler: str(values, "upscaler"),
      quick: values.quick === true,
      steps,
      samples,
      stage2Steps: num(values, "stage2-steps", { integer: true, min: 1, max: 100000 }),
      log: (line) => console.error(line),
    });
    console.log(r.table);
    return 0;
  }
  const checkpoints = str(values, "checkpoints")
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      if (!/^[1-9][0-9]*$/.test(s))
        throw new UsageError(`--checkpoints must be steps (integers >= 1) separated by commas, not '${s}'`);
      return Number(s);
    });
  const only = str(values, "only")
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const r = await runLab({
    out,
    base: str(values, "base"),
    quick: values.quick === true,
    steps,
    samples,
    only,
    checkpoints,
    log: (line) => console.error(line),
  });
  console.log(r.table);
  return 0;
}
