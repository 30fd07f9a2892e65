// FFT ops: forward against a naive f64 DFT for every length 1..40 and a few large ones (padding
// and truncation through n), roundtrips, f64 gradchecks of every op for odd and even lengths with
// non-contiguous and broadcast inputs, the complex arithmetic against explicit formulas, the FFT
// convolution against a direct O(L^2) causal convolution (forward and both gradients), thread-count
// determinism and error messages.
#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <limits>
#include <numbers>
#include <vector>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/fft.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

using cd = std::complex<double>;

// exp(sign * 2 pi i * num / den) with exact integer range reduction.
cd twiddle(std::int64_t num, std::int64_t den, int sign) {
  num %= den;
  const double a = 2 * std::numbers::pi * static_cast<double>(num) / static_cast<double>(den);
  return {std::cos(a), sign * std::sin(a)};
}

// Naive DFT of one row (unscaled; sign -1 forward, +1 inverse).
std::vector<cd> naive_dft(const std::vector<cd>& x, int sign) {
  const auto n = static_cast<std::int64_t>(x.size());
  std::vector<cd> y(x.size());
  for (std::int64_t k = 0; k < n; ++k) {
    cd s = 0;
    for (std::int64_t j = 0; j < n; ++j) s += x[j] * twiddle(j * k, n, sign);
    y[k] = s;
  }
  return y;
}

std::int64_t rows_of(const Shape& s, int inner) {
  std::int64_t r = 1;
  for (int i = 0; i < s.size() - inner; ++i) r *= s[i];
  return r;
}

// numpy.fft.rfft(x, n) of x [..., L] (f64).
Tensor ref_rfft(const Tensor& x, std::int64_t n) {
  const auto v = x.to_vector<double>();
  const std::int64_t L = x.shape().back(), rows = rows_of(x.shape(), 1), m = n / 2 + 1;
  std::vector<double> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<cd> row(n, 0.0);
    for (std::int64_t j = 0; j < std::min(L, n); ++j) row[j] = v[r * L + j];
    const auto X = naive_dft(row, -1);
    for (std::int64_t k = 0; k < m; ++k) {
      out.push_back(X[k].real());
      out.push_back(X[k].imag());
    }
  }
  Shape s = x.shape();
  s[s.size() - 1] = m;
  s.push_back(2);
  return from_vector(out, s);
}

// numpy.fft.irfft(X, n) of X [..., m, 2] (f64).
Tensor ref_irfft(const Tensor& X, std::int64_t n) {
  const auto v = X.to_vector<double>();
  const std::int64_t m = X.shape()[X.dim() - 2], rows = rows_of(X.shape(), 2), h = n / 2;
  std::vector<double> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<cd> full(n, 0.0);
    for (std::int64_t k = 0; k <= h && k < m; ++k) {
      cd z(v[(r * m + k) * 2], v[(r * m + k) * 2 + 1]);
      if (k == 0 || (n % 2 == 0 && k == h)) z = z.real();
      full[k] = z;
      if (k > 0) full[n - k] = std::conj(z);
    }
    const auto x = naive_dft(full, +1);
    for (std::int64_t j = 0; j < n; ++j) out.push_back(x[j].real() / static_cast<double>(n));
  }
  Shape s(std::span<const std::int64_t>(X.shape().begin(), X.shape().end() - 2));
  s.push_back(n);
  return from_vector(out, s);
}

// fft / ifft of x [..., n, 2] (f64).
Tensor ref_fft(const Tensor& x, bool inverse) {
  const auto v = x.to_vector<double>();
  const std::int64_t n = x.shape()[x.dim() - 2], rows = rows_of(x.shape(), 2);
  std::vector<double> out;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<cd> row(n);
    for (std::int64_t j = 0; j < n; ++j) row[j] = cd(v[(r * n + j) * 2], v[(r * n + j) * 2 + 1]);
    auto y = naive_dft(row, inverse ? +1 : -1);
    for (auto& z : y) {
      if (inverse) z /= static_cast<double>(n);
      out.push_back(z.real());
      out.push_back(z.imag());
    }
  }
  return from_vector(out, x.shape());
}

// Direct causal (or full) convolution with NumPy broadcasting of the leading dims:
// y[..., t] = sum_s k[..., s] u[..., t - s].
Tensor ref_conv(const Tensor& u, const Tensor& k, bool causal) {
  const std::int64_t L = u.shape().back(), Lk = k.shape().back(), T = causal ? L : L + Lk - 1;
  const Shape su(std::span<const std::int64_t>(u.shape().begin(), u.shape().end() - 1));
  const Shape sk(std::span<const std::int64_t>(k.shape().begin(), k.shape().end() - 1));
  const Shape S = broadcast_shapes(su, sk, "ref_conv");
  const Tensor ue = u.to(DType::f64).expand([&] { Shape s = S; s.push_back(L); return s; }()).contiguous();
  const Tensor ke = k.to(DType::f64).expand([&] { Shape s = S; s.push_back(Lk); return s; }()).contiguous();
  const auto U = ue.to_vector<double>(), K = ke.to_vector<double>();
  std::vector<double> y;
  for (std::int64_t r = 0; r < S.numel(); ++r)
    for (std::int64_t t = 0; t < T; ++t) {
      double s = 0;
      for (std::int64_t j = 0; j < Lk && j <= t; ++j)
        if (t - j < L) s += K[r * Lk + j] * U[r * L + t - j];
      y.push_back(s);
    }
  Shape ys = S;
  ys.push_back(T);
  return from_vector(y, ys);
}

