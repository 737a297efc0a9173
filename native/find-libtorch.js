#!/usr/bin/env node
// Finds the libtorch the addon builds against, in the order docs/design.md §1 fixes:
//   1. $LIBTORCH (an unpacked libtorch folder: include/, lib/)
//   2. the `torch` package of `python3` (how GPU users get a CUDA build)
//   3. the system's (Debian/Ubuntu `libtorch-dev`: /usr/include/torch)
// Prints one field for binding.gyp (`include_dirs`, `lib_dir`, `libs`, `abi`,
// `rpath`), or the whole description as JSON with `--json`. Exits 1 with a
// message saying what to do when none is found.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";

function fromFolder(root, source, abi) {
  const include = join(root, "include");
  const libDir = join(root, "lib");
  if (!existsSync(join(include, "ATen", "ATen.h")) || !existsSync(libDir)) return null;
  return describe(source, [include, join(include, "torch/csrc/api/include")], libDir, abi);
}

function describe(source, includeDirs, libDir, abi) {
  const names = readdirSync(libDir);
  const has = (n) => names.some((f) => f === `lib${n}.so` || f.startsWith(`lib${n}.so.`));
  if (!has("torch") || !has("c10")) return null;
  // CUDA libraries register their kernels at load time; they are linked with
  // --no-as-needed so that the dynamic linker keeps them although we call none
  // of their symbols directly.
  const libs = ["torch", "torch_cpu", "c10", "torch_cuda", "c10_cuda"].filter(has);
  return { source, includeDirs, libDir, libs, abi: abi ?? guessAbi(libDir), cuda: has("torch_cuda") };
}

// Debian builds with the new C++11 ABI; pre-cxx11 libtorch zips say so in the name.
function guessAbi(libDir) {
  return libDir.includes("pre-cxx11") ? 0 : 1;
}

function fromPython() {
  const py = process.env.PYTHON ?? "python3";
  const script =
    "import torch, os, json; print(json.dumps({'root': os.path.dirname(torch.__file__), " +
    "'abi': int(torch.compiled_with_cxx11_abi()), 'version': torch.__version__}))";
  try {
    const out = execFileSync(py, ["-c", script], { stdio: ["ignore", "pipe", "ignore"], timeout: 60_000 });
    const info = JSON.parse(out.toString());
    const found = fromFolder(info.root, `python3 torch ${info.version} (${info.root})`, info.abi);
    return found;
  } catch {
    return null;
  }
}

function fromSystem() {
  const include = "/usr/include";
  if (!existsSync(join(include, "torch/csrc/api/include/torch/torch.h"))) return null;
  for (const libDir of ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]) {
    if (!existsSync(libDir)) continue;
    const found = describe("system libtorch-dev", [join(include, "torch/csrc/api/include")], libDir, 1);
    if (found) return found;
  }
  return null;
}

export function findLibtorch() {
  if (process.env.LIBTORCH) {
    const found = fromFolder(process.env.LIBTORCH, `LIBTORCH=${process.env.LIBTORCH}`);
    if (!found) {
      throw new Error(
        `LIBTORCH=${process.env.LIBTORCH} is not a libtorch folder (expected include/ATen/ATen.h and lib/libtorch.so)`,
      );
    }
    return found;
  }
  return fromPython() ?? fromSystem();
}

const isMain = process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop());
if (isMain) {
  let found;
  try {
    found = findLibtorch();
  } catch (e) {
    console.error(`atelier: ${e.message}`);
    process.exit(1);
  }
  if (!found) {
    console.error(
      "atelier: no libtorch found. Install Debian/Ubuntu's `libtorch-dev` (sudo apt-get install libtorch-dev), " +
        "or set LIBTORCH to an unpacked libtorch folder, or install PyTorch for `python3`.",
    );
    process.exit(1);
  }
  const field = process.argv[2] ?? "--json";
  const out = {
    "--json": () => JSON.stringify(found, null, 2),
    include_dirs: () => found.includeDirs.join(" "),
    lib_dir: () => found.libDir,
    libs: () => found.libs.map((l) => `-l${l}`).join(" "),
    abi: () => String(found.abi),
    rpath: () => `-Wl,-rpath,${found.libDir}`,
  }[field];
  if (!out) {
    console.error(`find-libtorch: unknown field ${field}`);
    process.exit(2);
  }
  console.log(out());
}
