// The dataset the training loop reads: concepts scanned and checked, images
// put in aspect-ratio buckets (or one square size), epochs planned as plain
// data (plan.ts), and batches loaded as latents (through the latent cache) or
// pixels, with their prompts and which examples are class (prior
// preservation) examples. Modeled on kohya's DreamBoothDataset
// (library/train_util.py) and the A1111 extension's DbDataset
// (dreambooth/dataset/db_dataset.py).
import { readFile } from "node:fs/promises";
import { cat, scope, type Tensor } from "../../engine/index.js";
import { latentScale } from "../../infer/txt2img.js";
import type { AutoencoderKL } from "../../models/vae/vae.js";
import type { ConceptConfig } from "../config-core.js";
import { type BucketOptions, makeBucketResolutions, type Size, selectBucket } from "./buckets.js";
import { captionsVary } from "./captions.js";
import { fileSignature, type ImageEntry, type LoadedConcept, loadConcept } from "./concepts.js";
import {
  type Background,
  type CropPlan,
  coverCrop,
  decodeImage,
  hashBytes,
  ImageError,
  RESIZE_KERNEL,
  type RgbImage,
  resizeAndCrop,
  WHITE,
} from "./image.js";
import {
  encodeLatents,
  LatentCache,
  type LatentKey,
  type LatentMode,
  pixelsToTensor,
  vaeFingerprint,
} from "./latent-cache.js";
import {
  checkPlan,
  classPool,
  type EpochPlan,
  type PlanInput,
  type PlannedBatch,
  planEpoch,
  planLength,
} from "./plan.js";
import { Rng } from "./rng.js";
import type { TextEmbeddingCache } from "./text-cache.js";

export interface LatentOptions {
  vae: AutoencoderKL;
  /** "memory" (default), "disk" (safetensors under `dir`), or "none": encode every time. */
  cache?: "memory" | "disk" | "none";
  dir?: string;
  /** "sample" (kohya: latent_dist.sample()) or "mean". Default "sample". */
  mode?: LatentMode;
  /** Seed of the cached posterior samples (default 0); independent of the training seed so caches survive it. */
  sampleSeed?: number;
  /** The VAE's identity for the cache key; default a hash of its weights and scaling factor. */
  vaeFingerprint?: string;
}

export interface DatasetConfig {
  /** The training config's concepts, as resolved (every field set). */
  concepts: ConceptConfig[];
  /** Training resolution: 512, or [width, height] (kohya "512,768"). */
  resolution: number | Size;
  /** Aspect-ratio buckets (kohya enable_bucket): true for kohya's defaults, or min/max/step. Off: one size, center crop. */
  bucketing?: boolean | BucketOptions;
  /** Instance examples per batch (default 1); with prior preservation as many class examples join them. */
  batchSize?: number;
  /** Seed of the data order and caption randomness (default 0). */
  seed?: number;
  /** Pair instance examples with class examples. Default: on when a concept asks for class images. */
  priorPreservation?: boolean;
  /** What alpha is composited on (default white). */
  background?: Background;
  /** Produce latents with this VAE; without it, batches carry pixels. */
  latents?: LatentOptions;
  /** With latents, batches carry their pixels too (a method that reads both: dreambooth_upscaler). */
  withPixels?: boolean;
  /** Attach each batch's text conditioning (`context`) from this cache. */
  textCache?: TextEmbeddingCache;
  /** Where batch tensors are put (default "cpu"). */
  device?: string;
  /** Images decoded at once (default 4). */
  concurrency?: number;
  onWarning?: (message: string) => void;
}

export interface Batch {
  epoch: number;
  /** Index of the batch in its epoch. */
  step: number;
  bucket: Size;
  /** [B, C, H/f, W/f] UNet latents (× scaling factor), with a VAE. */
  latents?: Tensor;
  /** [B, 3, H, W] in [-1, 1], without a VAE. */
  pixels?: Tensor;
  /** [B, T, hidden] text conditioning, with a textCache. */
  context?: Tensor;
  prompts: string[];
  /** Instance examples first, then class examples (diffusers collate_fn order). */
  isClass: boolean[];
  concepts: number[];
  imagePaths: string[];
}

