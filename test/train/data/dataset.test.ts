// The Dataset: scanning with warnings and errors, batches with prior
// preservation, resumable order, and the latent cache (hits, invalidation
// when the image, the size or the VAE changes, disk files).
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { Generator, noGrad, scope } from "../../../src/engine/index.js";
import { AutoencoderKL } from "../../../src/models/vae/index.js";
import { type Batch, Dataset, type DatasetConfig, disposeBatch } from "../../../src/train/data/dataset.js";
import { coverCrop, loadImage, resizeAndCrop } from "../../../src/train/data/image.js";
import { pixelsToTensor } from "../../../src/train/data/latent-cache.js";
import { assertClose, checkLeaks } from "../../helpers.js";
import { concept } from "./concept.js";
import { tempDir, writeImage, writeNonImage, writeTruncatedJpeg } from "./images.js";

checkLeaks();

function tinyVae(seed: number): AutoencoderKL {
  const generator = new Generator(seed);
  const vae = new AutoencoderKL("tiny", { generator }).eval().requiresGrad_(false);
  generator.dispose();
  return vae;
}
const vaeA = tinyVae(1);
const vaeB = tinyVae(2);
after(() => {
  vaeA.dispose();
  vaeB.dispose();
});

const root = tempDir();
const inst = join(root, "inst");
const cls = join(root, "cls");
const BUCKETS = { minReso: 16, maxReso: 64, step: 8 };

// Buckets for 32 (min 16, max 64, step 8), by kohya's algorithm: 32×32, 24×40, 40×24, 16×48, … ;
// a 2:1 image goes to 40×24 (1.67; 48×16 is 3).
const ready = (async () => {
  await writeImage(join(inst, "a.png"), 32, 32, 1);
  await writeImage(join(inst, "b.png"), 40, 40, 2);
  writeFileSync(join(inst, "b.txt"), "on grass, sunny");
  await writeImage(join(inst, "w.jpg"), 64, 32, 3);
  await writeTruncatedJpeg(join(inst, "bad.jpg"));
  writeNonImage(join(inst, "notes.png"));
  writeFileSync(join(inst, "readme.md"), "not scanned");
  for (let i = 0; i < 3; i++) await writeImage(join(cls, `c${i}.png`), 32, 32, 10 + i);
})();

function config(o: Partial<DatasetConfig> = {}): DatasetConfig {
  return {
    concepts: [
      concept({
        instance_data_dir: inst,
        instance_prompt: "photo of sks dog, [filewords]",
        class_data_dir: cls,
        class_prompt: "photo of a dog",
        num_class_images: 3,
      }),
    ],
    resolution: 32,
    bucketing: BUCKETS,
    batchSize: 2,
    seed: 11,
    ...o,
  };
}

async function collect(ds: Dataset, epoch: number, o = {}): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of ds.epochBatches(epoch, o)) out.push(b);
  return out;
}

test("scanning skips corrupt files with warnings; prompts fill [filewords]", async () => {
  await ready;
  const warnings: string[] = [];
  const ds = await Dataset.open(config({ onWarning: (w) => warnings.push(w) }));
  assert.deepEqual(
    ds.instanceImages.map((e) => e.path),
    [join(inst, "a.png"), join(inst, "b.png"), join(inst, "w.jpg")],
  );
  assert.equal(warnings.length, 2);
  assert.ok(warnings.some((w) => w.includes(join(inst, "bad.jpg"))));
  assert.ok(warnings.some((w) => w.includes(join(inst, "notes.png"))));
  assert.deepEqual(
    ds.instanceImages.map((e) => e.prompt),
    ["photo of sks dog, a", "photo of sks dog, on grass, sunny", "photo of sks dog, w"],
  );
  assert.deepEqual(ds.bucketOf(join(inst, "w.jpg")), [40, 24]);
  assert.deepEqual(ds.bucketOf(join(inst, "b.png")), [32, 32]);
  assert.equal(ds.classImages.length, 3);
  assert.ok(ds.classImages.every((c) => c.prompt === "photo of a dog" && c.isClass));
  assert.deepEqual(ds.bucketCounts(), [
    { bucket: [32, 32], instance: 2, class: 3 },
    { bucket: [40, 24], instance: 1, class: 0 },
  ]);
  ds.dispose();
});

