// Dense f64 helpers: eigendecomposition, solve, log-determinant, matrix power, SVD, general
// eigenvalues and polynomial roots.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <vector>

#include "core/autograd.hpp"
#include "ops/dense.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/monarch.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
Tensor spd(std::int64_t n, std::uint64_t seed) {  // a random symmetric positive definite matrix
  const Tensor a = test::randn({n, n}, DType::f64, seed);
  return ops::matmul(a, a.t()) + eye(n, -1, DType::f64) * 0.5;
}
Tensor orthogonal(std::int64_t n, std::uint64_t seed) { return ops::dense::eigh(spd(n, seed)).vectors; }
Tensor diag_rect(const Shape& shape, const std::vector<double>& values) {  // values on the diagonal of a [m, n] matrix
  std::vector<double> d(static_cast<std::size_t>(shape.numel()), 0.0);
  for (std::size_t i = 0; i < values.size(); ++i) d[i * static_cast<std::size_t>(shape[1]) + i] = values[i];
  return from_vector(d, shape);
}
}  // namespace

TEST_CASE("eigh reconstructs symmetric matrices", "[ops][dense]") {
  for (std::int64_t n : {1, 2, 7, 17, 64}) {
    const Tensor a0 = test::randn({n, n}, DType::f64, static_cast<std::uint64_t>(n));
    const Tensor a = (a0 + a0.t()) * 0.5;
    const auto e = ops::dense::eigh(a);
    const Tensor q = e.vectors;
    const Tensor recon = ops::matmul(ops::matmul(q, ops::mul(eye(n, -1, DType::f64), e.values)), q.t());
    CHECK_ALLCLOSE(recon, a, 1e-10, 1e-10);
    CHECK_ALLCLOSE(ops::matmul(q.t(), q), eye(n, -1, DType::f64), 1e-10, 1e-10);
    const auto w = e.values.to_vector<double>();
    CHECK(std::is_sorted(w.begin(), w.end()));
  }
  CHECK(ops::dense::eigh(tensor({2, 1, 1, 2}, {2, 2}, DType::f64)).values.to_vector<double>()[0] == Approx(1.0));
  CHECK_THROWS_WITH(ops::dense::eigh(tensor({1, 2, 3, 4}, {2, 2}, DType::f64)), Contains("eigh: the matrix (shape [2, 2]) is not symmetric"));
  CHECK_THROWS_WITH(ops::dense::eigh(zeros({2, 3})), Contains("eigh: expected a square matrix"));
}

TEST_CASE("solve, slogdet, matrix_power, sqrtm", "[ops][dense]") {
  const Tensor a = spd(9, 3), b = test::randn({9, 2}, DType::f64, 4);
  const Tensor x = ops::dense::solve(a, b);
  CHECK_ALLCLOSE(ops::matmul(a, x), b, 1e-10, 1e-10);
  CHECK(ops::dense::solve(a, b.select(1, 0)).shape() == Shape{9});
  const Tensor d = tensor({2, 0, 0, 0, -3, 0, 0, 0, 0.5}, {3, 3}, DType::f64);
  const auto sd = ops::dense::slogdet(d);
  CHECK(sd.sign == -1.0);
  CHECK(sd.logabs == Approx(std::log(3.0)));
  const Tensor perm = tensor({0, 1, 1, 0}, {2, 2}, DType::f64);
  CHECK(ops::dense::slogdet(perm).sign == -1.0);
  CHECK(ops::dense::slogdet(zeros({2, 2}, DType::f64)).sign == 0.0);
  CHECK_THROWS_WITH(ops::dense::solve(tensor({1, 2, 2, 4}, {2, 2}, DType::f64), tensor({1, 1}, DType::f64)), Contains("singular"));
  const Tensor m = test::randn({5, 5}, DType::f64, 5) * 0.3;
  Tensor m3 = ops::matmul(ops::matmul(m, m), m);
  CHECK_ALLCLOSE(ops::dense::matrix_power(m, 3), m3, 1e-12, 1e-14);
  CHECK_ALLCLOSE(ops::dense::matrix_power(m, 0), eye(5, -1, DType::f64));
  const Tensor s = spd(6, 6), r = ops::dense::sqrtm_psd(s);
  CHECK_ALLCLOSE(ops::matmul(r, r), s, 1e-10, 1e-10);
}