// max |a - b| / max(1, max |b|).
double rel_err(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  if (x.size() != y.size() || a.shape() != b.shape()) return INFINITY;
  double e = 0, m = 1;
  for (std::size_t i = 0; i < x.size(); ++i) {
    e = std::max(e, std::abs(x[i] - y[i]));
    m = std::max(m, std::abs(y[i]));
  }
  return e / m;
}

std::vector<std::int64_t> test_lengths() {
  std::vector<std::int64_t> ns;
  for (std::int64_t n = 1; n <= 40; ++n) ns.push_back(n);
  for (std::int64_t n : {64, 100, 127, 1000, 1024}) ns.push_back(n);
  return ns;
}

double tol(std::int64_t n, DType dt) {
  const double lg = std::max(1.0, std::log2(static_cast<double>(n)));
  return (dt == DType::f64 ? 1e-13 : 2e-6) * lg;
}

// A complex f64 tensor whose values stay away from 0 (for division and |z| gradients).
Tensor away_from_zero(const Shape& s, std::uint64_t seed) {
  const Tensor mag = test::uniform(s, 0.5, 2.0, DType::f64, seed);
  const Tensor sgn = ops::sign(test::randn(s, DType::f64, seed + 1));
  return ops::mul(mag, sgn);
}

}  // namespace

// ---- forward ---------------------------------------------------------------------------------------------------

TEST_CASE("rfft/irfft/fft: forward matches a naive DFT for n = 1..40 and large n", "[ops][fft]") {
  for (const std::int64_t n : test_lengths()) {
    INFO("n = " << n);
    const std::int64_t rows = n >= 1000 ? 2 : 3;
    for (const DType dt : {DType::f64, DType::f32}) {
      INFO("dtype " << dtype_name(dt));
      const Tensor x = test::randn({rows, n}, DType::f64, static_cast<std::uint64_t>(n)).to(dt);
      CHECK(rel_err(ops::rfft(x), ref_rfft(x, n)) <= tol(n, dt));
      // irfft of arbitrary spectra, including non-zero imaginary parts at DC / Nyquist (ignored).
      const std::int64_t m = n / 2 + 1;
      const Tensor X = test::randn({rows, m, 2}, DType::f64, static_cast<std::uint64_t>(n) + 7).to(dt);
      CHECK(rel_err(ops::irfft(X, n), ref_irfft(X, n)) <= tol(n, dt));
      const Tensor z = test::randn({rows, n, 2}, DType::f64, static_cast<std::uint64_t>(n) + 9).to(dt);
      CHECK(rel_err(ops::fft(z), ref_fft(z, false)) <= tol(n, dt));
      CHECK(rel_err(ops::fft(z, true), ref_fft(z, true)) <= tol(n, dt));
    }
  }
}

