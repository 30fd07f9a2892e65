// The convolution layers of the small CNN (/work/shared/bench-reference/py/train_cnn.py) at batch
// 128, timed op by op; tests/bench/ref_conv.py times exactly the same things in PyTorch.
//
// Measurements (one JSON line each, workload "conv2d", see bench_util.hpp):
//   conv1 3x3 1->32 pad1 N128 28x28 fwd        (no grad)
//   conv1 3x3 1->32 pad1 N128 28x28 fwd+bwd    (weight + bias grads; no input grad, as in the CNN)
//   conv2 3x3 32->64 pad1 N128 14x14 fwd       (no grad)
//   conv2 3x3 32->64 pad1 N128 14x14 fwd+bwd   (input, weight and bias grads)
//   maxpool1 2x2 N128 C32 28x28 fwd+bwd
//   maxpool2 2x2 N128 C64 14x14 fwd+bwd
//   stack conv1+relu+pool+conv2+relu+pool N128 fwd+bwd
// The backward is seeded with a fixed random cotangent; grads are reset before each step.
//
// Usage: bench_conv [--threads N] [--warmup W] [--steps S]
#include <fmt/core.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

namespace {
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
}  // namespace

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(argc, argv);
  manual_seed(0);
  const std::int64_t B = 128;
  const Tensor x1 = randn({B, 1, 28, 28}), w1 = randn({32, 1, 3, 3}) * 0.3, b1 = randn({32}) * 0.1;
  const Tensor x2 = randn({B, 32, 14, 14}), w2 = randn({64, 32, 3, 3}) * 0.05, b2 = randn({64}) * 0.1;
  const Tensor g1 = randn({B, 32, 28, 28}), g2 = randn({B, 64, 14, 14});
  const Tensor p1 = randn({B, 32, 28, 28}), p2 = randn({B, 64, 14, 14});
  const Tensor gp1 = randn({B, 32, 14, 14}), gp2 = randn({B, 64, 7, 7}), gs = randn({B, 64, 7, 7});
  const ops::Conv2dOptions pad1{{1, 1}, {1, 1}};

  Tensor w1g = w1.detach().requires_grad_(), b1g = b1.detach().requires_grad_();
  Tensor w2g = w2.detach().requires_grad_(), b2g = b2.detach().requires_grad_();
  Tensor x2g = x2.detach().requires_grad_();
  auto reset = [&] {
    for (Tensor* t : {&w1g, &b1g, &w2g, &b2g, &x2g}) t->reset_grad();
  };

  const double conv1_flops = 2.0 * B * 28 * 28 * 32 * 9, conv2_flops = 2.0 * B * 14 * 14 * 64 * 32 * 9;
  // Wall time per step (bench_util's statistics) and, as an extra field, the process CPU time per
  // step: on a shared machine the CPU time of a 1-thread run is robust to other processes.
  auto run = [&](const char* shape, double flops, auto&& fn) {
    std::vector<double> cpu;
    const bench::Stats s = bench::time_steps(
        [&] {
          const double c0 = cpu_seconds();
          fn();
          cpu.push_back(cpu_seconds() - c0);
        },
        args.warmup, args.steps);
    cpu.erase(cpu.begin(), cpu.begin() + args.warmup);
    std::sort(cpu.begin(), cpu.end());
    const double cpu_median = cpu.size() % 2 ? cpu[cpu.size() / 2] : 0.5 * (cpu[cpu.size() / 2 - 1] + cpu[cpu.size() / 2]);
    std::string extra = fmt::format("\"cpu_median_s\": {:.6g}", cpu_median);
    if (flops > 0) extra += fmt::format(", \"gflops\": {:.1f}", flops / s.median_s / 1e9);
    bench::emit("conv2d", shape, args.threads, s, extra);
  };

  run("conv1 3x3 1->32 pad1 N128 28x28 fwd", conv1_flops, [&] {
    NoGradGuard no_grad;
    ops::conv2d(x1, w1, b1, pad1);
  });
  run("conv1 3x3 1->32 pad1 N128 28x28 fwd+bwd", 2 * conv1_flops, [&] {
    reset();
    ops::conv2d(x1, w1g, b1g, pad1).backward(g1);
  });
  run("conv2 3x3 32->64 pad1 N128 14x14 fwd", conv2_flops, [&] {
    NoGradGuard no_grad;
    ops::conv2d(x2, w2, b2, pad1);
  });
  run("conv2 3x3 32->64 pad1 N128 14x14 fwd+bwd", 3 * conv2_flops, [&] {
    reset();
    ops::conv2d(x2g, w2g, b2g, pad1).backward(g2);
  });
  auto pool = [&](const Tensor& p, const Tensor& g) {
    return [pg = p.detach().requires_grad_(), g]() mutable {
      pg.reset_grad();
      ops::max_pool2d(pg, {2, 2}).backward(g);
    };
  };
  run("maxpool1 2x2 N128 C32 28x28 fwd+bwd", 0, pool(p1, gp1));
  run("maxpool2 2x2 N128 C64 14x14 fwd+bwd", 0, pool(p2, gp2));
  run("stack conv1+relu+pool+conv2+relu+pool N128 fwd+bwd", 2 * conv1_flops + 3 * conv2_flops, [&] {
    reset();
    Tensor h = ops::max_pool2d(ops::relu(ops::conv2d(x1, w1g, b1g, pad1)), {2, 2});
    h = ops::max_pool2d(ops::relu(ops::conv2d(h, w2g, b2g, pad1)), {2, 2});
    h.backward(gs);
  });
  return 0;
}