TEST_CASE("solve is as LAPACK on graded matrices, sqrtm_psd refuses indefinite ones, clear messages", "[ops][dense]") {
  // Well-posed despite entries 1e14 apart (numpy solves them exactly).
  CHECK(ops::dense::solve(tensor({1e14, 0, 0, 1}, {2, 2}, DType::f64), tensor({1e14, 1}, DType::f64)).to_vector<double>() ==
        std::vector<double>{1, 1});
  CHECK_ALLCLOSE(ops::dense::solve(tensor({1e20, 1e20, 1, 2}, {2, 2}, DType::f64), tensor({2e20, 3}, DType::f64)),
                 tensor({1, 1}, DType::f64), 1e-15, 0);
  CHECK_ALLCLOSE(ops::dense::solve(tensor({1, 0, 0, 1e-20}, {2, 2}, DType::f64), tensor({1, 1e-20}, DType::f64)),
                 tensor({1, 1}, DType::f64), 1e-15, 0);
  CHECK_THROWS_WITH(ops::dense::solve(tensor({1, 2, 2, 4}, {2, 2}, DType::f64), tensor({1, 1}, DType::f64)),
                    Contains("solve: the matrix (shape [2, 2]) is singular"));
  CHECK_THROWS_WITH(ops::dense::solve(tensor({1, NAN, 0, 1}, {2, 2}, DType::f64), tensor({1, 1}, DType::f64)),
                    Contains("solve: the matrix (shape [2, 2]) has a non-finite entry nan"));
  CHECK_THROWS_WITH(ops::dense::solve(eye(2, -1, DType::f64), tensor({1, INFINITY}, DType::f64)),
                    Contains("solve: b (shape [2]) has a non-finite entry inf"));
  CHECK_THROWS_WITH(ops::dense::matrix_power(eye(3, -1, DType::f64), -1),
                    Contains("matrix_power: the exponent must be >= 0, got -1 (matrix of shape [3, 3])"));
  // eigh names the entries as given, not as rescaled internally.
  CHECK_THROWS_WITH(ops::dense::eigh(tensor({1, 2, 3, 4}, {2, 2}, DType::f64)),
                    Contains("eigh: the matrix (shape [2, 2]) is not symmetric (a[0, 1] = 2 vs a[1, 0] = 3)"));
  // sqrtm_psd: eigenvalues -1 (and -4) are not round-off.
  CHECK_THROWS_WITH(ops::dense::sqrtm_psd(tensor({0, 1, 1, 0}, {2, 2}, DType::f64)),
                    Contains("sqrtm_psd: the matrix (shape [2, 2]) is not positive semi-definite: its smallest eigenvalue is -1"));
  CHECK_THROWS_WITH(ops::dense::sqrtm_psd(tensor({-4}, {1, 1}, DType::f64)), Contains("not positive semi-definite"));
  // A rank-deficient covariance (eigenvalues 0 up to round-off, here from f32 data) is fine.
  const Tensor f = test::randn({3, 8}, DType::f32, 9);                   // 3 samples of 8 features
  const Tensor cov = ops::matmul(f.t(), f);                               // [8, 8], rank 3, f32
  const Tensor root = ops::dense::sqrtm_psd(cov);
  CHECK_ALLCLOSE(ops::matmul(root, root), cov.to(DType::f64), 1e-4, 1e-4);
}

