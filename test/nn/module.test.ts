// The module tree: keys, strict loading, replacing a child, init bounds.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as E from "../../src/engine/index.js";
import { scope, type Tensor } from "../../src/engine/index.js";
import { Conv2d, type Forward, Linear, Module } from "../../src/nn/index.js";
import { checkLeaks } from "../helpers.js";

checkLeaks();

class Block extends Module {
  constructor() {
    super({ generator: undefined });
    this.add("proj", new Linear(4, 3));
    this.add("conv", new Conv2d(2, 2, 3, { padding: 1, bias: false }));
  }
  forward(x: Tensor): Tensor {
    return this.mod<Linear & Forward>("proj").forward(x);
  }
}

class Net extends Module {
  constructor() {
    super();
    this.add("blocks", new Module());
    (this.mod("blocks") as Net).add(0, new Block());
  }
}

test("parameter keys are the module paths", () => {
  const net = new Net();
  assert.deepEqual(
    [...net.namedParameters().keys()],
    ["blocks.0.proj.weight", "blocks.0.proj.bias", "blocks.0.conv.weight"],
  );
  assert.equal(net.parameterCount(), 4 * 3 + 3 + 2 * 2 * 9);
  net.dispose();
});

test("default init draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch", () => {
  const lin = new Linear(100, 50);
  const bound = 1 / Math.sqrt(100);
  scope(() => {
    assert.ok(lin.weight.abs().max().item() <= bound);
    assert.ok(lin.weight.abs().max().item() > bound * 0.9);
  });
  lin.dispose();
});

test("strict loading names missing, unexpected and mis-shaped keys and changes nothing", () => {
  const net = new Net();
  scope(() => {
    const before = net.stateDict().get("blocks.0.proj.bias")!.toArray();
    const source = new Map([
      ["blocks.0.proj.weight", E.zeros([3, 5])],
      ["blocks.0.proj.bias", E.zeros([3])],
      ["blocks.0.extra", E.zeros([1])],
    ]);
    assert.throws(
      () => net.loadStateDict(source),
      (e: Error) =>
        /missing keys \(1\): blocks\.0\.conv\.weight/.test(e.message) &&
        /unexpected keys \(1\): blocks\.0\.extra/.test(e.message) &&
        /wrong shapes \(1\): blocks\.0\.proj\.weight: expected \[3,4\], file has \[3,5\]/.test(e.message),
    );
    assert.deepEqual(net.stateDict().get("blocks.0.proj.bias")!.toArray(), before);
    const ok = new Map([
      ["blocks.0.proj.weight", E.ones([3, 4], { dtype: "float64" })],
      ["blocks.0.proj.bias", E.ones([3])],
      ["blocks.0.conv.weight", E.ones([2, 2, 3, 3])],
    ]);
    net.loadStateDict(ok);
    const w = net.stateDict().get("blocks.0.proj.weight")!;
    assert.equal(w.dtype, "float32");
    assert.equal(w.requiresGrad, true);
    assert.deepEqual(w.sum().item(), 12);
  });
  net.dispose();
});

test("replacing a child changes what forward runs", () => {
  const net = new Net();
  class Doubler extends Module implements Forward {
    constructor(readonly inner: Module & Forward) {
      super();
      this.add("inner", inner);
    }
    forward(x: Tensor): Tensor {
      return this.inner.forward(x).mul(2);
    }
  }
  const block = net.getModule("blocks.0") as Block;
  scope(() => {
    const x = E.ones([1, 4]);
    const plain = block.forward(x).toArray();
    const old = net.replaceModule("blocks.0.proj", new Doubler(net.getModule("blocks.0.proj") as Linear));
    assert.ok(old instanceof Linear);
    assert.deepEqual(
      block.forward(x).toArray(),
      plain.map((v) => v * 2),
    );
    assert.ok(net.namedParameters().has("blocks.0.proj.inner.weight"));
    assert.throws(() => net.replaceModule("blocks.0.nothing", old), /no module at 'blocks.0.nothing'/);
  });
  net.dispose();
});
