// Building blocks shared by the diffusers UNet and VAE.
export * from "./attention.js";
export * from "./embeddings.js";
export * from "./resnet.js";
export * from "./transformer-2d.js";
export * from "./tree.js";