TEST_CASE("rank1_svd finds the leading singular triple", "[ops][dense]") {
  const Tensor u = tensor({1, 2, 2}, DType::f64) / 3.0, v = tensor({3, 4}, DType::f64) / 5.0;
  const Tensor a = ops::outer(u, v) * 7.0 + ops::outer(tensor({2, -1, 0}, DType::f64) / std::sqrt(5.0), tensor({-4, 3}, DType::f64) / 5.0) * 0.5;
  const auto r = ops::dense::rank1_svd(a);
  CHECK(r.sigma == Approx(7.0).epsilon(1e-9));
  const double sign = r.u.at<double>({0}) > 0 ? 1 : -1;
  CHECK_ALLCLOSE(r.u * sign, u, 1e-8, 1e-8);
  CHECK_ALLCLOSE(r.v * sign, v, 1e-8, 1e-8);
  // A zero matrix: sigma 0 with unit vectors (any are singular vectors), small and large alike.
  for (const Shape& shape : {Shape{3, 2}, Shape{ops::dense::kRank1ExactMax + 1, ops::dense::kRank1ExactMax + 2}}) {
    const auto rz = ops::dense::rank1_svd(zeros(shape, DType::f64));
    CHECK(rz.sigma == 0.0);
    CHECK(rz.u.shape() == Shape{shape[0]});
    CHECK(rz.v.shape() == Shape{shape[1]});
    CHECK(ops::sum(ops::square(rz.u)).item() == Approx(1.0).epsilon(1e-15));
    CHECK(ops::sum(ops::square(rz.v)).item() == Approx(1.0).epsilon(1e-15));
  }
  // A non-finite entry is reported under rank1_svd's name, small or large.
  CHECK_THROWS_WITH(ops::dense::rank1_svd(tensor({1.0, NAN, 0.0, 1.0}, {2, 2}, DType::f64)),
                    Contains("rank1_svd: the matrix (shape [2, 2]) has a non-finite entry nan"));
  CHECK_THROWS_WITH(ops::dense::rank1_svd(full({70, 70}, INFINITY, DType::f64)), Contains("rank1_svd: the matrix (shape [70, 70])"));
  // Close top singular values (1 and 0.999: power iteration would need thousands of steps), wide
  // and tall, and the large-matrix path on a well separated spectrum.
  for (const Shape& shape : {Shape{3, 5}, Shape{5, 3}}) {
    const Tensor c = ops::matmul(ops::matmul(orthogonal(shape[0], 1), diag_rect(shape, {1.0, 0.999, 0.5})),
                                 orthogonal(shape[1], 2));
    const auto rc = ops::dense::rank1_svd(c);
    CHECK(rc.sigma == Approx(1.0).epsilon(1e-12));
    // sigma u v^T is the best rank-1 approximation: the residual's norm is sqrt(0.999^2 + 0.5^2).
    const Tensor residual = c - ops::outer(rc.u, rc.v) * rc.sigma;
    CHECK(std::sqrt(ops::sum(ops::square(residual)).item()) == Approx(std::hypot(0.999, 0.5)).epsilon(1e-12));
  }
  const std::int64_t big = ops::dense::kRank1ExactMax + 3;
  const Tensor x = tensor({1, 2, 2}, DType::f64) / 3.0;
  const Tensor top = ops::cat({x, zeros({big - 3}, DType::f64)}, 0);  // [big]
  const Tensor tall = ops::outer(top, top) * 4.0 + test::randn({big, big}, DType::f64, 9) * 1e-3;
  const auto rb = ops::dense::rank1_svd(tall);
  CHECK(rb.sigma == Approx(4.0).epsilon(1e-2));
  CHECK(std::fabs(ops::sum(ops::mul(rb.u.narrow(0, 0, 3), x)).item()) == Approx(1.0).epsilon(1e-3));
  // A start vector orthogonal to the top singular vector must not stop the power iteration on the
  // second one: Walsh-Hadamard rows (the column sums of such a matrix are orthogonal to v_1).
  const std::int64_t h = 128;  // > kRank1ExactMax: the power path
  auto hadamard_row = [&](std::int64_t r) {
    std::vector<double> row(static_cast<std::size_t>(h));
    for (std::int64_t c = 0; c < h; ++c) row[c] = (__builtin_popcountll(static_cast<unsigned long long>(r & c)) % 2) ? -1.0 : 1.0;
    return from_vector(row, {h});
  };
  const Tensor hs = ops::outer(hadamard_row(5), hadamard_row(6)) * 3.0 + ops::outer(hadamard_row(7), hadamard_row(0));
  CHECK(ops::dense::rank1_svd(hs).sigma == Approx(3.0 * h).epsilon(1e-12));
  // Close top singular values in a large matrix: when the iteration does not settle within
  // max_iters, the exact SVD answers.
  const Shape wide{70, 90};
  const Tensor close = ops::matmul(ops::matmul(orthogonal(70, 7), diag_rect(wide, {1.0, 0.9999999, 0.5})), orthogonal(90, 8));
  const auto rcl = ops::dense::rank1_svd(close, 5);
  CHECK(rcl.sigma == Approx(1.0).epsilon(1e-12));
  const Tensor res = close - ops::outer(rcl.u, rcl.v) * rcl.sigma;
  CHECK(std::sqrt(ops::sum(ops::square(res)).item()) == Approx(std::hypot(0.9999999, 0.5)).epsilon(1e-12));
  CHECK_THROWS_WITH(ops::dense::rank1_svd(zeros({2, 2}, DType::f64), 0), Contains("max_iters (0) and tol (1e-12) must be positive"));
}

namespace {
// Largest |entry| of x, as a plain number.
double max_abs(const Tensor& x) { return ops::amax(ops::abs(x)).item(); }

// Checks u diag(s) v^T == a, orthonormal u and v, descending non-negative s.
void check_svd(const Tensor& a, const ops::dense::Svd& r, double tol) {
  const std::int64_t k = std::min(a.shape()[0], a.shape()[1]);
  REQUIRE(r.u.shape() == Shape{a.shape()[0], k});
  REQUIRE(r.s.shape() == Shape{k});
  REQUIRE(r.v.shape() == Shape{a.shape()[1], k});
  const double scale = std::max(max_abs(a), 1e-300);
  CHECK(max_abs(ops::matmul(r.u * r.s, r.v.t()) - a.to(DType::f64)) <= tol * scale);
  CHECK(max_abs(ops::matmul(r.u.t(), r.u) - eye(k, -1, DType::f64)) <= tol);
  CHECK(max_abs(ops::matmul(r.v.t(), r.v) - eye(k, -1, DType::f64)) <= tol);
  const auto s = r.s.to_vector<double>();
  for (std::size_t i = 0; i < s.size(); ++i) {
    CHECK(s[i] >= 0);
    if (i > 0) CHECK(s[i] <= s[i - 1]);
  }
}

double trace(const Tensor& a) {
  double t = 0;
  for (std::int64_t i = 0; i < a.shape()[0]; ++i) t += a.at<double>({i, i});
  return t;
}

// The eigenvalues as (real, imaginary) pairs.
std::vector<std::pair<double, double>> pairs(const Tensor& lambda) {
  const auto v = lambda.to_vector<double>();
  std::vector<std::pair<double, double>> out;
  for (std::size_t i = 0; i + 1 < v.size(); i += 2) out.emplace_back(v[i], v[i + 1]);
  return out;
}
}  // namespace

