// Views share storage; each view op has a backward (gradchecked here, in f64, with
// non-contiguous and odd-size inputs).
#include <catch2/catch.hpp>

#include "core/autograd.hpp"
#include "core/tensor.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

TEST_CASE("views share storage and compute shapes/strides", "[core][views]") {
  Tensor a = arange(0.0, 24.0, 1.0, DType::f32).reshape({2, 3, 4});
  CHECK(a.strides() == Shape{12, 4, 1});
  const Tensor p = a.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(p.at<float>({3, 1, 2}) == a.at<float>({1, 2, 3}));
  CHECK(a.transpose(0, 2).shape() == Shape{4, 3, 2});
  CHECK(a.reshape({6, -1}).shape() == Shape{6, 4});
  CHECK(a.flatten().shape() == Shape{24});
  CHECK(a.flatten(1).shape() == Shape{2, 12});
  CHECK(a.unsqueeze(0).shape() == Shape{1, 2, 3, 4});
  CHECK(a.unsqueeze(-1).shape() == Shape{2, 3, 4, 1});
  CHECK(a.unsqueeze(1).squeeze(1).shape() == Shape{2, 3, 4});
  CHECK(zeros({1, 3, 1}).squeeze().shape() == Shape{3});
  CHECK(a.select(1, 2).shape() == Shape{2, 4});
  CHECK(a.select(1, -1).at<float>({1, 3}) == 23.0f);
  const Tensor s = a.slice(2, 1, 4, 2);
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.to_vector<float>()[0] == 1.0f);
  CHECK(s.to_vector<float>()[1] == 3.0f);
  CHECK(a.slice(0, -1, 100).shape() == Shape{1, 3, 4});  // Python-style clamping
  CHECK(a.slice(2, 3, 1).shape() == Shape{2, 3, 0});
  CHECK(a.narrow(2, 1, 2).shape() == Shape{2, 3, 2});
  const Tensor f = a.flip({2});
  CHECK(f.at<float>({0, 0, 0}) == 3.0f);
  CHECK(f.strides()[2] == -1);
  CHECK(eye(3).diagonal().to_vector<float>() == std::vector<float>{1, 1, 1});
  const Tensor e = tensor({1, 2, 3}).expand({2, 3});
  CHECK(e.strides() == Shape{0, 1});
  CHECK(tensor({1, 2}).reshape({2, 1}).expand({2, -1, 3}).shape() == Shape{2, 2, 3});
}

TEST_CASE("writes through a view reach the base tensor", "[core][views]") {
  Tensor a = zeros({3, 4});
  a.slice(1, 1, 3).select(0, 2).fill_(5);
  CHECK(a.at<float>({2, 1}) == 5.0f);
  CHECK(a.at<float>({2, 2}) == 5.0f);
  CHECK(a.at<float>({2, 3}) == 0.0f);
  a.t().select(0, 0).fill_(-1);  // column 0
  CHECK(a.at<float>({1, 0}) == -1.0f);
}

