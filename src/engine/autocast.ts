// Mixed precision: inside autocast(), eligible ops (matmul, conv, linear …)
// run in bf16/fp16 while precision-sensitive ones stay in float32, exactly as
// torch.autocast does (it is libtorch's own Autocast dispatch key).
import { type DType, dtypeCode } from "./dtype.js";
import { native } from "./native.js";

export function autocast<T>(device: "cpu" | "cuda", dtype: DType, fn: () => T): T {
  if (dtype !== "bfloat16" && dtype !== "float16") {
    throw new Error(`autocast: dtype must be bfloat16 or float16, got ${dtype}`);
  }
  const [wasEnabled, prevDtype] = native.autocastEnter(device, dtypeCode(dtype));
  try {
    return fn();
  } finally {
    native.autocastExit(device, wasEnabled, prevDtype);
  }
}
