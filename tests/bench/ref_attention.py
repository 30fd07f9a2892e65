#!/usr/bin/env python3
"""PyTorch 1.13 reference for tests/bench/bench_attention.cpp (same JSON lines, workload "attention").

B=16, H=4, T=128, d=64 float32, q/k/v [B, H, T, d] contiguous, causal and not, computed as an
eager model does (as in ../shared/bench-reference/py/train_transformer.py):
    att = (q @ k.transpose(-2, -1)) * scale; att = att.masked_fill(mask, -inf)  (causal only)
    y = att.softmax(-1) @ v
  fwd      under torch.no_grad()
  fwd+bwd  q, k, v require grad; y.backward(dy); grads reset to None every step
torch 1.13 has no F.scaled_dot_product_attention (added in 2.0); the script checks and, if a
newer torch provides it, also times it as impl "pytorch-sdpa".
gflops counts 4*B*H*T*T*d per forward (full T^2, also for causal), 3x for forward+backward.

Usage: /usr/bin/python3 ref_attention.py --threads 1 [--warmup 3 --steps 20 --B 16 --H 4 --T 128 --d 64]
"""
import json
import math
import statistics

import bench_util as bu


def main():
    def extra(p):
        for name, default in (("--B", 16), ("--H", 4), ("--T", 128), ("--d", 64)):
            p.add_argument(name, type=int, default=default)

    args = bu.parse_args(__doc__, extra)
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    B, H, T, d = args.B, args.H, args.T, args.d
    q0, k0, v0, dy = (torch.randn(B, H, T, d) for _ in range(4))
    scale = 1.0 / math.sqrt(d)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    fwd_flops = 4.0 * B * H * T * T * d
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    bu.log("# torch %s, F.scaled_dot_product_attention available: %s" % (torch.__version__, has_sdpa))

    def eager(q, k, v, causal):
        att = (q @ k.transpose(-2, -1)) * scale
        if causal:
            att = att.masked_fill(mask, float("-inf"))
        return att.softmax(dim=-1) @ v

    impls = [("pytorch", eager)]
    if has_sdpa:
        impls.append(("pytorch-sdpa", lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal)))

    for causal in (False, True):
        shape = "B=%d H=%d T=%d d=%d f32%s" % (B, H, T, d, " causal" if causal else "")
        for impl, fn in impls:
            def fwd():
                with torch.no_grad():
                    fn(q0, k0, v0, causal)

            q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))

            def fwd_bwd():
                q.grad = k.grad = v.grad = None
                fn(q, k, v, causal).backward(dy)

            for pass_name, step, flops in (("fwd", fwd, fwd_flops), ("fwd+bwd", fwd_bwd, 3 * fwd_flops)):
                times = bu.time_steps(step, args.warmup, args.steps)
                rec = {"workload": "attention", "shape": "%s %s" % (pass_name, shape), "threads": args.threads,
                       "impl": impl, "median_s": statistics.median(times), "min_s": min(times),
                       "max_s": max(times), "steps": len(times), "pass": pass_name, "causal": causal,
                       "gflops": round(flops / statistics.median(times) / 1e9, 2)}
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
