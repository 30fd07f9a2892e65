"""PyTorch reference for bench_unet: the UNet and steps of ../shared/bench-reference/py/train_unet.py
(same layout, sizes, Adam, MSE noise loss, batch 64, 28x28), printing bench_util JSON lines:
  "unet B64 28x28 step"           zero_grad + forward + loss + backward + Adam step
  "unet B64 28x28 fwd (no_grad)"  one forward under torch.no_grad() (a sampling step)
  python3 ref_unet.py [--threads N] [--warmup W] [--steps S] [--batch B]
"""
import math
import time

import bench_util as bu


def build():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, tdim):
            super().__init__()
            self.n1 = nn.GroupNorm(8, cin)
            self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(tdim, cout)
            self.n2 = nn.GroupNorm(8, cout)
            self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, temb):
            h = self.c1(F.silu(self.n1(x)))
            h = h + self.t(temb)[:, :, None, None]
            h = self.c2(F.silu(self.n2(h)))
            return h + self.skip(x)

    class UNet(nn.Module):
        def __init__(self, tdim=128):
            super().__init__()
            self.tmlp = nn.Sequential(nn.Linear(64, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
            self.cin = nn.Conv2d(1, 32, 3, padding=1)
            self.r0 = ResBlock(32, 32, tdim)
            self.d0 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
            self.r1 = ResBlock(32, 64, tdim)
            self.d1 = nn.Conv2d(64, 64, 3, stride=2, padding=1)
            self.m0 = ResBlock(64, 128, tdim)
            self.m1 = ResBlock(128, 128, tdim)
            self.u1 = nn.Conv2d(128, 128, 3, padding=1)
            self.r2 = ResBlock(128 + 64, 64, tdim)
            self.u0 = nn.Conv2d(64, 64, 3, padding=1)
            self.r3 = ResBlock(64 + 32, 32, tdim)
            self.nout = nn.GroupNorm(8, 32)
            self.cout = nn.Conv2d(32, 1, 3, padding=1)

        @staticmethod
        def sinusoidal(t, dim=64):
            half = dim // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            a = t.float()[:, None] * freqs[None]
            return torch.cat([a.sin(), a.cos()], dim=-1)

        def forward(self, x, t):
            temb = self.tmlp(self.sinusoidal(t))
            h0 = self.r0(self.cin(x), temb)                     # 32 @ 28
            h1 = self.r1(self.d0(h0), temb)                     # 64 @ 14
            h = self.m1(self.m0(self.d1(h1), temb), temb)       # 128 @ 7
            h = self.u1(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = self.r2(torch.cat([h, h1], dim=1), temb)        # 64 @ 14
            h = self.u0(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = self.r3(torch.cat([h, h0], dim=1), temb)        # 32 @ 28
            return self.cout(F.silu(self.nout(h)))

    return UNet()


def main():
    args = bu.parse_args(__doc__, lambda p: p.add_argument("--batch", type=int, default=64))
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = build()
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    B = args.batch
    nb = 4
    x0 = torch.randn(nb, B, 1, 28, 28)
    noise = torch.randn(nb, B, 1, 28, 28)
    ts = torch.randint(0, 1000, (nb, B))
    abar = torch.linspace(0.9999, 0.01, 1000)
    it = [0]

    def step():
        i = it[0] % nb
        it[0] += 1
        a = abar[ts[i]][:, None, None, None]
        xt = a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i]
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(xt, ts[i]), noise[i])
        loss.backward()
        opt.step()

    shape = "unet B%d 28x28" % B

    def measure(fn, warmup):
        # The steps after the warmup, and the process CPU time per step (at 1 thread the compute
        # time even when other jobs share the cores).
        for _ in range(warmup):
            fn()
        c0 = time.process_time()
        times = bu.time_steps(fn, 0, args.steps)
        return times, (time.process_time() - c0) / args.steps

    times, cpu = measure(step, args.warmup)
    bu.emit("train_unet", shape + " step", args.threads, times, cpu_s_per_step=round(cpu, 6), params=nparams)

    def fwd():
        with torch.no_grad():
            model(x0[0], ts[0])

    times, cpu = measure(fwd, 3)
    bu.emit("train_unet", shape + " fwd (no_grad)", args.threads, times, cpu_s_per_step=round(cpu, 6))


if __name__ == "__main__":
    main()
