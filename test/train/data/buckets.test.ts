// Buckets against kohya's numbers, and the epoch plan: one bucket per batch,
// deterministic per seed and epoch, resumable, JSON-able.
import assert from "node:assert/strict";
import { test } from "node:test";
import { makeBucketResolutions, type Size, selectBucket } from "../../../src/train/data/buckets.js";
import { checkPlan, type EpochPlan, type PlanInput, planEpoch, planLength } from "../../../src/train/data/plan.js";
import { checkLeaks } from "../../helpers.js";

checkLeaks();

// kohya library/model_util.py make_bucket_resolutions((512, 512), 256, 1024, 64), worked by hand:
//   max_area = 512·512 = 262144; the square: int(sqrt(262144) // 64)·64 = 512 → (512, 512).
//   width  256: min(1024, int((262144 // 256) // 64)·64) = min(1024, 16·64) = 1024 → (256, 1024) and (1024, 256)
//   width  320: 262144 // 320 = 819 → 12·64 = 768 → (320, 768), (768, 320)
//   width  384: 682 → 10·64 = 640 → (384, 640), (640, 384)
//   width  448: 585 → 9·64 = 576 → (448, 576), (576, 448)
//   width  512: 512 → 512 (the square again)
//   width  576: 455 → 7·64 = 448 (already there); 640: 409 → 384 (there)
//   width  704: 372 → 5·64 = 320 → (704, 320), (320, 704); 768: 341 → 320 (there)
//   width  832: 315 → 4·64 = 256 → (832, 256), (256, 832); 896: 292 → 256; 960: 273 → 256; 1024: 256 → 256
// sorted: 17 buckets.
const KOHYA_512: Size[] = [
  [256, 832],
  [256, 896],
  [256, 960],
  [256, 1024],
  [320, 704],
  [320, 768],
  [384, 640],
  [448, 576],
  [512, 512],
  [576, 448],
  [640, 384],
  [704, 320],
  [768, 320],
  [832, 256],
  [896, 256],
  [960, 256],
  [1024, 256],
];

test("the bucket set for 512, min 256, max 1024, step 64 is kohya's", () => {
  assert.deepEqual(makeBucketResolutions(512, { minReso: 256, maxReso: 1024, step: 64 }), KOHYA_512);
  assert.deepEqual(makeBucketResolutions([512, 512]), KOHYA_512);
  for (const [w, h] of KOHYA_512) assert.ok(w * h <= 512 * 512 && w % 64 === 0 && h % 64 === 0);
});

test("kohya's 768 set and its checks", () => {
  // make_bucket_resolutions((768, 768), 256, 1024, 64): max_area 589824; square 768;
  // 256 → 2304 → capped 1024; 320 → 1843 → 1792 → 1024; 384 → 1536 → 1024; 448 → 1316 → 1024;
  // 512 → 1152 → 1152 → 1024; 576 → 1024; 640 → 921 → 896; 704 → 837 → 832; 768; 832 → 708 → 704; …
  const b = makeBucketResolutions(768);
  assert.ok(b.some(([w, h]) => w === 768 && h === 768));
  assert.ok(b.some(([w, h]) => w === 640 && h === 896));
  assert.ok(b.some(([w, h]) => w === 704 && h === 832));
  assert.ok(b.every(([w, h]) => w * h <= 768 * 768));
  assert.throws(() => makeBucketResolutions(2048), /max bucket reso 1024 is below the resolution/);
  assert.throws(() => makeBucketResolutions(512, { step: 0 }), /positive integers/);
});

test("images go to the bucket with the nearest aspect ratio", () => {
  // 2:1 → 704×320 (2.2; 640×384 is 1.67, 768×320 is 2.4); 1:1 → 512×512; 3:4 → 448×576 (0.778; 384×640 is 0.6).
  assert.deepEqual(selectBucket(2000, 1000, KOHYA_512), [704, 320]);
  assert.deepEqual(selectBucket(64, 32, KOHYA_512), [704, 320]);
  assert.deepEqual(selectBucket(1234, 1234, KOHYA_512), [512, 512]);
  assert.deepEqual(selectBucket(300, 400, KOHYA_512), [448, 576]);
  assert.deepEqual(selectBucket(1000, 3000, KOHYA_512), [256, 832]); // 1:3 → 256×832 (0.308; 320×768 is 0.417)
  // An image of exactly a bucket's size stays in it.
  assert.deepEqual(selectBucket(768, 320, KOHYA_512), [768, 320]);
});

