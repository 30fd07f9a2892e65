// Regressions from an adversarial-input sweep: sizes and parameters at the edge of int64, indices
// the caller still owns, non-finite inputs to Winograd, empty reductions and pools, badly scaled
// matrices. Each case failed (crash, UB, hang or a silently wrong value) before its fix.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/conv.hpp"
#include "ops/dense.hpp"
#include "ops/dropout.hpp"
#include "ops/elementwise.hpp"
#include "ops/fft.hpp"
#include "ops/fused.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
constexpr std::int64_t kBig = std::int64_t{1} << 62;
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
}  // namespace

TEST_CASE("sizes beyond int64 or memory are rejected before allocating", "[ops][edge][errors]") {
  CHECK_THROWS_WITH(zeros({kBig}), Contains("zeros: shape [4611686018427387904]"));
  CHECK_THROWS_WITH(zeros({1 << 20, 1 << 20, 1 << 20, 1 << 20}), Contains("more than 2^63 - 1 elements"));
  CHECK_THROWS_WITH(full({std::int64_t{1} << 61, 2}, 1.0, DType::f64), Contains("full: shape"));
  // The factory the caller used names the error.
  CHECK_THROWS_WITH(eye(std::int64_t{1} << 31, std::int64_t{1} << 30), Contains("eye: shape [2147483648, 1073741824]"));
  CHECK_THROWS_WITH(linspace(0, 1, kBig), Contains("linspace: shape"));
  CHECK_THROWS_WITH(empty({2, -3}), Contains("empty: negative dimension -3 in shape [2, -3]"));
  CHECK_THROWS_WITH(arange(0.0, 1e30), Contains("arange"));
  CHECK_THROWS_WITH(tensor({1}).expand({kBig, kBig}).numel(), Contains("more than 2^63 - 1 elements"));
  CHECK_THROWS_WITH(tensor({1}).reshape({kBig, 4, 0}), Contains("reshape"));
  CHECK_THROWS_WITH(ops::irfft(randn({5, 2}), kBig), Contains("irfft: shape [4611686018427387904] of f32"));
  // Results that fit no memory (4 TB) name their op too.
  const Tensor huge = tensor({1.0f}).expand({std::int64_t{1} << 40});          // [2^40], one element stored
  const Tensor huge_complex = tensor({1.0f, 0.0f}).expand({std::int64_t{1} << 39, 2});  // [2^39, 2]
  Generator gen(1);
  const auto offset = gen.state().offset;
  CHECK_THROWS_WITH(ops::dropout(huge, 0.5, true, gen), Contains("dropout: out of memory"));
  CHECK(gen.state().offset == offset);  // a failed call draws nothing
  CHECK_THROWS_WITH(ops::complex_mul(huge_complex, huge_complex), Contains("complex_mul: out of memory"));
  CHECK_THROWS_WITH(ops::complex_abs(huge_complex.expand({2, std::int64_t{1} << 39, 2})), Contains("complex_abs: out of memory"));
  CHECK_THROWS_WITH(ops::fft_conv_length(kMax, 2), Contains("fft_conv_length"));
  CHECK(zeros({kBig, kBig, 0}).numel() == 0);
  // An op's own result names the op.
  const std::int64_t huge_pad = (std::int64_t{1} << 31) - 2;
  CHECK_THROWS_WITH(ops::conv2d(zeros({1, 1, 4, 4}), zeros({1, 1, 1, 1}), {}, {.padding = {huge_pad, huge_pad}}),
                    Contains("conv2d: shape [1, 1, 4294967296, 4294967296] of f32 has more than 2^63 - 1 elements"));
  CHECK_THROWS_WITH(ops::upsample(zeros({1, 1, 4, 4}), {.scale = std::array<double, 2>{1e8, 1e8}}),
                    Contains("upsample_nearest2d: shape [1, 1, 400000000, 400000000] of f32 would need"));
  // A zero dim makes any shape empty, however large the others.
  CHECK(zeros({0, kBig}).numel() == 0);
}

