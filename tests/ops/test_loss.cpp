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
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0.0, 1.0})),
                    Contains("probability targets must have the logits' shape [2, 3], got [2] (class indices must be integers)"));
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0, 1}, DType::boolean)), Contains("integer class indices (i64 or i32)"));
  CHECK_THROWS_WITH(ops::cross_entropy(logits, tensor({0}, DType::i64)), Contains("target shape [1] must be the input shape [2, 3] without the class dim ([2])"));
}

TEST_CASE("cross_entropy: gradcheck (through log_softmax and gather)", "[ops][loss]") {
  const Tensor target = tensor({0, 2, -100, 1, 2}, DType::i64);
  ops::CrossEntropyOptions opt;
  opt.label_smoothing = 0.2;
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::cross_entropy(v[0], target, opt); },
                  {test::transposed_layout(test::randn({5, 3}, DType::f64, 9))});
}

TEST_CASE("cross_entropy and nll_loss: class weights, probability targets (values from torch 1.13)", "[ops][loss]") {
  const Tensor x = tensor({1, 2, 3, 0.5, -1, 2}, {2, 3}, DType::f64);
  const Tensor t = tensor({2, 0}, DType::i64);
  ops::CrossEntropyOptions o;
  o.weight = tensor({0.2, 1.0, 3.0}, DType::f64);
  o.label_smoothing = 0.2;
  CHECK(ops::cross_entropy(x, t, o).item() == Approx(0.5474669651791944).epsilon(1e-14));
  o.reduction = ops::Reduction::sum;
  CHECK(ops::cross_entropy(x, t, o).item() == Approx(1.751894288573422).epsilon(1e-14));
  o.reduction = ops::Reduction::none;
  CHECK_ALLCLOSE(ops::cross_entropy(x, t, o), tensor({1.1857173180442728, 0.5661769705291492}, DType::f64), 1e-14, 0);
  o.reduction = ops::Reduction::mean;
  CHECK(ops::cross_entropy(x, tensor({2, -100}, DType::i64), o).item() == Approx(0.39523910601475765).epsilon(1e-14));
  // Probability targets: the mean is over samples, not weights.
  const Tensor q = tensor({0.2, 0.3, 0.5, 1, 0, 0}, {2, 3}, DType::f64);
  CHECK(ops::cross_entropy(x, q, o).item() == Approx(0.8388179767845185).epsilon(1e-14));
  o.reduction = ops::Reduction::none;
  CHECK_ALLCLOSE(ops::cross_entropy(x, q, o), tensor({1.111458983039888, 0.5661769705291493}, DType::f64), 1e-14, 0);
  // One-hot probabilities equal class indices (no weight, no smoothing).
  ops::CrossEntropyOptions plain;
  CHECK(ops::cross_entropy(x, tensor({0, 0, 1, 1, 0, 0}, {2, 3}, DType::f64), plain).item() ==
        Approx(ops::cross_entropy(x, t, plain).item()).epsilon(1e-15));
  CHECK(ops::cross_entropy(x.select(0, 0), q.select(0, 0)).item() ==  // unbatched [C] distribution
        Approx(ops::cross_entropy(x.narrow(0, 0, 1), q.narrow(0, 0, 1)).item()).epsilon(1e-15));
  ops::CrossEntropyOptions wn;
  wn.weight = o.weight;
  CHECK(ops::nll_loss(ops::log_softmax(x, 1), t, wn).item() == Approx(0.490962547707679).epsilon(1e-14));
  CHECK(ops::nll_loss(ops::log_softmax(x, 1), t).item() == Approx(ops::cross_entropy(x, t).item()).epsilon(1e-15));
  CHECK_THROWS_WITH(ops::nll_loss(x, t, o), Contains("nll_loss: label_smoothing is cross_entropy's option"));
  wn.weight = ones({2}, DType::f64);
  CHECK_THROWS_WITH(ops::cross_entropy(x, t, wn), Contains("cross_entropy: weight must be [3] (one per class), got [2]"));
  wn.weight = tensor({1, 2, 3}, DType::f64).requires_grad_();  // torch: not differentiable
  CHECK_THROWS_WITH(ops::nll_loss(ops::log_softmax(x, 1), t, wn), Contains("nll_loss: the class weight is not differentiable"));
  // Gradients: weights, smoothing and ignored positions over [N, C, d] logits; probability targets too.
  ops::CrossEntropyOptions g;
  g.weight = tensor({0.5, 2.0, 1.0}, DType::f64);
  g.label_smoothing = 0.1;
  const Tensor tt = tensor({0, 2, -100, 1, 2, 2}, {2, 3}, DType::i64);  // [N = 2, d = 3]
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::cross_entropy(v[0], tt, g); },
                  {test::transposed_layout(test::randn({2, 3, 3}, DType::f64, 30))});
  ops::CrossEntropyOptions gn = g;
  gn.label_smoothing = 0;
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::nll_loss(v[0], tt, gn); }, {test::randn({2, 3, 3}, DType::f64, 31)});
  g.label_smoothing = 0.3;
  g.reduction = ops::Reduction::sum;
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::cross_entropy(v[0], ops::softmax(v[1], 1), g); },
                  {test::randn({4, 3}, DType::f64, 32), test::strided_layout(test::randn({4, 3}, DType::f64, 33))});
}

