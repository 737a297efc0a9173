#!/usr/bin/python3
"""PyTorch twin of bench/engine.ts: the same cases, timed the same way.

Standalone, it times every case and prints one JSON object:
    /usr/bin/python3 bench/engine_ref.py --threads N [--device cpu|cuda] ...
    {"torch": version, "threads": n, "device": d, "attention": "math"|"sdpa",
     "cases": {name: {"median_ms": m, "samples_ms": [...], "cpu_ms": [...], "faults": [...]}}}
bench/engine.ts runs it with --serve, so that the two sides take turns
repetition by repetition and see the same machine load: it prints the info
object above (without "cases"), then answers one JSON request per stdin line
with one JSON line:
    {"cmd": "setup", "case": c}            -> {}
    {"cmd": "run", "case": c, "reps": n}   -> {"samples_ms": [...], "cpu_ms": [...], "faults": [...]}
    {"cmd": "free", "case": c}             -> {}
    any failure                            -> {"error": message}
Per repetition, samples_ms is the wall-clock time, cpu_ms the process's CPU
time (unaffected by other processes taking the CPU), faults the minor page
faults (memory the allocator gave back and touches again).

Exit codes: 3 = torch does not import, 4 = --device cuda without CUDA.
Keep the cases in step with caseList() in bench/engine.ts.
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time
import traceback

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the TS side turns this into a set-up hint
    print(f"engine_ref.py: cannot import torch ({e})", file=sys.stderr)
    sys.exit(3)


def parse():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tiny-ops", type=int, default=10000)
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--serve", action="store_true", help="answer requests on stdin (see above)")
    return p.parse_args()


# Same choice as Atelier's scaledDotProductAttention: the fused op where this
# torch has it (2.x), else the explicit formula (1.13).
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v):
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v)
    scale = 1 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    return torch.matmul(scores.softmax(-1), v)


def case_matmul(dev, _args):
    a = torch.randn(1024, 1024, device=dev)
    b = torch.randn(1024, 1024, device=dev)

    def step():
        torch.matmul(a, b)

    return step


def case_conv(dev, _args):
    x = torch.randn(1, 64, 64, 64, device=dev)
    w = (torch.randn(64, 64, 3, 3, device=dev) * 0.05).requires_grad_()
    b = torch.zeros(64, device=dev).requires_grad_()

    def step():
        F.conv2d(x, w, b, padding=1).sum().backward()
        w.grad = None
        b.grad = None

    return step


def case_attention(dev, _args, L=256):
    B, C, H = 2, 320, 8
    D = C // H
    x = torch.randn(B, L, C, device=dev)
    s = 1 / math.sqrt(C)
    wq, wk, wv, wo = ((torch.randn(C, C, device=dev) * s).requires_grad_() for _ in range(4))
    bo = torch.zeros(C, device=dev).requires_grad_()
    params = [wq, wk, wv, wo, bo]

    def heads(t):
        return t.reshape(B, L, H, D).transpose(1, 2)

    def step():
        q, k, v = heads(F.linear(x, wq)), heads(F.linear(x, wk)), heads(F.linear(x, wv))
        o = attention(q, k, v).transpose(1, 2).reshape(B, L, C)
        F.linear(o, wo, bo).sum().backward()
        for p in params:
            p.grad = None

    return step


def case_tiny(dev, args):
    x = torch.ones(4, device=dev)
    n = args.tiny_ops

    def step():
        for _ in range(n):
            x.add(1)

    return step


def case_tiny_tensor(dev, args):
    x = torch.ones(4, device=dev)
    n = args.tiny_ops

    def step():
        for _ in range(n):
            x.add(x)

    return step


CASES = {
    "matmul": case_matmul,
    "conv": case_conv,
    "attention": case_attention,
    # SD1.5's first transformer level at a 32x32 latent: 1024 tokens, 2x8x1024x1024 scores (64 MiB)
    "attention-1024": lambda dev, args: case_attention(dev, args, L=1024),
    "tiny": case_tiny,
    "tiny-tensor": case_tiny_tensor,
}


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_reps(step, reps, sync):
    """Wall-clock ms, process CPU ms and minor page faults of each repetition."""
    wall, cpu, faults = [], [], []
    for _ in range(reps):
        f0 = minor_faults()
        c0 = time.process_time()
        t0 = time.perf_counter()
        step()
        sync()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        faults.append(minor_faults() - f0)
    return wall, cpu, faults


def serve(info, dev, args, sync):
    print(json.dumps(info), flush=True)
    steps = {}
    for line in sys.stdin:
        try:
            req = json.loads(line)
            case = req.get("case")
            if req["cmd"] == "setup":
                steps[case] = CASES[case](dev, args)
                reply = {}
            elif req["cmd"] == "run":
                wall, cpu, faults = time_reps(steps[case], req["reps"], sync)
                reply = {"samples_ms": wall, "cpu_ms": cpu, "faults": faults}
            elif req["cmd"] == "free":
                steps.pop(case, None)
                reply = {}
            else:
                reply = {"error": f"unknown command {req['cmd']!r}"}
        except Exception:  # reported to the TS side, which stops
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


def main():
    args = parse()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"engine_ref.py: --device {args.device}, but torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        sys.exit(4)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "attention": "sdpa" if HAS_SDPA else "math",
    }
    if args.serve:
        serve(info, dev, args, sync)
        return
    out = {}
    for name in [n for n in args.only.split(",") if n] or list(CASES):
        step = CASES[name](dev, args)
        time_reps(step, args.warmup, sync)
        wall, cpu, faults = time_reps(step, args.reps, sync)
        out[name] = {"median_ms": statistics.median(wall), "samples_ms": wall, "cpu_ms": cpu, "faults": faults}
    print(json.dumps({**info, "cases": out}))


if __name__ == "__main__":
    main()
