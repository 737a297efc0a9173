"""The plain-PyTorch pieces that bench/models_ref.py and bench/train_ref.py share.

diffusers and safetensors are not installed, so this module holds a compact
plain-PyTorch SD1.x UNet2DConditionModel whose module names follow diffusers'
keys (so it loads the very weights Atelier uses), after diffusers v0.19.3:
  src/diffusers/models/unet_2d_condition.py  UNet2DConditionModel
  src/diffusers/models/unet_2d_blocks.py     {CrossAttn,}{Down,Up}Block2D, UNetMidBlock2DCrossAttn
  src/diffusers/models/resnet.py             ResnetBlock2D, Downsample2D, Upsample2D
  src/diffusers/models/transformer_2d.py     Transformer2DModel
  src/diffusers/models/attention.py          BasicTransformerBlock, FeedForward, GEGLU
  src/diffusers/models/attention_processor.py Attention
  src/diffusers/models/embeddings.py         get_timestep_embedding, TimestepEmbedding
and beside it a safetensors reader/writer, SD1.x's alphas_cumprod, memory
counters and the --device/--threads set-up both scripts start with.

Where the two scripts' copies differed, this is the union of both: the
defaults do what train_ref.py's copy did, and the extras are models_ref.py's:
attention(causal=True) for CLIP, the VAE's ResnetBlock2D (temb None) and
Attention (group_norm, bias, residual), Downsample2D(padding=0), and a UNet
forward that takes a scalar timestep and passes explicit upsample sizes when
the latent is not a multiple of 2^upsamplers (same result as before otherwise).

The scripts import torch first (exit code 3 with a hint where it is missing),
then this module: it is found because Python puts the running script's folder,
bench/, first on sys.path.
"""
import json
import math
import os
import resource
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


# The fused op where this torch has it (2.x), else the formula Atelier's
# scaledDotProductAttention falls back to: (q @ kᵀ)·scale, softmax, @ v.
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v, causal=False):
    # causal: CLIP's text self-attention (models_ref.py); the UNet's is never causal
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    if causal:
        L, S = scores.shape[-2], scores.shape[-1]
        allowed = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


# ---- safetensors (the safetensors package is not installed) -----------------------

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def load_safetensors(path, with_metadata=False):
    """{name: tensor}; with_metadata: ({name: tensor}, the header's __metadata__ or {})."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=ST_DTYPES[info["dtype"]]) if b > a else \
            torch.empty(0, dtype=ST_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return (out, header.get("__metadata__", {})) if with_metadata else out


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


# ---- UNet2DConditionModel (SD1.x) ---------------------------------------------------

def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0.0, max_period=10000):
    # diffusers embeddings.py get_timestep_embedding
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
    """temb None: the VAE's blocks (no time_emb_proj, eps 1e-6); the UNet's always pass one."""

    def __init__(self, cin, cout, temb, groups=32, eps=1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        if temb is not None:
            self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x
        return skip + h


class Attention(nn.Module):
    """diffusers Attention: to_q/to_k/to_v, to_out.0 (+ VAE: group_norm, bias, residual)."""

    def __init__(self, qdim, heads, dim_head, ctx_dim=None, bias=False, norm_groups=None, eps=1e-5,
                 residual=False):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.residual = heads, dim_head, residual
        if norm_groups is not None:
            self.group_norm = nn.GroupNorm(norm_groups, qdim, eps=eps)
        self.to_q = nn.Linear(qdim, inner, bias=bias)
        self.to_k = nn.Linear(ctx_dim or qdim, inner, bias=bias)
        self.to_v = nn.Linear(ctx_dim or qdim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, qdim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        spatial = x.ndim == 4
        tokens = x
        if hasattr(self, "group_norm"):
            tokens = self.group_norm(tokens)
        if spatial:
            b, c, h, w = x.shape
            tokens = tokens.view(b, c, h * w).transpose(1, 2)
        ctx = tokens if context is None else context
        b = tokens.shape[0]

        def split(t):
            return t.view(b, -1, self.heads, self.dim_head).transpose(1, 2)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(ctx)), split(self.to_v(ctx))
        o = attention(q, k, v).transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)
        for m in self.to_out:
            o = m(o)
        if spatial:
            o = o.transpose(1, 2).reshape(b, c, h, w)
        return o + x if self.residual else o


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
    """padding=0 is diffusers' VAE-encoder form: pad right/bottom by 1, then the stride-2 conv."""

    def __init__(self, ch, padding=1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
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


# "sd15": SD1.5's unet/config.json; "tiny": the fixture UNet (shared/fixtures/models/unet_tiny.safetensors)
UNET_CONFIGS = {
    "sd15": dict(block_out=(320, 640, 1280, 1280), layers=2, heads=8, ctx_dim=768,
                 down=("A", "A", "A", "R"), up=("R", "A", "A", "A")),
    "tiny": dict(block_out=(32, 64), layers=1, heads=8, ctx_dim=32, down=("A", "R"), up=("R", "A")),
}


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

    def forward(self, sample, timestep, context):
        # timestep: a number, a 0-d / 1-element tensor (broadcast to the batch) or one per sample
        b = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=sample.device)
        t = t.reshape(-1).to(sample.device).expand(b) if t.numel() == 1 else t.to(sample.device)
        emb = self.time_embedding(timestep_embedding(t, self.ch0).to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for blk in self.down_blocks:
            x, s = blk(x, emb, context)
            skips += s
        x = self.mid_block(x, emb, context)
        # explicit upsample sizes only where the input is not a multiple of 2^upsamplers
        factor = 2 ** sum(hasattr(b, "upsamplers") for b in self.up_blocks)
        forward_sizes = any(d % factor != 0 for d in sample.shape[2:])
        for blk in self.up_blocks:
            n = len(blk.resnets)
            mine, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if forward_sizes and hasattr(blk, "upsamplers") else None
            x = blk(x, mine, emb, context, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# ---- the SD1.x noise schedule ------------------------------------------------------------

def alphas_cumprod():
    # SD1.x scaled_linear betas (DDPMScheduler, EulerDiscreteScheduler), float32 as diffusers makes them
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# ---- memory --------------------------------------------------------------------------------

def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- set-up ----------------------------------------------------------------------------------

def setup_torch(args, script):
    """--device and --threads as the TS side passes them -> (device, sync, info for the JSON output).

    Exits 4 where --device asks for CUDA that this torch lacks (the TS side turns it into a hint).
    """
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{script}: --device {args.device}, but torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        sys.exit(4)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev),
            "attention": "sdpa" if HAS_SDPA else "math"}
    return dev, sync, info
