// Finite-difference checks of autograd in float64: for L = sum(f(x)·R), the
// central difference (L(x+h) − L(x−h)) / 2h must equal dL/dx from backward.
// Independent of the PyTorch recordings, so a wrong wrapper argument that the
// recording shares (say, a swapped dimension) still shows up here.
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { noGrad, scope, type Tensor } from "../../src/engine/index.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();

const f64 = { dtype: "float64" as const };

function gradcheck(fn: (...xs: Tensor[]) => Tensor, shapes: number[][], seed = 0): void {
  scope(() => {
    const g = new E.Generator(seed);
    const inputs = shapes.map((s) => E.randn(s, { ...f64, generator: g }).requiresGrad_());
    const out = fn(...inputs);
    const R = E.randn(out.shape, { ...f64, generator: g });
    g.dispose();
    const analytic = E.grad([out.mul(R).sum()], inputs);
    const h = 1e-6;
    inputs.forEach((x, which) => {
      const n = x.numel;
      const numeric: number[] = [];
      const flat = noGrad(() => x.detach().flatten());
      for (let i = 0; i < n; i++) {
        const at = (delta: number) =>
          scope(() =>
            noGrad(() => {
              const shifted = flat.clone();
              E.add_(shifted.narrow(0, i, 1), delta);
              const xs = inputs.map((y, j) => (j === which ? shifted.reshape(...x.shape) : y.detach()));
              return fn(...xs)
                .mul(R)
                .sum()
                .item();
            }),
          );
        numeric.push((at(h) - at(-h)) / (2 * h));
      }
      assertClose(analytic[which]!, numeric, { atol: 1e-6, rtol: 1e-5, what: `input ${which}` });
    });
  });
}

test("gradcheck conv2d (stride, padding) and conv_transpose2d", () => {
  gradcheck((x, w, b) => E.conv2d(x, w, b, { stride: 2, padding: 1 }), [[1, 2, 5, 5], [3, 2, 3, 3], [3]]);
  gradcheck(
    (x, w) => E.convTranspose2d(x, w, null, { stride: 2, padding: 1, outputPadding: 1 }),
    [
      [1, 2, 3, 3],
      [2, 3, 3, 3],
    ],
  );
});

test("gradcheck group_norm and layer_norm", () => {
  gradcheck((x, w, b) => E.groupNorm(x, 2, w, b, 1e-5), [[2, 4, 3, 3], [4], [4]]);
  gradcheck((x, w, b) => E.layerNorm(x, [6], w, b), [[2, 3, 6], [6], [6]]);
});

test("gradcheck attention (math path), softmax and activations", () => {
  gradcheck(
    (q, k, v) => E.scaledDotProductAttention(q, k, v, { forceMath: true, causal: true }),
    [
      [1, 2, 4, 3],
      [1, 2, 4, 3],
      [1, 2, 4, 3],
    ],
  );
  gradcheck((x) => E.softmax(x, 1), [[3, 5]]);
  gradcheck((x) => E.gelu(x).add(E.gelu(x, "tanh")).add(E.quickGelu(x)).add(E.silu(x)), [[4, 3]]);
});

test("gradcheck bilinear interpolation, linear and baddbmm", () => {
  gradcheck((x) => E.interpolate(x, { size: [5, 4], mode: "bilinear" }), [[1, 2, 3, 3]]);
  gradcheck((x, w, b) => E.linear(x, w, b), [[2, 4], [3, 4], [3]]);
  gradcheck(
    (i, a, b) => E.baddbmm(i, a, b, 0.5, 2),
    [
      [2, 2, 3],
      [2, 2, 4],
      [2, 4, 3],
    ],
  );
});

test("gradcheck reductions and mse loss", () => {
  gradcheck((x) => E.variance(x, 1).add(E.std(x, 0).sum()), [[3, 4]]);
  gradcheck((x) => x.norm(2, 1), [[3, 4]]);
  gradcheck(
    (a, b) => E.mseLoss(a, b),
    [
      [2, 3],
      [2, 3],
    ],
  );
});
