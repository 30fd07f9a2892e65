// Rotary embeddings (both pair layouts, shared and per-sequence tables) and dropout (seeded
// counter-based masks, thread-count independence, mask statistics, gradients).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/dropout.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/rotary.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

// Explicit rotation in f64. cos/sin broadcast to x.shape()[:-1] + [d/2] (NumPy rules).
Tensor ref_rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved) {
  const std::int64_t d = x.shape().back(), h = d / 2, rows = x.numel() / d;
  Shape table = x.shape();
  table[table.size() - 1] = h;
  const auto xv = x.to_vector<double>(), cv = cos.to_vector<double>(), sv = sin.to_vector<double>();
  std::vector<double> y(xv.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < h; ++i) {
      const auto idx = test::ref::unravel(r * h + i, table);
      const double c = cv[test::ref::ravel_broadcast(idx, cos.shape())];
      const double s = sv[test::ref::ravel_broadcast(idx, sin.shape())];
      const std::int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + h;
      y[r * d + a] = xv[r * d + a] * c - xv[r * d + b] * s;
      y[r * d + b] = xv[r * d + a] * s + xv[r * d + b] * c;
    }
  return from_vector(y, x.shape());
}

// cos/sin of angles pos * 10000^(-2i/d), computed in f64.
std::pair<Tensor, Tensor> tables(const Shape& shape, std::int64_t d, double offset = 0) {
  const std::int64_t h = shape.back(), T = shape[shape.size() - 2];
  std::vector<double> c(static_cast<std::size_t>(shape.numel())), s(c.size());
  for (std::size_t k = 0; k < c.size(); ++k) {
    const std::int64_t i = static_cast<std::int64_t>(k) % h, t = static_cast<std::int64_t>(k) / h % T;
    const std::int64_t seq = static_cast<std::int64_t>(k) / (h * T);
    const double angle = (static_cast<double>(t) + offset * static_cast<double>(seq)) * std::pow(10000.0, -2.0 * i / d);
    c[k] = std::cos(angle);
    s[k] = std::sin(angle);
  }
  return {from_vector(c, shape), from_vector(s, shape)};
}

}  // namespace

TEST_CASE("apply_rotary: both layouts match the explicit rotation", "[ops][rotary]") {
  struct Case {
    Shape x;
    Shape table;
  };
  const Case cases[] = {{{2, 3, 7, 8}, {7, 4}},       {{1, 2}, {1, 1}},           {{5, 2}, {5, 1}},
                        {{2, 3, 17, 64}, {2, 1, 17, 32}}, {{2, 3, 9, 6}, {2, 3, 9, 3}}, {{4, 129, 130}, {129, 65}},
                        {{3, 1, 10}, {1, 1, 5}}};
  for (const Case& c : cases) {
    const std::int64_t d = c.x.back();
    const auto [cs, sn] = tables(c.table, d, 3.0);
    const Tensor x = test::randn(c.x, DType::f64, 1);
    for (auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split}) {
      const bool il = layout == ops::RotaryLayout::interleaved;
      INFO("x " << fmt::format("{}", c.x) << " table " << fmt::format("{}", c.table) << " interleaved " << il);
      const Tensor want = ref_rotary(x, cs, sn, il);
      CHECK_ALLCLOSE(ops::apply_rotary(x, cs, sn, layout), want, 1e-14, 1e-14);
      CHECK_ALLCLOSE(ops::apply_rotary(test::transposed_layout(x), cs, sn, layout), want, 1e-14, 1e-14);
      CHECK_ALLCLOSE(ops::apply_rotary(x.to(DType::f32), cs, sn, layout), want, 1e-5, 1e-5);
      CHECK_ALLCLOSE(ops::apply_rotary(x.to(DType::f32), cs.to(DType::f32), sn.to(DType::f32), layout), want, 1e-5, 1e-5);
    }
  }
  // A permuted [B, T, H, d] -> [B, H, T, d] view; norms are preserved by a rotation.
  const Tensor xb = test::randn({2, 11, 3, 16}, DType::f64, 2).permute({0, 2, 1, 3});
  const auto [cs, sn] = tables({11, 8}, 16);
  const Tensor y = ops::apply_rotary(xb, cs, sn, ops::RotaryLayout::half_split);
  CHECK_ALLCLOSE(y, ref_rotary(xb, cs, sn, false), 1e-14, 1e-14);
  CHECK_ALLCLOSE(ops::sum(ops::square(y), {-1}), ops::sum(ops::square(xb), {-1}), 1e-12, 1e-12);
  // Relative-position property: <R_m q, R_n k> depends on n - m only.
  const Tensor q = test::randn({1, 8}, DType::f64, 3), k = test::randn({1, 8}, DType::f64, 4);
  auto at = [&](const Tensor& v, double pos) {
    std::vector<double> cv(4), sv(4);
    for (int i = 0; i < 4; ++i) {
      cv[i] = std::cos(pos * std::pow(10000.0, -2.0 * i / 8));
      sv[i] = std::sin(pos * std::pow(10000.0, -2.0 * i / 8));
    }
    return ops::apply_rotary(v, from_vector(cv, {1, 4}), from_vector(sv, {1, 4}), ops::RotaryLayout::interleaved);
  };
  const double d1 = ops::sum(at(q, 3) * at(k, 10)).item(), d2 = ops::sum(at(q, 13) * at(k, 20)).item();
  CHECK(d1 == Approx(d2).epsilon(1e-12));
}

