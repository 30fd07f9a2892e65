// Normalisation layers: naive f64 references (explicit mean/variance loops) over tables of shapes
// and layouts, gradchecks for x, weight and bias, thread-count determinism, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/kernels/norm.hpp"
#include "ops/kernels/simd_partial.hpp"
#include "ops/norm.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

// Normalises consecutive rows of n values (row-major view of x) in f64; w, b of n values or empty.
Tensor ref_row_norm(const Tensor& x, std::int64_t n, const Tensor& w, const Tensor& b, double eps, bool center) {
  const auto v = x.to_vector<double>();
  const auto wv = w.defined() ? w.to_vector<double>() : std::vector<double>(n, 1.0);
  const auto bv = b.defined() ? b.to_vector<double>() : std::vector<double>(n, 0.0);
  std::vector<double> out(v.size());
  for (std::size_t r = 0; r * n < v.size(); ++r) {
    const double* row = v.data() + r * n;
    double mean = 0, var = 0;
    if (center) {
      for (std::int64_t j = 0; j < n; ++j) mean += row[j];
      mean /= static_cast<double>(n);
    }
    for (std::int64_t j = 0; j < n; ++j) var += (row[j] - mean) * (row[j] - mean);
    var /= static_cast<double>(n);
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (std::int64_t j = 0; j < n; ++j) out[r * n + j] = (row[j] - mean) * rstd * wv[j] + bv[j];
  }
  return from_vector(out, x.shape());
}

// Group norm of x [N, C, *] in f64.
Tensor ref_group_norm(const Tensor& x, std::int64_t G, const Tensor& w, const Tensor& b, double eps) {
  const auto v = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / std::max<std::int64_t>(1, N * C);
  const std::int64_t Cg = C / G, M = Cg * S;
  const auto wv = w.defined() ? w.to_vector<double>() : std::vector<double>(C, 1.0);
  const auto bv = b.defined() ? b.to_vector<double>() : std::vector<double>(C, 0.0);
  std::vector<double> out(v.size());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < G; ++g) {
      const std::int64_t base = (n * C + g * Cg) * S;
      double mean = 0, var = 0;
      for (std::int64_t i = 0; i < M; ++i) mean += v[base + i];
      mean /= static_cast<double>(M);
      for (std::int64_t i = 0; i < M; ++i) var += (v[base + i] - mean) * (v[base + i] - mean);
      var /= static_cast<double>(M);
      const double rstd = 1.0 / std::sqrt(var + eps);
      for (std::int64_t i = 0; i < M; ++i) {
        const std::int64_t c = g * Cg + i / S;
        out[base + i] = (v[base + i] - mean) * rstd * wv[c] + bv[c];
      }
    }
  return from_vector(out, x.shape());
}

// Batch norm of x [N, C, *] in f64 with the given per-channel statistics (training: the batch's).
struct BatchStats {
  std::vector<double> mean, var;  // biased variance
};
BatchStats ref_batch_stats(const Tensor& x) {
  const auto v = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  BatchStats st{std::vector<double>(C, 0.0), std::vector<double>(C, 0.0)};
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) st.mean[c] += v[(n * C + c) * S + i];
    st.mean[c] /= static_cast<double>(N * S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) st.var[c] += std::pow(v[(n * C + c) * S + i] - st.mean[c], 2);
    st.var[c] /= static_cast<double>(N * S);
  }
  return st;
}
Tensor ref_batch_norm(const Tensor& x, const BatchStats& st, const Tensor& w, const Tensor& b, double eps) {
  const auto v = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  const auto wv = w.defined() ? w.to_vector<double>() : std::vector<double>(C, 1.0);
  const auto bv = b.defined() ? b.to_vector<double>() : std::vector<double>(C, 0.0);
  std::vector<double> out(v.size());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < S; ++i) {
        const std::int64_t at = (n * C + c) * S + i;
        out[at] = (v[at] - st.mean[c]) / std::sqrt(st.var[c] + eps) * wv[c] + bv[c];
      }
  return from_vector(out, x.shape());
}

Tensor layouts(const Tensor& t, int which) {
  switch (which) {
    case 1: return test::transposed_layout(t);
    case 2: return test::strided_layout(t);
    default: return t;
  }
}

}  // namespace

