// Module: a node of the model tree. A parameter's path in the tree *is* its
// checkpoint key (diffusers naming), built as the model is built, like
// candle's VarBuilder.pp (docs/design.md §3.2). Layers are wrapped (LoRA …)
// by replacing a child in the tree, never by patching forward (docs/design.md §3.4),
// so forward code reaches children through `this.mod()`, which sees a
// replacement at once.
import { type DType, empty, keep, noGrad, scope, type Tensor, uniform_ } from "../engine/index.js";
import type { Generator } from "../engine/random.js";

/** How parameters are created: random (PyTorch's default init) or uninitialised (to be loaded). */
export interface InitOptions {
  dtype?: DType;
  device?: string;
  mode?: "random" | "empty";
  generator?: Generator;
}

export class Module {
  readonly #params = new Map<string, Tensor>();
  readonly #children = new Map<string, Module>();
  training = true;

  constructor(protected readonly init: InitOptions = {}) {}

  /** Registers a parameter; `fanIn` > 0 draws U(−1/√fanIn, 1/√fanIn) as torch's Linear/Conv2d reset_parameters. */
  protected param(name: string, shape: number[], fill: { fanIn?: number; value?: number } = {}): Tensor {
    const t = keep(empty(shape, { dtype: this.init.dtype ?? "float32", device: this.init.device }));
    if (this.init.mode !== "empty") {
      noGrad(() => {
        if (fill.fanIn) {
          const bound = 1 / Math.sqrt(fill.fanIn);
          uniform_(t, -bound, bound, this.init.generator);
        } else {
          t.fill_(fill.value ?? 0);
        }
      });
    }
    t.requiresGrad_(true);
    this.#params.set(name, t);
    return t;
  }

  /** Registers a child module under `name` (its key segment) and returns it. */
  protected add<M extends Module>(name: string | number, m: M): M {
    this.#children.set(String(name), m);
    return m;
  }

  /** The current child at `name` (after any replacement). */
  protected mod<M extends Module = Module>(name: string | number): M {
    const m = this.#children.get(String(name));
    if (!m) throw new Error(`${this.constructor.name} has no submodule '${name}'`);
    return m as M;
  }

  /** The parameter registered as `name` on this module. */
  protected p(name: string): Tensor {
    const t = this.#params.get(name);
    if (!t) throw new Error(`${this.constructor.name} has no parameter '${name}'`);
    return t;
  }

  protected hasParam(name: string): boolean {
    return this.#params.has(name);
  }

