// FFT long convolution (S4/Hyena/RTF layers), the "fftconv" workload of
// /work/shared/bench-reference/py/fft_conv.py:
//   u [B=16, C=256, L] (requires grad), k [C, L] (parameter), D [C, 1] (parameter)
//   y = fft_conv(u, k) + D * u          (causal; the reference: irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L] + D * u)
//   fwd     : y under NoGradGuard
//   fwd+bwd : y, then y.backward(g) for a fixed random g (gradients for u, k and D; grads reset first)
// for L in {1024, 4096}. PyTorch counterpart: tests/bench/ref_fftconv.py (same JSON lines).
//
// Built with the project (build/bench/bench_fftconv); scripts/bench.sh runs it next to the reference.
// Run: build/bench/bench_fftconv --threads 1 [--warmup 3 --steps 20 --batch 16 --channels 256 --lengths 1024,4096
//      --recompute]   (--recompute: fft_conv recomputes rfft(u) in backward instead of keeping it)
#include <fmt/core.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/elementwise.hpp"
#include "ops/fft.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

int main(int argc, char** argv) {
  bench::Args args = bench::parse_args(argc, argv);
  std::int64_t B = 16, C = 256;
  std::vector<std::int64_t> lengths{1024, 4096};
  for (std::size_t i = 0; i < args.rest.size(); ++i) {
    const std::string& a = args.rest[i];
    const bool has_value = i + 1 < args.rest.size();
    if (a == "--batch" && has_value) B = bench::positive_int("--batch", args.rest[++i]);
    else if (a == "--channels" && has_value) C = bench::positive_int("--channels", args.rest[++i]);
    else if (a == "--lengths" && has_value) {
      lengths.clear();
      std::stringstream ss(args.rest[++i]);
      for (std::string item; std::getline(ss, item, ',');) lengths.push_back(bench::positive_int("a --lengths entry", item));
    } else if (a == "--recompute") ops::set_fft_conv_recompute(true);
  }
  Generator gen(0);
  for (const std::int64_t L : lengths) {
    Tensor u = randn({B, C, L}, DType::f32, gen).requires_grad_();
    Tensor k = ops::mul(randn({C, L}, DType::f32, gen), std::exp(-0.001)).detach().requires_grad_();
    Tensor D = randn({C, 1}, DType::f32, gen).requires_grad_();
    const Tensor g = randn({B, C, L}, DType::f32, gen);
    const std::int64_t nf = ops::fft_conv_length(L, L);

    auto fwd = [&] {
      NoGradGuard no_grad;
      Tensor y = ops::fft_conv(u, k) + D * u;
      (void)y;
    };
    auto fwd_bwd = [&] {
      u.reset_grad();
      k.reset_grad();
      D.reset_grad();
      Tensor y = ops::fft_conv(u, k) + D * u;
      y.backward(g);
    };
    // Spot check against a direct causal convolution (and that the gradients exist).
    {
      fwd_bwd();
      NoGradGuard no_grad;
      const Tensor y = ops::fft_conv(u, k) + D * u;
      double err = 0, ymax = 0;
      for (const std::int64_t b : {std::int64_t{0}, B - 1})
        for (const std::int64_t c : {std::int64_t{0}, C / 2, C - 1})
          for (const std::int64_t t : {std::int64_t{0}, L / 3, L - 1}) {
            double ref = D.at<double>({c, 0}) * u.at<double>({b, c, t});
            for (std::int64_t s = 0; s <= t; ++s) ref += k.at<double>({c, s}) * u.at<double>({b, c, t - s});
            err = std::max(err, std::abs(ref - y.at<double>({b, c, t})));
            ymax = std::max(ymax, std::abs(ref));
          }
      fmt::print(stderr, "# fftconv L={} nf={}: spot check max abs err {:.3g} (max |y| {:.3g}); grads {} {} {}\n", L, nf,
                 err, ymax, u.grad().shape(), k.grad().shape(), D.grad().shape());
      if (!(err <= 1e-4 * std::max(1.0, ymax))) {
        fmt::print(stderr, "spot check FAILED\n");
        return 1;
      }
    }
    const std::string shape = fmt::format("B={} C={} L={} f32", B, C, L);
    const std::string extra_common =
        fmt::format("\"B\": {}, \"C\": {}, \"L\": {}, \"n_fft\": {}, \"recompute\": {}", B, C, L, nf, ops::fft_conv_recompute());
    const bench::Stats sf = bench::time_steps(fwd, args.warmup, args.steps);
    bench::emit("fftconv", shape + " fwd", args.threads, sf, "\"phase\": \"fwd\", " + extra_common);
    const bench::Stats sb = bench::time_steps(fwd_bwd, args.warmup, args.steps);
    bench::emit("fftconv", shape + " fwd+bwd", args.threads, sb, "\"phase\": \"fwd+bwd\", " + extra_common);
  }
  return 0;
}
