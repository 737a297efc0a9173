// Block-wise 8-bit quantisation of optimizer states, as bitsandbytes
// (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization";
// bitsandbytes/functional.py create_dynamic_map, csrc/kernels.cu
// kOptimizerStatic8bit2StateBlockwise): each block of 2048 values is scaled
// by its absolute maximum and each value stored as the index of the nearest
// entry of a 256-entry dynamic (exponent + fraction) map.
import { defOp } from "../dispatch.js";
import { linspace, tensor, zeros } from "../ops/creation.js";
import { abs, add, div, eq, gt, lt, max, mul, ne, reciprocal, sub, where } from "../ops/math.js";
import { cat, indexSelect, narrow, reshape, toDtype, unsqueeze } from "../ops/shape.js";
import { scope } from "../scope.js";
import type { Tensor } from "../tensor.js";

export const BLOCK_SIZE = 2048;

const searchsorted = defOp("aten::searchsorted.Tensor");

/**
 * The dynamic map of create_dynamic_map(signed, max_exponent_bits=7,
 * total_bits=8): for exponent i = 0..6, the midpoints of linspace(0.1, 1)
 * (2^i + 1 points signed, 2^(i+1) + 1 unsigned) scaled by 10^(i-6), their
 * negatives when signed, then 0 and 1; sorted. Built with the same float32
 * tensor ops as the python, then rounded to float32 like torch.tensor(list).
 */
export function dynamicMap(signed: boolean): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
    const t = linspace(0.1, 1, items);
    const b = t.toArray();
    t.dispose();
    // means = (boundaries[:-1] + boundaries[1:]) / 2.0 in float32, then (10 ** (i - 6)) * means: the scalar
    // is cast to float32 first (torch multiplies a float32 tensor by a python float in float32).
    const scale = Math.fround(10 ** (-(7 - 1) + i));
    for (let j = 0; j + 1 < b.length; j++) {
      const m = Math.fround(Math.fround(b[j] + b[j + 1]) / 2);
      data.push(Math.fround(scale * m));
      if (signed) data.push(Math.fround(-scale * m));
    }
  }
  data.push(0, 1);
  if (data.length !== 256) throw new Error(`dynamicMap: ${data.length} entries, expected 256`);
  data.sort((a, b) => a - b);
  return Float32Array.from(data);
}

/** A map and the midpoints between its neighbours (nearest-entry search), as tensors. */
export interface QuantMap {
  code: Tensor;
  mids: Tensor;
}

export function quantMap(signed: boolean): QuantMap {
  const c = dynamicMap(signed);
  const m = new Float32Array(255);
  for (let i = 0; i < 255; i++) m[i] = Math.fround(Math.fround(c[i] + c[i + 1]) / 2);
  return { code: tensor(c), mids: tensor(m) };
}

/** A flat tensor of n values as [blocks, 2048], zero-padded. */
export function toBlocks(flat: Tensor, n: number): Tensor {
  const blocks = Math.ceil(n / BLOCK_SIZE);
  const pad = blocks * BLOCK_SIZE - n;
  const full = pad > 0 ? cat([flat, zeros([pad], { dtype: flat.dtype, device: flat.device })]) : flat;
  return reshape(full, [blocks, BLOCK_SIZE]);
}

/** The first n values of a [blocks, 2048] tensor, flat. */
export function fromBlocks(b: Tensor, n: number): Tensor {
  return narrow(reshape(b, [-1]), 0, 0, n);
}

/** Values from codes: map[code] · absmax of the block ([blocks, 2048] from flat uint8 codes). */
export function dequantize(codes: Tensor, absmax: Tensor, map: QuantMap, n: number): Tensor {
  // the int64 indices (8 bytes a value) and the unscaled values are freed before the caller goes on
  return scope(() => {
    const values = indexSelect(map.code, 0, toDtype(reshape(codes, [-1]), "int64"));
    return mul(toBlocks(values, n), unsqueeze(absmax, 1));
  });
}

/**
 * Codes of [blocks, 2048] values: the index of the nearest map entry of
 * value / absmax (ties go to the lower entry, as torch.searchsorted on the
 * midpoints). `keepSign` moves a code one
 * entry when the nearest entry's sign differs from the value's (the kernel's
 * fix for the first moment). Returns the flat uint8 codes and the absmaxes.
 */
export function quantize(
  values: Tensor,
  map: QuantMap,
  n: number,
  keepSign: boolean,
): { codes: Tensor; absmax: Tensor } {
  // Each stage in its own scope, so that only its result outlives it: a parameter's temporaries
  // (int64 indices, float32 copies: ~60 bytes a value if all were kept to the end) never pile up.
  const absmax = scope(() => max(abs(values), 1));
  // A block of zeros has absmax 0; scaling by 1 instead keeps its codes finite (its values stay 0).
  const x = scope(() => div(values, unsqueeze(where(eq(absmax, 0), 1, absmax), 1)));
  // The number of midpoints below x: the nearest entry, ties to the lower one.
  let idx = searchsorted.t(map.mids.id, x.id);
  if (keepSign) {
    const wrong = scope(() => {
      const entry = reshape(indexSelect(map.code, 0, reshape(idx, [-1])), x.shape);
      // signbit: 1/x < 0 also catches -0.
      return ne(lt(entry, 0), lt(reciprocal(values), 0));
    });
    x.dispose();
    const fixed = scope(() => where(wrong, where(gt(values, 0), add(idx, 1), sub(idx, 1)), idx));
    wrong.dispose();
    idx.dispose();
    idx = fixed;
  } else x.dispose();
  const codes = scope(() => toDtype(fromBlocks(idx, n), "uint8"));
  idx.dispose();
  return { codes, absmax };
}