TEST_CASE("rfft/irfft: padding, truncation, defaults, layouts and roundtrips", "[ops][fft]") {
  const Tensor x = test::randn({2, 3, 12}, DType::f64, 3);
  for (const std::int64_t n : {1, 2, 5, 11, 12, 13, 16, 25, 31}) {
    INFO("n = " << n);
    const Tensor want = ref_rfft(x, n);
    CHECK(ops::rfft(x, n).shape() == Shape{2, 3, n / 2 + 1, 2});
    CHECK(rel_err(ops::rfft(x, n), want) <= 1e-13);
    CHECK(rel_err(ops::rfft(test::transposed_layout(x), n), want) <= 1e-13);
    CHECK(rel_err(ops::rfft(test::strided_layout(x), n), want) <= 1e-13);
    CHECK(rel_err(ops::rfft(x.flip({2}).flip({2}), n), want) <= 1e-13);
    CHECK(rel_err(ops::rfft(x.transpose(0, 1).contiguous().transpose(0, 1), n), want) <= 1e-13);
  }
  // Broadcast (expanded) input rows.
  const Tensor row = test::randn({1, 9}, DType::f64, 4);
  CHECK(rel_err(ops::rfft(row.expand({4, 9})), ref_rfft(row.expand({4, 9}).contiguous(), 9)) <= 1e-13);
  // irfft: bins beyond n/2 ignored, missing bins are zeros; default n = 2(m-1).
  const Tensor X = test::randn({2, 6, 2}, DType::f64, 5);
  CHECK(ops::irfft(X).shape() == Shape{2, 10});
  for (const std::int64_t n : {1, 2, 3, 7, 8, 9, 10, 11, 12, 17, 40}) {
    INFO("irfft n = " << n);
    CHECK(rel_err(ops::irfft(X, n), ref_irfft(X, n)) <= 1e-13);
    CHECK(rel_err(ops::irfft(test::transposed_layout(X), n), ref_irfft(X, n)) <= 1e-13);
    CHECK(rel_err(ops::irfft(test::strided_layout(X), n), ref_irfft(X, n)) <= 1e-13);
  }
  // Roundtrips for odd and even lengths.
  for (const std::int64_t n : {1, 2, 7, 8, 16, 17, 97, 128, 1000}) {
    INFO("roundtrip n = " << n);
    const Tensor v = test::randn({3, n}, DType::f64, 6);
    CHECK(rel_err(ops::irfft(ops::rfft(v), n), v) <= 1e-13);
    CHECK(rel_err(ops::irfft(ops::rfft(v.to(DType::f32)), n), v) <= 2e-6);
    const Tensor z = test::randn({2, n, 2}, DType::f64, 7);
    CHECK(rel_err(ops::fft(ops::fft(z), true), z) <= 1e-13);
  }
  // 1-d and empty inputs.
  CHECK(ops::rfft(test::randn({5}, DType::f64)).shape() == Shape{3, 2});
  CHECK(ops::rfft(zeros({0, 4}, DType::f64)).shape() == Shape{0, 3, 2});
  CHECK(ops::irfft(zeros({0, 3, 2})).shape() == Shape{0, 4});
  CHECK(ops::rfft(zeros({2, 0}, DType::f64), 4).to_vector<double>() == std::vector<double>(12, 0.0));
}

// ---- gradients -------------------------------------------------------------------------------------------------

TEST_CASE("rfft: gradcheck for odd/even n, padding, truncation, non-contiguous inputs", "[ops][fft][grad][rfft]") {
  for (const std::int64_t L : {1, 7, 8, 16, 17}) {
    for (const std::int64_t n : {L, L + 3, L + 4, L > 2 ? L - 2 : L, L > 3 ? L - 3 : L}) {
      INFO("L = " << L << ", n = " << n);
      CHECK_GRADCHECK([n](const Tensors& v) { return ops::rfft(v[0], n); }, {test::randn({2, L}, DType::f64, 11)});
    }
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::rfft(v[0], 9); }, {test::transposed_layout(test::randn({2, 3, 8}, DType::f64, 12))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::rfft(v[0]); }, {test::strided_layout(test::randn({3, 7}, DType::f64, 13))});
  // The same spectrum consumed twice (gradient accumulation through the op).
  CHECK_GRADCHECK([](const Tensors& v) { return ops::mul(ops::rfft(v[0], 6), ops::rfft(v[0], 6)); },
                  {test::randn({2, 5}, DType::f64, 14)});
}

TEST_CASE("irfft: gradcheck for odd/even n, extra and missing bins, non-contiguous inputs", "[ops][fft][grad][irfft]") {
  for (const std::int64_t m : {1, 4, 5, 9}) {
    for (const std::int64_t n : {1, 2, 6, 7, 8, 9, 16, 17}) {
      INFO("m = " << m << ", n = " << n);
      CHECK_GRADCHECK([n](const Tensors& v) { return ops::irfft(v[0], n); }, {test::randn({2, m, 2}, DType::f64, 15)});
    }
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::irfft(v[0]); }, {test::transposed_layout(test::randn({2, 9, 2}, DType::f64, 16))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::irfft(v[0], 17); }, {test::strided_layout(test::randn({3, 9, 2}, DType::f64, 17))});
  // The imaginary parts of DC and Nyquist get exactly zero gradient.
  Tensor X = test::randn({1, 5, 2}, DType::f64, 18).requires_grad_();
  ops::sum(ops::square(ops::irfft(X, 8))).backward();
  CHECK(X.grad().at({0, 0, 1}) == 0.0);
  CHECK(X.grad().at({0, 4, 1}) == 0.0);
  // Chained: irfft(rfft(x)) has the identity Jacobian.
  CHECK_GRADCHECK([](const Tensors& v) { return ops::irfft(ops::rfft(v[0], 11), 11); }, {test::randn({2, 11}, DType::f64, 19)});
}

TEST_CASE("fft: forward and inverse gradcheck", "[ops][fft][grad][fft]") {
  for (const std::int64_t n : {1, 2, 7, 8, 16, 17}) {
    INFO("n = " << n);
    for (const bool inverse : {false, true}) {
      CHECK_GRADCHECK([inverse](const Tensors& v) { return ops::fft(v[0], inverse); }, {test::randn({2, n, 2}, DType::f64, 20)});
    }
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fft(v[0]); }, {test::transposed_layout(test::randn({3, 5, 2}, DType::f64, 21))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fft(v[0], true); }, {test::strided_layout(test::randn({2, 6, 2}, DType::f64, 22))});
}

