// The training loop every method shares: data → noise → UNet → loss →
// backward, with gradient accumulation and clipping, mixed precision, the
// LR schedule, a progress line, logs/loss.jsonl, sample grids, artifacts
// and resumable state, all recorded in OUTPUT_DIR/manifest.json.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { autocast, Generator, getRngState, manualSeed, scope, setRngState } from "../engine/index.js";
import {
  AdamW,
  clipGradNorm,
  type GroupHyper,
  LRScheduler,
  type Optimizer,
  type OptimizerStateDict,
  SGD,
} from "../engine/optim/index.js";
import { encodePrompts } from "../infer/prompt-encoding.js";
import { disposeStableDiffusion, type LoadedStableDiffusion, loadStableDiffusion } from "../models/stable-diffusion.js";
import { NoiseSchedule } from "../schedulers/index.js";
import { type TrainConfig, writeResolvedConfig } from "./config.js";
import { type ConceptConfig, Dataset, disposeBatch, ensureClassImages, TextEmbeddingCache } from "./data/index.js";
import { diffusionLoss, drawNoise, minSnrWeights } from "./losses.js";
import { RunManifest } from "./manifest.js";
import { DreamboothMethod, LoraMethod, restoreTrainable, type TrainingMethod } from "./methods.js";
import { LossLog, ProgressBar, type StepRecord } from "./progress.js";
import { saveSampleGrid } from "./samples.js";
import { disposeTrainingState, loadTrainingState, saveTrainingState } from "./state.js";
import { resolveModel } from "./workspace.js";

export interface TrainOptions {
  /** A state folder written by save.state: the run continues exactly where it stopped. */
  resume?: string;
  /** Messages for the user (warnings, what is happening). */
  log?: (message: string) => void;
  /** Where the progress line goes (default stderr). */
  progressOut?: NodeJS.WriteStream;
  /** Stop after this many optimizer steps of this call (tests: simulate an interruption). */
  stopAfter?: number;
}

export interface TrainResult {
  steps: number;
  outputDir: string;
  losses: StepRecord[];
  manifest: RunManifest;
}

/** The data layer's concept description, from the config's. */
export function datasetConcepts(c: TrainConfig): ConceptConfig[] {
  return c.concepts.map((k) => ({
    instanceDataDir: k.instance_data_dir,
    instancePrompt: k.instance_prompt,
    classDataDir: k.class_data_dir ?? undefined,
    classPrompt: k.class_prompt ?? undefined,
    numClassImages: k.num_class_images,
    classGuidanceScale: k.class_guidance_scale,
    classInferSteps: k.class_infer_steps,
    repeats: k.repeats,
    captionExtension: k.caption_extension,
    shuffleTags: k.shuffle_tags,
    keepTokens: k.keep_tokens,
  }));
}

function makeOptimizer(c: TrainConfig, method: TrainingMethod): Optimizer<GroupHyper> {
  const groups = method.groups().map((g) => ({ params: g.params, lr: g.lr }));
  if (c.optimizer === "sgd") return new SGD(groups, { lr: c.learning_rate, weightDecay: c.weight_decay });
  return new AdamW(groups, { lr: c.learning_rate, weightDecay: c.weight_decay });
}

/** The autocast dtype for mixed_precision on this device, or null (with the reason logged). */
function precisionFor(c: TrainConfig, device: string, log: (m: string) => void): "bfloat16" | "float16" | null {
  if (c.mixed_precision === "no") return null;
  if (c.mixed_precision === "fp16" && device === "cpu") {
    log("mixed_precision fp16 is not supported on the CPU: training in float32 (bf16 works on the CPU)");
    return null;
  }
  return c.mixed_precision === "bf16" ? "bfloat16" : "float16";
}

