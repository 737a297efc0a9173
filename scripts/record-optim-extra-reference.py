#!/usr/bin/python3
"""Records PyTorch references for the optimizers people pick beyond AdamW/SGD:
Lion, Adafactor, Prodigy and 8-bit AdamW.

Run with Debian's python3-torch 1.13:
    /usr/bin/python3 scripts/record-optim-extra-reference.py
writes test/fixtures/optim_extra_reference.json, which
test/engine/optim-extra.test.ts reads (the tests never need PyTorch).

None of the optimizers' packages is installed here, so each one is
re-implemented below from its public source, line for line, in plain torch:
  * Lion: lucidrains/lion-pytorch lion_pytorch/lion_pytorch.py (update_fn).
  * Adafactor: huggingface/transformers src/transformers/optimization.py
    (class Adafactor: relative step, scale_parameter, warmup_init).
  * Prodigy: konstmish/prodigy prodigyopt/prodigy.py (single process).
  * AdamW8bit: bitsandbytes' algorithm (Dettmers et al., "8-bit Optimizers via
    Block-wise Quantization"; bitsandbytes/functional.py create_dynamic_map,
    csrc/kernels.cu kOptimizerStatic8bit2StateBlockwise and
    kOptimizer32bit2State): blocks of 2048 values, per-block absmax, the signed
    dynamic map for the first moment and the unsigned one for the second,
    nearest-entry quantisation (torch.searchsorted on the midpoints; the CUDA
    kernel's binary search picks the same entry up to ties), the kernel's sign
    fix for the first moment, float32 scalars as in the kernel, 32-bit states
    below min_8bit_size. This is a re-implementation, not bitsandbytes itself
    (which needs CUDA). A block of zeros is scaled by 1 instead of 0/0.
    Each 8-bit case also records the same run with float32 states; the
    difference is the quantisation error of the reference itself.

Every case starts from torch.manual_seed(0) randn parameters and, at each
step, sets .grad = c*p + 3*cos(3*p) (c = 1, 2, 3, ... per parameter) computed
from the current parameters with these exact ops, which the test repeats.
Tensors are stored as {"shape", "f32": base64 of little-endian float32}.
"""
import base64
import json
import math
import os
import struct

import torch

torch.set_num_threads(1)
STEPS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "optim_extra_reference.json")


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def enc(t):
    t = t.detach().to(torch.float32).contiguous().reshape(-1)
    return {"shape": list(t.shape), "f32": base64.b64encode(struct.pack(f"<{t.numel()}f", *t.tolist())).decode()}


def enc_shaped(t):
    e = enc(t)
    e["shape"] = list(t.shape)
    return e


def grad_of(p, i):
    return p * float(i + 1) + torch.cos(p * 3.0) * 3.0


# ---- Lion (lion-pytorch) -----------------------------------------------------------------
class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, lr, wd, (beta1, beta2) = p.grad, group["lr"], group["weight_decay"], group["betas"]
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.data.mul_(1.0 - lr * wd)
                update = exp_avg.clone().mul_(beta1).add(grad, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)


