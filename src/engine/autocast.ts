// Mixed precision: inside autocast(), eligible ops (matmul, conv, linear …)
// run in bf16/fp16 while precision-sensitive ones stay in float32, exactly as
// torch.autocast does (it is libtorch's own Autocast dispatch key).
import { type DType, dtypeCode } from "./dtype.js";
import { native } from "./native.js";

export interface AutocastState {
  device: "cpu" | "cuda";
  dtype: DType;
}

let current: AutocastState | null = null;

/** The innermost autocast() region now open, or null (checkpointing re-enters it in backward). */
export const currentAutocast = (): AutocastState | null => current;

export function autocast<T>(device: "cpu" | "cuda", dtype: DType, fn: () => T): T {
  if (dtype !== "bfloat16" && dtype !== "float16") {
    throw new Error(`autocast: dtype must be bfloat16 or float16, got ${dtype}`);
  }
  const [wasEnabled, prevDtype] = native.autocastEnter(device, dtypeCode(dtype));
  const prev = current;
  current = { device, dtype };
  try {
    return fn();
  } finally {
    current = prev;
    native.autocastExit(device, wasEnabled, prevDtype);
  }
}
