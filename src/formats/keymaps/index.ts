// Key maps between the diffusers layout and the original single-file (LDM) layout.
export * from "./configs.js";
export * from "./keymap.js";
export { CLIP_PREFIX, normalizeLdmTextKey, OPENCLIP_PREFIX, textEncoderKeyMap } from "./text-encoder.js";
export { UNET_PREFIX, unetKeyMap } from "./unet.js";
export { VAE_PREFIX, vaeKeyMap } from "./vae.js";
