// The optimizer base class: parameter groups, per-parameter state, step(),
// zeroGrad() and a state dict for exact save/resume. It follows
// torch.optim.Optimizer (pytorch/torch/optim/optimizer.py, 1.13): groups
// fill missing hyper-parameters from the defaults, a parameter belongs to one
// group, params without .grad are skipped, and state is made on first use.
import { noGrad } from "../autograd.js";
import type { DType } from "../dtype.js";
import { clone, detach } from "../ops/shape.js";
import { keep, scope } from "../scope.js";
import { Tensor } from "../tensor.js";

/** Hyper-parameters every group has. */
export interface GroupHyper {
  lr: number;
}

/**
 * A parameter group: its tensors and its own hyper-parameters. `lr` may be
 * changed between steps (LRScheduler does); `initialLr` is the base lr a
 * scheduler multiplies, set by the first LRScheduler (torch's "initial_lr").
 */
export type ParamGroup<H extends GroupHyper> = H & { params: Tensor[]; initialLr?: number };

/** What the constructors take: tensors, or groups with optional per-group hyper-parameters. */
export type ParamGroupInput<H extends GroupHyper> = { params: readonly Tensor[] } & Partial<H> & { initialLr?: number };
export type ParamsInput<H extends GroupHyper> = readonly Tensor[] | readonly ParamGroupInput<H>[];

/** One parameter's state: its step count and named tensors (exp_avg, momentum_buffer, …), all kept. */
export interface ParamState {
  step: number;
  tensors: Map<string, Tensor>;
}

/** The JSON half of a state dict; parameters are numbered across groups in order, as torch does. */
export interface OptimizerStateJson {
  kind: string;
  groups: (Record<string, unknown> & { params: number[] })[];
  state: Record<string, { step: number }>;
}

/**
 * A saveable optimizer state: hyper-parameters and step counts as JSON, state
 * tensors named `state.<paramIndex>.<name>` (safetensors-ready).
 */
export interface OptimizerStateDict {
  json: OptimizerStateJson;
  tensors: Map<string, Tensor>;
}

const STATE_KEY = /^state\.(\d+)\.([A-Za-z0-9_]+)$/;

export abstract class Optimizer<H extends GroupHyper> {
  /** The optimizer's name ("SGD", "AdamW"); a state dict only loads into the same kind. */
  readonly kind: string;
  /** The constructor's hyper-parameters; groups take what they leave out from here. */
  readonly defaults: Readonly<H>;
  readonly paramGroups: ParamGroup<H>[] = [];
  protected readonly state = new Map<Tensor, ParamState>();
  #disposed = false;

  protected constructor(kind: string, params: ParamsInput<H>, defaults: H) {
    this.kind = kind;
    this.validate(defaults);
    this.defaults = Object.freeze(copyHyper(defaults));
    if (!Array.isArray(params) || params.length === 0) {
      throw new Error(`${kind}: got an empty parameter list`);
    }
    const groups: readonly ParamGroupInput<H>[] = params.every((p) => p instanceof Tensor)
      ? [{ params: params as readonly Tensor[] } as ParamGroupInput<H>]
      : (params as readonly ParamGroupInput<H>[]);
    for (const g of groups) this.addParamGroup(g);
  }

  /** Throws a clear error for invalid hyper-parameters (negative lr, beta outside [0, 1), …). */
  protected abstract validate(h: H): void;

  /** Updates one parameter in place from its gradient; runs under noGrad inside a scope. */
  protected abstract update(param: Tensor, grad: Tensor, group: ParamGroup<H>, state: ParamState): void;

  /** State tensors a parameter with state must have, checked by loadStateDict. */
  protected requiredState(_group: ParamGroup<H>): string[] {
    return [];
  }

  /**
   * The shape and dtype a saved state tensor `name` of `param` must have
   * (loadStateDict checks the shape and casts to the dtype): the parameter's
   * by default; optimizers with factored or quantised state say otherwise.
   */
  protected stateLayout(_name: string, param: Tensor): { shape: readonly number[]; dtype: DType } {
    return { shape: param.shape, dtype: param.dtype };
  }

