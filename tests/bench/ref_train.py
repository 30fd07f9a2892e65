"""PyTorch references for bench_train: the models and steps of
../shared/bench-reference/py/train_mlp.py and train_cnn.py, printing bench_util JSON lines.
  python3 ref_train.py mlp|cnn [--threads N] [--warmup W] [--steps S] [--batch B]
"""
import bench_util as bu


def main():
    args = bu.parse_args(__doc__, lambda p: (p.add_argument("what", choices=["mlp", "cnn"]),
                                             p.add_argument("--batch", type=int, default=128)))
    import torch
    import torch.nn as nn

    torch.manual_seed(args.seed)
    if args.what == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                              nn.Linear(512, 10))
        nbatches = 16
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
        nbatches = 8
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.randn(nbatches, args.batch, 1, 28, 28)
    ys = torch.randint(0, 10, (nbatches, args.batch))
    it = [0]

    def step():
        i = it[0] % nbatches
        it[0] += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[i]), ys[i])
        loss.backward()
        opt.step()

    shape = "%s B%d" % (args.what, args.batch)
    times = bu.time_steps(step, args.warmup, args.steps)
    bu.emit("train_" + args.what, shape + " step", args.threads, times,
            samples_per_s=round(args.batch / sorted(times)[len(times) // 2], 1))
    if args.what == "cnn":
        def fwd():
            with torch.no_grad():
                model(xs[0])
        bu.emit("train_" + args.what, shape + " fwd (no_grad)", args.threads,
                bu.time_steps(fwd, 3, max(5, args.steps // 2)))


if __name__ == "__main__":
    main()