TEST_CASE("layer_norm and rms_norm: forward matches the naive loops", "[ops][norm]") {
  struct Case {
    Shape shape;
    Shape normalized;
  };
  const Case cases[] = {{{5, 1}, {1}},     {{4, 7}, {7}},       {{3, 1003}, {1003}}, {{2, 3, 17}, {17}},
                        {{2, 3, 5}, {3, 5}}, {{1, 64}, {64}},   {{33, 16}, {16}},    {{7}, {7}}};
  for (const Case& c : cases) {
    for (int layout = 0; layout < 3; ++layout) {
      for (DType dt : {DType::f64, DType::f32}) {
        const Tensor x0 = test::randn(c.shape, DType::f64, 1) * 3.0 + 2.0;
        const Tensor w0 = test::randn(c.normalized, DType::f64, 2), b0 = test::randn(c.normalized, DType::f64, 3);
        const Tensor x = layouts(x0.to(dt), layout), w = w0.to(dt), b = b0.to(dt);
        const std::int64_t n = c.normalized.numel();
        const double rtol = dt == DType::f64 ? 1e-12 : 2e-5, atol = dt == DType::f64 ? 1e-12 : 2e-5;
        INFO("shape " << fmt::format("{}", c.shape) << " layout " << layout << " dtype " << dtype_name(dt));
        CHECK_ALLCLOSE(ops::layer_norm(x, c.normalized, w, b), ref_row_norm(x, n, w, b, 1e-5, true), rtol, atol);
        CHECK_ALLCLOSE(ops::layer_norm(x, c.normalized), ref_row_norm(x, n, {}, {}, 1e-5, true), rtol, atol);
        CHECK_ALLCLOSE(ops::layer_norm(x, c.normalized, w, {}, 0.1), ref_row_norm(x, n, w, {}, 0.1, true), rtol, atol);
        CHECK_ALLCLOSE(ops::layer_norm(x, c.normalized, {}, b), ref_row_norm(x, n, {}, b, 1e-5, true), rtol, atol);
        CHECK_ALLCLOSE(ops::rms_norm(x, c.normalized, w), ref_row_norm(x, n, w, {}, 1e-6, false), rtol, atol);
        CHECK_ALLCLOSE(ops::rms_norm(x, c.normalized), ref_row_norm(x, n, {}, {}, 1e-6, false), rtol, atol);
      }
    }
  }
  // A permuted view ([B, T, H, d] -> [B, H, T, d]) normalised over d.
  const Tensor p = test::randn({2, 5, 3, 8}, DType::f64, 4).permute({0, 2, 1, 3});
  CHECK_ALLCLOSE(ops::layer_norm(p, {8}), ref_row_norm(p, 8, {}, {}, 1e-5, true), 1e-12, 1e-12);
  // f32 statistics are accumulated in f64: a large common offset does not cancel.
  const Tensor off = (test::randn({4, 1003}, DType::f64, 5) + 1e4).to(DType::f32);
  CHECK_ALLCLOSE(ops::layer_norm(off, {1003}), ref_row_norm(off, 1003, {}, {}, 1e-5, true), 1e-3, 2e-3);
  // f32 statistics come from one pass shifted by the row's first element: a first element far
  // from the rest (the shift's worst case) costs nothing visible either.
  Tensor outlier = test::randn({4, 1003}, DType::f64, 6) * 0.01 + 5.0;
  outlier.narrow(1, 0, 1).fill_(300.0);
  const Tensor outlier32 = outlier.to(DType::f32);
  CHECK_ALLCLOSE(ops::layer_norm(outlier32, {1003}), ref_row_norm(outlier32, 1003, {}, {}, 1e-5, true), 2e-5, 2e-5);
  // Constant rows normalise to the bias.
  const Tensor cst = full({3, 7}, 2.5, DType::f64);
  CHECK(ops::layer_norm(cst, {7}, {}, full({7}, 0.5, DType::f64)).to_vector<double>() == std::vector<double>(21, 0.5));
  // Empty inputs.
  CHECK(ops::layer_norm(zeros({0, 4}), {4}).shape() == Shape{0, 4});
  CHECK(ops::rms_norm(zeros({3, 0}), {0}).shape() == Shape{3, 0});
}

