#!/usr/bin/python3
"""Differential checker: tapegrad's ops against PyTorch 1.13, forward and backward, in f64 and f32.

    /usr/bin/python3 tests/torch/torch_diff.py [--dtype f64|f32|both] [--cases N] [--seed S] [--op REGEX ...]
                                               [--only ID] [--driver PATH] [--threads T] [--failures-only] [--list]

For every op (or the ops whose name matches one of the --op regular expressions) it generates
seeded random configurations (shapes, options, awkward sizes, broadcast and non-contiguous inputs,
ties and special values), computes the outputs and the input gradients of <cotangent, output> with
torch.autograd, runs the same cases through the C++ driver (build/tests/torch_diff, see
torch_diff.cpp for the file protocol) and compares every tensor (dtypes must match torch's too).

f64 (the inputs and cotangents are f64; tapegrad must agree with torch in float64):

    max |tapegrad - torch| <= 1e-9 * (1 + max |torch|)      (per tensor; inf/nan must match exactly)

(f64 cases that pass through f32 -- a cat of mixed dtypes, a view chain through to(f32) -- sum f32
values in an order torch need not share: their tensors are held to 64 eps_f32 instead of 1e-9).

f32 (the inputs and cotangents are rounded to f32 once, so both sides see the same values, and
tapegrad runs in f32): the reference is torch in float64 on those f32 values, ref, and tapegrad's
f32 must not be much worse than torch's own float32 on the same inputs:

    err(x) = max |x - ref|,   err(tapegrad) <= max(8 err(torch f32), 64 eps_f32 (1 + max |ref|))

(per tensor; inf/nan must match ref exactly). The gradient of an input that enters through an
expand is a sum over its copies, and the copies' terms can cancel (a constant layer_norm row): its
floor is 64 eps_f32 (1 + the largest sum of |term| over a leaf element's copies) when that exceeds
1 + max |ref| -- the rounding error of a sum is relative to its terms, not to what is left of them. One documented exception: conv2d cases that take
Winograd F(4x4, 3x3) (forward and input gradient), an algorithm that trades accuracy for speed,
are held to 256 eps_f32 (1 + max |ref|) instead, marked "[Winograd bound]" on their lines.
The f32 cases are generated separately (own seeds),
from f32 generators where the f64 ones do not fit: sizes that reach the fast paths (threaded and
blocked GEMMs, Winograd convolutions, multi-block attention, long non-power-of-two FFTs, long
norm rows) and value ranges that stay well inside f32's.

It prints one line per case (PASS/FAIL, the configuration, the worst error of each tensor relative
to 1 + max |ref|, in f32 also the ratio to torch f32's error), then a summary per op and dtype,
and exits with status 1 if any case failed.

--cases N scales the number of cases of every op by its weight: N for most heavy ops (1.2 N to 2 N
for those with many options: conv2d, conv_transpose2d, upsample, norms, attention, FFTs, losses),
N / 3 to N / 2 for elementwise ops and reductions, at least 4 each. Case "op#i" of seed S and dtype
D is the same whatever --cases and --op select; --only op#i --seed S --dtype D reruns just that one.
--dtype both (the default) runs the f64 cases, then the f32 ones.

Where tapegrad documents a convention that differs from torch, or torch's own result is not a
usable reference, the reference is adapted and a comment at that place says why (attention's
bottom-right causal mask and fully masked rows; nearest upsampling's index rule; max pooling
windows that lie entirely in the padding; std's gradient on constant slices; negative and i32
indices; constant padding of or to empty dims).
"""
import argparse
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
RTOL = 1e-9
EPS32 = float(np.finfo(np.float32).eps)
F32_TORCH_FACTOR, F32_FLOOR_EPS = 8.0, 64.0  # the f32 criterion (module docstring)
# f32 conv2d cases that take Winograd F(4x4, 3x3) (3x3, stride 1, 8+ channels; forward and input
# gradient): that algorithm trades accuracy for speed by design (README "Speed", docs/DESIGN.md):
# its error is up to ~50x that of a direct convolution, ~1e-5 of max |ref|. Those tensors are
# held to this floor instead, and their lines say so.
WINOGRAD_FLOOR_EPS = 256.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------------
# Case description
# ---------------------------------------------------------------------------------------------------
NP_DTYPES = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "i32": np.int32, "bool": np.bool_}
WIRE_DTYPES = {"f64": "<f8", "f32": "<f4", "i64": "<i8", "i32": "<i4", "bool": np.uint8}  # the driver's
TORCH_DTYPES = {torch.float64: "f64", torch.float32: "f32", torch.int64: "i64", torch.int32: "i32", torch.bool: "bool"}


class TS:
    """One input tensor: base data (the leaf) and the views the op sees. The base of a float
    tensor is always held as float64 values (f32-representable ones for dtype f32)."""

    def __init__(self, name, base, grad=True, views=(), dtype="f64"):
        self.name, self.base, self.grad, self.views, self.dtype = name, base, grad, list(views), dtype

    def is_float(self):
        return self.dtype in ("f64", "f32")

    def to_f32(self):
        self.base = np.asarray(self.base, dtype=np.float64).astype(np.float32).astype(np.float64)
        self.dtype = "f32"

    def torch_leaf(self, float_dtype=None):
        """The leaf as a torch tensor; float_dtype (a torch dtype) overrides a float tensor's own."""
        # np.array, not np.ascontiguousarray: the latter turns 0-d arrays into 1-d ones
        t = torch.from_numpy(np.array(self.base, dtype=NP_DTYPES[self.dtype], order="C", copy=True))
        if float_dtype is not None and self.is_float():
            t = t.to(float_dtype)
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
# Op registry: name -> (generator, torch reference, weight, driver op name)
#   generator(rng) -> (params dict, [TS]); params: ints/floats/lists -> numeric, str -> string
#   reference(T, P) -> torch output (a tuple for ops with several outputs), T: name -> torch
#   (viewed) tensor; tensors a reference creates itself take torch's default dtype, which is the
#   case's float dtype
# F32: name -> generator of the f32 cases, where the f64 one does not fit (sizes, value ranges)
# ---------------------------------------------------------------------------------------------------
OPS = {}
F32 = {}


def f32_gen(name, p_big, big, base=None):
    """Registers the f32 generator of `name`: with probability p_big a case from `big` (sizes that
    reach the fast f32 paths), otherwise one from `base` (default: the f64 generator)."""
    base = base or OPS[name][0]
    F32[name] = lambda rng: big(rng) if rng.random() < p_big else base(rng)


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


# f32: products large enough for the threaded, blocked GEMM (over 2^23 multiply-adds: A panels
# packed once per k-block, tiles on threads), some with several k-blocks (k > KC = 384) or column
# chunks (n > NC = 512); the operands' layouts vary as in the f64 cases (transposed ones are packed
# from where they are).
GEMM_M, GEMM_K, GEMM_N = [100, 131, 197, 256, 300], [100, 160, 255, 300, 400, 777], [100, 129, 200, 300, 520, 640]


def matmul_big(rng):
    M, K, N = pick(rng, GEMM_M), pick(rng, GEMM_K), pick(rng, GEMM_N)
    B = [pick(rng, [2, 3])]
    sa, sb = pick(rng, [([M, K], [K, N]), ([M, K], [K, N]), (B + [M, K], [K, N]), (B + [M, K], B + [K, N]),
                        ([M, K], [K]), ([K], [K, N])])
    return {}, [inp(rng, "a", sa, nc=0.5), inp(rng, "b", sb, nc=0.5)]


f32_gen("matmul", 0.4, matmul_big)


@op("bmm")
def _bmm():
    def gen(rng):
        B, M, K, N = pick(rng, [1, 2, 3, 5]), pick(rng, ODD), pick(rng, ODD + [65]), pick(rng, ODD)
        return {}, [inp(rng, "a", [B, M, K], nc=0.4), inp(rng, "b", [B, K, N], nc=0.4)]
    return gen, lambda T, P: torch.bmm(T["a"], T["b"])


def bmm_big(rng):
    B, M, K, N = pick(rng, [2, 3]), pick(rng, GEMM_M), pick(rng, GEMM_K), pick(rng, GEMM_N)
    return {}, [inp(rng, "a", [B, M, K], nc=0.5), inp(rng, "b", [B, K, N], nc=0.5)]


f32_gen("bmm", 0.3, bmm_big)


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


def linear_big(rng):  # a transformer's projections: many rows, the bias fused into the GEMM
    lead, K, N = pick(rng, [[256], [4, 64], [3, 100]]), pick(rng, [100, 256, 400, 768]), pick(rng, [100, 300, 513])
    ts = [inp(rng, "x", lead + [K], nc=0.3), inp(rng, "w", [N, K], nc=0.3)]
    if rng.random() < 0.7:
        ts.append(inp(rng, "b", [N], nc=0.2))
    return {}, ts


f32_gen("linear", 0.4, linear_big)


@op("outer")
def _outer():
    def gen(rng):
        return {}, [inp(rng, "u", [pick(rng, ODD)], nc=0.4), inp(rng, "v", [pick(rng, ODD)], nc=0.4)]
    return gen, lambda T, P: torch.outer(T["u"], T["v"])


@op("pairwise_sq_distances")
def _pairwise_sq_distances():
    def gen(rng):
        D = pick(rng, [1, 3, 8, 33])
        return {}, [inp(rng, "a", [pick(rng, ODD), D], nc=0.4), inp(rng, "b", [pick(rng, ODD), D], nc=0.4)]
    # The direct definition (torch.cdist's matmul path would be the same algebra as tapegrad's).
    return gen, lambda T, P: ((T["a"][:, None, :] - T["b"][None, :, :]) ** 2).sum(-1)


@op("monarch_matmul")
def _monarch_matmul():
    def gen(rng):
        K, J, I, Lo = (pick(rng, [1, 2, 3, 4, 8]) for _ in range(4))
        lead = pick(rng, [[], [1], [5], [2, 3], [33]])
        return {}, [inp(rng, "x", lead + [K * I], nc=0.4), inp(rng, "w1", [K, J, I], nc=0.3),
                    inp(rng, "w2", [J, Lo, K], nc=0.3)]

    def ref(T, P):  # fly's blockdiag_butterfly_multiply_einsum_simple
        x, w1, w2 = T["x"], T["w1"], T["w2"]
        K, J, I = w1.shape
        Lo = w2.shape[1]
        h = torch.einsum("kji,bki->bkj", w1, x.reshape(-1, K, I))
        y = torch.einsum("jlk,bkj->blj", w2, h)
        return y.reshape(*x.shape[:-1], Lo * J)
    return gen, ref


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


