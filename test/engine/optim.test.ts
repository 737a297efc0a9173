// Optimizers, gradient clipping and LR schedules against torch 1.13 and
// diffusers (test/fixtures/optim_reference.json, from
// scripts/record-optim-reference.py): the recorded gradients are assigned to
// .grad step by step and the parameters compared after each step.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import {
  AdamW,
  type AdamWOptions,
  clipGradNorm,
  LRScheduler,
  liveTensors,
  lrSchedule,
  mul,
  type Optimizer,
  type OptimizerStateDict,
  SCHEDULE_NAMES,
  type ScheduleOptions,
  SGD,
  type SGDOptions,
  scope,
  type Tensor,
  tensor,
  zeros,
} from "../../src/engine/index.js";
import { assertClose, checkLeaks, testFixture } from "../helpers.js";

checkLeaks();

interface Enc {
  shape: number[];
  data: number[];
}
interface OptCase {
  optimizer: "SGD" | "AdamW";
  options: Record<string, unknown>;
  groups?: ({ params: number[] } & Record<string, unknown>)[];
  schedule?: { name: string } & ScheduleOptions;
  params: Enc[];
  grads: (Enc | null)[][];
  after: Enc[][];
  lrs?: number[][];
}
interface ClipCase {
  maxNorm: number;
  normType: number | "inf";
  grads: (Enc | null)[];
  totalNorm: number;
  after: (Enc | null)[];
}
interface Reference {
  steps: number;
  optimizers: Record<string, OptCase>;
  clip: ClipCase[];
  schedules: { name: string; options: ScheduleOptions; multipliers: number[] }[];
}

const ref = JSON.parse(readFileSync(testFixture("optim_reference.json"), "utf8")) as Reference;
const TOL = { atol: 1e-6, rtol: 1e-5 };

const fromEnc = (e: Enc): Tensor => tensor(Float32Array.from(e.data), { shape: e.shape });
const param = (e: Enc): Tensor => fromEnc(e).requiresGrad_();

/** torch's snake_case option names → ours. */
function options(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[k === "weight_decay" ? "weightDecay" : k] = v;
  return out;
}

function makeOptimizer(c: OptCase, params: Tensor[]): Optimizer<{ lr: number }> {
  const input = c.groups
    ? c.groups.map(({ params: idx, ...rest }) => ({ params: idx.map((i) => params[i]), ...options(rest) }))
    : params;
  return c.optimizer === "SGD"
    ? new SGD(input, options(c.options) as SGDOptions)
    : new AdamW(input, options(c.options) as AdamWOptions);
}

/** Assigns the recorded gradients of `step` (null: no grad). */
function feedGrads(c: OptCase, params: Tensor[], step: number): void {
  c.grads[step].forEach((g, i) => {
    if (g === null) {
      params[i].grad = null;
      return;
    }
    const t = fromEnc(g);
    params[i].grad = t;
    t.dispose(); // the parameter holds the gradient now
  });
}

function checkParams(c: OptCase, params: Tensor[], step: number, what: string): void {
  params.forEach((p, i) => {
    assertClose(p, c.after[step][i].data, { ...TOL, what: `${what} step ${step + 1} param ${i}` });
  });
}

function disposeParams(params: Tensor[]): void {
  for (const p of params) {
    p.grad = null;
    p.dispose();
  }
}

describe("optimizers against torch.optim 1.13", () => {
  for (const [name, c] of Object.entries(ref.optimizers)) {
    if (c.schedule) continue;
    test(name, () => {
      const params = c.params.map(param);
      const opt = makeOptimizer(c, params);
      for (let s = 0; s < ref.steps; s++) {
        feedGrads(c, params, s);
        opt.step();
        checkParams(c, params, s, name);
      }
      opt.dispose();
      disposeParams(params);
    });
  }

  test("params without grad are skipped and get no state", () => {
    const c = ref.optimizers.adamw_groups_skip;
    const params = c.params.map(param);
    const opt = makeOptimizer(c, params);
    for (let s = 0; s < 3; s++) {
      feedGrads(c, params, s);
      opt.step();
    }
    // Param 1 had no grad at steps 1 and 2 (0-based).
    assert.deepEqual(
      params.map((p) => opt.stepCount(p)),
      [3, 1, 3],
    );
    opt.dispose();
    disposeParams(params);
  });

  test("step() leaves no tensor behind once the state exists", () => {
    const c = ref.optimizers.adamw_amsgrad;
    const params = c.params.map(param);
    const opt = makeOptimizer(c, params);
    feedGrads(c, params, 0);
    opt.step();
    const live = liveTensors();
    feedGrads(c, params, 1);
    opt.step();
    assert.equal(liveTensors(), live);
    opt.dispose();
    assert.equal(liveTensors(), live - 3 * params.length);
    disposeParams(params);
  });

  test("zeroGrad clears to null, or to zeros in place", () => {
    const p = zeros([3]).requiresGrad_();
    const opt = new SGD([p], { lr: 0.1 });
    const g0 = tensor([1, 2, 3]);
    p.grad = g0;
    g0.dispose();
    opt.zeroGrad(false);
    const g = p.grad;
    assert.deepEqual(g?.toArray(), [0, 0, 0]);
    g?.dispose();
    opt.zeroGrad();
    assert.equal(p.grad, null);
    opt.dispose();
    p.dispose();
  });
});

