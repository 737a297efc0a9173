// The fuzz targets by name, for the CI test and bench/fuzz.ts.
import type { Target } from "../harness.js";
import { ckptTarget } from "./ckpt.js";
import type { TargetOptions } from "./common.js";
import { configTarget } from "./config.js";
import { pngTarget } from "./png.js";
import { promptTarget } from "./prompt.js";
import { safetensorsTarget } from "./safetensors.js";

export type { TargetOptions } from "./common.js";

export const TARGETS = {
  safetensors: safetensorsTarget,
  ckpt: ckptTarget,
  prompt: promptTarget,
  config: configTarget,
  png: pngTarget,
} as const;

export type TargetName = keyof typeof TARGETS;

export const TARGET_NAMES = Object.keys(TARGETS) as TargetName[];

/** A target by name, its input type erased (the runner only passes inputs back to it). */
export function makeTarget(name: TargetName, o: TargetOptions): Target<unknown> {
  return TARGETS[name](o) as unknown as Target<unknown>;
}
