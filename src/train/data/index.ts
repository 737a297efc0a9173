// The training data pipeline: folders of images → batches of latents and prompts.
export * from "./buckets.js";
export * from "./captions.js";
export * from "./class-images.js";
export * from "./concepts.js";
export * from "./dataset.js";
export * from "./image.js";
export * from "./latent-cache.js";
export * from "./plan.js";
export { Rng } from "./rng.js";
export * from "./text-cache.js";