describe("state dict: save and resume", () => {
  for (const name of ["sgd_nesterov_wd", "sgd_dampening", "adamw_wd", "adamw_groups_skip"]) {
    test(`${name}: stop after 2 steps, resume in a new optimizer, same params as one run`, () => {
      const c = ref.optimizers[name];
      const first = c.params.map(param);
      const a = makeOptimizer(c, first);
      for (let s = 0; s < 2; s++) {
        feedGrads(c, first, s);
        a.step();
      }
      // What a checkpoint holds: JSON text and tensor copies.
      const saved = a.stateDict();
      const json = JSON.parse(JSON.stringify(saved.json));
      const tensors = new Map([...saved.tensors].map(([k, t]) => [k, t.clone()]));
      for (const t of saved.tensors.values()) t.dispose();
      const paramsNow = first.map((p) => scope(() => p.detach().clone()).requiresGrad_());
      a.dispose();
      disposeParams(first);

      const second = paramsNow;
      const b = makeOptimizer(c, second);
      b.loadStateDict({ json, tensors });
      for (const t of tensors.values()) t.dispose();
      for (let s = 2; s < ref.steps; s++) {
        feedGrads(c, second, s);
        b.step();
        checkParams(c, second, s, `${name} resumed`);
      }
      b.dispose();
      disposeParams(second);
    });
  }

  test("names, step counts and hyper-parameters in the state dict", () => {
    const c = ref.optimizers.adamw_groups_skip;
    const params = c.params.map(param);
    const opt = makeOptimizer(c, params);
    feedGrads(c, params, 0);
    opt.step();
    feedGrads(c, params, 1);
    opt.step();
    const sd = opt.stateDict();
    const names = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
    assert.deepEqual(
      [...sd.tensors.keys()],
      [0, 1, 2].flatMap((i) => names.map((n) => `state.${i}.${n}`)),
    );
    assert.equal(sd.json.kind, "AdamW");
    assert.deepEqual(sd.json.state, { "0": { step: 2 }, "1": { step: 2 }, "2": { step: 1 } });
    assert.deepEqual(
      sd.json.groups.map((g) => [g.params, g.lr, g.weightDecay, g.amsgrad]),
      [
        [[0, 1], 0.02, 0.01, true],
        [[2], 0.1, 0.5, true],
      ],
    );
    for (const t of sd.tensors.values()) t.dispose();
    opt.dispose();
    disposeParams(params);
  });

  test("a bad state dict is refused and changes nothing", () => {
    const c = ref.optimizers.adamw_wd;
    const params = c.params.map(param);
    const opt = makeOptimizer(c, params);
    feedGrads(c, params, 0);
    opt.step();
    const good = opt.stateDict();
    const withTensors = (edit: (m: Map<string, Tensor>) => void): OptimizerStateDict => {
      const m = new Map(good.tensors);
      edit(m);
      return { json: good.json, tensors: m };
    };
    const wrongShape = zeros([7]);
    const bad: [string, OptimizerStateDict, RegExp][] = [
      ["kind", { json: { ...good.json, kind: "SGD" }, tensors: good.tensors }, /state is for SGD, not AdamW/],
      ["groups", { json: { ...good.json, groups: [] }, tensors: good.tensors }, /0 parameter groups/],
      ["missing", withTensors((m) => m.delete("state.1.exp_avg_sq")), /missing state tensor "state.1.exp_avg_sq"/],
      ["shape", withTensors((m) => m.set("state.0.exp_avg", wrongShape)), /shape \[7\]/],
      [
        "unknown",
        withTensors((m) => m.set("state.9.exp_avg", wrongShape)),
        /unexpected state tensor "state.9.exp_avg"/,
      ],
      [
        "hyper",
        { json: { ...good.json, groups: [{ ...good.json.groups[0], betas: [1, 0.9] }] }, tensors: good.tensors },
        /invalid beta parameter at index 0: 1/,
      ],
    ];
    const before = opt.stateDict();
    const snapshot = [...before.tensors.values()].map((t) => t.toArray());
    for (const [what, sd, message] of bad) {
      assert.throws(() => opt.loadStateDict(sd), message, what);
    }
    assert.deepEqual(
      [...before.tensors.values()].map((t) => t.toArray()),
      snapshot,
    );
    assert.equal(opt.paramGroups[0].lr, 0.05);
    wrongShape.dispose();
    for (const t of [...good.tensors.values(), ...before.tensors.values()]) t.dispose();
    opt.dispose();
    disposeParams(params);
  });
});

