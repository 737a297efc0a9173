#!/usr/bin/python3
"""PyTorch twin of bench/models.ts: the same model computations in plain torch.

diffusers and transformers are not installed, so this file holds compact
plain-PyTorch versions of what Atelier runs, with module names that follow the
diffusers / transformers keys (so they load the very weights Atelier uses):
  - UNet2DConditionModel, SD1.x layout (diffusers v0.19.3
    src/diffusers/models/unet_2d_condition.py, unet_2d_blocks.py, resnet.py,
    transformer_2d.py, attention.py, attention_processor.py, embeddings.py);
    it lives in bench/sd_twin.py, shared with bench/train_ref.py
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
import os
import statistics
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

# after torch imported: sd_twin needs it (bench/ is on sys.path as this script's folder)
from sd_twin import (  # noqa: E402
    UNET_CONFIGS,
    Attention,
    ResnetBlock2D,
    UNet2DConditionModel,
    Upsample2D,
    alphas_cumprod,
    attention,
    load_safetensors,
    maxrss_mb,
    minor_faults,
    setup_torch,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "shared", "fixtures", "models")


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

class Meter:
    """Wall clock, process CPU time and minor page faults since it was made."""

    def __init__(self):
        self.t, self.cpu, self.faults = time.perf_counter(), time.process_time(), minor_faults()

    def read(self):
        return {"ms": (time.perf_counter() - self.t) * 1e3, "cpu_ms": (time.process_time() - self.cpu) * 1e3,
                "faults": minor_faults() - self.faults}


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
        ac = alphas_cumprod()
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
    dev, sync, info = setup_torch(args, "models_ref.py")
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
