// Standalone correctness checker for ops/kernels/fft.{hpp,cpp}.
//
//   build/tests/fft_check [quick]   (exit status 0 when every check passes; ctest runs "quick")
//
// Checks, for float and double:
//  * accuracy against a naive O(n^2) DFT in long double, for every n in 1..300 and a set of
//    larger lengths (smooth, prime -> Bluestein, powers of two up to 2^16): rfft, irfft (with
//    non-zero imaginary parts at X_0 and X_{n/2}, which must be ignored), fft forward and inverse.
//    Error measure: max |err| / max |reference| over the checked entries (all of them for
//    n <= 2048, a sample of 48 bins/samples per row above), bound 1e-5 * log2(n) for float and
//    1e-13 * log2(n) for double (log2 taken as >= 1);
//  * the roundtrip irfft(rfft(x)) == x to the same bound;
//  * row strides larger than the natural row size, and that the gaps between rows are not written;
//  * rfft_padded == rfft of an explicitly zero-padded copy, and irfft_truncated == a prefix of irfft,
//    bit for bit;
//  * determinism: bit-identical results with 1, 2 and 4 TBB threads and with streaming stores on
//    or off, and a row computed alone equals the same row computed inside a batch;
//  * everything again (shorter length list) with streaming output stores forced on;
//  * thread safety: concurrent first calls (plan construction) from several std::threads.
#include "ops/kernels/fft.hpp"
#include "ops/kernels/simd_partial.hpp"

#include <tbb/global_control.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numbers>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using LD = long double;
using CLD = std::complex<LD>;
namespace K = tg::kernels;

int g_pass = 0, g_fail = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++g_pass;
  } else {
    ++g_fail;
    if (g_fail <= 50) std::printf("FAIL: %s\n", what.c_str());
  }
}

template <class T>
const char* tname() {
  return sizeof(T) == 4 ? "float" : "double";
}

template <class T>
double tol(int64_t n) {
  const double base = sizeof(T) == 4 ? 1e-5 : 1e-13;
  return base * std::max(1.0, std::log2(static_cast<double>(n)));
}

// Worst relative error seen per (type, transform), for the summary.
struct Worst {
  double err = 0;
  int64_t n = 0;
};
Worst g_worst[2][5];  // [double?][rfft, irfft, fft, ifft, roundtrip], largest err / log2 n
Worst g_big[2][5];    // largest raw err over n >= 1000
const char* kKind[5] = {"rfft", "irfft", "fft", "ifft", "roundtrip"};

template <class T>
void record(int kind, int64_t n, double err) {
  Worst& w = g_worst[sizeof(T) == 8][kind];
  const double scaled = err / std::max(1.0, std::log2(static_cast<double>(n)));
  const double wscaled = w.err / std::max(1.0, std::log2(static_cast<double>(std::max<int64_t>(w.n, 1))));
  if (scaled > wscaled) w = {err, n};
  Worst& b = g_big[sizeof(T) == 8][kind];
  if (n >= 1000 && err > b.err) b = {err, n};
}

// Naive DFT in long double: sum_j x_j exp(sign 2 pi i j k / n) for the requested k.
struct Naive {
  int64_t n;
  std::vector<CLD> tab;  // exp(sign 2 pi i q / n)
  Naive(int64_t n_, int sign) : n(n_), tab(static_cast<size_t>(n_)) {
    for (int64_t q = 0; q < n; ++q) {
      const LD a = 2 * std::numbers::pi_v<LD> * static_cast<LD>(q) / static_cast<LD>(n);
      tab[q] = {std::cos(a), sign * std::sin(a)};
    }
  }
  CLD operator()(const std::vector<CLD>& x, int64_t k) const {
    CLD s = 0;
    int64_t idx = 0;
    for (int64_t j = 0; j < n; ++j) {
      s += x[j] * tab[idx];
      idx += k;
      if (idx >= n) idx -= n;
    }
    return s;
  }
};

// Indices to check among [0, count): all for small transforms, else a fixed sample.
std::vector<int64_t> pick(int64_t count, int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> idx;
  if (n <= 2048) {
    for (int64_t k = 0; k < count; ++k) idx.push_back(k);
    return idx;
  }
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{2}, count / 2, count - 2, count - 1}) idx.push_back(k);
  std::uniform_int_distribution<int64_t> d(0, count - 1);
  for (int i = 0; i < 42; ++i) idx.push_back(d(rng));
  return idx;
}

