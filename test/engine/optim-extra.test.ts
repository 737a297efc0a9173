// Lion, Adafactor, Prodigy and 8-bit AdamW against the PyTorch references of
// scripts/record-optim-extra-reference.py (test/fixtures/optim_extra_reference.json):
// the same gradients (c·p + 3·cos(3p), from the current parameters) step by
// step for 5 steps, and a stop after 2 steps with a save/load of the state
// that resumes bit for bit.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import {
  Adafactor,
  AdamW8bit,
  add,
  cos,
  dynamicMap,
  Lion,
  mul,
  type Optimizer,
  type OptimizerStateDict,
  Prodigy,
  scope,
  type Tensor,
  tensor,
} from "../../src/engine/index.js";
import { assertClose, checkLeaks, testFixture } from "../helpers.js";

checkLeaks();

interface Enc {
  shape: number[];
  f32: string;
}
interface Case {
  optimizer: "Lion" | "Adafactor" | "Prodigy" | "AdamW8bit";
  options: Record<string, unknown>;
  groups?: ({ params: number[] } & Record<string, unknown>)[];
  params: Enc[];
  after: Enc[][];
  prodigy?: { d: number; d_max: number; d_numerator: number }[];
  quantisation_error?: number[][];
}
interface Reference {
  steps: number;
  dynamic_map: { signed: Enc; unsigned: Enc };
  cases: Record<string, Case>;
}

const ref = JSON.parse(readFileSync(testFixture("optim_extra_reference.json"), "utf8")) as Reference;
const TOL = { atol: 1e-6, rtol: 1e-5 };

const floats = (e: Enc): Float32Array => {
  const b = Buffer.from(e.f32, "base64");
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const param = (e: Enc): Tensor => tensor(floats(e), { shape: e.shape }).requiresGrad_();

/** torch's snake_case option names → ours (min_8bit_size → min8bitSize). */
function camel(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())] = v;
  return out;
}

const MAKERS = {
  Lion: (p: never, o: never) => new Lion(p, o),
  Adafactor: (p: never, o: never) => new Adafactor(p, o),
  Prodigy: (p: never, o: never) => new Prodigy(p, o),
  AdamW8bit: (p: never, o: never) => new AdamW8bit(p, o),
};

function make(c: Case, params: Tensor[]): Optimizer<{ lr: number }> {
  const input = c.groups
    ? c.groups.map(({ params: idx, ...rest }) => ({ params: idx.map((i) => params[i]), ...camel(rest) }))
    : params;
  return MAKERS[c.optimizer](input as never, camel(c.options) as never) as Optimizer<{ lr: number }>;
}

/** .grad = (i+1)·p + 3·cos(3·p), the ops of the recording script's grad_of. */
function feedGrads(params: Tensor[]): void {
  params.forEach((p, i) => {
    const g = scope(() => add(mul(p, i + 1), mul(cos(mul(p, 3)), 3)));
    p.grad = g;
    g.dispose();
  });
}

function disposeAll(params: Tensor[], opt: Optimizer<{ lr: number }>): void {
  opt.dispose();
  for (const p of params) {
    p.grad = null;
    p.dispose();
  }
}

test("the dynamic quantisation maps equal bitsandbytes' create_dynamic_map", () => {
  assert.deepEqual(Array.from(dynamicMap(true)), Array.from(floats(ref.dynamic_map.signed)));
  assert.deepEqual(Array.from(dynamicMap(false)), Array.from(floats(ref.dynamic_map.unsigned)));
});

describe("optimizers against their PyTorch references, 5 steps", () => {
  for (const [name, c] of Object.entries(ref.cases)) {
    test(name, () => {
      const params = c.params.map(param);
      const opt = make(c, params);
      for (let s = 0; s < ref.steps; s++) {
        feedGrads(params);
        opt.step();
        params.forEach((p, i) => {
          const expected = floats(c.after[s][i]);
          assertClose(p, expected, { ...TOL, what: `${name} step ${s + 1} param ${i}` });
          if (c.quantisation_error) {
            // Well inside the error quantisation itself makes (8-bit vs 32-bit states of the reference).
            const got = p.toArray();
            const worst = Math.max(...got.map((v, j) => Math.abs(v - expected[j])));
            assert.ok(
              worst <= Math.max(1e-7, c.quantisation_error[s][i] * 0.01),
              `${name} step ${s + 1} param ${i}: off by ${worst}`,
            );
          }
        });
        if (c.prodigy) {
          const want = c.prodigy[s];
          assertClose([(opt as unknown as Prodigy).d], [want.d], { atol: 0, rtol: 1e-6, what: `${name} d` });
        }
      }
      disposeAll(params, opt);
    });
  }
});