// ---- complex elementwise ---------------------------------------------------------------------------------------

TEST_CASE("complex_mul/div/conj/abs: explicit formulas, broadcasting, layouts", "[ops][fft]") {
  const Tensor a = test::randn({3, 4, 2}, DType::f64, 30), b = away_from_zero({4, 2}, 31);
  const auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  const auto prod = ops::complex_mul(a, b).to_vector<double>(), quot = ops::complex_div(a, b).to_vector<double>();
  const auto conj = ops::complex_conj(a).to_vector<double>(), mag = ops::complex_abs(a).to_vector<double>();
  REQUIRE(prod.size() == 24);
  REQUIRE(mag.size() == 12);
  for (int i = 0; i < 12; ++i) {
    const double ar = av[2 * i], ai = av[2 * i + 1], br = bv[2 * (i % 4)], bi = bv[2 * (i % 4) + 1];
    CHECK(prod[2 * i] == Approx(ar * br - ai * bi).margin(1e-15));
    CHECK(prod[2 * i + 1] == Approx(ar * bi + ai * br).margin(1e-15));
    const double den = br * br + bi * bi;
    CHECK(quot[2 * i] == Approx((ar * br + ai * bi) / den).margin(1e-14));
    CHECK(quot[2 * i + 1] == Approx((ai * br - ar * bi) / den).margin(1e-14));
    CHECK(conj[2 * i] == ar);
    CHECK(conj[2 * i + 1] == -ai);
    CHECK(mag[i] == Approx(std::hypot(ar, ai)).epsilon(1e-15));
  }
  CHECK(ops::complex_mul(a, b).shape() == Shape{3, 4, 2});
  CHECK(ops::complex_abs(a).shape() == Shape{3, 4});
  // Layout independence (bit-identical) and f32.
  CHECK(test::same_bits(ops::complex_mul(test::transposed_layout(a), test::strided_layout(b)), ops::complex_mul(a, b)));
  CHECK(test::same_bits(ops::complex_div(a.flip({0}), b).flip({0}).contiguous(), ops::complex_div(a, b)));
  CHECK(rel_err(ops::complex_div(a.to(DType::f32), b.to(DType::f32)), ops::complex_div(a, b)) <= 1e-6);
  // Mixed dtypes promote; broadcasting on both sides; 1-element complex scalars.
  CHECK(ops::complex_mul(a.to(DType::f32), b).dtype() == DType::f64);
  CHECK(ops::complex_mul(test::randn({3, 1, 2}), test::randn({1, 5, 2})).shape() == Shape{3, 5, 2});
  CHECK(ops::complex_mul(tensor({0.0, 1.0}, DType::f64), tensor({0.0, 1.0}, DType::f64)).to_vector<double>() ==
        std::vector<double>{-1.0, 0.0});
  // Division without overflow of |b|^2 and |z| without overflow/underflow (Smith / scaled hypot).
  const Tensor big = tensor({3e200, 4e200}, DType::f64), tiny = tensor({3e-200, 4e-200}, DType::f64);
  CHECK(ops::complex_abs(big).item() == Approx(5e200));
  CHECK(ops::complex_abs(tiny).item() == Approx(5e-200));
  CHECK(ops::complex_abs(tensor({3e30f, 4e30f})).item() == Approx(5e30).epsilon(1e-6));
  const auto q = ops::complex_div(tensor({1e300, 1e300}, DType::f64), big).to_vector<double>();
  CHECK(q[0] == Approx(7e100 / 25).epsilon(1e-14));  // (1 + i) 1e300 / ((3 + 4i) 1e200) = (7 - i) / 25 * 1e100
  CHECK(q[1] == Approx(-1e100 / 25).epsilon(1e-14));
  CHECK(std::isinf(ops::complex_abs(tensor({INFINITY, NAN}, DType::f64)).item()));
  CHECK(std::isnan(ops::complex_abs(tensor({NAN, 1.0}, DType::f64)).item()));
  CHECK(ops::complex_abs(tensor({0.0, 0.0}, DType::f64)).item() == 0.0);
  // Many elements: multiple chunks and the strided/broadcast paths.
  const Tensor x = test::randn({300, 257, 2}, DType::f32, 32), y = test::randn({257, 2}, DType::f32, 33);
  const Tensor xy = ops::complex_mul(x, y);
  const Tensor re = ops::sub(ops::mul(x.select(-1, 0), y.select(-1, 0)), ops::mul(x.select(-1, 1), y.select(-1, 1)));
  CHECK(rel_err(xy.select(-1, 0), re) <= 1e-6);
}

TEST_CASE("complex_mul: gradcheck with broadcasting and layouts", "[ops][fft][grad][complex_mul]") {
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_mul(v[0], v[1]); },
                  {test::randn({3, 4, 2}, DType::f64, 40), test::randn({4, 2}, DType::f64, 41)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_mul(v[0], v[1]); },
                  {test::transposed_layout(test::randn({2, 1, 5, 2}, DType::f64, 42)), test::strided_layout(test::randn({3, 1, 2}, DType::f64, 43))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_mul(v[0], v[0]); }, {test::randn({7, 2}, DType::f64, 44)});
}

