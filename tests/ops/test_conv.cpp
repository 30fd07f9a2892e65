// Convolution family: forward and gradients against naive f64 loops over a table of
// configurations, gradchecks (non-contiguous inputs, odd sizes), golden values from PyTorch 1.13
// for the interpolation and tie rules, thread-count determinism, error messages.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "core/autograd.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;
using ops::Size2;

namespace {

// ---- naive references (f64, plain nested loops) ----------------------------------------------------------

std::int64_t out_size(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

struct ConvGrads {
  Tensor gx, gw, gb;
};

// y[n, o, i, j] = b[o] + sum_{c in o's group, p, q} w[o, c, p, q] * x[n, g*Cg + c, i*sh - ph + p*dh, j*sw - pw + q*dw].
// With gy given, also the gradients (same loops, accumulating instead).
Tensor ref_conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const ops::Conv2dOptions& o,
                  const Tensor& gy = {}, ConvGrads* grads = nullptr) {
  const auto X = x.to_vector<double>(), Wt = w.to_vector<double>();
  const std::vector<double> B = b.defined() ? b.to_vector<double>() : std::vector<double>{};
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::int64_t O = w.shape()[0], Cg = w.shape()[1], KH = w.shape()[2], KW = w.shape()[3], Og = O / o.groups;
  const std::int64_t Ho = out_size(H, KH, o.stride[0], o.padding[0], o.dilation[0]);
  const std::int64_t Wo = out_size(W, KW, o.stride[1], o.padding[1], o.dilation[1]);
  std::vector<double> Y(N * O * Ho * Wo), GX(X.size(), 0.0), GW(Wt.size(), 0.0), GB(O, 0.0), GY;
  if (gy.defined()) GY = gy.to_vector<double>();
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t oc = 0; oc < O; ++oc)
      for (std::int64_t i = 0; i < Ho; ++i)
        for (std::int64_t j = 0; j < Wo; ++j) {
          const std::int64_t yi = ((n * O + oc) * Ho + i) * Wo + j;
          double s = B.empty() ? 0.0 : B[oc];
          const double g = GY.empty() ? 0.0 : GY[yi];
          GB[oc] += g;
          for (std::int64_t c = 0; c < Cg; ++c)
            for (std::int64_t p = 0; p < KH; ++p)
              for (std::int64_t q = 0; q < KW; ++q) {
                const std::int64_t h = i * o.stride[0] - o.padding[0] + p * o.dilation[0];
                const std::int64_t v = j * o.stride[1] - o.padding[1] + q * o.dilation[1];
                if (h < 0 || h >= H || v < 0 || v >= W) continue;
                const std::int64_t xi = ((n * C + oc / Og * Cg + c) * H + h) * W + v;
                const std::int64_t wi = ((oc * Cg + c) * KH + p) * KW + q;
                s += X[xi] * Wt[wi];
                GX[xi] += g * Wt[wi];
                GW[wi] += g * X[xi];
              }
          Y[yi] = s;
        }
  if (grads) *grads = {from_vector(GX, x.shape()), from_vector(GW, w.shape()), from_vector(GB, Shape{O})};
  return from_vector(Y, Shape{N, O, Ho, Wo});
}

// x [N, C, H, W], w [C, O/groups, kh, kw]: every x element scatters x * w into the output.
Tensor ref_conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& b, const ops::ConvTranspose2dOptions& o) {
  const auto X = x.to_vector<double>(), Wt = w.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::int64_t Og = w.shape()[1], KH = w.shape()[2], KW = w.shape()[3], O = Og * o.groups, Cg = C / o.groups;
  const std::int64_t Ho = (H - 1) * o.stride[0] - 2 * o.padding[0] + o.dilation[0] * (KH - 1) + o.output_padding[0] + 1;
  const std::int64_t Wo = (W - 1) * o.stride[1] - 2 * o.padding[1] + o.dilation[1] * (KW - 1) + o.output_padding[1] + 1;
  std::vector<double> Y(N * O * Ho * Wo, 0.0);
  if (b.defined()) {
    const auto B = b.to_vector<double>();
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(Y.size()); ++i) Y[i] = B[(i / (Ho * Wo)) % O];
  }
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t ci = 0; ci < C; ++ci)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t v = 0; v < W; ++v)
          for (std::int64_t og = 0; og < Og; ++og)
            for (std::int64_t p = 0; p < KH; ++p)
              for (std::int64_t q = 0; q < KW; ++q) {
                const std::int64_t i = h * o.stride[0] - o.padding[0] + p * o.dilation[0];
                const std::int64_t j = v * o.stride[1] - o.padding[1] + q * o.dilation[1];
                if (i < 0 || i >= Ho || j < 0 || j >= Wo) continue;
                const std::int64_t oc = ci / Cg * Og + og;
                Y[((n * O + oc) * Ho + i) * Wo + j] += X[((n * C + ci) * H + h) * W + v] * Wt[((ci * Og + og) * KH + p) * KW + q];
              }
  return from_vector(Y, Shape{N, O, Ho, Wo});
}

// Max pooling: values, and the gradient for gy (each window's gradient goes to its first maximum).
Tensor ref_max_pool2d(const Tensor& x, Size2 k, Size2 s, Size2 p, Size2 d, const Tensor& gy = {}, Tensor* gx = nullptr) {
  const auto X = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::int64_t Ho = out_size(H, k[0], s[0], p[0], d[0]), Wo = out_size(W, k[1], s[1], p[1], d[1]);
  std::vector<double> Y(N * C * Ho * Wo), GX(X.size(), 0.0), GY;
  if (gy.defined()) GY = gy.to_vector<double>();
  for (std::int64_t pl = 0; pl < N * C; ++pl)
    for (std::int64_t i = 0; i < Ho; ++i)
      for (std::int64_t j = 0; j < Wo; ++j) {
        double best = -INFINITY;
        std::int64_t at = -1;
        for (std::int64_t a = 0; a < k[0]; ++a)
          for (std::int64_t b = 0; b < k[1]; ++b) {
            const std::int64_t h = i * s[0] - p[0] + a * d[0], v = j * s[1] - p[1] + b * d[1];
            if (h < 0 || h >= H || v < 0 || v >= W) continue;
            const std::int64_t xi = (pl * H + h) * W + v;
            if (at < 0 || X[xi] > best) {
              best = X[xi];
              at = xi;
            }
          }
        const std::int64_t yi = (pl * Ho + i) * Wo + j;
        Y[yi] = best;
        if (!GY.empty()) GX[at] += GY[yi];
      }
  if (gx) *gx = from_vector(GX, x.shape());
  return from_vector(Y, Shape{N, C, Ho, Wo});
}

Tensor ref_avg_pool2d(const Tensor& x, Size2 k, Size2 s, Size2 p, bool count_include_pad) {
  const auto X = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::int64_t Ho = out_size(H, k[0], s[0], p[0], 1), Wo = out_size(W, k[1], s[1], p[1], 1);
  std::vector<double> Y;
  for (std::int64_t pl = 0; pl < N * C; ++pl)
    for (std::int64_t i = 0; i < Ho; ++i)
      for (std::int64_t j = 0; j < Wo; ++j) {
        double sum = 0;
        std::int64_t inside = 0, in_padded = 0;
        for (std::int64_t a = 0; a < k[0]; ++a)
          for (std::int64_t b = 0; b < k[1]; ++b) {
            const std::int64_t h = i * s[0] - p[0] + a, v = j * s[1] - p[1] + b;
            if (h < H + p[0] && v < W + p[1]) ++in_padded;  // torch clips windows to the padded input
            if (h < 0 || h >= H || v < 0 || v >= W) continue;
            sum += X[(pl * H + h) * W + v];
            ++inside;
          }
        Y.push_back(sum / static_cast<double>(count_include_pad ? in_padded : inside));
      }
  return from_vector(Y, Shape{N, C, Ho, Wo});
}

Tensor ref_adaptive_avg_pool2d(const Tensor& x, Size2 out) {
  const auto X = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  std::vector<double> Y;
  for (std::int64_t pl = 0; pl < N * C; ++pl)
    for (std::int64_t i = 0; i < out[0]; ++i)
      for (std::int64_t j = 0; j < out[1]; ++j) {
        const auto h0 = static_cast<std::int64_t>(std::floor(double(i) * H / out[0]));
        const auto h1 = static_cast<std::int64_t>(std::ceil(double(i + 1) * H / out[0]));
        const auto w0 = static_cast<std::int64_t>(std::floor(double(j) * W / out[1]));
        const auto w1 = static_cast<std::int64_t>(std::ceil(double(j + 1) * W / out[1]));
        double sum = 0;
        for (std::int64_t h = h0; h < h1; ++h)
          for (std::int64_t v = w0; v < w1; ++v) sum += X[(pl * H + h) * W + v];
        Y.push_back(sum / double((h1 - h0) * (w1 - w0)));
      }
  return from_vector(Y, Shape{N, C, out[0], out[1]});
}