TEST_CASE("shape ops with extreme arguments raise instead of overflowing", "[ops][edge][shape][errors]") {
  const Tensor x = randn({5});
  CHECK(x.slice(0, 0, 5, kMax).shape() == Shape{1});
  CHECK(x.slice(0, 1, 5, kMax / 2).to_vector<float>() == std::vector<float>{x.to_vector<float>()[1]});
  CHECK_THROWS_WITH(x.narrow(0, 1, kMax), Contains("narrow: range [1, "));
  CHECK_THROWS_WITH(ops::pad(x, {kBig, 0}), Contains("pad: pad sizes"));
  CHECK_THROWS_WITH(ops::pad(x, {std::numeric_limits<std::int64_t>::min(), 0}), Contains("pad: pad sizes"));
  CHECK_THROWS_WITH(ops::pad(x, {0, std::int64_t{1} << 40}, ops::PadMode::replicate), Contains("out of memory"));
  CHECK_THROWS_WITH(ops::repeat(randn({2, 3}), {kBig, 1}), Contains("repeat"));
  const Tensor e = tensor({1}).expand({kBig});
  CHECK_THROWS_WITH(ops::cat({e, e}, 0), Contains("cat: the sizes of dim 0 overflow"));
  CHECK_THROWS_WITH(ops::split(randn({3}), {kBig, kBig, kBig, kBig, 3}, 0), Contains("split"));
  CHECK(ops::chunk(randn({5}), kMax, 0).size() == 5);
  CHECK_THROWS_WITH(ops::chunk(randn({0}), std::int64_t{1} << 40, 0), Contains("chunk: dim 0"));
  CHECK_THROWS_WITH(ops::unbind(tensor({1}).expand({std::int64_t{1} << 40}), 0), Contains("unbind: dim 0"));
  // 2^25 + 1 elements in pieces of 2: 2^24 + 1 pieces (the shorter last one counts too).
  CHECK_THROWS_WITH(ops::split(tensor({1}).expand({(std::int64_t{1} << 25) + 1}), 2, 0), Contains("into 16777217 pieces, more than 2^24"));
}

TEST_CASE("index ops leave the caller's index alone", "[ops][edge][shape]") {
  Tensor idx = tensor({-1, 0, -2}, DType::i64);
  const Tensor x = arange(12).reshape({4, 3}).to(DType::f32);
  const Tensor y = ops::index_select(x, 0, idx);
  CHECK(idx.to_vector<std::int64_t>() == std::vector<std::int64_t>{-1, 0, -2});
  CHECK(y.select(0, 0).to_vector<float>() == std::vector<float>{9, 10, 11});

  // The backward uses the index of the forward, whatever the caller does to theirs later.
  Tensor w = randn({4, 3}).requires_grad_(true);
  Tensor rows = tensor({0, 1}, DType::i64);
  const Tensor picked = ops::index_select(w, 0, rows);
  rows.fill_(3);
  ops::sum(picked).backward();
  CHECK(w.grad().to_vector<float>() == std::vector<float>{1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0});

  // Class labels and embedding rows must be in [0, n): -1 is a bug, not the last entry.
  CHECK_THROWS_WITH(ops::one_hot(tensor({-1}, DType::i64), 3), Contains("one_hot: index -1 is out of range"));
  CHECK_THROWS_WITH(ops::embedding(randn({4, 2}), tensor({-1}, DType::i64)), Contains("embedding: index -1"));
}

