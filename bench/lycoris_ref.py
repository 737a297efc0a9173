#!/usr/bin/python3
"""PyTorch twin of bench/lycoris.ts: one algorithm's training step on the same
layers, in this process alone, one thread. argv[1] is the JSON the Atelier
child printed: per layer its kind, weight and input shapes and the adapter
tensors' shapes (null: the layer runs unadapted). The math is LyCORIS'
(KohakuBlueleaf/LyCORIS lycoris/modules/), as Atelier runs it
(src/adapters/functional/):
- lora / locon (modules/locon.py bypass forward): base(x) + up(down(x))·scale,
  the conv down a k×k conv, up 1×1;
- loha (modules/loha.py, functional/loha.py diff_weight): ΔW = (w1a@w1b) ⊙
  (w2a@w2b)·scale, y = base(x) + op(x, ΔW);
- lokr (modules/lokr.py, functional/lokr.py make_kron): ΔW = kron(w1, w2a@w2b)
  ·scale (w2 full when stored so), y = base(x) + op(x, ΔW);
- dora (modules/locon.py apply_weight_decompose, norms over input columns as
  A1111 reads them): V = W0 + ΔW_lora, W' = V·dora_scale/(‖V‖+ε),
  y = base(x) + op(x, W' − W0);
- ia3 (modules/ia3.py): y = base(x) + op(x, W0)·w over output channels;
- full (modules/full.py): y = base(x) + op(x, diff).
Loss Σ mean(y²), backward, torch.optim.AdamW (lr 1e-4, weight decay 1e-2,
foreach=False). Prints one JSON line: step_ms (median), peak_mb (VmHWM),
step_mb (VmHWM after the steps − RSS once layers and inputs exist, VmHWM reset
there through /proc/self/clear_refs).
"""
import json
import re
import sys
import time

import torch
import torch.nn.functional as F

EPS = 1.1920928955078125e-7  # src/adapters/functional/lycoris.ts DORA_EPS (float32 eps)


def status_mb(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+) kB", f.read()).group(1)) / 1024


torch.set_num_threads(1)
torch.manual_seed(0)
spec = json.loads(sys.argv[1])
algo, reps, warmup = spec["algo"], spec["reps"], spec["warmup"]

layers = []
for s in spec["layers"]:
    w = s["weight"]
    if s["kind"] == "linear":
        base = torch.nn.Linear(w[1], w[0], bias=s["name"] != "linear_768_320")
    else:
        base = torch.nn.Conv2d(w[1], w[0], w[2], padding=w[2] // 2)
    base.requires_grad_(False)
    layers.append((s, base, torch.randn(*s["input"])))
rss_base = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")

params = []
mods = []
for s, base, _ in layers:
    ts = s["tensors"]
    if ts is None:
        mods.append((s, base, None))
        continue
    p = {}
    for k, shape in ts.items():
        if k == "dora_scale":
            # starts at ‖W0‖ over input columns, as Atelier's create does
            w0 = base.weight.detach()
            v = w0.transpose(0, 1).reshape(w0.shape[1], -1).norm(dim=1)
            t = v.reshape(shape).clone()
        elif k in ("lora_up.weight", "hada_w2_a", "lokr_w2", "lokr_w2_a", "diff", "weight"):
            t = torch.zeros(*shape)  # the factor that starts at zero, as the reference
        else:
            t = torch.randn(*shape) * 0.05
        p[k] = t.requires_grad_(True)
        params.append(p[k])
    mods.append((s, base, p))


def op(s, base, x, weight):
    if s["kind"] == "linear":
        return F.linear(x, weight)
    return F.conv2d(x, weight, None, stride=base.stride, padding=base.padding)


def lora_delta(p, scale, shape):
    up, down = p["lora_up.weight"], p["lora_down.weight"]
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape) * scale


def forward(s, base, p, x):
    y = base(x)
    if p is None:
        return y
    shape = s["weight"]
    w0 = base.weight
    rank = 8
    scale = 8 / rank  # alpha = rank
    if algo in ("lora", "locon"):
        down, up = p["lora_down.weight"], p["lora_up.weight"]
        if s["kind"] == "linear":
            h = F.linear(F.linear(x, down), up)
        else:
            h = F.conv2d(F.conv2d(x, down, None, stride=base.stride, padding=base.padding), up)
        return y + h * scale
    if algo == "loha":
        d = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
        return y + op(s, base, x, (d * scale).reshape(shape))
    if algo == "lokr":
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        else:
            b = p["lokr_w2_b"]
            w2 = p["lokr_w2_a"] @ b.reshape(b.shape[0], -1)
        sc = scale if ("lokr_w1_b" in p or "lokr_w2_b" in p) else 1.0
        if w2.dim() == 4:
            w1 = w1.reshape(w1.shape[0], w1.shape[1], 1, 1)
        return y + op(s, base, x, (torch.kron(w1, w2.contiguous()) * sc).reshape(shape))
    if algo == "dora":
        v = w0 + lora_delta(p, scale, shape)
        n = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1).reshape(1, v.shape[1], *([1] * (v.dim() - 2)))
        return y + op(s, base, x, v * (p["dora_scale"] / (n + EPS)) - w0)
    if algo == "ia3":
        w = p["weight"]
        v = w.reshape(1, -1, 1, 1) if s["kind"] != "linear" else w.reshape(-1)
        return y + op(s, base, x, w0) * v
    if algo == "full":
        return y + op(s, base, x, p["diff"])
    raise SystemExit(f"unknown algo {algo}")


opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, foreach=False)
times = []
for i in range(warmup + reps):
    t0 = time.perf_counter()
    loss = None
    for (s, base, p), (_, _, x) in zip(mods, layers):
        term = forward(s, base, p, x).square().mean()
        loss = term if loss is None else loss + term
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del loss, term
    if i >= warmup:
        times.append((time.perf_counter() - t0) * 1e3)
times.sort()
peak = status_mb("VmHWM")
print(json.dumps({"step_ms": times[len(times) // 2], "peak_mb": peak, "step_mb": peak - rss_base}))
