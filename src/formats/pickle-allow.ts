// The allow-list of the restricted unpickler (pickle.ts): the few globals a
// PyTorch state dict is made of, each implemented here in TypeScript, and the
// objects they build. Any other global is refused by `resolve`; nothing a
// file names is ever imported or called.
import type { DType } from "../engine/index.js";

export class PickleError extends Error {
  override name = "PickleError";
}

/** A reference to an allowed global (a class or function of the allow-list). */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An inert instance of an allowed placeholder class: its arguments and state, nothing run. */
export class PyObject {
  state: unknown = undefined;
  constructor(
    readonly cls: PyGlobal,
    readonly args: readonly unknown[],
  ) {}
}

/** A storage the pickle refers to by persistent id; its bytes live outside the pickle. */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: DType,
    /** Elements, as the pickle says. */
    readonly numel: number,
    readonly location: string,
    /** Element offset into the root storage (legacy storage views). */
    readonly viewOffset = 0,
  ) {}
}

/** What `torch._utils._rebuild_tensor_v2` would build: a strided view of a storage. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    readonly requiresGrad: boolean,
  ) {}
}

/** numpy.dtype, as pickled for numpy scalars (`numpy.dtype('i8', False, True)` + BUILD state). */
export class NumpyDtype {
  byteorder = "=";
  constructor(readonly descr: string) {}
}

// ---- the allow-list -------------------------------------------------------------------

const STORAGES: Record<string, DType> = {
  FloatStorage: "float32",
  HalfStorage: "float16",
  BFloat16Storage: "bfloat16",
  DoubleStorage: "float64",
  LongStorage: "int64",
  IntStorage: "int32",
  ShortStorage: "int16",
  CharStorage: "int8",
  ByteStorage: "uint8",
  BoolStorage: "bool",
};

type Impl = (args: unknown[], g: PyGlobal) => unknown;

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);

function dims(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((d) => isInt(d) && d >= 0))
    throw new PickleError(`${what}: expected a tuple of non-negative ints`);
  return v as number[];
}

function rebuildTensor(args: unknown[]): TensorRef {
  const [storage, offset, size, stride, requiresGrad] = args;
  if (!(storage instanceof StorageRef)) throw new PickleError("_rebuild_tensor: the first argument is not a storage");
  if (!isInt(offset) || offset < 0) throw new PickleError("_rebuild_tensor: bad storage offset");
  const shape = dims(size, "_rebuild_tensor size");
  const strides = dims(stride, "_rebuild_tensor stride");
  if (shape.length !== strides.length)
    throw new PickleError(`_rebuild_tensor: ${shape.length} sizes but ${strides.length} strides`);
  return new TensorRef(storage, offset, shape, strides, requiresGrad === true);
}

function rebuildParameter(args: unknown[]): TensorRef {
  const [data, requiresGrad] = args;
  if (!(data instanceof TensorRef)) throw new PickleError("_rebuild_parameter: the data is not a tensor");
  return new TensorRef(data.storage, data.offset, data.shape, data.stride, requiresGrad === true);
}

/** numpy scalar from its dtype and raw bytes (numpy/core/multiarray `scalar`). */
function numpyScalar(args: unknown[]): number | bigint | boolean {
  const [dt, raw] = args;
  if (!(dt instanceof NumpyDtype) || !(raw instanceof Uint8Array))
    throw new PickleError("numpy scalar: expected (dtype, bytes)");
  const m = /^([<>=|]?)([biuf])(\d)$/.exec(dt.descr);
  if (!m) throw new PickleError(`numpy scalar: dtype '${dt.descr}' is not supported`);
  const [, order, kind, sizeText] = m;
  const size = Number(sizeText);
  if (raw.byteLength !== size) throw new PickleError(`numpy scalar: ${raw.byteLength} bytes for '${dt.descr}'`);
  const le = (order || dt.byteorder) !== ">";
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (kind === "b") return raw[0] !== 0;
  if (kind === "f") {
    if (size === 4) return v.getFloat32(0, le);
    if (size === 8) return v.getFloat64(0, le);
  } else if (size === 1) return kind === "i" ? v.getInt8(0) : v.getUint8(0);
  else if (size === 2) return kind === "i" ? v.getInt16(0, le) : v.getUint16(0, le);
  else if (size === 4) return kind === "i" ? v.getInt32(0, le) : v.getUint32(0, le);
  else if (size === 8) return smallInt(kind === "i" ? v.getBigInt64(0, le) : v.getBigUint64(0, le));
  throw new PickleError(`numpy scalar: dtype '${dt.descr}' is not supported`);
}