TEST_CASE("complex_div: gradcheck with broadcasting (shared denominator) and layouts", "[ops][fft][grad][complex_div]") {
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_div(v[0], v[1]); },
                  {test::randn({3, 4, 2}, DType::f64, 45), away_from_zero({4, 2}, 46)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_div(v[0], v[1]); },
                  {test::randn({5, 2}, DType::f64, 47), test::transposed_layout(away_from_zero({3, 5, 2}, 48))});
  // Both components of the denominator dominant in turn (both branches of Smith's algorithm).
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_div(v[0], v[1]); },
                  {test::randn({2, 2}, DType::f64, 49), tensor({3.0, 0.5, 0.5, -3.0}, {2, 2}, DType::f64)});
}

TEST_CASE("complex_conj / complex_abs: gradcheck, |z| has zero gradient at 0", "[ops][fft][grad][complex_conj][complex_abs]") {
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_conj(v[0]); }, {test::transposed_layout(test::randn({3, 4, 2}, DType::f64, 50))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_abs(v[0]); }, {away_from_zero({3, 4, 2}, 51)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::complex_abs(v[0]); }, {test::strided_layout(away_from_zero({5, 2}, 52))});
  Tensor z = tensor({0.0, 0.0, 3.0, -4.0}, {2, 2}, DType::f64).requires_grad_();
  ops::sum(ops::complex_abs(z)).backward();
  const auto gz = z.grad().to_vector<double>();
  CHECK(gz[0] == 0.0);
  CHECK(gz[1] == 0.0);
  CHECK(gz[2] == Approx(0.6).epsilon(1e-15));
  CHECK(gz[3] == Approx(-0.8).epsilon(1e-15));
}

TEST_CASE("complex_abs: the gradient a / |a| holds for subnormal, huge and infinite a", "[ops][fft][grad][complex_abs]") {
  const double inf = std::numeric_limits<double>::infinity();
  const auto grad_of = [](const Tensor& a) {  // d sum|a| / da, one complex number per row
    Tensor x = a.clone().requires_grad_();
    ops::sum(ops::complex_abs(x)).backward();
    return x.grad().to_vector<double>();
  };
  // f64: |a| = 5e-310 (subnormal; 1 / |a| overflows), and 5e307 (|a|^2 overflows).
  const auto g64 = grad_of(tensor({3e-310, -4e-310, 3e307, 4e307, -inf, 2.0, inf, -inf}, {4, 2}, DType::f64));
  CHECK(g64[0] == Approx(0.6).epsilon(1e-12));
  CHECK(g64[1] == Approx(-0.8).epsilon(1e-12));
  CHECK(g64[2] == Approx(0.6).epsilon(1e-15));
  CHECK(g64[3] == Approx(0.8).epsilon(1e-15));
  CHECK(g64[4] == -1.0);  // (-inf, 2): the direction's limit is (-1, 0)
  CHECK(g64[5] == 0.0);
  CHECK(g64[6] == Approx(std::sqrt(0.5)).epsilon(1e-15));  // (inf, -inf): along the diagonal
  CHECK(g64[7] == Approx(-std::sqrt(0.5)).epsilon(1e-15));
  // f32: |a| = 4e38 is past the f32 range (forward inf), yet the direction is finite; and a subnormal.
  const auto g32 = grad_of(tensor({2.4e38, 3.2e38, 3e-45, 0.0}, {2, 2}, DType::f32));
  CHECK(g32[0] == Approx(0.6).epsilon(1e-6));
  CHECK(g32[1] == Approx(0.8).epsilon(1e-6));
  CHECK(g32[2] == 1.0);
  CHECK(g32[3] == 0.0);
  CHECK(std::isnan(grad_of(tensor({NAN, 1.0}, {1, 2}, DType::f64))[0]));
}

// ---- RTF-style chain (spec section 2.2/2.4): khat = irfft(rfft(b, Lf) / rfft([1, a], Lf), Lf) --------------

namespace {
Tensor rtf_kernel(const Tensor& b, const Tensor& a, std::int64_t Lf) {
  const Tensor den = ops::rfft(ops::cat({ones({1}, a.dtype()), a}, 0), Lf);  // [m, 2], shared by all channels
  return ops::irfft(ops::complex_div(ops::rfft(b, Lf), den), Lf);
}
}  // namespace

