#!/usr/bin/env python3
"""Records what PyTorch reads from the .pt files Atelier writes (src/formats/pt-write.ts).

Run after `npx tsc -p tsconfig.json`, with Debian's torch 1.13:
    /usr/bin/python3 scripts/record-pt-write-fixture.py
It writes the cases of test/formats/pt-write-cases.ts into a temporary folder, then for each file
  * checks every zip entry name against AUTOMATIC1111's `allowed_zip_names_re` and every global the
    pickle names against its `find_class` allow-list (AUTOMATIC1111/stable-diffusion-webui
    modules/safe.py), listing the globals with pickletools (nothing is unpickled for this check);
  * loads it with `torch.load` and records the tree: tensors as dtype, shape, requires_grad and
    values; Python floats, tuples and OrderedDicts marked so they cannot be confused with ints,
    lists and dicts.
Output: test/fixtures/pt_write_torch.json (with each file's sha256, so a test can tell that the
writer still produces the bytes PyTorch read).
"""
import collections
import hashlib
import json
import math
import os
import pickletools
import re
import subprocess
import sys
import tempfile
import zipfile

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "test", "fixtures", "pt_write_torch.json")

# AUTOMATIC1111 modules/safe.py: RestrictedUnpickler.find_class and allowed_zip_names_re.
A1111_ALLOWED = {
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy"},
    "torch": {"FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage",
              "float32", "BFloat16Storage"},
    "torch.nn.modules.container": {"ParameterDict"},
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy": {"dtype", "ndarray"},
    "_codecs": {"encode"},
    "__builtin__": {"set"},
}
ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")


def globals_named(pkl):
    found, strings = [], []
    for op, arg, _ in pickletools.genops(pkl):
        if op.name == "GLOBAL":
            found.append(tuple(arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            found.append((strings[-2], strings[-1]))
        if isinstance(arg, str):
            strings.append(arg)
    return found


def check_a1111(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        for n in names:
            assert ZIP_NAMES.match(n), f"{path}: zip entry {n} is not one A1111 admits"
        pkl = [n for n in names if n.endswith("/data.pkl")]
        assert len(pkl) == 1
        used = sorted(set(globals_named(z.read(pkl[0]))))
    for module, name in used:
        assert name in A1111_ALLOWED.get(module, ()), f"{path}: global {module}.{name} is outside A1111's allow-list"
    return names, [f"{m}.{n}" for m, n in used]


def number(x):
    if isinstance(x, float):
        if math.isinf(x) or math.isnan(x):
            return {"float": repr(x)}
        return {"float": x, "negative_zero": True} if x == 0 and math.copysign(1, x) < 0 else {"float": x}
    if isinstance(x, int) and abs(x) >= 2 ** 53:
        return {"bigint": str(x)}
    return x


def tree(v):
    if isinstance(v, torch.Tensor):
        flat = v.detach().reshape(-1)
        values = [str(int(x)) if v.dtype == torch.int64 else x for x in flat.tolist()]
        return {"tensor": str(v.dtype).replace("torch.", ""), "shape": list(v.shape),
                "requires_grad": v.requires_grad, "values": values}
    if isinstance(v, collections.OrderedDict):
        return {"ordered_dict": [[number(k), tree(x)] for k, x in v.items()]}
    if isinstance(v, dict):
        return {"dict": [[number(k), tree(x)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"tuple": [tree(x) for x in v]}
    if isinstance(v, list):
        return {"list": [tree(x) for x in v]}
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return number(v)
    raise TypeError(f"unexpected {type(v)}")


def main():
    out = {"torch": torch.__version__, "files": {}}
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["node", os.path.join(ROOT, "dist", "test", "formats", "pt-write-cases.js"), d],
                       check=True, stdout=subprocess.DEVNULL)
        for fn in sorted(os.listdir(d)):
            path = os.path.join(d, fn)
            names, used = check_a1111(path)
            with open(path, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            value = torch.load(path, map_location="cpu")
            out["files"][fn] = {"sha256": sha, "zip_entries": names, "globals": used, "value": tree(value)}
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT} ({len(out['files'])} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
