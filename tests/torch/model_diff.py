#!/usr/bin/python3
"""nn- and model-level checks against PyTorch (driver: tests/torch/model_diff.cpp).

    /usr/bin/python3 tests/torch/model_diff.py [--driver build/tests/model_diff]

1. The transformer of the train_transformer benchmark (LayerNorm and RMSNorm variants): the
   driver runs one batch forward and backward in f32 and saves the weights, loss, logits and
   gradients; the same weights go into the PyTorch model of tests/bench/ref_transformer.py (the
   benchmark's reference), run in float64 (the truth) and in float32. For the logits and every
   gradient
       max |tapegrad - torch64| <= max(8 * max |torch32 - torch64|, 64 * eps32 * max |torch64|)
   i.e. tapegrad's f32 is about as accurate as PyTorch's own.
2. Optimizers: SGD (momentum, dampening, nesterov, weight decay), Adam and AdamW (weight decay),
   with gradient clipping, 25 steps on f64 parameters with fixed gradients, one parameter missing
   every third gradient; final parameters must match torch.optim to 1e-12.

Prints one line per tensor / configuration; exits 1 on any failure.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
import ref_transformer  # noqa: E402  (the benchmark's reference model)

EPS32 = float(np.finfo(np.float32).eps)
# Sizes of model_diff.cpp.
SIZES = dict(layers=2, d_model=64, heads=4, seq=24, batch=3, vocab=256)


def load_safetensors(path):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64}[info["dtype"]]
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + begin:8 + n + end], dtype=dtype).reshape(info["shape"]).copy()
    return out


def torch_name_map(layers):
    """Reference parameter name -> tapegrad parameter name."""
    names = {"emb.weight": "embed.weight", "nf.weight": "norm.weight", "nf.bias": "norm.bias", "head.weight": "head.weight"}
    for i in range(layers):
        for ref, ours in [("n1", "norm1"), ("n2", "norm2")]:
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ref}.{kind}"] = f"blocks.{i}.{ours}.{kind}"
        names[f"blocks.{i}.qkv.weight"] = f"blocks.{i}.attn.qkv.weight"
        names[f"blocks.{i}.proj.weight"] = f"blocks.{i}.attn.out.weight"
        names[f"blocks.{i}.fc1.weight"] = f"blocks.{i}.mlp.fc1.weight"
        names[f"blocks.{i}.fc2.weight"] = f"blocks.{i}.mlp.fc2.weight"
    return names


def reference(norm, weights, tokens, dtype):
    """Loss, logits and gradients (by tapegrad name) of the reference model with the given weights."""
    args = argparse.Namespace(norm=norm, **SIZES)
    model = ref_transformer.build(args).to(dtype)
    params = dict(model.named_parameters())
    names = {k: v for k, v in torch_name_map(SIZES["layers"]).items() if k in params}  # RMSNorm has no bias
    missing = set(params) ^ set(names)
    assert not missing, f"unmapped parameters: {missing}"
    with torch.no_grad():
        for ref, ours in names.items():
            params[ref].copy_(torch.from_numpy(weights[ours]).to(dtype))
    seq = torch.from_numpy(tokens)
    logits = model(seq[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, SIZES["vocab"]), seq[:, 1:].reshape(-1))
    loss.backward()
    grads = {ours: params[ref].grad.double().numpy() for ref, ours in names.items()}
    return loss.item(), logits.detach().double().numpy(), grads


def gradient(t, n, salt):
    """The gradient of a parameter at step t (same formula in model_diff.cpp)."""
    return torch.tensor([math.sin(0.7 * t + 1.3 * i + salt) * (1 + 0.5 * math.cos(0.3 * i * t)) + (0.0 if i == 0 else 0.1)
                         for i in range(n)], dtype=torch.float64)


def optimizer_reference():
    """Final parameters per configuration of model_diff.cpp's optimizer run, with torch.optim."""
    O = torch.optim

    def run(make, clip):
        a = torch.tensor([0.5 - 0.2 * i for i in range(7)], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([1.0 + i for i in range(3)], dtype=torch.float64, requires_grad=True)
        opt = make([a, b])
        for t in range(25):
            a.grad = gradient(t, 7, 0)
            b.grad = gradient(t, 3, 5) if t % 3 != 2 else None
            if clip:
                torch.nn.utils.clip_grad_norm_([a, b], 0.5)
            opt.step()
        return a.detach().tolist() + b.detach().tolist()

    return {
        "sgd": run(lambda p: O.SGD(p, lr=0.1), False),
        "sgd_momentum": run(lambda p: O.SGD(p, lr=0.1, momentum=0.9), False),
        "sgd_dampening_wd": run(lambda p: O.SGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05), False),
        "sgd_nesterov_wd": run(lambda p: O.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.01, nesterov=True), False),
        "sgd_clip": run(lambda p: O.SGD(p, lr=0.1, momentum=0.5), True),
        "adam": run(lambda p: O.Adam(p, lr=0.01), False),
        "adam_wd": run(lambda p: O.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1), False),
        "adamw_wd": run(lambda p: O.AdamW(p, lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1), False),
        "adamw_clip": run(lambda p: O.AdamW(p, lr=0.05, weight_decay=0.01), True),
        "adamw_default": run(lambda p: O.AdamW(p, lr=0.01), False),  # torch's default weight decay, 0.01
    }


def check_optimizers(driver):
    ours = subprocess.run([driver, "optim"], check=True, capture_output=True, text=True).stdout.split("\n")
    ref = optimizer_reference()
    failures, seen = 0, set()
    print("optimizers (final parameters vs torch.optim, f64):")
    for line in filter(None, ours):
        name, *values = line.split()
        seen.add(name)
        err = max(abs(float(x) - y) for x, y in zip(values, ref[name]))
        ok = err <= 1e-12 and len(values) == len(ref[name])
        failures += not ok
        print(f"  {'PASS' if ok else 'FAIL'} {name:18s} max |diff| {err:.1e}")
    missing = set(ref) - seen
    if missing:
        print(f"  FAIL configurations missing from the driver: {sorted(missing)}")
    return failures + len(missing)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build/tests/model_diff"))
    args = parser.parse_args()
    torch.manual_seed(0)
    failures = 0
    for norm in ("layer", "rms"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([args.driver, "transformer", tmp, norm], check=True)
            weights = load_safetensors(os.path.join(tmp, "weights.safetensors"))
            ours = load_safetensors(os.path.join(tmp, "grads.safetensors"))
        loss64, logits64, grads64 = reference(norm, weights, ours["tokens"], torch.float64)
        loss32, logits32, grads32 = reference(norm, weights, ours["tokens"], torch.float32)
        print(f"{norm} norm: loss tapegrad {ours['loss'][0]:.7f}  torch f64 {loss64:.7f}  torch f32 {loss32:.7f}")
        pairs = [("logits", ours["logits"], logits64, logits32)]
        pairs += [(f"grad.{k}", ours[f"grad.{k}"], grads64[k], grads32[k]) for k in grads64]
        for name, got, truth, f32 in pairs:
            err, err32 = np.abs(got - truth).max(), np.abs(f32 - truth).max()
            bound = max(8 * err32, 64 * EPS32 * np.abs(truth).max())
            ok = err <= bound
            failures += not ok
            print(f"  {'PASS' if ok else 'FAIL'} {name:30s} err {err:.2e}  torch f32 err {err32:.2e}  bound {bound:.2e}")
    failures += check_optimizers(args.driver)
    print(f"model_diff: {'all passed' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