TEST_CASE("fft: rational transfer-function kernel (rfft, complex_div with a shared denominator, irfft)", "[ops][fft]") {
  // Gradients through the whole chain, odd and even Lf (spec 2.7 item 6).
  for (const std::int64_t Lf : {7, 8, 16, 17}) {
    INFO("Lf = " << Lf);
    CHECK_GRADCHECK([Lf](const Tensors& v) { return rtf_kernel(v[0], ops::mul(v[1], 0.2), Lf); },
                    {test::randn({3, 4}, DType::f64, 60), test::randn({4}, DType::f64, 61)});
  }
  // a = 0: an FIR filter, khat = (b, 0, ...) (spec 2.7 item 1).
  const Tensor b = test::randn({2, 5}, DType::f64, 62);
  const Tensor fir = rtf_kernel(b, zeros({5}, DType::f64), 16);
  CHECK(rel_err(fir.slice(1, 0, 5), b) <= 1e-14);
  CHECK(rel_err(fir.slice(1, 5, 16), zeros({2, 11}, DType::f64)) <= 1e-14);
  // Stable a, Lf = 512: khat is the long-division power series h_n = b_{n+1} - sum_j a_j h_{n-j}
  // (spec 2.7 item 2; the aliasing error rho^512 is far below the tolerance for sum |a| < 1).
  const Tensor a = tensor({0.3, -0.2, 0.1, 0.05}, DType::f64), b1 = test::randn({1, 4}, DType::f64, 63);
  const auto khat = rtf_kernel(b1, a, 512).to_vector<double>();
  const auto av = a.to_vector<double>(), bv = b1.to_vector<double>();
  std::vector<double> h(512, 0.0);
  double err = 0;
  for (int n = 0; n < 512; ++n) {
    double v = n < 4 ? bv[n] : 0.0;
    for (int j = 1; j <= 4 && j <= n; ++j) v -= av[j - 1] * h[n - j];
    h[n] = v;
    err = std::max(err, std::abs(v - khat[n]));
  }
  CHECK(err <= 1e-12);
}

// ---- FFT convolution -------------------------------------------------------------------------------------------

namespace {
struct ConvCase {
  Shape u, k;
};
const ConvCase kConvCases[] = {
    {{2, 3, 1}, {3, 1}},    {{2, 3, 5}, {3, 5}},    {{2, 3, 17}, {3, 17}},  {{2, 3, 16}, {3, 7}},
    {{2, 3, 7}, {3, 16}},   {{1, 3, 8}, {2, 3, 8}}, {{2, 3, 9}, {2, 1, 4}}, {{4, 6}, {6}},
    {{6}, {4, 5}},          {{2, 3, 10}, {1, 3, 10}}, {{3, 64}, {3, 1}},    {{2, 2, 100}, {2, 100}},
};

// Naive gradients of sum(gy * conv(u, k)) for u [P, C, L], k [C, Lk] (causal).
void ref_conv_grads(const Tensor& u, const Tensor& k, const Tensor& gy, std::vector<double>& gu, std::vector<double>& gk) {
  const std::int64_t P = u.shape()[0], C = u.shape()[1], L = u.shape()[2], Lk = k.shape()[1];
  const auto U = u.to_vector<double>(), K = k.to_vector<double>(), G = gy.to_vector<double>();
  gu.assign(U.size(), 0.0);
  gk.assign(K.size(), 0.0);
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < L; ++t)
        for (std::int64_t s = 0; s < Lk && s <= t; ++s) {
          const double g = G[(p * C + c) * L + t];
          gu[(p * C + c) * L + t - s] += g * K[c * Lk + s];
          gk[c * Lk + s] += g * U[(p * C + c) * L + t - s];
        }
}
}  // namespace

TEST_CASE("fft_conv: equals the direct causal / full convolution (broadcasting, lengths, dtypes)", "[ops][fft]") {
  for (const auto& [su, sk] : kConvCases) {
    for (const bool causal : {true, false}) {
      INFO(fmt::format("u {} k {} causal {}", su, sk, causal));
      const Tensor u = test::randn(su, DType::f64, 70), k = test::randn(sk, DType::f64, 71);
      const Tensor want = ref_conv(u, k, causal);
      CHECK(rel_err(ops::fft_conv(u, k, causal), want) <= 1e-12);
      CHECK(rel_err(ops::fft_conv(test::transposed_layout(u), test::strided_layout(k), causal), want) <= 1e-12);
      CHECK(rel_err(ops::fft_conv(u.to(DType::f32), k.to(DType::f32), causal), want) <= 1e-5);
    }
  }
  // Long signals (spec 2.7 item 5, 1e-5 in f32), odd length and a 5-smooth FFT size.
  const Tensor u = test::randn({2, 3, 1000}, DType::f32, 72), k = test::randn({3, 1000}, DType::f32, 73);
  CHECK(rel_err(ops::fft_conv(u, k), ref_conv(u, k, true)) <= 1e-5);
  CHECK(ops::fft_conv_length(1000, 1000) == 2000);
  CHECK(ops::fft_conv_length(1024, 1024) == 2048);
  CHECK(ops::fft_conv_length(4096, 4096) == 8192);
  CHECK(ops::fft_conv_length(1, 1) == 2);
  CHECK(ops::fft_conv_length(5, 3) == 8);
  CHECK(ops::fft_conv_length(40, 40) == 80);
  // Mixed dtypes promote; an empty batch gives an empty output (and zero kernel gradient).
  CHECK(ops::fft_conv(u, k.to(DType::f64)).dtype() == DType::f64);
  Tensor ue = zeros({0, 3, 8}, DType::f64).requires_grad_(), ke = test::randn({3, 8}, DType::f64).requires_grad_();
  Tensor ye = ops::fft_conv(ue, ke);
  CHECK(ye.shape() == Shape{0, 3, 8});
  ops::sum(ye).backward();
  CHECK(ke.grad().to_vector<double>() == std::vector<double>(24, 0.0));
}