TEST_CASE("apply_rotary: gradcheck (the backward rotates by the negative angle)", "[ops][rotary][grad][apply_rotary]") {
  for (auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split}) {
    const auto [cs, sn] = tables({7, 3}, 6);
    CHECK_GRADCHECK([&](const Tensors& t) { return ops::apply_rotary(t[0], cs, sn, layout); },
                    {test::transposed_layout(test::randn({2, 7, 6}, DType::f64, 5))});
    const auto [cb, sb] = tables({2, 1, 5, 2}, 4, 1.0);
    CHECK_GRADCHECK([&](const Tensors& t) { return ops::apply_rotary(t[0], cb, sb, layout); },
                    {test::strided_layout(test::randn({2, 3, 5, 4}, DType::f64, 6))});
  }
  // Tables that require grad are refused (they would silently get no gradient).
  auto [cs, sn] = tables({3, 2}, 4);
  cs.requires_grad_();
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({3, 4}, DType::f64), cs, sn, ops::RotaryLayout::interleaved),
                    Contains("apply_rotary: cos/sin are non-differentiable inputs"));
  {
    NoGradGuard no_grad;  // fine without grad mode
    CHECK(ops::apply_rotary(zeros({3, 4}, DType::f64), cs, sn, ops::RotaryLayout::interleaved).shape() == Shape{3, 4});
  }
  CHECK(test::same_bits_across_threads([] {
    const auto [c, s] = tables({300, 64}, 128);
    Tensor x = test::randn({4, 4, 300, 128}, DType::f32, 7).requires_grad_();
    Tensor y = ops::apply_rotary(x, c.to(DType::f32), s.to(DType::f32), ops::RotaryLayout::interleaved);
    y.backward(y * 2.0);
    return Tensors{y, x.grad()};
  }));
}

TEST_CASE("apply_rotary: errors", "[ops][rotary][errors]") {
  const auto [cs, sn] = tables({5, 4}, 8);
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({5, 7}), cs, sn, ops::RotaryLayout::half_split),
                    Contains("apply_rotary: the feature size d (dim -1 of x, shape [5, 7]) must be even to form pairs, got d = 7"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({5, 10}), cs, sn, ops::RotaryLayout::half_split),
                    Contains("apply_rotary: cos/sin shape [5, 4] does not match x shape [5, 10]: dim -1 has 4 but x needs 5 (d/2 frequencies)"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({2, 6, 8}), cs, sn, ops::RotaryLayout::half_split),
                    Contains("dim -2 has 5 but x needs 6 (T positions)"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({2, 5, 8}), cs.reshape({1, 5, 4}), sn, ops::RotaryLayout::half_split),
                    Contains("apply_rotary: cos shape [1, 5, 4] and sin shape [5, 4] differ"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({2, 5, 8}), zeros({3, 5, 4}), zeros({3, 5, 4}), ops::RotaryLayout::half_split),
                    Contains("dim -3 has 3 but x needs 2 (a leading dim of x)"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({8}), cs, sn, ops::RotaryLayout::half_split), Contains("x must have shape [..., T, d]"));
  CHECK_THROWS_WITH(ops::apply_rotary(zeros({5, 8}), zeros({4}), zeros({4}), ops::RotaryLayout::half_split),
                    Contains("must be [T, d/2] = [5, 4]"));
}

