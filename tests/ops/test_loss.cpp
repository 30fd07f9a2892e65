// Softmax family and losses: references, gradchecks, stability at extreme logits, options.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
// Naive softmax along the last axis of a 2-D tensor, in f64.
Tensor ref_softmax(const Tensor& x, bool log) {
  const auto v = x.to_vector<double>();
  const std::int64_t n = x.shape()[1];
  std::vector<double> out(v.size());
  for (std::int64_t r = 0; r < x.shape()[0]; ++r) {
    double m = -INFINITY, s = 0;
    for (std::int64_t j = 0; j < n; ++j) m = std::max(m, v[r * n + j]);
    for (std::int64_t j = 0; j < n; ++j) s += std::exp(v[r * n + j] - m);
    for (std::int64_t j = 0; j < n; ++j)
      out[r * n + j] = log ? v[r * n + j] - m - std::log(s) : std::exp(v[r * n + j] - m) / s;
  }
  return from_vector(out, x.shape());
}
}  // namespace

TEST_CASE("softmax and log_softmax: forward, axes, extremes", "[ops][loss]") {
  for (std::int64_t n : {1, 7, 17, 1003}) {
    const Tensor x = test::randn({5, n}, DType::f64, 1) * 4.0;
    CHECK_ALLCLOSE(ops::softmax(x), ref_softmax(x, false), 1e-12, 1e-15);
    CHECK_ALLCLOSE(ops::log_softmax(x), ref_softmax(x, true), 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::softmax(x.to(DType::f32)), ref_softmax(x, false), 1e-5, 1e-7);
    CHECK_ALLCLOSE(ops::log_softmax(x.to(DType::f32)), ref_softmax(x, true), 1e-5, 1e-5);
    CHECK_ALLCLOSE(ops::softmax(x.t(), 0), ref_softmax(x, false).t(), 1e-12, 1e-15);
  }
  const Tensor big = tensor({1000, 0, -1000}, {1, 3});
  CHECK(ops::softmax(big).to_vector<float>() == std::vector<float>{1, 0, 0});
  const auto ls = ops::log_softmax(big).to_vector<float>();
  CHECK(ls[0] == 0.0f);
  CHECK(ls[2] == -2000.0f);
  CHECK(ops::softmax(tensor({-INFINITY, 0}, {1, 2})).to_vector<float>() == std::vector<float>{0, 1});
  // Large equal logits: log_softmax is -log(4) to f32 precision, not off by ulp(3000) (the shift
  // x - m is exact; only log s is rounded).
  CHECK(ops::log_softmax(full({4}, 3000.5, DType::f32), 0).to_vector<float>() ==
        std::vector<float>(4, static_cast<float>(-std::log(4.0))));
}

TEST_CASE("softmax family: gradcheck", "[ops][loss][grad][softmax][log_softmax]") {
  for (int axis : {0, 1, -1}) {
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::softmax(v[0], axis); },
                    {test::transposed_layout(test::randn({4, 7}, DType::f64, 2))});
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::log_softmax(v[0], axis); },
                    {test::strided_layout(test::randn({3, 17}, DType::f64, 3))});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::softmax(v[0]); }, {test::randn({1, 1003}, DType::f64, 4)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::log_softmax(v[0]); }, {test::randn({2, 1}, DType::f64, 5)});
  CHECK(test::same_bits_across_threads([] {
    Tensor x = test::randn({513, 1001}, DType::f32, 6).requires_grad_();
    Tensor y = ops::log_softmax(ops::softmax(x) * 3.0);
    y.backward(test::randn({513, 1001}, DType::f32, 7));
    return Tensors{y, x.grad()};
  }));
}