export async function train(config: TrainConfig, o: TrainOptions = {}): Promise<TrainResult> {
  const log = o.log ?? ((m: string) => console.error(m));
  const c = config;
  mkdirSync(c.output_dir, { recursive: true });
  writeResolvedConfig(c);
  manualSeed(c.seed);
  const resolved = resolveModel(c.model, c.workspace);
  const model = loadStableDiffusion(resolved.path, { tokenizerDir: c.tokenizer ?? undefined });
  const noiseGen = new Generator(c.seed);
  let method: TrainingMethod | undefined;
  let dataset: Dataset | undefined;
  let optimizer: Optimizer<GroupHyper> | undefined;
  let textCache: TextEmbeddingCache | undefined;
  try {
    await prepareClassImages(c, model, log);
    method = c.method === "lora" || c.use_lora ? new LoraMethod(model, c, noiseGen) : new DreamboothMethod(model, c);
    if (c.gradient_checkpointing) log("gradient_checkpointing is not implemented yet: training without it");
    textCache = method.trainsTextEncoder
      ? undefined
      : new TextEmbeddingCache({
          textEncoder: model.textEncoder,
          tokenizer: model.tokenizer,
          clipSkip: c.clip_skip,
          padId: model.kind === "sd2" ? 0 : undefined,
        });
    dataset = await Dataset.open({
      concepts: datasetConcepts(c),
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
      textCache,
      onWarning: log,
    });
    const perEpoch = Math.ceil(dataset.length / c.gradient_accumulation);
    const total = c.max_steps > 0 ? c.max_steps : c.epochs * perEpoch;
    optimizer = makeOptimizer(c, method);
    const scheduler = new LRScheduler(optimizer, c.lr_scheduler, {
      warmupSteps: c.lr_warmup_steps,
      trainingSteps: total,
      numCycles: c.lr_scheduler_num_cycles ?? undefined,
      power: c.lr_scheduler_power,
    });
    const manifest = new RunManifest(c.output_dir, { method: method.name, model: c.model, total_steps: total });
    manifest.add(join(c.output_dir, "config.json"), { kind: "config", step: 0, epoch: 0, format: "json" });
    const lossLog = new LossLog(join(c.output_dir, "logs", "loss.jsonl"));
    manifest.add(lossLog.path, { kind: "log", step: 0, epoch: 0, format: "jsonl" });

    let progress = { step: 0, epoch: 0, batchInEpoch: 0 };
    if (o.resume) {
      const state = loadTrainingState(o.resume);
      try {
        if (state.extra.method !== method.name) {
          throw new Error(`${o.resume}: a ${String(state.extra.method)} state cannot resume a ${method.name} run`);
        }
        restoreTrainable(method.namedTrainable(), state.weights, o.resume);
        optimizer.loadStateDict(state.optimizer as OptimizerStateDict);
        scheduler.loadStateDict(state.scheduler as { step: number });
        noiseGen.setState(state.rng.get("noise")!);
        setRngState(state.rng.get("default")!);
        progress = state.progress;
      } finally {
        disposeTrainingState(state);
      }
      lossLog.truncateAfter(progress.step);
      log(`resumed at step ${progress.step} (epoch ${progress.epoch}, batch ${progress.batchInEpoch})`);
    }

    const schedule = new NoiseSchedule(model.scheduler);
    const precision = precisionFor(c, model.device, log);
    const bar = new ProgressBar(total, progress.step, o.progressOut);
    const baseName = `${method.name === "lora" ? "lora" : "model"}`;
    const trainMeta = () => ({
      ss_learning_rate: String(c.learning_rate),
      ss_text_encoder_lr: String(c.text_encoder_lr),
      ss_unet_lr: String(c.learning_rate),
      ss_steps: String(progress.step),
      ss_epoch: String(progress.epoch),
      ss_max_train_steps: String(total),
      ss_seed: String(c.seed),
      ss_clip_skip: String(c.clip_skip),
      ss_noise_offset: String(c.noise_offset),
      ss_min_snr_gamma: String(c.min_snr_gamma),
      ss_prior_loss_weight: String(c.prior_loss_weight),
      ss_mixed_precision: c.mixed_precision,
      ss_num_train_images: String(dataset!.instanceImages.length),
      ss_num_reg_images: String(dataset!.classImages.length),
      ss_sd_model_name: resolved.path.split("/").pop() ?? "",
      ss_training_comment: "trained with Atelier",
    });
    const writeArtifacts = (tag: string) => {
      for (const a of method!.save(c.output_dir, baseName, tag, trainMeta())) {
        manifest.add(a.path, { kind: a.kind, step: progress.step, epoch: progress.epoch, format: a.format });
        manifest.prune(a.kind, c.save.keep_last);
      }
      if (c.save.state) {
        const dir = join(c.output_dir, `state${tag || `-step${String(progress.step).padStart(6, "0")}`}`);
        const rng = new Map([
          ["noise", noiseGen.getState()],
          ["default", getRngState()],
        ]);
        const opt = optimizer!.stateDict();
        try {
          saveTrainingState(dir, {
            progress,
            weights: method!.namedTrainable(),
            optimizer: opt,
            scheduler: scheduler.stateDict(),
            rng,
            extra: { method: method!.name, total },
          });
        } finally {
          for (const t of [...rng.values(), ...opt.tensors.values()]) t.dispose();
        }
        manifest.add(dir, { kind: "state", step: progress.step, epoch: progress.epoch, format: "atelier_state" });
        manifest.prune("state", c.save.keep_last);
      }
    };
    const sample = () => {
      if (c.sample.prompts.length === 0) return;
      const path = join(c.output_dir, "samples", `step-${String(progress.step).padStart(6, "0")}.png`);
      saveSampleGrid(model, c, path);
      manifest.add(path, { kind: "samples", step: progress.step, epoch: progress.epoch, format: "png" });
    };

    let micro = 0;
    let sums = { loss: 0, instance: 0, prior: 0, priorCount: 0 };
    let stepsThisCall = 0;
    outer: for (let epoch = progress.epoch; ; epoch++) {
      if (c.max_steps <= 0 && epoch >= c.epochs) break;
      const start = epoch === progress.epoch ? progress.batchInEpoch : 0;
      let batchIndex = start;
      for await (const batch of dataset.epochBatches(epoch, { startStep: start })) {
        try {
          const terms = scope(() => {
            const run = () => {
              const latents = batch.latents!;
              const { noise, timesteps } = drawNoise(latents, schedule.config.num_train_timesteps, {
                offset: c.noise_offset,
                generator: noiseGen,
              });
              const noisy = schedule.addNoise(latents, noise, timesteps);
              const context =
                batch.context ??
                encodePrompts(model.textEncoder, model.tokenizer, batch.prompts, {
                  clipSkip: c.clip_skip,
                  padId: model.kind === "sd2" ? 0 : undefined,
                });
              const prediction = model.unet.forward(noisy, timesteps, context);
              const target = schedule.target(latents, noise, timesteps);
              const weights = c.min_snr_gamma > 0 ? minSnrWeights(schedule, timesteps, c.min_snr_gamma) : null;
              return diffusionLoss(prediction, target, batch.isClass, {
                priorLossWeight: c.prior_loss_weight,
                weights,
              });
            };
            const t = precision ? autocast(model.device === "cpu" ? "cpu" : "cuda", precision, run) : run();
            t.loss.div(c.gradient_accumulation).backward();
            return { loss: t.loss.item(), instance: t.instance.item(), prior: t.prior ? t.prior.item() : null };
          });
          sums = {
            loss: sums.loss + terms.loss,
            instance: sums.instance + terms.instance,
            prior: sums.prior + (terms.prior ?? 0),
            priorCount: sums.priorCount + (terms.prior === null ? 0 : 1),
          };
        } finally {
          disposeBatch(batch);
        }
        batchIndex++;
        micro++;
        if (micro % c.gradient_accumulation !== 0) continue;
        if (c.max_grad_norm > 0)
          clipGradNorm(
            optimizer.paramGroups.flatMap((g) => g.params),
            c.max_grad_norm,
          );
        const lr = optimizer.paramGroups[0].lr;
        optimizer.step();
        scheduler.step();
        optimizer.zeroGrad();
        progress = { step: progress.step + 1, epoch, batchInEpoch: batchIndex };
        stepsThisCall++;
        const n = c.gradient_accumulation;
        const record: StepRecord = {
          step: progress.step,
          epoch,
          loss: sums.loss / n,
          instance_loss: sums.instance / n,
          prior_loss: sums.priorCount ? sums.prior / sums.priorCount : null,
          lr,
        };
        sums = { loss: 0, instance: 0, prior: 0, priorCount: 0 };
        lossLog.append(record);
        bar.update(progress.step, record.loss, lr);
        if (c.sample.every_n_steps > 0 && progress.step % c.sample.every_n_steps === 0) sample();
        const last = progress.step >= total;
        if (!last && c.save.every_n_steps > 0 && progress.step % c.save.every_n_steps === 0) {
          writeArtifacts(`-step${String(progress.step).padStart(6, "0")}`);
        }
        if (last || (o.stopAfter !== undefined && stepsThisCall >= o.stopAfter)) break outer;
      }
      // the epoch is done: the next one starts at its first batch
      progress = { ...progress, epoch: epoch + 1, batchInEpoch: 0 };
      const epochsDone = epoch + 1;
      if (c.save.every_n_epochs > 0 && epochsDone % c.save.every_n_epochs === 0 && progress.step < total) {
        writeArtifacts(`-epoch${String(epochsDone).padStart(4, "0")}`);
      }
    }
    if (progress.step >= total) {
      writeArtifacts("");
      if (c.sample.every_n_steps > 0 && progress.step % c.sample.every_n_steps !== 0) sample();
    } else if (o.stopAfter !== undefined) {
      writeArtifacts(`-step${String(progress.step).padStart(6, "0")}`);
    }
    return { steps: progress.step, outputDir: c.output_dir, losses: lossLog.read(), manifest };
  } finally {
    optimizer?.dispose();
    dataset?.dispose();
    textCache?.dispose();
    method?.dispose();
    noiseGen.dispose();
    disposeStableDiffusion(model);
  }
}

async function prepareClassImages(c: TrainConfig, model: LoadedStableDiffusion, log: (m: string) => void) {
  for (const [i, k] of datasetConcepts(c).entries()) {
    if (!k.classDataDir || !(k.numClassImages! > 0)) continue;
    const r = await ensureClassImages(k, model, {
      seed: c.seed + i * 1_000_003,
      width: c.resolution,
      height: c.resolution,
      clipSkip: c.clip_skip,
      batch: c.concepts[i].class_batch_size,
      // About ten progress lines, not one per image.
      onProgress: (done, all) => {
        if (done === all || done % Math.max(1, Math.ceil(all / 10)) === 0)
          log(`class images for concept ${i + 1}: ${done}/${all}`);
      },
    });
    if (r.generated.length) log(`generated ${r.generated.length} class image(s) in ${r.dir}`);
  }
}