/** What a save to disk and a load give back: the JSON through text, the tensors copied. */
function roundTrip(sd: OptimizerStateDict): OptimizerStateDict {
  const tensors = new Map<string, Tensor>();
  for (const [k, t] of sd.tensors) {
    tensors.set(k, t.clone());
    t.dispose();
  }
  return { json: JSON.parse(JSON.stringify(sd.json)), tensors };
}

describe("state dict: stop after 2 steps, resume, bit-identical to one run", () => {
  for (const [name, c] of Object.entries(ref.cases)) {
    test(name, () => {
      const straight = c.params.map(param);
      const one = make(c, straight);
      for (let s = 0; s < ref.steps; s++) {
        feedGrads(straight);
        one.step();
      }
      const first = c.params.map(param);
      const a = make(c, first);
      for (let s = 0; s < 2; s++) {
        feedGrads(first);
        a.step();
      }
      const saved = roundTrip(a.stateDict());
      const second = first.map((p) => scope(() => p.detach().clone()).requiresGrad_());
      disposeAll(first, a);
      const b = make(c, second);
      b.loadStateDict(saved);
      for (const t of saved.tensors.values()) t.dispose();
      for (let s = 2; s < ref.steps; s++) {
        feedGrads(second);
        b.step();
      }
      second.forEach((p, i) => {
        assert.deepEqual(p.toArray(), straight[i].toArray(), `${name} param ${i} after the resume`);
      });
      disposeAll(straight, one);
      disposeAll(second, b);
    });
  }
});

describe("bad hyper-parameters are refused with the name", () => {
  const p = () => [tensor([1, 2, 3]).requiresGrad_()];
  const cases: [string, () => unknown, RegExp][] = [
    ["Lion beta", () => new Lion(p(), { betas: [0.9, 1.5] }), /Lion: invalid beta parameter at index 1/],
    ["Lion lr", () => new Lion(p(), { lr: -1 }), /Lion: invalid learning rate/],
    ["Adafactor warmup", () => new Adafactor(p(), { relativeStep: false, lr: 1e-3, warmupInit: true }), /warmup_init/],
    ["Adafactor no lr", () => new Adafactor(p(), { relativeStep: false }), /relative_step=False needs a learning rate/],
    ["Adafactor decay", () => new Adafactor(p(), { decayRate: 0.5 }), /decay_rate/],
    ["Prodigy d0", () => new Prodigy(p(), { d0: 0 }), /Prodigy: invalid d0/],
    ["Prodigy slice_p", () => new Prodigy(p(), { sliceP: 0 }), /slice_p/],
    ["Prodigy growth", () => new Prodigy(p(), { growthRate: 0.5 }), /growth_rate/],
    ["AdamW8bit eps", () => new AdamW8bit(p(), { eps: -1 }), /AdamW8bit: invalid epsilon/],
    ["AdamW8bit min size", () => new AdamW8bit(p(), { min8bitSize: 1.5 }), /min_8bit_size/],
  ];
  for (const [what, fn, re] of cases) {
    test(what, () => {
      // The parameters made inside are freed with the scope.
      scope(() => assert.throws(fn, re));
    });
  }
});

test("8-bit AdamW keeps 1 byte per value (plus an absmax per 2048) for large parameters", () => {
  const w = param(ref.cases.adamw8bit_default.params[0]);
  const opt = new AdamW8bit([w]);
  feedGrads([w]);
  opt.step();
  const sd = opt.stateDict();
  const dtypes = Object.fromEntries([...sd.tensors].map(([k, t]) => [k, `${t.dtype}[${t.shape}]`]));
  assert.deepEqual(dtypes, {
    "state.0.state1": "uint8[70,60]",
    "state.0.state2": "uint8[70,60]",
    "state.0.absmax1": "float32[3]",
    "state.0.absmax2": "float32[3]",
  });
  for (const t of sd.tensors.values()) t.dispose();
  disposeAll([w], opt);
});
