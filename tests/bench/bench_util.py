"""Shared helpers for the PyTorch reference benchmarks (adapted from ../shared/bench-reference/py).

Each reference script mirrors one tapegrad benchmark program and prints the same JSON lines:
  {"workload": ..., "shape": ..., "threads": N, "impl": "pytorch", "median_s": ..., ...}
Thread setup limits both torch's intra-op pool and OpenBLAS's own pool (threadpoolctl), as the
reference scripts do; see ../shared/bench-reference/README.md for why that matters.
"""
import argparse
import json
import statistics
import sys
import time


def parse_args(description, extra=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    if extra:
        extra(p)
    args = p.parse_args()
    setup_threads(args.threads)
    return args


def setup_threads(n):
    import torch

    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        global _limiter
        _limiter = threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass


def time_steps(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def emit(workload, shape, threads, times, **extra):
    rec = {"workload": workload, "shape": shape, "threads": threads, "impl": "pytorch",
           "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "steps": len(times)}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


def log(*a):
    print(*a, file=sys.stderr, flush=True)