describe("clipGradNorm against torch.nn.utils.clip_grad_norm_", () => {
  ref.clip.forEach((c, n) => {
    test(`case ${n}: max_norm ${c.maxNorm}, norm ${c.normType}`, () => {
      const params = c.grads.map((g) => zeros(g ? g.shape : [1]).requiresGrad_());
      c.grads.forEach((g, i) => {
        if (!g) return;
        const t = fromEnc(g);
        params[i].grad = t;
        t.dispose();
      });
      const total = clipGradNorm(params, c.maxNorm, c.normType === "inf" ? Number.POSITIVE_INFINITY : c.normType);
      assertClose([total], [c.totalNorm], { ...TOL, what: "total norm" });
      params.forEach((p, i) => {
        const g = p.grad;
        const want = c.after[i];
        if (want === null) assert.equal(g, null);
        else assertClose(g!, want.data, { ...TOL, what: `grad ${i}` });
        g?.dispose();
      });
      disposeParams(params);
    });
  });

  test("no grads gives 0; bad arguments are refused", () => {
    const p = zeros([2]).requiresGrad_();
    assert.equal(clipGradNorm([p], 1), 0);
    assert.throws(() => clipGradNorm([p], -1), /maxNorm must be a number >= 0/);
    const g = tensor([Number.NaN, 1]);
    p.grad = g;
    g.dispose();
    assert.throws(() => clipGradNorm(p, 1, 2, { errorIfNonfinite: true }), /non-finite/);
    disposeParams([p]);
  });
});

describe("LR schedules against diffusers' optimization.py", () => {
  for (const s of ref.schedules) {
    test(`${s.name} ${JSON.stringify(s.options)}`, () => {
      const f = lrSchedule(s.name, s.options);
      const got = s.multipliers.map((_, step) => f(step));
      assertClose(got, s.multipliers, { atol: 1e-12, rtol: 1e-12 });
    });
  }

  test("the recorded settings cover every schedule", () => {
    assert.deepEqual(new Set(ref.schedules.map((s) => s.name)), new Set(SCHEDULE_NAMES));
  });

  test("bad names and options give clear errors", () => {
    assert.throws(
      () => lrSchedule("cosine_annealing"),
      /unknown lr schedule "cosine_annealing"; valid: linear, cosine, cosine_with_restarts, polynomial, constant/,
    );
    assert.throws(() => lrSchedule("linear", { warmupSteps: 10 }), /requires trainingSteps/);
    assert.throws(() => lrSchedule("constant_with_warmup"), /requires warmupSteps/);
    assert.throws(() => lrSchedule("cosine", { warmupSteps: -1, trainingSteps: 5 }), /integer >= 0/);
    assert.throws(() => lrSchedule("polynomial", { warmupSteps: 0, trainingSteps: 5 }), /requires baseLr/);
    assert.throws(
      () => lrSchedule("polynomial", { warmupSteps: 0, trainingSteps: 5, baseLr: 1e-7 }),
      /lrEnd \(1e-7\) must be smaller than baseLr/,
    );
    assert.throws(() => lrSchedule("piecewise_constant", { stepRules: "1:x,0.1" }), /bad rule "1:x"/);
    // diffusers allows a warm-up longer than the training (the multiplier then drops to 0 or lr_end).
    assert.equal(lrSchedule("linear", { warmupSteps: 20, trainingSteps: 10 })(25), 0);
    assert.equal(lrSchedule("polynomial", { warmupSteps: 20, trainingSteps: 10, baseLr: 1e-3 })(25), 1e-7 / 1e-3);
  });
});

