// Devices and threads.
import { native } from "./native.js";

export const cudaDeviceCount = (): number => native.cudaDeviceCount();
export const cudaAvailable = (): boolean => native.cudaDeviceCount() > 0;

/** "cuda" when a GPU is there, else "cpu". */
export const defaultDevice = (): string => (cudaAvailable() ? "cuda" : "cpu");

/** Checks a device string and says why it cannot be used. */
export function checkDevice(device: string): string {
  const m = /^(cpu|cuda)(?::(\d+))?$/.exec(device);
  if (!m) throw new Error(`unknown device '${device}' (use cpu, cuda or cuda:N)`);
  if (m[1] === "cuda") {
    const n = cudaDeviceCount();
    if (n === 0) throw new Error(`device '${device}': this libtorch (${native.version()}) sees no CUDA GPU`);
    if (m[2] !== undefined && Number(m[2]) >= n) throw new Error(`device '${device}': only ${n} CUDA GPU(s) present`);
  }
  return device;
}

export const setNumThreads = (n: number): void => native.setNumThreads(n);
export const getNumThreads = (): number => native.getNumThreads();
/**
 * Returns the free pages of the process's heap to the kernel (glibc malloc_trim). The addon keeps
 * freed tensor memory in the heap for reuse (native/runtime.cc); call this after freeing memory that
 * will not be needed again (weights replaced by half-precision copies). True where any was returned.
 */
export const releaseFreeMemory = (): boolean => native.mallocTrim();
export const torchVersion = (): string => native.version();
