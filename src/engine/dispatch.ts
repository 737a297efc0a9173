// Typed access to ATen operators through the addon's boxed dispatcher.
// `defOp("aten::add.Tensor")` resolves the operator on first use; arguments
// are positional in schema order, omitted trailing ones take the schema's
// defaults (see native/ops.cc).
import { type NativeValue, native, type TensorId } from "./native.js";
import { Tensor } from "./tensor.js";

export interface OpRef {
  /** The full name, e.g. "aten::add.Tensor". */
  readonly qualified: string;
  /** Whether this libtorch has the operator (e.g. SDPA needs libtorch 2.x). */
  exists(): boolean;
  schema(): string;
  /** Calls the op; expects one tensor back. */
  t(...args: NativeValue[]): Tensor;
  /** Calls the op; expects several tensors back (a tuple or a list). */
  ts(...args: NativeValue[]): Tensor[];
  /** Calls an in-place op; its result (self again) is dropped. */
  v(...args: NativeValue[]): void;
  /** Calls the op; returns what the addon returns, tensors as raw ids. */
  raw(...args: NativeValue[]): NativeValue;
}

export function defOp(qualified: string): OpRef {
  const sep = qualified.indexOf(".", qualified.indexOf("::"));
  const name = sep < 0 ? qualified : qualified.slice(0, sep);
  const overload = sep < 0 ? "" : qualified.slice(sep + 1);
  let id = -2;
  const resolve = (): number => {
    if (id === -2) id = native.opFind(name, overload);
    if (id < 0) throw new Error(`libtorch ${native.version()} has no operator ${qualified}`);
    return id;
  };
  return {
    qualified,
    exists() {
      if (id === -2) id = native.opFind(name, overload);
      return id >= 0;
    },
    schema: () => native.opSchema(resolve()),
    t: (...args) => new Tensor(native.call(id >= 0 ? id : resolve(), ...args) as TensorId),
    ts: (...args) => (native.call(id >= 0 ? id : resolve(), ...args) as TensorId[]).map((i) => new Tensor(i)),
    v: (...args) => native.callVoid(id >= 0 ? id : resolve(), ...args),
    raw: (...args) => native.call(id >= 0 ? id : resolve(), ...args),
  };
}

/** Tensor ids for a list argument. */
export function ids(ts: readonly Tensor[]): TensorId[] {
  return ts.map((t) => t.id);
}
