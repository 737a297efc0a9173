// atelier train | create-model | models | check-config: flags → training, workspace and config calls.

import type { PredictionType } from "../formats/checkpoint.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { ConfigError, configToJson, describeConfig, loadTrainConfig } from "../train/config.js";
import { train } from "../train/trainer.js";
import { checkModelName, createModel, defaultWorkspace, listModels, WorkspaceError } from "../train/workspace.js";
import { oneOf, parse, required, str, UsageError } from "./args.js";

export function createModelCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    {
      from: { type: "string" },
      scheduler: { type: "string" },
      workspace: { type: "string" },
      tokenizer: { type: "string" },
      "prediction-type": { type: "string" },
      ema: { type: "boolean" },
      overwrite: { type: "boolean" },
    },
    { min: 1, max: 1, names: "NAME" },
  );
  const name = positionals[0];
  try {
    checkModelName(name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const from = required(values, "from");
  const workspace = str(values, "workspace") ?? defaultWorkspace();
  const model = createModel(name, {
    from,
    workspace,
    scheduler: oneOf(values, "scheduler", SAMPLER_NAMES),
    tokenizer: str(values, "tokenizer"),
    predictionType: oneOf(values, "prediction-type", ["epsilon", "v_prediction"] as const) as
      | PredictionType
      | undefined,
    ema: values.ema === true,
    overwrite: values.overwrite === true,
  });
  const a = model.meta.architecture;
  for (const n of a.notes) console.log(`note: ${n}`);
  console.log(`created ${model.name} in ${workspace}`);
  console.log(
    `  ${a.version}, ${a.prediction_type}${a.inpainting ? ", inpainting" : ""}, scheduler ${model.meta.scheduler}`,
  );
  console.log(`  weights ${model.weights}`);
  console.log(`  source  ${model.meta.source.path} (sha256 ${model.meta.source.sha256.slice(0, 10)})`);
  return 0;
}

export function modelsCommand(argv: string[]): number {
  const { values } = parse(
    argv,
    { workspace: { type: "string" }, json: { type: "boolean" } },
    { min: 0, max: 0, names: "only flags" },
  );
  const workspace = str(values, "workspace") ?? defaultWorkspace();
  const { models, problems } = listModels(workspace);
  for (const p of problems) console.error(`warning: ${p}`);
  if (values.json) {
    console.log(
      JSON.stringify(
        models.map((m) => ({ ...m.meta, dir: m.dir, weights: m.weights })),
        null,
        2,
      ),
    );
    return 0;
  }
  if (models.length === 0) {
    console.log(`no models in ${workspace} (make one with: atelier create-model NAME --from CHECKPOINT)`);
    return 0;
  }
  const width = Math.max(4, ...models.map((m) => m.name.length)) + 2;
  console.log(`${"name".padEnd(width)}${"arch".padEnd(18)}${"scheduler".padEnd(17)}${"created".padEnd(22)}source`);
  for (const m of models) {
    const a = m.meta.architecture;
    console.log(
      `${m.name.padEnd(width)}${`${a.version} ${a.prediction_type}`.padEnd(18)}${m.meta.scheduler.padEnd(17)}` +
        `${m.meta.created.slice(0, 19).replace("T", " ").padEnd(22)}${m.meta.source.path}`,
    );
  }
  return 0;
}

/** `atelier check-config [CONFIG] [--FIELD VALUE…]`: the resolved config, or the first error. */
export function checkConfigCommand(argv: string[]): number {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(`usage: atelier check-config [CONFIG.toml|CONFIG.json] [--FIELD VALUE…]\n\n${describeConfig()}`);
    return 0;
  }
  const file = argv[0] !== undefined && !argv[0].startsWith("--") ? argv[0] : undefined;
  try {
    const config = loadTrainConfig(file, file ? argv.slice(1) : argv);
    process.stdout.write(configToJson(config));
    return 0;
  } catch (e) {
    if (e instanceof ConfigError || e instanceof WorkspaceError) throw new UsageError(e.message);
    throw e;
  }
}

/** `atelier train CONFIG [--resume STATE_DIR] [--FIELD VALUE…]`. */
export async function trainCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(
      `usage: atelier train CONFIG.toml|CONFIG.json [--resume STATE_DIR] [--FIELD VALUE…]\n\n${describeConfig()}`,
    );
    return 0;
  }
  const rest = [...argv];
  let resume: string | undefined;
  const at = rest.findIndex((a) => a === "--resume" || a.startsWith("--resume="));
  if (at >= 0) {
    const flag = rest[at];
    resume = flag.includes("=") ? flag.slice("--resume=".length) : rest[at + 1];
    if (!resume || resume.startsWith("--")) throw new UsageError("--resume needs a state folder (OUTPUT_DIR/state-…)");
    rest.splice(at, flag.includes("=") ? 1 : 2);
  }
  const file = rest[0] !== undefined && !rest[0].startsWith("--") ? rest[0] : undefined;
  let config: ReturnType<typeof loadTrainConfig>;
  try {
    config = loadTrainConfig(file, file ? rest.slice(1) : rest);
  } catch (e) {
    if (e instanceof ConfigError || e instanceof WorkspaceError) throw new UsageError(e.message);
    throw e;
  }
  // Ctrl-C: stop after the current step with a resumable state; a second one quits at once.
  const stop = new AbortController();
  let stoppingSince = 0;
  const onSigint = () => {
    // Signals are handled between steps: two presses during one step arrive together, and count as one.
    if (stop.signal.aborted) {
      if (Date.now() - stoppingSince > 1000) process.exit(130);
      return;
    }
    console.error("\nstopping after this step and saving a resumable state (Ctrl-C again to quit now)");
    stoppingSince = Date.now();
    stop.abort();
  };
  process.on("SIGINT", onSigint);
  try {
    const result = await train(config, { resume, log: (m) => console.error(m), signal: stop.signal });
    if (result.reason === "stopped") {
      const quote = (a: string) => (/^[\w./=:@%+,-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);
      const again = [file, ...(file ? rest.slice(1) : rest)]
        .filter((a): a is string => a !== undefined)
        .map(quote)
        .join(" ");
      console.error(
        `stopped at step ${result.steps}; to go on: atelier train ${again} --resume ${quote(result.resumeFrom ?? "")}`,
      );
      return 130;
    }
    console.log(`trained ${result.steps} steps; artifacts in ${result.outputDir} (manifest.json lists them)`);
    return 0;
  } finally {
    process.off("SIGINT", onSigint);
  }
}
