#!/usr/bin/python3
"""Records PyTorch reference values for the engine's op tests.

Run with Debian's python3-torch (`bash scripts/setup.sh --with-reference`):
    /usr/bin/python3 scripts/record-engine-reference.py
writes test/fixtures/engine_reference.json. The tests read that file, so they
never need PyTorch.

Each case names its inputs (shape and kind), which are drawn here and stored;
`fn` maps the inputs to one output or a list of outputs. For float outputs the
file also holds R (one random tensor per output) and the gradient of
L = sum(out * R) with respect to each input that requires grad. The TypeScript
test (test/engine/ops.test.ts) has the same case names with its own `fn`.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
g = torch.Generator().manual_seed(1234)


def randn(*shape):
    return torch.randn(shape, generator=g)


def make(spec):
    shape, kind = spec
    if kind == "randn":
        return randn(*shape)
    if kind == "pos":  # positive values, for log/sqrt/pow
        return torch.rand(*shape, generator=g) + 0.5
    if kind.startswith("int"):  # int<high>: int64 indices in [0, high)
        return torch.randint(0, int(kind[3:]), shape, generator=g)
    if kind == "bool":
        return torch.rand(*shape, generator=g) > 0.3
    raise ValueError(kind)


def attention(q, k, v, mask=None, causal=False):
    # The formula of torch.nn.functional.scaled_dot_product_attention (2.x),
    # written out because torch 1.13 has no public SDPA.
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        s = s.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return s.softmax(-1) @ v


R = "randn"
CASES = {
    # views and movement
    "reshape": ([((2, 3, 4), R)], lambda x: x.reshape(4, 6)),
    "permute": ([((2, 3, 4), R)], lambda x: x.permute(2, 0, 1)),
    "transpose": ([((2, 3, 4), R)], lambda x: x.transpose(0, 2)),
    "cat": ([((2, 3), R), ((4, 3), R)], lambda a, b: torch.cat([a, b], 0)),
    "stack": ([((2, 3), R), ((2, 3), R)], lambda a, b: torch.stack([a, b], 1)),
    "split_sizes": ([((5, 3), R)], lambda x: list(torch.split(x, [2, 3], 0))),
    "split_size": ([((5, 3), R)], lambda x: list(torch.split(x, 2, 0))),
    "chunk": ([((2, 6), R)], lambda x: list(torch.chunk(x, 3, 1))),
    "narrow": ([((4, 5), R)], lambda x: x.narrow(1, 1, 3)),
    "index_select": ([((5, 3), R), ((4,), "int5")], lambda x, i: x.index_select(0, i)),
    "gather": ([((3, 4), R), ((3, 2), "int4")], lambda x, i: x.gather(1, i)),
    "expand": ([((3, 1), R)], lambda x: x.expand(3, 4)),
    "flatten": ([((2, 3, 4), R)], lambda x: x.flatten(1)),
    "contiguous_of_transpose": ([((3, 4), R)], lambda x: x.t().contiguous()),
    "squeeze_unsqueeze": ([((3, 1, 4), R)], lambda x: x.squeeze(1).unsqueeze(0)),
    "slice_step": ([((6, 4), R)], lambda x: x[1:6:2]),
    "select": ([((3, 4), R)], lambda x: x[:, 2]),
    "repeat": ([((2, 3), R)], lambda x: x.repeat(2, 2)),
    "index_tensor": ([((5, 3), R), ((4,), "int5")], lambda x, i: x[i]),
    "tril": ([((4, 4), R)], lambda x: x.tril()),
    "flip": ([((3, 4), R)], lambda x: x.flip([1])),
    # arithmetic with broadcasting
    "add_broadcast": ([((2, 3), R), ((3,), R)], lambda a, b: torch.add(a, b, alpha=2)),
    "add_scalar": ([((2, 3), R)], lambda a: a + 1.5),
    "sub": ([((2, 3), R), ((2, 1), R)], lambda a, b: a - b),
    "rsub_scalar": ([((2, 3), R)], lambda a: 1 - a),
    "mul": ([((2, 3), R), ((2, 3), R)], lambda a, b: a * b),
    "div": ([((2, 3), R), ((2, 3), "pos")], lambda a, b: a / b),
    "pow_scalar": ([((2, 3), "pos")], lambda a: a ** 2.5),
    "pow_tensor": ([((2, 3), "pos"), ((2, 3), R)], lambda a, b: a ** b),
    "unary_chain": ([((2, 3), "pos")], lambda a: a.log().exp().sqrt().rsqrt().neg().abs()),
    "sin_cos_square": ([((2, 3), R)], lambda a: a.sin() + a.cos() * a.square()),
    "maximum": ([((2, 3), R), ((2, 3), R)], lambda a, b: torch.maximum(a, b)),
    "addcmul": ([((3,), R), ((3,), R), ((3,), R)], lambda a, b, c: torch.addcmul(a, b, c, value=0.5)),
    "addcdiv": ([((3,), R), ((3,), R), ((3,), "pos")], lambda a, b, c: torch.addcdiv(a, b, c, value=0.5)),
    "lerp": ([((3,), R), ((3,), R)], lambda a, b: torch.lerp(a, b, 0.3)),
    # comparisons and selection
    "gt": ([((2, 3), R), ((2, 3), R)], lambda a, b: a > b),
    "eq_scalar": ([((6,), "int3")], lambda a: a == 1),
    "where": ([((2, 3), "bool"), ((2, 3), R), ((2, 3), R)], lambda c, a, b: torch.where(c, a, b)),
    "where_scalar": ([((2, 3), "bool"), ((2, 3), R)], lambda c, a: torch.where(c, a, 0.0)),
    "masked_fill": ([((2, 3), R), ((2, 3), "bool")], lambda a, m: a.masked_fill(m, -2.0)),
    "clamp": ([((3, 4), R)], lambda a: a.clamp(-0.5, 0.7)),
    # reductions
    "sum_all": ([((3, 4), R)], lambda a: a.sum()),
    "sum_dim": ([((3, 4, 2), R)], lambda a: a.sum([0, 2])),
    "mean_keepdim": ([((3, 4), R)], lambda a: a.mean(1, keepdim=True)),
    "var": ([((3, 5), R)], lambda a: a.var(1)),
    "var_population": ([((3, 5), R)], lambda a: a.var(1, unbiased=False)),
    "std_all": ([((3, 5), R)], lambda a: a.std()),
    "max_all": ([((3, 4), R)], lambda a: a.max()),
    "amax_dim": ([((3, 4), R)], lambda a: a.amax(1)),
    "argmax": ([((3, 4), R)], lambda a: a.argmax(1)),
    "norm": ([((3, 4), R)], lambda a: torch.linalg.vector_norm(a)),
    "norm_dim": ([((3, 4), R)], lambda a: torch.linalg.vector_norm(a, 2, 1)),
    "cumsum": ([((3, 4), R)], lambda a: a.cumsum(1)),
    "cumprod": ([((5,), "pos")], lambda a: a.cumprod(0)),
    # products
    "matmul": ([((2, 3, 4), R), ((4, 5), R)], lambda a, b: a @ b),
    "bmm": ([((2, 3, 4), R), ((2, 4, 5), R)], lambda a, b: torch.bmm(a, b)),
    "baddbmm": ([((2, 3, 5), R), ((2, 3, 4), R), ((2, 4, 5), R)], lambda i, a, b: torch.baddbmm(i, a, b, beta=0.5, alpha=2.0)),
    "linear": ([((2, 3, 4), R), ((5, 4), R), ((5,), R)], lambda x, w, b: F.linear(x, w, b)),
    "linear_nobias": ([((3, 4), R), ((5, 4), R)], lambda x, w: F.linear(x, w)),
    "einsum": ([((2, 3), R), ((3, 4), R)], lambda a, b: torch.einsum("ij,jk->ik", a, b)),
    "kron": ([((2, 3), R), ((3, 2), R)], lambda a, b: torch.kron(a, b)),
    # neural-network functions
    "conv2d": ([((2, 4, 7, 7), R), ((6, 4, 3, 3), R), ((6,), R)], lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1)),
    "conv2d_groups": ([((1, 4, 5, 5), R), ((4, 2, 3, 3), R)], lambda x, w: F.conv2d(x, w, None, padding=1, groups=2)),
    "conv2d_1x1": ([((1, 4, 3, 3), R), ((2, 4, 1, 1), R), ((2,), R)], lambda x, w, b: F.conv2d(x, w, b)),
    "conv_transpose2d": ([((1, 4, 4, 4), R), ((4, 3, 3, 3), R), ((3,), R)],
                         lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)),
    "group_norm": ([((2, 8, 3, 3), R), ((8,), R), ((8,), R)], lambda x, w, b: F.group_norm(x, 4, w, b, eps=1e-6)),
    "layer_norm": ([((2, 3, 8), R), ((8,), R), ((8,), R)], lambda x, w, b: F.layer_norm(x, [8], w, b, eps=1e-5)),
    "softmax": ([((2, 5), R)], lambda x: x.softmax(-1)),
    "log_softmax": ([((2, 5), R)], lambda x: x.log_softmax(1)),
    "silu": ([((2, 5), R)], lambda x: F.silu(x)),
    "gelu": ([((2, 5), R)], lambda x: F.gelu(x)),
    "gelu_tanh": ([((2, 5), R)], lambda x: F.gelu(x, approximate="tanh")),
    "quick_gelu": ([((2, 5), R)], lambda x: x * torch.sigmoid(1.702 * x)),
    "sigmoid_tanh_relu": ([((2, 5), R)], lambda x: torch.sigmoid(x) + torch.tanh(x) * F.relu(x)),
    "embedding": ([((6, 4), R), ((2, 3), "int6")], lambda w, i: F.embedding(i, w)),
    "interpolate_nearest": ([((1, 2, 3, 4), R)], lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")),
    "interpolate_nearest_size": ([((1, 2, 3, 4), R)], lambda x: F.interpolate(x, size=(5, 7), mode="nearest")),
    "interpolate_bilinear": ([((1, 2, 3, 4), R)], lambda x: F.interpolate(x, size=(6, 5), mode="bilinear", align_corners=False)),
    "interpolate_bilinear_ac": ([((1, 2, 3, 4), R)], lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)),
    "pad_constant": ([((1, 2, 3, 3), R)], lambda x: F.pad(x, (1, 2, 0, 1), value=0.5)),
    "pad_reflect": ([((1, 2, 3, 3), R)], lambda x: F.pad(x, (1, 1, 2, 0), mode="reflect")),
    "pad_replicate": ([((1, 2, 3, 3), R)], lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate")),
    "attention": ([((2, 2, 5, 4), R), ((2, 2, 6, 4), R), ((2, 2, 6, 4), R)], lambda q, k, v: attention(q, k, v)),
    "attention_causal": ([((1, 2, 5, 4), R), ((1, 2, 5, 4), R), ((1, 2, 5, 4), R)], lambda q, k, v: attention(q, k, v, causal=True)),
    "attention_bool_mask": ([((1, 2, 3, 4), R), ((1, 2, 5, 4), R), ((1, 2, 5, 4), R), ((1, 1, 3, 5), "bool")],
                            lambda q, k, v, m: attention(q, k, v, mask=m | torch.eye(3, 5, dtype=torch.bool))),
    "attention_float_mask": ([((1, 2, 3, 4), R), ((1, 2, 5, 4), R), ((1, 2, 5, 4), R), ((3, 5), R)],
                             lambda q, k, v, m: attention(q, k, v, mask=m)),
    "mse_loss": ([((2, 3), R), ((2, 3), R)], lambda a, b: F.mse_loss(a, b)),
    "mse_loss_sum": ([((2, 3), R), ((2, 3), R)], lambda a, b: F.mse_loss(a, b, reduction="sum")),
    "mse_loss_none": ([((2, 3), R), ((2, 3), R)], lambda a, b: F.mse_loss(a, b, reduction="none")),
}


def to_list(t):
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "data": t.detach().flatten().tolist()}


def record(name, specs, fn):
    inputs = [make(s) for s in specs]
    for x in inputs:
        if x.is_floating_point():
            x.requires_grad_(True)
    out = fn(*inputs)
    outs = out if isinstance(out, list) else [out]
    entry = {"inputs": [to_list(x) for x in inputs], "outputs": [to_list(o) for o in outs], "multi": isinstance(out, list)}
    float_outs = [o for o in outs if o.is_floating_point() and o.requires_grad]
    if float_outs:
        rs = [randn(*o.shape) for o in float_outs]
        loss = sum((o * r).sum() for o, r in zip(float_outs, rs))
        grads = torch.autograd.grad(loss, [x for x in inputs if x.requires_grad], allow_unused=True)
        entry["R"] = [to_list(r) for r in rs]
        it = iter(grads)
        entry["grads"] = [(lambda gr: None if gr is None else to_list(gr))(next(it)) if x.requires_grad else None for x in inputs]
    return entry


def seeded():
    """The default generator's stream and ops that draw from it."""
    torch.manual_seed(42)
    a = torch.randn(7)
    b = torch.rand(5)
    c = torch.randint(0, 10, (6,))
    torch.manual_seed(7)
    d = F.dropout(torch.ones(12), 0.5)
    gen = torch.Generator().manual_seed(2024)
    e = torch.randn(2, 3, generator=gen)
    f = torch.randn(4, generator=gen)
    big = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    return {
        "manual_seed_42": {"randn7": a.tolist(), "rand5": b.tolist(), "randint6": c.tolist()},
        "dropout_seed7": d.tolist(),
        "generator_2024": {"randn2x3": e.flatten().tolist(), "then_randn4": f.tolist()},
        # SD's initial latent noise for seed 0 (a 512x512 image): every element
        "latent_seed0_1x4x64x64": {"first8": big.flatten()[:8].tolist(), "sum": float(big.double().sum()),
                                    "sumsq": float(big.double().pow(2).sum())},
    }


def main():
    out = {"torch_version": torch.__version__, "cases": {n: record(n, s, f) for n, (s, f) in CASES.items()},
           "random": seeded()}
    path = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "engine_reference.json")
    with open(path, "w") as fh:
        json.dump(out, fh)
    print(f"wrote {len(CASES)} cases to {os.path.normpath(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
