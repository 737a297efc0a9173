// diffusers' AutoencoderKL (the SD1.x / SD2.x VAE).
export * from "./coder.js";
export * from "./vae.js";
