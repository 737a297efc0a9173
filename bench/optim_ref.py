#!/usr/bin/python3
"""PyTorch twin of bench/optim.ts: the step time of each optimizer on the same
tensors (same shapes, same gradient formula), one thread. torch.optim.AdamW
(foreach=False) for AdamW; for the others, the pure-torch re-implementations of
scripts/record-optim-extra-reference.py (Lion, Adafactor, Prodigy, and the
8-bit AdamW as bitsandbytes' algorithm: bitsandbytes itself needs CUDA).
Prints one JSON line: {name: median seconds per step}.
"""
import importlib.util
import json
import os
import sys
import time

import torch

torch.set_num_threads(1)
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("ref", os.path.join(here, "..", "scripts", "record-optim-extra-reference.py"))
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

shapes = json.loads(sys.argv[1])
reps = int(sys.argv[2])
MAKERS = {
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False),
    "AdamW8bit": lambda ps: ref.AdamW8bit(ps, lr=1e-3),
    "Lion": lambda ps: ref.Lion(ps, lr=1e-4),
    "Adafactor": lambda ps: ref.Adafactor(ps),
    "Prodigy": lambda ps: ref.Prodigy(ps),
}
out = {}
for name, make in MAKERS.items():
    torch.manual_seed(0)
    params = [torch.randn(*s) for s in shapes]
    for i, p in enumerate(params):
        p.grad = ref.grad_of(p, i)
    opt = make(params)
    opt.step()  # states made
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    times.sort()
    out[name] = times[len(times) // 2]
print(json.dumps(out))
