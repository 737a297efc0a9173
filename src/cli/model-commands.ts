// atelier generate | convert | inspect: flags → library calls.
import { type EmbeddingDatabase, loadEmbeddingDirs } from "../adapters/embeddings.js";
import { checkHypernetworkDirs } from "../adapters/prompt-hypernetworks.js";
import type { DType } from "../engine/index.js";
import { generateRgb } from "../infer/generate-rgb.js";
import { checkImageOut, saveImages, saveLatent } from "../infer/save-images.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { convertCheckpoint } from "../tools/convert.js";
import { formatReport, inspectFile } from "../tools/inspect.js";
import { num, oneOf, parse, required, str, UsageError } from "./args.js";
import { generateWithUpscaler, UPSCALER_FLAGS } from "./upscale-command.js";

const DTYPES: Record<string, DType> = { fp32: "float32", fp16: "float16", bf16: "bfloat16" };

export function generate(argv: string[]): number {
  const { values } = parse(
    argv,
    {
      model: { type: "string" },
      prompt: { type: "string" },
      negative: { type: "string" },
      sampler: { type: "string" },
      steps: { type: "string" },
      cfg: { type: "string" },
      seed: { type: "string" },
      width: { type: "string" },
      height: { type: "string" },
      batch: { type: "string" },
      "clip-skip": { type: "string" },
      tokenizer: { type: "string" },
      device: { type: "string" },
      out: { type: "string" },
      "save-latent": { type: "string" },
      "lora-dir": { type: "string", multiple: true },
      "embeddings-dir": { type: "string", multiple: true },
      "hypernetwork-dir": { type: "string", multiple: true },
      ...UPSCALER_FLAGS,
    },
    { min: 0, max: 0, names: "only flags" },
  );
  const modelPath = required(values, "model");
  const prompt = str(values, "prompt");
  if (prompt === undefined) throw new UsageError("--prompt is required");
  const options = {
    prompt,
    negative: str(values, "negative"),
    sampler: oneOf(values, "sampler", SAMPLER_NAMES),
    steps: num(values, "steps", { integer: true, min: 1, max: 1000 }),
    cfg: num(values, "cfg", { min: 0 }),
    seed: num(values, "seed", { integer: true, min: 0 }),
    width: num(values, "width", { integer: true, min: 8 }),
    height: num(values, "height", { integer: true, min: 8 }),
    batch: num(values, "batch", { integer: true, min: 1, max: 64 }),
    clipSkip: num(values, "clip-skip", { integer: true, min: 1 }),
    // <lora:NAME:…> tags in the prompts are applied from these folders (A1111's models/Lora)
    loraDirs: (values["lora-dir"] as unknown as string[] | undefined) ?? [],
    // <hypernet:NAME:m> tags from these folders (A1111's --hypernetwork-dir)
    hypernetworkDirs: (values["hypernetwork-dir"] as unknown as string[] | undefined) ?? [],
  };
  checkHypernetworkDirs(options.hypernetworkDirs);
  const embeddingDirs = (values["embeddings-dir"] as unknown as string[] | undefined) ?? [];
  const out = str(values, "out") ?? "atelier.png";
  checkImageOut(out);
  const latentPath = str(values, "save-latent");
  const model = loadStableDiffusion(modelPath, {
    device: str(values, "device"),
    tokenizerDir: str(values, "tokenizer"),
  });
  // the prompt's words from these folders (A1111's --embeddings-dir); a word that is a
  // vocabulary token, a file of the wrong width or an unreadable one fails the prompt using it
  let embeddings: EmbeddingDatabase | undefined;
  try {
    embeddings = embeddingDirs.length
      ? loadEmbeddingDirs(model.tokenizer, model.textEncoder.config.hiddenSize, embeddingDirs, {
          refuseWordClash: true,
        })
      : undefined;
  } catch (e) {
    disposeStableDiffusion(model);
    throw e;
  }
  const release = () => {
    embeddings?.dispose();
    disposeStableDiffusion(model);
  };
  if (str(values, "upscaler") !== undefined) {
    try {
      return generateWithUpscaler(model, values, { ...options, embeddings, onLatents: undefined }, out, latentPath);
    } finally {
      release();
    }
  }
  try {
    const started = Date.now();
    const result = generateRgb(model, {
      ...options,
      embeddings,
      // redrawn in place on a terminal; a line per step in a log
      onStep: (i, n) =>
        process.stderr.write(process.stderr.isTTY ? `\rstep ${i}/${n}${i === n ? "\n" : ""}` : `step ${i}/${n}\n`),
      onLatents: latentPath ? (latents) => saveLatent(latents, latentPath) : undefined,
    });
    const paths = saveImages(result, out, model.name);
    const s = result.settings;
    console.log(
      `seed ${s.seed}, ${s.sampler}, ${s.steps} steps, cfg ${s.cfg}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    for (const p of paths) console.log(`wrote ${p}`);
    if (latentPath) console.log(`wrote ${latentPath}`);
  } finally {
    release();
  }
  return 0;
}

export function convert(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      to: { type: "string" },
      dtype: { type: "string" },
      tokenizer: { type: "string" },
      overwrite: { type: "boolean" },
    },
    { min: 2, max: 2, names: "IN and OUT" },
  );
  const dtypeName = oneOf(values, "dtype", ["fp32", "fp16", "bf16"] as const);
  const result = convertCheckpoint(positionals[0], positionals[1], {
    to: oneOf(values, "to", ["ldm", "diffusers"] as const),
    dtype: dtypeName ? DTYPES[dtypeName] : undefined,
    tokenizerDir: str(values, "tokenizer"),
    overwrite: values.overwrite === true,
  });
  for (const n of result.notes) console.log(`note: ${n}`);
  console.log(`wrote ${positionals[1]} (${result.layout})`);
  return 0;
}

export function inspect(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    { json: { type: "boolean" }, "no-scan": { type: "boolean" } },
    { min: 1, max: 1, names: "FILE" },
  );
  const report = inspectFile(positionals[0], { scan: values["no-scan"] !== true });
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return 0;
}
