// Everything a training run holds, set up in the order the steps' random
// draws depend on (the same seed gives the same run): the model, the noise
// generator, class images, the method (adapter initialisation draws from the
// noise generator), the text-embedding cache, the data, the optimizer and LR
// schedule, the logs — and, when resuming, the saved state put back.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Generator, manualSeed, setRngState, type Tensor } from "../engine/index.js";
import { type GroupHyper, LRScheduler, type Optimizer, type OptimizerStateDict } from "../engine/optim/index.js";
import { sweepStaleTemporaries } from "../formats/atomic-write.js";
import { disposeStableDiffusion, type LoadedStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { NoiseSchedule } from "../schedulers/index.js";
import { scheduleOptions, type TrainConfig, writeResolvedConfig } from "./config.js";
import { checkInstanceFolder, Dataset, ensureClassImages, TextEmbeddingCache } from "./data/index.js";
import { Ema } from "./ema.js";
import { RunManifest } from "./manifest.js";
import { type MethodSpec, methodSpecFor, type TrainingMethod } from "./methods/index.js";
import { makeOptimizer } from "./optimizer-choice.js";
import { LossLog } from "./progress.js";
import { disposeTrainingState, loadTrainingState, type Progress, readStateInfo, restoreTrainable } from "./state.js";
import { storeWeights } from "./weight-precision.js";
import { resolveModel } from "./workspace.js";

/** Key prefix of the EMA averages in a saved state's weights. */
export const EMA_PREFIX = "ema/";

export interface RunParts {
  readonly c: TrainConfig;
  readonly spec: MethodSpec;
  readonly modelPath: string;
  readonly model: LoadedStableDiffusion;
  /** Noise, timesteps and adapter initialisation draw from it. */
  readonly noiseGen: Generator;
  readonly method: TrainingMethod;
  readonly dataset: Dataset;
  readonly optimizer: Optimizer<GroupHyper>;
  readonly scheduler: LRScheduler;
  readonly schedule: NoiseSchedule;
  readonly manifest: RunManifest;
  readonly lossLog: LossLog;
  /** Averages of the trainable weights (ema_decay > 0), or null. */
  readonly ema: Ema | null;
  /** The names (namedTrainable) of the averaged weights, in the EMA's order. */
  readonly emaNames: readonly string[];
  readonly autocast: { device: "cpu" | "cuda"; dtype: "bfloat16" | "float16" } | null;
  readonly total: number;
  /** Where the run starts (0 unless resumed). */
  readonly progress: Progress;
  dispose(): void;
}

export interface RunSetupOptions {
  resume?: string;
  log: (message: string) => void;
  warn: (message: string) => void;
}

function optimizerFor(c: TrainConfig, method: TrainingMethod): Optimizer<GroupHyper> {
  return makeOptimizer(
    c,
    method.groups().map((g) => ({ params: g.params, lr: g.lr })),
  );
}

/** The autocast of mixed_precision on this device, or null (with the reason warned). */
function autocastFor(c: TrainConfig, device: string, warn: (m: string) => void): RunParts["autocast"] {
  if (c.mixed_precision === "no") return null;
  if (c.mixed_precision === "fp16" && device === "cpu") {
    warn("mixed_precision fp16 is not supported on the CPU: training in float32 (bf16 works on the CPU)");
    return null;
  }
  return { device: device === "cpu" ? "cpu" : "cuda", dtype: c.mixed_precision === "bf16" ? "bfloat16" : "float16" };
}

async function prepareClassImages(c: TrainConfig, model: LoadedStableDiffusion, log: (m: string) => void) {
  for (const [i, k] of c.concepts.entries()) {
    if (!k.class_data_dir || !(k.num_class_images > 0)) continue;
    const r = await ensureClassImages(k, model, {
      seed: c.seed + i * 1_000_003,
      width: c.resolution,
      height: c.resolution,
      clipSkip: c.clip_skip,
      // About ten progress lines, not one per image.
      onProgress: (done, all) => {
        if (done === all || done % Math.max(1, Math.ceil(all / 10)) === 0)
          log(`class images for concept ${i + 1}: ${done}/${all}`);
      },
    });
    if (r.generated.length) log(`generated ${r.generated.length} class image(s) in ${r.dir}`);
  }
}

/** Sets a run up (and restores its state when resuming); `dispose()` frees everything. */
export async function openRun(c: TrainConfig, o: RunSetupOptions): Promise<RunParts> {
  // The inputs are checked before anything is written: a bad state, model or instance folder leaves no trace
  // (what only the loaded data can tell — a finished epoch-based run, weights that do not fit — comes after
  // class images and the latent cache, but before the run's own files).
  const resumed = o.resume ? readStateInfo(o.resume) : null;
  const spec = methodSpecFor(c);
  if (resumed) {
    if (resumed.extra.method !== spec.name) {
      throw new Error(`${o.resume}: a ${String(resumed.extra.method)} state cannot resume a ${spec.name} run`);
    }
    const emaThen = Number(resumed.extra.ema_decay ?? 0) > 0;
    if (emaThen !== c.ema_decay > 0) {
      throw new Error(
        `${o.resume}: the state was saved ${emaThen ? "with" : "without"} EMA (ema_decay ${resumed.extra.ema_decay ?? 0}), this config has ema_decay ${c.ema_decay}`,
      );
    }
    if (c.max_steps > 0) refuseFinished(o.resume!, resumed.progress.step, c.max_steps);
  }
  for (const [i, k] of c.concepts.entries()) checkInstanceFolder(k, `concepts[${i}]`);
  manualSeed(c.seed);
  const modelPath = resolveModel(c.model, c.workspace).path;
  const model = loadStableDiffusion(modelPath, { tokenizerDir: c.tokenizer ?? undefined });
  const noiseGen = new Generator(c.seed);
  const owned: { dispose(): void }[] = [];
  const disposeAll = () => {
    for (const x of owned.reverse()) x.dispose();
    noiseGen.dispose();
    disposeStableDiffusion(model);
  };
  try {
    if (model.device === "cpu" && (c.full_fp16 || c.weight_dtype === "fp16")) {
      throw new Error(
        `${c.full_fp16 ? "full_fp16" : 'weight_dtype = "fp16"'} needs a GPU: mixed_precision fp16 does not run on the CPU (use bf16 there)`,
      );
    }
    await prepareClassImages(c, model, o.log);
    const method = spec.create(c as never, {
      model,
      generator: noiseGen,
      log: o.log,
      startStep: resumed?.progress.step ?? 0,
    });
    owned.push(method);
    if (c.gradient_checkpointing && model.device !== "cpu") {
      o.warn(`gradient_checkpointing runs on the CPU only for now: training on ${model.device} without it`);
    } else if (c.gradient_checkpointing) {
      model.unet.setGradientCheckpointing(true);
      model.textEncoder.gradientCheckpointing = method.trainsTextEncoder;
    }
    const textCache = method.trainsTextEncoder
      ? undefined
      : new TextEmbeddingCache({
          textEncoder: model.textEncoder,
          tokenizer: model.tokenizer,
          clipSkip: c.clip_skip,
          padId: model.kind === "sd2" ? 0 : undefined,
        });
    if (textCache) owned.push(textCache);
    const dataset = await Dataset.open({
      concepts: c.concepts,
      resolution: c.resolution,
      bucketing: c.bucketing.enabled
        ? { minReso: c.bucketing.min, maxReso: c.bucketing.max, step: c.bucketing.step }
        : false,
      batchSize: c.batch_size,
      seed: c.seed,
      latents: {
        vae: model.vae,
        cache: c.cache_latents ? "disk" : "none",
        dir: join(c.output_dir, "cache", "latents"),
      },
      withPixels: method.needsPixels === true,
      textCache,
      onWarning: o.warn,
    });
    owned.push(dataset);
    // After the latent and text caches are filled (those encode outside autocast): the VAE is cast only when
    // the cache means training never runs it; a text encoder not trained encodes for the cache in float32.
    const stored = storeWeights(c, [
      model.unet,
      ...(method.trainsTextEncoder ? [model.textEncoder] : []),
      ...(c.cache_latents && !method.needsPixels ? [model.vae] : []),
    ]);
    if (stored.frozen || stored.trained) {
      o.log(
        `weights stored: ${stored.frozen} frozen in ${c.weight_dtype}, ${stored.trained} trained in ${c.full_fp16 || c.full_bf16 ? c.mixed_precision : "float32"}`,
      );
    }
    const perEpoch = Math.ceil(dataset.length / c.gradient_accumulation);
    const total = c.max_steps > 0 ? c.max_steps : c.epochs * perEpoch;
    const optimizer = optimizerFor(c, method);
    owned.push(optimizer);
    const scheduler = new LRScheduler(optimizer, c.lr_scheduler, scheduleOptions(c, total));
    const named = method.namedTrainable();
    const emaNames = c.ema_decay > 0 ? averagedNames(named, optimizer) : [];
    const ema =
      c.ema_decay > 0
        ? new Ema(
            emaNames.map((n) => named.get(n)!),
            c.ema_decay,
          )
        : null;
    if (ema) owned.push(ema);
    let progress: Progress = { step: 0, epoch: 0, batchInEpoch: 0 };
    if (o.resume && resumed) {
      refuseFinished(o.resume, resumed.progress.step, total); // epochs decide: known once the data is
      progress = restoreRun(o.resume, { method, optimizer, scheduler, noiseGen, ema, emaNames });
    }
    // Now the run writes: stale temporary files of a killed save first go.
    mkdirSync(c.output_dir, { recursive: true });
    const swept = sweepStaleTemporaries(c.output_dir);
    if (swept.length) o.log(`removed ${swept.length} unfinished file(s) of an interrupted save: ${swept.join(", ")}`);
    writeResolvedConfig(c);
    const manifest = new RunManifest(c.output_dir, { method: method.name, model: c.model, total_steps: total });
    manifest.add(join(c.output_dir, "config.json"), { kind: "config", step: 0, epoch: 0, format: "json" });
    const lossLog = new LossLog(join(c.output_dir, "logs", "loss.jsonl"));
    manifest.add(lossLog.path, { kind: "log", step: 0, epoch: 0, format: "jsonl" });
    // a resumed run drops what its log holds past the state; a fresh one starts the log afresh
    lossLog.truncateAfter(progress.step);
    if (o.resume) o.log(`resumed at step ${progress.step} (epoch ${progress.epoch}, batch ${progress.batchInEpoch})`);
    return {
      c,
      spec,
      modelPath,
      model,
      noiseGen,
      method,
      dataset,
      optimizer,
      scheduler,
      schedule: new NoiseSchedule(model.scheduler),
      manifest,
      lossLog,
      ema,
      emaNames,
      autocast: autocastFor(c, model.device, o.warn),
      total,
      progress,
      dispose: disposeAll,
    };
  } catch (e) {
    disposeAll();
    throw e;
  }
}

/** A resume of a run that already reached its last step (its `name` crosses the trainer process boundary). */
export class RunFinishedError extends Error {
  override name = "RunFinishedError";
}

function refuseFinished(dir: string, step: number, total: number): void {
  if (step >= total) {
    throw new RunFinishedError(
      `${dir}: the run is finished at step ${step} (this config's last step is ${total}); raise max_steps (or epochs) to train further`,
    );
  }
}

/** The trainable tensors the optimizer steps, by name: what the EMA averages (buffers are not). */
function averagedNames(named: Map<string, Tensor>, optimizer: Optimizer<GroupHyper>): string[] {
  const stepped = new Set(optimizer.paramGroups.flatMap((g) => g.params));
  return [...named].filter(([, t]) => stepped.has(t)).map(([n]) => n);
}

function restoreRun(
  dir: string,
  r: {
    method: TrainingMethod;
    optimizer: Optimizer<GroupHyper>;
    scheduler: LRScheduler;
    noiseGen: Generator;
    ema: Ema | null;
    emaNames: readonly string[];
  },
): Progress {
  const state = loadTrainingState(dir);
  try {
    const weights = new Map<string, Tensor>();
    const averages = new Map<string, Tensor>();
    for (const [k, t] of state.weights) {
      if (k.startsWith(EMA_PREFIX)) averages.set(k.slice(EMA_PREFIX.length), t);
      else weights.set(k, t);
    }
    restoreTrainable(r.method.namedTrainable(), weights, dir);
    if (r.ema) {
      if (averages.size === 0) throw new Error(`${dir}: the state has no EMA averages but this run has ema_decay > 0`);
      const missing = r.emaNames.find((n) => !averages.has(n));
      if (missing) throw new Error(`${dir}: the state's EMA has no '${missing}'`);
      r.ema.load(r.emaNames.map((n) => averages.get(n)!));
    } else if (averages.size) {
      throw new Error(`${dir}: the state holds EMA averages but this run has ema_decay 0 (set ema_decay as before)`);
    }
    r.optimizer.loadStateDict(state.optimizer as OptimizerStateDict);
    r.scheduler.loadStateDict(state.scheduler as { step: number });
    const noise = state.rng.get("noise");
    const dflt = state.rng.get("default");
    if (!noise || !dflt) throw new Error(`${dir}: the state has no random generator states`);
    r.noiseGen.setState(noise);
    setRngState(dflt);
    return state.progress;
  } finally {
    disposeTrainingState(state);
  }
}