TEST_CASE("binary_cross_entropy (probabilities), pos_weight, smooth_l1, huber, kl_div (values from torch 1.13)",
          "[ops][loss][grad][binary_cross_entropy]") {
  const Tensor xb = tensor({2, -1, 0.5, -3, 0, 4}, {2, 3}, DType::f64), yb = tensor({1, 0, 0.3, 0, 1, 0.7}, {2, 3}, DType::f64);
  ops::BCEWithLogitsOptions bo;
  bo.pos_weight = tensor({2.0, 3.0, 0.5}, DType::f64);  // [C], broadcast over rows
  bo.weight = tensor({1.0, 0.5}, {2, 1}, DType::f64);
  bo.reduction = ops::Reduction::none;
  CHECK_ALLCLOSE(ops::binary_cross_entropy_with_logits(xb, yb, bo),
                 tensor({0.2538560220859452, 0.3132616875182228, 0.7529654365530907, 0.024293675786871027,
                         1.0397207708399179, 0.6058987265732882}, {2, 3}, DType::f64), 1e-14, 0);
  bo.reduction = ops::Reduction::mean;
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::binary_cross_entropy_with_logits(v[0], v[1], bo); },
                  {test::transposed_layout(test::randn({3, 2}, DType::f64, 40)).t(), test::uniform({2, 3}, 0, 1, DType::f64, 41)});
  bo.pos_weight = ones({4}, DType::f64);
  CHECK_THROWS_WITH(ops::binary_cross_entropy_with_logits(xb, yb, bo),
                    Contains("binary_cross_entropy_with_logits: pos_weight (f64 [4]) must be floating-point and broadcast"));

  // Probabilities: each log clamped at -100, as torch.
  const Tensor p = tensor({0, 1, 0.3, 0.9}, DType::f64), y = tensor({0, 1, 0.6, 0}, DType::f64);
  CHECK_ALLCLOSE(ops::binary_cross_entropy(p, y, {}, ops::Reduction::none),
                 tensor({0, 0, 0.8650536601710546, 2.302585092994046}, DType::f64), 1e-14, 0);
  CHECK(ops::binary_cross_entropy(tensor({0, 1}, DType::f64), tensor({1, 0}, DType::f64), {}, ops::Reduction::none)
            .to_vector<double>() == std::vector<double>{100, 100});
  Tensor pr = tensor({0.0, 1.0}, DType::f64).requires_grad_();  // torch: -+1e12 (the denominator clamped at 1e-12f)
  ops::binary_cross_entropy(pr, tensor({1, 0}, DType::f64), {}, ops::Reduction::none).backward(ones({2}, DType::f64));
  CHECK(pr.grad().to_vector<double>() == std::vector<double>{-1 / double(1e-12f), 1 / double(1e-12f)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::binary_cross_entropy(v[0], v[1], tensor({0.5, 2.0, 1.0}, DType::f64)); },
                  {test::uniform({4, 3}, 0.05, 0.95, DType::f64, 42), test::transposed_layout(test::uniform({4, 3}, 0, 1, DType::f64, 43))});
  CHECK_THROWS_WITH(ops::binary_cross_entropy(tensor({1.5}), tensor({1})), Contains("every probability must be in [0, 1]"));
  const Tensor pb = test::uniform({100003}, 0, 1, DType::f32, 44), yt = test::uniform({100003}, 0, 1, DType::f32, 45);
  CHECK(test::same_bits_across_threads([&] {
    Tensor pv = pb.detach().requires_grad_(), yv = yt.detach().requires_grad_();
    Tensor l = ops::binary_cross_entropy(pv, yv);
    l.backward();
    return Tensors{l, pv.grad(), yv.grad()};
  }));

  const Tensor a = tensor({0.5, -3, 1.2, 0.1}, DType::f64), b = tensor({0, 0, 0, 0.6}, DType::f64);
  CHECK_ALLCLOSE(ops::smooth_l1_loss(a, b, ops::Reduction::none, 0.8), tensor({0.15625, 2.6, 0.8, 0.15625}, DType::f64), 1e-15, 0);
  CHECK_ALLCLOSE(ops::huber_loss(a, b, ops::Reduction::none, 0.8), tensor({0.125, 2.08, 0.64, 0.125}, DType::f64), 1e-15, 0);
  CHECK_ALLCLOSE(ops::smooth_l1_loss(a, b, ops::Reduction::none, 0.0), ops::abs(a - b));
  CHECK_GRADCHECK([](const Tensors& v) { return ops::smooth_l1_loss(v[0], v[1], ops::Reduction::mean, 0.7) +
                                                ops::huber_loss(v[0], v[1], ops::Reduction::sum, 0.4); },
                  {test::randn({17}, DType::f64, 46), test::strided_layout(test::randn({17}, DType::f64, 47))});
  CHECK_THROWS_WITH(ops::huber_loss(a, b, ops::Reduction::mean, 0.0), Contains("huber_loss: delta must be finite and > 0"));

  const Tensor li = tensor({-1, -2, -0.5, -0.1, -3, -2}, {2, 3}, DType::f64), lt = tensor({0, 0.5, 0.5, 0.7, 0.2, 0.1}, {2, 3}, DType::f64);
  CHECK(ops::kl_div(li, lt, ops::KLReduction::batchmean).item() == Approx(0.31251713344835863).epsilon(1e-14));
  CHECK_ALLCLOSE(ops::kl_div(li, lt, ops::KLReduction::none),
                 tensor({0, 0.6534264097200273, -0.09657359027997264, -0.17967246075711268, 0.27811241751318,
                         -0.030258509299404546}, {2, 3}, DType::f64), 1e-14, 1e-16);
  CHECK(ops::kl_div(li, ops::log(lt + 0.1), ops::KLReduction::sum, true).item() == Approx(1.275156477345438).epsilon(1e-14));
  CHECK(std::isnan(ops::kl_div(tensor({-1}), tensor({-0.5})).item()));  // a negative probability
  // A zero target contributes 0 with zero gradient, even at input -inf (a zero q where p is zero).
  {
    Tensor in = tensor({-INFINITY, -1.0, -INFINITY}, DType::f64).requires_grad_();
    const Tensor kl = ops::kl_div(in, tensor({0, 0.5, 0}, DType::f64), ops::KLReduction::none);
    CHECK(kl.to_vector<double>() == std::vector<double>{0, 0.5 * (std::log(0.5) + 1), 0});
    ops::sum(kl).backward();
    CHECK(in.grad().to_vector<double>() == std::vector<double>{0, -0.5, 0});
    Tensor lin = tensor({-INFINITY, -1.0}, DType::f64).requires_grad_();
    const Tensor kll = ops::kl_div(lin, tensor({-INFINITY, -INFINITY}, DType::f64), ops::KLReduction::sum, true);
    CHECK(kll.item() == 0);
    kll.backward();
    CHECK(lin.grad().to_vector<double>() == std::vector<double>{0, 0});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::kl_div(v[0], v[1], ops::KLReduction::batchmean) +
                                                ops::kl_div(v[0], v[1], ops::KLReduction::mean, true); },
                  {test::randn({3, 4}, DType::f64, 48), test::uniform({3, 4}, 0.1, 1, DType::f64, 49)});
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
