// What a training method is (docs/design.md §3, principle 5; after OneTrainer's
// modules/modelSetup/*Setup.py): a plug-in over the one trainer. A method
// owns its section of the config (fields, defaults, cross-field rules), says
// which parameters train in which optimizer groups, may replace the step's
// hooks (text encoding, prediction, loss terms, after-step work) and writes
// its artifacts in its formats. Adding a method is one file and one line in
// methods/index.ts.
import type { Tensor } from "../../engine/index.js";
import type { Generator } from "../../engine/random.js";
import type { LoadedStableDiffusion } from "../../models/stable-diffusion.js";
import type { CoreConfig } from "../config-core.js";
import type { Infer, Schema } from "../config-fields.js";
import type { ArtifactKind } from "../manifest.js";

export interface ParamGroupSpec {
  /** unet, text_encoder, or a method's own group (embeddings, …). */
  name: string;
  params: Tensor[];
  lr: number;
}

export interface SavedArtifact {
  path: string;
  kind: ArtifactKind;
  format: string;
}

/** Where and under which name a save writes. */
export interface SaveRequest {
  outputDir: string;
  /** e.g. "-step000100", or "" for the final save. */
  tag: string;
  /** Training metadata (kohya's ss_* keys) for the files' headers. */
  metadata: Record<string, string>;
}

/** The tensors of one step that the hooks see. */
export interface StepInputs {
  latents: Tensor;
  noise: Tensor;
  timesteps: Tensor;
  noisy: Tensor;
  prompts: string[];
  /** Cached text embeddings, when the text encoder does not train. */
  context: Tensor | null;
  isClass: boolean[];
  /** The batch's pictures [B, 3, H, W] in [-1, 1], for a method with needsPixels (the latents' own images). */
  pixels?: Tensor;
}

/** A method set up on a model for one run. Optional hooks replace the trainer's defaults (diffusion-step.ts). */
export interface TrainingMethod {
  readonly name: string;
  /** Whether the text encoder's output changes during training (so its embeddings cannot be cached). */
  readonly trainsTextEncoder: boolean;
  /** Batches carry their pictures as well as their latents (StepInputs.pixels). */
  readonly needsPixels?: boolean;
  groups(): ParamGroupSpec[];
  /** Trainable tensors by a stable name, for the resumable state. */
  namedTrainable(): Map<string, Tensor>;
  /** The conditioning of a batch (default: the cached embeddings, else the text encoder). */
  encodeText?(s: StepInputs): Tensor;
  /** The model's prediction (default: the UNet). */
  predict?(s: StepInputs, context: Tensor): Tensor;
  /** Extra named loss terms, added to the loss (each a 0-d tensor with a graph). */
  extraLoss?(s: StepInputs, prediction: Tensor): Record<string, Tensor>;
  /** After each optimizer step (restoring frozen embedding rows, …). */
  afterStep?(step: number): void;
  /** Writes the method's artifacts. */
  save(r: SaveRequest): SavedArtifact[];
  /** Puts the model back as it was (removes adapters, freezes). */
  dispose(): void;
}

/** What a method's setup gets besides its config. */
export interface MethodContext {
  model: LoadedStableDiffusion;
  /** The run's seeded generator (adapter initialisation draws from it, as before the redesign). */
  generator: Generator;
  log: (message: string) => void;
  /** The step the run starts at (0 unless resumed). */
  startStep?: number;
}

/** Helpers for a method's config rules. */
export interface Resolver {
  /** Whether this method is the one the config runs. */
  active: boolean;
  /** The value set in the file or by a flag (undefined when unset). */
  given(path: string): unknown;
  /** True for a field left to its computed default. */
  isAuto(v: unknown): boolean;
  /** A ConfigError naming the field. */
  error(field: string, message: string): Error;
  /** Throws when `path` was set to something other than `dflt` although it has no effect, saying why. */
  pointless(path: string, dflt: unknown, why: string): void;
}

export interface MethodSpec<S extends Schema = Schema> {
  readonly name: string;
  /** One line for the help listing. */
  readonly doc: string;
  /** The config fields this method owns, merged into the config's schema. */
  readonly schema: S;
  /** What save.formats may hold for this method; the first is the default. */
  readonly formats: readonly string[];
  /** learning_rate when the config leaves it unset. */
  readonly defaultLearningRate: number;
  /** Whether a config (resolved, or while resolving) runs this method (default: `method` names it). */
  selects?(c: CoreConfig & Infer<S>): boolean;
  /** Computed defaults and cross-field rules of its own fields; runs for every method, active or not. */
  resolve?(c: CoreConfig & Infer<S>, r: Resolver): void;
  /** Sets the model up for training with this method. */
  create(c: CoreConfig & Infer<S>, ctx: MethodContext): TrainingMethod;
}

/** Declares a method; the schema's type flows into its hooks. */
export function defineMethod<S extends Schema>(spec: MethodSpec<S>): MethodSpec<S> {
  return spec;
}
