// The engine's public API.
export { type AutocastState, autocast, currentAutocast } from "./autocast.js";
export { backward, enableGrad, grad, isGradEnabled, noGrad } from "./autograd.js";
export { type CheckpointOptions, checkpoint, pendingCheckpoints, type Segment } from "./checkpoint.js";
export * from "./device.js";
export { defOp, type OpRef } from "./dispatch.js";
export { BYTES, type DType, dtypeCode, dtypeName, isFloating, type TypedArray } from "./dtype.js";
export { type FileRead, liveMappings, readFileTensor } from "./file-tensor.js";
export * from "./ops/creation.js";
export * from "./ops/inplace.js";
export * from "./ops/linalg.js";
export * from "./ops/math.js";
export * from "./ops/nn.js";
export * from "./ops/shape.js";
export * from "./optim/index.js";
export { Generator, getRngState, manualSeed, setRngState } from "./random.js";
export { disposeAll, keep, liveTensors, scope, scopeAsync } from "./scope.js";
export { Tensor } from "./tensor.js";
