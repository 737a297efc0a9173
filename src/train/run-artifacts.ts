// What a run writes while it trains: the method's artifacts (with kohya's
// ss_* training metadata), the resumable state and sample grids, each
// recorded in the manifest (keep_last pruning). With EMA, artifacts and
// samples are made from the averaged weights.
import { readdirSync, statfsSync, statSync } from "node:fs";
import { join } from "node:path";
import { all, BYTES, getRngState, isFloating, isfinite, noGrad, scope, type Tensor } from "../engine/index.js";
import { NonFiniteError } from "./loop.js";
import type { ArtifactKind } from "./manifest.js";
import { EMA_PREFIX, type RunParts } from "./run-setup.js";
import { saveSampleGrid } from "./samples.js";
import { type Progress, saveTrainingState } from "./state.js";

export interface WrittenArtifact {
  kind: ArtifactKind;
  path: string;
  format: string;
}

export const stepTag = (step: number) => `-step${String(step).padStart(6, "0")}`;
export const epochTag = (epoch: number) => `-epoch${String(epoch).padStart(4, "0")}`;

/** kohya's ss_* keys, as its train_network.py writes them, for the saved files' headers. */
export function trainMetadata(p: RunParts, progress: Progress): Record<string, string> {
  const c = p.c;
  return {
    ss_learning_rate: String(c.learning_rate),
    ss_text_encoder_lr: String(c.text_encoder_lr),
    ss_unet_lr: String(c.learning_rate),
    ss_steps: String(progress.step),
    ss_epoch: String(progress.epoch),
    ss_max_train_steps: String(p.total),
    ss_seed: String(c.seed),
    ss_clip_skip: String(c.clip_skip),
    ss_noise_offset: String(c.noise_offset),
    ss_min_snr_gamma: String(c.min_snr_gamma),
    ss_prior_loss_weight: String(c.prior_loss_weight),
    ss_mixed_precision: c.mixed_precision,
    ss_num_train_images: String(p.dataset.instanceImages.length),
    ss_num_reg_images: String(p.dataset.classImages.length),
    ss_sd_model_name: p.modelPath.split("/").pop() ?? "",
    ss_training_comment: "trained with Atelier",
  };
}

const withAverages = <T>(p: RunParts, fn: () => T): T => (p.ema ? p.ema.withAverages(fn) : fn());

/** The name of the first trained tensor holding a NaN or an infinity, if any. */
function firstNonFinite(p: RunParts): string | null {
  const tensors = new Map(p.method.namedTrainable());
  for (const [i, t] of (p.ema?.shadow ?? []).entries()) tensors.set(`${EMA_PREFIX}${p.emaNames[i]}`, t);
  for (const [name, t] of tensors) {
    if (!isFloating(t.dtype)) continue;
    if (!noGrad(() => scope(() => all(isfinite(t)).item()))) return name;
  }
  return null;
}

/** Writes the method's artifacts (unless `artifacts` is false) under `tag` and, when `state`, a resumable state. */
export function writeArtifacts(
  p: RunParts,
  progress: Progress,
  tag: string,
  o: { artifacts?: boolean; state: boolean },
): WrittenArtifact[] {
  const { c, manifest } = p;
  // The step core never steps a non-finite gradient in; this also catches weights that came in broken.
  const broken = firstNonFinite(p);
  if (broken) {
    throw new NonFiniteError(
      `step ${progress.step}: the trained weight ${broken} is not finite; nothing was saved`,
      progress.step,
    );
  }
  const out: WrittenArtifact[] = [];
  const record = (a: WrittenArtifact) => {
    manifest.add(a.path, { kind: a.kind, step: progress.step, epoch: progress.epoch, format: a.format });
    manifest.prune(a.kind, c.save.keep_last);
    out.push(a);
  };
  try {
    if (o.artifacts ?? true) {
      const saved = withAverages(p, () =>
        p.method.save({ outputDir: c.output_dir, tag, metadata: trainMetadata(p, progress) }),
      );
      for (const a of saved) record(a);
    }
    if (o.state) record({ kind: "state", path: saveState(p, progress, tag), format: "atelier_state" });
  } catch (e) {
    if (isDiskFull(e)) throw diskFull(p, progress.step, e as Error, "saving", o.state);
    throw e;
  }
  return out;
}

