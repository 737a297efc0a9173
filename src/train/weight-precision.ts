// Where the weights of a run are stored: frozen ones (the UNet under an
// adapter, the VAE, a text encoder not trained) in half precision when
// weight_dtype asks, the trained ones in float32 unless full_fp16/full_bf16.
// As kohya sd-scripts train_network.py: `unet.to(dtype=weight_dtype)` for the
// frozen model and, with --full_fp16/--full_bf16, `accelerator.prepare` of a
// network already cast to weight_dtype (the optimizer then steps half weights;
// full_fp16 keeps the loss scaler of mixed_precision fp16).
import { type DType, releaseFreeMemory } from "../engine/index.js";
import type { Module } from "../nn/module.js";
import type { TrainConfig } from "./config.js";

const DTYPES = { fp16: "float16", bf16: "bfloat16" } as const satisfies Record<string, DType>;

export interface StoredPrecision {
  frozen: number;
  trained: number;
}

/**
 * Casts the parameters of `modules` as the config asks: frozen (requiresGrad false) to weight_dtype,
 * trained ones to the mixed_precision dtype under full_fp16/full_bf16. Returns how many were cast.
 * Call it before the optimizer is made (it must hold the tensors that are trained).
 */
export function storeWeights(
  c: Pick<TrainConfig, "weight_dtype" | "full_fp16" | "full_bf16" | "mixed_precision">,
  modules: readonly Module[],
): StoredPrecision {
  const out = { frozen: 0, trained: 0 };
  const frozen = c.weight_dtype === "float32" ? null : DTYPES[c.weight_dtype];
  const trained =
    c.full_fp16 && c.mixed_precision === "fp16"
      ? DTYPES.fp16
      : c.full_bf16 && c.mixed_precision === "bf16"
        ? DTYPES.bf16
        : null;
  for (const m of modules) {
    if (frozen) out.frozen += m.castParameters(frozen, (_k, t) => !t.requiresGrad);
    if (trained) out.trained += m.castParameters(trained, (_k, t) => t.requiresGrad);
  }
  // The float32 tensors just freed stay in the heap (the addon keeps freed blocks for reuse):
  // without this the run keeps the float32 model's memory (SD1.5 LoRA: 3.06 GiB after the cast
  // against PyTorch's 1.84, bench/RESULTS.md "bench/memory, all savers").
  if (out.frozen || out.trained) releaseFreeMemory();
  return out;
}
