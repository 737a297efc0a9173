// The shapes world (a tiny captioned dataset a small SD-shaped model learns on a
// CPU) and the analyser that scores images of it; see docs/shapes-world.md.
export * from "./analyser.js";
export * from "./base-path.js";
export * from "./degrade.js";
export * from "./rng.js";
export * from "./vocab.js";
export * from "./world.js";