// torch's source coordinate of output index d (UpSample.h): nearest in float arithmetic.
std::int64_t ref_nearest_source(std::int64_t d, std::int64_t in, std::int64_t out, double scale) {
  if (out == in) return d;
  if (out == 2 * in) return d / 2;
  const float s = scale > 0 ? static_cast<float>(1.0 / scale) : static_cast<float>(in) / static_cast<float>(out);
  return std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(static_cast<float>(d) * s)), in - 1);
}
void ref_linear_source(std::int64_t d, std::int64_t in, std::int64_t out, double scale, bool align, std::int64_t& i0,
                       std::int64_t& i1, double& lambda) {
  if (out == in) {
    i0 = i1 = d;
    lambda = 0;
    return;
  }
  double real;
  if (align) {
    real = out > 1 ? double(in - 1) / double(out - 1) * double(d) : 0.0;
  } else {
    const double ratio = scale > 0 ? 1.0 / scale : double(in) / double(out);
    real = std::max(0.0, ratio * (double(d) + 0.5) - 0.5);
  }
  i0 = std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(real)), in - 1);
  i1 = std::min(i0 + 1, in - 1);
  lambda = std::clamp(real - double(i0), 0.0, 1.0);
}

// scale <= 0: derived from the sizes.
Tensor ref_upsample(const Tensor& x, Size2 out, std::array<double, 2> scale, bool nearest, bool align) {
  const auto X = x.to_vector<double>();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  std::vector<double> Y;
  for (std::int64_t pl = 0; pl < N * C; ++pl)
    for (std::int64_t i = 0; i < out[0]; ++i)
      for (std::int64_t j = 0; j < out[1]; ++j) {
        auto at = [&](std::int64_t h, std::int64_t v) { return X[(pl * H + h) * W + v]; };
        if (nearest) {
          Y.push_back(at(ref_nearest_source(i, H, out[0], scale[0]), ref_nearest_source(j, W, out[1], scale[1])));
          continue;
        }
        std::int64_t h0, h1, v0, v1;
        double lh, lw;
        ref_linear_source(i, H, out[0], scale[0], align, h0, h1, lh);
        ref_linear_source(j, W, out[1], scale[1], align, v0, v1, lw);
        Y.push_back((1 - lh) * ((1 - lw) * at(h0, v0) + lw * at(h0, v1)) + lh * ((1 - lw) * at(h1, v0) + lw * at(h1, v1)));
      }
  return from_vector(Y, Shape{N, C, out[0], out[1]});
}

// ---- configurations ------------------------------------------------------------------------------------------

struct ConvCase {
  Shape x;
  std::int64_t out_channels;
  Size2 kernel;
  ops::Conv2dOptions opt;
  bool bias;
};

std::string describe(const ConvCase& c) {
  return fmt::format("x {} O {} k [{}, {}] stride [{}, {}] pad [{}, {}] dil [{}, {}] groups {} bias {}", c.x, c.out_channels,
                     c.kernel[0], c.kernel[1], c.opt.stride[0], c.opt.stride[1], c.opt.padding[0], c.opt.padding[1],
                     c.opt.dilation[0], c.opt.dilation[1], c.opt.groups, c.bias);
}