TEST_CASE("layer_norm: gradcheck for x, weight and bias", "[ops][norm][grad][layer_norm]") {
  for (const auto& [shape, normalized] : std::vector<std::pair<Shape, Shape>>{
           {{3, 7}, {7}}, {{2, 1}, {1}}, {{2, 3, 5}, {3, 5}}, {{4, 17}, {17}}}) {
    const Tensor x = test::transposed_layout(test::randn(shape, DType::f64, 10) * 2.0);
    const Tensor w = test::randn(normalized, DType::f64, 11), b = test::randn(normalized, DType::f64, 12);
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::layer_norm(v[0], normalized, v[1], v[2]); }, {x, w, b});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::layer_norm(v[0], normalized); }, {test::strided_layout(x)});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::layer_norm(v[0], normalized, v[1], {}, 0.3); }, {x, w});
    // A bias alone; a weight that is a constant (its gradient not wanted).
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::layer_norm(v[0], normalized, {}, v[1]); }, {x, b});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::layer_norm(v[0], normalized, w, v[1]); }, {x, b});
  }
  // Only the weight (autograd::grad skips the others).
  Tensor x = test::randn({3, 5}, DType::f64, 13), w = test::randn({5}, DType::f64, 14).requires_grad_();
  const Tensor g = autograd::grad({ops::sum(ops::layer_norm(x, {5}, w))}, {w})[0];
  CHECK(g.shape() == Shape{5});
  // Broadcasting from a 0-d upstream gradient (non-contiguous gy).
  Tensor xr = test::randn({4, 6}, DType::f64, 15).requires_grad_();
  ops::sum(ops::layer_norm(xr, {6})).backward();
  CHECK(test::max_abs_diff(xr.grad(), zeros({4, 6}, DType::f64)) < 1e-12);  // sum of a normalised row is constant
}

TEST_CASE("layer_norm and rms_norm: the f32 backward matches the f64 one", "[ops][norm][grad]") {
  // The f64 backward is tied to finite differences above; the f32 one sums products in short
  // blocks in f32 before its f64 accumulators, and must stay as accurate as its inputs allow.
  for (std::int64_t n : {7, 64, 1003}) {
    INFO("n " << n);
    const Tensor x = test::randn({6, n}, DType::f64, 30) * 2.0 + 1.0;
    const Tensor w = test::randn({n}, DType::f64, 31), b = test::randn({n}, DType::f64, 32);
    const Tensor gy = test::randn({6, n}, DType::f64, 33);
    for (bool rms : {false, true}) {
      INFO((rms ? "rms_norm" : "layer_norm"));
      auto grads = [&](DType dt) {
        Tensor xr = x.to(dt).detach().requires_grad_(), wr = w.to(dt).detach().requires_grad_();
        Tensor br = b.to(dt).detach().requires_grad_();
        const Tensor y = rms ? ops::rms_norm(xr, {n}, wr) : ops::layer_norm(xr, {n}, wr, br);
        const Tensors g = autograd::grad({y}, rms ? Tensors{xr, wr} : Tensors{xr, wr, br}, {gy.to(dt)});
        Tensors out;
        for (const Tensor& t : g) out.push_back(t.to(DType::f64));
        return out;
      };
      const Tensors g32 = grads(DType::f32), g64 = grads(DType::f64);
      for (std::size_t i = 0; i < g64.size(); ++i) CHECK_ALLCLOSE(g32[i], g64[i], 2e-5, 2e-6);
    }
  }
}

TEST_CASE("rms_norm: gradcheck for x and weight", "[ops][norm][grad][rms_norm]") {
  for (const auto& [shape, normalized] : std::vector<std::pair<Shape, Shape>>{
           {{3, 7}, {7}}, {{2, 1}, {1}}, {{2, 3, 5}, {3, 5}}, {{4, 17}, {17}}}) {
    const Tensor x = test::transposed_layout(test::randn(shape, DType::f64, 20));
    const Tensor w = test::randn(normalized, DType::f64, 21);
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::rms_norm(v[0], normalized, v[1]); }, {x, w});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::rms_norm(v[0], normalized, {}, 0.1); }, {test::strided_layout(x)});
  }
}

TEST_CASE("group_norm: forward and gradcheck", "[ops][norm][grad][group_norm]") {
  struct Case {
    Shape shape;
    std::int64_t groups;
  };
  const Case cases[] = {{{2, 6, 5}, 3}, {{3, 4}, 2}, {{2, 4, 3, 2}, 1}, {{2, 4, 3, 2}, 4}, {{1, 3, 17}, 3}, {{2, 8, 7, 9}, 2}};
  for (const Case& c : cases) {
    const std::int64_t C = c.shape[1];
    const Tensor x = test::randn(c.shape, DType::f64, 30) * 2.0 - 1.0;
    const Tensor w = test::randn({C}, DType::f64, 31), b = test::randn({C}, DType::f64, 32);
    INFO("shape " << fmt::format("{}", c.shape) << " groups " << c.groups);
    CHECK_ALLCLOSE(ops::group_norm(x, c.groups, w, b), ref_group_norm(x, c.groups, w, b, 1e-5), 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::group_norm(test::transposed_layout(x), c.groups), ref_group_norm(x, c.groups, {}, {}, 1e-5), 1e-12, 1e-12);
    const Tensor x32 = x.to(DType::f32);
    CHECK_ALLCLOSE(ops::group_norm(x32, c.groups, w.to(DType::f32), b.to(DType::f32)),
                   ref_group_norm(x32, c.groups, w, b, 1e-5), 2e-5, 2e-5);
    if (c.shape.numel() <= 200) {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::group_norm(v[0], c.groups, v[1], v[2]); },
                      {test::transposed_layout(x), w, b});
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::group_norm(v[0], c.groups, {}, {}, 0.2); }, {x});
    }
  }
}

