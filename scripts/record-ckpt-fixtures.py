#!/usr/bin/env python3
"""Records small torch.save files for test/formats/ckpt.test.ts (no Python at test time).

Run with Debian's torch 1.13: /usr/bin/python3 scripts/record-ckpt-fixtures.py
Writes into test/fixtures/:
  ckpt_lightning_zip.ckpt    zip format, a Lightning-style dict {state_dict, global_step (numpy int64),
                             epoch, pytorch-lightning_version, callbacks keyed by the ModelCheckpoint class}
  ckpt_plain_legacy.pt       the same state dict, plain, in the legacy (pre-1.6) stream format
  ckpt_expected.json         every tensor's dtype, shape and values (row-major), plus the metadata
The legacy format names storages by Python object id, so that file differs byte-wise between runs
(its content does not); the zip file and the JSON are reproducible.
"""
import json
import os
import sys
import types

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures")


def fake_lightning():
    """A stand-in class pickled by reference exactly as pytorch_lightning's would be (it is not installed)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    cls = type("ModelCheckpoint", (), {})
    cls.__module__ = names[-1]
    sys.modules[names[-1]].ModelCheckpoint = cls
    return cls


def state_dict():
    base = torch.arange(10, dtype=torch.float32) * 0.25
    sd = {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1,
        "f16": torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -3.5, 0.0078125], dtype=torch.bfloat16),
        "f64": torch.tensor([[1e-300, 2.5]], dtype=torch.float64),
        "i64": torch.tensor([-(2**40), 7], dtype=torch.int64),
        "i32": torch.tensor([[-5], [2**31 - 1]], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        # non-contiguous: strides (1, 4)
        "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        # two tensors over one storage, one at an offset
        "shared_a": base[2:5],
        "shared_b": base.view(2, 5),
        # stride 0
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.tensor([0.5, -0.5])),
        "layer.weight": torch.linspace(-1, 1, 8).reshape(2, 4),
    }
    return sd


def values(t):
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.reshape(-1).tolist()


def main():
    os.makedirs(OUT, exist_ok=True)
    ModelCheckpoint = fake_lightning()
    sd = state_dict()
    wrapped = {
        "epoch": 6,
        "global_step": np.int64(875000),
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"best_model_score": None, "dirpath": "/logs"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
    }
    torch.save(wrapped, os.path.join(OUT, "ckpt_lightning_zip.ckpt"))
    torch.save(sd, os.path.join(OUT, "ckpt_plain_legacy.pt"), _use_new_zipfile_serialization=False)
    expected = {
        "tensors": {
            k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "values": values(v)} for k, v in sd.items()
        },
        "metadata": {"epoch": 6, "global_step": 875000, "pytorch-lightning_version": "1.4.2"},
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, "ckpt_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    # Check that both files load back in torch itself.
    for name in ("ckpt_lightning_zip.ckpt", "ckpt_plain_legacy.pt"):
        loaded = torch.load(os.path.join(OUT, name))
        got = loaded["state_dict"] if "state_dict" in loaded else loaded
        for k, v in sd.items():
            assert torch.equal(got[k], v), (name, k)
        print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")


if __name__ == "__main__":
    main()