// Covers the direct path (few taps, unit width stride), the im2col + GEMM path, the pointwise path,
// groups (incl. depthwise), strides, dilations, paddings beyond the kernel, odd and 1-pixel sizes.
const ConvCase kConvCases[] = {
    {{1, 1, 7, 7}, 2, {3, 3}, {{1, 1}, {0, 0}, {1, 1}, 1}, true},      // direct, single vector
    {{3, 4, 17, 9}, 6, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 2}, true},     // GEMM, groups 2, stride 2
    {{2, 4, 7, 7}, 4, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 4}, false},     // depthwise (direct)
    {{2, 8, 9, 11}, 8, {5, 3}, {{1, 1}, {2, 2}, {2, 2}, 4}, true},     // direct, 30 taps, dilation 2
    {{3, 3, 17, 17}, 5, {1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1}, true},    // pointwise (x read in place)
    {{1, 6, 1, 1}, 4, {1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1}, false},     // 1x1 image, pointwise
    {{1, 6, 1, 1}, 3, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},      // 1x1 image, padded 3x3
    {{2, 3, 7, 5}, 4, {3, 3}, {{1, 1}, {2, 2}, {1, 1}, 1}, false},     // padding 2
    {{1, 2, 7, 7}, 3, {3, 3}, {{2, 2}, {4, 3}, {1, 1}, 1}, true},      // padding larger than the kernel
    {{3, 5, 17, 7}, 4, {5, 3}, {{2, 1}, {1, 2}, {1, 2}, 1}, true},     // GEMM (75 taps), mixed stride/dilation
    {{2, 12, 9, 9}, 6, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 2}, true},     // GEMM, groups 2
    {{1, 1, 28, 28}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},    // the CNN's first layer (2 vectors per row)
    {{1, 2, 5, 40}, 5, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},    // direct, 3 vectors per row (f32)
    {{2, 16, 8, 8}, 5, {1, 1}, {{2, 2}, {0, 0}, {1, 1}, 1}, true},     // strided 1x1 (GEMM path)
    {{1, 4, 6, 6}, 2, {2, 2}, {{1, 2}, {0, 0}, {2, 1}, 1}, false},     // even kernel, stride 2 along the width
    {{2, 1, 9, 9}, 3, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},      // one channel, stride 2 (GEMM, 9 taps)
    {{1, 3, 7, 17}, 4, {7, 7}, {{1, 1}, {3, 3}, {1, 1}, 1}, true},     // large kernel (147 taps)
    // Winograd: odd output sizes (partial tiles), channel counts not multiples of 8, asymmetric
    // and larger paddings, rows longer than two vectors, a single image (split by output channels).
    {{3, 9, 11, 13}, 13, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{2, 8, 10, 9}, 16, {3, 3}, {{1, 1}, {0, 2}, {1, 1}, 1}, false},
    {{1, 10, 12, 12}, 9, {3, 3}, {{1, 1}, {2, 1}, {1, 1}, 1}, true},
    {{1, 8, 5, 40}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    // Winograd F(4x4, 3x3) (the larger planes): a UNet's 28 x 28 level, odd sizes (partial 4x4
    // tiles: 1, 2 and 3 leftover rows and columns), asymmetric padding, rows longer than four
    // vectors (the 4-way column split and merge tails), a single image split by channels.
    {{2, 16, 28, 28}, 12, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{1, 9, 23, 17}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    {{2, 8, 18, 21}, 9, {3, 3}, {{1, 1}, {0, 2}, {1, 1}, 1}, true},
    {{1, 8, 9, 70}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{1, 12, 30, 26}, 17, {3, 3}, {{1, 1}, {2, 3}, {1, 1}, 1}, false},
    // Winograd F(2x2, 3x3), where F(4x4)'s tiles would be mostly padding (outputs two rows high):
    // phase planes, and tiles of several images side by side.
    {{1, 8, 2, 25}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{3, 9, 2, 14}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    // Winograd on small planes, the tiles of several images side by side (gathered, copied out by rows):
    // 7 x 7 with a partial last group, odd sizes, asymmetric padding, a single group split by
    // output channels.
    {{2, 9, 6, 7}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{5, 8, 7, 7}, 16, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{4, 9, 9, 10}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    {{3, 8, 8, 8}, 8, {3, 3}, {{1, 1}, {2, 1}, {1, 1}, 1}, true},
    {{7, 10, 7, 6}, 9, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    // More images than a group (12 of 7 x 7, 6 of 2 x 14): the weights are transformed once for
    // all groups instead of block by block in each group's task.
    {{13, 8, 7, 7}, 9, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{7, 8, 2, 14}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    // Strided implicit GEMM on phase planes: the UNet's down-sampling shapes (even and odd sizes),
    // odd padding (the column phases swap), no padding, stride 3 (scalar phase split), a stride
    // along one axis only, stride with dilation, rows longer than two vectors, groups.
    {{2, 9, 14, 14}, 10, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},
    {{1, 8, 13, 15}, 9, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, false},
    {{1, 6, 11, 12}, 7, {3, 3}, {{2, 2}, {2, 3}, {1, 1}, 1}, true},
    {{2, 5, 10, 9}, 4, {3, 3}, {{2, 2}, {0, 0}, {1, 1}, 1}, true},
    {{1, 4, 13, 14}, 5, {4, 5}, {{3, 3}, {1, 2}, {1, 1}, 1}, true},
    {{1, 6, 9, 10}, 4, {3, 3}, {{2, 1}, {1, 1}, {1, 1}, 1}, false},
    {{1, 6, 9, 41}, 4, {3, 3}, {{1, 2}, {1, 1}, {1, 1}, 1}, true},
    {{1, 5, 12, 12}, 4, {3, 3}, {{2, 2}, {2, 2}, {2, 2}, 1}, true},
    {{2, 8, 12, 11}, 6, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 2}, true},
    // Row tiles (output rows of 4 to 8, channels along the vectors): 7 x 7 as in a UNet's bottom,
    // 48 channels (a 2-vector and a 1-vector block), rows of 4 and 8, strided, groups.
    {{2, 6, 7, 7}, 32, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{1, 5, 6, 4}, 48, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
    {{1, 4, 8, 8}, 32, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},
    {{2, 6, 14, 13}, 32, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},
    {{1, 8, 5, 7}, 64, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 2}, true},
};

Tensor conv_input(const ConvCase& c, DType dt, std::uint64_t seed) { return test::randn(c.x, dt, seed); }
Tensor conv_weight(const ConvCase& c, DType dt, std::uint64_t seed) {
  return test::randn({c.out_channels, c.x[1] / c.opt.groups, c.kernel[0], c.kernel[1]}, dt, seed);
}
Tensor conv_bias(const ConvCase& c, DType dt, std::uint64_t seed) {
  return c.bias ? test::randn({c.out_channels}, dt, seed) : Tensor();
}

double dot(const Tensor& a, const Tensor& b) { return ops::sum(ops::mul(a, b)).item<double>(); }

}  // namespace

// ---- conv2d ------------------------------------------------------------------------------------------------------

TEST_CASE("conv2d: forward matches the naive loop for every configuration", "[ops][conv]") {
  for (const ConvCase& c : kConvCases) {
    INFO(describe(c));
    const Tensor x = conv_input(c, DType::f64, 1), w = conv_weight(c, DType::f64, 2), b = conv_bias(c, DType::f64, 3);
    const Tensor want = ref_conv2d(x, w, b, c.opt);
    CHECK_ALLCLOSE(ops::conv2d(x, w, b, c.opt), want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::conv2d(test::transposed_layout(x), test::strided_layout(w), b, c.opt), want, 1e-12, 1e-12);
    const Tensor b32 = b.defined() ? b.to(DType::f32) : Tensor();
    CHECK_ALLCLOSE(ops::conv2d(x.to(DType::f32), w.to(DType::f32), b32, c.opt), want, 1e-4, 1e-4);
  }
}

TEST_CASE("conv2d: gradients match the naive loops, f32 and f64, several chunks", "[ops][conv]") {
  // Batches large enough for several reduction groups and GEMM chunks of several images.
  const ConvCase cases[] = {
      {{19, 3, 10, 12}, 5, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // direct weight gradient
      {{21, 32, 12, 12}, 4, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},  // GEMM, several images per chunk
      {{11, 6, 9, 7}, 6, {3, 3}, {{2, 1}, {1, 1}, {1, 1}, 3}, true},     // GEMM, groups 3
      {{9, 8, 6, 6}, 4, {1, 1}, {{1, 1}, {0, 0}, {1, 1}, 2}, false},     // pointwise, groups 2
      {{10, 5, 7, 9}, 6, {1, 1}, {{1, 1}, {0, 0}, {2, 2}, 1}, true},     // pointwise (GEMM per image), bias
      {{5, 2, 9, 9}, 3, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},      // few taps but stride 2 (im2col forward)
      {{4, 5, 11, 10}, 20, {3, 3}, {{2, 2}, {2, 1}, {2, 2}, 1}, true},   // stride and dilation 2, 20 channels
      {{3, 4, 8, 8}, 3, {3, 3}, {{1, 1}, {3, 3}, {1, 1}, 1}, true},      // padding beyond the kernel (im2col input grad)
      {{5, 9, 11, 10}, 12, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // Winograd forward and input grad
      {{2, 16, 14, 14}, 24, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false}, // Winograd, images split by channels
      {{5, 12, 28, 28}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},  // Winograd F(4x4) forward and input grad
      {{2, 9, 19, 22}, 16, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},  // F(4x4), partial tiles, split by channels
      {{7, 16, 7, 7}, 12, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},    // Winograd, several images side by side
      {{4, 8, 2, 25}, 9, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},     // Winograd F(2x2) (two-row outputs)
      {{5, 10, 2, 14}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},   // F(2x2), images side by side
      // Strided input gradients, phase plane by phase plane: down-sampling (even and odd sizes),
      // odd padding, no padding, stride 3 with an uneven kernel, phases without taps (1x1 and
      // 2x2 kernels at stride 3), stride along one axis, stride with dilation, groups.
      {{3, 10, 14, 14}, 9, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},
      {{2, 8, 13, 15}, 11, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, false},
      {{2, 6, 11, 12}, 7, {3, 3}, {{2, 2}, {2, 3}, {1, 1}, 1}, true},
      {{3, 5, 10, 9}, 4, {3, 3}, {{2, 2}, {0, 0}, {1, 1}, 1}, true},
      {{2, 4, 13, 14}, 5, {4, 5}, {{3, 3}, {1, 2}, {1, 1}, 1}, true},
      {{2, 6, 10, 11}, 5, {1, 1}, {{2, 2}, {0, 0}, {1, 1}, 1}, false},
      {{2, 3, 11, 10}, 4, {2, 2}, {{3, 3}, {1, 0}, {1, 1}, 1}, true},
      {{2, 6, 9, 41}, 4, {3, 3}, {{1, 2}, {1, 1}, {1, 1}, 1}, true},
      {{2, 5, 12, 12}, 4, {3, 3}, {{2, 2}, {2, 2}, {2, 2}, 1}, true},
      {{3, 8, 12, 11}, 6, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 2}, true},
      {{3, 6, 7, 7}, 32, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},  // row tiles (forward, input gradient)
      {{2, 32, 12, 10}, 8, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true}, // strided input gradient, row tiles per phase
      {{2, 32, 7, 6}, 48, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},
  };
  for (const ConvCase& c : cases) {
    INFO(describe(c));
    for (DType dt : {DType::f64, DType::f32}) {
      INFO(dtype_name(dt));
      const double tol = dt == DType::f64 ? 1e-11 : 2e-4;
      Tensor x = conv_input(c, dt, 4).requires_grad_(), w = conv_weight(c, dt, 5).requires_grad_();
      Tensor b = c.bias ? conv_bias(c, dt, 6).requires_grad_() : Tensor();
      const Tensor y = ops::conv2d(x, w, b, c.opt);
      const Tensor gy = test::randn(y.shape(), dt, 7);
      y.backward(gy);
      ConvGrads want;
      CHECK_ALLCLOSE(y, ref_conv2d(x.detach(), w.detach(), b.defined() ? b.detach() : Tensor(), c.opt, gy, &want), tol, tol);
      CHECK_ALLCLOSE(x.grad(), want.gx, tol, tol);
      CHECK_ALLCLOSE(w.grad(), want.gw, tol, tol * 10);
      if (c.bias) CHECK_ALLCLOSE(b.grad(), want.gb, tol, tol * 10);
    }
  }
}

TEST_CASE("conv2d: gradcheck", "[ops][conv][grad][conv2d]") {
  for (const ConvCase& c : kConvCases) {
    if (c.x.numel() > 320) continue;  // finite differences: two forwards per input element
    INFO(describe(c));
    const Tensor x = conv_input(c, DType::f64, 8), w = conv_weight(c, DType::f64, 9);
    if (c.bias) {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv2d(v[0], v[1], v[2], c.opt); },
                      {test::transposed_layout(x), w, test::strided_layout(conv_bias(c, DType::f64, 10))});
    } else {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv2d(v[0], v[1], {}, c.opt); }, {x, test::strided_layout(w)});
    }
  }
  // Small cases for the paths the table only checks forward: groups, depthwise, dilation, the
  // implicit GEMM (more than 32 taps, unit stride) and strided weight gradients.
  const ConvCase small[] = {
      {{1, 4, 5, 5}, 4, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 4}, true},   // depthwise
      {{1, 4, 7, 6}, 6, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 2}, true},   // groups 2, stride 2
      {{1, 2, 9, 8}, 2, {3, 3}, {{1, 1}, {2, 2}, {2, 2}, 1}, false},  // dilation 2
      {{1, 6, 6, 6}, 4, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // implicit GEMM (54 taps)
      {{2, 8, 5, 6}, 4, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 2}, false},  // implicit GEMM (36 taps), groups 2
      {{1, 7, 7, 7}, 3, {5, 3}, {{2, 1}, {1, 1}, {1, 1}, 1}, true},   // strided, 105 taps
      {{1, 8, 6, 7}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // Winograd forward and input grad
      {{1, 8, 11, 9}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false}, // Winograd F(4x4), partial tiles
      {{2, 8, 2, 14}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},  // Winograd F(2x2), images side by side
      {{2, 8, 7, 6}, 8, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // Winograd, images side by side
      {{1, 3, 7, 6}, 4, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},   // strided: phase planes
      {{1, 2, 8, 7}, 3, {2, 3}, {{3, 2}, {1, 0}, {1, 1}, 1}, false},  // stride 3 x 2, a row phase without taps
  };
  for (const ConvCase& c : small) {
    INFO(describe(c));
    const Tensor x = conv_input(c, DType::f64, 23), w = conv_weight(c, DType::f64, 24);
    if (c.bias) {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv2d(v[0], v[1], v[2], c.opt); },
                      {x, test::transposed_layout(w), conv_bias(c, DType::f64, 25)});
    } else {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv2d(v[0], v[1], {}, c.opt); }, {test::strided_layout(x), w});
    }
  }
  // Unbatched input, and a weight shared by two convolutions.
  CHECK_GRADCHECK([](const Tensors& v) { return ops::conv2d(ops::conv2d(v[0], v[1], {}, {{1, 1}, {1, 1}}), v[1]); },
                  {test::randn({2, 5, 6}, DType::f64, 11), test::randn({2, 2, 3, 3}, DType::f64, 12)});
}

TEST_CASE("conv2d: computes only the gradients asked for", "[ops][conv]") {
  const Tensor x = test::randn({2, 1, 9, 9}, DType::f64, 13);
  Tensor w = test::randn({3, 1, 3, 3}, DType::f64, 14).requires_grad_();
  Tensor b = test::randn({3}, DType::f64, 15).requires_grad_();
  ops::sum(ops::conv2d(x, w, b, {{1, 1}, {1, 1}})).backward();  // x needs no gradient (the CNN's conv1)
  CHECK(w.grad().defined());
  CHECK(b.grad().defined());
  ConvGrads want;
  const Tensor y = ref_conv2d(x, w.detach(), b.detach(), {{1, 1}, {1, 1}}, ones({2, 3, 9, 9}, DType::f64), &want);
  CHECK_ALLCLOSE(w.grad(), want.gw, 1e-12, 1e-12);
  CHECK_ALLCLOSE(b.grad(), want.gb, 1e-12, 1e-12);
  // Gradient with respect to the input only, and with respect to the bias only.
  Tensor xr = x.detach().requires_grad_();
  const Tensor gx = autograd::grad({ops::sum(ops::conv2d(xr, w, b, {{1, 1}, {1, 1}}))}, {xr})[0];
  CHECK_ALLCLOSE(gx, want.gx, 1e-12, 1e-12);
  const Tensor gb = autograd::grad({ops::sum(ops::conv2d(xr, w, b, {{1, 1}, {1, 1}}))}, {b})[0];
  CHECK_ALLCLOSE(gb, want.gb, 1e-12, 1e-12);
  (void)y;
}

