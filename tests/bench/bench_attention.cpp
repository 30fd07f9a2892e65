// Fused attention (ops::scaled_dot_product_attention) at the transformer benchmark's shape:
// B=16, H=4, T=128, d=64 f32, q/k/v [B, H, T, d] contiguous, causal and not; forward alone (no
// grad) and forward + backward (q, k, v require grad; out.backward(dy); grads reset every step).
// Extra field gflops counts the matmul work as an eager implementation computes it (full T^2, also
// for causal): forward 4*B*H*T*T*d, forward+backward 3x that.
// PyTorch counterpart: tests/bench/ref_attention.py.
//
// Built with the project (build/bench/bench_attention); scripts/bench.sh runs it next to the reference.
// Run: build/bench/bench_attention --threads 1 [--B 16 --H 4 --T 128 --d 64]
#include <fmt/core.h>

#include <functional>
#include <string>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/attention.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

int main(int argc, char** argv) {
  bench::Args args = bench::parse_args(argc, argv);
  std::int64_t B = 16, H = 4, T = 128, d = 64;
  for (std::size_t i = 0; i + 1 < args.rest.size(); ++i) {
    const std::string& flag = args.rest[i];
    std::int64_t* dim = flag == "--B" ? &B : flag == "--H" ? &H : flag == "--T" ? &T : flag == "--d" ? &d : nullptr;
    if (dim) *dim = bench::positive_int(flag, args.rest[++i]);
  }
  Generator gen(0);
  const Tensor q0 = randn({B, H, T, d}, DType::f32, gen), k0 = randn({B, H, T, d}, DType::f32, gen);
  const Tensor v0 = randn({B, H, T, d}, DType::f32, gen), dy = randn({B, H, T, d}, DType::f32, gen);
  const double fwd_flops = 4.0 * static_cast<double>(B * H * T * T * d);

  for (bool causal : {false, true}) {
    ops::AttentionOptions opt;
    opt.causal = causal;
    const std::string shape = fmt::format("B={} H={} T={} d={} f32{}", B, H, T, d, causal ? " causal" : "");
    auto report = [&](const char* pass, double flops, const bench::Stats& s) {
      bench::emit("attention", fmt::format("{} {}", pass, shape), args.threads, s,
                  fmt::format("\"pass\": \"{}\", \"causal\": {}, \"gflops\": {:.2f}", pass, causal ? "true" : "false",
                              flops / s.median_s / 1e9));
    };
    {
      NoGradGuard no_grad;
      report("fwd", fwd_flops, bench::time_steps([&] { (void)ops::scaled_dot_product_attention(q0, k0, v0, opt); },
                                                 args.warmup, args.steps));
    }
    Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
    report("fwd+bwd", 3 * fwd_flops, bench::time_steps([&] {
             q.reset_grad();
             k.reset_grad();
             v.reset_grad();
             Tensor out = ops::scaled_dot_product_attention(q, k, v, opt);
             out.backward(dy);
           }, args.warmup, args.steps));
  }
  return 0;
}
