// Optimizers, gradient clipping and learning-rate schedules.
export { AdamW, type AdamWHyper, type AdamWOptions } from "./adamw.js";
export { type ClipOptions, clipGradNorm, gradNorm } from "./clip.js";
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