# f32: channel counts and planes of real layers, for every path of ops/kernels/conv.cpp: Winograd
# (3x3, stride 1, one group, 8+ channels each side; forward and input gradient), pointwise GEMMs,
# the implicit GEMM (strided down-sampling, dilated and 7x7 kernels), the direct path (RGB input
# layers, depthwise).
def conv2d_big(rng):
    kind = pick(rng, ["winograd", "winograd", "winograd", "pointwise", "down", "rgb", "depthwise", "dilated"])
    groups, stride, pad, dil, kh = 1, [1, 1], [1, 1], [1, 1], 3
    if kind == "winograd":
        C, O = pick(rng, [8, 16, 32, 64, 128]), pick(rng, [8, 16, 32, 64, 128])
        H = pick(rng, [7, 14, 16] + ([28, 30] if C * O <= 4096 else []) + ([56] if C * O <= 512 else []))
        W = H if rng.random() < 0.7 else pick(rng, [9, 14, 28, 31])
        pad = pick(rng, [[1, 1], [1, 1], [0, 0], [0, 1], [2, 2]])
        if rng.random() < 0.15:  # outputs two rows high, where F(2x2) tiles win
            H, W, pad = 4, pick(rng, [56, 60]), [0, pick(rng, [0, 1])]
    elif kind == "pointwise":
        C, O, kh, pad = pick(rng, [16, 64, 128]), pick(rng, [16, 64, 128]), 1, [0, 0]
        H = W = pick(rng, [8, 14, 28])
    elif kind == "down":
        C, O, stride = pick(rng, [16, 32, 64]), pick(rng, [16, 32, 64]), [2, 2]
        H = W = pick(rng, [14, 28, 32])
    elif kind == "rgb":
        C, O, kh = 3, pick(rng, [16, 32, 64]), pick(rng, [3, 7])
        pad, stride = [kh // 2, kh // 2], pick(rng, [[1, 1], [2, 2]])
        H = W = pick(rng, [32, 56])
    elif kind == "depthwise":
        C = O = groups = pick(rng, [32, 64])
        H = W = pick(rng, [14, 28])
    else:
        C, O, dil, pad = pick(rng, [16, 32]), pick(rng, [16, 32]), [2, 2], [2, 2]
        H = W = pick(rng, [14, 28])
    ts = [inp(rng, "x", [pick(rng, [1, 2, 4]), C, H, W], nc=0.2), inp(rng, "w", [O, C // groups, kh, kh], nc=0.2)]
    if rng.random() < 0.6:
        ts.append(inp(rng, "b", [O], nc=0.2))
    return {"stride": stride, "padding": pad, "dilation": dil, "groups": groups, "_kind": kind}, ts


f32_gen("conv2d", 0.5, conv2d_big)


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


def conv_transpose2d_big(rng):  # a decoder's up-sampling layers
    C, O = pick(rng, [16, 32, 64]), pick(rng, [16, 32, 64])
    k, pad, opad = pick(rng, [(4, 1, 0), (3, 1, 1), (2, 0, 0)])
    H = W = pick(rng, [8, 14, 16])
    ts = [inp(rng, "x", [pick(rng, [1, 2]), C, H, W], nc=0.2), inp(rng, "w", [C, O, k, k], nc=0.2)]
    if rng.random() < 0.6:
        ts.append(inp(rng, "b", [O], nc=0.2))
    return {"stride": [2, 2], "padding": [pad, pad], "output_padding": [opad, opad], "dilation": [1, 1],
            "groups": 1}, ts


f32_gen("conv_transpose2d", 0.4, conv_transpose2d_big)


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


def upsample_conv2d_big(rng):  # a UNet's up-sampling layer
    C, O, k = pick(rng, [16, 32, 64]), pick(rng, [16, 32, 64]), pick(rng, [3, 3, 1])
    H = W = pick(rng, [8, 14, 16])
    ts = [inp(rng, "x", [pick(rng, [1, 2]), C, H, W], nc=0.2), inp(rng, "w", [O, C, k, k], nc=0.2)]
    if rng.random() < 0.6:
        ts.append(inp(rng, "b", [O], nc=0.2))
    return {"padding": [k // 2, k // 2]}, ts


f32_gen("upsample_conv2d", 0.4, upsample_conv2d_big)


# Per-op adjustments of the cotangent (applied to both sides), for outputs whose gradient torch
# defines arbitrarily: fn(output, cotangent, case) -> cotangent.
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
        ceil = int(rng.random() < 0.3)
        # The smallest input with a window: the dilated extent, or with ceil_mode stride - 1 less
        # (one partial window on an input narrower than the kernel).
        s = stride if stride != [0, 0] else [kh, kw]
        H = max(dil[0] * (kh - 1) + 1 - 2 * pad[0] - ceil * (s[0] - 1), 1) + int(rng.integers(0, 9))
        W = max(dil[1] * (kw - 1) + 1 - 2 * pad[1] - ceil * (s[1] - 1), 1) + int(rng.integers(0, 9))
        # plain, ties (first maximum wins), all negative (the padding must never win)
        data = pick(rng, [randn, ties, lambda r, s: -np.abs(randn(r, s)) - 1])
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]), data)
        return {"kernel": [kh, kw], "stride": stride, "padding": pad, "dilation": dil, "ceil_mode": ceil}, [x]

    def ref(T, P):
        s = P["stride"] if P["stride"] != [0, 0] else P["kernel"]
        return F.max_pool2d(T["x"], P["kernel"], s, P["padding"], P["dilation"], ceil_mode=bool(P.get("ceil_mode", 0)))

    # With dilation a window can fall entirely on padding (torch only bounds padding by kernel / 2).
    # Both give -inf there; torch's backward then credits an arbitrary input element (its initial
    # argmax index), tapegrad none (the output does not depend on x). Those outputs get a zero
    # cotangent, so the rest of the gradient is still compared.
    COT_FIX["max_pool2d"] = lambda out, cot, c: np.where(np.isneginf(out), 0.0, cot)
    return gen, ref


def max_pool2d_big(rng):  # 2x2 / stride 2 (its vectorised kernel) and the 3x3 / stride 2 stem
    kernel, stride, pad = pick(rng, [([2, 2], [0, 0], [0, 0]), ([2, 2], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1])])
    H, W = pick(rng, [32, 33, 56, 64]), pick(rng, [32, 35, 56, 64])
    x = pool_input(rng, (pick(rng, [8, 16]), H, W), pick(rng, [1, 2]), pick(rng, [randn, ties]))
    return {"kernel": kernel, "stride": stride, "padding": pad, "dilation": [1, 1]}, [x]


f32_gen("max_pool2d", 0.4, max_pool2d_big)


@op("avg_pool2d")
def _avg_pool2d():
    def gen(rng):
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        stride = [0, 0] if rng.random() < 0.3 else [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        pad = [int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))]
        ceil = int(rng.random() < 0.3)
        s = stride if stride != [0, 0] else [kh, kw]  # ceil_mode: inputs down to stride - 1 below the kernel
        H = max(kh - 2 * pad[0] - ceil * (s[0] - 1), 1) + int(rng.integers(0, 9))
        W = max(kw - 2 * pad[1] - ceil * (s[1] - 1), 1) + int(rng.integers(0, 9))
        x = pool_input(rng, (pick(rng, [1, 2, 3]), H, W), pick(rng, [1, 2, None]))
        return {"kernel": [kh, kw], "stride": stride, "padding": pad,
                "count_include_pad": int(rng.random() < 0.5), "ceil_mode": ceil}, [x]

    def ref(T, P):
        s = P["stride"] if P["stride"] != [0, 0] else P["kernel"]
        return F.avg_pool2d(T["x"], P["kernel"], s, P["padding"], count_include_pad=bool(P["count_include_pad"]),
                            ceil_mode=bool(P["ceil_mode"]))
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


# f32: the rows of transformer widths (several SIMD blocks per row, many rows per thread chunk)
def norm_rows_big(rng, bias):
    ns, lead = [pick(rng, [768, 1000, 1024])], pick(rng, [[64], [8, 32], [3, 50]])
    ts = [inp(rng, "x", lead + ns, nc=0.2, gen=norm_data(rng))]
    if rng.random() < 0.7:
        ts.append(inp(rng, "w", ns, nc=0.2))
    if bias and rng.random() < 0.7:
        ts.append(inp(rng, "b", ns, nc=0.2))
    return {"normalized_shape": ns, "eps": pick(rng, [1e-5, 1e-6])}, ts


f32_gen("layer_norm", 0.3, lambda rng: norm_rows_big(rng, True))
f32_gen("rms_norm", 0.3, lambda rng: norm_rows_big(rng, False))


def channel_norm_inputs(rng, N, C, spatial):
    """x [N, C, *spatial] and, at random, a per-channel weight w and bias b [C]."""
    ts = [inp(rng, "x", [N, C] + spatial, nc=0.3, gen=norm_data(rng))]
    aff = pick(rng, ["none", "w", "wb", "b", "wb"])
    if "w" in aff:
        ts.append(inp(rng, "w", [C], nc=0.3))
    if "b" in aff:
        ts.append(inp(rng, "b", [C], nc=0.3))
    return ts


def torch_affine(T):
    """w, b for torch's group/batch norm. torch 1.13's backward fails ("tensor does not have a
    device") with a bias but no weight: a constant weight of ones then."""
    w, b = T.get("w"), T.get("b")
    if w is None and b is not None:
        w = torch.ones(T["x"].shape[1])
    return w, b


def gn_gen(rng):
    G = pick(rng, [1, 2, 3, 4, 8])
    C = G * pick(rng, [1, 2, 3, 4])
    spatial = pick(rng, [[], [1], [5], [3, 4], [7, 7], [2, 3, 2], [16, 16]])
    N = pick(rng, [1, 2, 3, 20])
    ts = channel_norm_inputs(rng, N, C, spatial)
    return {"groups": G, "eps": pick(rng, [1e-5, 1e-5, 1e-3, 0.1])}, ts


def torch_group_norm(T, P):
    # torch.group_norm, not F.group_norm: F refuses groups of one element ("Expected more than 1
    # value per channel"), which are well defined (var = 0).
    w, b = torch_affine(T)
    return torch.group_norm(T["x"], P["groups"], w, b, P["eps"])


@op("group_norm", weight=1.2)
def _group_norm():
    return gn_gen, torch_group_norm


@op("group_norm_silu", weight=1.2)
def _group_norm_silu():
    return gn_gen, lambda T, P: F.silu(torch_group_norm(T, P))


def gn_big(rng):  # the group norms of a UNet
    N, C, G = pick(rng, [2, 4]), pick(rng, [32, 64]), pick(rng, [8, 32])
    spatial = pick(rng, [[8, 8], [16, 16], [28, 28], [15, 17]])
    ts = [inp(rng, "x", [N, C] + spatial, nc=0.2, gen=norm_data(rng))]
    if rng.random() < 0.8:
        ts += [inp(rng, "w", [C], nc=0.2), inp(rng, "b", [C], nc=0.2)]
    return {"groups": G, "eps": 1e-5}, ts


def bn_gen(rng):
    C = pick(rng, [1, 2, 3, 8])
    spatial = pick(rng, [[], [1], [5], [3, 4], [7, 7], [2, 3, 2]])
    N = pick(rng, [2, 3, 20])
    ts = channel_norm_inputs(rng, N, C, spatial)
    training = int(rng.random() < 0.6)
    if not training:  # eval: running statistics (no gradient)
        ts += [inp(rng, "rm", [C], grad=False, nc=0.0),
               inp(rng, "rv", [C], grad=False, nc=0.0, gen=lambda r, sh: np.abs(randn(r, sh)) + 0.1)]
    return {"training": training, "eps": pick(rng, [1e-5, 1e-3, 0.1])}, ts


def torch_batch_norm(T, P):
    # torch 1.13's CPU batch-norm backward misreads an expanded (stride-0) weight: the input
    # gradient of every channel but the first is garbage (~1e-265), so the weight is made
    # contiguous first (the same values; the gradient still reaches the expanded base).
    w, b = torch_affine(T)
    if w is not None:
        w = w.contiguous()
    return F.batch_norm(T["x"], T.get("rm"), T.get("rv"), w, b, training=bool(P["training"]), eps=P["eps"])


@op("batch_norm")
def _batch_norm():
    return bn_gen, torch_batch_norm


@op("glu", weight=0.5)
def _glu():
    def gen(rng):
        shape = [pick(rng, ODD) for _ in range(int(rng.integers(1, 4)))]
        axis = int(rng.integers(-len(shape), len(shape)))
        shape[axis] = 2 * pick(rng, ODD)
        return {"axis": axis}, [inp(rng, "x", shape, nc=0.4)]
    return gen, lambda T, P: F.glu(T["x"], P["axis"])


f32_gen("group_norm", 0.3, gn_big)
f32_gen("group_norm_silu", 0.3, gn_big)


# ---- attention and rotary -------------------------------------------------------------------------------------
def sdpa_case(rng, lead, Tq, Tk, d, dv, large_logits):
    """Options and inputs of one attention case of the given sizes."""
    P = {"causal": int(rng.random() < 0.5)}
    if rng.random() < 0.3:
        P["scale"] = pick(rng, [0.0, 1.0, 0.37, 2.5, -0.5])
        # f32: logits of standard deviation |scale| sqrt(d) at most 8. Beyond, the f32 error of any
        # fused (FlashAttention-style) backward, which takes rowsum(dO * O) from the rounded output
        # instead of summing P dP over the keys, measures the softmax's conditioning, not the code:
        # on one case with logits up to 55 a plain numpy f32 emulation of that algorithm errs by
        # 9.3e-6 against f64, 4x torch's unfused f32 (tapegrad 8.0e-6). f64 keeps every scale.
        if not large_logits and abs(P["scale"]) * math.sqrt(max(d, 1)) > 8:
            P["scale"] = math.copysign(8 / math.sqrt(d), P["scale"])
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
    if large_logits and rng.random() < 0.15:  # (f64 only: see sdpa_big)
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


def sdpa_gen(rng, large_logits):
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
    return sdpa_case(rng, lead, Tq, Tk, d, dv, large_logits)


@op("sdpa", weight=2.0)
def _sdpa():
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
    return (lambda rng: sdpa_gen(rng, True)), ref


# f32: several query blocks (64 rows) and key blocks (64 keys) with the head sizes of real models,
# few or many batch*heads (the backward splits the key blocks of few ones into ranges); no
# enlarged logits (their f32 rounding would only measure the conditioning of the softmax).
def sdpa_big(rng):
    lead = pick(rng, [[1], [2], [1, 2], [2, 4], [4, 3]])
    Tq = pick(rng, [64, 65, 100, 128, 200, 256])
    Tk = Tq if rng.random() < 0.6 else pick(rng, [64, 127, 256, 300])
    d = pick(rng, [32, 64, 80])
    return sdpa_case(rng, lead, Tq, Tk, d, d if rng.random() < 0.7 else pick(rng, [32, 64, 80]), False)


f32_gen("sdpa", 0.5, sdpa_big, lambda rng: sdpa_gen(rng, False))


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


# f32: long rows, some a power of two, most not: mixed radix (2, 3, 4, 5 and odd radices up to 31)
# and Bluestein for the primes; 16 rows (one AVX-512 batch of f32 rows), 17 (a padded second batch).
FFT_LENGTHS_F32 = [1000, 1031, 1536, 2187, 2310, 3000, 4096, 4099, 5005]
FFT_LEADS_F32 = [[], [3], [16], [17], [2, 9]]


def rfft_gen(rng, lengths=FFT_LENGTHS, leads=([], [1], [3], [2, 5], [17], [2, 17], [33])):
    L = pick(rng, lengths)
    lead = list(pick(rng, leads))
    P = {}
    r = rng.random()
    if r < 0.3:
        P["n"] = int(rng.integers(1, L + 1))  # truncation (or n == L)
    elif r < 0.6:
        P["n"] = L + int(rng.integers(1, L + 8))  # zero padding
    elif r < 0.7:
        P["n"] = -1
    return P, [inp(rng, "x", lead + [L], nc=0.4)]


def irfft_gen(rng, bins=(1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 50, 65, 129, 513), leads=([], [1], [3], [2, 5])):
    m = pick(rng, bins)
    lead = list(pick(rng, leads))
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


def fft_gen(rng, lengths=FFT_LENGTHS, leads=([], [1], [3], [2, 5])):
    n = pick(rng, lengths)
    lead = list(pick(rng, leads))
    return {"inverse": int(rng.random() < 0.5)}, [inp(rng, "x", lead + [n, 2], nc=0.4)]


@op("rfft", weight=1.2)
def _rfft():
    def ref(T, P):
        n = P.get("n", -1)
        return torch.view_as_real(torch.fft.rfft(T["x"], n=None if n == -1 else n))
    return rfft_gen, ref


@op("irfft", weight=1.2)
def _irfft():
    def ref(T, P):
        n = P.get("n", -1)
        X = as_c(T["x"])
        return torch.fft.irfft(X, n=None if n == -1 else n)
    return irfft_gen, ref


@op("fft")
def _fft():
    def ref(T, P):
        X = as_c(T["x"])
        return torch.view_as_real(torch.fft.ifft(X) if P["inverse"] else torch.fft.fft(X))
    return fft_gen, ref


f32_gen("rfft", 0.5, lambda rng: rfft_gen(rng, FFT_LENGTHS_F32, FFT_LEADS_F32))
f32_gen("irfft", 0.5, lambda rng: irfft_gen(rng, [501, 1000, 1025, 1537, 2049, 2500], FFT_LEADS_F32))
f32_gen("fft", 0.5, lambda rng: fft_gen(rng, FFT_LENGTHS_F32, FFT_LEADS_F32))


def complex_pair_gen(rng, with_b=True, mags=(1.0, 1.0, 1.0, 1e-150, 1e150)):
    sa = pick(rng, [[], [1], [5], [3, 4], [2, 1, 3], [17]])
    sb = list(sa)
    if with_b and sa and rng.random() < 0.5:  # broadcast the leading dims
        sb = [1 if rng.random() < 0.5 else s for s in sa]
        if rng.random() < 0.3:
            sb = sb[1:]
    mag = pick(rng, mags)
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


# f32: magnitudes where |z|^2 under- or overflows f32 but the results and gradients do not. Not for
# products of two such numbers (complex_mul), nor for a tiny divisor: a's unscaled special values
# (1, -2) over b ~ 1e-20 give gradients a / b^2 ~ 1e40.
F32_MAGS = (1.0, 1.0, 1.0, 1e-20, 1e20)
F32["complex_mul"] = lambda rng: complex_pair_gen(rng, True, (1.0, 1.0, 1.0, 1e-15, 1e15))
F32["complex_div"] = lambda rng: complex_pair_gen(rng, True, (1.0, 1.0, 1.0, 1e-12, 1e20))
F32["complex_conj"] = lambda rng: complex_pair_gen(rng, False, F32_MAGS)
F32["complex_abs"] = lambda rng: complex_pair_gen(rng, False, F32_MAGS)


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


def fft_conv_big(rng):  # long sequences (Hyena/S4-style long convolutions): f32 FFTs of 2 L
    # (torch's direct grouped conv1d, the reference, is slow for long kernels: few rows for those)
    L, Lk = pick(rng, [(1000, 1000), (1200, 1200), (2048, 257), (3001, 64), (3001, 257)])
    B, C = (1, pick(rng, [2, 4])) if Lk > 300 else (pick(rng, [1, 2]), pick(rng, [4, 16]))
    P = {"causal": int(rng.random() < 0.7), "recompute": int(rng.random() < 0.3)}
    return P, [inp(rng, "u", [B, C, L], nc=0.3), inp(rng, "k", [C, Lk], nc=0.3)]


f32_gen("fft_conv", 0.4, fft_conv_big)


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


def ce_gen(rng, Ns=(1, 2, 5, 17), Cs=(1, 2, 3, 10, 33), extras=([], [], [3], [2, 4]), nc=0.3):
    N, C = pick(rng, Ns), pick(rng, Cs)
    if rng.random() < 0.04:  # an empty batch
        N = 0
    extra = list(pick(rng, extras))
    ign = pick(rng, [-100, -100, -1, 0, 1, 7])
    tshape = [N] + extra
    t = rng.integers(0, C, size=tshape)
    if rng.random() < 0.6:  # some ignored positions
        m = rng.random(tshape) < pick(rng, [0.2, 0.5, 1.0])
        t[m] = ign
    scale = pick(rng, [1.0, 1.0, 20.0])
    P = {"ignore_index": ign, "label_smoothing": pick(rng, [0.0, 0.0, 0.1, 0.5, 1.0]),
         "reduction": pick(rng, ["mean", "sum", "none"])}
    x = inp(rng, "x", [N, C] + extra, nc=nc, gen=lambda r, s: randn(r, s, scale))
    ts = [x, TS("_target", t.astype(np.int64), False, [], dtype=pick(rng, ["i64", "i64", "i32"]))]
    if rng.random() < 0.4:  # class weights
        ts.append(TS("_weight", rng.uniform(0.1, 3.0, size=[C]), False, []))
    return P, ts


@op("cross_entropy", weight=1.5)
def _cross_entropy():
    def ref(T, P):
        # torch takes only i64 class indices (tapegrad i32 too)
        return F.cross_entropy(T["x"], T["_target"].long(), weight=T.get("_weight"), ignore_index=P["ignore_index"],
                               label_smoothing=P["label_smoothing"], reduction=P["reduction"])
    return ce_gen, ref


@op("cross_entropy_prob")
def _cross_entropy_prob():
    def gen(rng):  # probability targets: unnormalised or not, label smoothing, class weights
        N, C = pick(rng, [1, 2, 5, 17]), pick(rng, [1, 2, 3, 10, 33])
        shape = [N, C] + list(pick(rng, [[], [], [3], [2, 4]]))
        P = {"label_smoothing": pick(rng, [0.0, 0.0, 0.1, 0.5, 1.0]), "reduction": pick(rng, ["mean", "sum", "none"])}
        x = inp(rng, "x", shape, nc=0.3, gen=lambda r, s: randn(r, s, pick(rng, [1.0, 20.0])))
        q = inp(rng, "target", shape, nc=0.3,
                gen=pick(rng, [lambda r, s: r.uniform(0, 1, s), lambda r, s: np.exp(randn(r, s, 2.0))]))
        ts = [x, q]
        if rng.random() < 0.4:
            ts.append(TS("_weight", rng.uniform(0.1, 3.0, size=[C]), False, []))
        return P, ts
    def ref(T, P):
        return F.cross_entropy(T["x"], T["target"], weight=T.get("_weight"), label_smoothing=P["label_smoothing"],
                               reduction=P["reduction"])
    return gen, ref


@op("nll_loss")
def _nll_loss():
    def gen(rng):  # contiguous inputs: torch 1.13's nll_loss2d backward refuses others
        P, ts = ce_gen(rng, nc=0.0)
        del P["label_smoothing"]
        return P, ts
    return gen, lambda T, P: F.nll_loss(T["x"], T["_target"].long(), weight=T.get("_weight"),
                                        ignore_index=P["ignore_index"], reduction=P["reduction"])


# f32: language-model vocabularies
f32_gen("cross_entropy", 0.3, lambda rng: ce_gen(rng, (64, 128), (1000, 5000), ([],)))


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
        ts = [x, t]
        for name in ("_weight", "_pos_weight"):
            if shape and rng.random() < 0.4:  # broadcast: the last dim, or the whole shape
                ws = pick(rng, [shape[-1:], shape, [1] * len(shape)])
                ts.append(TS(name, rng.uniform(0.1, 3.0, size=ws), False, []))
        return P, ts
    return gen, lambda T, P: F.binary_cross_entropy_with_logits(T["x"], T["target"], weight=T.get("_weight"),
                                                                pos_weight=T.get("_pos_weight"), reduction=P["reduction"])


@op("bce")
def _bce_probs():
    def gen(rng):
        P, _, shape = loss_pair(rng)
        both = lambda r, s: np.where(r.random(s) < 0.2, r.integers(0, 2, s), r.uniform(0, 1, s)).astype(float)
        ts = [inp(rng, "x", shape, nc=0.3, gen=both), inp(rng, "target", shape, nc=0.3, gen=both)]
        if shape and rng.random() < 0.4:
            ts.append(TS("_weight", rng.uniform(0.1, 3.0, size=shape[-1:]), False, []))
        return P, ts
    return gen, lambda T, P: F.binary_cross_entropy(T["x"], T["target"], weight=T.get("_weight"), reduction=P["reduction"])


@op("smooth_l1_loss")
def _smooth_l1():
    def gen(rng):
        P, x, shape = loss_pair(rng)
        P["beta"] = pick(rng, [1.0, 0.5, 0.0, 3.0])
        return P, [x, inp(rng, "target", shape, nc=0.3)]
    return gen, lambda T, P: F.smooth_l1_loss(T["x"], T["target"], reduction=P["reduction"], beta=P["beta"])


@op("huber_loss")
def _huber():
    def gen(rng):
        P, x, shape = loss_pair(rng)
        P["delta"] = pick(rng, [1.0, 0.5, 3.0])
        return P, [x, inp(rng, "target", shape, nc=0.3)]
    return gen, lambda T, P: F.huber_loss(T["x"], T["target"], reduction=P["reduction"], delta=P["delta"])


# kl_div's "mean" (over elements, as tapegrad's) is tested on purpose; torch warns about it.
warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")


@op("kl_div")
def _kl_div():
    # Targets > 0 without log_target: at 0, torch's target gradient is NaN (tapegrad's drops the
    # t log t term there, whose one-sided derivative is -inf).
    def gen(rng):
        shape = pick(rng, [[7], [3, 5], [2, 3, 4], [1003]])
        P = {"reduction": pick(rng, ["mean", "sum", "none", "batchmean"]), "log_target": int(rng.random() < 0.4)}
        x = inp(rng, "x", shape, nc=0.3, gen=lambda r, s: -np.abs(randn(r, s, 2.0)))
        tgen = (lambda r, s: randn(r, s, 1.0)) if P["log_target"] else (lambda r, s: r.uniform(0.01, 1, s))
        return P, [x, inp(rng, "target", shape, nc=0.3, gen=tgen)]
    return gen, lambda T, P: F.kl_div(T["x"], T["target"], reduction=P["reduction"], log_target=bool(P["log_target"]))


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

unary("tan", GEN_DATA, lambda T, P: torch.tan(T["x"]))
unary("asin", lambda r, s: np.clip(GEN_DATA(r, s) * 0.4, -0.99, 0.99), lambda T, P: torch.asin(T["x"]))
unary("acos", lambda r, s: np.clip(GEN_DATA(r, s) * 0.4, -0.99, 0.99), lambda T, P: torch.acos(T["x"]))
unary("atan", WIDE, lambda T, P: torch.atan(T["x"]))
unary("sinh", WIDE, lambda T, P: torch.sinh(T["x"]))
unary("cosh", WIDE, lambda T, P: torch.cosh(T["x"]))
unary("log2", lambda r, s: special_mix(r, s, [0.0, 1.0, 8.0, 0.25], 0.1, 1.0) ** 2, lambda T, P: torch.log2(T["x"]))
unary("log10", lambda r, s: special_mix(r, s, [0.0, 1.0, 100.0], 0.1, 1.0) ** 2, lambda T, P: torch.log10(T["x"]))
unary("logsigmoid", WIDE, lambda T, P: F.logsigmoid(T["x"]))
# elu/selu on O(1) data: torch 1.13 computes exp(x) - 1 (tapegrad expm1), off by ~1e-16 / |x| relative.
unary("elu", GEN_DATA, lambda T, P: F.elu(T["x"], P.get("alpha", 1.0)),
      lambda rng: {} if rng.random() < 0.4 else {"alpha": pick(rng, [0.3, 2.0, 1.5])})
unary("selu", GEN_DATA, lambda T, P: F.selu(T["x"]))
unary("mish", WIDE, lambda T, P: F.mish(T["x"]))
unary("hardtanh", GEN_DATA, lambda T, P: F.hardtanh(T["x"], P.get("min_val", -1.0), P.get("max_val", 1.0)),
      lambda rng: {} if rng.random() < 0.4 else {"min_val": pick(rng, [-0.5, 0.0, -2.5]), "max_val": pick(rng, [0.5, 2.5])})
unary("relu6", lambda r, s: GEN_DATA(r, s) * 3, lambda T, P: F.relu6(T["x"]))
# torch 1.13's hardsigmoid backward multiplies by 1/6 rounded to f32 even in f64 (0.16666667163...):
# the reference takes torch's forward and the exact gradient (1/6 strictly inside (-3, 3)).
unary("hardsigmoid", GEN_DATA, lambda T, P: F.hardsigmoid(T["x"].detach())
      + ((T["x"] > -3) & (T["x"] < 3)) * (T["x"] - T["x"].detach()) / 6)
unary("hardswish", GEN_DATA, lambda T, P: F.hardswish(T["x"]))

unary("clamp", GEN_DATA, lambda T, P: torch.clamp(T["x"], P.get("low"), P.get("high")),
      lambda rng: pick(rng, [{"low": -0.5, "high": 1.0}, {"low": 0.0}, {"high": 0.5}, {"low": 1.0, "high": 1.0},
                             {"low": -1.0, "high": 2.5}]))
for _n, _f in (("add_scalar", lambda x, s: x + s), ("sub_scalar", lambda x, s: x - s),
               ("rsub_scalar", lambda x, s: s - x), ("mul_scalar", lambda x, s: x * s),
               ("div_scalar", lambda x, s: x / s), ("rdiv_scalar", lambda x, s: s / x)):
    unary(_n, GEN_DATA if _n != "rdiv_scalar" else POS_DATA, (lambda f: lambda T, P: f(T["x"], P["scalar"]))(_f),
          lambda rng: {"scalar": pick(rng, [2.0, -0.5, 3.25, 1e-3])})


def pow_scalar_f32(rng):
    P, ts = OPS["pow_scalar"][0](rng)
    if abs(P["exponent"]) > 8:  # x / 4 keeps x^64, x^65 and their gradients inside f32's range
        ts[0].base = ts[0].base / 4
    return P, ts


F32["pow_scalar"] = pow_scalar_f32


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
binary("atan2", lambda T, P: torch.atan2(T["a"], T["b"]))
# Divisors include 0 (inf / NaN results) and negative values. torch has no floor_divide gradient;
# tapegrad's is 0 (as floor), which the reference adds as 0 * a + 0 * b.
DIVISOR = lambda r, s: special_mix(r, s, [1.0, -2.0, 0.5, 0.0, 3.0], 0.2, 2.0)
binary("floor_divide", lambda T, P: torch.floor_divide(T["a"].detach(), T["b"].detach()) + 0 * T["a"] + 0 * T["b"],
       data_a=lambda r, s: GEN_DATA(r, s) * 4, data_b=DIVISOR)
binary("remainder", lambda T, P: torch.remainder(T["a"], T["b"]), data_a=lambda r, s: GEN_DATA(r, s) * 4, data_b=DIVISOR)
binary("fmod", lambda T, P: torch.fmod(T["a"], T["b"]), data_a=lambda r, s: GEN_DATA(r, s) * 4, data_b=DIVISOR)


# ---- reductions ------------------------------------------------------------------------------------------------------
def red_gen(allow_multi, data, extra=None, modes=ALL_MODES):
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
        return P, [inp(rng, "x", shape, nc=0.4, gen=data(rng), modes=modes)]
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


@op("normalize")
def _normalize():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [17, 64])
        axis = int(rng.integers(-len(shape), len(shape)))
        params = {"p": pick(rng, [1.0, 2.0, 2.0, math.inf]), "axis": axis, "eps": pick(rng, [1e-12, 1e-12, 0.1, 3.0])}
        return params, [inp(rng, "x", shape, nc=0.4)]
    return gen, lambda T, P: F.normalize(T["x"], p=P["p"], dim=P["axis"], eps=P["eps"])