template <class T>
std::vector<T> random_vec(size_t count, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> v(count);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}

constexpr double kSentinel = 4242.0;

// True when every gap entry (past `used` in each row of stride `stride`) still holds the sentinel.
template <class T>
bool gaps_intact(const std::vector<T>& buf, int64_t rows, int64_t stride, int64_t used) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = used; i < stride; ++i)
      if (buf[r * stride + i] != static_cast<T>(kSentinel)) return false;
  return true;
}

template <class T>
void check_length(int64_t n, int64_t rows, std::mt19937_64& rng) {
  const int64_t h = n / 2, nb = h + 1;
  const int64_t rs_in = n + 3, rs_out = 2 * nb + 5;  // padded strides
  const std::string tag = std::string(tname<T>()) + " n=" + std::to_string(n);
  const double bound = tol<T>(n);
  Naive fwd(n, -1), bwd(n, +1);

  // ---- rfft
  {
    auto x = random_vec<T>(static_cast<size_t>(rows * rs_in), rng);
    std::vector<T> X(static_cast<size_t>(rows * rs_out), static_cast<T>(kSentinel));
    K::rfft(x.data(), rs_in, X.data(), rs_out, rows, n);
    expect(gaps_intact(X, rows, rs_out, 2 * nb), tag + " rfft wrote past its row");
    double emax = 0, rmax = 0;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<CLD> xr(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) xr[j] = static_cast<LD>(x[r * rs_in + j]);
      for (int64_t k : pick(nb, n, rng)) {
        const CLD ref = fwd(xr, k);
        const CLD got(X[r * rs_out + 2 * k], X[r * rs_out + 2 * k + 1]);
        emax = std::max<double>(emax, std::abs(got - ref));
        rmax = std::max<double>(rmax, std::abs(ref));
      }
    }
    const double err = emax / std::max(rmax, 1e-300);
    record<T>(0, n, err);
    expect(err <= bound, tag + " rfft rel err " + std::to_string(err));

    // roundtrip irfft(rfft(x)) == x (row stride of y differs from x's)
    std::vector<T> y(static_cast<size_t>(rows * (n + 1)), static_cast<T>(kSentinel));
    K::irfft(X.data(), rs_out, y.data(), n + 1, rows, n);
    expect(gaps_intact(y, rows, n + 1, n), tag + " irfft wrote past its row");
    double e2 = 0, r2 = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) {
        e2 = std::max<double>(e2, std::abs(static_cast<double>(y[r * (n + 1) + j]) - x[r * rs_in + j]));
        r2 = std::max<double>(r2, std::abs(static_cast<double>(x[r * rs_in + j])));
      }
    const double rt = e2 / std::max(r2, 1e-300);
    record<T>(4, n, rt);
    expect(rt <= bound, tag + " roundtrip rel err " + std::to_string(rt));

    // rfft_padded == rfft of a zero-padded copy, bit for bit
    for (int64_t in_len : {int64_t{0}, int64_t{1}, n / 2, (n + 1) / 2 + 1, n - 1}) {
      if (in_len < 0 || in_len > n) continue;
      std::vector<T> xp(static_cast<size_t>(rows * n), T(0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < in_len; ++j) xp[r * n + j] = x[r * rs_in + j];
      std::vector<T> A(static_cast<size_t>(rows * 2 * nb)), B(static_cast<size_t>(rows * 2 * nb));
      K::rfft(xp.data(), n, A.data(), 2 * nb, rows, n);
      K::rfft_padded(x.data(), rs_in, in_len, B.data(), 2 * nb, rows, n);
      expect(std::memcmp(A.data(), B.data(), A.size() * sizeof(T)) == 0,
             tag + " rfft_padded in_len=" + std::to_string(in_len) + " differs from padded rfft");
    }
  }

  // ---- irfft of an arbitrary spectrum (Im X_0, Im X_{n/2} must be ignored)
  {
    auto X = random_vec<T>(static_cast<size_t>(rows * rs_out), rng);
    std::vector<T> y(static_cast<size_t>(rows * (n + 2)), static_cast<T>(kSentinel));
    K::irfft(X.data(), rs_out, y.data(), n + 2, rows, n);
    expect(gaps_intact(y, rows, n + 2, n), tag + " irfft wrote past its row");
    double emax = 0, rmax = 0;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<CLD> full(static_cast<size_t>(n));
      for (int64_t k = 0; k <= h; ++k) {
        CLD v(X[r * rs_out + 2 * k], X[r * rs_out + 2 * k + 1]);
        if (k == 0 || 2 * k == n) v = v.real();
        full[k] = v;
        if (k > 0) full[n - k] = std::conj(v);
      }
      for (int64_t j : pick(n, n, rng)) {
        const LD ref = bwd(full, j).real() / static_cast<LD>(n);
        emax = std::max<double>(emax, std::abs(static_cast<LD>(y[r * (n + 2) + j]) - ref));
        rmax = std::max<double>(rmax, std::abs(ref));
      }
    }
    const double err = emax / std::max(rmax, 1e-300);
    record<T>(1, n, err);
    expect(err <= bound, tag + " irfft rel err " + std::to_string(err));

    // irfft_truncated == prefix of irfft, bit for bit; nothing past out_len written
    for (int64_t out_len : {int64_t{1}, n / 2, (n + 1) / 2 + 1, n - 1}) {
      if (out_len < 1 || out_len > n) continue;
      std::vector<T> z(static_cast<size_t>(rows * n), static_cast<T>(kSentinel));
      K::irfft_truncated(X.data(), rs_out, z.data(), n, rows, n, out_len);
      bool same = gaps_intact(z, rows, n, out_len);
      for (int64_t r = 0; r < rows && same; ++r)
        same = std::memcmp(&z[r * n], &y[r * (n + 2)], static_cast<size_t>(out_len) * sizeof(T)) == 0;
      expect(same, tag + " irfft_truncated out_len=" + std::to_string(out_len) + " differs from irfft prefix");
    }
  }

  // ---- complex fft, forward and inverse
  for (int inv = 0; inv < 2; ++inv) {
    const int64_t cs_in = 2 * n + 2, cs_out = 2 * n + 6;
    auto x = random_vec<T>(static_cast<size_t>(rows * cs_in), rng);
    std::vector<T> X(static_cast<size_t>(rows * cs_out), static_cast<T>(kSentinel));
    K::fft(x.data(), cs_in, X.data(), cs_out, rows, n, inv == 1);
    expect(gaps_intact(X, rows, cs_out, 2 * n), tag + " fft wrote past its row");
    double emax = 0, rmax = 0;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<CLD> xr(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) xr[j] = CLD(x[r * cs_in + 2 * j], x[r * cs_in + 2 * j + 1]);
      for (int64_t k : pick(n, n, rng)) {
        CLD ref = inv ? bwd(xr, k) / static_cast<LD>(n) : fwd(xr, k);
        const CLD got(X[r * cs_out + 2 * k], X[r * cs_out + 2 * k + 1]);
        emax = std::max<double>(emax, std::abs(got - ref));
        rmax = std::max<double>(rmax, std::abs(ref));
      }
    }
    const double err = emax / std::max(rmax, 1e-300);
    record<T>(2 + inv, n, err);
    expect(err <= bound, tag + (inv ? " ifft" : " fft") + " rel err " + std::to_string(err));
  }
}

