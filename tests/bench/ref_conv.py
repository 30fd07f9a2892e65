"""PyTorch reference for tests/bench/bench_conv.cpp: the convolution layers of the small CNN
(/work/shared/bench-reference/py/train_cnn.py) at batch 128, timed op by op.

Measurements (one JSON line each, workload "conv2d"; same names as bench_conv.cpp):
  conv1 3x3 1->32 pad1 N128 28x28 fwd        (no grad)
  conv1 3x3 1->32 pad1 N128 28x28 fwd+bwd    (weight + bias grads; no input grad, as in the CNN)
  conv2 3x3 32->64 pad1 N128 14x14 fwd       (no grad)
  conv2 3x3 32->64 pad1 N128 14x14 fwd+bwd   (input, weight and bias grads)
  maxpool1 2x2 N128 C32 28x28 fwd+bwd
  maxpool2 2x2 N128 C64 14x14 fwd+bwd
  stack conv1+relu+pool+conv2+relu+pool N128 fwd+bwd
The backward is seeded with a fixed random cotangent (y.backward(g)); grads are reset to None
before each step, as zero_grad(set_to_none=True) does.

Usage: python3 tests/bench/ref_conv.py --threads 1 [--warmup 3 --steps 20]
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_util as bu  # noqa: E402


def main():
    args = bu.parse_args(__doc__)
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    B = 128
    x1 = torch.randn(B, 1, 28, 28)
    w1 = torch.randn(32, 1, 3, 3) * 0.3
    b1 = torch.randn(32) * 0.1
    x2 = torch.randn(B, 32, 14, 14)
    w2 = torch.randn(64, 32, 3, 3) * 0.05
    b2 = torch.randn(64) * 0.1
    g1 = torch.randn(B, 32, 28, 28)
    g2 = torch.randn(B, 64, 14, 14)
    p1 = torch.randn(B, 32, 28, 28)
    p2 = torch.randn(B, 64, 14, 14)
    gp1 = torch.randn(B, 32, 14, 14)
    gp2 = torch.randn(B, 64, 7, 7)
    gs = torch.randn(B, 64, 7, 7)

    conv1_flops, conv2_flops = 2.0 * B * 28 * 28 * 32 * 9, 2.0 * B * 14 * 14 * 64 * 32 * 9

    # Wall time per step (bench_util) and, as an extra field, the process CPU time per step: on a
    # shared machine the CPU time of a 1-thread run is robust to other processes.
    def run(shape, fn, flops=0):
        cpu = []

        def step():
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)

        times = bu.time_steps(step, args.warmup, args.steps)
        extra = {"cpu_median_s": statistics.median(cpu[args.warmup:])}
        if flops:
            extra["gflops"] = round(flops / statistics.median(times) / 1e9, 1)
        bu.emit("conv2d", shape, args.threads, times, **extra)

    def conv1_fwd():
        with torch.no_grad():
            F.conv2d(x1, w1, b1, padding=1)

    w1g, b1g = w1.clone().requires_grad_(), b1.clone().requires_grad_()
    w2g, b2g = w2.clone().requires_grad_(), b2.clone().requires_grad_()
    x2g = x2.clone().requires_grad_()

    def reset():
        for t in (w1g, b1g, w2g, b2g, x2g):
            t.grad = None

    def conv1_fwd_bwd():
        reset()
        F.conv2d(x1, w1g, b1g, padding=1).backward(g1)

    def conv2_fwd():
        with torch.no_grad():
            F.conv2d(x2, w2, b2, padding=1)

    def conv2_fwd_bwd():
        reset()
        F.conv2d(x2g, w2g, b2g, padding=1).backward(g2)

    def pool(p, g):
        pg = p.clone().requires_grad_()

        def fn():
            pg.grad = None
            F.max_pool2d(pg, 2).backward(g)
        return fn

    def stack():
        reset()
        h = F.max_pool2d(F.relu(F.conv2d(x1, w1g, b1g, padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2g, b2g, padding=1)), 2)
        h.backward(gs)

    run("conv1 3x3 1->32 pad1 N128 28x28 fwd", conv1_fwd, conv1_flops)
    run("conv1 3x3 1->32 pad1 N128 28x28 fwd+bwd", conv1_fwd_bwd, 2 * conv1_flops)
    run("conv2 3x3 32->64 pad1 N128 14x14 fwd", conv2_fwd, conv2_flops)
    run("conv2 3x3 32->64 pad1 N128 14x14 fwd+bwd", conv2_fwd_bwd, 3 * conv2_flops)
    run("maxpool1 2x2 N128 C32 28x28 fwd+bwd", pool(p1, gp1))
    run("maxpool2 2x2 N128 C64 14x14 fwd+bwd", pool(p2, gp2))
    run("stack conv1+relu+pool+conv2+relu+pool N128 fwd+bwd", stack, 2 * conv1_flops + 3 * conv2_flops)


if __name__ == "__main__":
    main()