TEST_CASE("integer tensors: out-of-range scalars and clamp bounds", "[ops][edge][elementwise]") {
  const Tensor a = tensor({-5, 1, 7}, DType::i64);
  CHECK(ops::clamp(a, 0.0, std::nullopt).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 7});
  CHECK(ops::clamp(a, std::nullopt, 1e19).to_vector<std::int64_t>() == std::vector<std::int64_t>{-5, 1, 7});
  CHECK(ops::clamp(a, -1e19, 3.0).to_vector<std::int64_t>() == std::vector<std::int64_t>{-5, 1, 3});
  CHECK(ops::clamp(a, 2e19, std::nullopt).to_vector<std::int64_t>() == std::vector<std::int64_t>(3, kMax));
  CHECK_THROWS_WITH(ops::clamp(a, NAN, std::nullopt), Contains("clamp: a NaN bound"));
  // A float tensor with a NaN bound gives NaN everywhere, as torch.clamp.
  for (const float v : ops::clamp(tensor({-1, 0, 2}), std::nullopt, NAN).to_vector<float>()) CHECK(std::isnan(v));
  CHECK_THROWS_WITH(ops::add(tensor({3}, DType::i32), 1e10), Contains("add_scalar: scalar 10000000000 does not fit"));
  CHECK_THROWS_WITH(ops::mul(a, 1e30), Contains("does not fit"));
  CHECK(ops::add(tensor({3}, DType::i32), 2.0).to_vector<std::int32_t>() == std::vector<std::int32_t>{5});
  // Integer sums wrap around (as torch), without undefined behaviour.
  const Tensor big = full({2}, 0x1p62, DType::i64);
  CHECK(ops::sum(big).item<std::int64_t>() == std::numeric_limits<std::int64_t>::min());
}

TEST_CASE("empty reductions and pools raise, logsumexp of nothing is -inf", "[ops][edge][reduce][conv]") {
  CHECK_THROWS_WITH(ops::amax(randn({0, 3}), {0}), Contains("amax: cannot reduce an empty dimension"));
  CHECK_THROWS_WITH(ops::amin(randn({2, 0}), {1}, true), Contains("amin: cannot reduce an empty dimension"));
  CHECK(ops::amax(randn({0, 3}), {1}).shape() == Shape{0});  // empty, but no empty reduction
  const Tensor lse = ops::logsumexp(randn({0, 3}), {0});
  CHECK(lse.to_vector<float>() == std::vector<float>(3, -INFINITY));
  CHECK_THROWS_WITH(ops::max_pool2d(randn({1, 1, 0, 4}), {2, 2}, {0, 0}, {1, 1}), Contains("max_pool2d: x of shape"));
  CHECK_THROWS_WITH(ops::avg_pool2d(randn({1, 1, 0, 4}), {2, 2}, {0, 0}, {1, 1}), Contains("avg_pool2d: x of shape"));
  CHECK_THROWS_WITH(ops::adaptive_avg_pool2d(randn({1, 1, 0, 4}), {2, 2}), Contains("adaptive_avg_pool2d"));
  CHECK(ops::max_pool2d(randn({0, 2, 4, 4}), {2, 2}).shape() == Shape{0, 2, 2, 2});  // an empty batch is fine
}

TEST_CASE("window parameters near int64 are rejected", "[ops][edge][conv][errors]") {
  const Tensor x = randn({1, 1, 4, 4}), w = randn({1, 1, 3, 3});
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.padding = {kBig, 0}}), Contains("conv2d: padding must be at most 2^31 - 1"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.dilation = {kBig, 1}}), Contains("dilation must be at most"));
  CHECK_THROWS_WITH(ops::conv_transpose2d(x, w, {}, {.stride = {kBig, 1}}), Contains("conv_transpose2d: stride"));
  CHECK_THROWS_WITH(ops::max_pool2d(x, {3, 3}, {1, 1}, {0, 0}, {kBig, 1}), Contains("max_pool2d: dilation"));
  CHECK_THROWS_WITH(ops::avg_pool2d(x, {kMax, 2}, {1, 1}, {kMax / 2, 0}), Contains("avg_pool2d: kernel size"));
  CHECK_THROWS_WITH(ops::adaptive_avg_pool2d(x, {std::int64_t{1} << 34, 1}), Contains("output size must be at most"));
  CHECK_THROWS_WITH(ops::upsample(x, {.scale = std::array<double, 2>{1e19, 1.0}}), Contains("output size would be"));
}

