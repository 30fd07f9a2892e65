#!/usr/bin/env python3
"""PyTorch reference for tests/bench/bench_fftconv.cpp (same JSON lines, workload "fftconv").

Exactly /work/shared/bench-reference/py/fft_conv.py: u [B=16, C=256, L] (requires grad),
k [C, L] * exp(-0.001) (parameter), D [C, 1] (parameter), n = 2L,
  y = irfft(rfft(u, n) * rfft(k, n), n)[..., :L] + D * u
  fwd     : under torch.no_grad()
  fwd+bwd : grads reset, y.backward(g) for a fixed random g (gradients for u, k and D)
for L in {1024, 4096}.

Usage: /usr/bin/python3 ref_fftconv.py --threads 1 [--warmup 3 --steps 20 --batch 16 --channels 256
       --lengths 1024,4096]
"""
import math

import bench_util as bu


def main():
    def extra(p):
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--channels", type=int, default=256)
        p.add_argument("--lengths", default="1024,4096")

    args = bu.parse_args(__doc__, extra)
    import torch

    torch.manual_seed(args.seed)
    for L in [int(x) for x in args.lengths.split(",")]:
        B, C = args.batch, args.channels
        u = torch.randn(B, C, L, requires_grad=True)
        k = (torch.randn(C, L) * math.exp(-0.001 * 1)).requires_grad_(True)
        D = torch.randn(C, 1, requires_grad=True)
        g = torch.randn(B, C, L)
        n = 2 * L

        def fwd_only():
            with torch.no_grad():
                kf = torch.fft.rfft(k, n=n)
                uf = torch.fft.rfft(u, n=n)
                y = torch.fft.irfft(uf * kf, n=n)[..., :L] + D * u
            return y

        def fwd_bwd():
            u.grad = None
            k.grad = None
            D.grad = None
            kf = torch.fft.rfft(k, n=n)
            uf = torch.fft.rfft(u, n=n)
            y = torch.fft.irfft(uf * kf, n=n)[..., :L] + D * u
            y.backward(g)

        shape = "B=%d C=%d L=%d f32" % (B, C, L)
        common = {"B": B, "C": C, "L": L, "n_fft": n}
        fwd_times = bu.time_steps(fwd_only, args.warmup, args.steps)
        bu.emit("fftconv", shape + " fwd", args.threads, fwd_times, phase="fwd", **common)
        bwd_times = bu.time_steps(fwd_bwd, args.warmup, args.steps)
        bu.emit("fftconv", shape + " fwd+bwd", args.threads, bwd_times, phase="fwd+bwd", **common)
        del u, k, D, g


if __name__ == "__main__":
    main()
