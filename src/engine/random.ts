// Seeded random number generators. A CPU Generator seeded with s draws the
// same stream as `torch.Generator().manual_seed(s)`, so the same seed gives
// the same initial noise as diffusers and AUTOMATIC1111 on CPU.
import { native } from "./native.js";
import { Tensor } from "./tensor.js";

export class Generator {
  #id: number;
  readonly device: string;

  constructor(seed = 67280421310721, device = "cpu") {
    checkSeed(seed);
    this.device = device;
    this.#id = native.generatorNew(device, seed);
  }

  /** The addon's id; only for passing to operators. */
  get id(): number {
    if (this.#id < 0) throw new Error("use of a disposed Generator");
    return this.#id;
  }

  manualSeed(seed: number): this {
    checkSeed(seed);
    native.generatorSeed(this.id, seed);
    return this;
  }

  /** The generator's state as a uint8 tensor (torch.Generator.get_state). */
  getState(): Tensor {
    return new Tensor(native.generatorGetState(this.id));
  }

  setState(state: Tensor): void {
    native.generatorSetState(this.id, state.id);
  }

  dispose(): void {
    if (this.#id >= 0) native.generatorFree(this.#id);
    this.#id = -1;
  }
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`seed must be a non-negative integer below 2^53, got ${seed}`);
  }
}

/** Seeds the default generators of every device (torch.manual_seed). */
export function manualSeed(seed: number): void {
  checkSeed(seed);
  native.manualSeed(seed);
}

/** State of the default CPU generator, for checkpoints that resume exactly. */
export function getRngState(): Tensor {
  return new Tensor(native.defaultGeneratorGetState());
}

export function setRngState(state: Tensor): void {
  native.defaultGeneratorSetState(state.id);
}
