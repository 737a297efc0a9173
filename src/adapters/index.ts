// Adapters: the interface, one file per method (LoRA/LoCon trains and loads; LoHa, LoKr load), the
// registry they are listed in, networks over a model.
export * from "./adapter.js";
export * from "./embedding-file.js";
export * from "./embeddings.js";
export * from "./functional/lora.js";
export * from "./functional/lycoris.js";
export * from "./hypernetwork.js";
export * from "./loha.js";
export * from "./lokr.js";
export * from "./lora.js";
export * from "./lora-file.js";
export { LycorisModule } from "./lycoris-module.js";
export * from "./network.js";
export * from "./prompt-hypernetworks.js";
export * from "./prompt-loras.js";
export * from "./registry.js";
export * from "./targets.js";
export { AdapterLayer, baseLayer } from "./wrapped-layer.js";