describe("LRScheduler", () => {
  test("drives SGD like torch's LambdaLR with diffusers' linear schedule", () => {
    const c = ref.optimizers.sgd_lambdalr_linear;
    const params = c.params.map(param);
    const opt = makeOptimizer(c, params);
    const { name, ...o } = c.schedule!;
    const sched = new LRScheduler(opt, name, o);
    for (let s = 0; s < ref.steps; s++) {
      assertClose(sched.lastLr(), c.lrs![s], { atol: 1e-15, rtol: 1e-12, what: `lr at step ${s}` });
      feedGrads(c, params, s);
      opt.step();
      sched.step();
      checkParams(c, params, s, "sgd_lambdalr_linear");
    }
    assert.equal(sched.lastStep, ref.steps);
    opt.dispose();
    disposeParams(params);
  });

  test("per-group base lrs, polynomial from the optimizer's lr, resume keeps the base", () => {
    const p0 = zeros([2]).requiresGrad_();
    const p1 = zeros([2]).requiresGrad_();
    const opt = new AdamW([{ params: [p0] }, { params: [p1], lr: 0.5 }], { lr: 0.01 });
    const o = { warmupSteps: 2, trainingSteps: 10, power: 2 };
    const sched = new LRScheduler(opt, "polynomial", o);
    const f = lrSchedule("polynomial", { ...o, baseLr: 0.01 });
    for (let s = 0; s < 6; s++) sched.step();
    assert.deepEqual(sched.lastLr(), [0.01 * f(6), 0.5 * f(6)]);

    // Resume: a new optimizer and scheduler from both state dicts.
    const sd = opt.stateDict();
    const saved = JSON.parse(JSON.stringify(sched.stateDict()));
    const opt2 = new AdamW([{ params: [p0] }, { params: [p1], lr: 0.5 }], { lr: 0.01 });
    opt2.loadStateDict(sd);
    const sched2 = new LRScheduler(opt2, "polynomial", o);
    sched2.loadStateDict(saved);
    assert.deepEqual(sched2.baseLrs, [0.01, 0.5]);
    assert.deepEqual(sched2.lastLr(), sched.lastLr());
    sched2.step();
    assert.deepEqual(sched2.lastLr(), [0.01 * f(7), 0.5 * f(7)]);
    assert.throws(() => sched2.loadStateDict({ step: -1 }), /bad step -1/);

    // A custom multiplier function works too.
    const sched3 = new LRScheduler(opt2, (s) => 0.5 ** s);
    sched3.step();
    assert.deepEqual(sched3.lastLr(), [0.005, 0.25]);
    assert.throws(() => new LRScheduler(opt2, "warmup_cosine"), /valid: linear, cosine/);
    opt.dispose();
    opt2.dispose();
    disposeParams([p0, p1]);
  });
});

describe("bad optimizer input", () => {
  test("clear errors", () => {
    const p = zeros([2]).requiresGrad_();
    const q = zeros([2]).requiresGrad_();
    assert.throws(() => new SGD([p], { lr: -0.1 }), /SGD: invalid learning rate: -0.1/);
    assert.throws(() => new SGD([p], {} as SGDOptions), /SGD: invalid learning rate: undefined/);
    assert.throws(() => new SGD([p], { lr: 0.1, momentum: -1 }), /invalid momentum value/);
    assert.throws(() => new SGD([p], { lr: 0.1, nesterov: true }), /Nesterov momentum requires a momentum/);
    assert.throws(() => new AdamW([p], { lr: -1 }), /AdamW: invalid learning rate: -1/);
    assert.throws(() => new AdamW([p], { betas: [1, 0.999] }), /invalid beta parameter at index 0: 1 /);
    assert.throws(() => new AdamW([p], { betas: [0.9, -0.1] }), /invalid beta parameter at index 1: -0.1/);
    assert.throws(() => new AdamW([p], { eps: -1e-8 }), /invalid epsilon value/);
    assert.throws(() => new AdamW([p], { weightDecay: -0.1 }), /invalid weight_decay value/);
    assert.throws(() => new AdamW([]), /empty parameter list/);
    assert.throws(() => new AdamW([{ params: [p] }, { params: [p, q] }]), /more than one parameter group/);
    assert.throws(() => new AdamW([{ params: [p], lr: -1 }]), /invalid learning rate/);
    assert.throws(
      () => new AdamW([{ params: [p], momentum: 0.9 } as unknown as { params: Tensor[] }]),
      /unknown hyper-parameter "momentum"/,
    );
    const nonLeaf = mul(p, 2);
    assert.throws(() => new SGD([nonLeaf], { lr: 0.1 }), /non-leaf/);
    nonLeaf.dispose();

    // A schedule (or a user) writing a bad lr is caught at step().
    const opt = new SGD([p], { lr: 0.1 });
    opt.paramGroups[0].lr = Number.NaN;
    assert.throws(() => opt.step(), /invalid learning rate: NaN/);
    opt.dispose();
    assert.throws(() => opt.step(), /the optimizer was disposed/);
    disposeParams([p, q]);
  });
});
