// Benchmark of the FFT kernels on the FFT causal-convolution workload
//   y = irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L],  u: [B=16, C=256, L], k: [C, L]  (float32)
//
//   fft_bench [threads=1] [samples=7]
//
// For L in {1024, 4096} it times, per call (median / min / max over `samples` after a warm-up):
//   rfft    : rfft_padded of the 4096 rows of u (L samples, zero-padded to 2L)
//   irfft   : irfft_truncated of 4096 spectra back to the first L samples
//   fftconv : the whole forward convolution (rfft of u and of the 256 kernel rows, complex
//             multiply broadcasting k over the batch, irfft, truncation to L)
// and prints one `RESULT {json}` line per piece; tests/bench/fft_torch_ref.py prints the same
// lines for PyTorch. The convolution result is spot-checked against a direct causal convolution.
#include "ops/kernels/fft.hpp"

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

namespace {

namespace K = tg::kernels;

// 64-byte aligned buffers, like tapegrad's tensor storage.
template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t count) {
    return static_cast<T*>(::operator new(count * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  bool operator==(const AlignedAlloc&) const { return true; }
};
using Buf = std::vector<float, AlignedAlloc<float>>;

struct Timing {
  double median, min, max;
};

template <class F>
Timing time_it(int samples, F&& f) {
  f();  // warm-up: plans, per-thread scratch, page faults of the outputs
  std::vector<double> ts;
  for (int i = 0; i < samples; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return {ts[ts.size() / 2], ts.front(), ts.back()};
}

void report(const char* piece, int64_t L, int threads, const Timing& t, double flops) {
  std::printf(
      "RESULT {\"workload\": \"fftconv_kernels\", \"piece\": \"%s\", \"shape\": \"L=%lld\", \"B\": 16, "
      "\"C\": 256, \"n_fft\": %lld, \"threads\": %d, \"impl\": \"tapegrad\", \"median_s\": %.6g, "
      "\"min_s\": %.6g, \"max_s\": %.6g, \"gflops_equiv\": %.3g}\n",
      piece, static_cast<long long>(L), static_cast<long long>(2 * L), threads, t.median, t.min, t.max,
      flops / t.median * 1e-9);
  std::fflush(stdout);
}

// U[b, c, :] *= Kf[c, :] for complex rows of nb bins (interleaved).
void mul_broadcast(float* U, const float* Kf, int64_t B, int64_t C, int64_t nb) {
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, B * C, 16), [&](const tbb::blocked_range<int64_t>& r) {
    for (int64_t row = r.begin(); row < r.end(); ++row) {
      float* u = U + row * 2 * nb;
      const float* k = Kf + (row % C) * 2 * nb;
      for (int64_t i = 0; i < nb; ++i) {
        const float ar = u[2 * i], ai = u[2 * i + 1], br = k[2 * i], bi = k[2 * i + 1];
        u[2 * i] = ar * br - ai * bi;
        u[2 * i + 1] = ar * bi + ai * br;
      }
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int samples = argc > 2 ? std::atoi(argv[2]) : 7;
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
  const int64_t B = 16, C = 256, rows = B * C;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.f, 1.f);
  int failures = 0;

  for (const int64_t L : {int64_t{1024}, int64_t{4096}}) {
    const int64_t n = 2 * L, nb = L + 1;
    Buf u(static_cast<size_t>(rows * L)), k(static_cast<size_t>(C * L));
    for (auto& v : u) v = nd(rng);
    for (auto& v : k) v = nd(rng);
    Buf U(static_cast<size_t>(rows * 2 * nb)), Kf(static_cast<size_t>(C * 2 * nb)), y(static_cast<size_t>(rows * L));

    // FLOP-equivalents as in the brief: 2.5 n log2 n per real FFT of length n.
    const double real_fft = 2.5 * static_cast<double>(n) * std::log2(static_cast<double>(n));

    const Timing ta = time_it(samples, [&] { K::rfft_padded(u.data(), L, L, U.data(), 2 * nb, rows, n); });
    report("rfft", L, threads, ta, real_fft * static_cast<double>(rows));

    const Timing tb = time_it(samples, [&] { K::irfft_truncated(U.data(), 2 * nb, y.data(), L, rows, n, L); });
    report("irfft", L, threads, tb, real_fft * static_cast<double>(rows));

    const Timing tc = time_it(samples, [&] {
      K::rfft_padded(u.data(), L, L, U.data(), 2 * nb, rows, n);
      K::rfft_padded(k.data(), L, L, Kf.data(), 2 * nb, C, n);
      mul_broadcast(U.data(), Kf.data(), B, C, nb);
      K::irfft_truncated(U.data(), 2 * nb, y.data(), L, rows, n, L);
    });
    report("fftconv", L, threads, tc, real_fft * static_cast<double>(2 * rows + C));

    // Spot check y[b, c, t] = sum_{s <= t} k[c, s] u[b, c, t - s].
    double emax = 0, ymax = 0;
    for (const int64_t row : {int64_t{0}, int64_t{1}, rows / 2 + 3, rows - 1}) {
      const int64_t c = row % C;
      for (const int64_t t : {int64_t{0}, int64_t{1}, L / 3, L - 1}) {
        double ref = 0;
        for (int64_t s = 0; s <= t; ++s) ref += static_cast<double>(k[c * L + s]) * u[row * L + t - s];
        emax = std::max(emax, std::abs(ref - y[row * L + t]));
        ymax = std::max(ymax, std::abs(ref));
      }
    }
    const bool ok = emax <= 1e-4 * std::max(1.0, ymax);
    std::printf("# L=%lld conv spot check: max abs err %.3g (max |y| %.3g) %s\n", static_cast<long long>(L), emax,
                ymax, ok ? "ok" : "FAILED");
    failures += ok ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
