// The basic layers, with torch.nn's parameter names and default init.
import {
  conv2d,
  dropout,
  embedding,
  groupNorm,
  layerNorm,
  linear,
  noGrad,
  normal_,
  type Tensor,
} from "../engine/index.js";
import { type InitOptions, Module } from "./module.js";

/** Anything that maps one tensor to one tensor (what a wrapper must also be). */
export interface Forward {
  forward(x: Tensor): Tensor;
}

export class Linear extends Module implements Forward {
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    readonly bias = true,
    init?: InitOptions,
  ) {
    super(init);
    this.param("weight", [outFeatures, inFeatures], { fanIn: inFeatures });
    if (bias) this.param("bias", [outFeatures], { fanIn: inFeatures });
  }

  get weight(): Tensor {
    return this.p("weight");
  }

  forward(x: Tensor): Tensor {
    return linear(x, this.p("weight"), this.bias ? this.p("bias") : null);
  }
}

export interface Conv2dConfig {
  stride?: number;
  padding?: number;
  groups?: number;
  bias?: boolean;
}

export class Conv2d extends Module implements Forward {
  readonly stride: number;
  readonly padding: number;
  readonly groups: number;
  readonly bias: boolean;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    c: Conv2dConfig = {},
    init?: InitOptions,
  ) {
    super(init);
    this.stride = c.stride ?? 1;
    this.padding = c.padding ?? 0;
    this.groups = c.groups ?? 1;
    this.bias = c.bias ?? true;
    const fanIn = (inChannels / this.groups) * kernelSize * kernelSize;
    this.param("weight", [outChannels, inChannels / this.groups, kernelSize, kernelSize], { fanIn });
    if (this.bias) this.param("bias", [outChannels], { fanIn });
  }

  get weight(): Tensor {
    return this.p("weight");
  }

  forward(x: Tensor): Tensor {
    return conv2d(x, this.p("weight"), this.bias ? this.p("bias") : null, {
      stride: this.stride,
      padding: this.padding,
      groups: this.groups,
    });
  }
}

export class GroupNorm extends Module implements Forward {
  constructor(
    readonly groups: number,
    readonly channels: number,
    readonly eps = 1e-5,
    init?: InitOptions,
  ) {
    super(init);
    if (channels % groups !== 0) throw new Error(`GroupNorm: ${channels} channels do not split into ${groups} groups`);
    this.param("weight", [channels], { value: 1 });
    this.param("bias", [channels], { value: 0 });
  }

  get weight(): Tensor {
    return this.p("weight");
  }

  get bias(): Tensor {
    return this.p("bias");
  }

  forward(x: Tensor): Tensor {
    return groupNorm(x, this.groups, this.p("weight"), this.p("bias"), this.eps);
  }
}

export class LayerNorm extends Module implements Forward {
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    init?: InitOptions,
  ) {
    super(init);
    this.param("weight", [dim], { value: 1 });
    this.param("bias", [dim], { value: 0 });
  }

  get weight(): Tensor {
    return this.p("weight");
  }

  get bias(): Tensor {
    return this.p("bias");
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, [this.dim], this.p("weight"), this.p("bias"), this.eps);
  }
}

export class Embedding extends Module {
  constructor(
    readonly count: number,
    readonly dim: number,
    init?: InitOptions,
  ) {
    super(init);
    const w = this.param("weight", [count, dim]);
    // torch.nn.Embedding draws N(0, 1)
    if (init?.mode !== "empty") noGrad(() => normal_(w, 0, 1, init?.generator));
  }

  get weight(): Tensor {
    return this.p("weight");
  }

  forward(indices: Tensor): Tensor {
    return embedding(this.p("weight"), indices);
  }
}

export class Dropout extends Module implements Forward {
  constructor(readonly probability = 0) {
    super();
  }

  forward(x: Tensor): Tensor {
    return this.probability > 0 && this.training ? dropout(x, this.probability, true) : x;
  }
}