TEST_CASE("svd of random, wide, tall, non-contiguous and f32 matrices", "[ops][dense]") {
  for (const Shape& shape : {Shape{1, 1}, Shape{1, 6}, Shape{6, 1}, Shape{3, 5}, Shape{5, 3}, Shape{7, 7}, Shape{17, 4}, Shape{33, 17}, Shape{64, 64}}) {
    const Tensor a = test::randn(shape, DType::f64, static_cast<std::uint64_t>(shape[0] * 100 + shape[1]));
    const auto r = ops::dense::svd(a);
    check_svd(a, r, 1e-12);
    // The singular values are the square roots of the Gram matrix's eigenvalues.
    const Tensor gram = shape[0] >= shape[1] ? ops::matmul(a.t(), a) : ops::matmul(a, a.t());
    const auto w = ops::dense::eigh(gram).values.to_vector<double>();  // ascending
    const auto s = r.s.to_vector<double>();
    for (std::size_t i = 0; i < s.size(); ++i) CHECK(s[i] * s[i] == Approx(w[w.size() - 1 - i]).epsilon(1e-10).margin(1e-12));
  }
  const Tensor t = test::transposed_layout(test::randn({9, 5}, DType::f64, 3));  // non-contiguous
  check_svd(t, ops::dense::svd(t), 1e-12);
  const Tensor f = test::randn({6, 4}, DType::f32, 4);
  const auto rf = ops::dense::svd(f);
  CHECK(rf.s.dtype() == DType::f64);
  check_svd(f, rf, 1e-12);
  const auto empty = ops::dense::svd(zeros({0, 3}, DType::f64));
  CHECK(empty.u.shape() == Shape{0, 0});
  CHECK(empty.v.shape() == Shape{3, 0});
}

TEST_CASE("svd recovers known spectra: ties, clusters, rank deficiency, extreme scales", "[ops][dense]") {
  for (const Shape& shape : {Shape{6, 4}, Shape{4, 6}}) {
    // Known singular values 3, 3 (a tie), 1 + 1e-10 and 1 (a cluster).
    const std::vector<double> sigma{3, 3, 1 + 1e-10, 1};
    const Tensor a = ops::matmul(ops::matmul(orthogonal(shape[0], 5), diag_rect(shape, sigma)), orthogonal(shape[1], 6));
    const auto r = ops::dense::svd(a);
    check_svd(a, r, 1e-12);
    const auto s = r.s.to_vector<double>();
    for (std::size_t i = 0; i < sigma.size(); ++i) CHECK(s[i] == Approx(sigma[i]).epsilon(1e-13));
    // Eckart-Young: the first 3 triples are the best rank-3 approximation, with error sigma_4.
    const Tensor low = ops::matmul(r.u.narrow(1, 0, 3) * r.s.narrow(0, 0, 3), r.v.narrow(1, 0, 3).t());
    CHECK(std::sqrt(ops::sum(ops::square(a - low)).item()) == Approx(1.0).epsilon(1e-12));
  }
  // Rank 1 and the zero matrix: the null directions are still completed to orthonormal columns.
  const Tensor rank1 = ops::outer(tensor({1, 2, 3, 4, 5}, DType::f64), tensor({1, -1, 2, 0}, DType::f64));
  const auto r1 = ops::dense::svd(rank1);
  check_svd(rank1, r1, 1e-12);
  CHECK(r1.s.at<double>({0}) == Approx(std::sqrt(55.0 * 6.0)).epsilon(1e-14));
  CHECK(max_abs(r1.s.narrow(0, 1, 3)) <= 1e-14);
  const auto r0 = ops::dense::svd(zeros({4, 3}, DType::f64));
  check_svd(zeros({4, 3}, DType::f64), r0, 1e-14);
  CHECK(max_abs(r0.s) == 0.0);
  // Entries near the ends of the double range: exact power-of-two scaling keeps them finite.
  for (double scale : {1e-300, 1e300}) {
    const Tensor a = test::randn({5, 3}, DType::f64, 7);
    const auto big = ops::dense::svd(a * scale), unit = ops::dense::svd(a);
    CHECK_ALLCLOSE(big.s / scale, unit.s, 1e-13, 0);
  }
  // Rank-deficient matrices leave a column of round-off inside the span of the others, which no
  // rotation makes orthogonal: it must end the iteration, not stall it (numpy's values).
  const auto rz = ops::dense::svd(tensor({1, 2, 3, 4, 5, 6, 0, 0, 0}, {3, 3}, DType::f64));
  CHECK(rz.s.at<double>({0}) == Approx(9.508032000695723).epsilon(1e-14));
  CHECK(rz.s.at<double>({1}) == Approx(0.7728696356734846).epsilon(1e-14));
  CHECK(rz.s.at<double>({2}) <= 1e-14);
  for (const Shape& shape : {Shape{3, 3}, Shape{40, 3}, Shape{3, 40}}) {
    const Tensor o = ones(shape, DType::f64);
    const auto ro = ops::dense::svd(o);
    check_svd(o, ro, 1e-12);
    CHECK(ro.s.at<double>({0}) == Approx(std::sqrt(static_cast<double>(shape.numel()))).epsilon(1e-14));
  }
  for (std::int64_t n = 2; n <= 8; ++n)
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      Tensor z = test::randn({n, n}, DType::f64, 1000 + seed * 10 + static_cast<std::uint64_t>(n));
      z.select(0, static_cast<std::int64_t>(seed) % n).fill_(0.0);  // one zero row
      const auto r = ops::dense::svd(z);
      check_svd(z, r, 1e-12);
      CHECK(r.s.at<double>({n - 1}) <= 1e-14 * r.s.at<double>({0}));
    }
  // Entries far apart in scale: the small singular value survives where its squares would underflow.
  const auto rs = ops::dense::svd(tensor({0, 1e-150, 1e150, 0}, {2, 2}, DType::f64));
  CHECK(rs.s.at<double>({0}) == 1e150);
  CHECK(rs.s.at<double>({1}) == Approx(1e-150).epsilon(1e-15));
  const Tensor tiny_col = tensor({1, 1e-170, 1, 2e-170}, {2, 2}, DType::f64);
  const auto rt = ops::dense::svd(tiny_col);
  check_svd(tiny_col, rt, 1e-12);
  CHECK(rt.s.at<double>({0}) == Approx(std::sqrt(2.0)).epsilon(1e-15));
  CHECK_THROWS_WITH(ops::dense::svd(zeros({3}, DType::f64)), Contains("svd: expected a 2-D matrix, got [3]"));
  CHECK_THROWS_WITH(ops::dense::svd(zeros({2, 2}, DType::i32)), Contains("svd: expected a floating-point matrix"));
  CHECK_THROWS_WITH(ops::dense::svd(tensor({1, NAN, 0, 1}, {2, 2}, DType::f64)), Contains("svd: the matrix (shape [2, 2]) has a non-finite entry"));
}

