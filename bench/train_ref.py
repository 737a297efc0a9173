#!/usr/bin/python3
"""PyTorch twin of bench/train.ts: one Dreambooth / LoRA training step in plain torch.

diffusers is not installed, so this file runs a compact plain-PyTorch SD1.x
UNet with the diffusers module names (bench/sd_twin.py, shared with
bench/models_ref.py, which follows diffusers v0.19.3
src/diffusers/models/unet_2d_condition.py, unet_2d_blocks.py, resnet.py,
transformer_2d.py, attention.py, attention_processor.py, embeddings.py),
and holds kohya's LoRA wrapping
(kohya-ss/sd-scripts networks/lora.py LoRAModule: org(x) + up(down(x)) *
multiplier * alpha/rank on every Linear / Conv2d inside a Transformer2DModel),
and the training step of diffusers examples/dreambooth/train_dreambooth.py
(v0.19.3) with prior preservation:

    noise = randn_like(latents); t = randint(0, 1000, (bsz,))
    noisy = sqrt(ac[t]) * latents + sqrt(1 - ac[t]) * noise       (DDPMScheduler.add_noise)
    pred, pred_prior = chunk(unet(noisy, t, context), 2); target = noise (epsilon)
    loss = mse(pred, target) + prior_loss_weight * mse(pred_prior, target_prior)
    loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)

Modes (one JSON object on stdout; progress on stderr):
  --case full|lora    --unet JSON (block_out, layers, heads, ctx_dim, down, up; default SD1.5),
                      --latent N, --optimizer adamw|sgd, --warmup N, --reps N
  --check IN OUT      IN: a safetensors file written by train.ts (tiny UNet weights,
                      LoRA init, latents, context, noise and timesteps per step) and
                      its JSON spec in the metadata; runs 2 steps of both methods and
                      writes losses, gradients and updated parameters to OUT
Memory savers (bench/train.ts passes the same to both sides): --mixed-precision bf16
(forward and loss under torch.autocast, as accelerate's mixed_precision), --weight-dtype
bf16 (the frozen UNet under LoRA cast to bf16 before the adapters are added, as kohya
train_network.py's unet.to(weight_dtype)), --checkpointing, --optimizer adamw8bit
(bitsandbytes' AdamW8bit algorithm in plain torch, scripts/record-optim-extra-reference.py:
bitsandbytes itself needs CUDA).
Common: --threads N, --device cpu|cuda. Exit codes: 3 = no torch, 4 = no CUDA.
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the TS side turns this into a set-up hint
    print(f"train_ref.py: cannot import torch ({e})", file=sys.stderr)
    sys.exit(3)

# after torch imported: sd_twin needs it (bench/ is on sys.path as this script's folder)
from sd_twin import (  # noqa: E402
    UNET_CONFIGS,
    ResnetBlock2D,
    Transformer2DModel,
    UNet2DConditionModel,
    alphas_cumprod,
    load_safetensors,
    maxrss_mb,
    minor_faults,
    save_safetensors,
    setup_torch,
)

SD15 = UNET_CONFIGS["sd15"]
HERE = os.path.dirname(os.path.abspath(__file__))


def optim_reference():
    """scripts/record-optim-extra-reference.py, whose AdamW8bit recorded the optimizer fixtures
    (test/fixtures) that Atelier's AdamW8bit is tested against; loaded as bench/optim_ref.py does."""
    path = os.path.join(HERE, "..", "scripts", "record-optim-extra-reference.py")
    spec = importlib.util.spec_from_file_location("optim_extra_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def mixed_dtype_norms(unet):
    """GroupNorm/LayerNorm weights cast to the input's dtype on the graph, as Atelier's normWith
    (src/engine/ops/nn.ts) and torch >= 2.0's mixed-dtype CPU kernels: torch 1.13's CPU
    group_norm/layer_norm refuse a bf16 input (what autocast hands them after a conv/linear)
    with float32 weights. A no-op where the weights already are bf16 (--weight-dtype bf16)."""
    for m in unet.modules():
        if isinstance(m, nn.GroupNorm):
            m.forward = lambda x, _m=m: F.group_norm(x, _m.num_groups, _m.weight.to(x.dtype), _m.bias.to(x.dtype), _m.eps)
        elif isinstance(m, nn.LayerNorm):
            m.forward = lambda x, _m=m: F.layer_norm(
                x, _m.normalized_shape, _m.weight.to(x.dtype), _m.bias.to(x.dtype), _m.eps)


def apply_savers(unet, args_or_spec):
    """What the savers change on the model before the optimizer is made (LoRA injected after)."""
    get = (lambda k: args_or_spec[k]) if isinstance(args_or_spec, dict) else (lambda k: getattr(args_or_spec, k))
    if get("checkpointing"):
        checkpoint_blocks(unet)
    if get("mixed_precision") == "bf16":
        mixed_dtype_norms(unet)


def store_frozen(unet, weight_dtype):
    """--weight-dtype bf16: the frozen UNet cast before the LoRA modules (float32) are added."""
    if weight_dtype == "bf16":
        unet.to(dtype=torch.bfloat16)


def checkpoint_blocks(unet):
    """torch.utils.checkpoint around each resnet and transformer, as diffusers' blocks under
    gradient_checkpointing; use_reentrant=False, so a LoRA step whose block inputs need no grad
    still gets its adapters' gradients."""
    from torch.utils.checkpoint import checkpoint

    for m in unet.modules():
        if isinstance(m, (ResnetBlock2D, Transformer2DModel)):
            inner = m.forward
            m.forward = lambda *a, _f=inner: checkpoint(_f, *a, use_reentrant=False)


# ---- LoRA (kohya-ss/sd-scripts networks/lora.py) ---------------------------------------

class LoRAModule(nn.Module):
    """org(x) + up(down(x)) · multiplier · alpha/rank; down kaiming_uniform(a=√5), up zeros."""

    def __init__(self, org, rank, alpha, multiplier=1.0):
        super().__init__()
        if isinstance(org, nn.Conv2d):
            self.lora_down = nn.Conv2d(org.in_channels, rank, org.kernel_size, org.stride, org.padding, bias=False)
            self.lora_up = nn.Conv2d(rank, org.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, org.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.scale = alpha / rank
        self.multiplier = multiplier
        self.org = [org]  # not a child: the UNet's keys stay diffusers'

    def forward(self, x):
        return self.org[0](x) + self.lora_up(self.lora_down(x)) * self.multiplier * self.scale


def inject_lora(unet, rank, alpha):
    """Wraps every Linear/Conv2d inside each Transformer2DModel; returns {kohya name: module}."""
    modules = {}
    blocks = [(path, m) for path, m in unet.named_modules() if isinstance(m, Transformer2DModel)]
    for path, block in blocks:
        for sub, child in list(block.named_modules()):
            if not isinstance(child, (nn.Linear, nn.Conv2d)):
                continue
            full = f"{path}.{sub}"
            parent, name = full.rsplit(".", 1)
            lora = LoRAModule(child, rank, alpha).to(child.weight.device)
            setattr(unet.get_submodule(parent), name, lora)  # "to_out.0": a ModuleList's key "0"
            modules["lora_unet_" + full.replace(".", "_")] = lora
    return modules


# ---- the training step -----------------------------------------------------------------

class Step:
    """One train_dreambooth.py step with prior preservation (batch = instances + class examples)."""

    def __init__(self, unet, params, optimizer, dev, sync, prior_loss_weight=1.0, mixed_precision="no"):
        self.unet, self.params, self.opt, self.dev, self.sync = unet, params, optimizer, dev, sync
        self.mixed_precision = mixed_precision
        self.ac = alphas_cumprod()
        self.prior_loss_weight = prior_loss_weight

    def add_noise(self, x0, noise, t):
        # DDPMScheduler.add_noise
        ac = self.ac.to(device=x0.device, dtype=x0.dtype)
        t = t.to(x0.device)
        a = (ac[t] ** 0.5).flatten()
        s = ((1 - ac[t]) ** 0.5).flatten()
        while a.ndim < x0.ndim:
            a, s = a.unsqueeze(-1), s.unsqueeze(-1)
        return a * x0 + s * noise

    def forward(self, latents, context, noise, t):
        if self.mixed_precision == "no":
            ctx = contextlib.nullcontext()
        else:
            ctx = torch.autocast(self.dev.type, dtype=torch.bfloat16)
        with ctx:
            return self._forward(latents, context, noise, t)

    def _forward(self, latents, context, noise, t):
        noisy = self.add_noise(latents, noise, t)
        pred = self.unet(noisy, t, context)
        target = noise
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        instance = F.mse_loss(pred.float(), target.float(), reduction="mean")
        prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        return instance + self.prior_loss_weight * prior, instance, prior

    def draw(self, latents, g):
        # noise, then timesteps, from one CPU generator (as Atelier's drawNoise)
        noise = torch.randn(latents.shape, generator=g).to(self.dev)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=g).to(self.dev)
        return noise, t

    def timed(self, latents, context, g):
        f0 = minor_faults()
        c0 = time.process_time()  # CPU time of all threads
        t0 = time.perf_counter()
        noise, t = self.draw(latents, g)
        loss, _, _ = self.forward(latents, context, noise, t)
        value = loss.item()
        t1, f1 = time.perf_counter(), minor_faults()
        loss.backward()
        self.sync()
        t2, f2 = time.perf_counter(), minor_faults()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        t3, f3 = time.perf_counter(), minor_faults()
        return {"ms": (t3 - t0) * 1e3, "cpu_ms": (time.process_time() - c0) * 1e3,
                "faults": [f1 - f0, f2 - f1, f3 - f2], "forward_ms": (t1 - t0) * 1e3, "backward_ms": (t2 - t1) * 1e3,
                "optimizer_ms": (t3 - t2) * 1e3, "loss": value, "rss_mb": rss_mb()}


def make_optimizer(kind, params, lr):
    if kind == "adamw":
        # diffusers' defaults: betas (0.9, 0.999), weight decay 1e-2, eps 1e-8
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if kind == "adamw8bit":
        return optim_reference().AdamW8bit(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return torch.optim.SGD(params, lr=lr)  # no momentum: no state


# ---- memory ------------------------------------------------------------------------------
# (minor_faults, maxrss_mb: sd_twin.py; these two read /proc, which only this script reports)

def status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb():
    return status_mb("VmRSS")


def reset_peak():
    """VmHWM back to the RSS now (Linux: "5" to /proc/self/clear_refs); ru_maxrss is not reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# ---- modes ---------------------------------------------------------------------------------

def run_case(args, dev, sync):
    cfg = json.loads(args.unet) if args.unet else SD15
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**cfg).to(dev).train()
    apply_savers(unet, args)
    if args.case == "lora":
        unet.requires_grad_(False)
        store_frozen(unet, args.weight_dtype)
        modules = inject_lora(unet, args.rank, args.alpha)
        params = [p for m in modules.values() for p in (m.lora_down.weight, m.lora_up.weight)]
    else:
        modules = {}
        params = list(unet.parameters())
    opt = make_optimizer(args.optimizer, params, args.lr)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    b = 1 + args.class_batch
    latents = torch.randn(b, 4, args.latent, args.latent, generator=g).to(dev)
    context = torch.randn(b, 77, cfg["ctx_dim"], generator=g).to(dev)
    step = Step(unet, params, opt, dev, sync, mixed_precision=args.mixed_precision)
    rss_model = rss_mb()
    # the steps' own peak (bench/train.ts resets at the same point): building can peak higher
    build_peak = status_mb("VmHWM")
    reset_peak()
    runs = []
    for i in range(args.warmup + args.reps):
        r = step.timed(latents, context, g)
        r["warmup"] = i < args.warmup
        runs.append(r)
        print(f"  PyTorch {args.case} {'warm-up' if r['warmup'] else 'step'} {r['ms'] / 1e3:.1f} s "
              f"(cpu {r['cpu_ms'] / 1e3:.1f}; fwd {r['forward_ms'] / 1e3:.1f}, bwd {r['backward_ms'] / 1e3:.1f}, opt {r['optimizer_ms'] / 1e3:.2f}), "
              f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    timed = [r["ms"] for r in runs if not r["warmup"]]
    out = {"case": args.case, "runs": runs, "median_ms": statistics.median(timed),
           "median_cpu_ms": statistics.median([r["cpu_ms"] for r in runs if not r["warmup"]]),
           "params": sum(p.numel() for p in unet.parameters()),
           "trainable": sum(p.numel() for p in params), "trainable_tensors": len(params),
           "lora_modules": len(modules), "optimizer": args.optimizer,
           "foreach": bool(opt.defaults.get("foreach")), "build_s": build_s,
           "frozen_bf16": sum(1 for p in unet.parameters() if p.dtype == torch.bfloat16),
           "rss_model_mb": rss_model, "maxrss_mb": maxrss_mb(), "vmhwm_mb": status_mb("VmHWM"), "vmhwm_build_mb": build_peak}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def check(args, dev, sync):
    """2 steps of each method on the weights and draws train.ts wrote; all results to OUT."""
    src, meta = load_safetensors(args.check[0], with_metadata=True)
    spec = json.loads(meta["spec"])
    cfg = spec["unet"]
    out = {}
    info = {}
    g = torch.Generator().manual_seed(spec["seed"])
    savers = spec.get("savers", {"checkpointing": False, "mixed_precision": "no", "weight_dtype": "float32"})
    for method in ("full", "lora"):
        unet = UNet2DConditionModel(**cfg)
        unet.load_state_dict({k[5:]: v for k, v in src.items() if k.startswith("unet.")})
        unet = unet.to(dev).train()
        apply_savers(unet, savers)
        if method == "lora":
            unet.requires_grad_(False)
            store_frozen(unet, savers["weight_dtype"])
            modules = inject_lora(unet, spec["rank"], spec["alpha"])
            named = {}
            for name, m in modules.items():
                with torch.no_grad():
                    m.lora_down.weight.copy_(src[f"lora.{name}.lora_down.weight"])
                    m.lora_up.weight.copy_(src[f"lora.{name}.lora_up.weight"])
                named[f"{name}.lora_down.weight"] = m.lora_down.weight
                named[f"{name}.lora_up.weight"] = m.lora_up.weight
            info["lora_modules"] = len(modules)
        else:
            named = dict(unet.named_parameters())
        params = list(named.values())
        kind = spec["optimizer"][method] if isinstance(spec["optimizer"], dict) else spec["optimizer"]
        opt = make_optimizer(kind, params, spec["lr"][method])
        step = Step(unet, params, opt, dev, sync, spec["prior_loss_weight"], savers["mixed_precision"])
        latents, context = src["latents"].to(dev), src["context"].to(dev)
        for k in range(spec["steps"]):
            noise, t = src[f"{method}.noise{k}"].to(dev), src[f"{method}.timesteps{k}"].to(dev)
            # the same draws from this side's own generator: Atelier's RNG must match torch's
            mine_noise, mine_t = step.draw(latents, g)
            info[f"{method}.rng_match{k}"] = bool(torch.equal(mine_noise, noise) and torch.equal(mine_t, t))
            loss, inst, prior = step.forward(latents, context, noise, t)
            loss.backward()
            out[f"{method}.loss{k}"] = torch.stack([loss, inst, prior]).detach()
            for name, p in named.items():
                out[f"{method}.grad{k}.{name}"] = p.grad
            opt.step()
            opt.zero_grad(set_to_none=True)
        for name, p in named.items():
            out[f"{method}.param.{name}"] = p
    save_safetensors(args.check[1], out)
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["full", "lora"])
    p.add_argument("--check", nargs=2, metavar=("IN", "OUT"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--unet", help="UNet config as JSON (default SD1.5)")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--class-batch", type=int, default=1, help="class (prior) examples next to the 1 instance")
    p.add_argument("--optimizer", choices=["adamw", "adamw8bit", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--checkpointing", action="store_true", help="checkpoint each resnet and transformer")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="forward and loss under autocast")
    p.add_argument("--weight-dtype", choices=["float32", "bf16"], default="float32", help="frozen weights' dtype")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    dev, sync, info = setup_torch(args, "train_ref.py")
    if args.check:
        info.update(check(args, dev, sync))
    elif args.case:
        info.update(run_case(args, dev, sync))
    else:
        p.error("pass --case or --check")
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
