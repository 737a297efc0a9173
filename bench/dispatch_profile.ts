// Where the time of one tiny op goes: peels `x.add(1).dispose()` layer by
// layer, from a bare N-API crossing to the full Tensor method, each timed as
// µs per op (best of several interleaved rounds, since the machine is noisy).
//
//   node dist/bench/dispatch_profile.js [--ops N] [--rounds N]

import { defOp, ones, scope, setNumThreads, Tensor } from "../src/engine/index.js";
import { native } from "../src/engine/native.js";

const arg = (flag: string, fallback: number): number => {
  const i = process.argv.indexOf(flag);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
};
const N = arg("--ops", 20000);
const ROUNDS = arg("--rounds", 15);

setNumThreads(1);
const x = ones([4]);
const xid = x.id;
const addS = native.opFind("aten::add", "Scalar");
const addOp = defOp("aten::add.Scalar");
const add_ = native.opFind("aten::add_", "Scalar");

const addT = native.opFind("aten::add", "Tensor");

// Each variant runs N ops.
const variants: [string, () => void][] = [
  [
    "N-API crossing: native.liveCount()",
    () => {
      for (let i = 0; i < N; i++) native.liveCount();
    },
  ],
  [
    "tensor table: native.alias(x) + native.free",
    () => {
      for (let i = 0; i < N; i++) native.free(native.alias(xid));
    },
  ],
  [
    "boxed in place: native.callVoid(add_, x, 0, 1)",
    () => {
      for (let i = 0; i < N; i++) native.callVoid(add_, xid, 0, 1);
    },
  ],
  [
    "add.Scalar: native.call(op, x, 1, 1) + free",
    () => {
      for (let i = 0; i < N; i++) native.free(native.call(addS, xid, 1, 1) as number);
    },
  ],
  [
    "  + new Tensor(id) + dispose()",
    () => {
      for (let i = 0; i < N; i++) new Tensor(native.call(addS, xid, 1, 1) as number).dispose();
    },
  ],
  [
    "  + defOp(...).t(...rest) wrapper",
    () => {
      for (let i = 0; i < N; i++) addOp.t(xid, 1, 1).dispose();
    },
  ],
  [
    "  full: x.add(1).dispose()",
    () => {
      for (let i = 0; i < N; i++) x.add(1).dispose();
    },
  ],
  [
    "  full: x.add(1) in scope() per 100",
    () => {
      for (let i = 0; i < N; i += 100) {
        scope(() => {
          for (let j = 0; j < 100; j++) x.add(1);
        });
      }
    },
  ],
  [
    "  full: x.add(1) in scope() per op",
    () => {
      for (let i = 0; i < N; i++) {
        scope(() => {
          x.add(1);
        });
      }
    },
  ],
  [
    "add.Tensor: native.call(op, x, x, 1) + free",
    () => {
      for (let i = 0; i < N; i++) native.free(native.call(addT, xid, xid, 1) as number);
    },
  ],
  [
    "  + new Tensor(id) + dispose()",
    () => {
      for (let i = 0; i < N; i++) new Tensor(native.call(addT, xid, xid, 1) as number).dispose();
    },
  ],
  [
    "  full: x.add(x).dispose()",
    () => {
      for (let i = 0; i < N; i++) x.add(x).dispose();
    },
  ],
];

const best = variants.map(() => Number.POSITIVE_INFINITY);
for (let r = 0; r < ROUNDS; r++) {
  variants.forEach(([, fn], k) => {
    const t0 = performance.now();
    fn();
    best[k] = Math.min(best[k], ((performance.now() - t0) * 1e3) / N);
  });
}
console.log(`µs per op, best of ${ROUNDS} rounds of ${N} ops (1 thread)`);
variants.forEach(([name], k) => {
  console.log(`${name.padEnd(52)}${best[k].toFixed(3).padStart(8)}`);
});
x.dispose();
if (native.liveCount() !== 0) console.error(`warning: ${native.liveCount()} tensor(s) leaked`);