TEST_CASE("fft_conv: gradients equal the direct correlations (many channels, both dtypes)", "[ops][fft]") {
  for (const DType dt : {DType::f64, DType::f32}) {
    for (const bool recompute : {false, true}) {
      INFO(dtype_name(dt) << " recompute " << recompute);
      ops::set_fft_conv_recompute(recompute);
      Tensor u = test::randn({3, 300, 6}, dt, 80).requires_grad_(), k = test::randn({300, 4}, dt, 81).requires_grad_();
      const Tensor gy = test::randn({3, 300, 6}, dt, 82);
      ops::fft_conv(u, k).backward(gy);
      std::vector<double> gu, gk;
      ref_conv_grads(u, k, gy, gu, gk);
      const double t = dt == DType::f64 ? 1e-12 : 1e-5;
      CHECK(rel_err(u.grad(), from_vector(gu, u.shape())) <= t);
      CHECK(rel_err(k.grad(), from_vector(gk, k.shape())) <= t);
      ops::set_fft_conv_recompute(false);
    }
  }
  // Only one of the two gradients requested.
  Tensor u = test::randn({2, 3, 9}, DType::f64, 83).requires_grad_(), k = test::randn({3, 5}, DType::f64, 84).requires_grad_();
  const Tensor gy = test::randn({2, 3, 9}, DType::f64, 85);
  std::vector<double> gu, gk;
  ref_conv_grads(u, k, gy, gu, gk);
  const Tensor y = ops::fft_conv(u, k);
  CHECK(rel_err(autograd::grad({y}, {u}, {gy}, true)[0], from_vector(gu, u.shape())) <= 1e-12);
  CHECK(rel_err(autograd::grad({y}, {k}, {gy})[0], from_vector(gk, k.shape())) <= 1e-12);
  Tensor k_fixed = test::randn({3, 5}, DType::f64, 84);
  ops::fft_conv(u, k_fixed).backward(gy);
  CHECK(rel_err(u.grad(), from_vector(gu, u.shape())) <= 1e-12);
}

TEST_CASE("fft_conv: gradcheck (odd/even lengths, broadcasting, layouts, full mode)", "[ops][fft][grad][fft_conv]") {
  for (const auto& [su, sk] : kConvCases) {
    if (su.numel() + sk.numel() > 160) continue;  // keep finite differences cheap
    INFO(fmt::format("u {} k {}", su, sk));
    CHECK_GRADCHECK([](const Tensors& v) { return ops::fft_conv(v[0], v[1]); },
                    {test::randn(su, DType::f64, 90), test::randn(sk, DType::f64, 91)});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fft_conv(v[0], v[1], false); },
                  {test::transposed_layout(test::randn({2, 3, 7}, DType::f64, 92)), test::strided_layout(test::randn({3, 8}, DType::f64, 93))});
  ops::set_fft_conv_recompute(true);
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fft_conv(v[0], v[1]); },
                  {test::randn({3, 2, 8}, DType::f64, 94), test::randn({2, 8}, DType::f64, 95)});
  ops::set_fft_conv_recompute(false);
  // The same signal as input and kernel.
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fft_conv(v[0], v[0]); }, {test::randn({2, 16}, DType::f64, 96)});
}

// ---- determinism ---------------------------------------------------------------------------------------------

TEST_CASE("fft ops: 1 vs N threads give identical bits (forward and backward)", "[ops][fft][threads]") {
  const Tensor x = test::randn({700, 37}, DType::f32, 100), z = test::randn({400, 24, 2}, DType::f64, 101);
  const Tensor b = test::randn({24, 2}, DType::f64, 102);
  CHECK(test::same_bits_across_threads([&] {
    Tensor xl = x.detach().requires_grad_(), zl = z.detach().requires_grad_(), bl = b.detach().requires_grad_();
    Tensor s1 = ops::sum(ops::square(ops::irfft(ops::rfft(xl, 40), 33)));
    Tensor s2 = ops::sum(ops::complex_abs(ops::complex_div(ops::fft(zl), bl)));
    Tensor s3 = ops::sum(ops::square(ops::complex_mul(ops::fft(zl, true), ops::complex_conj(bl))));
    autograd::backward({s1, s2, s3});
    return Tensors{s1, s2, s3, xl.grad(), zl.grad(), bl.grad()};
  }));
  for (const bool recompute : {false, true}) {
    ops::set_fft_conv_recompute(recompute);
    // 256 kernel rows (one reduction group per kernel-row block) and a single shared kernel row
    // (the rows sharing it split into groups summed in a fixed order).
    for (const Shape& ks : {Shape{256, 50}, Shape{50}}) {
      INFO(fmt::format("k {} recompute {}", ks, recompute));
      const Tensor u = test::randn({6, 256, 60}, DType::f32, 103), k = test::randn(ks, DType::f32, 104);
      const Tensor gy = test::randn({6, 256, 60}, DType::f32, 105);
      CHECK(test::same_bits_across_threads([&] {
        Tensor ul = u.detach().requires_grad_(), kl = k.detach().requires_grad_();
        Tensor y = ops::fft_conv(ul, kl);
        y.backward(gy);
        return Tensors{y, ul.grad(), kl.grad()};
      }));
    }
    ops::set_fft_conv_recompute(false);
  }
}