// ---- conv_transpose2d -------------------------------------------------------------------------------------------

namespace {
struct TransposeCase {
  Shape x;
  std::int64_t out_channels;
  Size2 kernel;
  ops::ConvTranspose2dOptions opt;
  bool bias;
};
const TransposeCase kTransposeCases[] = {
    {{1, 2, 4, 5}, 3, {3, 3}, {{1, 1}, {0, 0}, {0, 0}, {1, 1}, 1}, true},
    {{2, 4, 5, 3}, 2, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, {1, 1}, 2}, true},
    {{1, 3, 3, 4}, 2, {4, 4}, {{2, 2}, {1, 1}, {0, 0}, {1, 1}, 1}, false},  // the usual 2x upsampling layer
    {{2, 2, 3, 3}, 4, {3, 2}, {{1, 2}, {2, 0}, {0, 1}, {2, 1}, 2}, true},   // dilation, mixed
    {{1, 4, 1, 1}, 4, {3, 3}, {{2, 2}, {0, 0}, {1, 1}, {1, 1}, 4}, false},  // depthwise, 1x1 input
    {{1, 1, 7, 17}, 2, {1, 1}, {{1, 1}, {0, 0}, {0, 0}, {1, 1}, 1}, true},  // pointwise
    {{2, 1, 4, 4}, 8, {3, 3}, {{1, 1}, {1, 1}, {0, 0}, {1, 1}, 1}, true},   // its adjoint conv has 8 channels x 9 taps
    {{1, 2, 3, 3}, 2, {3, 3}, {{1, 1}, {0, 0}, {1, 1}, {2, 2}, 1}, false},  // output_padding < dilation (>= stride)
    // Stride beyond the kernel: output phases no tap reaches hold just the bias.
    {{2, 3, 4, 3}, 5, {2, 2}, {{3, 3}, {0, 0}, {1, 2}, {1, 1}, 1}, true},
    {{1, 2, 3, 4}, 3, {1, 1}, {{2, 2}, {0, 0}, {0, 0}, {1, 1}, 1}, true},
    {{2, 4, 3, 2}, 6, {1, 2}, {{2, 3}, {0, 0}, {1, 0}, {1, 1}, 2}, true},  // ... each group its own bias
    {{2, 3, 6, 7}, 32, {4, 4}, {{2, 2}, {1, 1}, {0, 0}, {1, 1}, 1}, true},  // output phases of 6 x 7: row tiles
};
std::string describe(const TransposeCase& c) {
  return fmt::format("x {} O {} k [{}, {}] stride [{}, {}] pad [{}, {}] out_pad [{}, {}] dil [{}, {}] groups {}", c.x,
                     c.out_channels, c.kernel[0], c.kernel[1], c.opt.stride[0], c.opt.stride[1], c.opt.padding[0],
                     c.opt.padding[1], c.opt.output_padding[0], c.opt.output_padding[1], c.opt.dilation[0],
                     c.opt.dilation[1], c.opt.groups);
}
}  // namespace

TEST_CASE("conv_transpose2d: forward matches the naive scatter, and is the adjoint of conv2d", "[ops][conv]") {
  for (const TransposeCase& c : kTransposeCases) {
    INFO(describe(c));
    const Tensor x = test::randn(c.x, DType::f64, 16);
    const Tensor w = test::randn({c.x[1], c.out_channels / c.opt.groups, c.kernel[0], c.kernel[1]}, DType::f64, 17);
    const Tensor b = c.bias ? test::randn({c.out_channels}, DType::f64, 18) : Tensor();
    const Tensor want = ref_conv_transpose2d(x, w, b, c.opt);
    const Tensor y = ops::conv_transpose2d(x, w, b, c.opt);
    CHECK_ALLCLOSE(y, want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::conv_transpose2d(test::strided_layout(x), test::transposed_layout(w), b, c.opt), want, 1e-12, 1e-12);
    CHECK_ALLCLOSE(ops::conv_transpose2d(x.to(DType::f32), w.to(DType::f32), b.defined() ? b.to(DType::f32) : Tensor(), c.opt),
                   want, 1e-4, 1e-4);
    // <conv2d(z, w), x> == <z, conv_transpose2d(x, w)> for z of the transposed output's shape.
    const Tensor z = test::randn(y.shape(), DType::f64, 19);
    const Tensor yt = ops::conv_transpose2d(x, w, {}, c.opt);
    const Tensor cz = ops::conv2d(z, w, {}, {c.opt.stride, c.opt.padding, c.opt.dilation, c.opt.groups});
    REQUIRE(cz.shape().size() == 4);
    // With output_padding >= stride the convolution of z is longer than x: compare on x's extent.
    const Tensor czc = cz.narrow(2, 0, c.x[2]).narrow(3, 0, c.x[3]);
    CHECK(dot(czc, x) == Approx(dot(z, yt)).epsilon(1e-10).margin(1e-9));
  }
}

TEST_CASE("conv_transpose2d: gradcheck", "[ops][conv][grad][conv_transpose2d]") {
  for (const TransposeCase& c : kTransposeCases) {
    INFO(describe(c));
    const Tensor x = test::randn(c.x, DType::f64, 20);
    const Tensor w = test::randn({c.x[1], c.out_channels / c.opt.groups, c.kernel[0], c.kernel[1]}, DType::f64, 21);
    if (c.bias) {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv_transpose2d(v[0], v[1], v[2], c.opt); },
                      {test::transposed_layout(x), w, test::randn({c.out_channels}, DType::f64, 22)});
    } else {
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::conv_transpose2d(v[0], v[1], {}, c.opt); },
                      {x, test::strided_layout(w)});
    }
  }
}

// ---- pooling ----------------------------------------------------------------------------------------------------

namespace {
struct PoolCase {
  Shape x;
  Size2 k, s, p, d;
};
const PoolCase kPoolCases[] = {
    {{2, 3, 8, 6}, {2, 2}, {2, 2}, {0, 0}, {1, 1}},   // the common 2x2 / stride 2 (fast path)
    {{1, 2, 7, 9}, {2, 2}, {2, 2}, {0, 0}, {1, 1}},   // odd sizes: the last row/column is dropped
    {{1, 2, 4, 70}, {2, 2}, {2, 2}, {0, 0}, {1, 1}},  // 35 outputs per row: full and partial vectors
    {{2, 2, 7, 7}, {3, 3}, {2, 2}, {1, 1}, {1, 1}},   // padding
    {{1, 3, 17, 5}, {3, 2}, {1, 2}, {1, 1}, {1, 1}},  // overlapping windows, non-square
    {{1, 2, 9, 9}, {3, 3}, {1, 1}, {2, 1}, {2, 1}},   // dilation
    {{3, 1, 1, 1}, {1, 1}, {1, 1}, {0, 0}, {1, 1}},   // 1x1 planes
    {{1, 1, 5, 5}, {5, 5}, {5, 5}, {2, 2}, {1, 1}},   // window bigger than half the input
};
std::string describe(const PoolCase& c) {
  return fmt::format("x {} k [{}, {}] stride [{}, {}] pad [{}, {}] dil [{}, {}]", c.x, c.k[0], c.k[1], c.s[0], c.s[1],
                     c.p[0], c.p[1], c.d[0], c.d[1]);
}
}  // namespace

