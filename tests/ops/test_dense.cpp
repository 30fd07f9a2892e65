// Dense f64 helpers: eigendecomposition, solve, log-determinant, matrix power, rank-1 SVD.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/autograd.hpp"
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
