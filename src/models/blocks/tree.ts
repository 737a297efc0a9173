// Tree helpers for the diffusers models: an indexed child list (torch's
// nn.ModuleList, keys "0", "1", …) and a base class whose forward code reaches
// children by name, so a replacement in the tree (a LoRA wrapper) is used at once.
import type { Tensor } from "../../engine/index.js";
import { type Forward, Module } from "../../nn/index.js";

/** A module with a one-tensor forward (what a wrapper standing in its place must also be). */
export type Layer = Module & Forward;

/** Base class of the blocks: `call(name, x)` runs the current child at `name`. */
export class Block extends Module {
  protected call(name: string | number, x: Tensor): Tensor {
    return this.mod<Layer>(name).forward(x);
  }
}

export class ModuleList<M extends Module = Module> extends Module {
  #length = 0;

  constructor(items: Iterable<M> = []) {
    super();
    for (const m of items) this.push(m);
  }

  /** Appends a child under the next index; returns it. */
  push(m: M): M {
    return this.add(this.#length++, m);
  }

  get length(): number {
    return this.#length;
  }

  /** The child at index i (after any replacement in the tree). */
  at(i: number): M {
    return this.mod<M>(i);
  }

  *[Symbol.iterator](): IterableIterator<M> {
    for (let i = 0; i < this.#length; i++) yield this.at(i);
  }
}