TEST_CASE("eigvals of triangular, rotation, defective and similar-to-known matrices", "[ops][dense]") {
  // Triangular: the diagonal, sorted by magnitude.
  const Tensor tri = tensor({2, 5, -7, 0, -3, 1, 0, 0, 0.5}, {3, 3}, DType::f64);
  const auto pt = pairs(ops::dense::eigvals(tri));
  REQUIRE(pt.size() == 3);
  CHECK(pt[0].first == Approx(-3));
  CHECK(pt[1].first == Approx(2));
  CHECK(pt[2].first == Approx(0.5));
  for (const auto& p : pt) CHECK(p.second == 0.0);
  // A scaled rotation: 0.9 e^{+-i theta}, the +i root first.
  const double th = 0.7;
  const Tensor rot = tensor({std::cos(th), -std::sin(th), std::sin(th), std::cos(th)}, {2, 2}, DType::f64) * 0.9;
  const auto pr = pairs(ops::dense::eigvals(rot));
  CHECK(pr[0].first == Approx(0.9 * std::cos(th)).epsilon(1e-14));
  CHECK(pr[0].second == Approx(0.9 * std::sin(th)).epsilon(1e-14));
  CHECK(pr[1].second == Approx(-0.9 * std::sin(th)).epsilon(1e-14));
  CHECK(ops::dense::spectral_radius(rot) == Approx(0.9).epsilon(1e-14));
  // A Jordan block (defective): the double eigenvalue 1, to the sqrt(round-off) a defect allows.
  for (const auto& p : pairs(ops::dense::eigvals(tensor({1, 1, 0, 1}, {2, 2}, DType::f64)))) {
    CHECK(p.first == Approx(1.0).epsilon(1e-7));
    CHECK(std::fabs(p.second) <= 1e-7);
  }
  // S D S^-1 for a block-diagonal D with real eigenvalues and complex pairs (2 x 2 rotation-scale
  // blocks), at sizes that need many QR sweeps.
  for (std::int64_t n : {1, 2, 7, 17, 40}) {
    std::vector<double> d(static_cast<std::size_t>(n * n), 0.0);
    std::vector<std::pair<double, double>> expected;
    std::int64_t i = 0;
    for (; i + 1 < n; i += 3) {  // a pair a +- b i, then (if room) a real eigenvalue
      const double re = 0.3 + 0.05 * static_cast<double>(i), im = 0.2 + 0.01 * static_cast<double>(i);
      d[i * n + i] = d[(i + 1) * n + i + 1] = re;
      d[i * n + i + 1] = im;
      d[(i + 1) * n + i] = -im;
      expected.emplace_back(re, im);
      expected.emplace_back(re, -im);
      if (i + 2 < n) {
        d[(i + 2) * n + i + 2] = -1.0 - 0.1 * static_cast<double>(i);
        expected.emplace_back(-1.0 - 0.1 * static_cast<double>(i), 0.0);
      }
    }
    if (i < n) {
      d[i * n + i] = 2.5;
      expected.emplace_back(2.5, 0.0);
    }
    const Tensor s = test::randn({n, n}, DType::f64, static_cast<std::uint64_t>(n)) + eye(n, -1, DType::f64) * 3.0;
    const Tensor a = ops::matmul(ops::matmul(s, from_vector(d, {n, n})), ops::dense::solve(s, eye(n, -1, DType::f64)));
    auto got = pairs(ops::dense::eigvals(a));
    REQUIRE(got.size() == expected.size());
    // Match each expected eigenvalue to the nearest computed one (the order is checked below).
    for (const auto& e : expected) {
      double best = 1e300;
      for (const auto& g : got) best = std::min(best, std::hypot(g.first - e.first, g.second - e.second));
      CHECK(best <= 1e-9);
    }
    // Descending magnitudes (compared to 40 significant bits, where ties go by the real part).
    for (std::size_t k = 1; k < got.size(); ++k)
      CHECK(std::hypot(got[k].first, got[k].second) <= std::hypot(got[k - 1].first, got[k - 1].second) * (1 + 0x1p-39));
  }
}

