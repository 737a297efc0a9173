// Element types, with the codes of c10::ScalarType (stable across libtorch versions).

export type DType =
  | "uint8"
  | "int8"
  | "int16"
  | "int32"
  | "int64"
  | "float16"
  | "float32"
  | "float64"
  | "bool"
  | "bfloat16";

const CODES: Record<DType, number> = {
  uint8: 0,
  int8: 1,
  int16: 2,
  int32: 3,
  int64: 4,
  float16: 5,
  float32: 6,
  float64: 7,
  bool: 11,
  bfloat16: 15,
};

const NAMES = new Map<number, DType>(Object.entries(CODES).map(([k, v]) => [v, k as DType]));

export const BYTES: Record<DType, number> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  float16: 2,
  float32: 4,
  float64: 8,
  bool: 1,
  bfloat16: 2,
};

export function dtypeCode(d: DType): number {
  const c = CODES[d];
  if (c === undefined) throw new Error(`unknown dtype '${d}' (known: ${Object.keys(CODES).join(", ")})`);
  return c;
}

export function dtypeName(code: number): DType {
  const n = NAMES.get(code);
  if (!n) throw new Error(`unsupported torch scalar type code ${code}`);
  return n;
}

export function isFloating(d: DType): boolean {
  return d === "float16" || d === "float32" || d === "float64" || d === "bfloat16";
}

/** The typed array that holds a dtype's bytes; half floats come back as raw Uint16 bits. */
export type TypedArray =
  | Float32Array
  | Float64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array
  | Uint16Array;

export function typedArrayView(d: DType, buffer: ArrayBuffer, offset = 0, length?: number): TypedArray {
  switch (d) {
    case "float32":
      return new Float32Array(buffer, offset, length);
    case "float64":
      return new Float64Array(buffer, offset, length);
    case "int8":
      return new Int8Array(buffer, offset, length);
    case "int16":
      return new Int16Array(buffer, offset, length);
    case "int32":
      return new Int32Array(buffer, offset, length);
    case "int64":
      return new BigInt64Array(buffer, offset, length);
    case "uint8":
    case "bool":
      return new Uint8Array(buffer, offset, length);
    case "float16":
    case "bfloat16":
      return new Uint16Array(buffer, offset, length);
  }
}

/** The dtype a typed array naturally holds. */
export function dtypeOfArray(a: ArrayBufferView): DType {
  if (a instanceof Float32Array) return "float32";
  if (a instanceof Float64Array) return "float64";
  if (a instanceof Int32Array) return "int32";
  if (a instanceof BigInt64Array) return "int64";
  if (a instanceof Int16Array) return "int16";
  if (a instanceof Int8Array) return "int8";
  if (a instanceof Uint8Array) return "uint8";
  throw new Error(`no default dtype for ${a.constructor.name}; pass one explicitly`);
}