TEST_CASE("conv2d: a non-finite input reaches only the outputs that see it", "[ops][edge][conv]") {
  // 8 channels in and out, 3x3 with padding 1: the shape where Winograd's tiles would spread an
  // inf to a whole 4x4 output tile (inf * 0 = NaN in the transforms).
  for (const DType dt : {DType::f32, DType::f64}) {
    for (const std::int64_t n : {4, 8, 12}) {
      std::vector<double> xv(static_cast<std::size_t>(8 * n * n), 0.0);
      xv[0] = INFINITY;                                       // x[0, 0, 0, 0]
      const Tensor x = from_vector(xv, {1, 8, n, n}).to(dt);  // [1, 8, n, n]
      const Tensor y = ops::conv2d(x, ones({8, 8, 3, 3}, dt), {}, {.padding = {1, 1}});  // [1, 8, n, n]
      const std::vector<double> v = y.to(DType::f64).to_vector<double>();
      for (std::int64_t o = 0; o < 8; ++o)
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t j = 0; j < n; ++j) {
            const double yv = v[static_cast<std::size_t>((o * n + i) * n + j)];
            CAPTURE(dt, n, o, i, j, yv);
            CHECK(std::isfinite(yv) == (i > 1 || j > 1));  // only y[.., 0:2, 0:2] sees x[0, 0, 0, 0]
            if (i > 1 || j > 1) CHECK(yv == 0.0);
          }
    }
  }
}

TEST_CASE("conv2d, conv_transpose2d: a non-finite weight reaches only the sums that hold it", "[ops][edge][conv]") {
  // 8 channels, 3x3, padding 1 (Winograd's and the implicit input gradient's shape). Tap (0, 0) of
  // w[0, 0] reads x[i - 1, j - 1] for output (i, j): padding at i = 0 or j = 0 (0 * inf = NaN, as
  // in PyTorch), a real input elsewhere; in the input gradient and the transposed convolution it
  // reaches only the inputs a < n - 1, b < n - 1 of channel 0.
  for (const DType dt : {DType::f32, DType::f64}) {
    for (const std::int64_t n : {4, 8, 12}) {
      for (const double bad : {double(INFINITY), double(NAN)}) {
        CAPTURE(dt, n, bad);
        std::vector<double> wv(8 * 8 * 9, 1.0), w0 = wv;
        wv[0] = bad;
        w0[0] = 0.0;
        const Tensor w = from_vector(wv, {8, 8, 3, 3}).to(dt), wz = from_vector(w0, {8, 8, 3, 3}).to(dt);
        const Tensor x = test::uniform({1, 8, n, n}, 0.5, 1.5, dt, 3).requires_grad_();  // [1, 8, n, n], > 0
        const Tensor y = ops::conv2d(x, w, {}, {.padding = {1, 1}});                              // [1, 8, n, n]
        y.backward(ones(y.shape(), dt));
        const std::vector<double> yv = y.to(DType::f64).to_vector<double>(), gx = x.grad().to(DType::f64).to_vector<double>();
        const std::vector<double> gz = ops::conv_transpose2d(ones({1, 8, n, n}, dt), wz, {}, {.padding = {1, 1}})
                                           .to(DType::f64)
                                           .to_vector<double>();
        const std::vector<double> t = ops::conv_transpose2d(ones({1, 8, n, n}, dt), w, {}, {.padding = {1, 1}})
                                          .to(DType::f64)
                                          .to_vector<double>();
        for (std::int64_t c = 0; c < 8; ++c)
          for (std::int64_t a = 0; a < n; ++a)
            for (std::int64_t b = 0; b < n; ++b) {
              const auto k = static_cast<std::size_t>((c * n + a) * n + b);
              CAPTURE(c, a, b, yv[k], gx[k], t[k]);
              // forward: output channel 0 holds the bad tap (NaN on padding, +inf on x > 0 for inf)
              if (c == 0 && (a == 0 || b == 0 || std::isnan(bad))) CHECK(std::isnan(yv[k]));
              else if (c == 0) CHECK(yv[k] == INFINITY);
              else CHECK(std::isfinite(yv[k]));
              // input gradient (gy = 1) and the transposed convolution of ones: the same sums
              const bool holds = c == 0 && a < n - 1 && b < n - 1;
              if (holds) {
                CHECK(!std::isfinite(gx[k]));
                CHECK(!std::isfinite(t[k]));
              } else {
                CHECK(gx[k] == gz[k]);
                CHECK(t[k] == gz[k]);
              }
            }
      }
    }
  }
}