TEST_CASE("group_norm_silu: reference, gradcheck, and bit-identical to silu(group_norm(x))",
          "[ops][norm][grad][group_norm_silu]") {
  struct Case {
    Shape shape;
    std::int64_t groups;
  };
  const Case cases[] = {{{2, 6, 5}, 3}, {{3, 4}, 2}, {{1, 3, 17}, 3}, {{2, 8, 7, 9}, 2}, {{3, 4, 33}, 4}};
  for (const Case& c : cases) {
    const std::int64_t C = c.shape[1];
    const Tensor x = test::randn(c.shape, DType::f64, 50) * 2.0 - 1.0;
    const Tensor w = test::randn({C}, DType::f64, 51), b = test::randn({C}, DType::f64, 52);
    INFO("shape " << fmt::format("{}", c.shape) << " groups " << c.groups);
    const Tensor z = ref_group_norm(x, c.groups, w, b, 1e-5);
    CHECK_ALLCLOSE(ops::group_norm_silu(x, c.groups, w, b), z / (ops::exp(-z) + 1.0), 1e-12, 1e-12);
    // The fused op and the pair of ops agree bit for bit, forward and backward, f32 and f64, with
    // and without the input gradient (the backward then keeps dz in task scratch).
    for (DType dt : {DType::f32, DType::f64}) {
      for (bool want_x : {true, false}) {
        const Tensor gy = test::randn(c.shape, dt, 53);
        auto run = [&](bool fused) {
          Tensor xv = test::transposed_layout(x.to(dt)).detach().requires_grad_(want_x);
          Tensor wv = w.to(dt).detach().requires_grad_(), bv = b.to(dt).detach().requires_grad_();
          Tensor y = fused ? ops::group_norm_silu(xv, c.groups, wv, bv) : ops::silu(ops::group_norm(xv, c.groups, wv, bv));
          y.backward(gy);
          return Tensors{y, want_x ? xv.grad() : zeros({1}), wv.grad(), bv.grad()};
        };
        const Tensors fused = run(true), pair = run(false);
        for (std::size_t i = 0; i < fused.size(); ++i) {
          INFO("output " << i << " (y, x.grad, w.grad, b.grad) " << dtype_name(dt) << " want_x " << want_x);
          CHECK(test::same_bits(fused[i], pair[i]));
        }
      }
    }
    if (c.shape.numel() <= 200) {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::group_norm_silu(v[0], c.groups, v[1], v[2]); },
                      {test::transposed_layout(x), w, b});
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::group_norm_silu(v[0], c.groups, {}, {}, 0.2); },
                      {test::strided_layout(x)});
    }
  }
}

TEST_CASE("norms over one element: zero input gradient exactly, as the math says", "[ops][norm]") {
  // x_hat is 0 and d/dx (x - mean) = 0: the bracket g - s1 / n cancels exactly before rstd (316
  // for eps 1e-5) multiplies it.
  const Tensor x0 = test::randn({3, 1}, DType::f32, 30), x1 = test::randn({2, 4}, DType::f32, 31);
  for (bool affine : {false, true}) {
    INFO(affine);
    const Tensor w1 = affine ? test::randn({1}, DType::f32, 34) : Tensor(), b1 = affine ? test::randn({1}, DType::f32, 35) : Tensor();
    const Tensor w4 = affine ? test::randn({4}, DType::f32, 36) : Tensor(), b4 = affine ? test::randn({4}, DType::f32, 37) : Tensor();
    Tensor a = x0.detach().requires_grad_(), b = x1.detach().requires_grad_(), c = x1.detach().requires_grad_();
    ops::sum(ops::mul(ops::layer_norm(a, {1}, w1, b1), test::randn({3, 1}, DType::f32, 32))).backward();
    ops::sum(ops::mul(ops::group_norm(b, 4, w4, b4), test::randn({2, 4}, DType::f32, 33))).backward();
    ops::sum(ops::mul(ops::group_norm_silu(c, 4, w4, b4), test::randn({2, 4}, DType::f32, 38))).backward();
    for (const Tensor& g : {a.grad(), b.grad(), c.grad()})
      for (float v : g.to_vector<float>()) CHECK(v == 0.0f);
  }
}

