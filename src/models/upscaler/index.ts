export * from "./upscaler.js";