TEST_CASE("eigvals agree with eigh, the trace and the determinant on random matrices", "[ops][dense]") {
  for (std::int64_t n : {3, 8, 33, 64}) {
    const Tensor a0 = test::randn({n, n}, DType::f64, static_cast<std::uint64_t>(70 + n));
    const Tensor sym = (a0 + a0.t()) * 0.5;
    const auto ps = pairs(ops::dense::eigvals(sym));
    auto w = ops::dense::eigh(sym).values.to_vector<double>();
    std::sort(w.begin(), w.end(), [](double x, double y) { return std::fabs(x) > std::fabs(y); });
    for (std::size_t k = 0; k < ps.size(); ++k) {
      CHECK(ps[k].first == Approx(w[k]).margin(1e-10));
      CHECK(std::fabs(ps[k].second) <= 1e-10);
    }
    // Non-symmetric: sum lambda = trace, sum lambda^2 = trace(a^2), log prod |lambda| = log |det|.
    const auto pa = pairs(ops::dense::eigvals(a0));
    double re = 0, im = 0, re2 = 0, logabs = 0;
    for (const auto& [x, y] : pa) {
      re += x;
      im += y;
      re2 += x * x - y * y;
      logabs += 0.5 * std::log(x * x + y * y);
    }
    CHECK(re == Approx(trace(a0)).margin(1e-9));
    CHECK(std::fabs(im) <= 1e-9);
    CHECK(re2 == Approx(trace(ops::matmul(a0, a0))).margin(1e-8));
    CHECK(logabs == Approx(ops::dense::slogdet(a0).logabs).margin(1e-9));
  }
  CHECK(ops::dense::eigvals(zeros({0, 0}, DType::f64)).shape() == Shape{0, 2});
  // Balancing comes before any scaling: an entry 1e340 times smaller than the largest still counts.
  const auto pm = pairs(ops::dense::eigvals(tensor({0, 1e-170, 1e170, 0}, {2, 2}, DType::f64)));
  CHECK(pm[0].first == Approx(1.0).epsilon(1e-15));
  CHECK(pm[1].first == Approx(-1.0).epsilon(1e-15));
  CHECK(ops::dense::spectral_radius(tensor({0, 1e-170, 1e170, 0}, {2, 2}, DType::f64)) == Approx(1.0).epsilon(1e-15));
  CHECK(ops::dense::spectral_radius(zeros({3, 3}, DType::f64)) == 0.0);
  CHECK_THROWS_WITH(ops::dense::eigvals(zeros({2, 3}, DType::f64)), Contains("eigvals: expected a square matrix, got shape [2, 3]"));
  CHECK_THROWS_WITH(ops::dense::eigvals(tensor({INFINITY, 0, 0, 1}, {2, 2}, DType::f64)), Contains("eigvals: the matrix (shape [2, 2]) has a non-finite entry"));
}

