// The LyCORIS methods Atelier applies from files, under the name they had
// when LoHa and LoKr shared one file: each now has its own (./loha.ts,
// ./lokr.ts) over ./lycoris-module.ts.
export { LohaModule, loha } from "./loha.js";
export { LokrModule, lokr } from "./lokr.js";
export { LycorisModule } from "./lycoris-module.js";