# ---- Adafactor (transformers) ------------------------------------------------------------
class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                 weight_decay=0.0, scale_parameter=True, relative_step=True, warmup_init=False):
        if lr is not None and relative_step:
            raise ValueError("Cannot combine manual `lr` and `relative_step=True` options")
        if warmup_init and not relative_step:
            raise ValueError("`warmup_init=True` requires `relative_step=True`")
        defaults = dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate, beta1=beta1,
                        weight_decay=weight_decay, scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init)
        super().__init__(params, defaults)

    @staticmethod
    def _get_lr(param_group, param_state):
        rel_step_sz = param_group["lr"]
        if param_group["relative_step"]:
            min_step = 1e-6 * param_state["step"] if param_group["warmup_init"] else 1e-2
            rel_step_sz = min(min_step, 1.0 / math.sqrt(param_state["step"]))
        param_scale = 1.0
        if param_group["scale_parameter"]:
            param_scale = max(param_group["eps"][1], param_state["RMS"])
        return param_scale * rel_step_sz

    @staticmethod
    def _rms(tensor):
        return tensor.norm(2) / (tensor.numel() ** 0.5)

    @staticmethod
    def _approx_sq_grad(exp_avg_sq_row, exp_avg_sq_col):
        r_factor = (exp_avg_sq_row / exp_avg_sq_row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
        c_factor = exp_avg_sq_col.unsqueeze(-2).rsqrt()
        return torch.mul(r_factor, c_factor)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                grad_shape = grad.shape
                factored = len(grad_shape) >= 2
                use_first_moment = group["beta1"] is not None
                if len(state) == 0:
                    state["step"] = 0
                    if use_first_moment:
                        state["exp_avg"] = torch.zeros_like(grad)
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros(grad_shape[:-1]).to(grad)
                        state["exp_avg_sq_col"] = torch.zeros(grad_shape[:-2] + grad_shape[-1:]).to(grad)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["RMS"] = 0
                p_data_fp32 = p
                state["step"] += 1
                state["RMS"] = self._rms(p_data_fp32)
                lr = self._get_lr(group, state)
                beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
                update = (grad**2) + group["eps"][0]
                if factored:
                    exp_avg_sq_row = state["exp_avg_sq_row"]
                    exp_avg_sq_col = state["exp_avg_sq_col"]
                    exp_avg_sq_row.mul_(beta2t).add_(update.mean(dim=-1), alpha=(1.0 - beta2t))
                    exp_avg_sq_col.mul_(beta2t).add_(update.mean(dim=-2), alpha=(1.0 - beta2t))
                    update = self._approx_sq_grad(exp_avg_sq_row, exp_avg_sq_col)
                    update.mul_(grad)
                else:
                    exp_avg_sq = state["exp_avg_sq"]
                    exp_avg_sq.mul_(beta2t).add_(update, alpha=(1.0 - beta2t))
                    update = exp_avg_sq.rsqrt().mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(lr)
                if use_first_moment:
                    exp_avg = state["exp_avg"]
                    exp_avg.mul_(group["beta1"]).add_(update, alpha=(1 - group["beta1"]))
                    update = exp_avg
                if group["weight_decay"] != 0:
                    p_data_fp32.add_(p_data_fp32, alpha=(-group["weight_decay"] * lr))
                p_data_fp32.add_(-update)


# ---- Prodigy (prodigyopt) ----------------------------------------------------------------
class Prodigy(torch.optim.Optimizer):
    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=float("inf"),
                 slice_p=1):
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0, d_max=d0,
                        d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple,
                        safeguard_warmup=safeguard_warmup, slice_p=slice_p)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        d_denom = 0.0
        group = self.param_groups[0]
        use_bias_correction = group["use_bias_correction"]
        beta1, beta2 = group["betas"]
        beta3 = group["beta3"]
        if beta3 is None:
            beta3 = math.sqrt(beta2)
        k = group["k"]
        d = group["d"]
        d_max = group["d_max"]
        d_coef = group["d_coef"]
        lr = max(group["lr"] for group in self.param_groups)
        if use_bias_correction:
            bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
        else:
            bias_correction = 1
        dlr = d * lr * bias_correction
        growth_rate = group["growth_rate"]
        decouple = group["decouple"]
        d_numerator = group["d_numerator"]
        d_numerator *= beta3
        for group in self.param_groups:
            decay = group["weight_decay"]
            k = group["k"]
            group_lr = group["lr"]
            d0 = group["d0"]
            safeguard_warmup = group["safeguard_warmup"]
            slice_p = group["slice_p"]
            if group_lr not in [lr, 0.0]:
                raise RuntimeError("different lrs")
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data
                if decay != 0 and not decouple:
                    grad.add_(p.data, alpha=decay)
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["s"] = torch.zeros_like(p.data.flatten()[::slice_p]).detach()
                    if p.any():
                        state["p0"] = p.flatten()[::slice_p].detach().clone()
                    else:
                        state["p0"] = torch.tensor(0, device=p.device, dtype=p.dtype)
                    state["exp_avg"] = torch.zeros_like(p.data).detach()
                    state["exp_avg_sq"] = torch.zeros_like(p.data).detach()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                s = state["s"]
                p0 = state["p0"]
                if group_lr > 0.0:
                    sliced_grad = grad.flatten()[::slice_p]
                    d_numerator += (d / d0) * dlr * torch.dot(sliced_grad, p0.data - p.data.flatten()[::slice_p]).item()
                    exp_avg.mul_(beta1).add_(grad, alpha=d * (1 - beta1))
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
                    if safeguard_warmup:
                        s.mul_(beta3).add_(sliced_grad, alpha=((d / d0) * d))
                    else:
                        s.mul_(beta3).add_(sliced_grad, alpha=((d / d0) * dlr))
                    d_denom += s.abs().sum().item()
        d_hat = d
        if d_denom == 0:
            return
        if lr > 0.0:
            global_d_numerator = d_numerator
            global_d_denom = d_denom
            d_hat = d_coef * global_d_numerator / global_d_denom
            if d == group["d0"]:
                d = max(d, d_hat)
            d_max = max(d_max, d_hat)
            d = min(d_max, d * growth_rate)
        for group in self.param_groups:
            group["d_numerator"] = global_d_numerator
            group["d_denom"] = global_d_denom
            group["d"] = d
            group["d_max"] = d_max
            group["d_hat"] = d_hat
            decay = group["weight_decay"]
            k = group["k"]
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                denom = exp_avg_sq.sqrt().add_(d * eps)
                if decay != 0 and decouple:
                    p.data.add_(p.data, alpha=-decay * dlr)
                p.data.addcdiv_(exp_avg, denom, value=-dlr)
            group["k"] = k + 1


