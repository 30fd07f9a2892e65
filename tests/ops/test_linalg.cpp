// Matrix products: naive references for every operand layout and broadcast rule, gradchecks,
// thread-count determinism, errors.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/monarch.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
// Naive batched matmul with broadcasting over batch dims (f64).
Tensor ref_matmul(const Tensor& a, const Tensor& b) {
  Tensor A = a.to(DType::f64), B = b.to(DType::f64);
  const bool a1 = A.dim() == 1, b1 = B.dim() == 1;
  if (a1) A = A.unsqueeze(0);
  if (b1) B = B.unsqueeze(1);
  const std::int64_t M = A.shape()[A.dim() - 2], K = A.shape()[A.dim() - 1], N = B.shape()[B.dim() - 1];
  const Shape ab(std::span<const std::int64_t>(A.shape().begin(), A.shape().end() - 2));
  const Shape bb(std::span<const std::int64_t>(B.shape().begin(), B.shape().end() - 2));
  const Shape batch = broadcast_shapes(ab, bb, "ref");
  const auto av = A.to_vector<double>(), bv = B.to_vector<double>();
  std::vector<double> out;
  for (std::int64_t f = 0; f < batch.numel(); ++f) {
    const auto idx = test::ref::unravel(f, batch);
    const std::int64_t ia = test::ref::ravel_broadcast(idx, ab), ib = test::ref::ravel_broadcast(idx, bb);
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (std::int64_t k = 0; k < K; ++k) s += av[(ia * M + i) * K + k] * bv[(ib * K + k) * N + j];
        out.push_back(s);
      }
  }
  Shape shape = batch;
  if (!a1) shape.push_back(M);
  if (!b1) shape.push_back(N);
  return from_vector(out, shape);
}

const std::pair<Shape, Shape> kMatmulShapes[] = {
    {{3, 4}, {4, 5}},       {{1, 1}, {1, 1}},     {{7, 17}, {17, 3}},      {{4}, {4}},           {{4}, {4, 3}},
    {{2, 3, 4}, {4}},       {{2, 3, 4}, {4, 5}},  {{2, 3, 4}, {2, 4, 5}},  {{2, 1, 3, 4}, {5, 4, 2}},
    {{1, 3, 4}, {6, 4, 2}}, {{33, 65}, {65, 17}},
};
}  // namespace

TEST_CASE("matmul: forward matches the naive product for all shapes and layouts", "[ops][linalg]") {
  for (const auto& [sa, sb] : kMatmulShapes) {
    INFO(fmt::format("{} x {}", sa, sb));
    const Tensor a = test::randn(sa, DType::f64, 1), b = test::randn(sb, DType::f64, 2);
    const Tensor want = ref_matmul(a, b);
    CHECK_ALLCLOSE(ops::matmul(a, b), want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::matmul(test::transposed_layout(a), test::transposed_layout(b)), want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::matmul(test::strided_layout(a), b), want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::matmul(a.to(DType::f32), b.to(DType::f32)), want, 1e-4, 1e-5);
  }
  // Large enough for the packed, blocked path and several threads.
  const Tensor a = test::randn({300, 257}, DType::f32, 3), b = test::randn({257, 190}, DType::f32, 4);
  CHECK_ALLCLOSE(ops::matmul(a, b), ref_matmul(a, b), 1e-4, 1e-4);
  CHECK_ALLCLOSE(ops::matmul(b.t(), a.t()), ref_matmul(a, b).t(), 1e-4, 1e-4);
  CHECK(ops::matmul(zeros({3, 0}), zeros({0, 2})).to_vector<float>() == std::vector<float>(6, 0.0f));
  CHECK(ops::matmul(zeros({0, 3}), zeros({3, 2})).shape() == Shape{0, 2});
}

TEST_CASE("matmul/bmm/outer: gradcheck", "[ops][linalg][grad][matmul]") {
  for (const auto& [sa, sb] : kMatmulShapes) {
    INFO(fmt::format("{} x {}", sa, sb));
    if (sa.numel() * sb.numel() > 5000) continue;  // keep finite differences cheap
    CHECK_GRADCHECK([](const Tensors& v) { return ops::matmul(v[0], v[1]); },
                    {test::randn(sa, DType::f64, 5), test::transposed_layout(test::randn(sb, DType::f64, 6))});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::bmm(v[0], v[1]); },
                  {test::strided_layout(test::randn({2, 3, 4}, DType::f64, 7)), test::randn({2, 4, 5}, DType::f64, 8)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::outer(v[0], v[1]); },
                  {test::randn({7}, DType::f64, 9), test::randn({3}, DType::f64, 10)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::matmul(v[0], v[0].t()); }, {test::randn({4, 3}, DType::f64, 11)});
}