TEST_CASE("norms: an inf or NaN in a row makes its layer_norm / group_norm NaN in f32 as in f64 (as torch)", "[ops][norm]") {
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    for (double bad : {double(INFINITY), double(NAN)}) {
      const Tensor x = tensor({1, bad, 3, 0.5, 2, 4}, {2, 3}, dt);
      const auto y = ops::layer_norm(x, {3}).to_vector<double>();
      for (int i = 0; i < 3; ++i) CHECK(std::isnan(y[i]));
      for (int i = 3; i < 6; ++i) CHECK(std::isfinite(y[i]));  // the other row is untouched
      const auto g = ops::group_norm(x.reshape({1, 6, 1}), 2).to_vector<double>();
      for (int i = 0; i < 3; ++i) CHECK(std::isnan(g[i]));
      for (int i = 3; i < 6; ++i) CHECK(std::isfinite(g[i]));
    }
  }
}

TEST_CASE("batch_norm: training and eval against the naive loops, running statistics, gradcheck", "[ops][norm][grad][batch_norm]") {
  for (const Shape& shape : {Shape{5, 3}, Shape{4, 3, 7}, Shape{2, 4, 3, 5}, Shape{3, 2, 17}, Shape{2, 1, 1, 2}}) {
    INFO("shape " << fmt::format("{}", shape));
    const std::int64_t C = shape[1];
    const Tensor x = test::randn(shape, DType::f64, 50) * 2.0 + 0.5;
    const Tensor w = test::randn({C}, DType::f64, 51), b = test::randn({C}, DType::f64, 52);
    const BatchStats st = ref_batch_stats(x);
    // Training: the batch's statistics; the running ones move by momentum toward the batch's
    // mean and unbiased variance.
    Tensor rm = test::randn({C}, DType::f64, 53), rv = ops::abs(test::randn({C}, DType::f64, 54)) + 0.5;
    const auto rm0 = rm.to_vector<double>(), rv0 = rv.to_vector<double>();
    CHECK_ALLCLOSE(ops::batch_norm(test::transposed_layout(x), rm, rv, w, b, true, 0.25), ref_batch_norm(x, st, w, b, 1e-5), 1e-12, 1e-12);
    const double count = static_cast<double>(shape.numel() / C);
    for (std::int64_t c = 0; c < C; ++c) {
      CHECK(rm.at<double>({c}) == Approx(0.75 * rm0[c] + 0.25 * st.mean[c]).epsilon(1e-13));
      CHECK(rv.at<double>({c}) == Approx(0.75 * rv0[c] + 0.25 * st.var[c] * count / (count - 1)).epsilon(1e-13));
    }
    CHECK_ALLCLOSE(ops::batch_norm(x, {}, {}, {}, {}, true, 0.1, 0.1), ref_batch_norm(x, st, {}, {}, 0.1), 1e-12, 1e-12);
    const Tensor x32 = x.to(DType::f32);
    CHECK_ALLCLOSE(ops::batch_norm(x32, {}, {}, w.to(DType::f32), b.to(DType::f32), true), ref_batch_norm(x32, st, w, b, 1e-5), 3e-5, 3e-5);
    // Eval: the running statistics.
    const BatchStats running{rm.to_vector<double>(), rv.to_vector<double>()};
    CHECK_ALLCLOSE(ops::batch_norm(x, rm, rv, w, b, false), ref_batch_norm(x, running, w, b, 1e-5), 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::batch_norm(x, rm, rv, {}, b, false, 0.1, 0.01), ref_batch_norm(x, running, {}, b, 0.01), 1e-12, 1e-12);
    CHECK(rm.to_vector<double>() == running.mean);  // eval leaves them alone
    // Gradients for x, weight and bias, in both modes (non-contiguous x).
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::batch_norm(v[0], {}, {}, v[1], v[2], true); },
                    {test::transposed_layout(x), w, b});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::batch_norm(v[0], rm, rv, v[1], v[2], false); }, {test::strided_layout(x), w, b});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::batch_norm(v[0], {}, {}, {}, {}, true, 0.1, 0.3); }, {x});
  }
  // The output is contiguous (as torch's), an empty batch gives an empty result and leaves the
  // statistics alone, eps = 0 is allowed.
  Tensor rm = zeros({3}), rv = ones({3});
  CHECK(ops::batch_norm(test::randn({64, 3, 5}, DType::f32, 55), rm, rv, {}, {}, true).is_contiguous());
  const Tensor before_m = rm.clone(), before_v = rv.clone();
  CHECK(ops::batch_norm(zeros({0, 3}), rm, rv, {}, {}, true).shape() == Shape{0, 3});
  CHECK(ops::batch_norm(zeros({2, 0, 4}), {}, {}, {}, {}, true).shape() == Shape{2, 0, 4});
  CHECK(test::same_bits(rm, before_m));
  CHECK(ops::batch_norm(tensor({1.0, 3.0}, {2, 1}, DType::f64), {}, {}, {}, {}, true, 0.1, 0.0).to_vector<double>() ==
        std::vector<double>{-1, 1});
  // Bad arguments are refused before the running statistics change.
  CHECK_THROWS_WITH(ops::batch_norm(test::randn({4, 3}, DType::f32, 56), rm, rv, ones({3}, DType::i64), {}, true),
                    Contains("batch_norm: weight must be a floating-point tensor, got i64"));
  CHECK(test::same_bits(rm, before_m));
  CHECK(test::same_bits(rv, before_v));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({4, 3}), zeros({3}, DType::i64), ones({3}, DType::i64), {}, {}, true),
                    Contains("batch_norm: running_mean must be a floating-point tensor, got i64"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({4, 3}), {}, {}, {}, {}, true, 0.1, -1.0), Contains("batch_norm: eps must be a finite number >= 0, got -1"));
  // Errors.
  CHECK_THROWS_WITH(ops::batch_norm(zeros({1, 3}), {}, {}, {}, {}, true), Contains("batch_norm: training needs more than one value per channel, x is [1, 3]"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({2, 3}), {}, {}, {}, {}, false), Contains("eval mode (training = false) needs running_mean and running_var"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({2, 3}), zeros({4}), ones({4}), {}, {}, true), Contains("batch_norm: running_mean must be [3] for x [2, 3], got [4]"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({2, 3}), zeros({3}), {}, {}, {}, true), Contains("give both running_mean and running_var"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({3}), {}, {}, {}, {}, true), Contains("batch_norm: expected x [N, C, *], got [3]"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({2, 3}), {}, {}, {}, {}, true, 1.5), Contains("momentum must be in [0, 1], got 1.5"));
  CHECK_THROWS_WITH(ops::batch_norm(zeros({2, 3}, DType::i32), {}, {}, {}, {}, true), Contains("batch_norm: expected a floating-point tensor (f32 or f64), got i32"));
}