TEST_CASE("pooling with ceil_mode keeps the last partial window (values from torch 1.13)", "[ops][conv]") {
  const Tensor x = arange(1, 36, 1, DType::f32).reshape({1, 1, 5, 7});
  const Tensor m2 = ops::max_pool2d(x, {2, 2}, {0, 0}, {0, 0}, {1, 1}, true);
  CHECK(m2.shape() == Shape{1, 1, 3, 4});
  CHECK(m2.to_vector<float>() == std::vector<float>{9, 11, 13, 14, 23, 25, 27, 28, 30, 32, 34, 35});
  CHECK(ops::max_pool2d(x, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true).to_vector<float>() ==
        std::vector<float>{9, 11, 13, 14, 23, 25, 27, 28, 30, 32, 34, 35});
  CHECK(ops::avg_pool2d(x, {2, 2}, {0, 0}, {0, 0}, true, true).to_vector<float>() ==
        std::vector<float>{5, 7, 9, 10.5, 19, 21, 23, 24.5, 29.5, 31.5, 33.5, 35});
  CHECK_ALLCLOSE(ops::avg_pool2d(x, {3, 3}, {2, 2}, {1, 1}, true, true),
                 tensor({2.222222328186035, 4.333333492279053, 5.666666507720947, 4.44444465637207, 10.333333015441895, 17.0,
                         19.0, 13.666666984558105, 11.55555534362793, 18.33333396911621, 19.66666603088379, 13.777777671813965},
                        {1, 1, 3, 4}),
                 1e-6, 1e-6);
  CHECK(ops::avg_pool2d(x, {3, 3}, {2, 2}, {1, 1}, false, true).to_vector<float>() ==
        std::vector<float>{5, 6.5, 8.5, 10, 15.5, 17, 19, 20.5, 26, 27.5, 29.5, 31});
  // Without ceil_mode the partial windows are dropped; a window may not start in the right padding.
  CHECK(ops::max_pool2d(x, {2, 2}).shape() == Shape{1, 1, 2, 3});
  // (5 + 2 - 2) / 2 rounds up to 3, plus 1 = 4 windows, but the 4th would start at 6 - 1 = 5: in the right padding.
  CHECK(ops::max_pool2d(arange(0, 5, 1, DType::f32).reshape({1, 1, 1, 5}), {1, 2}, {1, 2}, {0, 1}, {1, 1}, true).shape() ==
        Shape{1, 1, 1, 3});
  // An input narrower than the kernel keeps its one partial window (torch: [[5]], [[8]], [[4]]); without
  // ceil_mode there is no window.
  const Tensor one = tensor({5.0f}, {1, 1, 1, 1});
  CHECK(ops::max_pool2d(one, {2, 2}, {2, 2}, {0, 0}, {1, 1}, true).to_vector<float>() == std::vector<float>{5});
  CHECK(ops::avg_pool2d(one, {2, 2}, {2, 2}, {0, 0}, true, true).to_vector<float>() == std::vector<float>{5});
  const Tensor x9 = arange(0, 9, 1, DType::f32).reshape({1, 1, 3, 3});
  CHECK(ops::max_pool2d(x9, {4, 4}, {4, 4}, {0, 0}, {1, 1}, true).to_vector<float>() == std::vector<float>{8});
  CHECK(ops::avg_pool2d(x9, {4, 4}, {4, 4}, {0, 0}, true, true).to_vector<float>() == std::vector<float>{4});
  CHECK_THROWS_WITH(ops::max_pool2d(one, {2, 2}), Catch::Contains("smaller than the kernel extent 2"));
  // Kernel 4, stride 1 on 1 element: the rounded-up count is still 0 windows.
  CHECK_THROWS_WITH(ops::max_pool2d(one, {4, 4}, {1, 1}, {0, 0}, {1, 1}, true), Catch::Contains("output would be empty"));
  const Tensor xd = test::randn({2, 3, 7, 9}, DType::f64, 70);
  CHECK_GRADCHECK([](const Tensors& v) { return ops::max_pool2d(v[0], {3, 2}, {2, 2}, {1, 0}, {1, 1}, true); }, {xd});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::max_pool2d(v[0], {5, 4}, {3, 4}, {0, 0}, {1, 1}, true); },
                  {test::randn({1, 2, 3, 2}, DType::f64, 71)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::avg_pool2d(v[0], {5, 4}, {3, 4}, {0, 0}, true, true); },
                  {test::randn({1, 2, 3, 2}, DType::f64, 72)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::avg_pool2d(v[0], {3, 3}, {2, 2}, {1, 1}, false, true); }, {xd});
}

TEST_CASE("max_pool2d: forward and gradient match the naive loops", "[ops][conv]") {
  for (const PoolCase& c : kPoolCases) {
    INFO(describe(c));
    for (DType dt : {DType::f64, DType::f32}) {
      // Rounded values: many ties, so the first-maximum rule is exercised.
      Tensor x = ops::round(ops::mul(test::randn(c.x, dt, 23), 2.0)).detach().requires_grad_();
      const Tensor y = ops::max_pool2d(x, c.k, c.s, c.p, c.d);
      const Tensor gy = test::randn(y.shape(), dt, 24);
      y.backward(gy);
      Tensor want_gx;
      CHECK_ALLCLOSE(y, ref_max_pool2d(x.detach(), c.k, c.s, c.p, c.d, gy, &want_gx), 0, 0);
      CHECK_ALLCLOSE(x.grad(), want_gx, 1e-6, 1e-6);
      CHECK_ALLCLOSE(ops::max_pool2d(test::transposed_layout(x.detach()), c.k, c.s, c.p, c.d), y, 0, 0);
    }
  }
  // PyTorch 1.13: F.max_pool2d(x, 2, stride=1) and its gradient for ones, with ties.
  Tensor x = tensor({1, 1, 0, 2, 5, 1, 1, 2, 0, 5, 3, -1, 4, 4, 5}, {1, 1, 3, 5}, DType::f64).requires_grad_();
  const Tensor y = ops::max_pool2d(x, {2, 2}, {1, 1});
  y.backward(ones_like(y));
  CHECK(y.to_vector<double>() == std::vector<double>{1, 2, 2, 5, 3, 4, 4, 5});
  CHECK(x.grad().to_vector<double>() == std::vector<double>{1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 2, 0, 0});
  // Padding never wins, even against -inf and negative values; NaN propagates.
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(ops::max_pool2d(tensor({-inf, -5, -7, -1}, {1, 1, 2, 2}, DType::f64), {3, 3}, {2, 2}, {1, 1}).item<double>() == -1);
  CHECK(std::isnan(ops::max_pool2d(tensor({1, NAN, 3, 2}, {1, 2, 2}), {2, 2}).item<double>()));
  CHECK(std::isnan(ops::max_pool2d(tensor({1, NAN, 3, 2, 0, 0}, {1, 2, 3}), {2, 3}, {1, 1}).item<double>()));
}

TEST_CASE("max_pool2d: gradcheck", "[ops][conv][grad][max_pool2d]") {
  for (const PoolCase& c : kPoolCases) {
    INFO(describe(c));
    // Distinct values, so finite differences do not cross a tie.
    const Tensor x = ops::mul(test::uniform(c.x, 0, 1, DType::f64, 25), 1.0);
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::max_pool2d(v[0], c.k, c.s, c.p, c.d); }, {test::transposed_layout(x)});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::max_pool2d(v[0], {2, 2}); }, {test::strided_layout(test::randn({3, 7, 4}, DType::f64, 26))});
}

TEST_CASE("avg_pool2d, adaptive_avg_pool2d, global_avg_pool2d: forward matches the naive loops", "[ops][conv]") {
  for (const PoolCase& c : kPoolCases) {
    if (c.d[0] != 1 || c.d[1] != 1 || c.p[0] > c.k[0] / 2 || c.p[1] > c.k[1] / 2) continue;
    INFO(describe(c));
    const Tensor x = test::randn(c.x, DType::f64, 27);
    for (bool include : {true, false}) {
      INFO("count_include_pad " << include);
      CHECK_ALLCLOSE(ops::avg_pool2d(x, c.k, c.s, c.p, include), ref_avg_pool2d(x, c.k, c.s, c.p, include), 1e-12, 1e-12);
      CHECK_ALLCLOSE(ops::avg_pool2d(x.to(DType::f32), c.k, c.s, c.p, include), ref_avg_pool2d(x, c.k, c.s, c.p, include), 1e-5, 1e-5);
    }
  }
  // PyTorch: 3x3 windows, stride 2, padding 1 on 5x5: corners average 4 (or 9 with padding) elements.
  const Tensor x = arange(0.0, 25.0, 1.0, DType::f64).reshape({1, 1, 5, 5});
  CHECK(ops::avg_pool2d(x, {3, 3}, {2, 2}, {1, 1}, false).at<double>({0, 0, 0, 0}) == Approx(3.0));
  CHECK(ops::avg_pool2d(x, {3, 3}, {2, 2}, {1, 1}, true).at<double>({0, 0, 0, 0}) == Approx(12.0 / 9.0));
  const Shape adaptive_inputs[] = {{2, 3, 7, 9}, {1, 1, 4, 4}, {1, 2, 1, 5}};
  const Size2 adaptive_outputs[] = {{1, 1}, {3, 2}, {5, 5}, {4, 4}, {2, 7}};
  for (const Shape& s : adaptive_inputs)
    for (const Size2& o : adaptive_outputs) {
      INFO(fmt::format("adaptive {} -> [{}, {}]", s, o[0], o[1]));
      const Tensor xa = test::randn(s, DType::f64, 28);
      CHECK_ALLCLOSE(ops::adaptive_avg_pool2d(xa, o), ref_adaptive_avg_pool2d(xa, o), 1e-12, 1e-12);
    }
  const Tensor xg = test::randn({3, 4, 5, 7}, DType::f64, 29);
  CHECK_ALLCLOSE(ops::global_avg_pool2d(xg), ref_adaptive_avg_pool2d(xg, {1, 1}).reshape({3, 4}), 1e-12, 1e-12);
  CHECK(ops::global_avg_pool2d(xg, true).shape() == Shape{3, 4, 1, 1});
  CHECK(ops::global_avg_pool2d(xg.select(0, 1)).shape() == Shape{4});
}

TEST_CASE("avg_pool2d: gradcheck", "[ops][conv][grad][avg_pool2d][adaptive_avg_pool2d]") {
  for (const PoolCase& c : kPoolCases) {
    if (c.d[0] != 1 || c.d[1] != 1 || c.p[0] > c.k[0] / 2 || c.p[1] > c.k[1] / 2) continue;
    INFO(describe(c));
    for (bool include : {true, false})
      CHECK_GRADCHECK([&](const Tensors& v) { return ops::avg_pool2d(v[0], c.k, c.s, c.p, include); },
                      {test::transposed_layout(test::randn(c.x, DType::f64, 30))});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::adaptive_avg_pool2d(v[0], {3, 4}); },
                  {test::strided_layout(test::randn({2, 2, 7, 5}, DType::f64, 31))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::adaptive_avg_pool2d(v[0], {5, 5}); }, {test::randn({1, 2, 4, 3}, DType::f64, 32)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::global_avg_pool2d(v[0]); }, {test::transposed_layout(test::randn({2, 3, 5, 4}, DType::f64, 33))});
}