TEST_CASE("poly_roots as numpy.roots", "[ops][dense]") {
  // (x - 1)(x - 2)(x - 3) = x^3 - 6x^2 + 11x - 6.
  const auto p3 = pairs(ops::dense::poly_roots(tensor({1, -6, 11, -6}, DType::f64)));
  REQUIRE(p3.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(p3[i].first == Approx(3.0 - static_cast<double>(i)).epsilon(1e-12));
    CHECK(p3[i].second == 0.0);
  }
  const auto pi = pairs(ops::dense::poly_roots(tensor({2, 0, 2}, DType::f64)));  // 2x^2 + 2: +-i
  CHECK(pi[0].first == Approx(0).margin(1e-15));
  CHECK(pi[0].second == Approx(1).epsilon(1e-14));
  CHECK(pi[1].second == Approx(-1).epsilon(1e-14));
  // Leading zeros are dropped; trailing ones are roots at 0; a constant has no roots.
  const auto pz = pairs(ops::dense::poly_roots(tensor({0, 0, 2, -1, 0, 0}, DType::f64)));  // 2x^3 - x^2
  REQUIRE(pz.size() == 3);
  CHECK(pz[0].first == Approx(0.5).epsilon(1e-15));
  CHECK(pz[1] == std::pair<double, double>(0.0, 0.0));
  CHECK(pz[2] == std::pair<double, double>(0.0, 0.0));
  CHECK(ops::dense::poly_roots(tensor({0, 5}, DType::f64)).shape() == Shape{0, 2});
  CHECK(ops::dense::poly_roots(zeros({0}, DType::f64)).shape() == Shape{0, 2});  // numpy.roots([])
  CHECK_THROWS_WITH(ops::dense::poly_roots(tensor({1e-300, 1e300}, DType::f64)), Contains("poly_roots: coefficient 1e+300 / leading coefficient 1e-300 overflows"));
  // The RTF stability test: the denominator 1 + a_1 z^-1 + ... + a_N z^-N with sum |a_i| < 1 has
  // all its roots inside the unit circle.
  const Tensor a = test::randn({12}, DType::f64, 80);
  const Tensor montel = a / (ops::sum(ops::abs(a)).item() * 1.01);  // [12], sum |a_i| < 1
  const Tensor denom = ops::cat({ones({1}, DType::f64), montel}, 0);  // [13]
  const auto roots = pairs(ops::dense::poly_roots(denom));
  double rho = 0, prod_re = 1, prod_im = 0;  // the product of the roots is (-1)^N a_N
  for (const auto& [x, y] : roots) {
    rho = std::max(rho, std::hypot(x, y));
    const double re = prod_re * x - prod_im * y;
    prod_im = prod_re * y + prod_im * x;
    prod_re = re;
  }
  CHECK(rho < 1.0);
  CHECK(prod_re == Approx(montel.at<double>({11})).epsilon(1e-9));  // N = 12 is even
  CHECK(std::fabs(prod_im) <= 1e-12);
  // Roots (and eigenvalues) 1e16 and more apart in magnitude keep the small ones (numpy's values).
  const auto wide = pairs(ops::dense::poly_roots(tensor({1, -1e17, 1}, DType::f64)));
  CHECK(wide[0].first == Approx(1e17).epsilon(1e-15));
  CHECK(wide[1].first == Approx(1e-17).epsilon(1e-12));
  const auto tiny_lead = pairs(ops::dense::poly_roots(tensor({1e-40, 1, -3, 2}, DType::f64)));
  CHECK(tiny_lead[0].first == Approx(-1e40).epsilon(1e-15));
  CHECK(tiny_lead[1].first == Approx(2).epsilon(1e-12));
  CHECK(tiny_lead[2].first == Approx(1).epsilon(1e-12));
  const auto block = pairs(ops::dense::eigvals(tensor({1e17, 0, 0, 0, 0, 1, 0, 1, 0}, {3, 3}, DType::f64)));
  CHECK(block[0].first == 1e17);
  CHECK(block[1].first == Approx(1).epsilon(1e-15));
  CHECK(block[2].first == Approx(-1).epsilon(1e-15));
  // Equal magnitudes are ordered by real part, then imaginary part: the 8-cycle's eigenvalues
  // e^(2 pi i k / 8) start at 1 and end at -1.
  std::vector<double> cyc(64, 0.0);
  for (int i = 0; i < 8; ++i) cyc[static_cast<std::size_t>(i * 8 + (i + 1) % 8)] = 1;
  const auto roots8 = pairs(ops::dense::eigvals(from_vector(cyc, {8, 8})));
  CHECK(roots8.front().first == Approx(1).epsilon(1e-14));
  CHECK(roots8.back().first == Approx(-1).epsilon(1e-14));
  for (std::size_t i = 1; i < roots8.size(); ++i) CHECK(roots8[i].first <= roots8[i - 1].first + 1e-14);
  CHECK_THROWS_WITH(ops::dense::poly_roots(zeros({3}, DType::f64)), Contains("poly_roots: all 3 coefficients are zero"));
  CHECK_THROWS_WITH(ops::dense::poly_roots(zeros({2, 2}, DType::f64)), Contains("poly_roots: expected a 1-D tensor of coefficients, got [2, 2]"));
}

TEST_CASE("monarch_project: exact on Monarch matrices, optimal, per-slice Pythagoras", "[ops][dense][monarch]") {
  for (const auto& [K, J, I, Lo] : std::vector<std::array<std::int64_t, 4>>{{3, 4, 5, 2}, {4, 4, 4, 4}, {8, 8, 8, 8}, {2, 3, 1, 7}}) {
    INFO("K J I Lo = " << K << " " << J << " " << I << " " << Lo);
    // A Monarch matrix projects onto itself (the factors only up to per-slice scale and sign).
    const Tensor w1 = test::randn({K, J, I}, DType::f64, 110), w2 = test::randn({J, Lo, K}, DType::f64, 111);
    const Tensor W = ops::monarch_dense(w1, w2);
    const auto p = ops::dense::monarch_project(W, K, J);
    REQUIRE(p.w1.shape() == Shape{K, J, I});
    REQUIRE(p.w2.shape() == Shape{J, Lo, K});
    CHECK_ALLCLOSE(ops::monarch_dense(p.w1, p.w2), W, 1e-10, 1e-10);
    // A dense matrix: no random Monarch matrix is closer, and the residual obeys Pythagoras slice by
    // slice (|A - proj|^2 = |A|^2 - sum of the slices' sigma_1^2, with sigma_1^2 = |w1[k, j]|^2 |w2[j, :, k]|^2).
    const Tensor A = test::randn({Lo * J, K * I}, DType::f64, 112);
    const auto q = ops::dense::monarch_project(A, K, J);
    const double err = ops::sum(ops::square(A - ops::monarch_dense(q.w1, q.w2))).item();
    const double sig2 = ops::sum(ops::mul(ops::sum(ops::square(q.w1), {2}), ops::sum(ops::square(q.w2), {1}).t())).item();
    const double total = ops::sum(ops::square(A)).item();
    CHECK(err == Approx(total - sig2).epsilon(1e-10).margin(1e-12 * total));  // (I = 1: rank-1 slices, err = 0)
    for (std::uint64_t seed = 0; seed < 5; ++seed) {
      const Tensor r1 = q.w1 + test::randn({K, J, I}, DType::f64, 120 + seed) * 0.1;
      const Tensor r2 = q.w2 + test::randn({J, Lo, K}, DType::f64, 130 + seed) * 0.1;
      CHECK(err <= ops::sum(ops::square(A - ops::monarch_dense(r1, r2))).item());
    }
  }
  const auto z = ops::dense::monarch_project(zeros({6, 6}, DType::f64), 2, 3);  // zero slices: zero factors
  CHECK(ops::amax(ops::abs(z.w1)).item() == 0.0);
  CHECK(ops::amax(ops::abs(z.w2)).item() == 0.0);
  const Tensor big = test::randn({260, 300}, DType::f64, 113);  // slices of 130 x 100: the power path
  CHECK(test::same_bits_across_threads([&] {
    const auto f = ops::dense::monarch_project(big, 3, 2);
    return Tensors{f.w1, f.w2};
  }));
  const auto e = ops::dense::monarch_project(zeros({0, 4}, DType::f64), 2, 2);  // empty: empty factors
  CHECK(e.w1.shape() == Shape{2, 2, 2});
  CHECK(e.w2.shape() == Shape{2, 0, 2});
  // Entries near the top of the double range: sigma would overflow, its square root does not.
  const Tensor huge = full({8, 12}, 1e308, DType::f64);
  const auto hp = ops::dense::monarch_project(huge, 3, 2);
  CHECK(std::isfinite(ops::amax(ops::abs(hp.w1)).item()));
  CHECK_ALLCLOSE(ops::monarch_dense(hp.w1 * 1e-154, hp.w2 * 1e-154), huge * 1e-308, 1e-12, 0);
  CHECK_THROWS_WITH(ops::dense::monarch_project(zeros({6, 7}, DType::f64), 2, 3), Contains("monarch_project: K = 2 must divide the 7 columns and J = 3 the 6 rows"));
  CHECK_THROWS_WITH(ops::dense::monarch_project(tensor({NAN, 0, 0, 0}, {2, 2}, DType::f64), 1, 1), Contains("non-finite entry"));
}

