// Gradient mode and gradients of chosen outputs with respect to chosen inputs.
import { ids } from "./dispatch.js";
import { native } from "./native.js";
import { Tensor } from "./tensor.js";

function withGradMode<T>(on: boolean, fn: () => T): T {
  const prev = native.setGradEnabled(on);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

/** Runs `fn` without recording operations for autograd (torch.no_grad). */
export const noGrad = <T>(fn: () => T): T => withGradMode(false, fn);

/** Runs `fn` with gradients recorded, also inside noGrad (torch.enable_grad). */
export const enableGrad = <T>(fn: () => T): T => withGradMode(true, fn);

export const isGradEnabled = (): boolean => native.isGradEnabled();

export interface GradOptions {
  /** Gradients of the outputs (required for outputs with more than one element). */
  gradOutputs?: readonly (Tensor | null)[];
  retainGraph?: boolean;
  /** Record the backward pass too, for higher-order gradients. */
  createGraph?: boolean;
  /** Return null for inputs the outputs do not depend on, instead of failing. */
  allowUnused?: boolean;
}

/**
 * Gradients of `outputs` with respect to `inputs` (torch.autograd.grad); .grad
 * is left untouched. Gradient checkpointing uses this segment by segment.
 */
export function grad(outputs: readonly Tensor[], inputs: readonly Tensor[], o: GradOptions = {}): (Tensor | null)[] {
  const gradOutputs = (o.gradOutputs ?? outputs.map(() => null)).map((g) => (g ? g.id : null));
  if (gradOutputs.length !== outputs.length) {
    throw new Error(`grad: ${outputs.length} outputs but ${gradOutputs.length} output gradients`);
  }
  const createGraph = o.createGraph ?? false;
  const result = native.gradOf(
    ids(outputs),
    ids(inputs),
    gradOutputs,
    o.retainGraph ?? createGraph,
    createGraph,
    o.allowUnused ?? false,
  );
  return result.map((id) => (id === null ? null : new Tensor(id)));
}

/** Backpropagates from several outputs at once (torch.autograd.backward). */
export function backward(
  outputs: readonly Tensor[],
  gradOutputs?: readonly (Tensor | null)[],
  retainGraph = false,
): void {
  const grads = (gradOutputs ?? outputs.map(() => null)).map((g) => (g ? g.id : null));
  native.backward(ids(outputs), grads, retainGraph, false);
}