# ---- 8-bit AdamW (bitsandbytes' algorithm) -----------------------------------------------
def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    # bitsandbytes/functional.py create_dynamic_map (non_sign_bits = total_bits - 1 in both cases).
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1,
        )
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    assert len(data) == 2**total_bits
    data.sort()
    return torch.tensor(data)


BLOCK = 2048
QMAP = {True: create_dynamic_map(True), False: create_dynamic_map(False)}


def to_blocks(flat):
    n = flat.numel()
    blocks = -(-n // BLOCK)
    pad = blocks * BLOCK - n
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(blocks, BLOCK)


def dequantize(codes, absmax, signed):
    return to_blocks(QMAP[signed][codes.reshape(-1).long()]) * absmax.unsqueeze(1)


def quantize(values, signed, n):
    absmax = values.abs().amax(dim=1)
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    x = values / scale.unsqueeze(1)
    code = QMAP[signed]
    mids = (code[:-1] + code[1:]) / 2
    idx = torch.searchsorted(mids, x.contiguous(), right=False)
    if signed:
        wrong = torch.signbit(code[idx]) != torch.signbit(values)
        idx = torch.where(wrong, torch.where(values > 0, idx + 1, idx - 1), idx)
    return idx.reshape(-1)[:n].to(torch.uint8), absmax


class AdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, min_8bit_size=4096):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      min_8bit_size=min_8bit_size))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                n = p.numel()
                quantised = n >= group["min_8bit_size"]
                if len(state) == 0:
                    state["step"] = 0
                    dtype = torch.uint8 if quantised else torch.float32
                    state["state1"] = torch.zeros_like(p, dtype=dtype)
                    state["state2"] = torch.zeros_like(p, dtype=dtype)
                    if quantised:
                        state["absmax1"] = torch.zeros(-(-n // BLOCK))
                        state["absmax2"] = torch.zeros(-(-n // BLOCK))
                state["step"] += 1
                step = state["step"]
                correction1 = f32(1 - f32(f32(beta1) ** step))
                correction2 = f32(math.sqrt(f32(1 - f32(f32(beta2) ** step))))
                step_size = f32(f32(-f32(lr) * correction2) / correction1)
                eps_term = f32(correction2 * f32(eps))
                a1, a2 = f32(1 - f32(beta1)), f32(1 - f32(beta2))
                if quantised:
                    g = to_blocks(grad.reshape(-1))
                    s1 = dequantize(state["state1"], state["absmax1"], True)
                    s2 = dequantize(state["state2"], state["absmax2"], False)
                else:
                    g, s1, s2 = grad, state["state1"], state["state2"]
                s1.mul_(beta1).add_(g, alpha=a1)
                s2.mul_(beta2).addcmul_(g, g, value=a2)
                flat1 = s1.reshape(-1)[:n].reshape(p.shape)
                flat2 = s2.reshape(-1)[:n].reshape(p.shape)
                p.addcdiv_(flat1, flat2.sqrt() + eps_term, value=step_size)
                if wd > 0:
                    p.mul_(f32(1 - f32(f32(lr) * f32(wd))))
                if quantised:
                    c1, state["absmax1"] = quantize(s1, True, n)
                    c2, state["absmax2"] = quantize(s2, False, n)
                    state["state1"], state["state2"] = c1.reshape(p.shape), c2.reshape(p.shape)


# ---- cases ---------------------------------------------------------------------------------
SMALL = [(7, 5), (11,), (2, 3, 4)]
BIG = [(70, 60), (7, 5), (11,)]


def run(make, shapes, groups=None):
    torch.manual_seed(0)
    params = [torch.randn(*s) for s in shapes]
    init = [enc_shaped(p) for p in params]
    if groups:
        opt = make([{"params": [params[i] for i in g["params"]], **{k: v for k, v in g.items() if k != "params"}}
                    for g in groups])
    else:
        opt = make(params)
    after, extra = [], []
    for _ in range(STEPS):
        for i, p in enumerate(params):
            p.grad = grad_of(p, i)
        opt.step()
        after.append([enc_shaped(p) for p in params])
        if isinstance(opt, Prodigy):
            extra.append({"d": opt.param_groups[0]["d"], "d_max": opt.param_groups[0]["d_max"],
                          "d_numerator": opt.param_groups[0]["d_numerator"]})
    return {"params": init, "after": after, **({"prodigy": extra} if extra else {})}, params


CASES = {
    "lion_default": ("Lion", {"lr": 1e-3}, SMALL, None),
    "lion_wd": ("Lion", {"lr": 3e-4, "betas": [0.95, 0.98], "weight_decay": 0.1}, SMALL, None),
    "adafactor_relative": ("Adafactor", {}, SMALL, None),
    "adafactor_warmup_init": ("Adafactor", {"warmup_init": True}, SMALL, None),
    "adafactor_unscaled": ("Adafactor", {"scale_parameter": False, "weight_decay": 0.01}, SMALL, None),
    "adafactor_manual_lr": ("Adafactor", {"lr": 1e-2, "relative_step": False, "scale_parameter": False,
                                          "beta1": 0.9, "clip_threshold": 0.5, "decay_rate": -0.5}, SMALL, None),
    "prodigy_default": ("Prodigy", {}, SMALL, None),
    "prodigy_options": ("Prodigy", {"betas": [0.9, 0.99], "d_coef": 2.0, "use_bias_correction": True,
                                    "safeguard_warmup": True, "weight_decay": 0.01, "growth_rate": 1.5,
                                    "slice_p": 2}, SMALL, None),
    "prodigy_coupled_groups": ("Prodigy", {"weight_decay": 0.1, "decouple": False, "beta3": 0.9},
                               SMALL, [{"params": [0, 1]}, {"params": [2], "lr": 0.0}]),
    "adamw8bit_default": ("AdamW8bit", {}, BIG, None),
    "adamw8bit_options": ("AdamW8bit", {"lr": 5e-3, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.0,
                                        "min_8bit_size": 0}, BIG, None),
}
CLASSES = {"Lion": Lion, "Adafactor": Adafactor, "Prodigy": Prodigy, "AdamW8bit": AdamW8bit}


def main():
    out = {"torch": torch.__version__, "steps": STEPS,
           "dynamic_map": {"signed": enc(QMAP[True]), "unsigned": enc(QMAP[False])}, "cases": {}}
    for name, (kind, options, shapes, groups) in CASES.items():
        cls = CLASSES[kind]
        case, params8 = run(lambda ps: cls(ps, **options), shapes, groups)
        case.update({"optimizer": kind, "options": options, **({"groups": groups} if groups else {})})
        if kind == "AdamW8bit":
            # The same run with float32 states: how far quantisation itself moves the reference.
            ref32, params32 = run(lambda ps: cls(ps, **{**options, "min_8bit_size": 1 << 62}), shapes)
            errs = []
            for s in range(STEPS):
                a = [torch.frombuffer(bytearray(base64.b64decode(x["f32"])), dtype=torch.float32) for x in case["after"][s]]
                b = [torch.frombuffer(bytearray(base64.b64decode(x["f32"])), dtype=torch.float32) for x in ref32["after"][s]]
                errs.append([float((x - y).abs().max()) for x, y in zip(a, b)])
            case["quantisation_error"] = errs
        out["cases"][name] = case
    with open(OUT, "w") as f:
        json.dump(out, f)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
