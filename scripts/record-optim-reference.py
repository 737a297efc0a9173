#!/usr/bin/python3
"""Records PyTorch reference values for the optimizer and LR-schedule tests.

Run with Debian's python3-torch 1.13:
    /usr/bin/python3 scripts/record-optim-reference.py
writes test/fixtures/optim_reference.json, which test/engine/optim.test.ts
reads (the tests never need PyTorch).

Optimizers (torch.optim.SGD / AdamW, single-tensor implementation,
foreach=False): each case starts from fixed parameters (torch.manual_seed(0)
randn), computes the gradient of a fixed loss (a quadratic plus a sine) with
autograd, and runs N steps. The file holds the initial parameters, the
gradient fed at each step (null: that parameter has no grad at that step) and
the parameters after each step, so the TypeScript test assigns the very same
gradients to `.grad` instead of recomputing the loss. One case drives SGD with
a LambdaLR whose lambda is diffusers' linear schedule, and records the lr.

clip_grad_norm_: gradients before, the returned total norm, gradients after.

LR schedules: diffusers is not installed here, so the lambdas below are
transcribed from diffusers/src/diffusers/optimization.py (get_scheduler and
the get_*_schedule_with_warmup functions), including their integer divisions
and max(1, ...) guards; the file holds the multipliers for steps 0..N.

All tensors are float32; they are stored as {"shape": [...], "data": [flat]}.
"""
import json
import math
import os

import torch

torch.set_num_threads(1)
STEPS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "optim_reference.json")


def enc(t):
    if t is None:
        return None
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "data": t.reshape(-1).tolist()}


def initial_params():
    torch.manual_seed(0)
    return [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]


def loss_fn(params):
    # A fixed quadratic plus a sine, so the gradients change from step to step.
    total = 0
    for i, p in enumerate(params):
        total = total + (0.5 * (i + 1)) * (p * p).sum() + torch.sin(3 * p).sum()
    return total


