// The atelier command line: a thin shell that turns arguments into library calls.
import { cudaDeviceCount, getNumThreads, liveTensors, noGrad, randn, scope, torchVersion } from "../engine/index.js";
import { UsageError } from "./args.js";
import { demoCommand, labCommand } from "./demo-command.js";
import { evalCommand } from "./eval-command.js";
import { convert, generate, inspect } from "./model-commands.js";
import { shapesCommand } from "./shapes-commands.js";
import { studioCommand } from "./studio-command.js";
import {
  checkCommand,
  extractLoraCommand,
  loraMathCommand,
  mergeCheckpointsCommand,
  mergeLoraCommand,
  rescueCommand,
  resizeLoraCommand,
} from "./tools-commands.js";
import { checkConfigCommand, createModelCommand, modelsCommand, trainCommand } from "./train-commands.js";
import { UPSCALE_SUMMARY, upscaleCommand } from "./upscale-command.js";

interface Command {
  summary: string;
  run(args: string[]): Promise<number> | number;
}

const commands: Record<string, Command> = {
  demo: {
    summary:
      "[--out DIR] [--quick]: train a subject into the built-in shapes base (Dreambooth, LoRA), evaluate, report",
    run: demoCommand,
  },
  lab: {
    summary:
      "[--out DIR] [--only RUN,…] [--steps N] [--checkpoints STEP,…]: measure fine-tuning claims on the shapes world (docs/lab.md); --stage2 [--stage2-steps N]: Dreambooth's second stage (the ×4 upscaler) instead",
    run: labCommand,
  },
  doctor: {
    summary: "check the engine: libtorch version, devices, a forward and backward pass",
    run: () => doctor(),
  },
  generate: {
    summary:
      "text to image: --model PATH --prompt TEXT [--negative --sampler --steps --cfg --seed --width --height --batch --out] [--lora-dir DIR --embeddings-dir DIR --hypernetwork-dir DIR] [--upscaler MODEL --noise-level N --upscaler-steps N --upscaler-cfg X]",
    run: generate,
  },
  upscale: { summary: UPSCALE_SUMMARY, run: upscaleCommand },
  convert: {
    summary: "IN OUT [--to ldm|diffusers] [--dtype fp32|fp16|bf16]: convert a checkpoint",
    run: convert,
  },
  inspect: {
    summary: "FILE [--json]: what a model file holds, and problems found",
    run: inspect,
  },
  train: {
    summary: "CONFIG [--resume STATE_DIR] [--FIELD VALUE…]: train (Dreambooth, LoRA) as the config says",
    run: trainCommand,
  },
  "create-model": {
    summary:
      "NAME --from CHECKPOINT [--scheduler ddim|… --workspace DIR --tokenizer DIR --ema --overwrite]: a workspace model",
    run: createModelCommand,
  },
  models: {
    summary: "[--workspace DIR] [--json]: the workspace's models",
    run: modelsCommand,
  },
  shapes: {
    summary: "world DIR | build-base [--out DIR --quick]: the shapes world's images and its base model",
    run: shapesCommand,
  },
  eval: {
    summary:
      "[--model PATH --base PATH --lora FILE --subject TOKEN:CLASS[:COLOUR[:DOT]] --samples N --json --out FILE]: score a fine-tune (--help)",
    run: evalCommand,
  },
  "merge-lora": {
    summary:
      "CHECKPOINT OUT --lora FILE[:W]… [--to ldm|diffusers --dtype fp32|fp16|bf16 --skip-unmatched]: bake LoRAs in",
    run: mergeLoraCommand,
  },
  "lora-math": {
    summary: "OUT --lora FILE[:W]… [--mode concat|svd --rank N --conv-rank N]: several LoRAs into one",
    run: loraMathCommand,
  },
  "extract-lora": {
    summary:
      "BASE TUNED OUT [--dim N --conv-dim N --clamp-quantile Q --min-diff D]: a LoRA by SVD (no clamp by default: the best rank-N fit; --clamp-quantile 0.99 is kohya's)",
    run: extractLoraCommand,
  },
  "resize-lora": {
    summary: "IN OUT --rank N [--conv-rank N --dynamic sv_ratio|sv_fro|sv_cumulative --param X]: lower a LoRA's rank",
    run: resizeLoraCommand,
  },
  "merge-checkpoints": {
    summary:
      "A OUT [--b B --c C --mode weighted_sum|add_difference|none --multiplier M --bake-vae VAE]: A1111's merger",
    run: mergeCheckpointsCommand,
  },
  rescue: {
    summary: "IN OUT: any adapter file Atelier reads → a kohya LoRA (+ embeddings split out)",
    run: rescueCommand,
  },
  check: {
    summary: "FILE [--json]: which of A1111, Forge, ComfyUI, diffusers, kohya load an adapter, and what each drops",
    run: checkCommand,
  },
  studio: {
    summary: "[--workspace DIR] [--port N] [--host H] [--token T]: the web studio (pages, JSON API, job queue)",
    run: studioCommand,
  },
  "check-config": {
    summary: "[CONFIG] [--FIELD VALUE…]: check a training config and print it resolved (--help: the fields)",
    run: checkConfigCommand,
  },
};

function doctor(): number {
  const before = liveTensors();
  const gradNorm = scope(() => {
    const w = randn([64, 64]).requiresGrad_();
    const x = randn([8, 64]);
    const loss = x.matmul(w).tanh().square().mean();
    loss.backward();
    const g = w.grad;
    return noGrad(() => (g ? g.norm().item() : Number.NaN));
  });
  const ok = Number.isFinite(gradNorm) && gradNorm > 0 && liveTensors() === before;
  console.log(`libtorch      ${torchVersion()}`);
  console.log(`cpu threads   ${getNumThreads()}`);
  console.log(`cuda devices  ${cudaDeviceCount()}`);
  console.log(`autograd      ${ok ? "ok" : "FAILED"} (gradient norm ${gradNorm.toFixed(4)})`);
  return ok ? 0 : 1;
}

function usage(): string {
  const rows = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`);
  return ["usage: atelier <command> [options]", "", "commands:", ...rows].join("\n");
}

export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    console.error(`atelier: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    console.error(`atelier ${name}: ${e instanceof Error ? e.message : String(e)}`);
    return e instanceof UsageError ? 2 : 1;
  }
}