function input(o: Partial<PlanInput> = {}): PlanInput {
  const sq: Size = [32, 32];
  const wide: Size = [48, 24];
  return {
    seed: 5,
    batchSize: 2,
    instances: [
      ...["a", "b", "c"].map((n) => ({ path: `/i/${n}.png`, bucket: sq, concept: 0, prompt: `sks, ${n}, x, y, z` })),
      { path: "/i/w1.png", bucket: wide, concept: 0, prompt: "sks, wide" },
      { path: "/j/k.png", bucket: sq, concept: 1, prompt: "zzz" },
    ],
    classes: [
      { path: "/c/1.png", bucket: sq, concept: 0, prompt: "dog" },
      { path: "/c/2.png", bucket: sq, concept: 0, prompt: "dog" },
    ],
    concepts: [{ repeats: 2, shuffle_tags: true, keep_tokens: 1 }, { repeats: 1 }],
    ...o,
  };
}

test("a plan: one bucket per batch, every example `repeats` times, instance then class", () => {
  const inp = input();
  // square: 3·2 + 1 = 7 examples → 4 batches; wide: 2 → 1 batch.
  assert.equal(planLength(inp), 5);
  const plan = planEpoch(inp, 0);
  assert.equal(plan.batches.length, 5);
  const seen = new Map<string, number>();
  for (const b of plan.batches) {
    const inst = b.items.filter((i) => !i.isClass);
    const cls = b.items.filter((i) => i.isClass);
    assert.deepEqual(
      b.items.map((i) => i.isClass),
      [...inst.map(() => false), ...cls.map(() => true)],
    );
    // Concept 0 examples get a class partner; concept 1 has no class images.
    assert.equal(cls.length, inst.filter((i) => i.concept === 0).length);
    for (const i of inst) seen.set(i.path, (seen.get(i.path) ?? 0) + 1);
    for (const i of inst) {
      const bucket = i.path === "/i/w1.png" ? [48, 24] : [32, 32];
      assert.deepEqual(b.bucket, bucket);
      if (i.concept === 0) assert.ok(i.prompt.startsWith("sks"), i.prompt);
    }
    // The wide bucket has no class image of its own: the concept's class images are used.
    for (const c of cls) assert.ok(c.path.startsWith("/c/") && c.prompt === "dog");
  }
  assert.deepEqual(Object.fromEntries(seen), {
    "/i/a.png": 2,
    "/i/b.png": 2,
    "/i/c.png": 2,
    "/i/w1.png": 2,
    "/j/k.png": 1,
  });
});

test("a plan is a function of (seed, epoch): same epoch same plan, other epochs other orders", () => {
  const inp = input();
  assert.deepEqual(planEpoch(inp, 3), planEpoch(inp, 3));
  const orders = new Set([0, 1, 2, 3, 4, 5].map((e) => JSON.stringify(planEpoch(inp, e).batches)));
  assert.ok(orders.size >= 5);
  assert.notDeepEqual(planEpoch(input({ seed: 6 }), 3).batches, planEpoch(inp, 3).batches);
  // JSON round trip (saved with a checkpoint), and the check that it belongs to this dataset.
  const saved = JSON.parse(JSON.stringify(planEpoch(inp, 2)));
  assert.deepEqual(saved, planEpoch(inp, 2));
  checkPlan(saved, inp);
  assert.throws(() => checkPlan(saved, input({ batchSize: 3 })), /another dataset/);
  assert.throws(() => checkPlan({ ...saved, format: "x" } as unknown as EpochPlan, inp), /not an epoch plan/);
});
