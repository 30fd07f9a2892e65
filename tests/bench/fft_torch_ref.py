#!/usr/bin/env python3
"""PyTorch reference timings for tests/bench/fft_bench.cpp.

Usage: fft_torch_ref.py [threads=1] [samples=7]
Times the same three pieces as fft_bench.cpp with torch.fft (pocketfft on CPU):
  rfft   : torch.fft.rfft(u, n=2L) for u of shape [16, 256, L] (float32)
  irfft  : torch.fft.irfft(U, n=2L)[..., :L]
  fftconv: rfft(u, 2L), rfft(k, 2L) for k [256, L], U * K broadcast, irfft, [..., :L]
and prints one RESULT JSON line per (piece, L) with impl "pytorch".
"""
import json
import statistics
import sys
import time

import torch


def timeit(fn, samples):
    fn()  # warm-up (allocator, plan cache)
    ts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    torch.set_num_threads(threads)
    B, C = 16, 256
    g = torch.Generator().manual_seed(0)
    for L in (1024, 4096):
        n = 2 * L
        u = torch.randn(B, C, L, generator=g)
        k = torch.randn(C, L, generator=g)
        U = torch.fft.rfft(u, n=n)

        def piece_rfft():
            return torch.fft.rfft(u, n=n)

        def piece_irfft():
            return torch.fft.irfft(U, n=n)[..., :L]

        def piece_conv():
            Uf = torch.fft.rfft(u, n=n)
            Kf = torch.fft.rfft(k, n=n)
            return torch.fft.irfft(Uf * Kf, n=n)[..., :L]

        for name, fn in (("rfft", piece_rfft), ("irfft", piece_irfft), ("fftconv", piece_conv)):
            med, lo, hi = timeit(fn, samples)
            print("RESULT " + json.dumps({
                "workload": "fftconv_kernels", "piece": name, "shape": f"L={L}",
                "B": B, "C": C, "n_fft": n, "threads": threads, "impl": "pytorch",
                "median_s": med, "min_s": lo, "max_s": hi}), flush=True)


if __name__ == "__main__":
    main()
