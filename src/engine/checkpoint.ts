// Gradient checkpointing (torch.utils.checkpoint, the reentrant scheme of
// pytorch/pytorch torch/utils/checkpoint.py): a segment's forward runs without
// grad and keeps only its inputs; in backward the addon's checkpoint node
// (native/checkpoint.cc) calls back here, the segment runs again with grad,
// under the same autocast and random state, and backward through it gives the
// gradients of its inputs (passed on to the outer graph) and of its parameters
// (accumulated into .grad). The gradients equal those of the plain run.

import { type AutocastState, autocast, currentAutocast } from "./autocast.js";
import { enableGrad, isGradEnabled, noGrad } from "./autograd.js";
import { ids } from "./dispatch.js";
import { native, type TensorId } from "./native.js";
import { scope } from "./scope.js";
import { Tensor } from "./tensor.js";

export type Segment = (...inputs: Tensor[]) => Tensor | Tensor[];

interface Pending {
  fn: Segment;
  autocast: AutocastState | null;
  rng: TensorId | null;
}

const pending = new Map<number, Pending>();
let nextSegment = 0;
let registered = false;

function forget(segment: number): void {
  const p = pending.get(segment);
  if (!p) return;
  pending.delete(segment);
  if (p.rng !== null) native.free(p.rng);
}

const asList = (r: Tensor | Tensor[]): Tensor[] => (Array.isArray(r) ? r : [r]);

function withState<T>(p: Pending, fn: () => T): T {
  const run = () => {
    if (p.rng === null) return fn();
    const before = native.defaultGeneratorGetState();
    native.defaultGeneratorSetState(p.rng);
    try {
      return fn();
    } finally {
      native.defaultGeneratorSetState(before);
      native.free(before);
    }
  };
  return p.autocast ? autocast(p.autocast.device, p.autocast.dtype, run) : run();
}

/** The node's backward: re-run the segment with grad, backpropagate, hand back the inputs' gradients. */
function segmentBackward(segment: number, inputIds: (TensorId | null)[], gradIds: (TensorId | null)[]) {
  const p = pending.get(segment);
  const inputs = inputIds.map((id) => (id === null ? null : new Tensor(id)));
  const grads = gradIds.map((id) => (id === null ? null : new Tensor(id)));
  try {
    if (!p) throw new Error(`gradient checkpointing: segment ${segment} has no forward on record`);
    return scope(() => {
      const outs = withState(p, () => enableGrad(() => asList(p.fn(...(inputs as Tensor[])))));
      if (outs.length !== grads.length) {
        throw new Error(
          `gradient checkpointing: the segment gave ${outs.length} outputs in backward, ${grads.length} in forward`,
        );
      }
      const roots: Tensor[] = [];
      const rootGrads: Tensor[] = [];
      outs.forEach((o, i) => {
        const g = grads[i];
        if (g && o.requiresGrad) {
          roots.push(o);
          rootGrads.push(g);
        }
      });
      if (roots.length > 0) native.backward(ids(roots), ids(rootGrads), false, false);
      // new handles to .grad: their ownership moves to the addon
      return inputs.map((x) => (x?.requiresGrad ? native.grad(x.id) : null));
    });
  } finally {
    forget(segment);
    for (const t of [...inputs, ...grads]) t?.dispose();
  }
}

function register(): void {
  if (registered) return;
  native.checkpointSetBackward(segmentBackward);
  registered = true;
}

export interface CheckpointOptions {
  /** Save and restore the random state, so dropout draws the same masks again (default true). */
  preserveRng?: boolean;
  /** Whether the segment's own parameters are trained; when neither they nor an input need grad, it runs plainly. */
  trainable?: boolean;
}

/**
 * Runs `fn(...inputs)` keeping only `inputs` for backward, which recomputes
 * it. `fn` must be a pure function of its inputs and parameters: any tensor it
 * needs gradients for must be among `inputs`. Outside grad mode it just runs.
 */
export function checkpoint(fn: Segment, inputs: readonly Tensor[], o: CheckpointOptions = {}): Tensor[] {
  const trainable = o.trainable ?? true;
  if (!isGradEnabled() || !(trainable || inputs.some((x) => x.requiresGrad))) return asList(fn(...inputs));
  register();
  for (const dead of native.checkpointDead()) forget(dead);
  const preserve = o.preserveRng ?? true;
  const p: Pending = { fn, autocast: currentAutocast(), rng: preserve ? native.defaultGeneratorGetState() : null };
  const segment = nextSegment++;
  pending.set(segment, p);
  try {
    return scope(() => {
      const outs = noGrad(() => asList(fn(...inputs)));
      const attached = native.checkpointAttach(segment, ids(inputs), ids(outs)) as TensorId[];
      return attached.map((id) => new Tensor(id));
    });
  } catch (e) {
    forget(segment);
    throw e;
  }
}

/** Segments recorded whose backward has not run yet (tests check it returns to zero). */
export const pendingCheckpoints = (): number => {
  for (const dead of native.checkpointDead()) forget(dead);
  return pending.size;
};