export function smallInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** What each allowed global does when called; `null` marks an inert class (calling it makes a PyObject). */
const ALLOWED = new Map<string, Impl | null>([
  [
    "collections.OrderedDict",
    (args) => {
      const m = new Map<unknown, unknown>();
      if (args.length > 0 && Array.isArray(args[0]))
        for (const kv of args[0]) if (Array.isArray(kv)) m.set(kv[0], kv[1]);
      return m;
    },
  ],
  ["torch._utils._rebuild_tensor", rebuildTensor],
  ["torch._utils._rebuild_tensor_v2", rebuildTensor],
  ["torch._utils._rebuild_parameter", rebuildParameter],
  ["torch._utils._rebuild_parameter_with_state", rebuildParameter],
  [
    // torch ≥ 2 wraps tensors that carry Python state: (func, type, args, state); only plain types are accepted.
    "torch._tensor._rebuild_from_type_v2",
    (args) => {
      const [fn, type, inner] = args;
      const ok =
        type instanceof PyGlobal &&
        (type.qualified === "torch.Tensor" || type.qualified === "torch.nn.parameter.Parameter");
      if (!(fn instanceof PyGlobal) || !ok || !Array.isArray(inner))
        throw new PickleError("_rebuild_from_type_v2: unsupported tensor type");
      return call(fn, inner);
    },
  ],
  // The LDM textual_inversion repo saves string_to_param as an nn.ParameterDict; A1111's
  // modules/safe.py allows this one module class (kept inert: its state is data).
  ["torch.nn.modules.container.ParameterDict", null],
  ["torch.Tensor", null],
  ["torch.nn.parameter.Parameter", null],
  ["torch.Size", (args) => dims(args[0] ?? [], "torch.Size")],
  ["numpy.core.multiarray.scalar", numpyScalar],
  ["numpy._core.multiarray.scalar", numpyScalar],
  [
    "numpy.dtype",
    (args) => {
      if (typeof args[0] !== "string") throw new PickleError("numpy.dtype: expected a type string");
      return new NumpyDtype(args[0]);
    },
  ],
  [
    // Protocol-2 pickles from Python 3 encode bytes as _codecs.encode(str, "latin1").
    "_codecs.encode",
    (args) => {
      const [s, enc] = args;
      if (typeof s !== "string") throw new PickleError("_codecs.encode: expected a string");
      const e = typeof enc === "string" ? enc.toLowerCase().replace("_", "-") : "utf-8";
      if (e === "latin1" || e === "latin-1" || e === "iso-8859-1")
        return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
      if (e === "utf-8" || e === "utf8") return new TextEncoder().encode(s);
      throw new PickleError(`_codecs.encode: encoding ${JSON.stringify(enc)} is not supported`);
    },
  ],
  // Lightning checkpoints of the SD1 era key their callback state by this class (sd-v1-4.ckpt).
  ["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", null],
  ...Object.keys(STORAGES).map((s): [string, null] => [`torch.${s}`, null]),
]);

/** The globals a pickle may name. */
export const ALLOWED_GLOBALS: readonly string[] = [...ALLOWED.keys()];

export function resolve(module: string, name: string): PyGlobal {
  const q = `${module}.${name}`;
  if (!ALLOWED.has(q)) {
    throw new PickleError(
      `the pickle refers to the global '${q}', which is not allowed: only the types of a state dict are read, and nothing was run`,
    );
  }
  return new PyGlobal(module, name);
}

export function call(fn: unknown, args: unknown[]): unknown {
  if (!(fn instanceof PyGlobal))
    throw new PickleError(`cannot call ${describe(fn)}: only allowed globals are callable`);
  const impl = ALLOWED.get(fn.qualified);
  if (impl === undefined) throw new PickleError(`global '${fn.qualified}' is not allowed`);
  if (impl === null) {
    if (fn.module === "torch" && Object.hasOwn(STORAGES, fn.name))
      throw new PickleError(`constructing ${fn.qualified} is not supported`);
    return new PyObject(fn, args);
  }
  return impl(args, fn);
}

export function describe(v: unknown): string {
  if (v === null) return "None";
  if (Array.isArray(v)) return "a tuple/list";
  if (v instanceof Map) return "a dict";
  if (typeof v === "object") return (v as object).constructor.name;
  return typeof v;
}

/** PyTorch's persistent ids: ('storage', StorageType, key, location, numel[, view_metadata]). */
export function torchPersistentLoad(pid: unknown): StorageRef {
  if (!Array.isArray(pid) || pid[0] !== "storage")
    throw new PickleError(`unsupported persistent id ${JSON.stringify(describe(pid))}`);
  const [, type, key, location, numel, view] = pid;
  if (!(type instanceof PyGlobal) || type.module !== "torch" || !Object.hasOwn(STORAGES, type.name)) {
    throw new PickleError(
      `persistent id: unsupported storage type ${type instanceof PyGlobal ? type.qualified : describe(type)}`,
    );
  }
  if (typeof key !== "string" && !isInt(key)) throw new PickleError("persistent id: bad storage key");
  if (!isInt(numel) || numel < 0) throw new PickleError("persistent id: bad storage size");
  if (Array.isArray(view)) {
    // Legacy storage views: (view_key, offset, view_size) into the root storage `key`.
    if (!isInt(view[1]) || !isInt(view[2]) || view[1] < 0 || view[1] + view[2] > numel)
      throw new PickleError("persistent id: bad storage view");
    return new StorageRef(String(key), STORAGES[type.name], view[2], String(location), view[1]);
  } else if (view !== undefined && view !== null) throw new PickleError("persistent id: bad view metadata");
  return new StorageRef(String(key), STORAGES[type.name], numel, String(location));
}