// ---- errors --------------------------------------------------------------------------------------------------

TEST_CASE("fft ops report bad arguments", "[ops][fft][errors]") {
  CHECK_THROWS_WITH(ops::rfft(arange(8)), Contains("rfft: argument 'x' must be a floating-point tensor (f32 or f64), got i64"));
  CHECK_THROWS_WITH(ops::rfft(zeros({3, 4}), 0), Contains("rfft: the transform length n must be >= 1, got n = 0 (x has shape [3, 4]"));
  CHECK_THROWS_WITH(ops::rfft(zeros({3, 0})), Contains("rfft: the transform length n must be >= 1"));
  CHECK_THROWS_WITH(ops::rfft(scalar_tensor(1.0)), Contains("rfft: expected a real tensor [..., L] with at least one dim"));
  CHECK_THROWS_WITH(ops::rfft(Tensor()), Contains("rfft: argument 'x' is an undefined tensor"));
  CHECK_THROWS_WITH(ops::irfft(zeros({4, 3})), Contains("irfft: argument 'X' must be a complex tensor [..., n, 2]"));
  CHECK_THROWS_WITH(ops::irfft(zeros({4, 3})), Contains("got shape [4, 3] (dim -1 has size 3)"));
  CHECK_THROWS_WITH(ops::irfft(zeros({2})), Contains("irfft: argument 'X' must be a complex tensor"));
  CHECK_THROWS_WITH(ops::irfft(zeros({3, 1, 2})), Contains("irfft: the default output length 2*(m-1) is 0 for X of shape [3, 1, 2]"));
  CHECK_THROWS_WITH(ops::irfft(zeros({3, 4, 2}), -3), Contains("irfft: the output length n must be >= 1, got n = -3"));
  CHECK_THROWS_WITH(ops::irfft(zeros({3, 4, 2}, DType::i32)), Contains("irfft: argument 'X' must be a floating-point tensor"));
  CHECK_THROWS_WITH(ops::fft(zeros({5, 2}).select(0, 0)), Contains("fft: argument 'x' must be a complex tensor [..., n, 2]"));
  CHECK_THROWS_WITH(ops::fft(zeros({0, 2})), Contains("fft: the transform dim (-2) of x must have size >= 1, got shape [0, 2]"));
  CHECK_THROWS_WITH(ops::complex_mul(zeros({3, 2}), zeros({4, 2})),
                    Contains("complex_mul: shapes [3, 2] and [4, 2] cannot be broadcast (dim -2: 3 vs 4)"));
  CHECK_THROWS_WITH(ops::complex_mul(zeros({3, 2}), zeros({3, 1})), Contains("complex_mul: argument 'b' must be a complex tensor"));
  CHECK_THROWS_WITH(ops::complex_div(zeros({3, 2}, DType::i64), zeros({3, 2})), Contains("complex_div: argument 'a' must be a floating-point tensor"));
  CHECK_THROWS_WITH(ops::complex_abs(zeros({3, 3})), Contains("complex_abs: argument 'a' must be a complex tensor"));
  CHECK_THROWS_WITH(ops::complex_conj(scalar_tensor(1.0)), Contains("complex_conj: argument 'a' must be a complex tensor"));
  CHECK_THROWS_WITH(ops::fft_conv(zeros({2, 3, 8}), zeros({4, 8})),
                    Contains("fft_conv: the leading dims of u (shape [2, 3, 8]) and k (shape [4, 8]) cannot be broadcast (dim -1 of the leading dims: 3 vs 4)"));
  CHECK_THROWS_WITH(ops::fft_conv(zeros({2, 0}), zeros({2, 3})), Contains("fft_conv: the signal u (shape [2, 0]) and the kernel k (shape [2, 3]) must have length >= 1"));
  CHECK_THROWS_WITH(ops::fft_conv(arange(4), zeros({3})), Contains("fft_conv: argument 'u' must be a floating-point tensor"));
  CHECK_THROWS_WITH(ops::fft_conv(zeros({4}), scalar_tensor(1.0)), Contains("fft_conv: u [..., L] and k [..., Lk] need at least one dim"));
}
