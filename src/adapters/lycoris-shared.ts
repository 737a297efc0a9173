// Small helpers the trainable LyCORIS methods share (./loha.ts, ./lokr.ts,
// ./dora.ts): the saved alpha as LyCORIS registers it.
import { full, keep, type Tensor } from "../engine/index.js";

/** LyCORIS' alpha buffer: alpha 0/absent means rank; float32 0-d on the CPU, as lycorisFromTensors keeps it. */
export function alphaTensor(alpha: number | null | undefined, rank: number): Tensor {
  const a = alpha === null || alpha === undefined || alpha === 0 ? rank : alpha;
  return keep(full([], a, { dtype: "float32" }));
}