TEST_CASE("norms: 1 vs N threads give identical bits (forward and backward)", "[ops][norm][threads]") {
  {
    const Tensor x0 = test::randn({64, 16, 9, 11}, DType::f32, 47), w0 = test::randn({16}, DType::f32, 48);
    CHECK(test::same_bits_across_threads([&] {
      Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_();
      Tensor rm = zeros({16}), rv = ones({16});
      Tensor y = ops::batch_norm(x, rm, rv, w, {}, true);
      y.backward(x0 * 0.5);
      return Tensors{y, x.grad(), w.grad(), rm, rv, ops::batch_norm(x0, rm, rv, w0, {}, false)};
    }));
  }
  const Tensor x0 = test::randn({513, 1003}, DType::f32, 40), gy = test::randn({513, 1003}, DType::f32, 41);
  const Tensor w0 = test::randn({1003}, DType::f32, 42), b0 = test::randn({1003}, DType::f32, 43);
  CHECK(test::same_bits_across_threads([&] {
    Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_(), b = b0.detach().requires_grad_();
    Tensor y = ops::layer_norm(x, {1003}, w, b);
    Tensor z = ops::rms_norm(y, {1003}, w);
    z.backward(gy);
    return Tensors{y, z, x.grad(), w.grad(), b.grad()};
  }));
  const Tensor g0 = test::randn({9, 32, 40, 41}, DType::f32, 44);
  const Tensor gw0 = test::randn({32}, DType::f32, 45), gb0 = test::randn({32}, DType::f32, 46);
  CHECK(test::same_bits_across_threads([&] {
    Tensor x = g0.detach().requires_grad_(), w = gw0.detach().requires_grad_(), b = gb0.detach().requires_grad_();
    Tensor y = ops::group_norm(x, 8, w, b);
    y.backward(g0 * 0.5);
    return Tensors{y, x.grad(), w.grad(), b.grad()};
  }));
  CHECK(test::same_bits_across_threads([&] {
    Tensor x = g0.detach().requires_grad_(), w = gw0.detach().requires_grad_(), b = gb0.detach().requires_grad_();
    Tensor y = ops::group_norm_silu(x, 4, w, b);
    y.backward(g0 * 0.5);
    return Tensors{y, x.grad(), w.grad(), b.grad()};
  }));
}