// ---- upsampling -------------------------------------------------------------------------------------------------

TEST_CASE("upsample: PyTorch's nearest and bilinear rules", "[ops][conv]") {
  // Golden values: F.interpolate(torch.arange(12.).reshape(1, 1, 3, 4) ** 1.5, ...) in PyTorch 1.13.
  const Tensor x = ops::pow(arange(0.0, 12.0, 1.0, DType::f64).reshape({1, 1, 3, 4}), 1.5);
  using M = ops::UpsampleMode;
  auto up_size = [&](Size2 s, M m, bool align) {
    ops::UpsampleOptions o;
    o.size = s;
    o.mode = m;
    o.align_corners = align;
    return ops::upsample(x, o);
  };
  auto near = [](const Tensor& t, const std::vector<double>& want) {
    const auto got = t.to_vector<double>();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-9).margin(1e-9));
  };
  near(up_size({2, 3}, M::nearest, false), {0.0, 1.0, 2.8284271247, 8.0, 11.1803398875, 14.6969384567});
  const Tensor n17 = ops::upsample(x, 1.7);
  CHECK(n17.shape() == Shape{1, 1, 5, 6});
  near(n17.select(2, 4), {22.627416998, 22.627416998, 27.0, 27.0, 31.6227766017, 31.6227766017});
  near(up_size({5, 7}, M::nearest, false).select(2, 2), {8.0, 8.0, 11.1803398875, 11.1803398875, 14.6969384567, 14.6969384567, 18.5202591775});
  near(up_size({5, 7}, M::bilinear, false).select(2, 1),
       {3.2, 3.8686199839, 4.9384119582, 6.3239838063, 7.7865433337, 9.4722367435, 10.5257951246});
  near(up_size({5, 7}, M::bilinear, true).select(2, 3),
       {15.313708499, 17.2019392214, 19.0901699437, 21.1250137365, 23.1598575292, 25.3307117324, 27.5015659357});
  near(up_size({2, 3}, M::bilinear, false), {2.257514162, 4.6703199648, 8.0719084191, 19.6496497857, 25.2182010187, 31.2254022732});
  Tensor xg = x.detach().requires_grad_();
  const Tensor b17 = ops::upsample(xg, 1.7, M::bilinear);
  near(b17.select(2, 1), {3.0588235294, 3.7599285822, 4.8385517403, 6.2749589097, 7.7964280001, 9.5165906407});
  b17.backward(arange(0.0, 30.0, 1.0, DType::f64).reshape(b17.shape()));
  near(xg.grad(), {7.7993079585, 13.2889273356, 17.3650519031, 10.6055363322, 37.2551903114, 45.8027681661, 48.1885813149,
                   26.9593425606, 57.151384083, 66.7906574394, 67.0934256055, 36.6998269896});
}

TEST_CASE("upsample: forward matches the naive loops", "[ops][conv]") {
  struct Case {
    Shape x;
    Size2 out;
    std::array<double, 2> scale;  // > 0: given as scale factors (out = floor(in * scale))
  };
  const Case cases[] = {
      {{2, 3, 4, 5}, {8, 10}, {2, 2}},   {{1, 2, 3, 4}, {5, 7}, {0, 0}},  {{1, 1, 7, 8}, {2, 3}, {0, 0}},
      {{1, 2, 5, 5}, {7, 7}, {1.5, 1.5}}, {{2, 1, 1, 1}, {3, 2}, {0, 0}}, {{1, 1, 17, 7}, {17, 21}, {1, 3}},
      {{1, 2, 6, 6}, {1, 1}, {0, 0}},    {{1, 1, 3, 9}, {10, 9}, {3.5, 1}},
  };
  for (const Case& c : cases) {
    const Tensor x = test::randn(c.x, DType::f64, 34);
    for (auto mode : {ops::UpsampleMode::nearest, ops::UpsampleMode::bilinear})
      for (bool align : {false, true}) {
        const bool nearest = mode == ops::UpsampleMode::nearest;
        if (nearest && align) continue;
        INFO(fmt::format("x {} -> [{}, {}] scale [{}, {}] {} align {}", c.x, c.out[0], c.out[1], c.scale[0], c.scale[1],
                         nearest ? "nearest" : "bilinear", align));
        ops::UpsampleOptions o;
        if (c.scale[0] > 0) {
          o.scale = c.scale;
        } else {
          o.size = c.out;
        }
        o.mode = mode;
        o.align_corners = align;
        const Tensor want = ref_upsample(x, c.out, c.scale, nearest, align);
        CHECK_ALLCLOSE(ops::upsample(x, o), want, 1e-12, 1e-12);
        CHECK_ALLCLOSE(ops::upsample(test::transposed_layout(x.to(DType::f32)), o), want, 1e-5, 1e-5);
      }
  }
}

TEST_CASE("upsample: gradcheck", "[ops][conv][grad][upsample_nearest2d][upsample_bilinear2d]") {
  const Tensor x = test::randn({2, 2, 3, 4}, DType::f64, 35);
  for (bool align : {false, true}) {
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::upsample(v[0], {.size = Size2{5, 7}, .mode = ops::UpsampleMode::bilinear, .align_corners = align}); },
                    {test::transposed_layout(x)});
    CHECK_GRADCHECK([&](const Tensors& v) { return ops::upsample(v[0], {.size = Size2{2, 3}, .mode = ops::UpsampleMode::bilinear, .align_corners = align}); },
                    {x});
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::upsample(v[0], 1.7, ops::UpsampleMode::bilinear); }, {test::strided_layout(x)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::upsample(v[0], 2.0); }, {test::transposed_layout(x)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::upsample(v[0], {.size = Size2{5, 3}}); }, {x});  // up and down
}

// ---- upsample_conv2d ------------------------------------------------------------------------------------------

namespace {

struct UpConvCase {
  Shape x;
  std::int64_t out_channels;
  Size2 kernel, padding;
  bool bias;
};

// The UNet's up-sampling layer (3x3, padding 1), other paddings (odd output sizes), 1x1, even and
// non-square kernels, 1-pixel images, odd sizes, and channel counts that are not multiples of 8.
const UpConvCase kUpConvCases[] = {
    {{2, 5, 7, 6}, 9, {3, 3}, {1, 1}, true},  {{1, 4, 5, 5}, 3, {3, 3}, {0, 0}, false},
    {{2, 3, 4, 6}, 5, {3, 3}, {2, 2}, true},  {{3, 6, 5, 4}, 4, {1, 1}, {0, 0}, true},
    {{1, 3, 6, 5}, 2, {2, 2}, {1, 0}, false}, {{2, 4, 5, 7}, 6, {5, 3}, {2, 1}, true},
    {{1, 2, 1, 1}, 3, {3, 3}, {1, 1}, true},  {{2, 16, 14, 14}, 24, {3, 3}, {1, 1}, true},
    {{2, 8, 7, 6}, 32, {3, 3}, {1, 1}, true},  // phase planes of 7 x 6: row tiles
};

std::string describe(const UpConvCase& c) {
  return fmt::format("x {} O {} k [{}, {}] pad [{}, {}] bias {}", c.x, c.out_channels, c.kernel[0], c.kernel[1], c.padding[0],
                     c.padding[1], c.bias);
}

}  // namespace

TEST_CASE("upsample_conv2d: equals conv2d(upsample(x)) forward and backward", "[ops][conv]") {
  for (const UpConvCase& c : kUpConvCases) {
    INFO(describe(c));
    for (DType dt : {DType::f64, DType::f32}) {
      INFO(dtype_name(dt));
      const double tol = dt == DType::f64 ? 1e-11 : 2e-4;
      Tensor x = test::randn(c.x, dt, 51).requires_grad_();
      Tensor w = test::randn({c.out_channels, c.x[1], c.kernel[0], c.kernel[1]}, dt, 52).requires_grad_();
      Tensor b = c.bias ? test::randn({c.out_channels}, dt, 53).requires_grad_() : Tensor();
      // Reference: the composition, in f64 (its ops are checked against naive loops above).
      Tensor x64 = x.detach().to(DType::f64).requires_grad_(), w64 = w.detach().to(DType::f64).requires_grad_();
      Tensor b64 = c.bias ? b.detach().to(DType::f64).requires_grad_() : Tensor();
      const Tensor want = ops::conv2d(ops::upsample(x64, 2.0), w64, b64, {.padding = c.padding});
      const Tensor y = ops::upsample_conv2d(x, w, b, c.padding);
      REQUIRE(y.shape() == want.shape());
      CHECK_ALLCLOSE(y, want, tol, tol);
      const Tensor gy = test::randn(y.shape(), DType::f64, 54);
      want.backward(gy);
      y.backward(gy.to(dt));
      CHECK_ALLCLOSE(x.grad(), x64.grad(), tol, tol);
      CHECK_ALLCLOSE(w.grad(), w64.grad(), tol, tol * 10);
      if (c.bias) CHECK_ALLCLOSE(b.grad(), b64.grad(), tol, tol * 10);
    }
  }
  // Unbatched input and non-contiguous operands.
  const Tensor x = test::randn({3, 5, 4}, DType::f64, 55), w = test::randn({2, 3, 3, 3}, DType::f64, 56);
  CHECK_ALLCLOSE(ops::upsample_conv2d(test::transposed_layout(x), test::strided_layout(w), {}, {1, 1}),
                 ops::conv2d(ops::upsample(x.unsqueeze(0), 2.0), w, {}, {.padding = {1, 1}}).squeeze(0), 1e-12, 1e-12);
}

