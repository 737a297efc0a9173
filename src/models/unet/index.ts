// diffusers' UNet2DConditionModel (SD1.x / SD2.x).
export * from "./blocks.js";
export * from "./config.js";
export { UNet2DConditionModel } from "./unet.js";
