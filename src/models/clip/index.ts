// CLIP text side: tokenizer, text cleaning and the text encoder.
export * from "./text-clean.js";
export * from "./text-encoder.js";
export * from "./tokenizer.js";