def run_case(make_opt, groups=None, skip=None, sched=None):
    """groups: how the params split into groups (lists of indices) with options;
    skip: {step: [param indices without grad at that step]}."""
    params = [p.clone().requires_grad_(True) for p in initial_params()]
    init = [enc(p) for p in params]
    opt = make_opt(params)
    scheduler = sched(opt) if sched else None
    grads, after, lrs = [], [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss_fn(params).backward()
        for i in (skip or {}).get(step, []):
            params[i].grad = None
        grads.append([enc(p.grad) for p in params])
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if scheduler:
            scheduler.step()
        after.append([enc(p) for p in params])
    case = {"params": init, "grads": grads, "after": after}
    if sched:
        case["lrs"] = lrs
    return case


def optimizer_cases():
    from torch.optim import SGD, AdamW

    def sgd(**kw):
        return lambda ps: SGD(ps, foreach=False, **kw)

    def adamw(**kw):
        return lambda ps: AdamW(ps, foreach=False, **kw)

    cases = {}
    specs = {
        "sgd_plain": ("SGD", {"lr": 0.1}),
        "sgd_momentum": ("SGD", {"lr": 0.1, "momentum": 0.9}),
        "sgd_nesterov_wd": ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        "sgd_dampening": ("SGD", {"lr": 0.1, "momentum": 0.5, "dampening": 0.3}),
        "sgd_maximize": ("SGD", {"lr": 0.02, "momentum": 0.8, "maximize": True}),
        "adamw_default": ("AdamW", {}),
        "adamw_amsgrad": ("AdamW", {"lr": 0.05, "amsgrad": True}),
        "adamw_wd": ("AdamW", {"lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}),
    }
    for name, (kind, opts) in specs.items():
        kw = dict(opts)
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        make = sgd(**kw) if kind == "SGD" else adamw(**kw)
        cases[name] = {"optimizer": kind, "options": opts, **run_case(make)}

    # Two groups with their own lr and weight decay; param 1 has no grad at steps 1 and 2.
    groups = [{"params": [0, 2], "lr": 0.02}, {"params": [1], "lr": 0.1, "weight_decay": 0.5}]

    def grouped(ps):
        return AdamW(
            [{**g, "params": [ps[i] for i in g["params"]]} for g in groups], lr=0.01, amsgrad=True, foreach=False
        )

    cases["adamw_groups_skip"] = {
        "optimizer": "AdamW",
        "options": {"lr": 0.01, "amsgrad": True},
        "groups": [{"params": g["params"], **{k: v for k, v in g.items() if k != "params"}} for g in groups],
        **run_case(grouped, skip={1: [1], 2: [1]}),
    }

    # SGD driven by LambdaLR with diffusers' linear schedule (warm-up 2, 5 training steps).
    def linear_sched(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear(s, 2, 5))

    cases["sgd_lambdalr_linear"] = {
        "optimizer": "SGD",
        "options": {"lr": 0.1, "momentum": 0.9},
        "schedule": {"name": "linear", "warmupSteps": 2, "trainingSteps": 5},
        **run_case(sgd(lr=0.1, momentum=0.9), sched=linear_sched),
    }
    return cases


def clip_cases():
    from torch.nn.utils import clip_grad_norm_

    torch.manual_seed(1)
    base = [torch.randn(4, 3) * 2, torch.randn(6), torch.randn(2, 3, 2) * 0.5]
    cases = []
    for max_norm, norm_type, with_none in [
        (1.0, 2.0, False),
        (100.0, 2.0, False),  # no clipping: the coefficient clamps to 1
        (0.5, 1.0, False),
        (0.3, float("inf"), False),
        (2.0, 3.0, True),  # the middle parameter has no grad
    ]:
        params = [torch.zeros_like(g, requires_grad=True) for g in base]
        for i, (p, g) in enumerate(zip(params, base)):
            p.grad = None if (with_none and i == 1) else g.clone()
        before = [enc(p.grad) for p in params]
        total = clip_grad_norm_(params, max_norm, norm_type)
        cases.append(
            {
                "maxNorm": max_norm,
                "normType": "inf" if math.isinf(norm_type) else norm_type,
                "grads": before,
                "totalNorm": float(total),
                "after": [enc(p.grad) for p in params],
            }
        )
    return cases


# ---- LR schedules, transcribed from diffusers/src/diffusers/optimization.py ----


def constant(s):
    return 1


def constant_with_warmup(s, w):
    if s < w:
        return float(s) / float(max(1.0, w))
    return 1.0


def linear(s, w, t):
    if s < w:
        return float(s) / float(max(1, w))
    return max(0.0, float(t - s) / float(max(1, t - w)))


def cosine(s, w, t, num_cycles=0.5):
    if s < w:
        return float(s) / float(max(1, w))
    progress = float(s - w) / float(max(1, t - w))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def cosine_with_restarts(s, w, t, num_cycles=1):
    if s < w:
        return float(s) / float(max(1, w))
    progress = float(s - w) / float(max(1, t - w))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def polynomial(s, w, t, lr_init, lr_end=1e-7, power=1.0):
    if not (lr_init > lr_end):
        raise ValueError(f"lr_end ({lr_end}) must be smaller than initial lr ({lr_init})")
    if s < w:
        return float(s) / float(max(1, w))
    elif s > t:
        return lr_end / lr_init
    lr_range = lr_init - lr_end
    decay_steps = t - w
    pct_remaining = 1 - (s - w) / decay_steps
    decay = lr_range * pct_remaining**power + lr_end
    return decay / lr_init


def piecewise_constant(s, step_rules):
    rules = {}
    rule_list = step_rules.split(",")
    for rule_str in rule_list[:-1]:
        value_str, steps_str = rule_str.split(":")
        rules[int(steps_str)] = float(value_str)
    last = float(rule_list[-1])
    keys = sorted(rules.keys())
    for k in keys:
        if s < k:
            return rules[k]
    return last


def schedule_cases():
    n = 14
    settings = [
        ("constant", {}, lambda s, o: constant(s)),
        ("constant_with_warmup", {"warmupSteps": 4}, lambda s, o: constant_with_warmup(s, 4)),
        ("constant_with_warmup", {"warmupSteps": 0}, lambda s, o: constant_with_warmup(s, 0)),
        ("linear", {"warmupSteps": 3, "trainingSteps": 10}, lambda s, o: linear(s, 3, 10)),
        ("linear", {"warmupSteps": 0, "trainingSteps": 7}, lambda s, o: linear(s, 0, 7)),
        ("linear", {"warmupSteps": 12, "trainingSteps": 10}, lambda s, o: linear(s, 12, 10)),
        ("cosine", {"warmupSteps": 2, "trainingSteps": 12}, lambda s, o: cosine(s, 2, 12)),
        ("cosine", {"warmupSteps": 0, "trainingSteps": 10, "numCycles": 1.5}, lambda s, o: cosine(s, 0, 10, 1.5)),
        ("cosine", {"warmupSteps": 11, "trainingSteps": 10}, lambda s, o: cosine(s, 11, 10)),
        ("cosine_with_restarts", {"warmupSteps": 2, "trainingSteps": 12}, lambda s, o: cosine_with_restarts(s, 2, 12)),
        (
            "cosine_with_restarts",
            {"warmupSteps": 1, "trainingSteps": 13, "numCycles": 3},
            lambda s, o: cosine_with_restarts(s, 1, 13, 3),
        ),
        (
            "polynomial",
            {"warmupSteps": 2, "trainingSteps": 10, "baseLr": 1e-4},
            lambda s, o: polynomial(s, 2, 10, 1e-4),
        ),
        (
            "polynomial",
            {"warmupSteps": 0, "trainingSteps": 8, "baseLr": 0.01, "power": 2.0, "lrEnd": 1e-4},
            lambda s, o: polynomial(s, 0, 8, 0.01, 1e-4, 2.0),
        ),
        (
            "polynomial",
            {"warmupSteps": 3, "trainingSteps": 9, "baseLr": 5e-6, "power": 0.5},
            lambda s, o: polynomial(s, 3, 9, 5e-6, 1e-7, 0.5),
        ),
        (
            "piecewise_constant",
            {"stepRules": "1:3,0.5:6,0.1:9,0.05"},
            lambda s, o: piecewise_constant(s, "1:3,0.5:6,0.1:9,0.05"),
        ),
    ]
    return [{"name": name, "options": opts, "multipliers": [fn(s, opts) for s in range(n + 1)]} for name, opts, fn in settings]


def main():
    data = {
        "torch": torch.__version__,
        "steps": STEPS,
        "optimizers": optimizer_cases(),
        "clip": clip_cases(),
        "schedules": schedule_cases(),
    }
    with open(OUT, "w") as f:
        json.dump(data, f)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
