#!/usr/bin/python3
"""PyTorch twin of bench/train.ts: one Dreambooth / LoRA training step in plain torch.

diffusers is not installed, so this file holds a compact plain-PyTorch SD1.x
UNet with the diffusers module names (copied from bench/models_ref.py, which
follows diffusers v0.19.3 src/diffusers/models/unet_2d_condition.py,
unet_2d_blocks.py, resnet.py, transformer_2d.py, attention.py,
attention_processor.py, embeddings.py), kohya's LoRA wrapping
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
Common: --threads N, --device cpu|cuda. Exit codes: 3 = no torch, 4 = no CUDA.
"""
import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the TS side turns this into a set-up hint
    print(f"train_ref.py: cannot import torch ({e})", file=sys.stderr)
    sys.exit(3)

# The fused op where this torch has it (2.x), else the formula Atelier's
# scaledDotProductAttention falls back to: (q @ kᵀ)·scale, softmax, @ v.
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v):
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    return torch.matmul(scores.softmax(-1), v)


# ---- safetensors (the safetensors package is not installed) -----------------------

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = ST_DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dtype) if b > a else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out, header.get("__metadata__", {})


def save_safetensors(path, tensors):
    blobs, header, offset = [], {}, 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        raw = t.numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---- UNet2DConditionModel (SD1.x), as bench/models_ref.py ----------------------------

def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0.0, max_period=10000):
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups=32, eps=1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x
        return skip + h


