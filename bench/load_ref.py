"""The PyTorch side of bench/load.ts: a raw read of a .safetensors file, and
the reference reader's way of loading it, without the safetensors package
(not installed here): huggingface/safetensors bindings/python/src/lib.rs
(`Open::new`, `get_tensor`) maps the whole file with
torch.ByteStorage.from_file(shared=False) (UntypedStorage on torch 2.x) and
returns views of it, torch.asarray(storage[start:stop]).view(dtype).reshape(shape).
Such views are lazy: no page is read until a tensor is used. "ref_touched"
also reads one byte of every 4 KiB page, which is what Atelier's loader pays
up front (MADV_POPULATE_READ), so it is the comparable figure.

Usage: python3 bench/load_ref.py FILE --reps N --warmup N [--drop]
Prints one JSON line: {"torch": version, "raw": [ms...], "ref_lazy": [...], "ref_touched": [...]}.
"""

import json
import struct
import subprocess
import sys
import time

try:
    import torch
except ImportError:
    sys.exit(3)

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CHUNK = 64 << 20


def drop_caches():
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def raw(path, buf):
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                return total
            total += n


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return 8 + n, h


def ref(path, size, base, h, touch):
    storage = torch.ByteStorage.from_file(path, shared=False, size=size)
    whole = torch.ByteTensor(storage)
    out = {}
    for name, info in h.items():
        start, stop = info["data_offsets"]
        t = whole[base + start : base + stop].view(DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = t
    if touch:
        int(whole[::4096].sum())
    return out


def main():
    path = sys.argv[1]
    args = sys.argv[2:]
    reps = int(args[args.index("--reps") + 1])
    warmup = int(args[args.index("--warmup") + 1])
    drop = "--drop" in args
    import os

    size = os.stat(path).st_size
    base, h = header(path)
    buf = bytearray(CHUNK)
    methods = {
        "raw": lambda: raw(path, buf),
        "ref_lazy": lambda: ref(path, size, base, h, False),
        "ref_touched": lambda: ref(path, size, base, h, True),
    }
    times = {k: [] for k in methods}
    names = list(methods)
    for r in range(-warmup, reps):
        for j in range(len(names)):
            name = names[(j + max(r, 0)) % len(names)]
            if drop:
                drop_caches()
            t = time.perf_counter()
            got = methods[name]()
            ms = (time.perf_counter() - t) * 1e3
            del got
            if r >= 0:
                times[name].append(ms)
    print(json.dumps({"torch": torch.__version__, **times}))


main()