TEST_CASE("linear: fused bias, batch folding, gradcheck", "[ops][linalg][grad][linear]") {
  const Tensor x = test::randn({2, 3, 5}, DType::f64, 12), w = test::randn({4, 5}, DType::f64, 13), b = test::randn({4}, DType::f64, 14);
  CHECK_ALLCLOSE(ops::linear(x, w, b), ops::add(ref_matmul(x, w.t()), b), 1e-12, 1e-12);
  CHECK_ALLCLOSE(ops::linear(x, w), ref_matmul(x, w.t()), 1e-12, 1e-12);
  CHECK(ops::linear(test::randn({5}, DType::f64, 15), w, b).shape() == Shape{4});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::linear(v[0], v[1], v[2]); },
                  {test::transposed_layout(test::randn({2, 3, 5}, DType::f64, 16)), test::randn({4, 5}, DType::f64, 17),
                   test::strided_layout(test::randn({4}, DType::f64, 18))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::linear(v[0], v[1]); },
                  {test::randn({1, 7}, DType::f64, 19), test::transposed_layout(test::randn({17, 7}, DType::f64, 20))});
  // An empty inner dimension (K = 0) gives zeros, or the bias, and zero gradients, also with folded batch dims.
  {
    Tensor e = zeros({2, 3, 0}, DType::f64).requires_grad_(), we = zeros({4, 0}, DType::f64).requires_grad_();
    const Tensor be = test::randn({4}, DType::f64, 21).requires_grad_();
    const Tensor ye = ops::linear(e, we, be);
    REQUIRE(ye.shape() == Shape{2, 3, 4});
    CHECK_ALLCLOSE(ye, be.detach().expand({2, 3, 4}), 0, 0);
    ops::sum(ye).backward();
    CHECK(e.grad().shape() == Shape{2, 3, 0});
    CHECK(be.grad().to_vector<double>() == std::vector<double>(4, 6.0));
    const Tensor me = ops::matmul(zeros({2, 3, 0}), zeros({0, 4}));
    REQUIRE(me.shape() == Shape{2, 3, 4});
    CHECK(ops::sum(ops::abs(me)).item() == 0);
  }
  CHECK_THROWS_WITH(ops::linear(x, test::randn({4, 6}, DType::f64)), Contains("the last dim of x (shape [2, 3, 5]) must equal in_features of weight (shape [4, 6])"));
  CHECK_THROWS_WITH(ops::linear(x, w, zeros({3}, DType::f64)), Contains("linear: bias must have shape [4], got [3]"));
  CHECK_THROWS_WITH(ops::linear(x.to(DType::f32), w), Contains("linear: x is f32 but weight is f64"));
}

TEST_CASE("matmul: 1 vs N threads give identical bits", "[ops][linalg][threads]") {
  const Tensor a = test::randn({4, 130, 257}, DType::f32, 21), b = test::randn({257, 190}, DType::f32, 22);
  const Tensor w = test::randn({96, 257}, DType::f32, 23), bias = test::randn({96}, DType::f32, 24);
  CHECK(test::same_bits_across_threads([&] {
    Tensor x = a.detach().requires_grad_(), y = b.detach().requires_grad_(), wr = w.detach().requires_grad_();
    Tensor out = ops::sum(ops::matmul(x, y)) + ops::sum(ops::square(ops::linear(x, wr, bias)));
    out.backward();
    return Tensors{out, x.grad(), y.grad(), wr.grad(), ops::matmul(x.transpose(1, 2), a)};
  }));
}

TEST_CASE("matmul reports mismatched shapes", "[ops][linalg][errors]") {
  CHECK_THROWS_WITH(ops::matmul(zeros({2, 3}), zeros({4, 5})),
                    Contains("matmul: shapes [2, 3] and [4, 5] do not match: the last dim of a (3) must equal the second-to-last dim of b (4)"));
  CHECK_THROWS_WITH(ops::matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), Contains("matmul: the batch dims of a (shape [2, 2, 3]) and b (shape [3, 3, 4]), [2] and [3], cannot be broadcast"));
  CHECK_THROWS_WITH(ops::matmul(zeros({3}), zeros({4})), Contains("dot product of vectors of sizes 3 and 4"));
  CHECK_THROWS_WITH(ops::matmul(arange(4).reshape({2, 2}), zeros({2, 2})), Contains("expected floating-point operands"));
  CHECK_THROWS_WITH(ops::bmm(zeros({2, 3}), zeros({2, 3, 4})), Contains("bmm: expected 3-D operands"));
}

