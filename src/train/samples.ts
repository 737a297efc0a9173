// Sample grids during training: each sample prompt generated with the fixed
// sample seed, side by side in one PNG (with A1111's parameters text).

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { loadEmbeddingDirs } from "../adapters/embeddings.js";
import { writeAll, writeFileAtomic } from "../formats/atomic-write.js";
import { a1111Parameters, encodePng } from "../formats/png.js";
import { generateRgb } from "../infer/generate-rgb.js";
import { A1111_SAMPLER_NAMES } from "../infer/save-images.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import type { TrainConfig } from "./config.js";

/** Generates the sample prompts and writes them as one row of images. */
export function saveSampleGrid(model: StableDiffusion, c: TrainConfig, path: string): void {
  const modules = [model.unet, model.textEncoder];
  const wasTraining = modules.map((m) => m.training);
  for (const m of modules) m.eval(); // no dropout while sampling
  // the sample prompts' embedding words and <hypernet:…> tags, from the configured folders
  const embeddings = c.sample.embeddings_dir.length
    ? loadEmbeddingDirs(model.tokenizer, model.textEncoder.config.hiddenSize, c.sample.embeddings_dir, {
        refuseWordClash: true,
      })
    : undefined;
  const hypernetworkDirs = c.sample.hypernetwork_dir.length ? c.sample.hypernetwork_dir : undefined;
  try {
    const tiles = c.sample.prompts.map(
      (prompt) =>
        generateRgb(model, {
          prompt,
          negative: c.sample.negative,
          steps: c.sample.steps,
          cfg: c.sample.cfg,
          sampler: c.sample.sampler,
          seed: c.sample.seed,
          width: c.resolution,
          height: c.resolution,
          clipSkip: c.clip_skip,
          embeddings,
          hypernetworkDirs,
        }).images[0],
    );
    const { width, height } = tiles[0];
    const grid = new Uint8Array(width * tiles.length * height * 3);
    tiles.forEach((t, i) => {
      for (let y = 0; y < height; y++) {
        grid.set(t.data.subarray(y * width * 3, (y + 1) * width * 3), (y * width * tiles.length + i * width) * 3);
      }
    });
    const text = a1111Parameters({
      prompt: c.sample.prompts.join(" | "),
      negative: c.sample.negative,
      steps: c.sample.steps,
      sampler: A1111_SAMPLER_NAMES[c.sample.sampler] ?? c.sample.sampler,
      cfg: c.sample.cfg,
      seed: c.sample.seed,
      width,
      height,
    });
    const png = encodePng({ width: width * tiles.length, height, channels: 3, data: grid }, { parameters: text });
    mkdirSync(dirname(path), { recursive: true });
    writeFileAtomic(path, (fd) => writeAll(fd, png));
  } finally {
    embeddings?.dispose();
    for (const [i, m] of modules.entries()) m.train(wasTraining[i]);
  }
}
