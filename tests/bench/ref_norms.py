#!/usr/bin/env python3
"""PyTorch 1.13 reference for tests/bench/bench_norms.cpp (same JSON lines, workload "norms").

[4096, 1024] float32, compulsory traffic as in ../shared/bench-reference/py/elementwise.py:
  *_fwd  reads x, writes y (8 B/elem); fresh output allocation each call, as eager code does
  *_bwd  reads x (y for softmax) and dy, writes dx (12 B/elem); weight/bias grads where they exist
Backward kernels are called directly where aten has one (native_layer_norm_backward,
_softmax_backward_data, gelu_backward), so autograd overhead is excluded there. PyTorch 1.13 has
no fused RMSNorm: rms_norm is the eager formula x * rsqrt(mean(x^2) + eps) * w (as in
../shared/bench-reference/py/train_transformer.py), and its backward is torch.autograd.grad of
that graph (retain_graph), as a training step would run it.

Usage: python3 ref_norms.py --threads 1 [--warmup 3 --steps 20 --rows 4096 --cols 1024]
Run with /usr/bin/python3 (Debian's torch 1.13).
"""
import statistics

import bench_util as bu


def main():
    args = bu.parse_args(__doc__, lambda p: (p.add_argument("--rows", type=int, default=4096),
                                             p.add_argument("--cols", type=int, default=1024)))
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    R, C = args.rows, args.cols
    x, dy = torch.randn(R, C), torch.randn(R, C)
    w, b = torch.randn(C), torch.randn(C)
    y_sm = torch.softmax(x, -1)
    _, mean, rstd = torch.native_layer_norm(x, [C], w, b, 1e-5)
    aten = torch.ops.aten
    M = R * C
    shape = "[%d, %d] f32" % (R, C)

    def rms(xx, ww):
        return xx * torch.rsqrt(xx.pow(2).mean(-1, keepdim=True) + 1e-6) * ww

    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y_rms = rms(xr, wr)

    ops = [
        ("layer_norm_fwd", lambda: F.layer_norm(x, [C], w, b, 1e-5), 8 * M),
        ("rms_norm_fwd", lambda: rms(x, w), 8 * M),
        ("softmax_fwd", lambda: torch.softmax(x, -1), 8 * M),
        ("gelu_fwd", lambda: F.gelu(x), 8 * M),
        ("layer_norm_bwd", lambda: aten.native_layer_norm_backward(
            dy, x, [C], mean, rstd, w, b, [True, True, True]), 12 * M),
        ("rms_norm_bwd", lambda: torch.autograd.grad(y_rms, (xr, wr), dy, retain_graph=True), 12 * M),
        ("softmax_bwd", lambda: aten._softmax_backward_data(dy, y_sm, -1, torch.float32), 12 * M),
        ("gelu_bwd", lambda: aten.gelu_backward(dy, x), 12 * M),
    ]
    for name, fn, nbytes in ops:
        if name.endswith("_fwd"):
            with torch.no_grad():
                times = bu.time_steps(fn, args.warmup, args.steps)
        else:
            times = bu.time_steps(fn, args.warmup, args.steps)
        med, lo = statistics.median(times), min(times)
        bu.emit("norms", "%s %s" % (name, shape), args.threads, times, op=name, bytes=nbytes,
                gbs_at_median=round(nbytes / med / 1e9, 2), gbs_at_min=round(nbytes / lo / 1e9, 2))


if __name__ == "__main__":
    main()