# The gradient of std on a constant slice is 0 by convention, which holds only where the computed
# std is exactly 0: torch's dim reductions (Welford) give 0 there; its full reductions and tapegrad
# may leave a rounding residue of the mean, and then the O(1) gradient (x - mean) / (n std) of that
# residue. Constant slices of more than one element get a zero cotangent.
def _std_cot(out, cot, c):
    n = int(np.prod(c.shapes["x"])) // max(out.size, 1)
    return np.where((n > 1) & (np.abs(out) <= 1e-5 * np.max(np.abs(c.ts[0].base), initial=0.0)), 0.0, cot)


COT_FIX["std"] = _std_cot


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


# No expanded inputs: a value repeated n times multiplies the exponent of the product by n, beyond
# the range of the long rows (and an overflow next to a zero makes the reference order-dependent).
OPS["prod"] = (red_gen(True, prod_data, modes=tuple(m for m in ALL_MODES if m != "expand")), _ref_prod, 0.5, "prod")
OPS["cumsum"] = (red_gen(False, red_ties), lambda T, P: torch.cumsum(T["x"], P["axis"]), 0.4, "cumsum")
def sort_gen(with_k, data):
    def gen(rng):
        shape = pick(rng, [[7], [1], [3, 5], [2, 3, 4], [4, 1003], [2, 1, 3], [300, 70]])
        nd = len(shape)
        P = {"axis": int(rng.integers(-nd, nd)), "descending": int(rng.random() < 0.5)}
        if with_k:
            P["k"] = int(rng.integers(0, shape[P["axis"]] + 1))
        return P, [inp(rng, "x", shape, nc=0.4, gen=data)]
    return gen