  /** Adds a group (e.g. layers unfrozen later); missing hyper-parameters come from the defaults. */
  addParamGroup(input: ParamGroupInput<H>): void {
    this.#checkLive();
    if (typeof input !== "object" || input === null || !Array.isArray(input.params)) {
      throw new Error(`${this.kind}: a parameter group must be {params: Tensor[], …}`);
    }
    const seen = new Set<Tensor>();
    for (const g of this.paramGroups) for (const p of g.params) seen.add(p);
    const mine = new Set<Tensor>();
    for (const p of input.params) {
      if (!(p instanceof Tensor)) throw new Error(`${this.kind}: can only optimize Tensors, got ${typeof p}`);
      if (p.disposed) throw new Error(`${this.kind}: a parameter was disposed`);
      if (!p.isLeaf) throw new Error(`${this.kind}: can't optimize a non-leaf Tensor`);
      if (seen.has(p)) throw new Error(`${this.kind}: some parameters appear in more than one parameter group`);
      if (mine.has(p)) throw new Error(`${this.kind}: a parameter group holds the same parameter twice`);
      mine.add(p);
    }
    const group = { ...copyHyper(this.defaults), params: [...input.params] } as ParamGroup<H>;
    const g = group as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(input)) {
      if (k === "params" || v === undefined) continue;
      if (k !== "initialLr" && !(k in this.defaults)) {
        throw new Error(
          `${this.kind}: unknown hyper-parameter "${k}" (known: ${Object.keys(this.defaults).join(", ")})`,
        );
      }
      g[k] = Array.isArray(v) ? [...v] : v;
    }
    this.validate(group);
    this.paramGroups.push(group);
  }

  /**
   * One optimization step over every parameter that has a .grad. Each
   * parameter's temporaries (and the grad handle) are freed before the next.
   */
  step(): void {
    this.#checkLive();
    for (const group of this.paramGroups) this.validate(group);
    noGrad(() => {
      for (const group of this.paramGroups) {
        for (const p of group.params) {
          scope(() => {
            const grad = p.grad;
            if (grad === null) return;
            let st = this.state.get(p);
            if (!st) {
              st = { step: 0, tensors: new Map() };
              this.state.set(p, st);
            }
            st.step += 1;
            this.update(p, grad, group, st);
          });
        }
      }
    });
  }

  /** Clears every parameter's gradient: to null (default), or to zeros in place. */
  zeroGrad(setToNone = true): void {
    for (const group of this.paramGroups) {
      for (const p of group.params) {
        if (setToNone) {
          p.grad = null;
          continue;
        }
        const g = p.grad;
        if (g) {
          noGrad(() => g.zero_());
          g.dispose();
        }
      }
    }
  }

  /** A parameter's state tensor made now (zeros, a clone …): kept, and stored under `name`. */
  protected setState(state: ParamState, name: string, t: Tensor): Tensor {
    state.tensors.get(name)?.dispose();
    state.tensors.set(name, keep(t));
    return t;
  }

  /**
   * The state to save. Its tensors are new handles sharing the live state's
   * memory (no copy): the caller owns and disposes them, and must write them
   * out before the next step() if it wants this step's values.
   */
  stateDict(): OptimizerStateDict {
    this.#checkLive();
    const tensors = new Map<string, Tensor>();
    const state: Record<string, { step: number }> = {};
    let index = 0;
    const groups = this.paramGroups.map((group) => {
      const { params, ...hyper } = group;
      const indices: number[] = [];
      for (const p of params) {
        const st = this.state.get(p);
        if (st) {
          state[String(index)] = { step: st.step };
          for (const [name, t] of st.tensors) tensors.set(`state.${index}.${name}`, detach(t));
        }
        indices.push(index++);
      }
      return { ...(copyHyper(hyper) as Record<string, unknown>), params: indices };
    });
    return { json: { kind: this.kind, groups, state }, tensors };
  }

  /**
   * Restores a state from stateDict() (or from a file written from one): the
   * groups' hyper-parameters, step counts and state tensors, copied to each
   * parameter's dtype and device. Everything is checked before anything
   * changes; the given tensors stay the caller's.
   */
  loadStateDict(sd: OptimizerStateDict): void {
    this.#checkLive();
    const { json, tensors } = sd;
    const what = `${this.kind}.loadStateDict`;
    if (json?.kind !== this.kind) throw new Error(`${what}: the state is for ${json?.kind}, not ${this.kind}`);
    if (!Array.isArray(json.groups) || json.groups.length !== this.paramGroups.length) {
      throw new Error(
        `${what}: the state has ${json.groups?.length} parameter groups, the optimizer has ${this.paramGroups.length}`,
      );
    }
    const params: Tensor[] = [];
    const newGroups = this.paramGroups.map((group, i) => {
      const saved = json.groups[i];
      if (!Array.isArray(saved.params) || saved.params.length !== group.params.length) {
        throw new Error(
          `${what}: group ${i} has ${saved.params?.length} parameters in the state, ${group.params.length} here`,
        );
      }
      params.push(...group.params);
      const next = { ...group } as unknown as Record<string, unknown>;
      for (const [k, v] of Object.entries(saved)) {
        if (k !== "params" && (k === "initialLr" || k in this.defaults)) next[k] = Array.isArray(v) ? [...v] : v;
      }
      const checked = next as unknown as ParamGroup<H>;
      this.validate(checked);
      return checked;
    });
    const groupOf = (i: number) => {
      let n = i;
      for (const g of newGroups) {
        if (n < g.params.length) return g;
        n -= g.params.length;
      }
      throw new Error(`${what}: parameter index ${i} out of range`);
    };
    for (const key of tensors.keys()) {
      const m = STATE_KEY.exec(key);
      if (!m || Number(m[1]) >= params.length) throw new Error(`${what}: unexpected state tensor "${key}"`);
      if (!json.state?.[m[1]]) throw new Error(`${what}: state tensor "${key}" has no step count in the JSON`);
    }
    for (const [k, v] of Object.entries(json.state ?? {})) {
      const i = Number(k);
      if (!Number.isInteger(i) || i < 0 || i >= params.length)
        throw new Error(`${what}: state for unknown parameter ${k}`);
      if (!Number.isInteger(v?.step) || v.step < 0) throw new Error(`${what}: bad step count for parameter ${k}`);
      for (const name of this.requiredState(groupOf(i))) {
        if (!tensors.has(`state.${k}.${name}`)) throw new Error(`${what}: missing state tensor "state.${k}.${name}"`);
      }
    }
    for (const [key, t] of tensors) {
      const [, index, name] = STATE_KEY.exec(key)!;
      const p = params[Number(index)];
      if (t.disposed) throw new Error(`${what}: state tensor "${key}" was disposed`);
      const want = this.stateLayout(name, p).shape;
      if (!sameShape(t.shape, want)) {
        throw new Error(`${what}: "${key}" has shape [${t.shape}], expected [${want}] (its parameter: [${p.shape}])`);
      }
    }
    // All checked: copy the tensors (cast like torch's load_state_dict), then swap.
    const next = new Map<Tensor, ParamState>();
    scope(() => {
      for (const [k, v] of Object.entries(json.state ?? {})) {
        const p = params[Number(k)];
        const st: ParamState = { step: v.step, tensors: new Map() };
        const prefix = `state.${k}.`;
        for (const [key, t] of tensors) {
          if (!key.startsWith(prefix)) continue;
          const name = key.slice(prefix.length);
          const moved = t.to(p.device, this.stateLayout(name, p).dtype);
          st.tensors.set(name, keep(clone(moved)));
        }
        next.set(p, st);
      }
    });
    this.#clearState();
    for (const [p, st] of next) this.state.set(p, st);
    newGroups.forEach((g, i) => {
      Object.assign(this.paramGroups[i], g);
    });
  }

  /** The step count of a parameter (0 before its first update). */
  stepCount(param: Tensor): number {
    return this.state.get(param)?.step ?? 0;
  }

  /** Frees every state tensor; the optimizer can't be used afterwards. */
  dispose(): void {
    this.#clearState();
    this.#disposed = true;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  #clearState(): void {
    for (const st of this.state.values()) for (const t of st.tensors.values()) t.dispose();
    this.state.clear();
  }

  #checkLive(): void {
    if (this.#disposed) throw new Error(`${this.kind}: the optimizer was disposed`);
  }
}

function copyHyper<T extends object>(h: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(h)) out[k] = Array.isArray(v) ? [...v] : v;
  return out as T;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** A finite number >= 0, or a clear error. */
export function checkNonNegative(kind: string, name: string, v: unknown): void {
  if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) {
    throw new Error(`${kind}: invalid ${name}: ${v} (must be a finite number >= 0)`);
  }
}

/** Two numbers in [0, 1) (in [0, 1] when `closed`), or a clear error. */
export function checkBetas(kind: string, betas: unknown, closed = false): void {
  if (!Array.isArray(betas) || betas.length !== 2) {
    throw new Error(`${kind}: betas must be two numbers, got ${JSON.stringify(betas)}`);
  }
  betas.forEach((b, i) => {
    if (typeof b !== "number" || !(b >= 0 && (closed ? b <= 1 : b < 1))) {
      throw new Error(`${kind}: invalid beta parameter at index ${i}: ${b} (must be in [0, 1${closed ? "]" : ")"})`);
    }
  });
}