/** Frees a batch's tensors. */
export function disposeBatch(b: Batch): void {
  b.latents?.dispose();
  b.pixels?.dispose();
  b.context?.dispose();
}

/** An image whose latents are not cached yet: its key and its pixels at the target size. */
interface Pending {
  key: LatentKey;
  pixels: RgbImage;
}

interface Known {
  signature: string;
  hash: string;
  width: number;
  height: number;
}

export class Dataset {
  readonly config: DatasetConfig;
  readonly concepts: LoadedConcept[];
  /** The bucket sizes images can go to. */
  readonly buckets: Size[];
  readonly warnings: string[];
  readonly priorPreservation: boolean;
  readonly #entries = new Map<string, ImageEntry & { bucket: Size }>();
  readonly #plan: PlanInput;
  readonly #known = new Map<string, Known>();
  readonly #cache: LatentCache | undefined;
  readonly #vaeFingerprint: string | undefined;

  private constructor(config: DatasetConfig, concepts: LoadedConcept[], buckets: Size[], prior: boolean) {
    this.config = config;
    this.concepts = concepts;
    this.buckets = buckets;
    this.priorPreservation = prior;
    this.warnings = concepts.flatMap((c) => c.warnings);
    const instances: PlanInput["instances"][number][] = [];
    const classes: PlanInput["classes"][number][] = [];
    for (const c of concepts) {
      for (const e of [...c.instance, ...(prior ? c.class : [])]) {
        const bucket = selectBucket(e.width, e.height, buckets);
        const key = `${e.isClass ? "class" : "instance"}:${e.path}`;
        if (this.#entries.has(key)) continue; // the same file in two concepts: the first one wins
        this.#entries.set(key, { ...e, bucket });
        this.#known.set(e.path, { signature: e.signature, hash: e.hash, width: e.width, height: e.height });
        (e.isClass ? classes : instances).push({ path: e.path, bucket, concept: c.index, prompt: e.prompt });
      }
    }
    this.#plan = {
      seed: config.seed ?? 0,
      batchSize: config.batchSize ?? 1,
      instances,
      classes,
      concepts: concepts.map((c) => c.config),
    };
    const l = config.latents;
    const kind = l?.cache ?? "memory";
    if (l && kind !== "none") this.#cache = new LatentCache({ kind, dir: l.dir, onWarning: (m) => this.#warn(m) });
    if (l) this.#vaeFingerprint = l.vaeFingerprint ?? vaeFingerprint(l.vae);
  }

  /** Scans, checks and buckets every concept's images. Throws when a concept has no usable image. */
  static async open(config: DatasetConfig): Promise<Dataset> {
    checkConfig(config);
    const res: Size =
      typeof config.resolution === "number" ? [config.resolution, config.resolution] : config.resolution;
    const b = config.bucketing;
    const buckets = b ? makeBucketResolutions(res, b === true ? {} : b) : [res];
    if (config.latents) {
      const f = latentScale(config.latents.vae);
      const bad = buckets.find(([w, h]) => w % f !== 0 || h % f !== 0);
      if (bad) throw new Error(`bucket ${bad[0]}x${bad[1]} is not a multiple of the VAE's factor ${f}`);
    }
    const concepts: LoadedConcept[] = [];
    for (const [i, c] of config.concepts.entries()) {
      concepts.push(await loadConcept(c, i, { background: config.background, concurrency: config.concurrency }));
    }
    const wanting = concepts.filter((c) => c.classWanted > 0);
    const prior = config.priorPreservation ?? wanting.length > 0;
    if (prior) {
      if (wanting.length === 0)
        throw new Error("prior preservation needs a concept with a class_data_dir and num_class_images > 0");
      for (const c of wanting) {
        if (c.class.length === 0) {
          throw new Error(
            `concept ${c.index + 1}: prior preservation needs class images, but ${c.config.class_data_dir} holds no usable image; generate them with ensureClassImages`,
          );
        }
      }
    }
    const ds = new Dataset(config, concepts, buckets, prior);
    for (const w of ds.warnings) config.onWarning?.(w);
    if (config.textCache && concepts.some((c) => captionsVary(c.config))) {
      ds.#warn("caption shuffling or dropout makes many distinct prompts: the text cache keeps every one of them");
    }
    return ds;
  }

