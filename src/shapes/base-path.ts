// Where the built-in shapes-world base model lives: models/shapes-base in the
// package (a diffusers folder with tokenizer/), shipped in the repository and
// rebuilt by `atelier shapes build-base`.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The package root: the folder holding package.json above this file (src/ or dist/src/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, "package.json"))) return dir;
    dir = resolve(dir, "..");
  }
  throw new Error(`atelier: cannot find the package root (package.json) above ${fileURLToPath(import.meta.url)}`);
}

/** The built-in base model folder (ATELIER_SHAPES_BASE overrides it). */
export function shapesBasePath(): string {
  return process.env.ATELIER_SHAPES_BASE ?? join(packageRoot(), "models", "shapes-base");
}

/** The built-in ×4 upscaler folder (ATELIER_SHAPES_UPSCALER overrides it). */
export function shapesUpscalerPath(): string {
  return process.env.ATELIER_SHAPES_UPSCALER ?? join(packageRoot(), "models", "shapes-upscaler");
}
