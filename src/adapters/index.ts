// Adapters: the interface, one file per method (LoRA/LoCon, LoHa, LoKr, DoRA, (IA)³, full,
// LyCORIS norm modules train and load), the
// registry they are listed in, networks over a model.
export * from "./adapter.js";
export * from "./dora.js";
export * from "./embedding-file.js";
export * from "./embeddings.js";
export * from "./full.js";
export * from "./functional/lora.js";
export * from "./functional/lycoris.js";
export * from "./hypernetwork.js";
export * from "./ia3.js";
export * from "./loha.js";
export * from "./lokr.js";
export * from "./lora.js";
export * from "./lora-file.js";
export { LycorisModule } from "./lycoris-module.js";
export * from "./network.js";
export * from "./network-algo.js";
export * from "./norm.js";
export * from "./prompt-hypernetworks.js";
export * from "./prompt-loras.js";
export * from "./registry.js";
export * from "./targets.js";
export { AdapterLayer, baseLayer } from "./wrapped-layer.js";
