"""PyTorch reference for bench_transformer: the model and step of
../shared/bench-reference/py/train_transformer.py (unchanged), printing bench_util JSON lines with
the same workload/shape names as the tapegrad program.

4 layers, d_model 256, 4 heads (head dim 64), seq 128, batch 16 (2048 tokens/step), pre-norm
(LayerNorm, or --norm rms for an unfused eager RMSNorm), causal self-attention with RoPE
(rotate-half form, base 10000) written out explicitly (torch 1.13 has no fused SDPA), MLP 4x with
GELU (erf), residuals, final norm, byte-level vocab 256 embedding + untied LM head, next-token
cross-entropy, AdamW(lr 3e-4, wd 0.1). Biases off in attention/MLP projections.
  python3 ref_transformer.py [--threads N] [--warmup W] [--steps S] [--norm layer|rms]
"""
import math
import statistics

import bench_util as bu


def extra(p):
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--norm", choices=["layer", "rms"], default="layer")


def build(args):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RMSNorm(nn.Module):
        def __init__(self, d, eps=1e-6):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def Norm(d):
        return nn.LayerNorm(d) if args.norm == "layer" else RMSNorm(d)

    def rope_tables(T, hd, base=10000.0):
        inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        t = torch.arange(T, dtype=torch.float32)
        f = torch.outer(t, inv)                    # [T, hd/2]
        emb = torch.cat([f, f], dim=-1)            # [T, hd]
        return emb.cos()[None, None], emb.sin()[None, None]

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.n1 = Norm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.proj = nn.Linear(d, d, bias=False)
            self.n2 = Norm(d)
            self.fc1 = nn.Linear(d, 4 * d, bias=False)
            self.fc2 = nn.Linear(4 * d, d, bias=False)

        def forward(self, x, cos, sin, mask):
            B, T, D = x.shape
            hd = D // self.h
            q, k, v = self.qkv(self.n1(x)).split(D, dim=-1)
            q = q.view(B, T, self.h, hd).transpose(1, 2)
            k = k.view(B, T, self.h, hd).transpose(1, 2)
            v = v.view(B, T, self.h, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, D)
            x = x + self.proj(y)
            x = x + self.fc2(F.gelu(self.fc1(self.n2(x))))
            return x

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            d = args.d_model
            self.emb = nn.Embedding(args.vocab, d)
            self.blocks = nn.ModuleList([Block(d, args.heads) for _ in range(args.layers)])
            self.nf = Norm(d)
            self.head = nn.Linear(d, args.vocab, bias=False)
            cos, sin = rope_tables(args.seq, d // args.heads)
            self.register_buffer("cos", cos)
            self.register_buffer("sin", sin)
            self.register_buffer(
                "mask", torch.triu(torch.ones(args.seq, args.seq, dtype=torch.bool), 1))

        def forward(self, idx):
            x = self.emb(idx)
            for b in self.blocks:
                x = b(x, self.cos, self.sin, self.mask)
            return self.head(self.nf(x))

    return LM()


def main():
    args = bu.parse_args(__doc__, extra)
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = build(args)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    nparams = sum(p.numel() for p in model.parameters())
    nb = 4
    data = torch.randint(0, args.vocab, (nb, args.batch, args.seq + 1))
    it = [0]

    def step():
        i = it[0] % nb
        it[0] += 1
        x, y = data[i, :, :-1], data[i, :, 1:]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), y.reshape(-1))
        loss.backward()
        opt.step()

    times = bu.time_steps(step, args.warmup, args.steps)
    tokens = args.batch * args.seq
    d, L, T = args.d_model, args.layers, args.seq
    flops = 3 * 2 * tokens * (L * 12 * d * d + d * args.vocab) + 3 * 2 * L * 2 * args.batch * T * T * d
    median = statistics.median(times)
    shape = "%stransformer L%d d%d h%d B%d T%d" % ("rms " if args.norm == "rms" else "", L, d, args.heads,
                                                   args.batch, T)
    bu.emit("train_transformer", shape + " step", args.threads, times,
            tokens_per_s=round(tokens / median, 1), matmul_gflops_at_median=round(flops / median / 1e9, 1),
            params=nparams)

    def fwd():
        with torch.no_grad():
            model(data[0, :, :-1])

    ftimes = bu.time_steps(fwd, 2, max(5, args.steps // 2))
    fmed = statistics.median(ftimes)
    bu.emit("train_transformer", shape + " fwd (no_grad)", args.threads, ftimes,
            tokens_per_s=round(tokens / fmed, 1))


if __name__ == "__main__":
    main()