  #warn(message: string): void {
    this.warnings.push(message);
    this.config.onWarning?.(message);
  }

  /** Usable instance images (each once, without repeats), in scan order. */
  get instanceImages(): ImageEntry[] {
    return this.concepts.flatMap((c) => c.instance);
  }

  /** Class images in use (empty without prior preservation). */
  get classImages(): ImageEntry[] {
    return this.priorPreservation ? this.concepts.flatMap((c) => c.class) : [];
  }

  /** The bucket an image was put in. */
  bucketOf(path: string, isClass = false): Size | undefined {
    return this.#entries.get(`${isClass ? "class" : "instance"}:${path}`)?.bucket;
  }

  /** Examples per bucket (instance counts include repeats), as kohya logs them. */
  bucketCounts(): { bucket: Size; instance: number; class: number }[] {
    const counts = new Map<string, { bucket: Size; instance: number; class: number }>();
    const at = (b: Size) => {
      const k = `${b[0]}x${b[1]}`;
      if (!counts.has(k)) counts.set(k, { bucket: b, instance: 0, class: 0 });
      return counts.get(k)!;
    };
    for (const im of this.#plan.instances) at(im.bucket).instance += this.#plan.concepts[im.concept].repeats ?? 1;
    for (const im of this.#plan.classes) at(im.bucket).class += 1;
    return [...counts.values()].sort((a, b) => a.bucket[0] - b.bucket[0] || a.bucket[1] - b.bucket[1]);
  }

  /** Batches per epoch. */
  get length(): number {
    return planLength(this.#plan);
  }

  /** The epoch's batches as plain JSON-able data: save it with a checkpoint, or recompute it from the epoch. */
  epochPlan(epoch: number): EpochPlan {
    return planEpoch(this.#plan, epoch);
  }

  /**
   * Loads the epoch's batches in order, from `startStep` (to resume after
   * `startStep` finished steps). With `plan`, follows that saved plan. Each
   * batch's tensors belong to the caller (disposeBatch).
   */
  async *epochBatches(epoch: number, o: { startStep?: number; plan?: EpochPlan } = {}): AsyncGenerator<Batch> {
    if (o.plan) {
      checkPlan(o.plan, this.#plan);
      if (o.plan.epoch !== epoch) throw new Error(`the plan is for epoch ${o.plan.epoch}, not ${epoch}`);
    }
    const plan = o.plan ?? this.epochPlan(epoch);
    const start = o.startStep ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > plan.batches.length) {
      throw new Error(`startStep must be an integer in 0..${plan.batches.length}, got ${start}`);
    }
    for (let step = start; step < plan.batches.length; step++) {
      yield await this.loadBatch(plan.batches[step], plan.epoch, step);
    }
  }

  /** Loads one planned batch. */
  async loadBatch(planned: PlannedBatch, epoch: number, step: number): Promise<Batch> {
    const { bucket, items } = planned;
    const device = this.config.device ?? "cpu";
    const batch: Batch = {
      epoch,
      step,
      bucket: [bucket[0], bucket[1]],
      prompts: items.map((i) => i.prompt),
      isClass: items.map((i) => i.isClass),
      concepts: items.map((i) => i.concept),
      imagePaths: items.map((i) => i.path),
    };
    try {
      if (this.config.latents) {
        // Without a cache every step draws a fresh posterior sample (kohya encodes each step then).
        const fresh = (slot: number) =>
          this.#cache === undefined ? new Rng(this.#plan.seed, epoch, "latent", step, slot).seed() : undefined;
        const parts = await this.#latentsOf(items.map((i, slot) => ({ path: i.path, bucket, seed: fresh(slot) })));
        try {
          batch.latents = scope(() => cat(parts, 0).to(device));
        } finally {
          for (const p of parts) p.dispose();
        }
      }
      if (!this.config.latents || this.config.withPixels) {
        const images = await Promise.all(items.map((i) => this.#pixels(i.path, bucket)));
        batch.pixels = scope(() => pixelsToTensor(images).to(device));
      }
      if (this.config.textCache) batch.context = scope(() => this.config.textCache!.encode(batch.prompts).to(device));
      return batch;
    } catch (e) {
      disposeBatch(batch);
      throw e;
    }
  }

  /** Reads and decodes a file, refreshing what is known of it (signature taken before the read). */
  async #read(path: string): Promise<{ image: RgbImage; known: Known }> {
    const signature = await fileSignature(path).catch(() => "");
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (e) {
      throw new ImageError(path, `cannot read the file: ${(e as Error).message}`);
    }
    const image = await decodeImage(bytes, path, { background: this.config.background });
    const known = { signature, hash: hashBytes(bytes), width: image.width, height: image.height };
    this.#known.set(path, known);
    return { image, known };
  }

  async #pixels(path: string, bucket: Size): Promise<RgbImage> {
    const { image } = await this.#read(path);
    return resizeAndCrop(image, coverCrop(image.width, image.height, bucket));
  }

  #key(known: Known, crop: CropPlan, seed: number): LatentKey {
    const l = this.config.latents!;
    return {
      image: known.hash,
      target: crop.target,
      resized: crop.resized,
      left: crop.left,
      top: crop.top,
      kernel: RESIZE_KERNEL,
      background: this.config.background ?? WHITE,
      vae: this.#vaeFingerprint!,
      mode: l.mode ?? "sample",
      seed,
    };
  }

  #sampleSeed(hash: string, bucket: Size): number {
    return new Rng(this.config.latents?.sampleSeed ?? 0, "latent", hash, bucket[0], bucket[1]).seed();
  }

  /**
   * The first half of getting an image's latents, the part that can run
   * concurrently: a cache hit (while the file is unchanged: same stat
   * signature, else same bytes), or the resized, cropped pixels to encode.
   */
  async #prepare(path: string, bucket: Size, seed?: number): Promise<{ hit: Tensor } | Pending> {
    let known = this.#known.get(path);
    let image: RgbImage | undefined;
    const signature = await fileSignature(path).catch(() => "");
    if (!known || known.signature === "" || known.signature !== signature) ({ image, known } = await this.#read(path));
    if (this.#cache) {
      const crop = coverCrop(known.width, known.height, bucket);
      const hit = this.#cache.get(this.#key(known, crop, seed ?? this.#sampleSeed(known.hash, bucket)));
      if (hit) return { hit };
    }
    if (!image) ({ image, known } = await this.#read(path));
    const crop = coverCrop(known.width, known.height, bucket);
    const key = this.#key(known, crop, seed ?? this.#sampleSeed(known.hash, bucket));
    return { key, pixels: await resizeAndCrop(image, crop) };
  }

  /** The second half: encode (one image at a time, with its own seed) and cache. */
  #encode(p: Pending): Tensor {
    const l = this.config.latents!;
    const z = encodeLatents(l.vae, p.pixels, l.mode ?? "sample", p.key.seed ?? 0);
    this.#cache?.set(p.key, z);
    return z;
  }

  /** Latents [1, C, h, w] of each (path, bucket): files decoded concurrently, then encoded in order. */
  async #latentsOf(requests: { path: string; bucket: Size; seed?: number }[]): Promise<Tensor[]> {
    if (!this.config.latents) throw new Error("Dataset.latents: the dataset has no VAE (config.latents)");
    const settled = await Promise.allSettled(requests.map((r) => this.#prepare(r.path, r.bucket, r.seed)));
    const failed = settled.find((r) => r.status === "rejected");
    const out: Tensor[] = [];
    try {
      if (failed) throw (failed as PromiseRejectedResult).reason;
      for (const r of settled) {
        const v = (r as PromiseFulfilledResult<{ hit: Tensor } | Pending>).value;
        out.push("hit" in v ? v.hit : this.#encode(v));
      }
      return out;
    } catch (e) {
      for (const r of settled) if (r.status === "fulfilled" && "hit" in r.value) r.value.hit.dispose();
      for (const t of out) t.dispose();
      throw e;
    }
  }

  /** The latents [1, C, h, w] of one image in one bucket (a tensor the caller owns), from the cache or encoded. */
  async latents(path: string, bucket: Size, seed?: number): Promise<Tensor> {
    return (await this.#latentsOf([{ path, bucket, seed }]))[0];
  }

  /**
   * kohya cache_latents: encodes every (image, bucket) the epochs can use,
   * once; what the cache already holds is reused. Returns the counts.
   */
  async cacheLatents(onProgress?: (done: number, total: number) => void): Promise<{ encoded: number; reused: number }> {
    if (!this.#cache) throw new Error("cacheLatents: the dataset has no latent cache (config.latents.cache)");
    const work = new Map<string, [string, Size]>();
    const add = (path: string, b: Size) => work.set(`${path}|${b[0]}x${b[1]}`, [path, b]);
    for (const im of this.#plan.instances) {
      add(im.path, im.bucket);
      for (const c of classPool(this.#plan, im.concept, im.bucket)) add(c.path, im.bucket);
    }
    let done = 0;
    let reused = 0;
    const todo: { path: string; bucket: Size }[] = [];
    const flush = async () => {
      for (const t of await this.#latentsOf(todo.splice(0))) {
        t.dispose();
        done++;
        onProgress?.(done, work.size);
      }
    };
    for (const [path, bucket] of work.values()) {
      const known = this.#known.get(path);
      const signature = await fileSignature(path).catch(() => "");
      if (known && known.signature !== "" && known.signature === signature) {
        const key = this.#key(
          known,
          coverCrop(known.width, known.height, bucket),
          this.#sampleSeed(known.hash, bucket),
        );
        if (this.#cache.has(key)) {
          reused++;
          done++;
          onProgress?.(done, work.size);
          continue;
        }
      }
      todo.push({ path, bucket });
      if (todo.length >= (this.config.concurrency ?? 4)) await flush();
    }
    await flush();
    return { encoded: done - reused, reused };
  }

  /** Frees the in-memory latent cache. */
  dispose(): void {
    this.#cache?.dispose();
  }
}

function checkConfig(c: DatasetConfig): void {
  if (!Array.isArray(c.concepts) || c.concepts.length === 0) throw new Error("dataset: no concepts");
  const res = typeof c.resolution === "number" ? [c.resolution, c.resolution] : c.resolution;
  if (!Array.isArray(res) || res.length !== 2 || !res.every((v) => Number.isInteger(v) && v > 0)) {
    throw new Error(
      `dataset: resolution must be a positive integer or [width, height], got ${JSON.stringify(c.resolution)}`,
    );
  }
  const bs = c.batchSize ?? 1;
  if (!Number.isInteger(bs) || bs < 1) throw new Error(`dataset: batchSize must be an integer >= 1, got ${bs}`);
  const seed = c.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new Error(`dataset: seed must be a non-negative integer, got ${seed}`);
  const cache = c.latents?.cache ?? "memory";
  if (cache === "disk" && !c.latents?.dir) throw new Error("dataset: a disk latent cache needs latents.dir");
}
