// Latent caching. kohya caches `vae.encode(img).latent_dist.sample()` once per
// image (library/train_util.py cache_batch_latents) in memory or as .npz files
// beside the images; here the latents (× the VAE's scaling factor, ready for
// the UNet) live in memory or as safetensors files under a cache folder. The
// key holds everything the latents depend on — the image's bytes (SHA-256),
// the target size and crop, the resize kernel, the background alpha is
// composited on, the VAE (a hash of its weights, or a caller's fingerprint),
// posterior mean or sample and the sample's seed — so a changed input is a
// different key and stale latents are never returned. Files are written
// atomically and checked against their key when read; a corrupt file is
// recomputed.
import { createHash } from "node:crypto";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Generator, keep, noGrad, scope, type Tensor, tensor } from "../../engine/index.js";
import { loadSafetensors, saveSafetensors } from "../../formats/safetensors.js";
import type { AutoencoderKL } from "../../models/vae/vae.js";
import type { Module } from "../../nn/index.js";
import type { Background, RgbImage } from "./image.js";

/** kohya caches a posterior sample; "mean" uses the posterior mean (deterministic without a seed). */
export type LatentMode = "sample" | "mean";

export interface LatentKey {
  image: string;
  target: [number, number];
  resized: [number, number];
  left: number;
  top: number;
  kernel: string;
  background: Background;
  vae: string;
  mode: LatentMode;
  /** The Generator seed of the posterior sample (mode "sample"). */
  seed?: number;
}

/** The key's canonical text and its SHA-256 (the cache file's name). */
export function latentKeyId(k: LatentKey): { id: string; text: string } {
  const text = JSON.stringify([
    "atelier-latents/1",
    k.image,
    k.target,
    k.resized,
    k.left,
    k.top,
    k.kernel,
    [k.background.r, k.background.g, k.background.b],
    k.vae,
    k.mode,
    k.mode === "sample" ? (k.seed ?? null) : null,
  ]);
  return { id: createHash("sha256").update(text).digest("hex"), text };
}

/**
 * A fingerprint of a module's weights: SHA-256 over every parameter's name,
 * dtype, shape and bytes, in name order. Changes when any weight changes.
 */
export function moduleFingerprint(module: Module): string {
  const h = createHash("sha256");
  const state = [...module.stateDict().entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [name, t] of state) {
    h.update(`${name}|${t.dtype}|${t.shape.join(",")}\n`);
    const data = t.toTypedArray();
    h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return h.digest("hex");
}

/** The VAE's fingerprint: its weights and its scaling factor (the cached latents are scaled). */
export function vaeFingerprint(vae: AutoencoderKL): string {
  return `${moduleFingerprint(vae)}:${vae.scalingFactor}`;
}

/**
 * Encodes one RGB image [H, W, 3] uint8 to UNet latents [1, C, h, w]
 * (float32, CPU): pixels → [-1, 1], the VAE posterior's mean or a sample
 * drawn from Generator(seed), × scalingFactor.
 */
export function encodeLatents(vae: AutoencoderKL, image: RgbImage, mode: LatentMode, seed = 0): Tensor {
  const p = vae.parameters()[0];
  return noGrad(() =>
    scope(() => {
      const x = pixelsToTensor([image]).to(p.device, p.dtype);
      const posterior = vae.encode(x);
      let z: Tensor;
      if (mode === "mean") {
        z = posterior.mean;
      } else {
        const g = new Generator(seed);
        try {
          z = posterior.sample(g);
        } finally {
          g.dispose();
        }
      }
      return z.mul(vae.scalingFactor).to("cpu", "float32");
    }),
  );
}

/** Same-size RGB images → [B, 3, H, W] float32 in [-1, 1] (diffusers/kohya Normalize([0.5], [0.5])). */
export function pixelsToTensor(images: readonly RgbImage[]): Tensor {
  const { width: w, height: h } = images[0];
  const all = new Uint8Array(images.length * w * h * 3);
  images.forEach((img, i) => {
    if (img.width !== w || img.height !== h) throw new Error("pixelsToTensor: images of different sizes");
    all.set(img.data, i * w * h * 3);
  });
  return scope(() =>
    tensor(all, { shape: [images.length, h, w, 3] })
      .permute(0, 3, 1, 2)
      .to("float32")
      .div(127.5)
      .sub(1)
      .contiguous(),
  );
}

export interface LatentCacheOptions {
  /** "memory": kept in RAM for the cache's life; "disk": safetensors files under `dir`. */
  kind: "memory" | "disk";
  dir?: string;
  onWarning?: (message: string) => void;
}

/** Latents by LatentKey, in memory or on disk. `get` returns a tensor the caller owns. */
export class LatentCache {
  readonly kind: "memory" | "disk";
  readonly dir?: string;
  readonly #memory = new Map<string, Tensor>();
  readonly #warn: (m: string) => void;

  constructor(o: LatentCacheOptions) {
    this.kind = o.kind;
    this.#warn = o.onWarning ?? (() => {});
    if (o.kind === "disk") {
      if (!o.dir) throw new Error("LatentCache: a disk cache needs a folder (dir)");
      this.dir = o.dir;
      mkdirSync(o.dir, { recursive: true });
    }
  }

  pathOf(key: LatentKey): string | undefined {
    return this.dir ? join(this.dir, `${latentKeyId(key).id}.safetensors`) : undefined;
  }

  has(key: LatentKey): boolean {
    const { id } = latentKeyId(key);
    if (this.kind === "memory") return this.#memory.has(id);
    return statSync(join(this.dir!, `${id}.safetensors`), { throwIfNoEntry: false })?.isFile() ?? false;
  }

  /** The cached latents [1, C, h, w] (a new tensor), or undefined. */
  get(key: LatentKey): Tensor | undefined {
    const { id, text } = latentKeyId(key);
    if (this.kind === "memory") return this.#memory.get(id)?.clone();
    const path = join(this.dir!, `${id}.safetensors`);
    if (!statSync(path, { throwIfNoEntry: false })?.isFile()) return undefined;
    let loaded: ReturnType<typeof loadSafetensors> | undefined;
    try {
      loaded = loadSafetensors(path);
      const t = loaded.tensors.get("latents");
      if (loaded.metadata.key !== text || !t || t.ndim !== 4 || t.dtype !== "float32") {
        throw new Error("the file does not hold the latents of this key");
      }
      loaded.tensors.delete("latents");
      return t;
    } catch (e) {
      this.#warn(`latent cache ${path}: ${(e as Error).message}; recomputing`);
      return undefined;
    } finally {
      for (const t of loaded?.tensors.values() ?? []) t.dispose();
    }
  }

  /** Stores a copy of `latents` (the caller keeps ownership of its tensor). */
  set(key: LatentKey, latents: Tensor): void {
    const { id, text } = latentKeyId(key);
    if (this.kind === "memory") {
      this.#memory.get(id)?.dispose();
      this.#memory.set(id, keep(scope(() => latents.to("cpu", "float32").clone())));
      return;
    }
    saveSafetensors(join(this.dir!, `${id}.safetensors`), { latents }, { format: "pt", key: text });
  }

  /** Entries held in memory (0 for a disk cache). */
  get size(): number {
    return this.#memory.size;
  }

  dispose(): void {
    for (const t of this.#memory.values()) t.dispose();
    this.#memory.clear();
  }
}