test("a concept with no usable image stops with an error naming the folder", async () => {
  await ready;
  const empty = join(root, "empty");
  mkdirSync(empty, { recursive: true });
  const only = join(root, "only-bad");
  await writeTruncatedJpeg(join(only, "x.jpg"));
  const open = (dir: string) =>
    Dataset.open({ concepts: [concept({ instance_data_dir: dir, instance_prompt: "" })], resolution: 32 });
  await assert.rejects(open(empty), new RegExp(`no usable images in ${empty}: no image files`));
  await assert.rejects(open(only), (e: Error) => e.message.includes(only) && e.message.includes(join(only, "x.jpg")));
  await assert.rejects(open(join(root, "nowhere")), /does not exist/);
  // Prior preservation without class images says how to get them.
  await assert.rejects(
    Dataset.open(
      config({
        concepts: [
          concept({ instance_data_dir: inst, instance_prompt: "", class_data_dir: empty, num_class_images: 2 }),
        ],
      }),
    ),
    /holds no usable image; generate them with ensureClassImages/,
  );
});

test("prior preservation: each batch is instance examples then class examples, from one bucket", async () => {
  await ready;
  const ds = await Dataset.open(config({ latents: { vae: vaeA } }));
  assert.ok(ds.priorPreservation);
  assert.equal(ds.length, 2); // 32×32: a, b → one batch of 2; 40×24: w → one batch of 1
  const batches = await collect(ds, 0);
  assert.equal(batches.length, 2);
  for (const b of batches) {
    const k = b.isClass.filter((c) => !c).length;
    assert.deepEqual(b.isClass, [...Array(k).fill(false), ...Array(k).fill(true)]);
    assert.deepEqual(b.latents!.shape, [2 * k, 4, b.bucket[1] / 2, b.bucket[0] / 2]);
    assert.deepEqual(b.prompts.slice(k), Array(k).fill("photo of a dog"));
    assert.ok(b.imagePaths.slice(0, k).every((p) => p.startsWith(inst)));
    assert.ok(b.imagePaths.slice(k).every((p) => p.startsWith(cls)));
    assert.equal(b.pixels, undefined);
    disposeBatch(b);
  }
  assert.deepEqual(batches.map((b) => b.bucket).sort(), [
    [32, 32],
    [40, 24],
  ]);
  ds.dispose();

  // Without a VAE the batches carry pixels in [-1, 1]; without prior preservation, no class examples.
  const px = await Dataset.open(config({ priorPreservation: false, bucketing: false, batchSize: 3 }));
  assert.equal(px.length, 1);
  const [b] = await collect(px, 0);
  assert.deepEqual(b.pixels!.shape, [3, 3, 32, 32]);
  assert.deepEqual(b.isClass, [false, false, false]);
  const values = b.pixels!.toArray();
  assert.ok(Math.min(...values) >= -1 && Math.max(...values) <= 1);
  disposeBatch(b);
  px.dispose();
});

test("the order is resumable: from step k, or from a saved plan", async () => {
  await ready;
  const ds = await Dataset.open(
    config({ batchSize: 1, concepts: [concept({ instance_data_dir: inst, instance_prompt: "", repeats: 3 })] }),
  );
  assert.equal(ds.length, 9);
  const sig = (bs: Batch[]) => bs.map((b) => `${b.step}:${b.imagePaths.join("+")}:${b.prompts.join("+")}`);
  const all = await collect(ds, 4);
  const tail = await collect(ds, 4, { startStep: 6 });
  assert.deepEqual(sig(tail), sig(all).slice(6));
  const saved = JSON.parse(JSON.stringify(ds.epochPlan(4)));
  const replay = await collect(ds, 4, { plan: saved, startStep: 2 });
  assert.deepEqual(sig(replay), sig(all).slice(2));
  const next = await collect(ds, 5);
  assert.notDeepEqual(sig(next), sig(all));
  for (const b of [...all, ...tail, ...replay, ...next]) disposeBatch(b);
  ds.dispose();
});

