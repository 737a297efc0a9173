// Optimizers, gradient clipping and learning-rate schedules.

export { Adafactor, type AdafactorHyper, type AdafactorOptions } from "./adafactor.js";
export { AdamW, type AdamWHyper, type AdamWOptions } from "./adamw.js";
export { AdamW8bit, type AdamW8bitHyper, type AdamW8bitOptions } from "./adamw8bit.js";
export { dynamicMap } from "./blockwise-quant.js";
export { type ClipOptions, clipGradNorm, gradNorm } from "./clip.js";
export { Lion, type LionHyper, type LionOptions } from "./lion.js";
export {
  type GroupHyper,
  Optimizer,
  type OptimizerStateDict,
  type OptimizerStateJson,
  type ParamGroup,
  type ParamGroupInput,
  type ParamState,
  type ParamsInput,
} from "./optimizer.js";
export { Prodigy, type ProdigyHyper, type ProdigyOptions } from "./prodigy.js";
export {
  LRScheduler,
  type LRSchedulerState,
  lrSchedule,
  SCHEDULE_NAMES,
  type Schedule,
  type ScheduleName,
  type ScheduleOptions,
} from "./schedules.js";
export { SGD, type SGDHyper, type SGDOptions } from "./sgd.js";
