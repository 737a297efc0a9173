#!/usr/bin/python3
"""PyTorch twin of bench/models.ts: the same model computations in plain torch.

diffusers and transformers are not installed, so this file holds compact
plain-PyTorch versions of what Atelier runs, with module names that follow the
diffusers / transformers keys (so they load the very weights Atelier uses):
  - UNet2DConditionModel, SD1.x layout (diffusers v0.19.3
    src/diffusers/models/unet_2d_condition.py, unet_2d_blocks.py, resnet.py,
    transformer_2d.py, attention.py, attention_processor.py, embeddings.py)
  - the VAE decoder + post_quant_conv (diffusers models/vae.py, autoencoder_kl.py)
  - CLIPTextModel (transformers v4.31 models/clip/modeling_clip.py)
  - the Euler sampler loop of StableDiffusionPipeline with CFG
    (diffusers schedulers/scheduling_euler_discrete.py)

Modes:
  --check             tiny UNet fixture -> out.sample, max |diff| (must be <= 1e-5);
                      prints one JSON object
  --case unet-train   SD1.5-size UNet fwd+bwd, random weights (--preset, --latent)
  --case txt2img      tiny txt2img on the weights and token ids of --spec (a JSON
                      file written by models.ts)
A case alone runs --warmup + --reps times and prints one JSON object. With --serve
(how models.ts runs it, taking turns with Atelier) it prints {"ready": true}, then
answers one command per stdin line with one JSON line:
  run     -> {"ms", "cpu_ms", "faults"} (wall clock, process CPU time, minor page
             faults); unet-train adds forward_/backward_ms and _cpu_ms
  result  -> unet-train: {"params", "maxrss_mb"}; txt2img: the last run's
             {"latents", "images", "maxrss_mb"}
  failure -> {"error": message}
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
import traceback

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the TS side turns this into a set-up hint
    print(f"models_ref.py: cannot import torch ({e})", file=sys.stderr)
    sys.exit(3)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "shared", "fixtures", "models")

# The fused op where this torch has it (2.x), else the formula Atelier's
# scaledDotProductAttention falls back to: (q @ kᵀ)·scale, softmax, @ v.
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v, causal=False):
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
        t = torch.frombuffer(bytearray(data[a:b]), dtype=ST_DTYPES[info["dtype"]]) if b > a else \
            torch.empty(0, dtype=ST_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


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


# ---- VAE decoder (AutoencoderKL.decode) ----------------------------------------------

class UpDecoderBlock2D(nn.Module):
    def __init__(self, layers, cin, cout, upsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, eps=1e-6)
                                      for i in range(layers)])
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if hasattr(self, "upsamplers") else x


class VaeMidBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, None, eps=1e-6), ResnetBlock2D(ch, ch, None, eps=1e-6)])
        self.attentions = nn.ModuleList([Attention(ch, 1, ch, bias=True, norm_groups=32, eps=1e-6, residual=True)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Decoder(nn.Module):
    def __init__(self, block_out, layers, latent=4, cout=3):
        super().__init__()
        rev = list(reversed(block_out))
        n = len(rev)
        self.conv_in = nn.Conv2d(latent, rev[0], 3, padding=1)
        self.mid_block = VaeMidBlock(rev[0])
        self.up_blocks = nn.ModuleList([UpDecoderBlock2D(layers + 1, rev[max(i - 1, 0)], rev[i], i < n - 1)
                                        for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(32, block_out[0], eps=1e-6)
        self.conv_out = nn.Conv2d(block_out[0], cout, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            h = b(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VaeDecode(nn.Module):
    """The decode half of AutoencoderKL: post_quant_conv, decoder (keys as diffusers')."""

    def __init__(self, block_out, layers, latent=4):
        super().__init__()
        self.decoder = Decoder(block_out, layers, latent)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))


# ---- CLIPTextModel ---------------------------------------------------------------------

class ClipAttention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x):
        b, n, h = x.shape

        def split(t):
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        o = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), causal=True)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, h))


