// The files the .pt writer's fixture covers: deterministic values written by
// src/formats/pt-write.ts. scripts/record-pt-write-fixture.py runs this module
// (`node dist/test/formats/pt-write-cases.js DIR`), reads each file with
// torch.load and records what PyTorch saw in test/fixtures/pt_write_torch.json.
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type DType, type Tensor, tensor } from "../../src/engine/index.js";
import { PtTensor, type PtValue, PyFloat, PyOrderedDict, PyTuple, savePt } from "../../src/formats/pt-write.js";

/** Values i·step + start, as float32 then cast to `dtype`. */
function ramp(shape: number[], dtype: DType = "float32", start = -1, step = 0.125): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const f = tensor(
    Float32Array.from({ length: n }, (_, i) => start + i * step),
    { shape },
  );
  if (dtype === "float32") return f;
  const t = f.to(dtype);
  f.dispose();
  return t;
}

export interface PtCase {
  name: string;
  value: PtValue;
  tensors: Tensor[];
}

export function ptWriteCases(): PtCase[] {
  const cases: PtCase[] = [];
  const add = (name: string, make: (t: (x: Tensor) => Tensor) => PtValue) => {
    const tensors: Tensor[] = [];
    const value = make((x) => {
      tensors.push(x);
      return x;
    });
    cases.push({ name, value, tensors });
  };
  // AUTOMATIC1111 Embedding.save (modules/textual_inversion/textual_inversion.py).
  add("embedding", (t) => ({
    string_to_token: { "*": 265 },
    string_to_param: { "*": new PtTensor(t(ramp([3, 8])), true) },
    name: "embedding",
    step: 500,
    sd_checkpoint: "9dcb3e3bc3",
    sd_checkpoint_name: "sd_tiny_ldm_single_file",
  }));
  // AUTOMATIC1111 Hypernetwork.save (modules/hypernetworks/hypernetwork.py): int keys, tuples of OrderedDicts, floats.
  add("hypernetwork", (t) => {
    const sd = () =>
      new PyOrderedDict(
        new Map<string, PtValue>([
          ["linear.0.weight", t(ramp([8, 4]))],
          ["linear.0.bias", t(ramp([8], "float32", 0.5, -0.25))],
        ]),
      );
    return new Map<string | number, PtValue>([
      [4, new PyTuple([sd(), sd()])],
      ["step", 250],
      ["name", "hypernetwork"],
      ["layer_structure", [new PyFloat(1), new PyFloat(2), new PyFloat(1)]],
      ["activation_func", "relu"],
      ["is_layer_norm", false],
      ["use_dropout", true],
      ["dropout_structure", [0, 0.3, 0]],
      ["optional_info", null],
    ]);
  });
  add("dtypes", (t) => ({
    f16: t(ramp([2, 3], "float16")),
    bf16: t(ramp([5], "bfloat16", 3, -0.75)),
    f64: t(ramp([2, 2], "float64", 0.1, 0.3)),
    i64: t(tensor(BigInt64Array.from([-(2n ** 40n), -1n, 0n, 7n]), { shape: [2, 2] })),
    i32: t(tensor(Int32Array.from([-5, 0, 2 ** 30]))),
    u8: t(tensor(Uint8Array.from([0, 1, 128, 255]))),
    scalar: t(tensor(Float32Array.from([2.5]), { shape: [] })),
    empty: t(tensor(new Float32Array(0), { shape: [0, 3] })),
  }));
  add("scalars", () => [
    0,
    255,
    256,
    65535,
    65536,
    -1,
    -(2 ** 31),
    2 ** 31,
    -(2 ** 40),
    2n ** 70n,
    -(2n ** 70n),
    0.1,
    -0.0,
    new PyFloat(3),
    Number.POSITIVE_INFINITY,
    true,
    false,
    null,
    "",
    "ünïcødé ✓ 𝄞",
    new PyTuple([]),
    new PyTuple([1, "a", [2, new PyTuple([3])]]),
    [],
    {},
    new Map<number, PtValue>([[-3, "minus three"]]),
  ]);
  return cases;
}

/** Writes every case to `dir/<name>.pt`. */
export function writePtCases(dir: string): string[] {
  const written: string[] = [];
  for (const c of ptWriteCases()) {
    const path = join(dir, `${c.name}.pt`);
    savePt(path, c.value);
    for (const t of c.tensors) t.dispose();
    written.push(path);
  }
  return written;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = process.argv[2];
  if (!dir) throw new Error("usage: node dist/test/formats/pt-write-cases.js OUTDIR");
  for (const p of writePtCases(dir)) console.log(p);
}