TEST_CASE("upsample_conv2d: gradcheck", "[ops][conv][grad][upsample_conv2d]") {
  const Tensor x = test::randn({2, 3, 3, 4}, DType::f64, 57), w = test::randn({2, 3, 3, 3}, DType::f64, 58);
  const Tensor b = test::randn({2}, DType::f64, 59);
  CHECK_GRADCHECK([](const Tensors& v) { return ops::upsample_conv2d(v[0], v[1], v[2], {1, 1}); },
                  {test::transposed_layout(x), test::strided_layout(w), b});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::upsample_conv2d(v[0], v[1], {}, {0, 1}); },
                  {x, test::randn({3, 3, 2, 3}, DType::f64, 60)});
}

TEST_CASE("upsample_conv2d: clear errors for bad arguments", "[ops][conv][errors]") {
  const Tensor x = zeros({2, 4, 5, 5}), w = zeros({3, 4, 3, 3});
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, zeros({3, 2, 3, 3})),
                    Contains("upsample_conv2d: weight of shape [3, 2, 3, 3] expects 2 input channels (dim 1), but x of shape [2, 4, 5, 5] has 4"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, w, {}, {3, 1}),
                    Contains("upsample_conv2d: padding [3, 1] must be at most the kernel size - 1 ([2, 2])"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, w, {}, {-1, 0}), Contains("upsample_conv2d: padding must be non-negative"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(zeros({4, 5}), w), Contains("upsample_conv2d: expected x of shape [N, C, H, W] or [C, H, W], got shape [4, 5]"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, zeros({3, 4, 3})), Contains("upsample_conv2d: expected weight of shape"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, w.to(DType::f64)), Contains("upsample_conv2d: x is f32 but weight is f64"));
  CHECK_THROWS_WITH(ops::upsample_conv2d(zeros({1, 4, 0, 5}), w), Contains("upsample_conv2d: x of shape [1, 4, 0, 5] has an empty image"));
  CHECK(ops::upsample_conv2d(zeros({0, 4, 5, 5}), w, {}, {1, 1}).shape() == Shape{0, 3, 10, 10});
  CHECK_THROWS_WITH(ops::upsample_conv2d(x, w, zeros({2}), {1, 1}), Contains("upsample_conv2d: bias must have shape [3]"));
}

// ---- determinism ------------------------------------------------------------------------------------------------

TEST_CASE("conv family: 1 vs N threads give identical bits", "[ops][conv][threads]") {
  // The CNN's layers at batch 24 (several tasks, reduction groups and chunks) plus the other ops.
  const Tensor x1 = test::randn({24, 1, 28, 28}, DType::f32, 36), x2 = test::randn({24, 32, 14, 14}, DType::f32, 37);
  const Tensor w1 = test::randn({32, 1, 3, 3}, DType::f32, 38), w2 = test::randn({64, 32, 3, 3}, DType::f32, 39);
  const Tensor b1 = test::randn({32}, DType::f32, 40), b2 = test::randn({64}, DType::f32, 41);
  const Tensor wt = test::randn({32, 16, 4, 4}, DType::f32, 42), w3 = test::randn({8, 32, 3, 3}, DType::f32, 43);
  const Tensor w4 = test::randn({16, 64, 3, 3}, DType::f32, 44);
  CHECK(test::same_bits_across_threads([&] {
    Tensor xa = x1.detach().requires_grad_(), xb = x2.detach().requires_grad_();
    Tensor wa = w1.detach().requires_grad_(), wb = w2.detach().requires_grad_(), wc = wt.detach().requires_grad_();
    Tensor wd = w3.detach().requires_grad_(), we = w4.detach().requires_grad_();
    Tensor ba = b1.detach().requires_grad_(), bb = b2.detach().requires_grad_();
    const Tensor c1 = ops::relu(ops::conv2d(xa, wa, ba, {{1, 1}, {1, 1}}));  // [24, 32, 28, 28]
    const Tensor h1 = ops::max_pool2d(c1, {2, 2});
    const Tensor h3 = ops::conv2d(c1, wd, {}, {{1, 1}, {1, 1}});  // Winograd F(4x4) forward and input gradient
    const Tensor h2 = ops::max_pool2d(ops::relu(ops::conv2d(ops::add(h1, xb), wb, bb, {{1, 1}, {1, 1}})), {3, 3}, {2, 2}, {1, 1});
    const Tensor h4 = ops::conv2d(h2, we, {}, {{1, 1}, {1, 1}});  // [24, 16, 7, 7]: Winograd with images side by side
    const Tensor h5 = ops::conv2d(h2.narrow(2, 0, 2), we, {}, {{1, 1}, {1, 1}});  // [24, 16, 2, 7]: F(2x2)
    const Tensor up = ops::upsample(ops::conv_transpose2d(xb, wc, {}, {{2, 2}, {1, 1}}), 1.5, ops::UpsampleMode::bilinear);
    const Tensor upconv = ops::upsample_conv2d(xb, wc.transpose(0, 1).narrow(2, 0, 3).narrow(3, 0, 3), bb.narrow(0, 0, 16), {1, 1});
    const Tensor pooled = ops::avg_pool2d(up, {3, 3}, {2, 2}, {1, 1}, false);
    const Tensor loss = ops::add(ops::add(ops::sum(ops::square(h2)), ops::sum(ops::mul(pooled, pooled))),
                                 ops::add(ops::add(ops::sum(ops::square(upconv)), ops::sum(ops::square(h3))),
                                           ops::add(ops::sum(ops::square(h4)), ops::sum(ops::square(h5)))));
    loss.backward();
    return Tensors{loss, h2, h3, h4, h5, pooled, upconv, xa.grad(), xb.grad(), wa.grad(), wb.grad(), wd.grad(), we.grad(), ba.grad(), bb.grad(), wc.grad()};
  }));
}

TEST_CASE("conv2d: Winograd on one or two images gives the same bits on 1 and N threads", "[ops][conv][threads]") {
  // With fewer images (or dense groups) than threads, each one's output channels are cut into up to
  // 4 parts, as many as there are threads to keep busy: 1 part on 1 thread, 4 on 4. The parts
  // compute independent channels, so the bits must not change. [1, 16, 7, 7]: tiles of the images
  // side by side (a group holding one image); [2, 16, 14, 14] and [1, 24, 28, 28]: phase planes.
  for (const Shape& shape : {Shape{1, 16, 7, 7}, Shape{2, 16, 14, 14}, Shape{1, 24, 28, 28}}) {
    INFO(fmt::format("x {}", shape));
    const Tensor x0 = test::randn(shape, DType::f32, 60), w0 = test::randn({40, shape[1], 3, 3}, DType::f32, 61);
    const Tensor b0 = test::randn({40}, DType::f32, 62);
    CHECK(test::same_bits_across_threads([&] {
      Tensor x = x0.detach().requires_grad_(), w = w0.detach().requires_grad_(), b = b0.detach().requires_grad_();
      const Tensor y = ops::conv2d(x, w, b, {{1, 1}, {1, 1}});  // [N, 40, H, W]
      ops::sum(ops::square(y)).backward();
      return Tensors{y, x.grad(), w.grad(), b.grad()};
    }));
  }
}

TEST_CASE("conv2d: an image's outputs and input gradient do not depend on the batch it runs in", "[ops][conv]") {
  // The path is chosen from the geometry without the batch size, and within a path the batch only
  // decides how images are grouped (Winograd's dense groups of 12 images of 7 x 7 or 6 of 2 x 14,
  // its weights transformed block by block inside a single group's task or once for several
  // groups), never the arithmetic: image i of a batch has the bits of the same image alone.
  // Sampling loops rely on it (a sample does not depend on how many are drawn together).
  const ConvCase cases[] = {
      {{13, 8, 7, 7}, 9, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},     // Winograd, images side by side
      {{7, 8, 2, 14}, 10, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, false},   // F(2x2), images side by side
      {{3, 9, 14, 14}, 16, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},   // Winograd, phase planes (or dense)
      {{5, 16, 4, 4}, 32, {3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}, true},    // small plane: implicit GEMM (row tiles)
      {{4, 8, 11, 10}, 8, {3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}, true},    // strided
  };
  for (const ConvCase& c : cases) {
    INFO(describe(c));
    const Tensor x = conv_input(c, DType::f32, 70), w = conv_weight(c, DType::f32, 71), b = conv_bias(c, DType::f32, 72);
    Tensor xb = x.detach().requires_grad_();
    const Tensor y = ops::conv2d(xb, w, b, c.opt);  // [n, o, ho, wo]
    const Tensor gy = test::randn(y.shape(), DType::f32, 73);
    y.backward(gy);
    for (std::int64_t i : {std::int64_t{0}, c.x[0] - 1}) {
      INFO("image " << i);
      Tensor xi = x.narrow(0, i, 1).contiguous().requires_grad_();
      const Tensor yi = ops::conv2d(xi, w, b, c.opt);  // [1, o, ho, wo]
      yi.backward(gy.narrow(0, i, 1).contiguous());
      CHECK(test::same_bits(yi, y.narrow(0, i, 1).contiguous()));
      CHECK(test::same_bits(xi.grad(), xb.grad().narrow(0, i, 1).contiguous()));
    }
  }
}

