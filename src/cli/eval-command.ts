// atelier eval: flags → subjects and models → evaluate() → a table or JSON.
// Usage mistakes (bad flags, bad subject specs) exit 2 and name the flag;
// everything that needs a file is checked before the slow model loading.
import { existsSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { evaluate, reportJson } from "../eval/evaluate.js";
import {
  defaultSubject,
  type EvalSubject,
  parseSubjectSpec,
  resolveSubject,
  type SubjectSpec,
  SubjectSpecError,
  signatureFromImages,
} from "../eval/subject.js";
import { formatEvalTable } from "../eval/table.js";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { disposeStableDiffusion, loadStableDiffusion, type StableDiffusion } from "../models/stable-diffusion.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { shapesBasePath } from "../shapes/base-path.js";
import { num, oneOf, parse, str, UsageError } from "./args.js";

export const EVAL_USAGE = `usage: atelier eval [--model PATH] [--base PATH] [--lora FILE [--lora-scale X]]
                   [--subject TOKEN:CLASS[:COLOUR[:DOT]] ...] [--instance-dir DIR]
                   [--samples N] [--seed N] [--steps N] [--cfg X] [--sampler NAME] [--batch N]
                   [--width N] [--height N] [--device DEV] [--tokenizer DIR] [--json] [--out FILE]

Samples fixed seeds from the evaluated model and the base model and scores
identity, class preservation, prompt following and bleed (docs/eval.md).
  --model PATH     the model to evaluate (default: the base model)
  --base PATH      the base model (default: the built-in shapes base, ${shapesBasePath()})
  --lora FILE      evaluate --model with this LoRA attached (--lora-scale, default 1)
  --subject SPEC   e.g. sks:star:yellow:red (repeatable; default: the built-in subject as sks)
  --instance-dir   instance images; what a --subject spec leaves out is read from them
  --samples N      per prompt (default 16); --seed (1000), --steps (20), --sampler (ddim), --cfg (5)
  --batch N        samples at once (default min(samples, 8)); --width/--height: the model's own size
  --json           print the report as JSON; --out FILE also writes it there`;

const FLAGS = {
  model: { type: "string" },
  base: { type: "string" },
  lora: { type: "string" },
  "lora-scale": { type: "string" },
  subject: { type: "string", multiple: true },
  "instance-dir": { type: "string" },
  samples: { type: "string" },
  seed: { type: "string" },
  steps: { type: "string" },
  cfg: { type: "string" },
  sampler: { type: "string" },
  batch: { type: "string" },
  width: { type: "string" },
  height: { type: "string" },
  device: { type: "string" },
  tokenizer: { type: "string" },
  json: { type: "boolean" },
  out: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** The subjects the flags name; a bad spec is a usage error that names --subject. */
async function subjectsOf(specs: readonly string[], instanceDir: string | undefined): Promise<EvalSubject[]> {
  let parsed: SubjectSpec[];
  try {
    parsed = specs.map(parseSubjectSpec);
  } catch (e) {
    throw new UsageError(`--subject: ${(e as Error).message}`);
  }
  if (!instanceDir) return parsed.length ? parsed.map((s) => usage(() => resolveSubject(s))) : [defaultSubject()];
  if (parsed.length > 1) throw new UsageError("--instance-dir goes with one --subject, not several");
  if (!existsSync(instanceDir) || !statSync(instanceDir).isDirectory())
    throw new UsageError(`--instance-dir: ${instanceDir} is not a folder`);
  const images = await signatureFromImages(instanceDir);
  // Without a spec the images say everything, under the usual token.
  const spec = parsed[0] ?? { token: "sks", className: images.signature.shape };
  return [resolveSubject(spec, images, instanceDir)];
}

function usage<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof SubjectSpecError) throw new UsageError(`--subject: ${e.message}`);
    throw e;
  }
}

function mustExist(path: string, what: string, hint = ""): void {
  if (!existsSync(path)) throw new Error(`${what} ${path} does not exist${hint}`);
}

export async function evalCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, FLAGS, { min: 0, max: 0, names: "only flags" });
  if (values.help) {
    console.log(EVAL_USAGE);
    return 0;
  }
  const options = {
    samples: num(values, "samples", { integer: true, min: 1, max: 10000 }),
    seed: num(values, "seed", { integer: true, min: 0 }),
    steps: num(values, "steps", { integer: true, min: 1, max: 1000 }),
    cfg: num(values, "cfg", { min: 0 }),
    sampler: oneOf(values, "sampler", SAMPLER_NAMES),
    batch: num(values, "batch", { integer: true, min: 1, max: 64 }),
    width: num(values, "width", { integer: true, min: 8 }),
    height: num(values, "height", { integer: true, min: 8 }),
  };
  const loraPath = str(values, "lora");
  const loraScale = num(values, "lora-scale");
  if (loraScale !== undefined && loraPath === undefined) throw new UsageError("--lora-scale needs --lora FILE");
  const out = str(values, "out");
  if (out !== undefined && (out === "" || !existsSync(dirname(resolve(out)))))
    throw new UsageError(`--out: the folder of '${out}' does not exist`);
  const subjects = await subjectsOf(
    (values.subject as unknown as string[] | undefined) ?? [],
    str(values, "instance-dir"),
  );

  // Every path is checked before any model is loaded (loading takes a while).
  const basePath = str(values, "base") ?? shapesBasePath();
  mustExist(
    basePath,
    "the base model",
    values.base === undefined
      ? " (the built-in shapes base; build it with `atelier shapes build-base`, or give --base PATH)"
      : "",
  );
  const modelPath = str(values, "model") ?? basePath;
  mustExist(modelPath, "the model (--model)");
  if (loraPath !== undefined) mustExist(loraPath, "the LoRA file (--lora)");
  const same = resolve(modelPath) === resolve(basePath);
  if (same && loraPath === undefined)
    console.error(
      `note: evaluating the base model ${basePath} against itself (give --model or --lora for a fine-tune)`,
    );

  const load = { device: str(values, "device"), tokenizerDir: str(values, "tokenizer") };
  const base = loadStableDiffusion(basePath, load);
  let model: StableDiffusion = base;
  try {
    if (!same) model = loadStableDiffusion(modelPath, load);
    const report = evaluate({
      model,
      base,
      subjects,
      lora: loraPath !== undefined ? { path: loraPath, scale: loraScale ?? 1 } : undefined,
      options: {
        ...options,
        onProgress: (i, n, what) =>
          // A terminal gets one line rewritten in place; a log gets a line per batch.
          process.stderr.write(
            process.stderr.isTTY ? `\r\x1b[K[${i}/${n}] ${what}${i === n ? "\n" : ""}` : `[${i}/${n}] ${what}\n`,
          ),
      },
      names: { model: modelPath, base: basePath },
    });
    const json = reportJson(report);
    console.log(values.json ? json.trimEnd() : formatEvalTable(report));
    if (out !== undefined) {
      writeTextAtomic(out, json);
      // stdout stays pure JSON under --json.
      (values.json ? console.error : console.log)(`wrote ${out}`);
    }
  } finally {
    if (model !== base) disposeStableDiffusion(model);
    disposeStableDiffusion(base);
  }
  return 0;
}