/** Bytes a file or folder takes. */
function sizeOf(path: string): number {
  const s = statSync(path, { throwIfNoEntry: false });
  if (!s) return 0;
  if (!s.isDirectory()) return s.size;
  return readdirSync(path).reduce((n, f) => n + sizeOf(join(path, f)), 0);
}

/** Bytes in the unit that reads best (KiB … GiB). */
const size = (n: number) => {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) [n, i] = [n / 1024, i + 1];
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
};

/** Whether an error is the disk (or the quota) being full. */
export function isDiskFull(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return code === "ENOSPC" || code === "EDQUOT";
}

/** A full disk, said plainly; keeps the errno code, so callers can still tell. */
export class DiskFullError extends Error {
  override name = "DiskFullError";
  readonly code: string;
  constructor(message: string, cause: Error) {
    super(message, { cause });
    this.code = (cause as NodeJS.ErrnoException).code ?? "ENOSPC";
  }
}

/** The kinds of artifact that hold weights (models, LoRAs, states), not the run's records. */
const isSavedWeights = (k: ArtifactKind) => k !== "config" && k !== "log" && k !== "samples";

/** What of the run is still good: the newest state the manifest lists, else its newest file. */
export function newestGood(p: RunParts, hint: string): string {
  const { c, manifest } = p;
  const state = manifest.latest("state");
  const files = manifest.artifacts.filter((a) => isSavedWeights(a.kind));
  const newest = [...files].sort((a, b) => b.step - a.step)[0];
  if (state) return `the newest complete state is ${join(c.output_dir, state.path)} (step ${state.step}): ${hint}`;
  if (newest)
    return `the newest complete file is ${join(c.output_dir, newest.path)} (step ${newest.step}); no resumable state was saved`;
  return "nothing was saved before it";
}

/** The folder, the space a save takes, the free space, and what is still good. */
export function diskFull(
  p: RunParts,
  step: number,
  e: Error,
  doing: string,
  withState = p.c.save.state,
): DiskFullError {
  const { c, manifest } = p;
  // A save takes what the newest complete save of the kinds it writes took (the trained weights' bytes before one).
  const kinds = new Set(manifest.artifacts.map((a) => a.kind));
  const writes = [...kinds].filter((k) => isSavedWeights(k) && (k !== "state" || withState));
  let needed = writes.reduce((n, k) => n + sizeOf(join(c.output_dir, manifest.latest(k)!.path)), 0);
  if (needed === 0) needed = [...p.method.namedTrainable().values()].reduce((n, t) => n + t.numel * BYTES[t.dtype], 0);
  const fs = statfsSync(c.output_dir);
  return new DiskFullError(
    `no space left in ${c.output_dir} while ${doing} step ${step} (${e.message}): a save takes about ` +
      `${size(needed)}, ${size(fs.bavail * fs.bsize)} is free; ${newestGood(p, "free space and resume from it")}`,
    e,
  );
}

/** The state folder for `tag` (`state-step000100`), written atomically. */
function saveState(p: RunParts, progress: Progress, tag: string): string {
  const dir = join(p.c.output_dir, `state${tag || stepTag(progress.step)}`);
  const rng = new Map([
    ["noise", p.noiseGen.getState()],
    ["default", getRngState()],
  ]);
  const opt = p.optimizer.stateDict();
  const weights = new Map<string, Tensor>(p.method.namedTrainable());
  for (const [i, t] of (p.ema?.shadow ?? []).entries()) weights.set(`${EMA_PREFIX}${p.emaNames[i]}`, t);
  try {
    saveTrainingState(dir, {
      progress,
      weights,
      optimizer: opt,
      scheduler: p.scheduler.stateDict(),
      rng,
      extra: { method: p.method.name, total: p.total, ema_decay: p.c.ema_decay },
    });
  } finally {
    for (const t of [...rng.values(), ...opt.tensors.values()]) t.dispose();
  }
  return dir;
}

/** Writes a grid of the sample prompts at this step; null when there are none. */
export function writeSamples(p: RunParts, progress: Progress): string | null {
  const c = p.c;
  if (c.sample.prompts.length === 0) return null;
  const path = join(c.output_dir, "samples", `step-${String(progress.step).padStart(6, "0")}.png`);
  withAverages(p, () => saveSampleGrid(p.model, c, path));
  p.manifest.add(path, { kind: "samples", step: progress.step, epoch: progress.epoch, format: "png" });
  return path;
}