TEST_CASE("layer_norm, rms_norm, softmax: a streamed input gradient has the bits of a cached one", "[ops][norm][threads]") {
  // Large input gradients are written with non-temporal stores (simd::stream_output); a threshold
  // of 0 streams every eligible one: rows a multiple of 64 bytes long (the others, e.g. n = 1003
  // or 20, take the ordinary stores whatever the threshold).
  test::ScopedSetting<std::int64_t> threshold(kernels::simd::stream_threshold, kernels::simd::stream_threshold.load());
  for (auto [rows, n, dtype] : {std::tuple{37, 64, DType::f32}, {130, 1024, DType::f32}, {33, 48, DType::f32},
                                {9, 1003, DType::f32}, {20, 16, DType::f64}, {7, 20, DType::f64}}) {
    INFO(fmt::format("[{}, {}] {}", rows, n, dtype_name(dtype)));
    const Tensor x0 = test::randn({rows, n}, dtype, 50), gy = test::randn({rows, n}, dtype, 51);
    const Tensor w0 = test::randn({n}, dtype, 52), b0 = test::randn({n}, dtype, 53);
    auto grads = [&] {
      Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_(), b = b0.detach().requires_grad_();
      Tensors out = autograd::grad({ops::layer_norm(x, {n}, w, b)}, {x, w, b}, {gy});
      for (const Tensor& g : autograd::grad({ops::rms_norm(x, {n}, w)}, {x, w}, {gy})) out.push_back(g);
      out.push_back(autograd::grad({ops::layer_norm(x, {n})}, {x}, {gy})[0]);  // without weight and bias
      out.push_back(autograd::grad({ops::softmax(x, -1)}, {x}, {gy})[0]);
      out.push_back(autograd::grad({ops::log_softmax(x, -1)}, {x}, {gy})[0]);
      return out;
    };
    threshold.set(std::int64_t{1} << 62);
    const Tensors cached = grads();
    threshold.set(0);
    const Tensors streamed = grads();
    REQUIRE(cached.size() == streamed.size());
    for (std::size_t i = 0; i < cached.size(); ++i) CHECK(test::same_bits(cached[i], streamed[i]));
    CHECK(test::same_bits_across_threads(grads));
  }
}

TEST_CASE("layer_norm, rms_norm: the backward by strips of columns has the bits of the one by chunks of rows",
          "[ops][norm][threads]") {
  // Few long rows take the column backward (kernels::row_norm_backward_path, automatic by default);
  // it follows the row path's chunks and folds of the weight/bias sums, so every gradient must have
  // the same bits. Shapes: one chunk with partial folds (37 rows), several chunks of two folds
  // (300 x 2000: chunks of 32 rows) or of a fold and a part (100 x 3000: 21 rows), chunks of a few
  // rows (100 x 10000: 6), ragged strips (n = 1003, 2000, 3000, 10000 over strips of 512 columns),
  // f64; gradients of x, w and b, of w and b only (no gx), without a bias (RMS norm); ordinary and
  // non-temporal stores of gx; 1 vs N threads.
  test::ScopedSetting<kernels::RowNormBackward> path(kernels::row_norm_backward_path, kernels::RowNormBackward::automatic);
  test::ScopedSetting<std::int64_t> threshold(kernels::simd::stream_threshold, kernels::simd::stream_threshold.load());
  for (auto [rows, n, dtype] : {std::tuple{37, 1003, DType::f32}, {300, 2000, DType::f32}, {100, 3000, DType::f32},
                                {100, 10000, DType::f32}, {3, 64, DType::f32}, {40, 1003, DType::f64}, {20, 512, DType::f64}}) {
    INFO(fmt::format("[{}, {}] {}", rows, n, dtype_name(dtype)));
    const Tensor x0 = test::randn({rows, n}, dtype, 60), gy = test::randn({rows, n}, dtype, 61) * 3.0;
    const Tensor w0 = test::randn({n}, dtype, 62), b0 = test::randn({n}, dtype, 63);
    auto grads = [&] {
      Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_(), b = b0.detach().requires_grad_();
      Tensors out = autograd::grad({ops::layer_norm(x, {n}, w, b)}, {x, w, b}, {gy});
      for (const Tensor& g : autograd::grad({ops::rms_norm(x, {n}, w)}, {x, w}, {gy})) out.push_back(g);
      Tensor xc = x0.detach();  // no input gradient: the kernel gets no gx
      for (const Tensor& g : autograd::grad({ops::layer_norm(xc, {n}, w, b)}, {w, b}, {gy})) out.push_back(g);
      return out;
    };
    path.set(kernels::RowNormBackward::by_rows);
    threshold.set(std::int64_t{1} << 62);
    const Tensors by_rows = grads();
    for (std::int64_t stream_at : {std::int64_t{1} << 62, std::int64_t{0}}) {
      threshold.set(stream_at);
      path.set(kernels::RowNormBackward::by_columns);
      const Tensors by_columns = grads();
      REQUIRE(by_rows.size() == by_columns.size());
      for (std::size_t i = 0; i < by_rows.size(); ++i) {
        INFO(fmt::format("gradient {}, stream threshold {}", i, stream_at));
        CHECK(test::same_bits(by_rows[i], by_columns[i]));
      }
      CHECK(test::same_bits_across_threads(grads));
    }
  }
  // The automatic choice takes the columns for few long rows: the same bits again.
  path.set(kernels::RowNormBackward::automatic);
  threshold.set(threshold.saved());
  const Tensor x0 = test::randn({4, 40000}, DType::f32, 64), gy = test::randn({4, 40000}, DType::f32, 65);
  const Tensor w0 = test::randn({40000}, DType::f32, 66), b0 = test::randn({40000}, DType::f32, 67);
  auto grads = [&] {
    Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_(), b = b0.detach().requires_grad_();
    return autograd::grad({ops::layer_norm(x, {40000}, w, b)}, {x, w, b}, {gy});
  };
  const Tensors automatic = grads();
  path.set(kernels::RowNormBackward::by_rows);
  const Tensors by_rows = grads();
  for (std::size_t i = 0; i < by_rows.size(); ++i) CHECK(test::same_bits(automatic[i], by_rows[i]));
}

