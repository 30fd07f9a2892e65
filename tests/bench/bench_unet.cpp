// The small denoising UNet of ../shared/bench-reference/py/train_unet.py, built from tapegrad modules
// with exactly the same layout and sizes, timed like the reference (tests/bench/ref_unet.py prints
// the same JSON lines for PyTorch):
//   "unet B64 28x28 step"           zero_grad + forward + MSE noise loss + backward + Adam step
//   "unet B64 28x28 fwd (no_grad)"  one forward under NoGradGuard (a sampling step)
// Layout (channels 32/64/128 at 28/14/7):
//   conv_in 1->32 | Res(32->32)@28 [skip0] | down->14 | Res(32->64)@14 [skip1] | down->7 |
//   Res(64->128)@7, Res(128->128)@7 | up->14 | cat skip1 | Res(192->64)@14 | up->28 |
//   cat skip0 | Res(96->32)@28 | GN+SiLU+conv_out 32->1
// ResBlock = GroupNorm(8)+SiLU+conv3x3, + Linear(temb) per channel, GroupNorm(8)+SiLU+conv3x3,
// + 1x1 conv shortcut when the channels change. Time embedding: sinusoidal(64) -> Linear(64,128)
// -> SiLU -> Linear(128,128). Down: conv3x3 stride 2. Up: nearest x2 + conv3x3 (the same function
// as one op, nn::Conv2d::upsampled: no upsampled image, 16 instead of 36 multiply-adds per output).
// Adam lr 2e-4.
//
//   bench_unet [--threads N] [--warmup W] [--steps S] [batch] [all|step|fwd]   (step/fwd: one of the two, e.g. for perf)
#include <fmt/core.h>

#include <ctime>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "nn/conv.hpp"
#include "nn/linear.hpp"
#include "nn/norm.hpp"
#include "nn/optim.hpp"
#include "nn/positional.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/shape.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

namespace {

nn::Conv2d conv3(std::int64_t in, std::int64_t out, std::int64_t stride = 1) {
  nn::Conv2dOptions options;
  options.stride = {stride, stride};
  options.padding = {1, 1};
  return nn::Conv2d(in, out, 3, options);
}

struct ResBlock : nn::Module {
  nn::GroupNorm n1, n2;
  nn::Conv2d c1, c2, skip;
  nn::Linear t;
  ResBlock(std::int64_t cin, std::int64_t cout, std::int64_t tdim)
      : n1(8, cin), n2(8, cout), c1(conv3(cin, cout)), c2(conv3(cout, cout)), t(tdim, cout) {
    if (cin != cout) skip = nn::Conv2d(cin, cout, 1);
  }
  Tensor operator()(const Tensor& x, const Tensor& temb) const {
    const std::int64_t B = x.shape()[0], C = c1.weight.shape()[0];
    Tensor h = c1(n1.with_silu(x));      // [B, cout, H, W]
    h = h + t(temb).reshape({B, C, 1, 1});
    h = c2(n2.with_silu(h));             // [B, cout, H, W]
    return h + (skip.weight.defined() ? skip(x) : x);
  }
  void visit(nn::Visitor& v) override {
    v.module("n1", n1);
    v.module("c1", c1);
    v.module("t", t);
    v.module("n2", n2);
    v.module("c2", c2);
    if (skip.weight.defined()) v.module("skip", skip);
  }
  std::string type_name() const override { return "ResBlock"; }
};

struct RefUNet : nn::Module {
  nn::Linear tm0{64, 128}, tm1{128, 128};
  nn::Conv2d cin = conv3(1, 32);
  ResBlock r0{32, 32, 128};
  nn::Conv2d d0 = conv3(32, 32, 2);
  ResBlock r1{32, 64, 128};
  nn::Conv2d d1 = conv3(64, 64, 2);
  ResBlock m0{64, 128, 128}, m1{128, 128, 128};
  nn::Conv2d u1 = conv3(128, 128);
  ResBlock r2{128 + 64, 64, 128};
  nn::Conv2d u0 = conv3(64, 64);
  ResBlock r3{64 + 32, 32, 128};
  nn::GroupNorm nout{8, 32};
  nn::Conv2d cout = conv3(32, 1);