class Attention(nn.Module):
    """diffusers Attention (UNet form: no bias on to_q/k/v, to_out.0 with bias)."""

    def __init__(self, qdim, heads, dim_head, ctx_dim=None):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(qdim, inner, bias=False)
        self.to_k = nn.Linear(ctx_dim or qdim, inner, bias=False)
        self.to_v = nn.Linear(ctx_dim or qdim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, qdim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        ctx = x if context is None else context
        b = x.shape[0]

        def split(t):
            return t.view(b, -1, self.heads, self.dim_head).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        o = attention(q, k, v).transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)
        for m in self.to_out:
            o = m(o)
        return o


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, ctx_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, ctx_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm(eps 1e-6) → 1×1 conv proj_in → blocks → 1×1 conv proj_out → + input."""

    def __init__(self, channels, heads, ctx_dim, groups=32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, channels // heads, ctx_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        for blk in self.transformer_blocks:
            t = blk(t, context)
        t = t.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(t) + x


class Downsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class DownBlock(nn.Module):
    def __init__(self, cin, cout, temb, layers, attn, heads, ctx_dim, downsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb) for i in range(layers)])
        if attn:
            self.attentions = nn.ModuleList([Transformer2DModel(cout, heads, ctx_dim) for _ in range(layers)])
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])

    def forward(self, x, temb, context):
        skips = []
        for i, r in enumerate(self.resnets):
            x = r(x, temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, cin, prev, cout, temb, layers, attn, heads, ctx_dim, upsample):
        super().__init__()
        rs = []
        for i in range(layers):
            skip = cin if i == layers - 1 else cout
            rs.append(ResnetBlock2D((prev if i == 0 else cout) + skip, cout, temb))
        self.resnets = nn.ModuleList(rs)
        if attn:
            self.attentions = nn.ModuleList([Transformer2DModel(cout, heads, ctx_dim) for _ in range(layers)])
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])

    def forward(self, x, skips, temb, context, size=None):
        for i, r in enumerate(self.resnets):
            x = r(torch.cat([x, skips.pop()], dim=1), temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch, temb, heads, ctx_dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb), ResnetBlock2D(ch, ch, temb)])
        self.attentions = nn.ModuleList([Transformer2DModel(ch, heads, ctx_dim)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


SD15 = dict(block_out=[320, 640, 1280, 1280], layers=2, heads=8, ctx_dim=768,
            down=["A", "A", "A", "R"], up=["R", "A", "A", "A"])


class UNet2DConditionModel(nn.Module):
    """SD1.x UNet; "A" = CrossAttn{Down,Up}Block2D, "R" = {Down,Up}Block2D."""

    def __init__(self, block_out, layers, heads, ctx_dim, down, up, cin=4, cout=4):
        super().__init__()
        ch0, n = block_out[0], len(block_out)
        temb = ch0 * 4
        self.ch0 = ch0
        self.conv_in = nn.Conv2d(cin, ch0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch0, temb)
        self.down_blocks = nn.ModuleList()
        out = ch0
        for i in range(n):
            prev, out = out, block_out[i]
            self.down_blocks.append(DownBlock(prev, out, temb, layers, down[i] == "A", heads, ctx_dim, i < n - 1))
        self.mid_block = MidBlock(block_out[-1], temb, heads, ctx_dim)
        rev = list(reversed(block_out))
        self.up_blocks = nn.ModuleList()
        out = rev[0]
        for i in range(n):
            prev, out = out, rev[i]
            self.up_blocks.append(UpBlock(rev[min(i + 1, n - 1)], prev, out, temb, layers + 1, up[i] == "A", heads,
                                          ctx_dim, i < n - 1))
        self.conv_norm_out = nn.GroupNorm(32, ch0, eps=1e-5)
        self.conv_out = nn.Conv2d(ch0, cout, 3, padding=1)

    def forward(self, sample, timesteps, context):
        emb = self.time_embedding(timestep_embedding(timesteps, self.ch0).to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for blk in self.down_blocks:
            x, s = blk(x, emb, context)
            skips += s
        x = self.mid_block(x, emb, context)
        for blk in self.up_blocks:
            n = len(blk.resnets)
            mine, skips = skips[-n:], skips[:-n]
            x = blk(x, mine, emb, context)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


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

def alphas_cumprod():
    # SD1.x scaled_linear betas (DDPMScheduler), float32 as diffusers makes them
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class Step:
    """One train_dreambooth.py step with prior preservation (batch = instances + class examples)."""

    def __init__(self, unet, params, optimizer, dev, sync, prior_loss_weight=1.0):
        self.unet, self.params, self.opt, self.dev, self.sync = unet, params, optimizer, dev, sync
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
    return torch.optim.SGD(params, lr=lr)  # no momentum: no state


# ---- memory ------------------------------------------------------------------------------

def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


# ---- modes ---------------------------------------------------------------------------------

def run_case(args, dev, sync):
    cfg = json.loads(args.unet) if args.unet else SD15
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**cfg).to(dev).train()
    if args.case == "lora":
        unet.requires_grad_(False)
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
    step = Step(unet, params, opt, dev, sync)
    rss_model = rss_mb()
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
           "rss_model_mb": rss_model, "maxrss_mb": maxrss_mb(), "vmhwm_mb": status_mb("VmHWM")}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def check(args, dev, sync):
    """2 steps of each method on the weights and draws train.ts wrote; all results to OUT."""
    src, meta = load_safetensors(args.check[0])
    spec = json.loads(meta["spec"])
    cfg = spec["unet"]
    out = {}
    info = {}
    g = torch.Generator().manual_seed(spec["seed"])
    for method in ("full", "lora"):
        unet = UNet2DConditionModel(**cfg)
        unet.load_state_dict({k[5:]: v for k, v in src.items() if k.startswith("unet.")})
        unet = unet.to(dev).train()
        if method == "lora":
            unet.requires_grad_(False)
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
        opt = make_optimizer(spec["optimizer"], params, spec["lr"][method])
        step = Step(unet, params, opt, dev, sync, spec["prior_loss_weight"])
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
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"train_ref.py: --device {args.device}, but torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        sys.exit(4)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev),
            "attention": "sdpa" if HAS_SDPA else "math"}
    if args.check:
        info.update(check(args, dev, sync))
    elif args.case:
        info.update(run_case(args, dev, sync))
    else:
        p.error("pass --case or --check")
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