TEST_CASE("norms: errors name the op, the shapes and the dim", "[ops][norm][errors]") {
  const Tensor x = zeros({2, 3, 4});
  CHECK_THROWS_WITH(ops::layer_norm(x, {3}),
                    Contains("layer_norm: normalized_shape [3] does not match the trailing dims of x (shape [2, 3, 4]): dim 2 of x is 4, expected 3"));
  CHECK_THROWS_WITH(ops::layer_norm(x, {1, 2, 3, 4}), Contains("layer_norm: normalized_shape [1, 2, 3, 4] has more dims than x"));
  CHECK_THROWS_WITH(ops::layer_norm(x, {}), Contains("normalized_shape must have at least one dim"));
  CHECK_THROWS_WITH(ops::layer_norm(x, {4}, zeros({3})), Contains("layer_norm: x of shape [2, 3, 4] needs a weight of shape [4], got shape [3]"));
  CHECK_THROWS_WITH(ops::layer_norm(x, {3, 4}, {}, zeros({4})), Contains("layer_norm: x of shape [2, 3, 4] needs a bias of shape [3, 4], got shape [4]"));
  CHECK_THROWS_WITH(ops::rms_norm(x, {4}, zeros({4, 1})), Contains("rms_norm: x of shape [2, 3, 4] needs a weight of shape [4], got shape [4, 1]"));
  CHECK_THROWS_WITH(ops::rms_norm(arange(4), {4}), Contains("rms_norm: expected a floating-point tensor"));
  CHECK_THROWS_WITH(ops::layer_norm(x, {4}, {}, {}, -1.0), Contains("layer_norm: eps must be a finite number >= 0"));
  CHECK_THROWS_WITH(ops::group_norm(x, 2), Contains("group_norm: num_groups 2 must divide the number of channels C = 3 (dim 1 of x, shape [2, 3, 4])"));
  CHECK_THROWS_WITH(ops::group_norm(x, 0), Contains("group_norm: num_groups must be >= 1"));
  CHECK_THROWS_WITH(ops::group_norm(zeros({4}), 1), Contains("group_norm: expected x of shape [N, C, *]"));
  CHECK_THROWS_WITH(ops::group_norm(x, 3, zeros({4})), Contains("group_norm: x of shape [2, 3, 4] needs a weight of shape [3], got shape [4]"));
  CHECK_THROWS_WITH(ops::group_norm_silu(x, 2), Contains("group_norm_silu: num_groups 2 must divide the number of channels C = 3"));
  CHECK_THROWS_WITH(ops::layer_norm(Tensor(), {4}), Contains("layer_norm: argument 'x' is an undefined tensor"));
}
