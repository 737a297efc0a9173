// The package's entry point (package.json "main") exists, loads without side
// effects, and names the library's main calls.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { repoRoot } from "./helpers.js";

test("package.json main is the public API: the trainer, config, model, generation and tool calls", async () => {
  const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { main: string };
  const api = await import(pathToFileURL(join(repoRoot, pkg.main)).href);
  for (const name of [
    "loadTrainConfig",
    "describeConfig",
    "createTrainer",
    "train",
    "startTrainerProcess",
    "registerMethod",
    "defineMethod",
    "loadStableDiffusion",
    "txt2img",
    "generateRgb",
    "loadUpscaler",
    "upscale",
    "upscaleRgb",
    "generateTwoStage",
    "inspectFile",
    "convertCheckpoint",
    "createModel",
  ]) {
    assert.equal(typeof api[name], "function", name);
  }
  assert.equal(typeof api.adapters.injectNetwork, "function");
  assert.equal(typeof api.engine.scope, "function");
  assert.equal(api.engine.liveTensors(), 0, "importing the API makes no tensors");
});
