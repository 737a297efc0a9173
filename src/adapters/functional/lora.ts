// LoRA / LoCon math, pure functions over tensors (after LyCORIS
// lycoris/functional/locon.py and general.py, and kohya-ss/sd-scripts
// networks/lora.py): ΔW = scale · up @ down, with a conv's down factor
// flattened over [in·kh·kw]; the optional Tucker core (LoCon `lora_mid`)
// gives ΔW[o,i,…] = Σ up[o,m]·mid[m,n,…]·down[n,i].
import { conv2d, einsum, linear, scope, type Tensor } from "../../engine/index.js";

/** alpha / rank; an alpha of 0, null or undefined means alpha = rank (scale 1), as kohya's LoRAModule. */
export function loraScale(alpha: number | null | undefined, rank: number): number {
  if (!(rank > 0)) throw new Error(`LoRA rank must be positive, got ${rank}`);
  return alpha === null || alpha === undefined || alpha === 0 ? 1 : alpha / rank;
}

export interface LoraFactors {
  /** [r, in] (linear) or [r, in, kh, kw] (conv; [r, in, 1, 1] with a Tucker core). */
  down: Tensor;
  /** [out, r] or [out, r, 1, 1]. */
  up: Tensor;
  /** Tucker core [r, r, kh, kw] (LoCon `lora_mid`), or null. */
  mid?: Tensor | null;
}

/**
 * ΔW = scale · up @ down in the layer's weight shape: [out, in] for a linear,
 * [out, in, kh, kw] for a conv (lycoris/functional/locon.py lora_diff_weight;
 * general.py tucker_weight_from_conv for the Tucker form).
 */
export function loraDeltaWeight(f: LoraFactors, scale: number): Tensor {
  return scope(() => {
    const { down, up, mid } = f;
    const rank = down.size(0);
    if (up.size(1) !== rank) throw new Error(`LoRA factors disagree: down has rank ${rank}, up ${up.size(1)}`);
    const up2 = up.reshape(up.size(0), rank);
    if (mid) {
      const down2 = down.reshape(rank, down.size(1));
      // m n …, o m, n i → o i …
      return einsum("mnhw,om,ni->oihw", mid, up2, down2).mul(scale);
    }
    const [, inDim, ...kernel] = down.shape;
    return up2
      .matmul(down.reshape(rank, -1))
      .mul(scale)
      .reshape(up.size(0), inDim, ...kernel);
  });
}

/** How the wrapped layer applies its weight: a linear, or a conv with its stride and padding. */
export type LayerOp = { kind: "linear" } | { kind: "conv"; stride: number; padding: number };

/**
 * The LoRA path of the bypass forward, scale · up(down(x)) (kohya's
 * LoRAModule.forward; locon.py lora_bypass_forward_diff): `between` runs on
 * the rank-r activation (kohya's dropout). Conv: down takes the layer's
 * stride and padding (through the Tucker core when there is one), up is 1×1.
 */
export function loraBypass(
  x: Tensor,
  f: LoraFactors,
  op: LayerOp,
  scale: number,
  between?: (h: Tensor) => Tensor,
): Tensor {
  return scope(() => {
    let h: Tensor;
    if (op.kind === "linear") {
      h = linear(x, f.down);
    } else if (f.mid) {
      h = conv2d(conv2d(x, f.down), f.mid, null, { stride: op.stride, padding: op.padding });
    } else {
      h = conv2d(x, f.down, null, { stride: op.stride, padding: op.padding });
    }
    if (between) h = between(h);
    const y = op.kind === "linear" ? linear(h, f.up) : conv2d(h, f.up);
    return scale === 1 ? y : y.mul(scale);
  });
}

/** x through a weight of the layer's kind without bias: how a full ΔW runs in bypass mode. */
export function applyWeight(x: Tensor, weight: Tensor, op: LayerOp): Tensor {
  return op.kind === "linear" ? linear(x, weight) : conv2d(x, weight, null, { stride: op.stride, padding: op.padding });
}