TEST_CASE("autograd::jacobian against closed forms and finite differences", "[ops][dense][autograd]") {
  // y = A x for x [2, 3] (a transposed, non-contiguous layout): dy[i, j] / dx[k, l] = A[i, k] [j == l].
  const Tensor a = test::randn({4, 2}, DType::f64, 60);
  const Tensor x = test::transposed_layout(test::randn({2, 3}, DType::f64, 61));
  const Tensor jac = autograd::jacobian([&](const Tensor& v) { return ops::matmul(a, v); }, x);  // [12, 6]
  REQUIRE(jac.shape() == Shape{12, 6});
  bool exact = true;
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      for (std::int64_t k = 0; k < 2; ++k)
        for (std::int64_t l = 0; l < 3; ++l)
          exact &= jac.at<double>({i * 3 + j, k * 3 + l}) == (j == l ? a.at<double>({i, k}) : 0.0);
  CHECK(exact);
  // A nonlinear map against central differences, column by column.
  const auto f = [](const Tensor& v) { return ops::sin(v) * ops::sum(ops::square(v)); };  // [5] -> [5]
  const Tensor x0 = test::randn({5}, DType::f64, 62);
  const Tensor j0 = autograd::jacobian(f, x0);
  const double h = 1e-6;
  for (std::int64_t c = 0; c < 5; ++c) {
    Tensor up = x0.clone(), down = x0.clone();
    up.narrow(0, c, 1).fill_(x0.at<double>({c}) + h);
    down.narrow(0, c, 1).fill_(x0.at<double>({c}) - h);
    const Tensor column = (f(up) - f(down)) / (2 * h);  // [5]
    CHECK_ALLCLOSE(j0.narrow(1, c, 1).reshape({5}), column, 1e-7, 1e-7);
  }
  // An affine autoregressive step z_i = x_i exp(s_i(x_<i)) + t_i(x_<i): triangular Jacobian whose
  // log |det| is sum_i s_i -- the identity a normalizing flow's log-likelihood rests on.
  const Tensor w = test::randn({4, 4}, DType::f64, 63) * 0.5, strict = ops::tril(ones({4, 4}, DType::f64), -1);
  const auto flow = [&](const Tensor& v) {  // v [4] -> z [4]
    const Tensor s = ops::tanh(ops::matmul(w * strict, v));  // s_i depends on v_<i only
    return v * ops::exp(s) + ops::square(ops::matmul(w.t() * strict, v));
  };
  const Tensor v0 = test::randn({4}, DType::f64, 64);
  const ops::dense::SlogDet sd = ops::dense::slogdet(autograd::jacobian(flow, v0));
  CHECK(sd.sign == 1.0);
  CHECK(sd.logabs == Approx(ops::sum(ops::tanh(ops::matmul(w * strict, v0))).item()).margin(1e-12));
  // Outputs that do not depend on x give zeros; integer inputs are refused.
  CHECK(ops::sum(ops::abs(autograd::jacobian([](const Tensor&) { return ones({3}, DType::f64); }, x0))).item() == 0.0);
  CHECK_THROWS_WITH(autograd::jacobian(f, tensor({1, 2}, DType::i64)), Contains("jacobian: x must be a floating-point tensor, got i64 [2]"));
}
