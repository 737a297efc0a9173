// A CPU tensor holding a region of an open file (native/file_tensor.cc).
import { type DType, dtypeCode } from "./dtype.js";
import { native } from "./native.js";
import { Tensor } from "./tensor.js";

/**
 * How the bytes get into the tensor:
 * - "map": a private copy-on-write mapping of the file (no copy; writes stay
 *   in memory). Falls back to "read" for small or misaligned regions and
 *   where the file cannot be mapped.
 * - "read": read into new memory that the tensor owns.
 * - "copy": copied from a mapping into new memory (bench/load.ts compares).
 */
export type FileRead = "map" | "read" | "copy";

const HOW: Record<FileRead, number> = { map: 0, read: 1, copy: 2 };

/**
 * A tensor of `shape` and `dtype` from the `byteLength` bytes at `offset` of
 * the file open as `fd`. Throws (an Error naming the cause) when the file
 * ends early or cannot be read. The fd may be closed afterwards.
 */
export function readFileTensor(
  fd: number,
  offset: number,
  byteLength: number,
  shape: readonly number[],
  dtype: DType,
  how: FileRead = "map",
): Tensor {
  return new Tensor(native.readFileTensor(fd, offset, byteLength, [...shape], dtypeCode(dtype), HOW[how]));
}

/** File mappings that live tensors still hold (each is unmapped when its last tensor is freed). */
export function liveMappings(): number {
  return native.liveMappings();
}