TEST_CASE("dense helpers on badly scaled matrices", "[ops][edge][dense]") {
  using ops::dense::eigh;
  const auto values = [](const Tensor& a) { return eigh(a).values.to_vector<double>(); };
  const std::vector<double> big = values(tensor({1e200, 1e200, 1e200, 1e200}, {2, 2}, DType::f64));
  CHECK(big[0] == Approx(0.0).margin(1e186));
  CHECK(big[1] == Approx(2e200));
  const std::vector<double> tiny = values(tensor({1e-200, 2e-200, 2e-200, 1e-200}, {2, 2}, DType::f64));
  CHECK(tiny[0] == Approx(-1e-200));
  CHECK(tiny[1] == Approx(3e-200));
  // Power-of-two scaling is exact: an ordinary matrix gives the same bits scaled up or not.
  const Tensor m = tensor({2, 1, 0, 1, 3, 1, 0, 1, 4}, {3, 3}, DType::f64);
  const std::vector<double> v1 = values(m), v2 = values(ops::mul(m, 0x1p100));
  for (std::size_t i = 0; i < 3; ++i) CHECK(v2[i] == std::ldexp(v1[i], 100));
  CHECK(ops::dense::rank1_svd(tensor({1e200, 0, 0, 1e199}, {2, 2}, DType::f64)).sigma == Approx(1e200));
  CHECK_THROWS_WITH(eigh(tensor({NAN, 0, 0, 1}, {2, 2}, DType::f64)), Contains("eigh: the matrix (shape [2, 2]) has a non-finite"));
}

TEST_CASE("random and fused updates reject arguments they cannot honour", "[ops][edge][random][fused]") {
  CHECK_THROWS_WITH(trunc_normal({4}, 0, INFINITY, -1, 1), Contains("trunc_normal: need a finite mean"));
  // The whole int64 range is a valid randint range.
  const Tensor r = randint(std::numeric_limits<std::int64_t>::min(), kMax, {64});
  CHECK(r.numel() == 64);
  Generator gen(7);
  CHECK_NOTHROW(gen.randint(std::numeric_limits<std::int64_t>::min(), kMax));
  const Tensor p = ones({3}), g = ones({3}), m = zeros({3}), v = zeros({3});
  CHECK_THROWS_WITH(ops::adam_step({p}, {g}, {m}, {v}, {.step = 0}), Contains("adam_step: step counts updates from 1"));
  // Unrecorded in-place updates of a parameter that requires grad need NoGradGuard, as fill_ does.
  const Tensor leaf = ones({3}).requires_grad_();
  CHECK_THROWS_WITH(ops::scale_({leaf}, 0.5), Contains("scale_: tensor 0 (shape [3]) requires grad and grad mode is on"));
  CHECK_THROWS_WITH(ops::sgd_step({leaf}, {g}, {}, {}), Contains("sgd_step: tensor 0 (shape [3]) requires grad"));
  {
    NoGradGuard no_grad;
    ops::scale_({leaf}, 0.5);
  }
  CHECK(leaf.detach().to_vector<float>() == std::vector<float>{0.5f, 0.5f, 0.5f});
}