# Values (the indices follow from them; with ties, stable=True is tapegrad's order, so the
# gradients agree too). topk has no stable order in torch: tie-free data there (also in f32).
OPS["sort"] = (sort_gen(False, GEN_DATA),
               lambda T, P: torch.sort(T["x"], dim=P["axis"], descending=bool(P["descending"]), stable=True).values, 0.4, "sort")
def distinct(rng, shape):  # values that stay distinct in f32 too (randn ties there at times)
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * (4.0 / max(n, 1))).reshape(shape)


OPS["topk"] = (sort_gen(True, distinct),
               lambda T, P: torch.topk(T["x"], P["k"], dim=P["axis"], largest=bool(P["descending"])).values, 0.4, "topk")
OPS["max_axis"] = (red_gen(False, red_ties), lambda T, P: torch.max(T["x"], P["axis"], bool(P["keepdim"])).values,
                   0.4, "max_axis")
OPS["min_axis"] = (red_gen(False, red_ties), lambda T, P: torch.min(T["x"], P["axis"], bool(P["keepdim"])).values,
                   0.4, "min_axis")


# ---- shape and index ops (ops/shape.hpp) and core's views --------------------------------------------------------
SHAPE_DIMS = [1, 2, 3, 5, 7]


def rand_shape(rng, lo=1, hi=4, dims=SHAPE_DIMS):
    return [pick(rng, dims) for _ in range(int(rng.integers(lo, hi + 1)))]