// ---- errors -------------------------------------------------------------------------------------------------------

TEST_CASE("conv family: clear errors for bad arguments", "[ops][conv][errors]") {
  const Tensor x = zeros({2, 4, 8, 8}), w = zeros({6, 2, 3, 3});
  CHECK_THROWS_WITH(ops::conv2d(zeros({4, 8, 8, 1, 1}), w), Contains("conv2d: expected x of shape [N, C, H, W] (or unbatched [C, H, W]), got shape [4, 8, 8, 1, 1]"));
  CHECK_THROWS_WITH(ops::conv2d(x, zeros({6, 4, 3})), Contains("conv2d: expected weight of shape [out_channels, in_channels / groups, kh, kw], got shape [6, 4, 3]"));
  CHECK_THROWS_WITH(ops::conv2d(x, w), Contains("conv2d: weight of shape [6, 2, 3, 3] with groups 1 expects 2 input channels, but x of shape [2, 4, 8, 8] has 4 (dim 1)"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.groups = 3}), Contains("conv2d: groups (3) must divide the input channels of x (shape [2, 4, 8, 8], dim 1 = 4)"));
  CHECK_THROWS_WITH(ops::conv2d(x, zeros({5, 1, 3, 3}), {}, {.groups = 4}), Contains("conv2d: groups (4) must divide the output channels of weight (shape [5, 1, 3, 3], dim 0 = 5)"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.groups = 0}), Contains("conv2d: groups must be positive, got 0"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, zeros({5}), {.groups = 2}), Contains("conv2d: bias must have shape [6] (one per output channel), got [5]"));
  CHECK_THROWS_WITH(ops::conv2d(x, w.to(DType::f64), {}, {.groups = 2}), Contains("conv2d: x is f32 but weight is f64"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, zeros({6}, DType::f64), {.groups = 2}), Contains("conv2d: x is f32 but bias is f64"));
  CHECK_THROWS_WITH(ops::conv2d(x.to(DType::i64), w.to(DType::i64), {}, {.groups = 2}), Contains("conv2d: expected a floating-point x (f32 or f64), got i64"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.stride = {1, 0}, .groups = 2}), Contains("conv2d: stride must be positive, got [1, 0] (dim 3)"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.padding = {-1, 0}, .groups = 2}), Contains("conv2d: padding must be non-negative, got [-1, 0] (dim 2)"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.dilation = {0, 1}, .groups = 2}), Contains("conv2d: dilation must be positive"));
  CHECK_THROWS_WITH(ops::conv2d(zeros({1, 4, 2, 8}), w, {}, {.groups = 2}),
                    Contains("conv2d: input of shape [1, 4, 2, 8] is 2 wide in dim 2 (2 with padding 0), smaller than the kernel extent 3"));
  CHECK_THROWS_WITH(ops::conv2d(x, w, {}, {.dilation = {1, 5}, .groups = 2}),
                    Contains("is 8 wide in dim 3 (8 with padding 0), smaller than the dilated kernel extent 11"));
  CHECK_THROWS_WITH(ops::conv2d(Tensor(), w), Contains("conv2d: argument 'x' is an undefined tensor"));
  CHECK_THROWS_WITH(ops::conv2d(x, zeros({6, 4, 0, 3})), Contains("conv2d: weight of shape [6, 4, 0, 3] has an empty kernel (dim 2)"));

  CHECK_THROWS_WITH(ops::conv_transpose2d(x, zeros({3, 2, 3, 3})),
                    Contains("conv_transpose2d: weight of shape [3, 2, 3, 3] expects 3 input channels (dim 0), but x of shape [2, 4, 8, 8] has 4 (dim 1)"));
  CHECK_THROWS_WITH(ops::conv_transpose2d(x, zeros({4, 2, 3, 3}), {}, {.output_padding = {0, 1}}),
                    Contains("conv_transpose2d: output_padding [0, 1] must be smaller than either stride [1, 1] or dilation [1, 1] (dim 3)"));
  CHECK_THROWS_WITH(ops::conv_transpose2d(x, zeros({4, 2, 3, 3}), {}, {.groups = 3}), Contains("conv_transpose2d: groups (3) must divide the input channels"));
  CHECK_THROWS_WITH(ops::conv_transpose2d(x, zeros({4, 2, 3, 3}), zeros({3})), Contains("conv_transpose2d: bias must have shape [2]"));
  CHECK_THROWS_WITH(ops::conv_transpose2d(zeros({1, 1, 1, 1}), zeros({1, 1, 1, 1}), {}, {.padding = {1, 0}}),
                    Contains("conv_transpose2d: output size would be -1 in dim 2"));

  CHECK_THROWS_WITH(ops::max_pool2d(x, {2, 2}, {0, 0}, {2, 0}), Contains("max_pool2d: padding [2, 0] must be at most half of the dilated kernel extent [2, 2] (dim 2)"));
  CHECK_THROWS_WITH(ops::max_pool2d(x, {9, 2}), Contains("max_pool2d: input of shape [2, 4, 8, 8] is 8 wide in dim 2 (8 with padding 0), smaller than the kernel extent 9"));
  CHECK_THROWS_WITH(ops::max_pool2d(x, {2, 0}), Contains("max_pool2d: kernel size must be positive, got [2, 0] (dim 3)"));
  CHECK_THROWS_WITH(ops::max_pool2d(x, {2, 2}, {-1, 1}), Contains("max_pool2d: stride must be positive, got [-1, 1] (dim 2)"));
  CHECK_THROWS_WITH(ops::max_pool2d(zeros({8, 8}), {2, 2}), Contains("max_pool2d: expected x of shape [N, C, H, W] (or unbatched [C, H, W]), got shape [8, 8]"));
  CHECK_THROWS_WITH(ops::avg_pool2d(x, {3, 3}, {1, 1}, {2, 2}), Contains("avg_pool2d: padding [2, 2] must be at most half of the kernel size [3, 3] (dim 2)"));
  CHECK_THROWS_WITH(ops::avg_pool2d(x.to(DType::i32), {2, 2}), Contains("avg_pool2d: expected a floating-point x"));
  CHECK_THROWS_WITH(ops::adaptive_avg_pool2d(x, {0, 2}), Contains("adaptive_avg_pool2d: output size must be positive, got [0, 2] (dim 2)"));
  CHECK_THROWS_WITH(ops::global_avg_pool2d(zeros({3, 4})), Contains("global_avg_pool2d: expected x of shape"));

  CHECK_THROWS_WITH(ops::upsample(x, ops::UpsampleOptions{}), Contains("upsample: give either an output size or scale factors (exactly one), got neither for x of shape [2, 4, 8, 8]"));
  CHECK_THROWS_WITH(ops::upsample(x, {.size = Size2{4, 4}, .scale = std::array<double, 2>{2, 2}}), Contains("got both"));
  CHECK_THROWS_WITH(ops::upsample(x, 2.0, ops::UpsampleMode::nearest, true), Contains("upsample: align_corners only applies to bilinear mode"));
  CHECK_THROWS_WITH(ops::upsample(x, 0.1), Contains("upsample: output size would be 0 in dim 2 for x of shape [2, 4, 8, 8] and scale factor 0.1"));
  CHECK_THROWS_WITH(ops::upsample(x, -2.0), Contains("upsample: scale factors must be positive and finite, got [-2, -2] (dim 2)"));
  CHECK_THROWS_WITH(ops::upsample(x, {.size = Size2{4, 0}}), Contains("upsample: output size must be positive, got [4, 0] (dim 3)"));
}

TEST_CASE("conv family: empty batches, unbatched inputs, layouts", "[ops][conv]") {
  const Tensor w = test::randn({3, 2, 3, 3}, DType::f64, 43);
  CHECK(ops::conv2d(zeros({0, 2, 5, 5}, DType::f64), w).shape() == Shape{0, 3, 3, 3});
  Tensor we = w.detach().requires_grad_();
  ops::sum(ops::conv2d(zeros({0, 2, 5, 5}, DType::f64), we)).backward();
  CHECK(we.grad().to_vector<double>() == std::vector<double>(w.numel(), 0.0));
  const Tensor x = test::randn({2, 5, 6}, DType::f64, 44);
  CHECK_ALLCLOSE(ops::conv2d(x, w, {}, {{1, 1}, {1, 1}}), ref_conv2d(x.unsqueeze(0), w, {}, {{1, 1}, {1, 1}}).squeeze(0), 1e-12, 1e-12);
  CHECK(ops::conv_transpose2d(x, test::randn({2, 3, 3, 3}, DType::f64, 45)).shape() == Shape{3, 7, 8});
  CHECK(ops::max_pool2d(x, {2, 2}).shape() == Shape{2, 2, 3});
  CHECK(ops::avg_pool2d(x, {2, 2}).shape() == Shape{2, 2, 3});
  CHECK(ops::upsample(x, 2.0).shape() == Shape{2, 10, 12});
  // A channels-last view (permuted) goes through contiguous().
  const Tensor nhwc = test::randn({2, 6, 7, 4}, DType::f64, 46).permute({0, 3, 1, 2});
  const Tensor w4 = test::randn({5, 4, 3, 3}, DType::f64, 47);
  CHECK_ALLCLOSE(ops::conv2d(nhwc, w4, {}, {{2, 1}, {1, 0}}), ref_conv2d(nhwc.contiguous(), w4, {}, {{2, 1}, {1, 0}}), 1e-12, 1e-12);
}
