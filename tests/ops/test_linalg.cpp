// Matrix products: naive references for every operand layout and broadcast rule, gradchecks,
// thread-count determinism, errors.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
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
  CHECK_THROWS_WITH(ops::matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), Contains("matmul: shapes [2] and [3] cannot be broadcast"));
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