TEST_CASE("apply_rotary: tables written into after the forward are an error in the backward", "[ops][rotary][errors]") {
  // f32 contiguous tables of the right shape are used as they are (no copy), so the backward
  // would read the new values: it must refuse instead of returning a wrong gradient.
  auto [cs, sn] = tables({5, 4}, 8);
  cs = cs.to(DType::f32);
  sn = sn.to(DType::f32);
  const Tensor x = randn({5, 8}, DType::f32).requires_grad_();
  const Tensor y = ops::sum(ops::apply_rotary(x, cs, sn, ops::RotaryLayout::interleaved));
  cs.fill_(1);
  CHECK_THROWS_WITH(y.backward(), Contains("was modified in place after it was saved") && Contains("apply_rotary"));
}

TEST_CASE("dropout: seeded mask, statistics, gradient", "[ops][dropout][grad]") {
  const double p = 0.3;
  // The mask is the uniform stream of the generator compared with p (here in f64: exact uniforms).
  Generator g1(42), g2(42);
  const Tensor x = ones({1000, 1000}, DType::f64);
  const Tensor y = ops::dropout(x, p, true, g1);
  const Tensor u = rand({1000, 1000}, DType::f64, g2);
  const auto yv = y.to_vector<double>(), uv = u.to_vector<double>();
  std::int64_t kept = 0, mismatches = 0;
  for (std::size_t i = 0; i < yv.size(); ++i) {
    const bool keep = uv[i] >= p;
    kept += keep;
    mismatches += keep != (yv[i] != 0);
    if (keep && std::fabs(yv[i] - 1 / (1 - p)) > 1e-15) ++mismatches;
  }
  CHECK(mismatches == 0);
  CHECK(g1.state().offset == 1000000);
  CHECK(std::fabs(static_cast<double>(kept) / 1e6 - (1 - p)) < 3e-3);  // ~6 sigma
  CHECK(std::fabs(ops::mean(y).item() - 1.0) < 5e-3);                  // inverted dropout keeps the mean
  // Counters that cross a 2^32 boundary (the vectorised Philox carries into the high word).
  Generator h1(9), h2(9);
  h1.set_state({9, (std::uint64_t{1} << 32) - 5});
  h2.set_state({9, (std::uint64_t{1} << 32) - 5});
  const auto yb = ops::dropout(ones({37}, DType::f64), 0.5, true, h1).to_vector<double>();
  const auto ub = rand({37}, DType::f64, h2).to_vector<double>();
  for (std::size_t i = 0; i < yb.size(); ++i) CHECK((yb[i] != 0) == (ub[i] >= 0.5));
  // The gradient uses the same mask and scale; non-contiguous input, row-major element order.
  Generator g3(7), g4(7);
  Tensor xr = test::transposed_layout(test::randn({33, 17}, DType::f64, 1)).requires_grad_();
  const Tensor yr = ops::dropout(xr, 0.5, true, g3);
  const Tensor gy = test::randn({33, 17}, DType::f64, 2);
  yr.backward(gy);
  const Tensor m = ops::ge(rand({33, 17}, DType::f64, g4), 0.5).to(DType::f64) * 2.0;
  CHECK_ALLCLOSE(yr, xr * m, 0, 0);
  CHECK_ALLCLOSE(xr.grad(), gy * m, 0, 0);
  CHECK_GRADCHECK([](const Tensors& t) {
    Generator gen(3);
    return ops::dropout(t[0], 0.4, true, gen);
  }, {test::randn({7, 5}, DType::f64, 3)});
  // Eval mode and p = 0 return x itself and leave the generator alone.
  Generator g5(1);
  CHECK(ops::dropout(x, 0.5, false, g5).is_same(x));
  CHECK(ops::dropout(x, 0.0, true, g5).is_same(x));
  CHECK(g5.state().offset == 0);
  // f32, several chunks: the same mask with 1 and N threads.
  CHECK(test::same_bits_across_threads([] {
    Generator gen(11);
    Tensor xx = test::randn({513, 1001}, DType::f32, 4).requires_grad_();
    Tensor yy = ops::dropout(xx, 0.25, true, gen);
    yy.backward(yy);
    return Tensors{yy, xx.grad()};
  }));
  CHECK_THROWS_WITH(ops::dropout(x, 1.0, true, g5), Contains("dropout: p must be in [0, 1), got 1"));
  CHECK_THROWS_WITH(ops::dropout(x, -0.1, true, g5), Contains("dropout: p must be in [0, 1), got -0.1"));
  CHECK_THROWS_WITH(ops::dropout(arange(4), 0.5, true, g5), Contains("dropout: expected a floating-point tensor"));
}