TEST_CASE("errors name the op that was called, not the op it is built from", "[ops][edge][errors]") {
  const Tensor i = tensor({1, 2, 3}, DType::i64), b = tensor({1, 0, 1}, DType::boolean);
  CHECK_THROWS_WITH(ops::mse_loss(i, i), Contains("mse_loss: expected a floating-point input"));
  CHECK_THROWS_WITH(ops::l1_loss(b, b), Contains("l1_loss: expected a floating-point input"));
  CHECK_THROWS_WITH(ops::cross_entropy(tensor({1, 2}, {1, 2}, DType::i64), tensor({0}, DType::i64)),
                    Contains("cross_entropy: expected floating-point logits"));
  CHECK_THROWS_WITH(ops::norm(randn({2, 3}), 1.0, {5}), Contains("norm:"));
  CHECK_THROWS_WITH(ops::amax(b, {0}), Contains("amax: expected a numeric tensor, got bool"));
  CHECK_THROWS_WITH(ops::argmax(b, 0), Contains("argmax: expected a numeric tensor, got bool"));
  CHECK_THROWS_WITH(randn({-1}), Contains("normal: negative dimension -1"));
  CHECK_THROWS_WITH(ops::logsumexp(randn({2}), {3}), Contains("logsumexp:"));
  CHECK_THROWS_WITH(ops::dense::solve(eye(2, 2, DType::f64), tensor({1, 0}, DType::boolean)),
                    Contains("solve: expected a floating-point b"));
  CHECK_THROWS_WITH(ops::dense::sqrtm_psd(tensor({1, 2, 0, 1}, {2, 2}, DType::f64)), Contains("sqrtm_psd: eigh: the matrix (shape [2, 2]) is not symmetric"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(randn({1, 2, 3, 3}), randn({4, 2, 7, 7})),
                    Contains("upsample_conv2d: a 7 x 7 kernel with padding [0, 0] leaves no output for x of shape [1, 2, 3, 3] (upsampled to 6 x 6)"));
  CHECK_THROWS_WITH(ops::stack({randn({3, 4}), randn({3, 4})}, 3), Contains("stack: axis 3 is out of range for a new dim of a 2-d tensor"));
}

TEST_CASE("integer overflow wraps on every reduction path, and values an integer dtype cannot hold are refused",
          "[ops][edge][reduce][shape][errors]") {
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  const Tensor big = full({2, 3}, 0x1p62, DType::i64);  // 2^62: two of them wrap to -2^63
  // Columns (reduced dim outer), transposed rows, products, cumsum, scatter_add: torch's wrapped values.
  CHECK(ops::sum(big, {0}).to_vector<std::int64_t>() == std::vector<std::int64_t>(3, kMin));
  CHECK(ops::sum(big.t(), {1}).to_vector<std::int64_t>() == std::vector<std::int64_t>(3, kMin));
  CHECK(ops::prod(full({2, 3}, 0x1p32, DType::i64), {0}).to_vector<std::int64_t>() == std::vector<std::int64_t>(3, 0));
  CHECK(ops::cumsum(full({2}, 0x1p62, DType::i64), 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{std::int64_t{1} << 62, kMin});
  CHECK(ops::cumsum(full({2}, 0x1p30, DType::i32), 0).to_vector<std::int32_t>() ==
        std::vector<std::int32_t>{1 << 30, std::numeric_limits<std::int32_t>::min()});
  const Tensor one = full({1}, 0x1p62, DType::i64);
  CHECK(ops::scatter_add(one, 0, tensor({0, 0}, DType::i64), full({2}, 0x1p62, DType::i64)).item<std::int64_t>() ==
        -(std::int64_t{1} << 62));
  CHECK_THROWS_WITH(ops::scatter_add(one, 0, tensor({0}, DType::i64), tensor({0.5})),
                    Contains("scatter_add: a floating-point src (f32 [1]) cannot be added into an integer x (i64 [1])"));
  // Numbers out of an integer dtype's range (or NaN) are refused, naming the op; fractions truncate.
  CHECK_THROWS_WITH(full({2}, 3e9, DType::i32), Contains("full: value 3000000000 does not fit in i32"));
  CHECK_THROWS_WITH(tensor({1, 3e9}, DType::i32), Contains("tensor: value 3000000000 does not fit in i32"));
  CHECK_THROWS_WITH(scalar_tensor(NAN, DType::i64), Contains("scalar_tensor: value nan does not fit in i64"));
  CHECK_THROWS_WITH(zeros({2}, DType::i32).fill_(-3e9), Contains("fill_: value -3000000000 does not fit in i32"));
  const Tensor ints = tensor({1, 2, 3}, DType::i32), mask = tensor({0, 1, 0}, DType::boolean);
  CHECK_THROWS_WITH(ops::masked_fill(ints, mask, 3e9), Contains("masked_fill: value 3000000000 does not fit in i32"));
  CHECK_THROWS_WITH(ops::pad(ints, {1, 1}, ops::PadMode::constant, 3e9), Contains("pad: value 3000000000 does not fit in i32"));
  CHECK(ops::masked_fill(ints, mask, 7.9).to_vector<std::int32_t>() == std::vector<std::int32_t>{1, 7, 3});  // keeps i32
  CHECK(full({1}, -2.7, DType::i64).item<std::int64_t>() == -2);
  CHECK(full({1}, 1e40).item<float>() == std::numeric_limits<float>::infinity());  // f32 overflows to inf, as torch
  CHECK_THROWS_WITH(randint(0, std::int64_t{1} << 40, {4}, DType::i32), Contains("randint: the range [0, 1099511627776) does not fit in i32"));
  CHECK(randint(-5, 5, {8}, DType::i32).dtype() == DType::i32);
  // A float that does not fit converts to the integer type's lowest value (x86's and torch's result), without UB.
  CHECK(tensor({1e30, NAN, -7.5}, DType::f64).to(DType::i32).to_vector<std::int32_t>() ==
        std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::min(), -7});
  CHECK(arange(0, 3e9, 1e9, DType::i32).to_vector<std::int32_t>() == std::vector<std::int32_t>{0, 1000000000, 2000000000});
  CHECK_THROWS_WITH(arange(2.5e9, 3e9, 1e8, DType::i32), Contains("arange: value 2500000000 does not fit in i32"));
  CHECK_THROWS_WITH(linspace(0, NAN, 3, DType::i64), Contains("linspace: value nan does not fit in i64"));
  CHECK(arange(0, 3e9, 1e9, DType::i64).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1000000000, 2000000000});
  CHECK_THROWS_WITH(eye(3, -5), Contains("eye: expected n >= 0 and m >= 0 (or -1 for m = n), got n = 3, m = -5"));
  CHECK_THROWS_WITH(uniform({2}, 0.0, INFINITY), Contains("uniform: expected finite low <= high"));
  CHECK_THROWS_WITH(randn({2}).unsqueeze(3), Contains("unsqueeze: axis 3 is out of range for a new dim of a 1-d tensor of shape [2] (expected -2 to 1)"));
}