  children(): Map<string, Module> {
    return new Map(this.#children);
  }

  /** Every module below (and including) this one, by dotted path. */
  namedModules(prefix = ""): Map<string, Module> {
    const out = new Map<string, Module>([[prefix, this]]);
    for (const [name, child] of this.#children) {
      for (const [k, v] of child.namedModules(prefix ? `${prefix}.${name}` : name)) out.set(k, v);
    }
    return out;
  }

  /** Every parameter by its full key, e.g. "down_blocks.0.resnets.0.conv1.weight". */
  namedParameters(prefix = ""): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, t] of this.#params) out.set(prefix ? `${prefix}.${name}` : name, t);
    for (const [name, child] of this.#children) {
      for (const [k, v] of child.namedParameters(prefix ? `${prefix}.${name}` : name)) out.set(k, v);
    }
    return out;
  }

  parameters(): Tensor[] {
    return [...this.namedParameters().values()];
  }

  parameterCount(): number {
    let n = 0;
    for (const t of this.namedParameters().values()) n += t.numel;
    return n;
  }

  /** The module at a dotted path below this one. */
  getModule(path: string): Module {
    let m: Module = this;
    for (const part of path.split(".")) {
      if (part === "") continue;
      m = m.mod(part);
    }
    return m;
  }

  /** Replaces the module at a dotted path; returns the one it replaced (for unwrapping). */
  replaceModule(path: string, replacement: Module): Module {
    const cut = path.lastIndexOf(".");
    const parent = cut < 0 ? this : this.getModule(path.slice(0, cut));
    const name = path.slice(cut + 1);
    const old = parent.#children.get(name);
    if (!old) throw new Error(`no module at '${path}'`);
    parent.#children.set(name, replacement);
    return old;
  }

  /** Swaps the tensor of a parameter (loading), checking its shape; the old tensor is disposed. */
  setParameter(key: string, value: Tensor): void {
    const cut = key.lastIndexOf(".");
    const owner = cut < 0 ? this : this.getModule(key.slice(0, cut));
    const name = key.slice(cut + 1);
    const old = owner.#params.get(name);
    if (!old) throw new Error(`no parameter '${key}'`);
    const [want, got] = [old.shape, value.shape];
    if (want.length !== got.length || want.some((d, i) => d !== got[i])) {
      throw new Error(`parameter '${key}': expected shape [${want}], got [${got}]`);
    }
    const fresh = keep(noGrad(() => scope(() => value.to(old.device, old.dtype).detach()))).requiresGrad_(
      old.requiresGrad,
    );
    old.dispose();
    owner.#params.set(name, fresh);
  }

  /**
   * Re-stores the parameters `pick` chooses in `dtype` (frozen weights kept in half precision, as
   * kohya's train_network.py `unet.to(weight_dtype)`); gradients flags are kept. Returns how many changed.
   */
  castParameters(dtype: DType, pick: (key: string, t: Tensor) => boolean = () => true, prefix = ""): number {
    // Module by module, each swapping its own tensors: a wrapper that reports another module's
    // parameters under its path (an adapter over a Linear) delegates, as its namedParameters does.
    let n = 0;
    for (const [name, t] of this.#params) {
      if (t.dtype === dtype || !pick(prefix ? `${prefix}.${name}` : name, t)) continue;
      const fresh = keep(noGrad(() => scope(() => t.to(t.device, dtype).detach()))).requiresGrad_(t.requiresGrad);
      t.dispose();
      this.#params.set(name, fresh);
      n++;
    }
    for (const [name, child] of this.#children)
      n += child.castParameters(dtype, pick, prefix ? `${prefix}.${name}` : name);
    return n;
  }

  /**
   * Loads parameters from `source` (key → tensor). Strict loading reports every
   * missing, unexpected and wrongly shaped key by name, and changes nothing.
   */
  loadStateDict(
    source: Map<string, Tensor>,
    o: { strict?: boolean; ignore?: (key: string) => boolean } = {},
  ): LoadReport {
    const own = this.namedParameters();
    const report: LoadReport = { missing: [], unexpected: [], mismatched: [] };
    for (const [k, t] of own) {
      const s = source.get(k);
      if (!s) report.missing.push(k);
      else if (s.shape.join() !== t.shape.join())
        report.mismatched.push(`${k}: expected [${t.shape}], file has [${s.shape}]`);
    }
    for (const k of source.keys()) if (!own.has(k) && !o.ignore?.(k)) report.unexpected.push(k);
    const problems = report.missing.length + report.unexpected.length + report.mismatched.length;
    if ((o.strict ?? true) && problems > 0) throw new Error(describeLoadProblems(this.constructor.name, report));
    for (const [k, s] of source)
      if (own.has(k) && !report.mismatched.some((m) => m.startsWith(`${k}:`))) this.setParameter(k, s);
    return report;
  }

  /** Parameter tensors by key (the module's own tensors, not copies). */
  stateDict(): Map<string, Tensor> {
    return this.namedParameters();
  }

  train(on = true): this {
    for (const m of this.namedModules().values()) m.training = on;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Marks every parameter as trainable or frozen. */
  requiresGrad_(on: boolean): this {
    for (const t of this.parameters()) t.requiresGrad_(on);
    return this;
  }

  /** Frees every parameter of the tree. */
  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

export interface LoadReport {
  missing: string[];
  unexpected: string[];
  mismatched: string[];
}

function describeLoadProblems(model: string, r: LoadReport): string {
  const list = (title: string, keys: string[]) =>
    keys.length ? [`${title} (${keys.length}): ${keys.slice(0, 10).join(", ")}${keys.length > 10 ? ", …" : ""}`] : [];
  return [
    `cannot load ${model} weights:`,
    ...list("missing keys", r.missing),
    ...list("unexpected keys", r.unexpected),
    ...list("wrong shapes", r.mismatched),
  ].join("\n  ");
}