TEST_CASE("cross_entropy: values, ignore_index, label smoothing, shapes", "[ops][loss]") {
  const Tensor logits = tensor({2, 1, 0, 0, 0, 3}, {2, 3}, DType::f64);
  const Tensor target = tensor({0, 2}, DType::i64);
  const Tensor lsm = ref_softmax(logits, true);
  const double l0 = -lsm.at<double>({0, 0}), l1 = -lsm.at<double>({1, 2});
  CHECK(ops::cross_entropy(logits, target).item() == Approx((l0 + l1) / 2).epsilon(1e-12));
  ops::CrossEntropyOptions sum_opt;
  sum_opt.reduction = ops::Reduction::sum;
  CHECK(ops::cross_entropy(logits, target, sum_opt).item() == Approx(l0 + l1).epsilon(1e-12));
  ops::CrossEntropyOptions ignore;
  ignore.ignore_index = 2;
  CHECK(ops::cross_entropy(logits, target, ignore).item() == Approx(l0).epsilon(1e-12));  // mean over 1 counted target
  ops::CrossEntropyOptions smooth;
  smooth.label_smoothing = 0.1;
  const double s0 = -(lsm.at<double>({0, 0}) + lsm.at<double>({0, 1}) + lsm.at<double>({0, 2})) / 3;
  const double s1 = -(lsm.at<double>({1, 0}) + lsm.at<double>({1, 1}) + lsm.at<double>({1, 2})) / 3;
  CHECK(ops::cross_entropy(logits, target, smooth).item() == Approx((0.9 * l0 + 0.1 * s0 + 0.9 * l1 + 0.1 * s1) / 2).epsilon(1e-12));
  ops::CrossEntropyOptions none;
  none.reduction = ops::Reduction::none;
  CHECK(ops::cross_entropy(logits, target, none).shape() == Shape{2});
  // An unbatched sample: logits [C], a 0-d target (torch: [1, 2, 3] with target 1 gives 1.40761).
  const Tensor one = tensor({1, 2, 3}, DType::f64);
  CHECK(ops::cross_entropy(one, scalar_tensor(1, DType::i64)).item() == Approx(1.4076059644443804).epsilon(1e-12));
  CHECK(ops::cross_entropy(one, scalar_tensor(1, DType::i64), none).dim() == 0);
  // [N, C, L] logits with [N, L] targets.
  const Tensor seq = test::randn({2, 4, 3}, DType::f64, 8);
  const Tensor seq_t = tensor({0, 3, 1, 2, 2, 0}, {2, 3}, DType::i64);
  const Tensor flat = seq.permute({0, 2, 1}).reshape({6, 4});
  CHECK(ops::cross_entropy(seq, seq_t).item() == Approx(ops::cross_entropy(flat, seq_t.reshape({6})).item()).epsilon(1e-12));
  // Extreme logits stay finite.
  const Tensor extreme = tensor({1e4, -1e4, 0, 0}, {2, 2});
  CHECK(std::isfinite(ops::cross_entropy(extreme, tensor({1, 0}, DType::i64)).item()));
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0, 3}, DType::i64)), Contains("target 3 at flat position 1 is out of range for 3 classes"));
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0.0, 1.0})), Contains("integer class indices"));
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0}, DType::i64)), Contains("target shape [1] must be logits shape [2, 3] without the class dim ([2])"));
}

TEST_CASE("cross_entropy: gradcheck (through log_softmax and gather)", "[ops][loss]") {
  const Tensor target = tensor({0, 2, -100, 1, 2}, DType::i64);
  ops::CrossEntropyOptions opt;
  opt.label_smoothing = 0.2;
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::cross_entropy(v[0], target, opt); },
                  {test::transposed_layout(test::randn({5, 3}, DType::f64, 9))});
}

TEST_CASE("binary cross-entropy with logits, mse, l1", "[ops][loss][grad][binary_cross_entropy_with_logits]") {
  const Tensor x = tensor({-2, 0, 3, 50, -50}, DType::f64), y = tensor({0, 1, 1, 0, 1}, DType::f64);
  const auto v = ops::binary_cross_entropy_with_logits(x, y, ops::Reduction::none).to_vector<double>();
  auto ref = [](double x, double y) {
    const double p = 1 / (1 + std::exp(-x));
    return -(y * std::log(p) + (1 - y) * std::log1p(-p));
  };
  CHECK(v[0] == Approx(ref(-2, 0)).epsilon(1e-12));
  CHECK(v[1] == Approx(std::log(2.0)).epsilon(1e-12));
  CHECK(v[3] == Approx(50).epsilon(1e-12));  // log(1 + e^50) without overflow
  CHECK(v[4] == Approx(50).epsilon(1e-12));
  // The gradient at x = 0 is sigmoid(0) - y exactly.
  Tensor xr = zeros({1}, DType::f64).requires_grad_();
  ops::binary_cross_entropy_with_logits(xr, ones({1}, DType::f64), ops::Reduction::sum).backward();
  CHECK(xr.grad().item() == -0.5);
  CHECK_GRADCHECK([](const Tensors& t) { return ops::binary_cross_entropy_with_logits(t[0], t[1]); },
                  {test::transposed_layout(test::randn({3, 7}, DType::f64, 10)), test::uniform({3, 7}, 0, 1, DType::f64, 11)});
  CHECK(ops::mse_loss(tensor({1, 2}), tensor({3, 2})).item() == 2.0);
  CHECK(ops::l1_loss(tensor({1, 2}), tensor({3, 5}), ops::Reduction::sum).item() == 5.0);
  CHECK_GRADCHECK([](const Tensors& t) { return ops::mse_loss(t[0], t[1]) + ops::l1_loss(t[0], t[1]); },
                  {test::randn({17}, DType::f64, 12), test::randn({17}, DType::f64, 13)});
  CHECK_THROWS_WITH(ops::mse_loss(zeros({2}), zeros({3})), Contains("mse_loss: input shape [2] and target shape [3] differ"));
}