def numbered(T):
    """The list inputs x0, x1, ... in order."""
    return [T[f"x{i}"] for i in range(sum(1 for n in T if re.fullmatch(r"x\d+", n)))]


def index_ts(rng, values, name="_index"):
    """An integer index input: i64, or i32 a quarter of the time (tapegrad takes both)."""
    return TS(name, np.asarray(values, dtype=np.int64), False, [], dtype=pick(rng, ["i64", "i64", "i64", "i32"]))


def wrapped(index, n):
    # tapegrad counts negative indices from the end, as Python does; torch's index ops take only
    # i64 indices in [0, n): the reference gets them wrapped and widened.
    return torch.remainder(index.long(), max(n, 1))


@op("cat")
def _cat():
    def gen(rng):
        shape = rand_shape(rng)
        axis = int(rng.integers(-len(shape), len(shape)))
        ts = []
        for i in range(pick(rng, [1, 2, 2, 3, 4])):
            s = list(shape)
            s[axis] = pick(rng, [0, 1, 2, 3, 6])
            ts.append(inp(rng, f"x{i}", s, nc=0.4, grad=rng.random() < 0.9))
        if len(ts) > 1 and rng.random() < 0.2:  # mixed dtypes promote; the f32 input's gradient stays f32
            ts[int(rng.integers(len(ts)))].to_f32()
        return {"axis": axis}, ts
    return gen, lambda T, P: torch.cat(numbered(T), P["axis"])


@op("stack")
def _stack():
    def gen(rng):
        shape = rand_shape(rng, 0, 3)
        ts = [inp(rng, f"x{i}", shape, nc=0.4) for i in range(pick(rng, [1, 2, 3, 4]))]
        return {"axis": int(rng.integers(-len(shape) - 1, len(shape) + 1))}, ts
    return gen, lambda T, P: torch.stack(numbered(T), P["axis"])


def piece_gen(extra):
    """x of a random shape (sometimes with an empty dim) and an axis, plus the op's own parameters."""
    def gen(rng):
        shape = rand_shape(rng, 1, 4, SHAPE_DIMS + [8, 13])
        axis = int(rng.integers(-len(shape), len(shape)))
        if rng.random() < 0.05:
            shape[axis] = 0
        P = {"axis": axis}
        P.update(extra(rng, shape[axis]))
        return P, [inp(rng, "x", shape, nc=0.4)]
    return gen


def split_params(rng, n):
    if rng.random() < 0.5:
        return {"size": int(rng.integers(1, n + 3))}
    cuts = sorted(rng.integers(0, n + 1, size=int(rng.integers(0, 4))).tolist())  # zero sizes included
    return {"sizes": [b - a for a, b in zip([0] + cuts, cuts + [n])]}


@op("split")
def _split():
    return piece_gen(split_params), \
        lambda T, P: torch.split(T["x"], P["size"] if "size" in P else P["sizes"], P["axis"])


@op("chunk")
def _chunk():
    return piece_gen(lambda rng, n: {"chunks": int(rng.integers(1, 7))}), \
        lambda T, P: torch.chunk(T["x"], P["chunks"], P["axis"])


@op("unbind")
def _unbind():
    return piece_gen(lambda rng, n: {}), lambda T, P: torch.unbind(T["x"], P["axis"])


@op("index_select")
def _index_select():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [17])
        axis = int(rng.integers(-len(shape), len(shape)))
        n = shape[axis]
        if rng.random() < 0.15:  # a 0-d index
            idx = np.array(int(rng.integers(-n, n)))
        else:  # repeats and negative indices
            idx = rng.integers(-n, n, size=pick(rng, [0, 1, 3, 8, 20]))
        return {"axis": axis}, [inp(rng, "x", shape, nc=0.4), index_ts(rng, idx)]

    def ref(T, P):
        x = T["x"]
        return x.index_select(P["axis"], wrapped(T["_index"], x.shape[P["axis"]]).reshape(-1))
    return gen, ref


def gather_index(rng, shape, axis):
    """An index for gather/scatter_add along `axis` of `shape`: at most shape's size in the other
    dims, any length along `axis`, repeats and negative entries."""
    ishape = [int(rng.integers(1, d + 1)) if d and rng.random() < 0.5 else d for d in shape]
    ishape[axis] = pick(rng, [0, 1, 3, shape[axis], 2 * shape[axis] + 1])
    n = shape[axis]
    return rng.integers(-n, n, size=ishape) if n else np.zeros(ishape, dtype=np.int64)


@op("gather")
def _gather():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [17])
        axis = int(rng.integers(-len(shape), len(shape)))
        return {"axis": axis}, [inp(rng, "x", shape, nc=0.4), index_ts(rng, gather_index(rng, shape, axis))]

    def ref(T, P):
        x = T["x"]
        return torch.gather(x, P["axis"], wrapped(T["_index"], x.shape[P["axis"]]))
    return gen, ref


@op("scatter_add")
def _scatter_add():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [17])
        axis = int(rng.integers(-len(shape), len(shape)))
        idx = gather_index(rng, shape, axis)
        ts = [inp(rng, "x", shape, nc=0.4), index_ts(rng, idx), inp(rng, "src", list(idx.shape), nc=0.4)]
        ts[0].grad = rng.random() < 0.8
        return {"axis": axis}, ts

    def ref(T, P):
        x = T["x"]
        return torch.scatter_add(x, P["axis"], wrapped(T["_index"], x.shape[P["axis"]]), T["src"])
    return gen, ref


