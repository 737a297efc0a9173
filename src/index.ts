// Atelier's public API: what the CLI, the studio and programs that embed
// Atelier call. Each group is a namespace of one layer (docs/design.md §2);
// the most used entry points are also exported by name.

export { EmbeddingDatabase } from "./adapters/embeddings.js";
export * as adapters from "./adapters/index.js";
export * as engine from "./engine/index.js";
export * as evaluation from "./eval/evaluate.js";
export * as checkpoints from "./formats/checkpoint.js";
export { readPngText } from "./formats/png.js";
export * as safetensors from "./formats/safetensors.js";

export { type GenerateRgbOptions, generateRgb, type RgbImage } from "./infer/generate-rgb.js";
export { saveImages, saveUpscaled } from "./infer/save-images.js";
export { type Txt2ImgOptions, txt2img } from "./infer/txt2img.js";
export { type UpscaleOptions, upscale } from "./infer/upscale.js";
export { generateTwoStage, upscaleRgb } from "./infer/upscale-rgb.js";
export { disposeStableDiffusion, type LoadedStableDiffusion, loadStableDiffusion } from "./models/stable-diffusion.js";
export { disposeUpscaler, type LoadedUpscaler, loadUpscaler } from "./models/upscaler/index.js";
export { SAMPLER_NAMES } from "./schedulers/index.js";
export { packageRoot, shapesBasePath, shapesUpscalerPath } from "./shapes/base-path.js";
export { mergeCheckpoints } from "./tools/checkpoint-merger.js";
export { checkFile, formatCheck } from "./tools/compat-check.js";
export { convertCheckpoint } from "./tools/convert.js";
export { extractLora, extractLoraFromCheckpoints } from "./tools/extract-lora.js";
export { formatReport, inspectFile } from "./tools/inspect.js";
export { combineLoraFiles, concatLoras, svdMergeLoras } from "./tools/lora-arithmetic.js";
export { mergeLorasIntoCheckpoint } from "./tools/merge-lora.js";
export { rescueAdapter } from "./tools/rescue.js";
export { resizeLora, resizeLoraFile } from "./tools/resize-lora.js";
export {
  ConfigError,
  configFields,
  configToJson,
  describeConfig,
  loadTrainConfig,
  type TrainConfig,
  writeResolvedConfig,
} from "./train/config.js";
export { decodeImage, IMAGE_EXTENSIONS, ImageError } from "./train/data/image.js";
export type { Trainer, TrainerCommand, TrainerEvent, TrainerListener, TrainerResult } from "./train/events.js";
export { defineMethod, type MethodSpec, registerMethod, type TrainingMethod } from "./train/methods/index.js";
export { startTrainerProcess } from "./train/remote.js";
export { type CreateTrainerOptions, createTrainer, type TrainOptions, train } from "./train/trainer.js";
export { checkModelName, createModel, listModels, openModel, resolveModel, WorkspaceError } from "./train/workspace.js";