TEST_CASE("where and clamp promote dtypes, sign and amax treat NaN, as torch", "[ops][edge][elementwise]") {
  const Tensor c = tensor({0, 1}, DType::boolean);
  const Tensor w1 = ops::where(c, tensor({1, 2}, DType::i32), 2.5);  // fractional: f32
  CHECK(w1.dtype() == DType::f32);
  CHECK(w1.to_vector<float>() == std::vector<float>{2.5f, 2.0f});
  const Tensor w2 = ops::where(c, 2.5, tensor({1, 2}, DType::i64));
  CHECK(w2.to_vector<float>() == std::vector<float>{1.0f, 2.5f});
  CHECK(ops::where(c, tensor({1, 2}, DType::i32), 7.0).dtype() == DType::i32);  // integral: stays
  const Tensor w3 = ops::where(c, tensor({1, 0}, DType::boolean), 1.0);         // bool and a number: i64
  CHECK(w3.dtype() == DType::i64);
  CHECK(w3.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
  CHECK(ops::where(c, tensor({1.0, 2.0}, DType::f64), 0.5).dtype() == DType::f64);
  CHECK_THROWS_WITH(ops::where(c, tensor({1, 2}, DType::i32), 3e9), Contains("where: value 3000000000 does not fit in i32"));
  // tril/triu keep the dtype, bool included.
  CHECK(ops::tril(ones({2, 2}, DType::boolean)).dtype() == DType::boolean);
  const Tensor cl = ops::clamp(tensor({1, 2, 3}, DType::i64), 1.5, std::nullopt);
  CHECK(cl.dtype() == DType::f32);
  CHECK(cl.to_vector<float>() == std::vector<float>{1.5f, 2.0f, 3.0f});
  CHECK(ops::clamp(tensor({1, 2, 3}, DType::i64), 2.0, std::nullopt).dtype() == DType::i64);
  // sign(NaN) is 0; a NaN maximum sends NaN to the gradient of its slice, and only of its slice.
  CHECK(ops::sign(tensor({NAN, -2, 0, 3})).to_vector<float>() == std::vector<float>{0, -1, 0, 1});
  const Tensor x = tensor({1, NAN, 3, 4, 5, 5}, {2, 3}, DType::f64).requires_grad_();
  ops::sum(ops::amax(x, {1})).backward();
  const std::vector<double> gx = x.grad().to_vector<double>();
  for (int j = 0; j < 3; ++j) CHECK(std::isnan(gx[static_cast<std::size_t>(j)]));
  CHECK(std::vector<double>(gx.begin() + 3, gx.end()) == std::vector<double>{0, 0.5, 0.5});
}

TEST_CASE("reductions of a 0-d tensor take axis 0 or -1, as torch", "[ops][edge][reduce]") {
  const Tensor s = scalar_tensor(3.5, DType::f64);
  for (const std::int64_t axis : {0, -1}) {
    CHECK(ops::sum(s, {axis}).shape() == Shape{});
    CHECK(ops::sum(s, {axis}).item() == 3.5);
    CHECK(ops::mean(s, {axis}, true).item() == 3.5);
    CHECK(ops::amax(s, {axis}).item() == 3.5);
    CHECK(ops::logsumexp(s, {axis}).item() == Approx(3.5));
    const auto [v, i] = ops::max(s, axis);
    CHECK((v.shape() == Shape{} && i.shape() == Shape{}));
    CHECK((v.item() == 3.5 && i.item<std::int64_t>() == 0));
    CHECK(ops::argmin(s, axis, true).item<std::int64_t>() == 0);
    CHECK(ops::cumsum(s, axis).item() == 3.5);
  }
  // Gradients flow as through the identity.
  const Tensor x = scalar_tensor(2.0, DType::f64).requires_grad_();
  (ops::sum(x, {0}) * 3.0 + ops::max(x, -1).values + ops::cumsum(x, 0)).backward();
  CHECK(x.grad().item() == 5.0);
  CHECK_THROWS_WITH(ops::sum(s, {1}), Contains("sum: axis 1 is out of range for a 0-d tensor (expected 0 or -1)"));
  CHECK_THROWS_WITH(ops::argmax(s, 2), Contains("argmax: axis 2 is out of range for a 0-d tensor"));
  CHECK_THROWS_WITH(ops::sum(s, {0, -1}), Contains("sum: axis 0 appears twice"));
}
