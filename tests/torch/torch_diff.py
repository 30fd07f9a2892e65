#!/usr/bin/python3
"""Differential checker: tapegrad's ops against PyTorch 1.13, forward and backward, in float64.

    /usr/bin/python3 tests/torch/torch_diff.py [--cases N] [--seed S] [--op REGEX ...] [--only ID]
                                               [--driver PATH] [--threads T] [--failures-only] [--list]

For every op (or the ops whose name matches one of the --op regular expressions) it generates
seeded random configurations (shapes, options, awkward sizes, broadcast and non-contiguous inputs,
ties and special values), computes the output and the input gradients of <cotangent, output> with
torch.autograd, runs the same cases through the C++ driver (build/tests/torch_diff, see
torch_diff.cpp for the file protocol) and compares every tensor:

    max |tapegrad - torch| <= 1e-9 * (1 + max |torch|)      (per tensor; inf/nan must match exactly)

It prints one line per case (PASS/FAIL, the configuration, the worst error of each tensor relative
to 1 + max |torch|), then a summary per op, and exits with status 1 if any case failed.

--cases N scales the number of cases of every op by its weight: N for most heavy ops (1.2 N to 2 N
for those with many options: conv2d, conv_transpose2d, upsample, norms, attention, FFTs, losses),
N / 3 to N / 2 for elementwise ops and reductions, at least 4 each. Case "op#i" of seed S is the
same whatever --cases and --op select; --only op#i --seed S reruns just that one.

Where tapegrad documents a convention that differs from torch, or torch's own result is not a
usable reference, the reference is adapted and a comment at that place says why (attention's
bottom-right causal mask and fully masked rows; nearest upsampling's index rule; max pooling
windows that lie entirely in the padding).
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
RTOL = 1e-9
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------------
# Case description
# ---------------------------------------------------------------------------------------------------
class TS:
    """One input tensor: base data (the leaf) and the views the op sees."""

    def __init__(self, name, base, grad=True, views=(), dtype="f64"):
        self.name, self.base, self.grad, self.views, self.dtype = name, base, grad, list(views), dtype

    def torch_leaf(self):
        # np.array, not np.ascontiguousarray: the latter turns 0-d arrays into 1-d ones
        np_dtype = {"f64": np.float64, "i64": np.int64, "bool": np.bool_}[self.dtype]
        t = torch.from_numpy(np.array(self.base, dtype=np_dtype, order="C", copy=True))
        if self.grad:
            t.requires_grad_(True)
        return t


def apply_views(t, views):
    for v in views:
        kind, a = v[0], v[1:]
        if kind == "transpose":
            t = t.transpose(a[0], a[1])
        elif kind == "permute":
            t = t.permute(*a)
        elif kind == "slice":
            idx = [slice(None)] * t.dim()
            idx[a[0]] = slice(a[1], a[2], a[3])
            t = t[tuple(idx)]
        elif kind == "flip":
            t = t.flip(a[0])
        elif kind == "expand":
            t = t.expand(*a)
        elif kind == "unsqueeze":
            t = t.unsqueeze(a[0])
        elif kind == "select":
            t = t.select(a[0], a[1])
        else:
            raise ValueError(kind)
    return t


def view_desc(views):
    out = []
    for v in views:
        out.append(v[0] + "(" + ",".join(str(x) for x in v[1:]) + ")")
    return ".".join(out)


# ---------------------------------------------------------------------------------------------------
# Random helpers
# ---------------------------------------------------------------------------------------------------
def randn(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def ties(rng, shape, lo=-3, hi=3):
    return rng.integers(lo, hi + 1, size=shape).astype(np.float64)


def special_mix(rng, shape, specials, frac=0.3, scale=1.0):
    x = np.array(rng.standard_normal(shape) * scale, dtype=np.float64).reshape(-1)
    m = rng.random(x.size) < frac
    x[m] = rng.choice(np.array(specials, dtype=np.float64), size=int(m.sum()))
    return x.reshape(shape)


def layout_for(rng, shape, mode):
    """(base shape, views) whose view has logical shape `shape`."""
    shape = list(shape)
    nd = len(shape)
    if mode == "transpose" and nd >= 2:
        i, j = sorted(rng.choice(nd, size=2, replace=False).tolist())
        base = list(shape)
        base[i], base[j] = base[j], base[i]
        return base, [("transpose", i, j)]
    if mode == "permute" and nd >= 2:
        perm = rng.permutation(nd).tolist()
        if perm == list(range(nd)):
            perm = perm[1:] + perm[:1]
        base = [0] * nd
        for i, p in enumerate(perm):
            base[p] = shape[i]
        return base, [("permute",) + tuple(perm)]
    if mode == "slice" and nd >= 1:
        d = int(rng.integers(nd))
        step = int(rng.integers(1, 4))
        start = int(rng.integers(0, 3))
        base = list(shape)
        n = shape[d]
        stop = start + (n - 1) * step + 1 if n > 0 else start
        base[d] = stop + int(rng.integers(0, 3))
        return base, [("slice", d, start, stop, step)]
    if mode == "flip" and nd >= 1:
        d = int(rng.integers(nd))
        return list(shape), [("flip", d)]
    if mode == "expand" and nd >= 1:
        cand = [d for d in range(nd) if shape[d] > 1]
        if cand:
            d = int(rng.choice(cand))
            base = list(shape)
            base[d] = 1
            return base, [("expand",) + tuple(shape)]
    if mode == "mixed" and nd >= 2:
        b1, v1 = layout_for(rng, shape, "transpose")
        b2, v2 = layout_for(rng, b1, "slice")
        return b2, v2 + v1
    return list(shape), []


ALL_MODES = ("transpose", "slice", "flip", "permute", "expand", "mixed")


def inp(rng, name, shape, grad=True, nc=0.3, gen=None, modes=ALL_MODES):
    """An input of logical shape `shape`, non-contiguous with probability nc."""
    mode = "contig"
    if rng.random() < nc and len(shape) >= 1:
        mode = str(rng.choice(list(modes)))
    base_shape, views = layout_for(rng, shape, mode)
    data = (gen or randn)(rng, tuple(base_shape))
    return TS(name, np.asarray(data, dtype=np.float64), grad, views)


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


ODD = [1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33]


# ---------------------------------------------------------------------------------------------------
# Op registry: name -> (generator, torch reference, weight)
#   generator(rng) -> (params dict, [TS]); params: ints/floats/lists -> numeric, str -> string
#   reference(T, P) -> torch output, T: name -> torch (viewed) tensor
# ---------------------------------------------------------------------------------------------------
OPS = {}


def op(name, weight=1.0, driver=None):
    def deco(fns):
        gen, ref = fns()
        OPS[name] = (gen, ref, weight, driver or name)
        return fns
    return deco


# ---- linear algebra ---------------------------------------------------------------------------------
@op("matmul")
def _matmul():
    def gen(rng):
        kind = pick(rng, ["1x1", "1x2", "2x1", "2x2", "Nx1", "1xN", "Nx2", "2xN", "NxN", "NxN_bcast", "big"])
        M, K, N = pick(rng, ODD), pick(rng, ODD + [64, 65]), pick(rng, ODD)
        if rng.random() < 0.04:  # an empty dim
            which = int(rng.integers(3))
            M, K, N = [0 if i == which else v for i, v in enumerate((M, K, N))]
        B = [pick(rng, [1, 2, 3])]
        if rng.random() < 0.4:
            B = B + [pick(rng, [1, 2, 3])]
        if kind == "1x1":
            sa, sb = [K], [K]
        elif kind == "1x2":
            sa, sb = [K], [K, N]
        elif kind == "2x1":
            sa, sb = [M, K], [K]
        elif kind == "2x2":
            sa, sb = [M, K], [K, N]
        elif kind == "Nx1":
            sa, sb = B + [M, K], [K]
        elif kind == "1xN":
            sa, sb = [K], B + [K, N]
        elif kind == "Nx2":
            sa, sb = B + [M, K], [K, N]
        elif kind == "2xN":
            sa, sb = [M, K], B + [K, N]
        elif kind == "NxN":
            sa, sb = B + [M, K], B + [K, N]
        elif kind == "NxN_bcast":
            Ba = [pick(rng, [1, 3]), 1] if len(B) == 1 else [B[0], 1]
            Bb = [pick(rng, [2, 4])] if rng.random() < 0.5 else [1, pick(rng, [2, 4])]
            sa, sb = Ba + [M, K], Bb + [K, N]
        else:
            M, K, N = pick(rng, [64, 97, 130]), pick(rng, [100, 385, 129, 800]), pick(rng, [33, 64, 150, 600])
            sa, sb = [M, K], [K, N]
        return {}, [inp(rng, "a", sa, nc=0.4), inp(rng, "b", sb, nc=0.4)]
    return gen, lambda T, P: torch.matmul(T["a"], T["b"])


@op("bmm")
def _bmm():
    def gen(rng):
        B, M, K, N = pick(rng, [1, 2, 3, 5]), pick(rng, ODD), pick(rng, ODD + [65]), pick(rng, ODD)
        return {}, [inp(rng, "a", [B, M, K], nc=0.4), inp(rng, "b", [B, K, N], nc=0.4)]
    return gen, lambda T, P: torch.bmm(T["a"], T["b"])


@op("linear")
def _linear():
    def gen(rng):
        K, N = pick(rng, ODD + [64]), pick(rng, ODD)
        if rng.random() < 0.04:  # no input features: the output is the bias
            K = 0
        lead = pick(rng, [[], [5], [2, 3], [1, 4, 2], [17]])
        ts = [inp(rng, "x", lead + [K], nc=0.4), inp(rng, "w", [N, K], nc=0.4)]
        if rng.random() < 0.6:
            ts.append(inp(rng, "b", [N], nc=0.3))
        return {}, ts
    return gen, lambda T, P: F.linear(T["x"], T["w"], T.get("b"))


@op("outer")
def _outer():
    def gen(rng):
        return {}, [inp(rng, "u", [pick(rng, ODD)], nc=0.4), inp(rng, "v", [pick(rng, ODD)], nc=0.4)]
    return gen, lambda T, P: torch.outer(T["u"], T["v"])


# ---- convolution family -------------------------------------------------------------------------------
def conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@op("conv2d", weight=1.5)
def _conv2d():
    def gen(rng):
        kind = pick(rng, ["generic", "generic", "winograd", "1x1", "depthwise", "strided", "bigpad", "fewtaps"])
        groups, stride, pad, dil = 1, [1, 1], [0, 0], [1, 1]
        if kind == "winograd":  # 3x3, unit stride, >= 8 channels each side
            C, O, kh, kw = pick(rng, [8, 16, 24]), pick(rng, [8, 16, 24]), 3, 3
            pad = [pick(rng, [0, 1]), pick(rng, [0, 1])]
            H, W = pick(rng, [3, 4, 7, 9, 14, 15, 28]), pick(rng, [3, 5, 7, 8, 14, 17, 28])
        elif kind == "1x1":
            C, O, kh, kw = pick(rng, [1, 3, 8, 16]), pick(rng, [1, 4, 8, 17]), 1, 1
            stride = [pick(rng, [1, 2]), pick(rng, [1, 2])]
            pad = [pick(rng, [0, 1]), pick(rng, [0, 0, 2])]
            H, W = pick(rng, [1, 4, 7, 13]), pick(rng, [1, 5, 8])
        elif kind == "depthwise":
            C = pick(rng, [3, 8, 16])
            groups, O = C, C * pick(rng, [1, 2])
            kh, kw = pick(rng, [3, 5]), pick(rng, [3, 1, 5])
            pad = [kh // 2, kw // 2]
            stride = [pick(rng, [1, 2]), pick(rng, [1, 2])]
            H, W = pick(rng, [5, 8, 13]), pick(rng, [5, 9, 16])
        elif kind == "strided":
            C, O, kh, kw = pick(rng, [4, 8, 16]), pick(rng, [8, 16]), pick(rng, [3, 4]), pick(rng, [3, 4])
            stride = [2, 2] if rng.random() < 0.6 else [pick(rng, [2, 3]), pick(rng, [1, 2, 3])]
            pad = [1, 1] if rng.random() < 0.6 else [pick(rng, [0, 1, 2]), pick(rng, [0, 1, 2])]
            H, W = pick(rng, [7, 8, 14, 15, 28]), pick(rng, [7, 8, 14, 16])
        elif kind == "bigpad":  # padding beyond the kernel
            C, O = pick(rng, [1, 2, 3]), pick(rng, [1, 2, 4])
            kh, kw = pick(rng, [1, 2, 3]), pick(rng, [1, 2, 3])
            pad = [kh + int(rng.integers(0, 3)), kw + int(rng.integers(0, 3))]
            stride = [pick(rng, [1, 2, 3]), pick(rng, [1, 2])]
            dil = [pick(rng, [1, 2]), pick(rng, [1, 3])]
            H, W = pick(rng, [1, 2, 5]), pick(rng, [1, 3, 6])
        elif kind == "fewtaps":
            C, O = pick(rng, [1, 2, 3]), pick(rng, [1, 8, 16, 32])
            kh, kw = pick(rng, [3, 5, 7]), pick(rng, [3, 5, 7])
            pad = [kh // 2, kw // 2]
            stride = [pick(rng, [1, 2]), pick(rng, [1, 2])]
            H, W = pick(rng, [8, 15, 28]), pick(rng, [8, 15, 28])
        else:
            groups = pick(rng, [1, 1, 2, 3])
            C, O = groups * pick(rng, [1, 2, 3, 5]), groups * pick(rng, [1, 2, 4])
            kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
            stride = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
            dil = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
            pad = [int(rng.integers(0, kh + 2)), int(rng.integers(0, kw + 2))]
            H = max(1, dil[0] * (kh - 1) + 1 - 2 * pad[0]) + int(rng.integers(0, 9))
            W = max(1, dil[1] * (kw - 1) + 1 - 2 * pad[1]) + int(rng.integers(0, 9))
        if conv_out(H, kh, stride[0], pad[0], dil[0]) < 1:
            H = dil[0] * (kh - 1) + 1
        if conv_out(W, kw, stride[1], pad[1], dil[1]) < 1:
            W = dil[1] * (kw - 1) + 1
        N = pick(rng, [1, 2, 3, 9, None]) if kind != "winograd" else pick(rng, [1, 2, 5, 13, None])
        if kind in ("generic", "1x1", "fewtaps") and rng.random() < 0.15:
            N = pick(rng, [9, 17])
        xs = ([N] if N else []) + [C, H, W]
        ts = [inp(rng, "x", xs, nc=0.3), inp(rng, "w", [O, C // groups, kh, kw], nc=0.2)]
        if rng.random() < 0.6:
            ts.append(inp(rng, "b", [O], nc=0.3))
        P = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups, "_kind": kind}
        return P, ts

    def ref(T, P):
        x = T["x"]
        unb = x.dim() == 3
        y = F.conv2d(x.unsqueeze(0) if unb else x, T["w"], T.get("b"), stride=P["stride"], padding=P["padding"],
                     dilation=P["dilation"], groups=P["groups"])
        return y.squeeze(0) if unb else y
    return gen, ref


@op("conv_transpose2d", weight=1.5)
def _conv_transpose2d():
    def gen(rng):
        groups = pick(rng, [1, 1, 2, 3])
        C, O = groups * pick(rng, [1, 2, 4]), groups * pick(rng, [1, 2, 3])
        if rng.random() < 0.25:
            C, O, groups = pick(rng, [8, 16]), pick(rng, [8, 16]), 1
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        stride = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        dil = [pick(rng, [1, 1, 2, 3]), pick(rng, [1, 1, 2])]
        opad = [int(rng.integers(0, max(stride[0], dil[0]))), int(rng.integers(0, max(stride[1], dil[1])))]
        pad = [int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1))]
        H, W = pick(rng, [1, 2, 3, 5, 8, 11]), pick(rng, [1, 2, 4, 7, 9])
        for d, n in ((0, H), (1, W)):
            k = (kh, kw)[d]
            if (n - 1) * stride[d] - 2 * pad[d] + dil[d] * (k - 1) + opad[d] + 1 < 1:
                pad[d] = 0
        N = pick(rng, [1, 2, 3, None])
        xs = ([N] if N else []) + [C, H, W]
        ts = [inp(rng, "x", xs, nc=0.3), inp(rng, "w", [C, O // groups, kh, kw], nc=0.2)]
        if rng.random() < 0.6:
            ts.append(inp(rng, "b", [O], nc=0.3))
        return {"stride": stride, "padding": pad, "output_padding": opad, "dilation": dil, "groups": groups}, ts

    def ref(T, P):
        x = T["x"]
        unb = x.dim() == 3
        y = F.conv_transpose2d(x.unsqueeze(0) if unb else x, T["w"], T.get("b"), stride=P["stride"],
                               padding=P["padding"], output_padding=P["output_padding"], groups=P["groups"],
                               dilation=P["dilation"])
        return y.squeeze(0) if unb else y
    return gen, ref


@op("upsample_conv2d")
def _upsample_conv2d():
    def gen(rng):
        C, O = pick(rng, [1, 2, 3, 8, 16]), pick(rng, [1, 3, 8, 16])
        kh, kw = pick(rng, [1, 2, 3, 3, 4, 5]), pick(rng, [1, 3, 3, 4])
        pad = [int(rng.integers(0, kh)), int(rng.integers(0, kw))]
        H, W = pick(rng, [1, 2, 3, 4, 7, 14]), pick(rng, [1, 2, 3, 5, 7, 14])
        while 2 * H + 2 * pad[0] - kh + 1 < 1:
            H += 1
        while 2 * W + 2 * pad[1] - kw + 1 < 1:
            W += 1
        N = pick(rng, [1, 2, 3, None])
        xs = ([N] if N else []) + [C, H, W]
        ts = [inp(rng, "x", xs, nc=0.3), inp(rng, "w", [O, C, kh, kw], nc=0.2)]
        if rng.random() < 0.6:
            ts.append(inp(rng, "b", [O], nc=0.3))
        return {"padding": pad}, ts

    def ref(T, P):
        x = T["x"]
        unb = x.dim() == 3
        x4 = x.unsqueeze(0) if unb else x
        y = F.conv2d(F.interpolate(x4, scale_factor=2, mode="nearest"), T["w"], T.get("b"), padding=P["padding"])
        return y.squeeze(0) if unb else y
    return gen, ref


# Per-op adjustments of the cotangent (applied to both sides), for outputs whose gradient torch
# defines arbitrarily.
COT_FIX = {}


def pool_input(rng, C_H_W, N=None, data=None):
    C, H, W = C_H_W
    xs = ([N] if N else []) + [C, H, W]
    return inp(rng, "x", xs, nc=0.3, gen=data)


@op("max_pool2d")
def _max_pool2d():
    def gen(rng):
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        stride = [0, 0] if rng.random() < 0.3 else [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        dil = [1, 1] if rng.random() < 0.6 else [int(rng.integers(1, 4)), int(rng.integers(1, 3))]
        # torch's rule: padding <= kernel / 2 (tapegrad allows up to half the dilated extent)
        pad = [int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))]
        H = max(dil[0] * (kh - 1) + 1 - 2 * pad[0], 1) + int(rng.integers(0, 9))
        W = max(dil[1] * (kw - 1) + 1 - 2 * pad[1], 1) + int(rng.integers(0, 9))
        # plain, ties (first maximum wins), all negative (the padding must never win)
        data = pick(rng, [randn, ties, lambda r, s: -np.abs(randn(r, s)) - 1])
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]), data)
        return {"kernel": [kh, kw], "stride": stride, "padding": pad, "dilation": dil}, [x]

    def ref(T, P):
        s = P["stride"] if P["stride"] != [0, 0] else P["kernel"]
        return F.max_pool2d(T["x"], P["kernel"], s, P["padding"], P["dilation"])

    # With dilation a window can fall entirely on padding (torch only bounds padding by kernel / 2).
    # Both give -inf there; torch's backward then credits an arbitrary input element (its initial
    # argmax index), tapegrad none (the output does not depend on x). Those outputs get a zero
    # cotangent, so the rest of the gradient is still compared.
    COT_FIX["max_pool2d"] = lambda out, cot: np.where(np.isneginf(out), 0.0, cot)
    return gen, ref


@op("avg_pool2d")
def _avg_pool2d():
    def gen(rng):
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        stride = [0, 0] if rng.random() < 0.3 else [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        pad = [int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))]
        H = max(kh - 2 * pad[0], 1) + int(rng.integers(0, 9))
        W = max(kw - 2 * pad[1], 1) + int(rng.integers(0, 9))
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]))
        return {"kernel": [kh, kw], "stride": stride, "padding": pad,
                "count_include_pad": int(rng.random() < 0.5)}, [x]

    def ref(T, P):
        s = P["stride"] if P["stride"] != [0, 0] else P["kernel"]
        return F.avg_pool2d(T["x"], P["kernel"], s, P["padding"], count_include_pad=bool(P["count_include_pad"]))
    return gen, ref


@op("adaptive_avg_pool2d")
def _adaptive_avg_pool2d():
    def gen(rng):
        H, W = pick(rng, [1, 2, 3, 5, 7, 8, 13, 16]), pick(rng, [1, 3, 4, 6, 9, 14])
        osz = [int(rng.integers(1, H + 3)), int(rng.integers(1, W + 3))]
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]))
        return {"output_size": osz}, [x]
    return gen, lambda T, P: F.adaptive_avg_pool2d(T["x"], P["output_size"])


@op("global_avg_pool2d")
def _global_avg_pool2d():
    def gen(rng):
        x = pool_input(rng, (pick(rng, [1, 2, 5]), pick(rng, [1, 2, 7]), pick(rng, [1, 3, 8])), pick(rng, [1, 2, None]))
        return {"keepdim": int(rng.random() < 0.5)}, [x]

    def ref(T, P):
        return T["x"].mean(dim=(-2, -1), keepdim=bool(P["keepdim"]))
    return gen, ref


@op("upsample", weight=1.5)
def _upsample():
    def gen(rng):
        mode = pick(rng, ["nearest", "bilinear"])
        H, W = pick(rng, [1, 2, 3, 4, 5, 7, 8]), pick(rng, [1, 2, 3, 5, 6, 9])
        P = {"mode": mode}
        if mode == "bilinear":
            P["align_corners"] = int(rng.random() < 0.5)
        how = pick(rng, ["size", "scale", "scale", "scale1"])
        if how == "size":
            P["size"] = [int(rng.integers(1, 3 * H + 2)), int(rng.integers(1, 3 * W + 2))]
        else:
            scales = [2.0, 3.0, 1.5, 0.5, 1.1, 2.3, 0.7, 1.0, 2.5, 1.75, 4.0, 0.25, 1.3333]
            s = [pick(rng, scales), pick(rng, scales)]
            if how == "scale1":
                s = [s[0], s[0]]
            for d, n in enumerate((H, W)):
                while math.floor(n * s[d]) < 1:
                    s[d] *= 2
            if how == "scale1":
                s = [max(s), max(s)]
                P["scale1"] = s[0]
            else:
                P["scale"] = s
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]))
        return P, [x]

    def ref(T, P):
        x = T["x"]
        unb = x.dim() == 3
        # torch 1.13 picks its nearest kernel by memory format: a channels-last-contiguous input (which
        # includes every input with C == 1) goes through nearest_idx, which copies rows when out == in
        # and halves indices when out == 2 in; the generic NCHW forward kernel computes
        # floor(i * float(1 / scale)) without those special cases, while the backward
        # (upsample_nearest2d_backward) always uses nearest_idx. So for NCHW inputs with C > 1 torch's
        # forward and backward disagree when scale factors are given and floor(in * scale) is in or
        # 2 in with scale != 1, 2 (e.g. in 9, scale 1.1; in 2, scale 2.3). tapegrad implements
        # nearest_idx (ops/conv.cpp, build_table), i.e. torch's backward and channels-last forward:
        # the reference runs torch's nearest mode on a channels-last copy, where both agree.
        x4 = x.unsqueeze(0) if unb else x
        x4 = x4.contiguous(memory_format=torch.channels_last) if P["mode"] == "nearest" else x4.contiguous()
        kw = {"mode": P["mode"]}
        if P["mode"] == "bilinear":
            kw["align_corners"] = bool(P["align_corners"])
        if "size" in P:
            y = F.interpolate(x4, size=tuple(P["size"]), **kw)
        else:
            s = P["scale"] if "scale" in P else [P["scale1"], P["scale1"]]
            y = F.interpolate(x4, scale_factor=tuple(s), **kw)
        return y.squeeze(0) if unb else y
    return gen, ref


# ---- normalisation ----------------------------------------------------------------------------------------
def norm_data(rng):
    kind = pick(rng, ["normal", "normal", "offset", "tiny", "ties"])
    if kind == "offset":
        return lambda r, s: 50.0 + randn(r, s)
    if kind == "tiny":
        return lambda r, s: randn(r, s, 1e-3)
    if kind == "ties":
        return ties
    return randn


@op("layer_norm", weight=1.2)
def _layer_norm():
    def gen(rng):
        k = pick(rng, [1, 1, 2, 3])
        ns = [pick(rng, [1, 2, 3, 5, 8, 17, 64, 100]) for _ in range(k)]
        if k > 1:
            ns = [pick(rng, [1, 2, 3, 4, 7]) for _ in range(k)]
        lead = pick(rng, [[], [1], [3], [2, 4], [2, 1, 3], [33], [300]])
        data = norm_data(rng)
        ts = [inp(rng, "x", lead + ns, nc=0.3, gen=data)]
        aff = pick(rng, ["none", "w", "wb", "b"])
        if "w" in aff:
            ts.append(inp(rng, "w", ns, nc=0.3))
        if "b" in aff:
            ts.append(inp(rng, "b", ns, nc=0.3))
        if rng.random() < 0.1 and lead:  # a constant row
            ts[0].base[...] = 3.0
        return {"normalized_shape": ns, "eps": pick(rng, [1e-5, 1e-5, 1e-3, 0.1])}, ts

    def ref(T, P):
        return F.layer_norm(T["x"], P["normalized_shape"], T.get("w"), T.get("b"), P["eps"])
    return gen, ref


@op("rms_norm", weight=1.2)
def _rms_norm():
    def gen(rng):
        k = pick(rng, [1, 1, 2, 3])
        ns = [pick(rng, [1, 2, 3, 5, 8, 17, 64, 100]) for _ in range(k)] if k == 1 else \
             [pick(rng, [1, 2, 3, 4, 7]) for _ in range(k)]
        lead = pick(rng, [[], [1], [3], [2, 4], [2, 1, 3], [33], [300]])
        ts = [inp(rng, "x", lead + ns, nc=0.3, gen=norm_data(rng))]
        if rng.random() < 0.6:
            ts.append(inp(rng, "w", ns, nc=0.3))
        return {"normalized_shape": ns, "eps": pick(rng, [1e-6, 1e-6, 1e-3, 0.1])}, ts

    def ref(T, P):
        x = T["x"]
        dims = tuple(range(x.dim() - len(P["normalized_shape"]), x.dim()))
        y = x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + P["eps"])
        return y * T["w"] if "w" in T else y
    return gen, ref


def gn_gen(rng):
    G = pick(rng, [1, 2, 3, 4, 8])
    C = G * pick(rng, [1, 2, 3, 4])
    spatial = pick(rng, [[], [1], [5], [3, 4], [7, 7], [2, 3, 2], [16, 16]])
    N = pick(rng, [1, 2, 3, 20])
    ts = [inp(rng, "x", [N, C] + spatial, nc=0.3, gen=norm_data(rng))]
    aff = pick(rng, ["none", "w", "wb", "b", "wb"])
    if "w" in aff:
        ts.append(inp(rng, "w", [C], nc=0.3))
    if "b" in aff:
        ts.append(inp(rng, "b", [C], nc=0.3))
    return {"groups": G, "eps": pick(rng, [1e-5, 1e-5, 1e-3, 0.1])}, ts


def torch_group_norm(T, P):
    # torch.group_norm, not F.group_norm: F refuses groups of one element ("Expected more than 1
    # value per channel"), which are well defined (var = 0). torch 1.13's backward fails ("tensor
    # does not have a device") with a bias but no weight: pass a constant weight of ones then.
    w, b = T.get("w"), T.get("b")
    if w is None and b is not None:
        w = torch.ones(T["x"].shape[1])
    return torch.group_norm(T["x"], P["groups"], w, b, P["eps"])


@op("group_norm", weight=1.2)
def _group_norm():
    return gn_gen, torch_group_norm


@op("group_norm_silu", weight=1.2)
def _group_norm_silu():
    return gn_gen, lambda T, P: F.silu(torch_group_norm(T, P))


# ---- attention and rotary -------------------------------------------------------------------------------------
@op("sdpa", weight=2.0)
def _sdpa():
    def gen(rng):
        lead = pick(rng, [[], [1], [3], [2, 3], [1, 2], [2, 1, 2]])
        Tq, Tk = pick(rng, [1, 2, 5, 16, 17, 63, 64, 65, 100, 130]), pick(rng, [1, 3, 5, 16, 31, 64, 65, 70, 129])
        r = rng.random()
        if r < 0.3:
            Tk = Tq
        elif r < 0.45:  # decoding with a KV cache: a few new queries, many keys
            Tq, Tk = pick(rng, [1, 2, 3]), pick(rng, [7, 17, 65, 129])
        d, dv = pick(rng, [1, 3, 8, 16, 17, 32, 64, 80]), pick(rng, [1, 4, 8, 16, 33, 64])
        if rng.random() < 0.4:
            dv = d
        P = {"causal": int(rng.random() < 0.5)}
        if rng.random() < 0.3:
            P["scale"] = pick(rng, [0.0, 1.0, 0.37, 2.5, -0.5])
        ts = []
        # permuted [B, T, H, d] -> [B, H, T, d] views (how a model splits heads), or random layouts
        for name, T_, dd in (("q", Tq, d), ("k", Tk, d), ("v", Tk, dv)):
            shape = lead + [T_, dd]
            if name != "q" and len(lead) >= 2 and lead[-1] > 1 and rng.random() < 0.2:
                # k/v shared by the heads (multi-query attention): a stride-0 expanded view
                base = lead[:-1] + [1, T_, dd]
                ts.append(TS(name, randn(rng, tuple(base)), True, [("expand",) + tuple(shape)]))
            elif len(lead) >= 2 and rng.random() < 0.4:
                n = len(shape)
                perm = list(range(n - 3)) + [n - 2, n - 3, n - 1]  # [..., T, H, d] -> [..., H, T, d]
                base = [shape[p] for p in perm]
                ts.append(TS(name, randn(rng, tuple(base)), True, [("permute",) + tuple(perm)]))
            else:
                ts.append(inp(rng, name, shape, nc=0.3))
        if rng.random() < 0.15:  # large logits
            for t in ts[:2]:
                t.base *= 6.0
        mkind = pick(rng, ["none", "none", "full", "keys", "bcast", "rows_all_false"])
        if mkind != "none":
            score = lead + [Tq, Tk]
            if mkind == "full":
                mshape = score
            elif mkind == "keys":
                mshape = [Tk]
            else:
                mshape = [s if rng.random() < 0.5 else 1 for s in score[:-2]] + [Tq if rng.random() < 0.6 else 1, Tk]
            dens = pick(rng, [0.2, 0.5, 0.9])
            m = rng.random(mshape) < dens
            if mkind == "rows_all_false" and len(mshape) >= 2:
                m[..., 0, :] = False
            ts.append(TS("_mask", m, False, [], dtype="bool"))
            P["_mask"] = mkind
        return P, ts

    def ref(T, P):
        # tapegrad's documented conventions: causal aligned bottom-right (query i sees keys
        # j <= i + Tk - Tq); rows with no visible key give zero output and zero gradient.
        q, k, v = T["q"], T["k"], T["v"]
        d = q.shape[-1]
        scale = P["scale"] if "scale" in P else (1.0 / math.sqrt(d) if d > 0 else 1.0)
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        Tq, Tk = s.shape[-2], s.shape[-1]
        vis = torch.ones(s.shape, dtype=torch.bool)
        if P["causal"]:
            i = torch.arange(Tq).unsqueeze(1)
            j = torch.arange(Tk).unsqueeze(0)
            vis = vis & (j <= i + Tk - Tq)
        if "_mask" in T:
            vis = vis & T["_mask"]
        anyv = vis.any(dim=-1, keepdim=True)
        s = s.masked_fill(~vis, float("-inf")).masked_fill(~anyv, 0.0)
        p = torch.softmax(s, dim=-1) * anyv
        return torch.matmul(p, v)
    return gen, ref


@op("apply_rotary")
def _apply_rotary():
    def gen(rng):
        lead = pick(rng, [[], [2], [2, 3], [1, 4], [2, 1, 3]])
        T_, d = pick(rng, [1, 2, 5, 16, 17]), pick(rng, [2, 4, 6, 8, 16, 34, 64])
        h = d // 2
        kind = pick(rng, ["shared", "shared", "bcast", "full"])
        if kind == "shared" or not lead:
            tshape = [T_, h]
        elif kind == "full":
            tshape = lead + [T_, h]
        else:
            tshape = [s if rng.random() < 0.5 else 1 for s in lead] + [T_, h]
            tshape = tshape[int(rng.integers(0, len(lead) + 1)):] if rng.random() < 0.3 else tshape
            if len(tshape) < 2:
                tshape = [T_, h]
        # cos and sin tables as given arrays (independent values, so that a swap or a wrong
        # index cannot go unnoticed); half the time real cos/sin of random angles.
        if rng.random() < 0.5:
            ang = rng.uniform(-10, 10, size=tshape)
            c, s = np.cos(ang), np.sin(ang)
        else:
            c, s = randn(rng, tuple(tshape)), randn(rng, tuple(tshape))
        layout = pick(rng, ["interleaved", "half_split"])
        ts = [inp(rng, "x", lead + [T_, d], nc=0.4), TS("_cos", c, False), TS("_sin", s, False)]
        return {"layout": layout}, ts

    def ref(T, P):
        x, c, s = T["x"], T["_cos"], T["_sin"]
        d = x.shape[-1]
        if P["layout"] == "interleaved":
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
        a, b = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([a * c - b * s, a * s + b * c], dim=-1)
    return gen, ref


# ---- FFT family ----------------------------------------------------------------------------------------------------
FFT_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 25, 31, 32, 49, 64, 97, 100, 127, 128, 210, 243,
               256, 289, 1000, 1024, 1031]


@op("rfft", weight=1.2)
def _rfft():
    def gen(rng):
        L = pick(rng, FFT_LENGTHS)
        lead = pick(rng, [[], [1], [3], [2, 5], [17], [2, 17], [33]])
        P = {}
        r = rng.random()
        if r < 0.3:
            P["n"] = int(rng.integers(1, L + 1))  # truncation (or n == L)
        elif r < 0.6:
            P["n"] = L + int(rng.integers(1, L + 8))  # zero padding
        elif r < 0.7:
            P["n"] = -1
        return P, [inp(rng, "x", lead + [L], nc=0.4)]

    def ref(T, P):
        n = P.get("n", -1)
        return torch.view_as_real(torch.fft.rfft(T["x"], n=None if n == -1 else n))
    return gen, ref


@op("irfft", weight=1.2)
def _irfft():
    def gen(rng):
        m = pick(rng, [1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 50, 65, 129, 513])
        lead = pick(rng, [[], [1], [3], [2, 5]])
        P = {}
        r = rng.random()
        if r < 0.3 and m > 1:
            P["n"] = -1 if rng.random() < 0.5 else 2 * (m - 1)
        elif r < 0.5:
            P["n"] = 2 * (m - 1) + 1  # odd length, full spectrum
        elif r < 0.75:
            P["n"] = int(rng.integers(1, 2 * m + 1))  # fewer bins used than given / odd / even
        else:
            P["n"] = 2 * m + int(rng.integers(1, 2 * m + 10))  # missing bins are zeros
        return P, [inp(rng, "x", lead + [m, 2], nc=0.4)]

    def ref(T, P):
        n = P.get("n", -1)
        X = as_c(T["x"])
        return torch.fft.irfft(X, n=None if n == -1 else n)
    return gen, ref


@op("fft")
def _fft():
    def gen(rng):
        n = pick(rng, FFT_LENGTHS)
        lead = pick(rng, [[], [1], [3], [2, 5]])
        return {"inverse": int(rng.random() < 0.5)}, [inp(rng, "x", lead + [n, 2], nc=0.4)]

    def ref(T, P):
        X = as_c(T["x"])
        return torch.view_as_real(torch.fft.ifft(X) if P["inverse"] else torch.fft.fft(X))
    return gen, ref


def complex_pair_gen(rng, with_b=True):
    sa = pick(rng, [[], [1], [5], [3, 4], [2, 1, 3], [17]])
    sb = list(sa)
    if with_b and sa and rng.random() < 0.5:  # broadcast the leading dims
        sb = [1 if rng.random() < 0.5 else s for s in sa]
        if rng.random() < 0.3:
            sb = sb[1:]
    mag = pick(rng, [1.0, 1.0, 1.0, 1e-150, 1e150])
    data = (lambda r, s: special_mix(r, s, [0.0, 1.0, -2.0], 0.15, mag))
    ts = [inp(rng, "a", sa + [2], nc=0.3, gen=data)]
    if with_b:
        ts.append(inp(rng, "b", sb + [2], nc=0.3, gen=lambda r, s: randn(r, s, mag)))
    return {"_mag": mag}, ts


def as_c(t):
    # a fresh row-major copy (t.contiguous() may keep odd strides of size-1 dims, which
    # view_as_complex rejects); copy_ is differentiable
    return torch.view_as_complex(torch.empty(t.shape).copy_(t))


@op("complex_mul")
def _complex_mul():
    return complex_pair_gen, lambda T, P: torch.view_as_real(as_c(T["a"]) * as_c(T["b"]))


@op("complex_div")
def _complex_div():
    return complex_pair_gen, lambda T, P: torch.view_as_real(as_c(T["a"]) / as_c(T["b"]))


@op("complex_conj")
def _complex_conj():
    return (lambda rng: complex_pair_gen(rng, False)), \
        lambda T, P: torch.view_as_real(torch.conj(as_c(T["a"])).resolve_conj())


@op("complex_abs")
def _complex_abs():
    return (lambda rng: complex_pair_gen(rng, False)), lambda T, P: torch.abs(as_c(T["a"]))


@op("fft_conv", weight=1.5)
def _fft_conv():
    def gen(rng):
        L = pick(rng, [1, 2, 3, 7, 16, 33, 100, 128, 257, 1024])
        Lk = pick(rng, [1, 2, 3, 5, 16, 64, 100, L, L + 3])
        kind = pick(rng, ["BCL_CL", "BCL_CL", "same", "k1d", "u1d", "both_bcast", "k_lead1", "k_bcast_mid"])
        B, C = pick(rng, [1, 2, 3]), pick(rng, [1, 2, 4, 5, 17])
        su, sk = {"BCL_CL": ([B, C], [C]), "same": ([B, C], [B, C]), "k1d": ([B, C], []), "u1d": ([], [C]),
                  "both_bcast": ([1, C], [B, 1]), "k_lead1": ([B, C], [1, 1, C]),
                  "k_bcast_mid": ([B, C, 2], [B, 1, 2])}[kind]
        P = {"causal": int(rng.random() < 0.7), "recompute": int(rng.random() < 0.3)}
        return P, [inp(rng, "u", su + [L], nc=0.3), inp(rng, "k", sk + [Lk], nc=0.3)]

    def ref(T, P):
        # direct convolution: y[t] = sum_s k[s] u[t - s] over the broadcast leading dims
        u, k = T["u"], T["k"]
        L, Lk = u.shape[-1], k.shape[-1]
        lead = torch.broadcast_shapes(u.shape[:-1], k.shape[:-1])
        ub = u.expand(*lead, L).reshape(-1, L)
        kb = k.expand(*lead, Lk).reshape(-1, Lk)
        R = ub.shape[0]
        y = F.conv1d(ub.reshape(1, R, L), kb.flip(-1).reshape(R, 1, Lk), padding=Lk - 1, groups=R)
        y = y.reshape(*lead, L + Lk - 1)
        return y[..., :L] if P["causal"] else y
    return gen, ref


# ---- softmax and losses -------------------------------------------------------------------------------------------
@op("softmax")
def _softmax():
    def gen(rng):
        shape = pick(rng, [[], [1], [7], [3, 5], [2, 3, 4], [2, 1, 33], [4, 1003], [2, 20000], [40, 3, 17]])
        axis = int(rng.integers(-len(shape), len(shape))) if shape else -1
        scale = pick(rng, [1.0, 1.0, 30.0, 1e3])
        data = pick(rng, [lambda r, s: randn(r, s, scale), ties,
                          lambda r, s: special_mix(r, s, [-np.inf], 0.2, scale)])
        return {"axis": axis}, [inp(rng, "x", shape, nc=0.4, gen=data)]
    return gen, lambda T, P: torch.softmax(T["x"], dim=P["axis"])


@op("log_softmax")
def _log_softmax():
    return OPS["softmax"][0], lambda T, P: torch.log_softmax(T["x"], dim=P["axis"])


@op("cross_entropy", weight=1.5)
def _cross_entropy():
    def gen(rng):
        N, C = pick(rng, [1, 2, 5, 17]), pick(rng, [1, 2, 3, 10, 33])
        extra = pick(rng, [[], [], [3], [2, 4]])
        ign = pick(rng, [-100, -100, -1, 0, 1, 7])
        tshape = [N] + extra
        t = rng.integers(0, C, size=tshape)
        if rng.random() < 0.6:  # some ignored positions
            m = rng.random(tshape) < pick(rng, [0.2, 0.5, 1.0])
            t[m] = ign
        scale = pick(rng, [1.0, 1.0, 20.0])
        P = {"ignore_index": ign, "label_smoothing": pick(rng, [0.0, 0.0, 0.1, 0.5, 1.0]),
             "reduction": pick(rng, ["mean", "sum", "none"])}
        x = inp(rng, "x", [N, C] + extra, nc=0.3, gen=lambda r, s: randn(r, s, scale))
        return P, [x, TS("_target", t.astype(np.int64), False, [], dtype="i64")]

    def ref(T, P):
        return F.cross_entropy(T["x"], T["_target"], ignore_index=P["ignore_index"],
                               label_smoothing=P["label_smoothing"], reduction=P["reduction"])
    return gen, ref


def loss_pair(rng):
    shape = pick(rng, [[], [1], [7], [3, 5], [2, 3, 4], [1003]])
    scale = pick(rng, [1.0, 1.0, 10.0, 60.0])
    P = {"reduction": pick(rng, ["mean", "sum", "none"])}
    x = inp(rng, "x", shape, nc=0.3, gen=lambda r, s: special_mix(r, s, [0.0], 0.1, scale))
    return P, x, shape


@op("bce_with_logits")
def _bce():
    def gen(rng):
        P, x, shape = loss_pair(rng)
        # probabilities in [0, 1], some exactly 0 or 1
        t = inp(rng, "target", shape, nc=0.3,
                gen=lambda r, s: np.where(r.random(s) < 0.3, r.integers(0, 2, s), r.uniform(0, 1, s)).astype(float))
        return P, [x, t]
    return gen, lambda T, P: F.binary_cross_entropy_with_logits(T["x"], T["target"], reduction=P["reduction"])


@op("mse_loss")
def _mse():
    def gen(rng):
        P, x, shape = loss_pair(rng)
        return P, [x, inp(rng, "target", shape, nc=0.3)]
    return gen, lambda T, P: F.mse_loss(T["x"], T["target"], reduction=P["reduction"])


@op("l1_loss")
def _l1():
    def gen(rng):
        P, x, shape = loss_pair(rng)
        t = inp(rng, "target", shape, nc=0.0)
        if x.views == [] and rng.random() < 0.5 and x.base.size:  # ties: input == target somewhere
            m = rng.random(x.base.shape) < 0.3
            t.base[m] = x.base[m]
        return P, [x, t]
    return gen, lambda T, P: F.l1_loss(T["x"], T["target"], reduction=P["reduction"])


# ---- elementwise -----------------------------------------------------------------------------------------
EW_SHAPES = [[], [1], [7], [17], [1003], [3, 5], [2, 3, 4], [4, 33], [3, 40000]]


def unary(name, data, ref, params=None, weight=0.34):
    def gen(rng):
        shape = pick(rng, EW_SHAPES)
        P = dict(params(rng)) if params else {}
        return P, [inp(rng, "x", shape, nc=0.4, gen=data)]
    OPS[name] = (gen, ref, weight, name)


GEN_DATA = lambda r, s: special_mix(r, s, [0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -3.0], 0.2, 2.0)
POS_DATA = lambda r, s: np.abs(special_mix(r, s, [1.0, 0.5, 1e-3, 100.0], 0.2, 2.0)) + 1e-3
WIDE = lambda r, s: special_mix(r, s, [0.0, 40.0, -40.0, 800.0, -800.0, 1e-8], 0.2, 8.0)

unary("neg", GEN_DATA, lambda T, P: -T["x"])
unary("exp", WIDE, lambda T, P: torch.exp(T["x"]))
unary("log", lambda r, s: special_mix(r, s, [0.0, 1.0], 0.1, 1.0) ** 2, lambda T, P: torch.log(T["x"]))
unary("log1p", lambda r, s: np.abs(GEN_DATA(r, s)) - 0.9, lambda T, P: torch.log1p(T["x"]))
unary("expm1", WIDE, lambda T, P: torch.expm1(T["x"]))
unary("sqrt", lambda r, s: special_mix(r, s, [0.0, 1.0, 4.0], 0.2, 1.0) ** 2, lambda T, P: torch.sqrt(T["x"]))
unary("rsqrt", POS_DATA, lambda T, P: torch.rsqrt(T["x"]))
unary("square", GEN_DATA, lambda T, P: torch.square(T["x"]))
unary("reciprocal", lambda r, s: special_mix(r, s, [1.0, -1.0, 1e-3, 1e3], 0.2, 2.0),
      lambda T, P: torch.reciprocal(T["x"]))
unary("abs", GEN_DATA, lambda T, P: torch.abs(T["x"]))
unary("sign", GEN_DATA, lambda T, P: torch.sign(T["x"]))
unary("sin", WIDE, lambda T, P: torch.sin(T["x"]))
unary("cos", WIDE, lambda T, P: torch.cos(T["x"]))
unary("tanh", WIDE, lambda T, P: torch.tanh(T["x"]))
unary("erf", WIDE, lambda T, P: torch.erf(T["x"]))
unary("round", lambda r, s: special_mix(r, s, [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0], 0.4, 3.0),
      lambda T, P: torch.round(T["x"]))
unary("floor", GEN_DATA, lambda T, P: torch.floor(T["x"]))
unary("ceil", GEN_DATA, lambda T, P: torch.ceil(T["x"]))
unary("sigmoid", WIDE, lambda T, P: torch.sigmoid(T["x"]))
unary("relu", GEN_DATA, lambda T, P: torch.relu(T["x"]))
unary("leaky_relu", GEN_DATA, lambda T, P: F.leaky_relu(T["x"], P.get("slope", 0.01)),
      lambda rng: {} if rng.random() < 0.3 else {"slope": pick(rng, [0.2, 0.0, -0.3, 1.5])})
unary("gelu", WIDE, lambda T, P: F.gelu(T["x"]))
unary("gelu_tanh", WIDE, lambda T, P: F.gelu(T["x"], approximate="tanh"))
unary("silu", WIDE, lambda T, P: F.silu(T["x"]))
unary("softplus", WIDE, lambda T, P: F.softplus(T["x"], P["beta"], P["threshold"]),
      lambda rng: {"beta": pick(rng, [1.0, 0.5, 2.0, 10.0]), "threshold": pick(rng, [20.0, 1.0, 5.0])})
unary("pow_scalar", GEN_DATA, lambda T, P: torch.pow(T["x"], P["exponent"]),
      lambda rng: {"exponent": pick(rng, [2.0, 3.0, -1.0, -2.0, 0.5, 1.5, 0.0, 1.0, 2.5, -0.5, 64.0, 65.0, 7.0])})
unary("clamp", GEN_DATA, lambda T, P: torch.clamp(T["x"], P.get("low"), P.get("high")),
      lambda rng: pick(rng, [{"low": -0.5, "high": 1.0}, {"low": 0.0}, {"high": 0.5}, {"low": 1.0, "high": 1.0},
                             {"low": -1.0, "high": 2.5}]))
for _n, _f in (("add_scalar", lambda x, s: x + s), ("sub_scalar", lambda x, s: x - s),
               ("rsub_scalar", lambda x, s: s - x), ("mul_scalar", lambda x, s: x * s),
               ("div_scalar", lambda x, s: x / s), ("rdiv_scalar", lambda x, s: s / x)):
    unary(_n, GEN_DATA if _n != "rdiv_scalar" else POS_DATA, (lambda f: lambda T, P: f(T["x"], P["scalar"]))(_f),
          lambda rng: {"scalar": pick(rng, [2.0, -0.5, 3.25, 1e-3])})


def binary(name, ref, data_a=GEN_DATA, data_b=GEN_DATA, weight=0.5, tie=False):
    def gen(rng):
        sa = pick(rng, EW_SHAPES)
        sb = list(sa)
        if sa and rng.random() < 0.6:  # broadcasting, either side or both
            sb = [1 if rng.random() < 0.5 else s for s in sa]
            if rng.random() < 0.3:
                sb = sb[int(rng.integers(1, len(sb) + 1)):]
            if rng.random() < 0.3:
                sa, sb = sb, sa
        a = inp(rng, "a", sa, nc=0.4, gen=data_a)
        b = inp(rng, "b", sb, nc=0.4, gen=data_b)
        if tie:
            a.base = np.round(a.base)
            b.base = np.round(b.base)
        ts = [a, b]
        if name == "where":
            cshape = pick(rng, [sa, sb, sa[-1:] if sa else []])
            ts.append(TS("_cond", rng.random(cshape) < 0.5, False, [], dtype="bool"))
        return {}, ts
    OPS[name] = (gen, ref, weight, name)


binary("add", lambda T, P: T["a"] + T["b"])
binary("sub", lambda T, P: T["a"] - T["b"])
binary("mul", lambda T, P: T["a"] * T["b"])
binary("div", lambda T, P: T["a"] / T["b"], data_b=lambda r, s: special_mix(r, s, [1.0, -2.0, 1e-3], 0.2, 2.0))
binary("pow", lambda T, P: torch.pow(T["a"], T["b"]),
       data_a=lambda r, s: np.abs(special_mix(r, s, [0.0, 1.0, 2.0], 0.2, 2.0)),
       data_b=lambda r, s: special_mix(r, s, [0.0, 1.0, 2.0, 0.5, 3.0], 0.3, 1.0))
binary("pow_negbase_intexp", lambda T, P: torch.pow(T["a"], T["b"]), data_a=GEN_DATA,
       data_b=lambda r, s: ties(r, s, -2, 3))
OPS["pow_negbase_intexp"] = OPS["pow_negbase_intexp"][:3] + ("pow",)
binary("minimum", lambda T, P: torch.minimum(T["a"], T["b"]), tie=True)
binary("maximum", lambda T, P: torch.maximum(T["a"], T["b"]), tie=True)
binary("where", lambda T, P: torch.where(T["_cond"], T["a"], T["b"]))


# ---- reductions ------------------------------------------------------------------------------------------------------
def red_gen(allow_multi, data, extra=None):
    def gen(rng):
        shape = pick(rng, [[7], [1], [3, 5], [2, 3, 4], [4, 1003], [2, 1, 3], [40000], [3, 20001], [300, 70]])
        nd = len(shape)
        if allow_multi:
            k = int(rng.integers(0, nd + 1))
            axes = sorted(rng.choice(nd, size=k, replace=False).tolist())
            axes = [a - nd if rng.random() < 0.3 else a for a in axes]
            P = {"axes": axes, "keepdim": int(rng.random() < 0.5)}
        else:
            P = {"axis": int(rng.integers(-nd, nd)), "keepdim": int(rng.random() < 0.5)}
        if extra:
            P.update(extra(rng))
        if "correction" in P:  # at most (reduced elements - 1): beyond, the variance is undefined
            count = int(np.prod([shape[a] for a in P["axes"]] if P["axes"] else shape))
            P["correction"] = min(P["correction"], max(count - 1, 0))
        return P, [inp(rng, "x", shape, nc=0.4, gen=data(rng))]
    return gen


def red_ties(rng):
    return pick(rng, [GEN_DATA, ties, lambda r, s: special_mix(r, s, [0.0], 0.3, 1.0)])


def dims_of(T, P):
    nd = T["x"].dim()
    ax = P["axes"]
    return tuple(range(nd)) if not ax else tuple(a % nd for a in ax)


def _ref_prod(T, P):
    x = T["x"]
    dims = sorted(dims_of(T, P), reverse=True)
    for d in dims:
        x = x.prod(dim=d, keepdim=bool(P["keepdim"]))
    return x


for _n, _f, _extra in (
        ("sum", lambda x, d, k, P: x.sum(dim=d, keepdim=k), None),
        ("mean", lambda x, d, k, P: x.mean(dim=d, keepdim=k), None),
        ("amax", lambda x, d, k, P: x.amax(dim=d, keepdim=k), None),
        ("amin", lambda x, d, k, P: x.amin(dim=d, keepdim=k), None),
        ("logsumexp", lambda x, d, k, P: torch.logsumexp(x, dim=d, keepdim=k), None),
        ("var", lambda x, d, k, P: torch.var(x, dim=d, correction=int(P["correction"]), keepdim=k),
         lambda rng: {"correction": pick(rng, [0, 1, 1, 2])}),
        ("std", lambda x, d, k, P: torch.std(x, dim=d, correction=int(P["correction"]), keepdim=k),
         lambda rng: {"correction": pick(rng, [0, 1, 1])}),
        ("norm", lambda x, d, k, P: torch.linalg.vector_norm(x, ord=P["p"], dim=d, keepdim=k),
         lambda rng: {"p": pick(rng, [1.0, 2.0, math.inf])})):
    OPS[_n] = (red_gen(True, red_ties, _extra),
               (lambda f: lambda T, P: f(T["x"], dims_of(T, P), bool(P["keepdim"]), P))(_f), 0.5, _n)
def prod_data(rng):
    # values of magnitude ~1 (so that products of 10^4 or 10^5 factors neither overflow nor
    # underflow: inf * 0 would make the reference depend on the multiplication order), with signs,
    # ties and exact zeros (the interesting case of prod's backward)
    def gen(r, s):
        x = np.exp(0.02 * r.standard_normal(s)) * np.where(r.random(s) < 0.3, -1.0, 1.0)
        n = int(np.prod(s)) if len(s) else 1
        x = np.where(r.random(s) < pick(rng, [0.0, 0.5 / max(n, 1), 2.0 / max(n, 1), 0.1]), 0.0, x)
        return np.where(r.random(s) < 0.1, np.round(x), x)
    small = red_ties(rng)  # the generic data of the other reductions, for small tensors only
    use_small = rng.random() < 0.3
    return lambda r, s: small(r, s) if use_small and int(np.prod(s)) <= 64 else gen(r, s)


OPS["prod"] = (red_gen(True, prod_data), _ref_prod, 0.5, "prod")
OPS["cumsum"] = (red_gen(False, red_ties), lambda T, P: torch.cumsum(T["x"], P["axis"]), 0.4, "cumsum")
OPS["max_axis"] = (red_gen(False, red_ties), lambda T, P: torch.max(T["x"], P["axis"], bool(P["keepdim"])).values,
                   0.4, "max_axis")
OPS["min_axis"] = (red_gen(False, red_ties), lambda T, P: torch.min(T["x"], P["axis"], bool(P["keepdim"])).values,
                   0.4, "min_axis")


# ---------------------------------------------------------------------------------------------------
# Case building, the driver protocol and comparison
# ---------------------------------------------------------------------------------------------------
def fmt_num(v):
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


class Case:
    pass


def build_case(name, idx, seed):
    gen, ref, _, driver_op = OPS[name]
    rng = np.random.default_rng([seed, idx, sum(map(ord, name)) * 131 + len(name)])
    P, ts = gen(rng)
    c = Case()
    c.name, c.id, c.op, c.P, c.ts = name, f"{name}#{idx}", driver_op, P, ts
    leaves = {t.name: t.torch_leaf() for t in ts}
    T = {t.name: apply_views(leaves[t.name], t.views) for t in ts}
    c.shapes = {t.name: list(T[t.name].shape) for t in ts}
    c.torch_error = None
    try:
        out = ref(T, P)
    except Exception as e:  # a generator bug (the configuration should be valid for torch)
        c.torch_error = f"{type(e).__name__}: {e}"
        c.cot = None
        return c
    cot = np.array(rng.standard_normal(tuple(out.shape)), dtype=np.float64)
    if name in COT_FIX:
        cot = COT_FIX[name](out.detach().numpy(), cot)
    c.cot = cot
    expected = {"out": out.detach().numpy().copy()}
    grad_names = [t.name for t in ts if t.grad]
    gs = [None] * len(grad_names)
    if grad_names and out.requires_grad:
        try:
            gs = torch.autograd.grad(out, [leaves[n] for n in grad_names], torch.from_numpy(cot), allow_unused=True)
        except Exception as e:
            c.torch_error = f"backward: {type(e).__name__}: {e}"
            return c
    for n, g in zip(grad_names, gs):
        expected["grad." + n] = (torch.zeros_like(leaves[n]) if g is None else g).detach().numpy().copy()
    c.expected = expected
    return c


def describe(c):
    parts = []
    for t in c.ts:
        s = "x".join(str(d) for d in c.shapes[t.name]) or "scalar"
        if t.views:
            base = "x".join(str(d) for d in t.base.shape)
            s += f"[{base}.{view_desc(t.views)}]"
        if t.dtype != "f64":
            s += f":{t.dtype}"
        parts.append(f"{t.name}={s}")
    for k, v in c.P.items():
        if isinstance(v, float):
            v = f"{v:g}"
        parts.append(f"{k.lstrip('_')}={v}".replace(" ", ""))
    return " ".join(parts)


def write_cases(path, cases):
    with open(path, "wb") as f:
        for c in cases:
            f.write(f"CASE {c.id} {c.op}\n".encode())
            for k, v in c.P.items():
                if k.startswith("_"):
                    continue
                if isinstance(v, str):
                    f.write(f"S {k} {v}\n".encode())
                else:
                    vs = v if isinstance(v, (list, tuple)) else [v]
                    f.write(("N " + k + "".join(" " + fmt_num(x) for x in vs) + "\n").encode())
            tensors = list(c.ts) + [TS("cot", c.cot, False)]
            for t in tensors:
                arr = t.base
                arr = np.array(arr, dtype={"f64": "<f8", "i64": "<i8", "bool": np.uint8}[t.dtype], order="C")
                raw = arr.tobytes()
                dims = " ".join(str(d) for d in arr.shape)
                f.write(f"T {t.name} {t.dtype} {int(t.grad)} {arr.ndim}{(' ' + dims) if dims else ''}\n".encode())
                f.write(raw)
                for v in t.views:
                    f.write(("V " + " ".join(str(x) for x in v) + "\n").encode())
            f.write(b"END\n")


def read_results(path):
    data = open(path, "rb").read()
    pos, res = 0, {}

    def line():
        nonlocal pos
        e = data.index(b"\n", pos)
        s = data[pos:e].decode(errors="replace")
        pos = e + 1
        return s

    while pos < len(data):
        head = line()
        if not head:
            continue
        parts = head.split(" ", 3)
        assert parts[0] == "RESULT", head
        cid, status = parts[1], parts[2]
        r = {"status": status, "msg": parts[3] if len(parts) > 3 else "", "tensors": {}, "undefined": []}
        while True:
            l = line()
            if l == "END":
                break
            if l.startswith("Z "):
                r["undefined"].append(l[2:])
                continue
            p = l.split()
            assert p[0] == "T", l
            nd = int(p[2])
            shape = tuple(int(x) for x in p[3:3 + nd])
            n = int(np.prod(shape)) if shape else 1
            arr = np.frombuffer(data, dtype="<f8", count=n, offset=pos).reshape(shape).copy()
            pos += 8 * n
            r["tensors"][p[1]] = arr
        res[cid] = r
    return res


def compare(ref, got):
    """(ok, relative error, note)."""
    if tuple(ref.shape) != tuple(got.shape):
        return False, math.inf, f"shape {list(got.shape)} vs torch {list(ref.shape)}"
    if ref.size == 0:
        return True, 0.0, ""
    fr, fg = np.isfinite(ref), np.isfinite(got)
    bad_nf = (fr != fg) | (~fr & ~fg & ~((np.isnan(ref) & np.isnan(got)) | (ref == got)))
    scale = 1.0 + (np.max(np.abs(ref[fr])) if fr.any() else 0.0)
    both = fr & fg
    err = float(np.max(np.abs(ref[both] - got[both]))) if both.any() else 0.0
    rel = err / scale
    note = ""
    if bad_nf.any():
        i = np.unravel_index(int(np.argmax(bad_nf)), ref.shape)
        note = f"non-finite mismatch at {list(i)}: tapegrad {got[i]!r} vs torch {ref[i]!r} ({int(bad_nf.sum())} elems)"
        return False, math.inf if rel <= RTOL else rel, note
    if rel > RTOL:
        d = np.where(both, np.abs(ref - got), 0)
        i = np.unravel_index(int(np.argmax(d)), ref.shape)
        note = f"worst at {list(i)}: tapegrad {got[i]!r} vs torch {ref[i]!r}"
    return rel <= RTOL, rel, note


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30, help="cases per heavy op (elementwise ops get max(4, N//3))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--op", action="append", default=[], help="regex on op names (repeatable; full match)")
    ap.add_argument("--driver", default=os.path.join(REPO, "build", "tests", "torch_diff"))
    ap.add_argument("--threads", type=int, default=0, help="tapegrad threads (0: default)")
    ap.add_argument("--failures-only", action="store_true", help="print only FAIL lines and the summary")
    ap.add_argument("--list", action="store_true", help="list the op names and exit")
    ap.add_argument("--only", help="run only the case with this id (e.g. conv2d#12), whatever --cases says")
    ap.add_argument("--keep", help="keep the case/result files in this directory")
    args = ap.parse_args()
    if args.list:
        print("\n".join(OPS))
        return 0
    names = [n for n in OPS if not args.op or any(re.fullmatch(p, n) for p in args.op)]
    only = None
    if args.only:
        only_name, _, only_idx = args.only.partition("#")
        if only_name not in OPS or not only_idx.isdigit():
            print(f"--only: expected OP#INDEX with a known op, got {args.only!r}", file=sys.stderr)
            return 2
        names, only = [only_name], int(only_idx)
    if not names:
        print(f"no op matches {args.op}; --list shows them", file=sys.stderr)
        return 2
    if not os.access(args.driver, os.X_OK):
        print(f"driver {args.driver} not found (cmake --build build --target torch_diff)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)

    t0 = time.time()
    cases = []
    for n in names:
        w = OPS[n][2]
        count = max(4, int(round(args.cases * w)))
        for i in [only] if only is not None else range(count):
            cases.append(build_case(n, i, args.seed))
    t_torch = time.time() - t0

    results = {}
    tmp = args.keep or tempfile.mkdtemp(prefix="torch_diff_")
    os.makedirs(tmp, exist_ok=True)
    runnable = [c for c in cases if c.torch_error is None]
    chunk = 400
    t1 = time.time()
    for k in range(0, len(runnable), chunk):
        part = runnable[k:k + chunk]
        cin, cout = os.path.join(tmp, f"cases{k // chunk}.bin"), os.path.join(tmp, f"results{k // chunk}.bin")
        write_cases(cin, part)
        cmd = [args.driver, cin, cout] + (["--threads", str(args.threads)] if args.threads else [])
        p = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            # a crash: rerun the chunk case by case to pin it down
            for c in part:
                write_cases(cin, [c])
                q = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
                if q.returncode != 0:
                    results[c.id] = {"status": "CRASH", "msg": f"driver exit {q.returncode}: {q.stderr.strip()[-300:]}",
                                     "tensors": {}, "undefined": []}
                else:
                    results.update(read_results(cout))
        else:
            results.update(read_results(cout))
    t_driver = time.time() - t1
    if not args.keep:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)

    stats = {n: [0, 0] for n in names}
    worst = {n: 0.0 for n in names}
    failures = []
    for c in cases:
        desc = describe(c)
        if c.torch_error is not None:
            line = f"FAIL {c.id} {desc} | torch rejected the generated case: {c.torch_error}"
            ok = False
        else:
            r = results.get(c.id)
            if r is None or r["status"] != "OK":
                st = "missing" if r is None else r["status"]
                line = f"FAIL {c.id} {desc} | tapegrad {st}: {'' if r is None else r['msg']}"
                ok = False
            else:
                ok, errs, notes = True, [], []
                for tn, ref in c.expected.items():
                    got = r["tensors"].get(tn)
                    if got is None:
                        ok = False
                        errs.append(f"{tn}=missing")
                        continue
                    good, rel, note = compare(ref, got)
                    worst[c.name] = max(worst[c.name], rel)
                    errs.append(f"{tn}={rel:.1e}" + ("" if good else "!"))
                    if not good:
                        ok = False
                        notes.append(f"{tn}: {note}")
                if r["undefined"]:
                    notes.append("undefined grads (reported as zeros): " + ",".join(r["undefined"]))
                line = f"{'PASS' if ok else 'FAIL'} {c.id} {desc} | " + " ".join(errs)
                if notes and not ok:
                    line += " | " + "; ".join(notes)
        stats[c.name][0 if ok else 1] += 1
        if not ok:
            failures.append(line)
        if not ok or not args.failures_only:
            print(line)

    print()
    print(f"summary (seed {args.seed}; tolerance max|diff| <= {RTOL:g} * (1 + max|torch|) per tensor; "
          f"torch {t_torch:.1f}s, tapegrad driver {t_driver:.1f}s)")
    print(f"  {'op':<22} {'cases':>5} {'pass':>5} {'fail':>5}  worst rel. error")
    for n in names:
        p, f = stats[n]
        print(f"  {n:<22} {p + f:>5} {p:>5} {f:>5}  {worst[n]:.1e}")
    tp = sum(s[0] for s in stats.values())
    tf = sum(s[1] for s in stats.values())
    print(f"  {'total':<22} {tp + tf:>5} {tp:>5} {tf:>5}")
    return 1 if tf else 0


if __name__ == "__main__":
    sys.exit(main())