TEST_CASE("pairwise_sq_distances against the naive double loop, gradients, threads", "[ops][linalg][grad][pairwise_sq_distances]") {
  const Tensor a = test::randn({7, 5}, DType::f64, 70), b = test::transposed_layout(test::randn({4, 5}, DType::f64, 71));
  const Tensor d = ops::pairwise_sq_distances(a, b);  // [7, 4]
  REQUIRE(d.shape() == Shape{7, 4});
  bool close = true;
  for (std::int64_t i = 0; i < 7; ++i)
    for (std::int64_t j = 0; j < 4; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < 5; ++k) s += std::pow(a.at<double>({i, k}) - b.at<double>({j, k}), 2);
      close &= std::abs(d.at<double>({i, j}) - s) <= 1e-12 * (1 + s);
    }
  CHECK(close);
  CHECK(ops::amin(ops::pairwise_sq_distances(a, a)).item() >= 0.0);  // clamped: no negative round-off
  CHECK_GRADCHECK([](const Tensors& v) { return ops::pairwise_sq_distances(v[0], v[1]); },
                  {test::randn({3, 4}, DType::f64, 72), test::transposed_layout(test::randn({5, 4}, DType::f64, 73))});
  CHECK(test::same_bits_across_threads([] {
    const Tensor x = test::randn({300, 64}, DType::f32, 74).requires_grad_(), c = test::randn({512, 64}, DType::f32, 75);
    const Tensor y = ops::pairwise_sq_distances(x, c);
    y.backward(test::randn(y.shape(), DType::f32, 76));
    return Tensors{y, x.grad()};
  }));
  CHECK_THROWS_WITH(ops::pairwise_sq_distances(a, test::randn({4, 3}, DType::f64, 77)),
                    Contains("pairwise_sq_distances: expected a [N, D] and b [M, D], got shapes [7, 5] and [4, 3]"));
}

// ---- Monarch ---------------------------------------------------------------------------------------------------
namespace {
struct MonarchSizes {
  std::int64_t K, J, I, Lo;
};
}  // namespace

TEST_CASE("monarch_matmul: the dense product of monarch_dense, every layout, the square P BD(L) P BD(R)", "[ops][linalg][monarch]") {
  for (const MonarchSizes z : {MonarchSizes{3, 4, 5, 2}, MonarchSizes{4, 4, 4, 4}, MonarchSizes{2, 3, 1, 7}, MonarchSizes{1, 1, 6, 3}}) {
    INFO("K J I Lo = " << z.K << " " << z.J << " " << z.I << " " << z.Lo);
    const Tensor w1 = test::randn({z.K, z.J, z.I}, DType::f64, 90), w2 = test::randn({z.J, z.Lo, z.K}, DType::f64, 91);
    // The dense matrix entry by entry: W[l*J + j, k*I + i] = w2[j, l, k] w1[k, j, i].
    const Tensor W = ops::monarch_dense(w1, w2);
    REQUIRE(W.shape() == Shape{z.Lo * z.J, z.K * z.I});
    bool exact = true;
    for (std::int64_t l = 0; l < z.Lo; ++l)
      for (std::int64_t j = 0; j < z.J; ++j)
        for (std::int64_t k = 0; k < z.K; ++k)
          for (std::int64_t i = 0; i < z.I; ++i)
            exact &= W.at<double>({l * z.J + j, k * z.I + i}) == w2.at<double>({j, l, k}) * w1.at<double>({k, j, i});
    CHECK(exact);
    for (const Shape& lead : {Shape{6}, Shape{2, 3}, Shape{}}) {
      Shape xs = lead;
      xs.push_back(z.K * z.I);
      const Tensor x = test::randn(xs, DType::f64, 92);
      const Tensor want = ops::matmul(x, W.t());
      CHECK_ALLCLOSE(ops::monarch_matmul(x, w1, w2), want, 1e-12, 1e-12);
      if (x.dim() == 2) CHECK_ALLCLOSE(ops::monarch_matmul(test::transposed_layout(x), w1, w2), want, 1e-12, 1e-12);
      const Tensor y32 = ops::monarch_matmul(x.to(DType::f32), w1.to(DType::f32), w2.to(DType::f32));
      CHECK_ALLCLOSE(y32, want, 1e-5, 1e-5);
    }
  }
  // Square Monarch of size n = m^2 (spec §3.1): P BD(L) P BD(R) with (P x)[a m + b] = x[b m + a],
  // the factors w1 = R, w2 = L.
  const std::int64_t m = 3, n = m * m;
  const Tensor L = test::randn({m, m, m}, DType::f64, 93), R = test::randn({m, m, m}, DType::f64, 94);
  auto block_diag = [&](const Tensor& w) {
    Tensor out = zeros({n, n}, DType::f64);
    for (std::int64_t b = 0; b < m; ++b) out.narrow(0, b * m, m).narrow(1, b * m, m).copy_(w.select(0, b));
    return out;
  };
  Tensor P = zeros({n, n}, DType::f64);
  for (std::int64_t a = 0; a < m; ++a)
    for (std::int64_t b = 0; b < m; ++b) P.narrow(0, a * m + b, 1).narrow(1, b * m + a, 1).fill_(1.0);
  CHECK_ALLCLOSE(ops::matmul(P, P), eye(n, -1, DType::f64), 0, 0);  // P = P^-1
  const Tensor M = ops::matmul(ops::matmul(ops::matmul(P, block_diag(L)), P), block_diag(R));
  CHECK_ALLCLOSE(ops::monarch_dense(R, L), M, 1e-13, 1e-13);
}