TEST_CASE("reshape of a non-viewable tensor copies, view refuses", "[core][views][errors]") {
  const Tensor a = arange(0.0, 6.0, 1.0, DType::f32).reshape({2, 3});
  const Tensor t = a.t();
  const Tensor r = t.reshape({6});
  CHECK(r.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  CHECK_THROWS_WITH(t.view({6}), Contains("cannot be viewed as [6] without a copy; use reshape()"));
  CHECK(t.view({3, 1, 2}).shape() == Shape{3, 1, 2});  // splitting dims of a transposed tensor works
  CHECK_THROWS_WITH(a.reshape({4, -1}), Contains("cannot reshape a tensor of shape [2, 3] (6 elements) into [4, -1]"));
  CHECK_THROWS_WITH(a.reshape({-1, -1}), Contains("only one dimension can be -1"));
  CHECK_THROWS_WITH(a.permute({0, 0}), Contains("permute: axis 0 appears twice"));
  CHECK_THROWS_WITH(a.permute({0}), Contains("permute: got 1 axes [0] for a 2-d tensor"));
  CHECK_THROWS_WITH(a.expand({3, 3}), Contains("expand: cannot expand shape [2, 3] to [3, 3]"));
  CHECK_THROWS_WITH(a.narrow(1, 2, 2), Contains("narrow: range [2, 4) is out of bounds for dim 1 of size 3"));
  CHECK_THROWS_WITH(a.select(0, 2), Contains("select: index 2 is out of range for dim 0 of size 2"));
  CHECK_THROWS_WITH(a.slice(1, 0, 3, 0), Contains("step must be positive"));
  CHECK_THROWS_WITH(a.transpose(0, 2), Contains("transpose: axis 2 is out of range for a 2-d tensor"));
  CHECK_THROWS_WITH(zeros({2, 2, 2}).t(), Contains("t: expected a tensor with at most 2 dims"));
  CHECK_THROWS_WITH(a.flip({1, -1}), Contains("flip: axis 1 appears twice"));
}

TEST_CASE("view ops: gradcheck", "[core][views][grad][view][permute][expand][slice][select][flip][diagonal][clone][to]") {
  using test::gradcheck;
  const Tensor x = test::randn({3, 4, 5}, DType::f64, 1);
  const Tensor xt = test::transposed_layout(test::randn({3, 5, 4}, DType::f64, 2));  // non-contiguous
  const Tensor xs = test::strided_layout(test::randn({7, 17}, DType::f64, 3));      // stepped, odd sizes

  auto check = [](auto f, const Tensor& in) { CHECK_GRADCHECK([&](const Tensors& v) { return f(v[0]); }, {in}); };
  check([](const Tensor& v) { return v.reshape({4, 15}); }, x);
  check([](const Tensor& v) { return v.reshape({-1}); }, xt);  // copies, then views
  check([](const Tensor& v) { return v.view({3, 2, 10}); }, x);
  check([](const Tensor& v) { return v.permute({2, 0, 1}); }, xt);
  check([](const Tensor& v) { return v.transpose(0, 1); }, xs);
  check([](const Tensor& v) { return v.unsqueeze(1).expand({7, 3, 17}); }, xs);
  check([](const Tensor& v) { return v.reshape({3, 1, 20}).expand({2, 3, 4, 20}); }, x);
  check([](const Tensor& v) { return v.slice(1, 1, 17, 3); }, xs);
  check([](const Tensor& v) { return v.narrow(0, 1, 2); }, xt);
  check([](const Tensor& v) { return v.select(2, -1); }, x);
  check([](const Tensor& v) { return v.flip({0, 2}); }, xt);
  check([](const Tensor& v) { return v.select(0, 0).diagonal(); }, x);
  check([](const Tensor& v) { return v.squeeze().unsqueeze(0); }, test::randn({1, 7, 1}, DType::f64, 4));
  check([](const Tensor& v) { return v.clone(); }, xs);
  {  // f64 -> f32 is not smooth at the finite-difference scale: check its gradient directly
    Tensor v = xs.detach().requires_grad_();
    v.to(DType::f32).backward(ones({7, 17}));
    CHECK(v.grad().dtype() == DType::f64);
    CHECK(test::same_bits(v.grad(), ones({7, 17}, DType::f64)));
  }
  check([](const Tensor& v) { return v.contiguous(); }, xt);
  check([](const Tensor& v) { return v.flatten(1); }, xt);
  // A view used twice accumulates both gradients.
  CHECK_GRADCHECK([](const Tensors& v) {
    return Tensors{v[0].slice(0, 0, 2), v[0].slice(0, 1, 3), v[0].t()};
  }, {test::randn({3, 3}, DType::f64, 5)});
  // Odd sizes: 1 and 1003 elements.
  check([](const Tensor& v) { return v.flip({0}).slice(0, 0, 1003, 2); }, test::randn({1003}, DType::f64, 6));
  check([](const Tensor& v) { return v.expand({7, 1}); }, test::randn({1}, DType::f64, 7));
}

TEST_CASE("views: results identical for 1 and N threads", "[core][views][threads]") {
  const Tensor big = test::randn({300, 257}, DType::f32, 8);
  CHECK(test::same_bits_across_threads([&] {
    return Tensors{big.t().contiguous(), big.flip({1}).contiguous(), big.slice(1, 1, 257, 3).clone(),
                   big.to(DType::f64), big.unsqueeze(0).expand({3, 300, 257}).contiguous()};
  }));
  // The expand adjoint (sum_to) is a reduction: it must be deterministic too.
  CHECK(test::same_bits_across_threads([&] {
    Tensor x = test::randn({257}, DType::f32, 9).requires_grad_();
    Tensor y = x.unsqueeze(0).expand({3000, 257});
    y.backward(test::randn({3000, 257}, DType::f32, 10));
    return Tensors{x.grad()};
  }));
}
