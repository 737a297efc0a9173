// Loads the libtorch addon (native/) and describes what it exports.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** Tensor and generator ids are indices into tables on the C++ side. */
export type TensorId = number;
export type GeneratorId = number;
export type NativeValue = TensorId | number | boolean | string | null | undefined | NativeValue[];

export interface NativeAddon {
  version(): string;
  // tensor table
  free(id: TensorId): void;
  alias(id: TensorId): TensorId;
  liveCount(): number;
  fromData(data: ArrayBufferView, shape: number[], dtype: number): TensorId;
  dataView(id: TensorId): ArrayBuffer;
  releaseView(buffer: ArrayBuffer): void;
  meta(id: TensorId): [number, number[], string, boolean, boolean];
  shape(id: TensorId): number[];
  dtype(id: TensorId): number;
  item(id: TensorId): number | boolean;
  // file regions (native/file_tensor.cc)
  readFileTensor(fd: number, offset: number, byteLength: number, shape: number[], dtype: number, how: number): TensorId;
  liveMappings(): number;
  // operators
  opFind(name: string, overload: string): number;
  opSchema(op: number): string;
  call(op: number, ...args: NativeValue[]): NativeValue;
  callVoid(op: number, ...args: NativeValue[]): void;
  // autograd
  setRequiresGrad(id: TensorId, on: boolean): void;
  isLeaf(id: TensorId): boolean;
  retainGrad(id: TensorId): void;
  grad(id: TensorId): TensorId | null;
  setGrad(id: TensorId, grad: TensorId | null): void;
  backward(outputs: TensorId[], grads: (TensorId | null)[], retainGraph: boolean, createGraph: boolean): void;
  gradOf(
    outputs: TensorId[],
    inputs: TensorId[],
    gradOutputs: (TensorId | null)[],
    retainGraph: boolean,
    createGraph: boolean,
    allowUnused: boolean,
  ): (TensorId | null)[];
  // gradient checkpointing (native/checkpoint.cc)
  checkpointSetBackward(
    fn: (segment: number, inputs: (TensorId | null)[], grads: (TensorId | null)[]) => (TensorId | null)[],
  ): void;
  checkpointAttach(segment: number, inputs: TensorId[], outputs: TensorId[]): TensorId[];
  checkpointDead(): number[];
  setGradEnabled(on: boolean): boolean;
  isGradEnabled(): boolean;
  // runtime
  setNumThreads(n: number): void;
  getNumThreads(): number;
  /** glibc malloc_trim(0): true where memory went back to the kernel. */
  mallocTrim(): boolean;
  cudaDeviceCount(): number;
  manualSeed(seed: number): void;
  generatorNew(device: string, seed: number): GeneratorId;
  generatorFree(id: GeneratorId): void;
  generatorSeed(id: GeneratorId, seed: number): void;
  generatorGetState(id: GeneratorId): TensorId;
  generatorSetState(id: GeneratorId, state: TensorId): void;
  defaultGeneratorGetState(): TensorId;
  defaultGeneratorSetState(state: TensorId): void;
  autocastEnter(deviceType: string, dtype: number): [boolean, number];
  autocastExit(deviceType: string, wasEnabled: boolean, dtype: number): void;
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("atelier: cannot find the package root");
    dir = up;
  }
  return dir;
}

function load(): NativeAddon {
  // OpenMP reads these when the library loads; on small machines a spinning
  // OpenMP pool fights the BLAS threads (docs/design.md §1).
  process.env.OMP_WAIT_POLICY ??= "passive";
  const root = packageRoot();
  const path = join(root, "build", "Release", "atelier_native.node");
  if (!existsSync(path)) {
    throw new Error(
      `atelier: the libtorch addon is not built (${path} is missing). Run \`bash scripts/setup.sh\` in ${root}.`,
    );
  }
  const addon = createRequire(import.meta.url)(path) as NativeAddon;
  const threads = Number(process.env.ATELIER_NUM_THREADS ?? "0");
  if (threads > 0) addon.setNumThreads(threads);
  return addon;
}

export const native: NativeAddon = load();