class ClipMlp(nn.Module):
    def __init__(self, h, inner):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(h, inner), nn.Linear(inner, h)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class ClipLayer(nn.Module):
    def __init__(self, h, inner, heads, eps):
        super().__init__()
        self.self_attn = ClipAttention(h, heads)
        self.layer_norm1 = nn.LayerNorm(h, eps=eps)
        self.mlp = ClipMlp(h, inner)
        self.layer_norm2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTextModel(nn.Module):
    def __init__(self, vocab, h, inner, layers, heads, positions=77, eps=1e-5):
        super().__init__()
        tm = nn.Module()
        tm.embeddings = nn.Module()
        tm.embeddings.token_embedding = nn.Embedding(vocab, h)
        tm.embeddings.position_embedding = nn.Embedding(positions, h)
        tm.encoder = nn.Module()
        tm.encoder.layers = nn.ModuleList([ClipLayer(h, inner, heads, eps) for _ in range(layers)])
        tm.final_layer_norm = nn.LayerNorm(h, eps=eps)
        self.text_model = tm

    def forward(self, ids):
        tm = self.text_model
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding.weight[: ids.shape[1]]
        for layer in tm.encoder.layers:
            x = layer(x)
        return tm.final_layer_norm(x)


def load_into(model, state, prefix=""):
    own = model.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = set(own) - set(sub), set(sub) - set(own)
    if missing or unexpected:
        raise KeyError(f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(sub)
    return model


# ---- the cases ---------------------------------------------------------------------------

def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Wall clock, process CPU time and minor page faults since it was made."""

    def __init__(self):
        self.t, self.cpu, self.faults = time.perf_counter(), time.process_time(), self._faults()

    @staticmethod
    def _faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def read(self):
        return {"ms": (time.perf_counter() - self.t) * 1e3, "cpu_ms": (time.process_time() - self.cpu) * 1e3,
                "faults": self._faults() - self.faults}


def check():
    """The tiny UNet on the fixture weights must give the fixture's out.sample."""
    unet = load_into(UNet2DConditionModel(**UNET_CONFIGS["tiny"]).eval(),
                     load_safetensors(os.path.join(FIXTURES, "unet_tiny.safetensors")))
    io = load_safetensors(os.path.join(FIXTURES, "unet_tiny_io.safetensors"))
    with torch.no_grad():
        out = unet(io["in.sample"], io["in.timestep"], io["in.encoder_hidden_states"])
        out500 = unet(io["in.sample"], torch.tensor(500), io["in.encoder_hidden_states"])
    d = (out - io["out.sample"]).abs().max().item()
    d500 = (out500 - io["out.sample_t500"]).abs().max().item()
    d64 = (out.double() - io["out.sample_f64"]).abs().max().item()
    ok = d <= 1e-5 and d500 <= 1e-5
    return {"ok": ok, "max_abs_diff": d, "max_abs_diff_t500": d500, "max_abs_diff_vs_f64": d64,
            "params": sum(p.numel() for p in unet.parameters()), "tolerance": 1e-5}


class UnetTrain:
    """SD1.5 UNet, random weights: loss = mean(unet(x, 500, ctx)), backward to all parameters."""

    def __init__(self, args, dev, sync):
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel(**UNET_CONFIGS[args.preset]).to(dev)
        self.params = list(self.unet.parameters())
        ctx_dim = UNET_CONFIGS[args.preset]["ctx_dim"]
        self.x = torch.randn(1, 4, args.latent, args.latent, device=dev)
        self.ctx = torch.randn(1, 77, ctx_dim, device=dev)
        self.t = torch.tensor(500, device=dev)
        self.sync = sync

    def run(self):
        m = Meter()
        loss = self.unet(self.x, self.t, self.ctx).mean()
        self.sync()
        fwd = m.read()
        loss.backward()
        self.sync()
        r = m.read()
        for p in self.params:
            p.grad = None
        return {**r, "forward_ms": fwd["ms"], "backward_ms": r["ms"] - fwd["ms"],
                "forward_cpu_ms": fwd["cpu_ms"], "backward_cpu_ms": r["cpu_ms"] - fwd["cpu_ms"]}

    def result(self):
        return {"params": sum(p.numel() for p in self.params), "maxrss_mb": maxrss_mb()}


class Txt2Img:
    """StableDiffusionPipeline.__call__ with EulerDiscreteScheduler, written out."""

    def __init__(self, spec, dev, sync):
        self.spec, self.dev, self.sync = spec, dev, sync
        self.last = None
        w = load_safetensors(spec["weights"])
        te = spec["text_encoder"]
        self.text = load_into(ClipTextModel(te["vocab"], te["hidden"], te["inner"], te["layers"], te["heads"]),
                              w, "te.").to(dev).eval()
        self.unet = load_into(UNet2DConditionModel(**UNET_CONFIGS["tiny"]), w, "unet.").to(dev).eval()
        vae = spec["vae"]
        self.vae = load_into(VaeDecode(tuple(vae["block_out"]), vae["layers"]), w, "vae.").to(dev).eval()
        # ids per prompt (negative first), token multipliers all 1 (no emphasis in the prompts)
        self.ids = [torch.tensor([ids], dtype=torch.int64, device=dev) for ids in spec["ids"]]
        # scaled_linear betas, ᾱ, train sigmas; linspace timesteps (diffusers EulerDiscreteScheduler)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
        self.train_sigmas = np.array(((1 - ac) / ac) ** 0.5)

    def set_timesteps(self, n):
        ts = np.linspace(0, 999, n, dtype=float)[::-1].copy()
        sigmas = np.interp(ts, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        return torch.from_numpy(ts), torch.from_numpy(sigmas)

    def encode(self, ids):
        z = self.text(ids)
        weighted = z * torch.ones(ids.shape, device=self.dev)[..., None]  # A1111 emphasis, weights 1
        return weighted * (z.mean() / weighted.mean())

    def run(self):
        m = Meter()
        self.last = self()
        self.sync()
        return m.read()

    def result(self):
        latents, images = self.last
        return {"latents": latents.flatten().tolist(), "images": images.flatten().tolist(), "maxrss_mb": maxrss_mb()}

    @torch.no_grad()
    def __call__(self):
        s = self.spec
        context = torch.cat([self.encode(i) for i in self.ids])
        timesteps, sigmas = self.set_timesteps(s["steps"])
        g = torch.Generator("cpu").manual_seed(s["seed"])
        shape = (1, 4, s["height"] // s["scale"], s["width"] // s["scale"])
        latents = torch.randn(shape, generator=g).to(self.dev) * sigmas.max()
        for i, t in enumerate(timesteps):
            sigma = sigmas[i]
            inp = torch.cat([latents] * 2) / ((sigma ** 2 + 1) ** 0.5)
            noise = self.unet(inp, t, context)
            uncond, cond = noise.chunk(2)
            eps = uncond + s["cfg"] * (cond - uncond)
            # EulerDiscreteScheduler.step, s_churn = 0: the noise is drawn, times 0
            torch.randn(eps.shape, generator=g).to(self.dev)
            x0 = latents - sigma * eps
            derivative = (latents - x0) / sigma
            latents = latents + derivative * (sigmas[i + 1] - sigma)
        images = (self.vae(latents / s["scaling_factor"]) / 2 + 0.5).clamp(0, 1).to("cpu", torch.float32)
        return latents, images


def serve(case):
    """One command per stdin line, one JSON line back: run, result."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            cmd = line.strip()
            if cmd == "run":
                reply = case.run()
            elif cmd == "result":
                reply = case.result()
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception:
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--case", choices=["unet-train", "txt2img"])
    p.add_argument("--serve", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--preset", default="sd15", choices=list(UNET_CONFIGS))
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--spec", help="txt2img: the JSON spec written by models.ts")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"models_ref.py: --device {args.device}, but torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        sys.exit(4)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev),
            "attention": "sdpa" if HAS_SDPA else "math"}
    if args.check:
        r = check()
        print(json.dumps({**info, **r}))
        sys.exit(0 if r["ok"] else 1)
    if args.case is None:
        p.error("pass --check or --case")
    if args.case == "unet-train":
        case = UnetTrain(args, dev, sync)
    else:
        with open(args.spec) as f:
            case = Txt2Img(json.load(f), dev, sync)
    if args.serve:
        serve(case)
        return
    for _ in range(args.warmup):
        case.run()
    runs = [case.run() for _ in range(args.reps)]
    samples = [r["ms"] for r in runs]
    print(json.dumps({**info, "samples_ms": samples, "median_ms": statistics.median(samples), "runs": runs,
                      **case.result()}))


if __name__ == "__main__":
    main()