TEST_CASE("monarch_matmul: gradients, threads, errors", "[ops][linalg][grad][monarch]") {
  const Tensor w1 = test::randn({3, 2, 4}, DType::f64, 95), w2 = test::randn({2, 5, 3}, DType::f64, 96);
  const Tensor x = test::transposed_layout(test::randn({12, 7}, DType::f64, 97)).t();  // [7, 12], non-contiguous
  CHECK_GRADCHECK([](const Tensors& v) { return ops::monarch_matmul(v[0], v[1], v[2]); }, {x, w1, w2});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::monarch_dense(v[0], v[1]); }, {w1, test::strided_layout(w2)});
  const Tensor bx = test::randn({300, 32 * 16}, DType::f32, 98);
  const Tensor b1 = test::randn({32, 32, 16}, DType::f32, 99), b2 = test::randn({32, 16, 32}, DType::f32, 100);
  CHECK(test::same_bits_across_threads([&] {
    Tensor xv = bx.detach().requires_grad_(), v1 = b1.detach().requires_grad_(), v2 = b2.detach().requires_grad_();
    Tensor y = ops::monarch_matmul(xv, v1, v2);
    y.backward(y * 0.5);
    return Tensors{y, xv.grad(), v1.grad(), v2.grad()};
  }));
  // No input features (K = 0 or I = 0): an empty sum, zeros; w2 still gets its (zero) gradient.
  CHECK_ALLCLOSE(ops::monarch_matmul(ones({5, 0}, DType::f64), ones({0, 3, 4}, DType::f64), ones({3, 2, 0}, DType::f64)),
                 zeros({5, 6}, DType::f64), 0, 0);
  Tensor w2e = ones({3, 2, 2}, DType::f64).requires_grad_();
  const Tensor ye = ops::monarch_matmul(ones({5, 0}, DType::f64), ones({2, 3, 0}, DType::f64), w2e);
  CHECK_ALLCLOSE(ye, zeros({5, 6}, DType::f64), 0, 0);
  ops::sum(ye).backward();
  CHECK_ALLCLOSE(w2e.grad(), zeros({3, 2, 2}, DType::f64), 0, 0);
  CHECK_THROWS_WITH(ops::monarch_matmul(zeros({2, 11}, DType::f64), w1, w2), Contains("monarch_matmul: x must end in K*I = 12 features for w1 [3, 2, 4], got [2, 11]"));
  CHECK_THROWS_WITH(ops::monarch_matmul(zeros({2, 12}, DType::f64), w1, zeros({2, 5, 4}, DType::f64)),
                    Contains("monarch_matmul: w2 must be [J = 2, Lo, K = 3] for w1 [3, 2, 4], got [2, 5, 4]"));
  CHECK_THROWS_WITH(ops::monarch_matmul(zeros({2, 12}), w1, w2), Contains("monarch_matmul: x is f32 but the factors are f64"));
  CHECK_THROWS_WITH(ops::monarch_dense(zeros({3, 2}, DType::f64), w2), Contains("expected factors w1 [K, J, I] and w2 [J, Lo, K]"));
}
