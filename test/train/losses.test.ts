// The training objective checked by hand: the loss split into instance and
// prior terms, min-SNR weights from the schedule's numbers, noise offset.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Generator, randn, scope, tensor } from "../../src/engine/index.js";
import { NoiseSchedule, SD15_SCHEDULER_CONFIG } from "../../src/schedulers/index.js";
import { diffusionLoss, drawNoise, minSnrWeights } from "../../src/train/losses.js";
import { assertClose, checkLeaks } from "../helpers.js";

checkLeaks();

test("the loss splits into instance and prior terms, computed by hand on one batch", () => {
  scope(() => {
    const g = new Generator(1);
    const pred = randn([3, 2, 2, 2], { generator: g });
    const target = randn([3, 2, 2, 2], { generator: g });
    g.dispose();
    const p = pred.toArray();
    const t = target.toArray();
    const mse = [0, 1, 2].map((i) => {
      let s = 0;
      for (let j = 0; j < 8; j++) s += (p[i * 8 + j] - t[i * 8 + j]) ** 2;
      return s / 8;
    });
    const { loss, instance, prior } = diffusionLoss(pred, target, [false, true, false], { priorLossWeight: 0.5 });
    const wantInstance = (mse[0] + mse[2]) / 2;
    const wantPrior = mse[1];
    assertClose([instance.item()], [wantInstance], { rtol: 1e-6 });
    assertClose([prior!.item()], [wantPrior], { rtol: 1e-6 });
    assertClose([loss.item()], [wantInstance + 0.5 * wantPrior], { rtol: 1e-6 });
    const plain = diffusionLoss(pred, target, [false, false, false]);
    assert.equal(plain.prior, null);
    assertClose([plain.loss.item()], [(mse[0] + mse[1] + mse[2]) / 3], { rtol: 1e-6 });
    assert.throws(() => diffusionLoss(pred, target, [true, true, true]), /at least one instance/);
    assert.throws(() => diffusionLoss(pred, target, [false]), /1 example flags for a batch of 3/);
  });
});

test("min-SNR weights are min(SNR, γ)/SNR (epsilon) and min(SNR, γ)/(SNR+1) (v)", () => {
  scope(() => {
    const steps = [0, 250, 999];
    for (const prediction_type of ["epsilon", "v_prediction"] as const) {
      const schedule = new NoiseSchedule({ ...SD15_SCHEDULER_CONFIG, prediction_type });
      const w = minSnrWeights(schedule, tensor(BigInt64Array.from(steps, BigInt)), 5).toArray();
      const want = steps.map((s) => {
        const a = schedule.alphasCumprod[s];
        const snr = a / (1 - a);
        return Math.min(snr, 5) / (prediction_type === "epsilon" ? snr : snr + 1);
      });
      assertClose(w, want, { rtol: 1e-5 });
    }
  });
});

test("noise offset adds one N(0,1)·offset per image and channel; timesteps in range", () => {
  scope(() => {
    const latents = randn([2, 4, 3, 3]);
    const gens = [new Generator(9), new Generator(9)];
    const plain = drawNoise(latents, 1000, { generator: gens[0] });
    const g = new Generator(9);
    const base = randn([2, 4, 3, 3], { generator: g });
    assert.deepEqual(plain.noise.toArray(), base.toArray());
    const shifted = drawNoise(latents, 1000, { offset: 0.1, generator: gens[1] });
    const diff = shifted.noise.sub(base);
    // constant over each image's channel: max − min over the spatial dims is ~0
    const spread = diff
      .max([2, 3])
      .sub(diff.min([2, 3]))
      .max()
      .item();
    assert.ok(spread < 1e-6, `offset not constant per channel (${spread})`);
    assert.ok(diff.abs().max().item() > 1e-4, "an offset was added");
    const ts = plain.timesteps.toArray();
    assert.ok(ts.every((t) => Number.isInteger(t) && t >= 0 && t < 1000));
    for (const x of [g, ...gens]) x.dispose();
  });
});
