// Adapters: the interface, LoRA/LoCon (training and files), LoHa/LoKr (files), networks over a model.
export * from "./adapter.js";
export * from "./functional/lora.js";
export * from "./functional/lycoris.js";
export * from "./lora.js";
export * from "./lora-file.js";
export { LycorisModule, loha, lokr } from "./lycoris.js";
export * from "./methods.js";
export * from "./network.js";
export * from "./prompt-loras.js";
export * from "./targets.js";
export { AdapterLayer, baseLayer } from "./wrapped-layer.js";