// Runs all transforms of one length and returns their outputs concatenated (for bitwise compares).
template <class T>
std::vector<T> run_all(int64_t n, int64_t rows, const std::vector<T>& x) {
  const int64_t nb = n / 2 + 1;
  std::vector<T> out(static_cast<size_t>(rows * (2 * nb + n + 4 * n)));
  T* X = out.data();
  T* y = X + rows * 2 * nb;
  T* C = y + rows * n;
  K::rfft(x.data(), 2 * n, X, 2 * nb, rows, n);
  K::irfft(x.data(), 2 * n, y, n, rows, n);
  K::fft(x.data(), 2 * n, C, 2 * n, rows, n, false);
  K::fft(x.data(), 2 * n, C + rows * 2 * n, 2 * n, rows, n, true);
  return out;
}

template <class T>
void check_determinism(std::mt19937_64& rng) {
  for (int64_t n : {7, 250, 1009, 2048, 6000, 8192}) {
    const int64_t rows = 37;  // not a multiple of the SIMD batch
    const auto x = random_vec<T>(static_cast<size_t>(rows * 2 * n), rng);
    std::vector<std::vector<T>> res;
    for (int threads : {1, 2, 4, 1}) {
      tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
      res.push_back(run_all<T>(n, rows, x));
    }
    // Non-temporal (streaming) output stores must not change any bit either.
    const int64_t saved = K::simd::stream_threshold.load();
    K::simd::stream_threshold.store(saved == 0 ? int64_t{1} << 60 : 0);
    res.push_back(run_all<T>(n, rows, x));
    K::simd::stream_threshold.store(saved);
    const std::string tag = std::string(tname<T>()) + " n=" + std::to_string(n);
    for (size_t i = 1; i < res.size(); ++i)
      expect(res[i] == res[0] && std::memcmp(res[i].data(), res[0].data(), res[0].size() * sizeof(T)) == 0,
             tag + " results depend on the thread count / run");
    // A row computed alone equals the same row inside the batch (rfft part).
    const int64_t nb = n / 2 + 1;
    bool same = true;
    for (int64_t r : {int64_t{0}, int64_t{5}, rows - 1}) {
      std::vector<T> X(static_cast<size_t>(2 * nb));
      K::rfft(x.data() + r * 2 * n, 2 * n, X.data(), 2 * nb, 1, n);
      same = same && std::memcmp(X.data(), res[0].data() + r * 2 * nb, X.size() * sizeof(T)) == 0;
    }
    expect(same, tag + " a row alone differs from the same row in a batch");
  }
}