@op("embedding")
def _embedding():
    def gen(rng):
        V, D = pick(rng, [1, 3, 10, 50]), pick(rng, [1, 4, 17, 33])
        ishape = pick(rng, [[], [0], [5], [2, 3], [4, 1, 6]])
        # rows in [0, V): tapegrad, as torch, rejects a negative embedding row
        return {}, [inp(rng, "w", [V, D], nc=0.3), index_ts(rng, rng.integers(0, V, size=ishape))]
    return gen, lambda T, P: F.embedding(T["_index"].long(), T["w"])


@op("one_hot")
def _one_hot():
    def gen(rng):
        n = pick(rng, [1, 2, 5, 10])
        ishape = pick(rng, [[], [0], [5], [2, 3]])
        return {"num_classes": n}, [index_ts(rng, rng.integers(0, n, size=ishape))]  # classes in [0, n)
    # not differentiable; the output has the case's float dtype
    return gen, lambda T, P: F.one_hot(T["_index"].long(), P["num_classes"]).to(
        torch.get_default_dtype())


@op("masked_fill")
def _masked_fill():
    def gen(rng):
        shape = rand_shape(rng, 0, 3)
        mshape = [d if rng.random() < 0.6 else 1 for d in shape][int(rng.integers(0, len(shape) + 1)):]
        P = {"value": pick(rng, [0.0, -math.inf, 3.5, -1e9, math.nan])}
        return P, [inp(rng, "x", shape, nc=0.4), TS("_mask", rng.random(mshape) < 0.4, False, [], dtype="bool")]
    return gen, lambda T, P: T["x"].masked_fill(T["_mask"], P["value"])


def tri_gen(rng):
    shape = rand_shape(rng, 0, 2) + [pick(rng, [1, 3, 5, 8]), pick(rng, [1, 4, 5, 9])]
    return {"k": int(rng.integers(-5, 6))}, [inp(rng, "x", shape, nc=0.4)]


@op("tril")
def _tril():
    return tri_gen, lambda T, P: torch.tril(T["x"], P["k"])


@op("triu")
def _triu():
    return tri_gen, lambda T, P: torch.triu(T["x"], P["k"])


@op("pad", weight=1.5)
def _pad():
    def gen(rng):
        shape = rand_shape(rng, 1, 4, [1, 2, 3, 5, 8])
        mode = pick(rng, ["constant", "constant", "reflect", "replicate", "circular"])
        k = int(rng.integers(1, min(len(shape), 3 if mode != "constant" else 4) + 1))  # padded dims
        pads = []
        for d in reversed(range(len(shape) - k, len(shape))):
            n = shape[d]
            if mode == "reflect":
                pads += [int(rng.integers(0, n)), int(rng.integers(0, n))]
            elif mode == "replicate":
                pads += [int(rng.integers(0, 4)), int(rng.integers(0, 4))]
            elif mode == "circular":
                pads += [int(rng.integers(0, n + 1)), int(rng.integers(0, n + 1))]
            else:  # negative pads crop, at most the whole dim in all
                left = int(rng.integers(-n, 4))
                pads += [left, int(rng.integers(-(n - max(-left, 0)), 4))]
        P = {"pads": pads, "mode": mode}
        if mode == "constant" and rng.random() < 0.5:
            P["value"] = pick(rng, [1.5, -2.0, -math.inf])
        return P, [inp(rng, "x", shape, nc=0.4)]

    def ref(T, P):
        x, pads = T["x"], P["pads"]
        if P["mode"] == "constant":
            # torch's constant pad refuses empty dims, in the input or the output (tapegrad does not):
            # crop the negative pads by slicing, then write x into a tensor filled with the value
            shape, region = list(x.shape), [slice(None)] * x.dim()
            for p in range(len(pads) // 2):
                d = x.dim() - 1 - p
                x = x.narrow(d, max(-pads[2 * p], 0), x.shape[d] - max(-pads[2 * p], 0) - max(-pads[2 * p + 1], 0))
                shape[d] = x.shape[d] + max(pads[2 * p], 0) + max(pads[2 * p + 1], 0)
                region[d] = slice(max(pads[2 * p], 0), max(pads[2 * p], 0) + x.shape[d])
            y = torch.full(shape, P.get("value", 0.0), dtype=x.dtype)
            y[tuple(region)] = x
            return y
        # torch pads k dims only of (k+1)- or (k+2)-d inputs (circular: (k+2)-d only): fold the
        # other dims into one (and a channel dim of 1)
        k = len(pads) // 2
        lead = x.shape[:x.dim() - k]
        fold = (-1, 1) if P["mode"] == "circular" else (-1,)
        y = F.pad(x.reshape(fold + tuple(x.shape[x.dim() - k:])), pads, mode=P["mode"])
        return y.reshape(tuple(lead) + tuple(y.shape[len(fold):]))
    return gen, ref


@op("repeat")
def _repeat():
    def gen(rng):
        shape = rand_shape(rng, 0, 3)
        # at most 4 repeats: tapegrad's repeat expands an intermediate of twice as many dims (max 8)
        reps = [pick(rng, [0, 1, 1, 2, 3]) for _ in range(min(len(shape) + int(rng.integers(0, 3)), 4))] or [2]
        return {"repeats": reps}, [inp(rng, "x", shape, nc=0.4)]
    return gen, lambda T, P: T["x"].repeat(*P["repeats"])


@op("roll")
def _roll():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [0, 8])
        axis = int(rng.integers(-len(shape), len(shape)))
        n = shape[axis]
        return {"shift": int(rng.integers(-2 * n - 1, 2 * n + 2)), "axis": axis}, [inp(rng, "x", shape, nc=0.4)]
    return gen, lambda T, P: torch.roll(T["x"], P["shift"], P["axis"])


@op("repeat_interleave")
def _repeat_interleave():
    def gen(rng):
        shape = rand_shape(rng, 1, 3, SHAPE_DIMS + [0, 17])
        axis = int(rng.integers(-len(shape), len(shape)))
        n = shape[axis]
        x = inp(rng, "x", shape, nc=0.4)
        if rng.random() < 0.5:  # one count for every entry
            return {"repeats": pick(rng, [0, 1, 2, 3, 5]), "axis": axis}, [x]
        # one count per entry (sometimes a single count in a 1-element tensor)
        counts = rng.integers(0, 4, size=n if rng.random() < 0.85 else 1)
        return {"axis": axis}, [x, index_ts(rng, counts)]

    def ref(T, P):
        reps = P["repeats"] if "repeats" in P else T["_index"].long()
        return torch.repeat_interleave(T["x"], reps, dim=P["axis"])
    return gen, ref


