// A run's resumable state (save.state): the trainable weights, the optimizer
// and LR-schedule state, the random generators and where in the data the run
// stands. Written into a temporary folder that is renamed into place, so a
// kill during a save leaves the previous state whole.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { keep, noGrad, scope, type Tensor } from "../engine/index.js";
import { loadSafetensors, saveSafetensors } from "../formats/safetensors.js";

export interface Progress {
  /** Optimizer steps done. */
  step: number;
  epoch: number;
  /** Batches of `epoch` already consumed. */
  batchInEpoch: number;
}

export interface TrainingState {
  progress: Progress;
  /** The trainable tensors by name. */
  weights: Map<string, Tensor>;
  /** Optimizer.stateDict(). */
  optimizer: { json: object; tensors: Map<string, Tensor> };
  /** LRScheduler.stateDict(). */
  scheduler: object;
  /** Generator states (uint8 tensors): the noise generator, the default CPU generator, … */
  rng: Map<string, Tensor>;
  /** Anything else the run needs to check on resume (config fingerprint, method …). */
  extra: Record<string, unknown>;
}

const FORMAT = "atelier-training-state-1";

/** Writes `state` as the folder `dir` (replacing an older one of the same name only once the new one is complete). */
export function saveTrainingState(dir: string, state: TrainingState): void {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const tmp = join(parent, `.${basename(dir)}.tmp-${process.pid}-${Date.now()}`);
  mkdirSync(tmp);
  try {
    saveSafetensors(join(tmp, "weights.safetensors"), state.weights);
    saveSafetensors(join(tmp, "optimizer.safetensors"), state.optimizer.tensors);
    saveSafetensors(join(tmp, "rng.safetensors"), state.rng);
    const json = {
      format: FORMAT,
      progress: state.progress,
      optimizer: state.optimizer.json,
      scheduler: state.scheduler,
      extra: state.extra,
    };
    // written last: a folder without state.json is never a valid state
    writeFileSync(join(tmp, "state.json"), `${JSON.stringify(json, null, 2)}\n`);
    if (existsSync(dir)) {
      const old = `${tmp}.old`;
      renameSync(dir, old);
      renameSync(tmp, dir);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(tmp, dir);
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

interface StateJson {
  format: string;
  progress: Progress;
  optimizer: object;
  scheduler: object;
  extra: Record<string, unknown>;
}

/** A state folder's state.json, checked (no tensors read): what a resume checks before it writes anything. */
export function readStateInfo(dir: string): Pick<TrainingState, "progress" | "extra"> & StateJson {
  const jsonPath = join(dir, "state.json");
  if (!existsSync(dir)) throw new Error(`${dir}: no such training state folder`);
  if (!existsSync(jsonPath)) {
    throw new Error(`${dir}: not a training state folder (no state.json; was the save interrupted?)`);
  }
  let json: StateJson;
  try {
    json = JSON.parse(readFileSync(jsonPath, "utf8")) as StateJson;
  } catch (e) {
    throw new Error(`${jsonPath}: not valid JSON (${(e as Error).message})`);
  }
  if (json?.format !== FORMAT) throw new Error(`${dir}: unknown training state format '${json?.format}'`);
  const p = json.progress;
  if (!p || ![p.step, p.epoch, p.batchInEpoch].every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new Error(`${jsonPath}: its progress is not a step, an epoch and a batch`);
  }
  for (const f of ["weights", "optimizer", "rng"]) {
    if (!existsSync(join(dir, `${f}.safetensors`))) throw new Error(`${dir}: ${f}.safetensors is missing`);
  }
  return json;
}

/** Reads a state folder; the tensors are the caller's to dispose. */
export function loadTrainingState(dir: string): TrainingState {
  const json = readStateInfo(dir);
  const load = (name: string) => loadSafetensors(join(dir, name)).tensors;
  const weights = load("weights.safetensors");
  const optimizer = load("optimizer.safetensors");
  const rng = load("rng.safetensors");
  return {
    progress: json.progress,
    weights,
    optimizer: { json: json.optimizer, tensors: optimizer },
    scheduler: json.scheduler,
    rng,
    extra: json.extra,
  };
}

export function disposeTrainingState(s: TrainingState): void {
  for (const m of [s.weights, s.optimizer.tensors, s.rng]) for (const t of m.values()) t.dispose();
}

/** Copies saved tensors into the live trainable ones (resume), by name; every name must match. */
export function restoreTrainable(trainable: Map<string, Tensor>, saved: Map<string, Tensor>, where: string): void {
  const missing = [...trainable.keys()].filter((k) => !saved.has(k));
  const extra = [...saved.keys()].filter((k) => !trainable.has(k));
  if (missing.length || extra.length) {
    throw new Error(
      `${where}: the saved weights do not fit this run (missing ${missing.slice(0, 3).join(", ") || "none"}; ` +
        `unexpected ${extra.slice(0, 3).join(", ") || "none"}): was it saved with another config?`,
    );
  }
  noGrad(() =>
    scope(() => {
      for (const [k, t] of trainable) t.copy_(saved.get(k)!);
    }),
  );
  keep(trainable);
}