  Tensor operator()(const Tensor& x, const Tensor& t) const {
    const Tensor temb = tm1(ops::silu(tm0(nn::sinusoidal_embedding(t, 64))));  // [B, 128]
    const Tensor h0 = r0(cin(x), temb);                                        // [B, 32, 28, 28]
    const Tensor h1 = r1(d0(h0), temb);                                        // [B, 64, 14, 14]
    Tensor h = m1(m0(d1(h1), temb), temb);                                     // [B, 128, 7, 7]
    h = u1.upsampled(h);                                                       // [B, 128, 14, 14]
    h = r2(ops::cat({h, h1}, 1), temb);                                        // [B, 64, 14, 14]
    h = u0.upsampled(h);                                                       // [B, 64, 28, 28]
    h = r3(ops::cat({h, h0}, 1), temb);                                        // [B, 32, 28, 28]
    return cout(nout.with_silu(h));                                            // [B, 1, 28, 28]
  }
  void visit(nn::Visitor& v) override {
    v.module("tm0", tm0);
    v.module("tm1", tm1);
    v.module("cin", cin);
    v.module("r0", r0);
    v.module("d0", d0);
    v.module("r1", r1);
    v.module("d1", d1);
    v.module("m0", m0);
    v.module("m1", m1);
    v.module("u1", u1);
    v.module("r2", r2);
    v.module("u0", u0);
    v.module("r3", r3);
    v.module("nout", nout);
    v.module("cout", cout);
  }
  std::string type_name() const override { return "RefUNet"; }
};

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(argc, argv);
  const std::int64_t B = args.rest.empty() ? 64 : bench::positive_int("the batch size", args.rest[0]);
  const std::string what = args.rest.size() > 1 ? args.rest[1] : "all";
  if (what != "all" && what != "step" && what != "fwd") {
    fmt::print(stderr, "bench_unet: unknown measurement '{}' (all, step or fwd)\n", what);
    return 2;
  }
  try {
    manual_seed(0);
    RefUNet model;
    nn::Adam opt(model.named_parameters(), {.lr = 2e-4});
    Generator gen(0);
    const int nb = 4;  // as the reference
    Tensors x0, noise, ts, sa, sb;
    const Tensor abar = linspace(0.9999, 0.01, 1000);
    for (int i = 0; i < nb; ++i) {
      x0.push_back(randn({B, 1, 28, 28}, DType::f32, gen));
      noise.push_back(randn({B, 1, 28, 28}, DType::f32, gen));
      ts.push_back(randint(0, 1000, {B}, DType::i64, gen));
      const Tensor a = ops::index_select(abar, 0, ts.back()).reshape({B, 1, 1, 1});
      sa.push_back(ops::sqrt(a));
      sb.push_back(ops::sqrt(1.0 - a));
    }
    int it = 0;
    auto step = [&] {
      const int i = it++ % nb;
      const Tensor xt = sa[i] * x0[i] + sb[i] * noise[i];  // [B, 1, 28, 28]
      opt.zero_grad();
      const Tensor loss = ops::mse_loss(model(xt, ts[i]), noise[i]);
      loss.backward();
      opt.step();
    };
    const std::string shape = fmt::format("unet B{} 28x28", B);
    // Times the steps after the warmup, and adds the process CPU time per step: at 1 thread it is
    // the compute time even when other jobs share the cores (wall time then includes waiting).
    auto measure = [&](auto&& fn, int warmup, const std::string& name, const std::string& extra) {
      for (int i = 0; i < warmup; ++i) fn();
      const std::clock_t c0 = std::clock();
      const bench::Stats st = bench::time_steps(fn, 0, args.steps);
      const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / args.steps;
      bench::emit("train_unet", shape + name, args.threads, st,
                  fmt::format("\"cpu_s_per_step\": {:.6g}{}{}", cpu, extra.empty() ? "" : ", ", extra));
      return st;
    };
    if (what != "fwd") measure(step, args.warmup, " step", fmt::format("\"params\": {}", model.num_parameters()));
    auto fwd = [&] {
      NoGradGuard no_grad;
      (void)model(x0[0], ts[0]);
    };
    if (what != "step") measure(fwd, 3, " fwd (no_grad)", "");
  } catch (const tg::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
