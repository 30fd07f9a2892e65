// Row-wise memory-bound ops at [4096, 1024] f32: layer_norm, rms_norm, softmax, gelu, forward and
// backward, reporting GB/s of compulsory traffic (as /work/shared/bench-reference/py/elementwise.py):
//   forward  reads x, writes y                         8 B/elem
//   backward reads x (or y for softmax) and dy, writes dx   12 B/elem (weight/bias grads: tiny)
// Forward = the op on a tensor that does not require grad (fresh output from the caching allocator).
// Backward = autograd::grad of the recorded op for a given dy (the op's fused backward kernel plus
// the engine's bookkeeping), gradients for x, weight and bias where they exist.
// PyTorch counterpart: tests/bench/ref_norms.py.
//
// Built with the project (build/bench/bench_norms); scripts/bench.sh runs it next to the reference.
// Run: build/bench/bench_norms --threads 1 [--rows 4096 --cols 1024]
#include <fmt/core.h>

#include <functional>
#include <string>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/norm.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

int main(int argc, char** argv) {
  bench::Args args = bench::parse_args(argc, argv);
  std::int64_t R = 4096, C = 1024;
  for (std::size_t i = 0; i + 1 < args.rest.size(); ++i) {
    if (args.rest[i] == "--rows") R = bench::positive_int("--rows", args.rest[i + 1]);
    if (args.rest[i] == "--cols") C = bench::positive_int("--cols", args.rest[i + 1]);
  }
  Generator gen(0);
  const Tensor x = randn({R, C}, DType::f32, gen), dy = randn({R, C}, DType::f32, gen);
  const Tensor w = randn({C}, DType::f32, gen), b = randn({C}, DType::f32, gen);
  const double M = static_cast<double>(R * C);
  const std::string shape = fmt::format("[{}, {}] f32", R, C);

  auto run = [&](const std::string& name, double bytes, const std::function<void()>& fn) {
    const bench::Stats s = bench::time_steps(fn, args.warmup, args.steps);
    const std::string extra = fmt::format("\"op\": \"{}\", \"bytes\": {:.0f}, \"gbs_at_median\": {:.2f}, \"gbs_at_min\": {:.2f}",
                                          name, bytes, bytes / s.median_s / 1e9, bytes / s.min_s / 1e9);
    bench::emit("norms", fmt::format("{} {}", name, shape), args.threads, s, extra);
  };

  // ---- forward ----
  run("layer_norm_fwd", 8 * M, [&] { (void)ops::layer_norm(x, {C}, w, b, 1e-5); });
  run("rms_norm_fwd", 8 * M, [&] { (void)ops::rms_norm(x, {C}, w, 1e-6); });
  run("softmax_fwd", 8 * M, [&] { (void)ops::softmax(x, -1); });
  run("gelu_fwd", 8 * M, [&] { (void)ops::gelu(x); });

  // ---- backward: one recorded op, differentiated repeatedly (retain_graph) ----
  {
    Tensor xr = x.detach().requires_grad_(), wr = w.detach().requires_grad_(), br = b.detach().requires_grad_();
    Tensor y = ops::layer_norm(xr, {C}, wr, br, 1e-5);
    run("layer_norm_bwd", 12 * M, [&] { (void)autograd::grad({y}, {xr, wr, br}, {dy}, true); });
  }
  {
    Tensor xr = x.detach().requires_grad_(), wr = w.detach().requires_grad_();
    Tensor y = ops::rms_norm(xr, {C}, wr, 1e-6);
    run("rms_norm_bwd", 12 * M, [&] { (void)autograd::grad({y}, {xr, wr}, {dy}, true); });
  }
  {
    Tensor xr = x.detach().requires_grad_();
    Tensor y = ops::softmax(xr, -1);
    run("softmax_bwd", 12 * M, [&] { (void)autograd::grad({y}, {xr}, {dy}, true); });
  }
  {
    Tensor xr = x.detach().requires_grad_();
    Tensor y = ops::gelu(xr);
    run("gelu_bwd", 12 * M, [&] { (void)autograd::grad({y}, {xr}, {dy}, true); });
  }
  return 0;
}