template <class T>
void check_concurrency(std::mt19937_64& rng) {
  // Fresh lengths, so that the threads race to build the plans.
  const std::vector<int64_t> ns = {3001, 3002, 3003, 3004, 3006, 3010, 3011, 3125};
  const int64_t rows = 20;
  std::vector<std::vector<T>> inputs, expect_out(ns.size());
  for (int64_t n : ns) inputs.push_back(random_vec<T>(static_cast<size_t>(rows * 2 * n), rng));
  std::vector<std::vector<std::vector<T>>> got(4, std::vector<std::vector<T>>(ns.size()));
  std::vector<std::thread> th;
  for (int t = 0; t < 4; ++t)
    th.emplace_back([&, t] {
      for (size_t i = 0; i < ns.size(); ++i) {
        const size_t k = (i + 3 * t) % ns.size();
        got[t][k] = run_all<T>(ns[k], rows, inputs[k]);
      }
    });
  for (auto& x : th) x.join();
  for (size_t k = 0; k < ns.size(); ++k) {
    const auto ref = run_all<T>(ns[k], rows, inputs[k]);
    for (int t = 0; t < 4; ++t)
      expect(got[t][k] == ref && std::memcmp(got[t][k].data(), ref.data(), ref.size() * sizeof(T)) == 0,
             std::string(tname<T>()) + " concurrent calls n=" + std::to_string(ns[k]) + " differ");
  }
}

template <class T>
void check_type(std::mt19937_64& rng, bool quick) {
  for (int64_t n = 1; n <= 300; ++n) check_length<T>(n, n % 7 == 0 ? 19 : 3, rng);
  std::vector<int64_t> big = {384, 480, 500, 512, 625, 640, 720, 729, 768, 961, 1000, 1009, 1024, 1331,
                              2000, 2018, 2048, 2187, 3000, 3125, 4093, 4096, 4099, 5000, 6561, 8186,
                              8192, 12289, 16384, 32768, 65536, 2 * 4093, 3 * 1009, 131072 + 2 * 37};
  if (quick) big.resize(12);
  for (int64_t n : big) check_length<T>(n, n <= 8192 ? 5 : 2, rng);
  check_determinism<T>(rng);
  check_concurrency<T>(rng);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937_64 rng(12345);
  check_type<float>(rng, quick);
  check_type<double>(rng, quick);
  // Again with every output written through the streaming (realigned non-temporal) store path.
  K::simd::stream_threshold.store(0);
  check_type<float>(rng, true);
  check_type<double>(rng, true);
  std::printf("worst relative errors, all runs (err, n; bound is 1e-5*log2 n float, 1e-13*log2 n double):\n");
  for (int d = 0; d < 2; ++d)
    for (int k = 0; k < 5; ++k)
      std::printf("  %-6s %-9s %.3e at n=%lld (%.3e per log2 n)\n", d ? "double" : "float", kKind[k],
                  g_worst[d][k].err, static_cast<long long>(g_worst[d][k].n),
                  g_worst[d][k].err / std::max(1.0, std::log2(static_cast<double>(std::max<int64_t>(g_worst[d][k].n, 1)))));
  std::printf("largest relative errors for n >= 1000:\n");
  for (int d = 0; d < 2; ++d)
    for (int k = 0; k < 5; ++k)
      std::printf("  %-6s %-9s %.3e at n=%lld\n", d ? "double" : "float", kKind[k], g_big[d][k].err,
                  static_cast<long long>(g_big[d][k].n));
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