def reshape_target(rng, shape):
    """A shape with shape's number of elements: merged or split dims, added or dropped 1s, one -1."""
    n = int(np.prod(shape)) if shape else 1
    kind = pick(rng, ["flat", "merge", "split", "ones", "reverse"])
    out = list(shape)
    if kind == "flat":
        out = [n]
    elif kind == "merge" and len(out) >= 2:
        i = int(rng.integers(len(out) - 1))
        out[i:i + 2] = [out[i] * out[i + 1]]
    elif kind == "split":
        cand = [i for i, d in enumerate(out) if d > 1 and any(d % f == 0 for f in range(2, d))]
        if cand:
            i = int(rng.choice(cand))
            f = int(rng.choice([f for f in range(2, out[i]) if out[i] % f == 0]))
            out[i:i + 1] = [f, out[i] // f]
    elif kind == "ones":
        out.insert(int(rng.integers(len(out) + 1)), 1)
        out = [d for d in out if d != 1 or rng.random() < 0.7]
    else:
        out = out[::-1]
    if out and 0 not in out and rng.random() < 0.4:
        out[int(rng.integers(len(out)))] = -1
    return out


def chain_step(rng, shape, contiguous, dtype):
    """One random view/copy step on a tensor of `shape`: (step text, new shape, contiguous, dtype).
    `contiguous` is conservative: view() is only asked of tensors known to be contiguous."""
    nd = len(shape)
    kinds = ["reshape", "unsqueeze", "clone", "contiguous", "to", "flatten", "expand"]
    if nd:
        kinds += ["permute", "transpose", "slice", "narrow", "squeeze", "flip"] + (["select"] if min(shape) else [])
    if contiguous:
        kinds.append("view")
    if nd == 2:
        kinds += ["diagonal", "t"]
    kind = pick(rng, kinds)
    ax = lambda: int(rng.integers(-nd, nd))
    s = list(shape)
    if kind in ("view", "reshape"):
        args = reshape_target(rng, shape)
        if -1 in args:
            known = int(np.prod([d for d in args if d != -1]))
            s = [d if d != -1 else (int(np.prod(shape)) // known if known else 0) for d in args]
        else:
            s = args
    elif kind == "flatten":
        if nd == 0:
            args, s = [0, -1], [1]
        else:
            a, b = sorted(int(v) for v in rng.integers(0, nd, size=2))
            args = [a, b]
            s = shape[:a] + [int(np.prod(shape[a:b + 1]))] + shape[b + 1:]
    elif kind == "permute":
        args = rng.permutation(nd).tolist()
        s = [shape[i] for i in args]
    elif kind == "transpose":
        args = [ax(), ax()]
        s[args[0] % nd], s[args[1] % nd] = shape[args[1] % nd], shape[args[0] % nd]
    elif kind == "t":
        args, s = [], shape[::-1]
    elif kind == "expand":
        s = [pick(rng, [2, 3]) if d == 1 and rng.random() < 0.7 else d for d in shape]
        if s == shape or rng.random() < 0.3:
            s = [pick(rng, [1, 2, 3])] + s  # a new leading dim
        lead = len(s) - nd
        args = [d if i < lead or d != shape[i - lead] or rng.random() < 0.5 else -1 for i, d in enumerate(s)]
    elif kind == "slice":
        d = ax()
        n = shape[d]
        args = [d, int(rng.integers(-n - 1, n + 1)), int(rng.integers(-n - 1, n + 3)), int(rng.integers(1, 4))]
        s[d] = len(range(*slice(*args[1:]).indices(n)))
    elif kind == "narrow":
        d = ax()
        n = shape[d]
        start = int(rng.integers(-n, n + 1)) if n else 0
        b = start + n if start < 0 else start
        args = [d, start, int(rng.integers(0, n - b + 1))]
        s[d] = args[2]
    elif kind == "select":
        d = ax()
        args = [d, int(rng.integers(-shape[d], shape[d]))]
        del s[d]
    elif kind == "squeeze":
        args = [] if rng.random() < 0.4 else [ax()]
        s = [v for i, v in enumerate(shape) if v != 1 or (args and i != args[0] % nd)]
    elif kind == "unsqueeze":
        args = [int(rng.integers(-nd - 1, nd + 1))]
        s.insert(args[0] % (nd + 1), 1)
    elif kind == "flip":
        args = sorted(rng.choice(nd, size=int(rng.integers(1, nd + 1)), replace=False).tolist())
    elif kind == "diagonal":
        args, s = [], [min(shape)]
    elif kind == "to":  # (in f32 cases the first "to:f32" is a no-op, which may return a non-contiguous x)
        dtype = "f32" if dtype == "f64" else "f64"
        return f"to:{dtype}", s, contiguous, dtype
    else:  # clone, contiguous
        args = []
    text = kind + (":" + ",".join(str(a) for a in args) if args else "")
    if kind == "contiguous":  # (not clone: torch's keeps a dense permuted layout)
        contiguous = True
    elif kind not in ("view", "reshape", "flatten", "squeeze", "unsqueeze"):
        contiguous = False
    return text, s, contiguous, dtype


@op("view_chain", weight=1.5)
def _view_chain():
    def gen(rng):
        shape = rand_shape(rng, 0, 4, [1, 2, 3, 4, 6])
        x = inp(rng, "x", shape, nc=0.3)
        contiguous, dtype, steps = not x.views, "f64", []
        for _ in range(int(rng.integers(1, 6))):
            step, shape, contiguous, dtype = chain_step(rng, shape, contiguous, dtype)
            steps.append(step)
        return {"chain": ";".join(steps)}, [x]

    def ref(T, P):
        t = T["x"]
        for step in P["chain"].split(";"):
            kind, _, args = step.partition(":")
            if kind == "to":
                t = t.to(torch.float32 if args == "f32" else torch.float64)
                continue
            a = [int(v) for v in args.split(",")] if args else []
            if kind == "slice":
                idx = [slice(None)] * t.dim()
                idx[a[0]] = slice(a[1], a[2], a[3])
                t = t[tuple(idx)]
            elif kind == "squeeze":
                t = t.squeeze(*a)
            elif kind == "flip":
                t = t.flip(a)
            elif kind in ("view", "reshape", "permute", "expand"):
                t = getattr(t, kind)(a)
            else:  # flatten, transpose, t, narrow, select, unsqueeze, diagonal, clone, contiguous
                t = getattr(t, kind)(*a)
        return t
    return gen, ref


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


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def torch_forward(c, ref, float_dtype):
    """The leaves and torch's output (a tuple for multi-output ops), with every float leaf in
    float_dtype (None: in its own dtype). Tensors the reference creates take the float dtype too."""
    leaves = {t.name: t.torch_leaf(float_dtype) for t in c.ts}
    T = {t.name: apply_views(leaves[t.name], t.views) for t in c.ts}
    with default_dtype(float_dtype or (torch.float32 if c.dtype == "f32" else torch.float64)):
        return leaves, ref(T, c.P)


def output_names(c, n):
    return [f"out.{i}" for i in range(n)] if c.multi else ["out"]


def torch_results(c, leaves, out, cots):
    """({tensor name: values as f64 numpy}, {tensor name: dtype}) for the outputs and the gradients
    of <cots, outputs> (a None cotangent leaves its output out of the backward)."""
    outs = list(out) if c.multi else [out]
    res = dict(zip(output_names(c, len(outs)), outs))
    grad_names = [t.name for t in c.ts if t.grad]
    pairs = [(o, g) for o, g in zip(outs, cots) if g is not None and o.requires_grad]
    gs = [None] * len(grad_names)
    if grad_names and pairs:
        gs = torch.autograd.grad([o for o, _ in pairs], [leaves[n] for n in grad_names],
                                 [torch.from_numpy(g).to(o.dtype) for o, g in pairs], allow_unused=True)
    for n, g in zip(grad_names, gs):
        res["grad." + n] = torch.zeros_like(leaves[n]) if g is None else g
    return ({k: v.detach().double().numpy().copy() for k, v in res.items()},
            {k: TORCH_DTYPES[v.dtype] for k, v in res.items()})


def expand_scales(c, ref, cots):
    """f32 cases: for the gradient of each leaf that enters the op through an expand, the largest
    sum over a leaf element's copies of |the f64 gradient of the expanded element| -- the size of
    the terms that the gradient adds up. Their f32 rounding errors scale with it, not with the sum:
    copies whose gradients nearly cancel leave a sum far smaller than its terms (a constant row of
    layer_norm, the real and imaginary part of a complex number being one expanded value)."""
    names = [t.name for t in c.ts if t.grad and any(v[0] == "expand" for v in t.views)]
    if not names:
        return {}
    leaves = {t.name: t.torch_leaf(torch.float64) for t in c.ts}
    T = {t.name: apply_views(leaves[t.name], t.views) for t in c.ts}
    with default_dtype(torch.float64):
        out = ref(T, c.P)
    pairs = [(o, g) for o, g in zip(list(out) if c.multi else [out], cots) if g is not None and o.requires_grad]
    if not pairs:
        return {}
    grads = torch.autograd.grad([o for o, _ in pairs], [T[n] for n in names],
                                [torch.from_numpy(g).to(o.dtype) for o, g in pairs], allow_unused=True)
    scales = {}
    for t in (t for t in c.ts if t.name in names):
        g = grads[names.index(t.name)]
        if g is not None and g.numel() > 0:
            leaf = leaves[t.name].detach().clone().requires_grad_(True)
            (summed,) = torch.autograd.grad(apply_views(leaf, t.views), leaf, g.abs())
            scales["grad." + t.name] = float(summed.max())
    return scales


def build_case(name, idx, seed, dtype):
    gen, ref, _, driver_op = OPS[name]
    key = [seed, idx, sum(map(ord, name)) * 131 + len(name)]
    if dtype == "f32":  # drawn apart from the f64 cases (which stay what they were)
        gen = F32.get(name, gen)
        key.append(32)
    rng = np.random.default_rng(key)
    P, ts = gen(rng)
    c = Case()
    c.name, c.id, c.op, c.P, c.ts, c.dtype = name, f"{name}#{idx}", driver_op, P, ts, dtype
    if dtype == "f32":
        for t in ts:
            if t.is_float():
                t.to_f32()
    c.torch_error, c.term_scale = None, {}
    c.shapes = {t.name: list(apply_views(t.torch_leaf(), t.views).shape) for t in ts}
    # The reference: float64 (in f32 cases on the f32-rounded values).
    try:
        leaves, out = torch_forward(c, ref, torch.float64 if dtype == "f32" else None)
    except Exception as e:  # a generator bug (the configuration should be valid for torch)
        c.torch_error = f"{type(e).__name__}: {e}"
        return c
    c.multi = isinstance(out, (tuple, list))
    c.cots = []
    for o in (list(out) if c.multi else [out]):
        if c.multi and rng.random() < 0.2:  # a piece left out of the backward
            c.cots.append(None)
            continue
        cot = np.array(rng.standard_normal(tuple(o.shape)), dtype=np.float64)
        if name in COT_FIX:
            cot = COT_FIX[name](o.detach().numpy(), cot, c)
        c.cots.append(cot.astype(np.float32).astype(np.float64) if dtype == "f32" else cot)
    # f64 cases that pass through f32 (their tolerance is f32's)
    c.mixed = dtype == "f64" and (any(t.dtype == "f32" for t in ts) or "to:f32" in P.get("chain", ""))
    try:
        c.expected, c.dtypes = torch_results(c, leaves, out, c.cots)
        if dtype == "f32":  # torch's own float32 on the same values: the yardstick
            leaves32, out32 = torch_forward(c, ref, None)
            c.torch32, c.dtypes = torch_results(c, leaves32, out32, c.cots)
            c.term_scale = expand_scales(c, ref, c.cots)
    except Exception as e:
        c.torch_error = f"backward: {type(e).__name__}: {e}"
    return c


def describe(c):
    parts = []
    for t in c.ts:
        s = "x".join(str(d) for d in c.shapes[t.name]) or "scalar"
        if t.views:
            base = "x".join(str(d) for d in t.base.shape)
            s += f"[{base}.{view_desc(t.views)}]"
        if t.dtype != c.dtype:
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
            f.write(f"CASE {c.id} {c.op} {c.dtype}\n".encode())
            for k, v in c.P.items():
                if k.startswith("_"):
                    continue
                if isinstance(v, str):
                    f.write(f"S {k} {v}\n".encode())
                else:
                    vs = v if isinstance(v, (list, tuple)) else [v]
                    f.write(("N " + k + "".join(" " + fmt_num(x) for x in vs) + "\n").encode())
            # cotangents in their output's dtype (a view chain may end in the other float dtype)
            cots = [TS(n.replace("out", "cot"), g, False, dtype=c.dtypes[n])
                    for n, g in zip(output_names(c, len(c.cots)), c.cots) if g is not None]
            for t in list(c.ts) + cots:
                arr = np.array(t.base, dtype=WIRE_DTYPES[t.dtype], order="C")
                dims = " ".join(str(d) for d in arr.shape)
                f.write(f"T {t.name} {t.dtype} {int(t.grad)} {arr.ndim}{(' ' + dims) if dims else ''}\n".encode())
                f.write(arr.tobytes())
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
        r = {"status": status, "msg": parts[3] if len(parts) > 3 else "", "tensors": {}, "dtypes": {},
             "undefined": []}
        while True:
            l = line()
            if l == "END":
                break
            if l.startswith("Z "):
                r["undefined"].append(l[2:])
                continue
            p = l.split()
            assert p[0] == "T", l
            nd = int(p[3])
            shape = tuple(int(x) for x in p[4:4 + nd])
            n = int(np.prod(shape)) if shape else 1
            arr = np.frombuffer(data, dtype="<f8", count=n, offset=pos).reshape(shape).copy()
            pos += 8 * n
            r["tensors"][p[1]] = arr
            r["dtypes"][p[1]] = p[2]
        res[cid] = r
    return res


def nonfinite_mismatch(ref, got):
    """Where one is finite and the other not, or both are non-finite but differ (nan vs inf, signs)."""
    fr, fg = np.isfinite(ref), np.isfinite(got)
    return (fr != fg) | (~fr & ~fg & ~((np.isnan(ref) & np.isnan(got)) | (ref == got)))


def max_err(ref, x):
    """(max |x - ref| over the elements finite in both, 1 + max |ref| over ref's finite elements)."""
    fr, fx = np.isfinite(ref), np.isfinite(x)
    both = fr & fx
    err = float(np.max(np.abs(ref[both] - x[both]))) if both.any() else 0.0
    return err, 1.0 + (float(np.max(np.abs(ref[fr]))) if fr.any() else 0.0)


def worst_at(ref, got, flagged=None):
    """The index of the first flagged element, or else of the largest finite difference."""
    if flagged is None:
        flagged = np.where(np.isfinite(ref) & np.isfinite(got), np.abs(ref - got), 0)
    return np.unravel_index(int(np.argmax(flagged)), ref.shape)


def compare(ref, got, rtol=RTOL):
    """f64: (ok, relative error, note)."""
    if tuple(ref.shape) != tuple(got.shape):
        return False, math.inf, f"shape {list(got.shape)} vs torch {list(ref.shape)}"
    if ref.size == 0:
        return True, 0.0, ""
    err, scale = max_err(ref, got)
    rel = err / scale
    bad_nf = nonfinite_mismatch(ref, got)
    if bad_nf.any():
        i = worst_at(ref, got, bad_nf)
        note = f"non-finite mismatch at {list(i)}: tapegrad {got[i]!r} vs torch {ref[i]!r} ({int(bad_nf.sum())} elems)"
        return False, math.inf if rel <= rtol else rel, note
    if rel > rtol:
        i = worst_at(ref, got)
        return False, rel, f"worst at {list(i)}: tapegrad {got[i]!r} vs torch {ref[i]!r}"
    return True, rel, ""


def compare_f32(ref, ref32, got, floor_eps=F32_FLOOR_EPS, term_scale=0.0):
    """f32: (ok, tapegrad's error, torch f32's error, tapegrad's error / bound, note); errors relative
    to 1 + max |ref|. term_scale: the size of the terms a gradient sums over an expanded input's
    copies (expand_scales), when larger than the result: the floor is relative to 1 + it."""
    if tuple(ref.shape) != tuple(got.shape):
        return False, math.inf, 0.0, math.inf, f"shape {list(got.shape)} vs torch {list(ref.shape)}"
    if ref.size == 0:
        return True, 0.0, 0.0, 0.0, ""
    err, scale = max_err(ref, got)
    err32, _ = max_err(ref, ref32)
    bound = max(F32_TORCH_FACTOR * err32, floor_eps * EPS32 * max(scale, 1.0 + term_scale))
    notes = []
    bad_nf = nonfinite_mismatch(ref, got)
    if bad_nf.any():
        i = worst_at(ref, got, bad_nf)
        notes.append(f"non-finite mismatch at {list(i)}: tapegrad {got[i]!r} vs f64 {ref[i]!r} "
                     f"(torch f32 {ref32[i]!r}; {int(bad_nf.sum())} elems)")
    elif err > bound:
        i = worst_at(ref, got)
        notes.append(f"worst at {list(i)}: tapegrad {got[i]!r} vs f64 {ref[i]!r} (torch f32 {ref32[i]!r}); "
                     f"bound {bound / scale:.1e}")
    torch_nf = int(nonfinite_mismatch(ref, ref32).sum())
    if torch_nf:  # its error is then measured on the elements it has finite
        notes.append(f"torch f32 non-finite where f64 is not: {torch_nf} elems")
    return not bad_nf.any() and err <= bound, err / scale, err32 / scale, err / bound, "; ".join(notes)


def run_driver(args, cases, tmp):
    results = {}
    runnable = [c for c in cases if c.torch_error is None]
    chunk = 400
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
                                     "tensors": {}, "dtypes": {}, "undefined": []}
                else:
                    results.update(read_results(cout))
        else:
            results.update(read_results(cout))
    return results


class OpStats:
    def __init__(self):
        self.passed, self.failed, self.worst, self.worst32, self.margin, self.ratios = 0, 0, 0.0, 0.0, 0.0, []


def check_case(c, r, st):
    """(ok, line) for case c with driver result r; accumulates the op's statistics in st."""
    desc = f"{c.id} {c.dtype} {describe(c)}"
    if c.torch_error is not None:
        return False, f"FAIL {desc} | torch rejected the generated case: {c.torch_error}"
    if r is None or r["status"] != "OK":
        status = "missing" if r is None else r["status"]
        return False, f"FAIL {desc} | tapegrad {status}: {'' if r is None else r['msg']}"
    ok, errs, notes = True, [], []
    for tn, ref in c.expected.items():
        got = r["tensors"].get(tn)
        if got is None:
            ok = False
            errs.append(f"{tn}=missing")
            continue
        if c.dtype == "f32":
            winograd = c.op == "conv2d" and c.P.get("_kind") == "winograd" and tn in ("out", "grad.x")
            good, rel, rel32, margin, note = compare_f32(ref, c.torch32[tn], got,
                                                         WINOGRAD_FLOOR_EPS if winograd else F32_FLOOR_EPS,
                                                         c.term_scale.get(tn, 0.0))
            if winograd:
                note = f"Winograd bound; {note}" if note else "Winograd bound"
            st.worst32, st.margin = max(st.worst32, rel32), max(st.margin, margin)
            if rel32 > 0:
                st.ratios.append(rel / rel32)
            elif rel > 0:
                st.ratios.append(math.inf)
            ratio = f"{rel / rel32:.2g}x" if rel32 > 0 else ("-" if rel == 0 else "inf")
            text = f"{tn}={rel:.1e}({ratio})" + ("[Winograd bound]" if winograd else "")
        else:
            # f64 cases through f32 sum f32 values in an order torch need not share: f32's floor
            good, rel, note = compare(ref, got, F32_FLOOR_EPS * EPS32 if c.mixed else RTOL)
            text = f"{tn}={rel:.1e}"
        if r["dtypes"][tn] != c.dtypes[tn]:
            good = False
            note = f"dtype {r['dtypes'][tn]} vs torch {c.dtypes[tn]}" + (f"; {note}" if note else "")
        st.worst = max(st.worst, rel)
        errs.append(text + ("" if good else "!"))
        if not good:
            ok = False
        if note:
            notes.append(f"{tn}: {note}")
    n_out, n_got = (sum(1 for n in d if n.startswith("out")) for d in (c.expected, r["tensors"]))
    if n_out != n_got:
        ok = False
        notes.append(f"{n_got} outputs vs torch {n_out}")
    if r["undefined"]:
        notes.append("undefined grads (reported as zeros): " + ",".join(r["undefined"]))
    line = f"{'PASS' if ok else 'FAIL'} {desc} | " + " ".join(errs)
    if notes and not ok:
        line += " | " + "; ".join(notes)
    return ok, line


def run_dtype(dtype, names, args, only):
    """Builds, runs and checks the cases of one dtype; prints their lines and the summary."""
    t0 = time.time()
    cases = []
    for n in names:
        count = max(4, int(round(args.cases * OPS[n][2])))
        for i in [only] if only is not None else range(count):
            cases.append(build_case(n, i, args.seed, dtype))
    t_torch = time.time() - t0

    tmp = os.path.join(args.keep, dtype) if args.keep else tempfile.mkdtemp(prefix="torch_diff_")
    os.makedirs(tmp, exist_ok=True)
    t1 = time.time()
    results = run_driver(args, cases, tmp)
    t_driver = time.time() - t1
    if not args.keep:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)

    stats = {n: OpStats() for n in names}
    for c in cases:
        st = stats[c.name]
        ok, line = check_case(c, results.get(c.id), st)
        if ok:
            st.passed += 1
        else:
            st.failed += 1
        if not ok or not args.failures_only:
            print(line)

    print()
    if dtype == "f64":
        print(f"summary f64 (seed {args.seed}; tolerance max|diff| <= {RTOL:g} * (1 + max|torch|) per tensor; "
              f"torch {t_torch:.1f}s, tapegrad driver {t_driver:.1f}s)")
        print(f"  {'op':<22} {'cases':>5} {'pass':>5} {'fail':>5}  worst rel. error")
        for n in names:
            st = stats[n]
            print(f"  {n:<22} {st.passed + st.failed:>5} {st.passed:>5} {st.failed:>5}  {st.worst:.1e}")
    else:
        print(f"summary f32 (seed {args.seed}; per tensor err = max|x - torch f64|, bound = "
              f"max({F32_TORCH_FACTOR:g} err(torch f32), {F32_FLOOR_EPS:g} eps_f32 (1 + max|torch f64|)), "
              f"pass: err(tapegrad) <= bound; worst errors relative to 1 + max|torch f64|; ratio = err(tapegrad) / "
              f"err(torch f32) over the tensors where either is inexact; torch {t_torch:.1f}s, tapegrad driver "
              f"{t_driver:.1f}s)")
        print(f"  {'op':<22} {'cases':>5} {'pass':>5} {'fail':>5}  {'tapegrad':>8} {'torch32':>8}  "
              f"{'ratio max':>9} {'median':>7}  err/bound")
        for n in names:
            st = stats[n]
            rs = sorted(st.ratios)
            rmax = f"{rs[-1]:.3g}" if rs else "-"
            rmed = f"{rs[len(rs) // 2]:.3g}" if rs else "-"
            print(f"  {n:<22} {st.passed + st.failed:>5} {st.passed:>5} {st.failed:>5}  {st.worst:>8.1e} "
                  f"{st.worst32:>8.1e}  {rmax:>9} {rmed:>7}  {st.margin:9.2g}")
    tp = sum(s.passed for s in stats.values())
    tf = sum(s.failed for s in stats.values())
    print(f"  {'total ' + dtype:<22} {tp + tf:>5} {tp:>5} {tf:>5}")
    print()
    return tf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["f64", "f32", "both"], default="both")
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
    failed = 0
    for dtype in (["f64", "f32"] if args.dtype == "both" else [args.dtype]):
        failed += run_dtype(dtype, names, args, only)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
