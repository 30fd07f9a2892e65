// Dense f64 helpers: eigendecomposition, solve, log-determinant, matrix power, rank-1 SVD.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "ops/dense.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
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
  CHECK_THROWS_WITH(ops::dense::eigh(tensor({1, 2, 3, 4}, {2, 2}, DType::f64)), Contains("eigh: the matrix is not symmetric"));
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

TEST_CASE("rank1_svd finds the leading singular triple", "[ops][dense]") {
  const Tensor u = tensor({1, 2, 2}, DType::f64) / 3.0, v = tensor({3, 4}, DType::f64) / 5.0;
  const Tensor a = ops::outer(u, v) * 7.0 + ops::outer(tensor({2, -1, 0}, DType::f64) / std::sqrt(5.0), tensor({-4, 3}, DType::f64) / 5.0) * 0.5;
  const auto r = ops::dense::rank1_svd(a);
  CHECK(r.sigma == Approx(7.0).epsilon(1e-9));
  const double sign = r.u.at<double>({0}) > 0 ? 1 : -1;
  CHECK_ALLCLOSE(r.u * sign, u, 1e-8, 1e-8);
  CHECK_ALLCLOSE(r.v * sign, v, 1e-8, 1e-8);
  CHECK(ops::dense::rank1_svd(zeros({3, 2}, DType::f64)).sigma == 0.0);
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
  CHECK_THROWS_WITH(ops::dense::rank1_svd(zeros({2, 2}, DType::f64), 0), Contains("max_iters (0) and tol (1e-12) must be positive"));
}