test("latent cache: hits, and new latents when the image, the size or the VAE changes", async () => {
  await ready;
  const dir = tempDir();
  await writeImage(join(dir, "inst", "x.png"), 32, 32, 5);
  await writeImage(join(dir, "inst", "y.png"), 32, 48, 6);
  const x = join(dir, "inst", "x.png");
  const base = {
    concepts: [concept({ instance_data_dir: join(dir, "inst"), instance_prompt: "" })],
    resolution: 32,
    bucketing: BUCKETS,
  };
  const ds = await Dataset.open({ ...base, latents: { vae: vaeA } });
  assert.deepEqual(await ds.cacheLatents(), { encoded: 2, reused: 0 });
  assert.deepEqual(await ds.cacheLatents(), { encoded: 0, reused: 2 });
  const z1 = await ds.latents(x, [32, 32]);
  const z2 = await ds.latents(x, [32, 32]);
  assert.deepEqual(z2.toArray(), z1.toArray());

  // The image changes → its latents change.
  await writeImage(x, 32, 32, 99);
  const z3 = await ds.latents(x, [32, 32]);
  assert.notDeepEqual(z3.toArray(), z1.toArray());
  assert.deepEqual(await ds.cacheLatents(), { encoded: 0, reused: 2 });
  // Even when the rewrite keeps the old modification time.
  const { mtime } = statSync(x);
  await writeImage(x, 32, 32, 42);
  utimesSync(x, mtime, mtime);
  const z5 = await ds.latents(x, [32, 32]);
  assert.notDeepEqual(z5.toArray(), z3.toArray());
  // Another target size → other latents.
  const z4 = await ds.latents(x, [24, 40]);
  assert.deepEqual(z4.shape, [1, 4, 20, 12]);
  for (const t of [z1, z2, z3, z4, z5]) t.dispose();
  ds.dispose();

  // Posterior mean mode = vae.encode(pixels).mean × scaling factor.
  const mean = await Dataset.open({ ...base, latents: { vae: vaeA, mode: "mean" } });
  const zm = await mean.latents(x, [32, 32]);
  const img = await loadImage(x);
  const ref = noGrad(() => scope(() => vaeA.encode(pixelsToTensor([img])).mean.mul(vaeA.scalingFactor)));
  assertClose(zm, ref, { atol: 1e-5 });
  for (const t of [zm, ref]) t.dispose();
  mean.dispose();
});

test("disk latent cache: reused across datasets, keyed by VAE and size, corrupt files recomputed", async () => {
  await ready;
  const dir = tempDir();
  for (let i = 0; i < 3; i++) await writeImage(join(dir, "inst", `${i}.png`), 32, 32, 20 + i);
  const cacheDir = join(dir, "cache");
  const warnings: string[] = [];
  const open = (o: Partial<DatasetConfig>, vae = vaeA) =>
    Dataset.open({
      concepts: [concept({ instance_data_dir: join(dir, "inst"), instance_prompt: "" })],
      resolution: 32,
      latents: { vae, cache: "disk", dir: cacheDir },
      onWarning: (w) => warnings.push(w),
      ...o,
    });
  const files = () => readdirSync(cacheDir).filter((f) => f.endsWith(".safetensors"));
  let ds = await open({});
  const progress: number[] = [];
  assert.deepEqual(await ds.cacheLatents((done, total) => progress.push(done, total)), { encoded: 3, reused: 0 });
  assert.deepEqual(progress, [1, 3, 2, 3, 3, 3]);
  assert.equal(files().length, 3);
  const b1 = await collect(ds, 0);
  const z = (bs: Batch[]) => bs.flatMap((b) => b.latents!.toArray());
  ds = await open({});
  assert.deepEqual(await ds.cacheLatents(), { encoded: 0, reused: 3 });
  const b2 = await collect(ds, 0);
  assert.deepEqual(z(b2), z(b1));
  // Another VAE, another size: no stale hit.
  assert.deepEqual(await (await open({}, vaeB)).cacheLatents(), { encoded: 3, reused: 0 });
  assert.deepEqual(await (await open({ resolution: 24 })).cacheLatents(), { encoded: 3, reused: 0 });
  assert.equal(files().length, 9);
  // A caller's VAE fingerprint replaces the weight hash.
  ds = await open({ latents: { vae: vaeA, cache: "disk", dir: cacheDir, vaeFingerprint: "my-vae-v1" } });
  assert.deepEqual(await ds.cacheLatents(), { encoded: 3, reused: 0 });
  // A damaged file is recomputed with a warning, not returned.
  ds = await open({});
  for (const f of files()) writeFileSync(join(cacheDir, f), "garbage");
  const b3 = await collect(ds, 0);
  assert.deepEqual(z(b3), z(b1));
  assert.ok(warnings.some((w) => w.includes("recomputing")));
  for (const b of [...b1, ...b2, ...b3]) disposeBatch(b);
});

test("a batch is encoded from the resized, center-cropped image", async () => {
  await ready;
  const ds = await Dataset.open({
    concepts: [concept({ instance_data_dir: inst, instance_prompt: "" })],
    resolution: 32,
    bucketing: BUCKETS,
    batchSize: 1,
  });
  const w = join(inst, "w.jpg");
  const all = await collect(ds, 0);
  const b = all.find((x) => x.imagePaths[0] === w)!;
  const img = await loadImage(w);
  const expected = await resizeAndCrop(img, coverCrop(img.width, img.height, [40, 24]));
  const ref = pixelsToTensor([expected]);
  assertClose(b.pixels!, ref, { atol: 0 });
  ref.dispose();
  for (const x of all) disposeBatch(x);
  ds.dispose();
});
