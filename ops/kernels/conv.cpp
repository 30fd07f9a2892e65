// Convolution-family kernels.
//
// Convolution: five paths, chosen from the geometry alone (so the bits never depend on threads) --
// except that an input with an inf or NaN skips Winograd, whose tiles would spread it, and an inf
// or NaN weight skips Winograd and the correlation-based input gradients (see weights_finite).
//
//   pointwise     1x1, unit stride, no padding: per image and group one GEMM on the operands in
//                 place (y = W_g · x, gx = W_g^T · gy, gW_g += gy · x^T); measured faster than the
//                 paths below for every 1x1 layer of the UNet (1.2-3x on the gradients).
//   direct        few taps per output (K = C/groups * kh * kw <= 32) and unit width stride: the
//                 first layer of a CNN on grey or RGB images, depthwise convolutions.
//                 forward: the image is copied once into a zero-padded buffer; each output row is
//                 K FMAs per SIMD vector along the width (weights broadcast, 4 channels x 2 vectors
//                 in registers, no im2col). weight grad: per output channel, K vector accumulators
//                 (blocks of up to 16) sweep the rows, acc[k] += gy_row * shifted input row; the
//                 bias gradient rides along; lanes are reduced per image group.
//   Winograd      3x3, unit stride and dilation, one group, 8+ channels on both sides, where its
//                 cost estimate wins: F(4x4, 3x3) (36 instead of 144 multiply-adds per 4x4
//                 outputs), or F(2x2, 3x3) on outputs two rows high, in conv_winograd.cpp, with
//                 the tiles in the input's phase planes or, on small planes, the tiles of several
//                 images side by side; forward and input gradient; checked before the implicit GEMM.
//                 An input tile holding an inf or NaN makes it decline (its transforms would spread
//                 the value to the whole tile); the implicit GEMM then recomputes the output.
//   implicit GEMM the rest with natural output sizes (e.g. 3x3 / pad 1 on small planes, strided
//                 down-sampling): the padded planes are laid out with row width wp, output pixel
//                 (i, j) is position i * wp + j, and tap k reads the buffer at off[k] + position,
//                 so the GEMM's B operand is a plain vector load (no im2col, no packing of the
//                 input). 8 output channels x 3 vectors of positions per micro-tile; the wp - wo
//                 positions past each row end are computed and dropped (the tile stores its
//                 vectors straight into y as masked runs of one output row).
//                 Strided: the padded input is split into its sh x sw phase planes (rows and
//                 columns by parity), where every tap of a strided window is again a shifted
//                 unit-stride read, so the same kernel runs on them (ImplicitLayout).
//                 Input gradient: unit stride, the same kernel on gy with the kernel flipped and
//                 channels swapped (when the padding is at most the dilated kernel extent - 1);
//                 strided, the same kernel once per phase plane of gx (backward_input_phases).
//   im2col + GEMM everything else (e.g. paddings beyond the kernel): per image and group,
//                 col = im2col(x), y = W_g · col on the project's GEMM; input grad: col = W_g^T · gy
//                 then col2im (a scatter owned by the image's task, fixed order).
//
//   Weight gradient outside the pointwise and direct paths, any strides: outer products over
//                 positions, dW^T[k][o] += x_k(pos) * gy(pos)[o], with output channels along the
//                 vector lanes (gy transposed per image) and tap values broadcast: KR taps x up to
//                 4 vectors of channels in registers over blocks of positions, no horizontal sums.
//
//   Weight/bias reductions cut the batch into at most 8 fixed groups of images (independent of the
//   thread count), each summed in order into its own partial; partials are added in group order
//   in f64. Tasks own their scratch buffers (never thread-locals: a task waiting inside a nested
//   GEMM may run another task) and prefetch the next image while computing the current one.
//
// Pooling and upsampling work plane by plane (n * c planes, parallel with fixed chunking); each
// backward zeroes its plane of gx and adds contributions in output order.
#include "ops/kernels/conv.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if XSIMD_WITH_AVX512F
#include <immintrin.h>
#endif

#include "core/parallel.hpp"
#include "core/tensor.hpp"
#include "ops/kernels/conv_util.hpp"
#include "ops/kernels/conv_winograd.hpp"
#include "ops/kernels/gemm.hpp"
#include "core/simd_transpose.hpp"

namespace tg::kernels {
namespace {

using conv_util::ceil_div;
using conv_util::copy_row;
using conv_util::images_per_task;
using conv_util::items_per_task;
using conv_util::kLanes;
using conv_util::load_n;
using conv_util::prefetch_range;
using conv_util::prefetch_range_for_write;
using conv_util::Scratch;
using conv_util::store_n;
using conv_util::Vec;

// Sum of n contiguous values in a fixed order (vector lanes, then the lane reduction).
template <class T>
inline T row_sum(const T* p, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> a0(T(0)), a1(T(0));
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    a0 += Vec<T>::load_unaligned(p + i);
    a1 += Vec<T>::load_unaligned(p + i + L);
  }
  for (; i < n; i += L) a0 += load_n(p + i, n - i);
  return xsimd::hadd(a0 + a1);
}

// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols: through registers in 16 x 16 blocks
// on AVX-512, else in 16 x 16 blocks of scalar copies (both sides stay in L1).
template <class T>
void transpose(const T* src, int64_t rows, int64_t cols, int64_t ss, T* dst, int64_t ds) {
#if defined(__AVX512F__)
  simd::transpose_matrix(src, rows, cols, ss, dst, ds);
#else
  constexpr int64_t B = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += B)
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      const int64_t r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ds + r] = src[r * ss + c];
    }
#endif
}

// The batch split for weight-gradient reductions: at most 8 contiguous groups of images (fixed
// by n alone), fewer when the partial gradients would be large.
int64_t reduction_groups(int64_t n, int64_t partial_elems) {
  const int64_t budget = int64_t{1} << 22;  // elements of all partials together
  return std::max<int64_t>(1, std::min({n, int64_t{8}, budget / std::max<int64_t>(partial_elems, 1)}));
}
inline int64_t group_begin(int64_t n, int64_t groups, int64_t s) { return n * s / groups; }

// ---------------------------------------------------------------------------------------------
// im2col / col2im

struct Range {
  int64_t lo, hi;
};
// Output positions j in [0, count) with 0 <= j * stride + off < size.
inline Range valid_range(int64_t off, int64_t stride, int64_t size, int64_t count) {
  int64_t lo = off >= 0 ? 0 : ceil_div(-off, stride);
  int64_t hi = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
  hi = std::min(hi, count);
  lo = std::min(lo, hi);
  return {lo, hi};
}

// col[(c * kh + p) * kw + q][i * wo + j] (row stride ld) = x[c, i*sh - ph + p*dh, j*sw - pw + q*dw]
// for the cg channels starting at x (zero outside).
template <class T>
void im2col(const ConvGeometry& g, const T* x, int64_t cg, T* col, int64_t ld) {
  const int64_t H = g.h, W = g.w, Ho = g.ho, Wo = g.wo;
  for (int64_t c = 0; c < cg; ++c) {
    const T* xc = x + c * H * W;
    for (int64_t p = 0; p < g.kh; ++p) {
      for (int64_t q = 0; q < g.kw; ++q) {
        T* row = col + ((c * g.kh + p) * g.kw + q) * ld;
        const int64_t off = q * g.dw - g.pw;
        const Range r = valid_range(off, g.sw, W, Wo);
        for (int64_t i = 0; i < Ho; ++i) {
          T* out = row + i * Wo;
          const int64_t hi = i * g.sh - g.ph + p * g.dh;
          if (hi < 0 || hi >= H) {
            std::fill(out, out + Wo, T(0));
            continue;
          }
          const T* xr = xc + hi * W;
          std::fill(out, out + r.lo, T(0));
          if (g.sw == 1) {
            if (r.lo < r.hi) copy_row(out + r.lo, xr + (r.lo + off), r.hi - r.lo);
          } else {
            for (int64_t j = r.lo; j < r.hi; ++j) out[j] = xr[j * g.sw + off];
          }
          std::fill(out + r.hi, out + Wo, T(0));
        }
      }
    }
  }
}

// The adjoint of im2col (row stride ho * wo): x[c, ...] += col[...]; x must be zeroed first.
template <class T>
void col2im(const ConvGeometry& g, const T* col, int64_t cg, T* x) {
  const int64_t H = g.h, W = g.w, Ho = g.ho, Wo = g.wo, ld = Ho * Wo;
  for (int64_t c = 0; c < cg; ++c) {
    T* xc = x + c * H * W;
    for (int64_t p = 0; p < g.kh; ++p) {
      for (int64_t q = 0; q < g.kw; ++q) {
        const T* row = col + ((c * g.kh + p) * g.kw + q) * ld;
        const int64_t off = q * g.dw - g.pw;
        const Range r = valid_range(off, g.sw, W, Wo);
        for (int64_t i = 0; i < Ho; ++i) {
          const int64_t hi = i * g.sh - g.ph + p * g.dh;
          if (hi < 0 || hi >= H) continue;
          const T* in = row + i * Wo;
          T* xr = xc + hi * W;
          if (g.sw == 1) {
            T* dst = xr + (r.lo + off);
            const T* src = in + r.lo;
            const int64_t len = r.hi - r.lo;
            for (int64_t j = 0; j < len; ++j) dst[j] += src[j];
          } else {
            for (int64_t j = r.lo; j < r.hi; ++j) xr[j * g.sw + off] += in[j];
          }
        }
      }
    }
  }
}

bool is_pointwise(const ConvGeometry& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.ho == g.h && g.wo == g.w;
}

// ---------------------------------------------------------------------------------------------
// General path: im2col + GEMM.

template <class T>
void forward_gemm(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  const bool pointwise = is_pointwise(g);
  parallel_for(g.n, images_per_task(g.n, g.o * P * K), [&](int64_t b, int64_t e) {
    Scratch<T> col(pointwise ? 0 : K * P);
    for (int64_t n = b; n < e; ++n) {
      T* yn = y + n * g.o * P;
      if (bias)
        for (int64_t oc = 0; oc < g.o; ++oc) std::fill(yn + oc * P, yn + (oc + 1) * P, bias[oc]);
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const T* xg = x + (n * g.c + gi * cg) * g.h * g.w;
        const T* bm = xg;
        if (!pointwise) {
          im2col(g, xg, cg, col.get(), P);
          bm = col.get();
        }
        gemm(og, P, K, ConstMatrix<T>{w + gi * og * K, K, 1}, ConstMatrix<T>{bm, P, 1},
             Matrix<T>{yn + gi * og * P, P, 1}, bias != nullptr);
      }
    }
  });
}

template <class T>
void backward_input_gemm(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  const int64_t plane = g.h * g.w;
  const bool pointwise = is_pointwise(g);
  parallel_for(g.n, images_per_task(g.n, g.o * P * K), [&](int64_t b, int64_t e) {
    Scratch<T> col(pointwise ? 0 : K * P);
    for (int64_t n = b; n < e; ++n) {
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        T* gxg = gx + (n * g.c + gi * cg) * plane;
        const ConstMatrix<T> wt{w + gi * og * K, 1, K};  // W_g^T: element (k, o) at w[o * K + k]
        const ConstMatrix<T> gyg{gy + (n * g.o + gi * og) * P, P, 1};
        if (pointwise) {
          gemm(K, P, og, wt, gyg, Matrix<T>{gxg, P, 1}, false);
        } else {
          gemm(K, P, og, wt, gyg, Matrix<T>{col.get(), P, 1}, false);
          std::fill(gxg, gxg + cg * plane, T(0));
          col2im(g, col.get(), cg, gxg);
        }
      }
    }
  });
}

// Sums per-group partials (group-major, `elems` each) in group order, in f64.
template <class T, class P>
void combine_partials(const P* part, int64_t groups, int64_t elems, T* out) {
  for (int64_t i = 0; i < elems; ++i) {
    double acc = 0;
    for (int64_t s = 0; s < groups; ++s) acc += static_cast<double>(part[s * elems + i]);
    out[i] = static_cast<T>(acc);
  }
}

// Weight gradient of a 1x1 convolution (unit stride, no padding): per image and group one GEMM
// gw_g [og, cg] (+)= gy_g [og, P] · x_g^T [P, cg], both operands read in place, summed image by
// image into the partial of the image's reduction group.
template <class T>
void backward_weight_pointwise(const ConvGeometry& g, const T* x, const T* gy, T* gw, T* gbias) {
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, P = g.h * g.w, WK = g.o * cg;
  const int64_t S = reduction_groups(g.n, WK);
  Scratch<T> part(S * WK);
  std::vector<double> bpart(static_cast<size_t>(S * g.o), 0.0);
  parallel_for(S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T* ps = part.get() + s * WK;
      const int64_t first = group_begin(g.n, S, s);
      for (int64_t n = first; n < group_begin(g.n, S, s + 1); ++n)
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          const T* gys = gy + (n * g.o + gi * og) * P;
          gemm(og, cg, P, ConstMatrix<T>{gys, P, 1}, ConstMatrix<T>{x + (n * g.c + gi * cg) * P, 1, P},
               Matrix<T>{ps + gi * og * cg, cg, 1}, n != first);
          if (gbias)
            for (int64_t o = 0; o < og; ++o) bpart[static_cast<size_t>(s * g.o + gi * og + o)] += row_sum(gys + o * P, P);
        }
    }
  });
  combine_partials(part.get(), S, WK, gw);
  if (gbias) combine_partials(bpart.data(), S, g.o, gbias);
}

// ---------------------------------------------------------------------------------------------
// Direct path (few taps, unit width stride).

constexpr int64_t kDirectMaxTaps = 32;

bool use_direct(const ConvGeometry& g) {
  const int64_t taps = g.c / g.groups * g.kh * g.kw;
  return g.sw == 1 && taps > 0 && taps <= kDirectMaxTaps && g.wo > 0 && g.ho > 0;
}

// The cg planes of one image and group, zero padded: row r, column q hold x[r - ph, q - pw].
// Wide enough for whole vectors past the last output column.
template <class T>
struct PaddedPlanes {
  int64_t hp, wb, nv;
  PaddedPlanes(const ConvGeometry& g)  // NOLINT(google-explicit-constructor)
      : hp(std::max(g.h + 2 * g.ph, (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1)),
        wb(std::max(g.w + 2 * g.pw, ceil_div(g.wo, kLanes<T>) * kLanes<T> + (g.kw - 1) * g.dw)),
        nv(ceil_div(g.wo, kLanes<T>)) {}
  int64_t size(int64_t cg) const { return cg * hp * wb; }
  // Copies the planes into a buffer whose borders are zero (zeroed once by its owner: the
  // interior is all that changes from image to image).
  void fill(const ConvGeometry& g, const T* x, int64_t cg, T* buf) const {
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t h = 0; h < g.h; ++h)
        copy_row(buf + (c * hp + h + g.ph) * wb + g.pw, x + (c * g.h + h) * g.w, g.w);
  }
  // Offsets of the taps (c, p, q) relative to the output row's first input row.
  void tap_offsets(const ConvGeometry& g, int64_t cg, int64_t* off) const {
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t p = 0; p < g.kh; ++p)
        for (int64_t q = 0; q < g.kw; ++q) off[(c * g.kh + p) * g.kw + q] = (c * hp + p * g.dh) * wb + q * g.dw;
  }
};

// OB output channels x NV vectors of one output row: acc = bias + sum_k w[o, k] * x_k.
template <class T, int OB, int NV>
inline void direct_forward_tile(int64_t K, const T* const* ptr, int64_t col, const T* w, int64_t wstride,
                                const T* bias, T* y, int64_t ystride, int64_t last_count) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[OB][NV];
#pragma GCC unroll 4
  for (int q = 0; q < OB; ++q) {
    const Vec<T> b0(bias ? bias[q] : T(0));
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[q][v] = b0;
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> xv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) xv[v] = Vec<T>::load_unaligned(ptr[k] + col + v * L);
#pragma GCC unroll 4
    for (int q = 0; q < OB; ++q) {
      const Vec<T> wv(w[q * wstride + k]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[q][v] = xsimd::fma(wv, xv[v], acc[q][v]);
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < OB; ++q)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) store_n(y + q * ystride + col + v * L, acc[q][v], v == NV - 1 ? last_count : L);
}

template <class T, int NV>
inline void direct_forward_row(int64_t K, int64_t og, const T* const* ptr, int64_t col, const T* w, const T* bias,
                               T* y, int64_t plane, int64_t last_count) {
  int64_t o = 0;
  for (; o + 4 <= og; o += 4)
    direct_forward_tile<T, 4, NV>(K, ptr, col, w + o * K, K, bias ? bias + o : nullptr, y + o * plane, plane, last_count);
  for (; o < og; ++o)
    direct_forward_tile<T, 1, NV>(K, ptr, col, w + o * K, K, bias ? bias + o : nullptr, y + o * plane, plane, last_count);
}

template <class T>
void forward_direct(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  constexpr int64_t L = kLanes<T>;
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  const PaddedPlanes<T> pad(g);
  parallel_for(g.n, images_per_task(g.n, g.o * P * K), [&](int64_t b, int64_t e) {
    Scratch<T> buf(pad.size(cg));
    std::fill(buf.get(), buf.get() + pad.size(cg), T(0));
    int64_t off[kDirectMaxTaps];
    const T* ptr[kDirectMaxTaps];
    pad.tap_offsets(g, cg, off);
    for (int64_t n = b; n < e; ++n) {
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        pad.fill(g, x + (n * g.c + gi * cg) * g.h * g.w, cg, buf.get());
        const T* wg = w + gi * og * K;
        const T* bg = bias ? bias + gi * og : nullptr;
        T* yg = y + (n * g.o + gi * og) * P;
        for (int64_t i = 0; i < g.ho; ++i) {
          const T* rowbase = buf.get() + i * g.sh * pad.wb;
          for (int64_t k = 0; k < K; ++k) ptr[k] = rowbase + off[k];
          T* yrow = yg + i * g.wo;
          for (int64_t v = 0; v < pad.nv; v += 2) {
            if (v + 1 < pad.nv) {
              direct_forward_row<T, 2>(K, og, ptr, v * L, wg, bg, yrow, P, std::min(L, g.wo - (v + 1) * L));
            } else {
              direct_forward_row<T, 1>(K, og, ptr, v * L, wg, bg, yrow, P, g.wo - v * L);
            }
          }
        }
      }
    }
  });
}

// Accumulates, for KB taps, acc[k] += gy_row * (tap k's input row) over the output rows of one
// (image, channel), and bacc += gy_row (the bias gradient); the tail vector masks both operands.
template <class T, int KB>
void direct_weight_taps(const ConvGeometry& g, const T* gyp, const T* const* ptr, int64_t rowstep, Vec<T>* acc_mem,
                        Vec<T>* bacc_mem) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[KB];
#pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) acc[k] = Vec<T>(T(0));
  Vec<T> bacc(T(0));
  const int64_t full = g.wo / L, tail = g.wo - full * L;
  for (int64_t i = 0; i < g.ho; ++i) {
    const T* gr = gyp + i * g.wo;
    const int64_t roff = i * rowstep;
    for (int64_t v = 0; v < full; ++v) {
      const Vec<T> gv = Vec<T>::load_unaligned(gr + v * L);
      bacc += gv;
#pragma GCC unroll 16
      for (int k = 0; k < KB; ++k) acc[k] = xsimd::fma(gv, Vec<T>::load_unaligned(ptr[k] + roff + v * L), acc[k]);
    }
    if (tail) {
      const Vec<T> gv = load_n(gr + full * L, tail);
      bacc += gv;
#pragma GCC unroll 16
      for (int k = 0; k < KB; ++k) acc[k] = xsimd::fma(gv, load_n(ptr[k] + roff + full * L, tail), acc[k]);
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) acc_mem[k] += acc[k];
  if (bacc_mem) *bacc_mem += bacc;
}

template <class T>
using WeightTapsFn = void (*)(const ConvGeometry&, const T*, const T* const*, int64_t, Vec<T>*, Vec<T>*);

// Tap-block sizes that are instantiated (few, to keep compile times down); a block is rounded up
// to one of them with dummy taps whose accumulators are ignored.
constexpr std::array<int, 6> kTapBlocks{2, 4, 6, 9, 12, 16};
constexpr int kMaxTapBlock = 16;
template <class T>
const std::array<WeightTapsFn<T>, 6> kWeightTaps{&direct_weight_taps<T, 2>, &direct_weight_taps<T, 4>,
                                                 &direct_weight_taps<T, 6>, &direct_weight_taps<T, 9>,
                                                 &direct_weight_taps<T, 12>, &direct_weight_taps<T, 16>};

template <class T>
void backward_weight_direct(const ConvGeometry& g, const T* x, const T* gy, T* gw, T* gbias) {
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  const int64_t WK = g.o * K;
  const int64_t S = reduction_groups(g.n, WK + g.o);
  const int64_t nblocks = ceil_div(K, kMaxTapBlock), need = ceil_div(K, nblocks);
  int bi = 0;
  while (kTapBlocks[static_cast<size_t>(bi)] < need) ++bi;
  const int64_t KB = kTapBlocks[static_cast<size_t>(bi)], Kp = nblocks * KB;  // accumulator rows per channel
  const WeightTapsFn<T> fn = kWeightTaps<T>[static_cast<size_t>(bi)];
  const PaddedPlanes<T> pad(g);
  Scratch<T> part(S * (WK + g.o));  // per group: gw partial, then gbias partial
  parallel_for(S, 1, [&](int64_t s0, int64_t s1) {
    Scratch<T> buf(pad.size(cg));
    std::fill(buf.get(), buf.get() + pad.size(cg), T(0));
    std::vector<Vec<T>, xsimd::aligned_allocator<Vec<T>>> acc(static_cast<size_t>(g.o * Kp + g.o), Vec<T>(T(0)));
    int64_t off[kDirectMaxTaps];
    const T* ptr[kMaxTapBlock];
    pad.tap_offsets(g, cg, off);
    for (int64_t s = s0; s < s1; ++s) {
      std::fill(acc.begin(), acc.end(), Vec<T>(T(0)));
      for (int64_t n = group_begin(g.n, S, s); n < group_begin(g.n, S, s + 1); ++n) {
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          pad.fill(g, x + (n * g.c + gi * cg) * g.h * g.w, cg, buf.get());
          for (int64_t o = 0; o < og; ++o) {
            const int64_t oc = gi * og + o;
            const T* gyp = gy + (n * g.o + oc) * P;
            for (int64_t blk = 0; blk < nblocks; ++blk) {
              const int64_t k0 = blk * KB;
              for (int64_t k = 0; k < KB; ++k) ptr[k] = buf.get() + off[std::min(k0 + k, K - 1)];  // dummies: valid memory
              fn(g, gyp, ptr, g.sh * pad.wb, acc.data() + oc * Kp + k0, gbias && blk == 0 ? acc.data() + g.o * Kp + oc : nullptr);
            }
          }
        }
      }
      T* ps = part.get() + s * (WK + g.o);
      for (int64_t oc = 0; oc < g.o; ++oc) {
        for (int64_t k = 0; k < K; ++k) ps[oc * K + k] = xsimd::hadd(acc[static_cast<size_t>(oc * Kp + k)]);
        ps[WK + oc] = xsimd::hadd(acc[static_cast<size_t>(g.o * Kp + oc)]);
      }
    }
  });
  std::vector<T> total(static_cast<size_t>(WK + g.o));
  combine_partials(part.get(), S, WK + g.o, total.data());
  std::copy(total.begin(), total.begin() + WK, gw);
  if (gbias) std::copy(total.begin() + WK, total.end(), gbias);
}

// ---------------------------------------------------------------------------------------------
// Implicit GEMM for unit-stride convolutions (no im2col).
//
// The cg input planes of an image are copied into a zero-padded buffer of row width wp = w + pw.
// Output pixel (i, j) is "position" i * wp + j, and tap k = (c, p, q) reads the buffer at
// off[k] + position with off[k] = c * plane + p * dh * wp + q * dw: along consecutive positions
// the GEMM's B operand is a plain unaligned vector load. A micro-tile keeps 8 output channels x 3
// vectors of positions in registers and broadcasts pre-packed weights. The wp - wo positions past
// the end of each output row are computed and dropped: each vector of positions is stored straight
// into y as the runs of lanes that fall on one output row (masked stores, bias added on the way).

constexpr int kImplicitMR = 8;  // output channels per micro-tile
constexpr int kImplicitNV = 3;  // vectors of positions per micro-tile

bool natural_unit_stride(const ConvGeometry& g) {
  return g.sh == 1 && g.sw == 1 && g.ho == g.h + 2 * g.ph - (g.kh - 1) * g.dh &&
         g.wo == g.w + 2 * g.pw - (g.kw - 1) * g.dw;
}

// Lanes [lane_begin, lane_end) of a vector of positions land on consecutive outputs of one row:
// lane l goes to y-plane offset `base + l` (base + lane_begin >= 0; base itself can be negative
// when output rows are shorter than a vector).
struct RowRun {
  int64_t base;
  int lane_begin, lane_end;
};

// Where the vectors of positions go: the runs of vector v are runs[first[v] .. first[v + 1]).
struct StorePlan {
  std::vector<RowRun> runs;
  std::vector<int64_t> first;
};

StorePlan make_store_plan(int64_t ho, int64_t wo, int64_t wp, int64_t nvec, int64_t lanes) {
  StorePlan plan;
  plan.first.reserve(static_cast<size_t>(nvec + 1));
  for (int64_t v = 0; v < nvec; ++v) {
    plan.first.push_back(static_cast<int64_t>(plan.runs.size()));
    int64_t l = 0;
    while (l < lanes) {
      const int64_t pos = v * lanes + l, i = pos / wp, j = pos % wp;
      if (i >= ho) break;
      if (j >= wo) {  // padding columns: skip to the next row
        l += wp - j;
        continue;
      }
      const int64_t len = std::min(lanes - l, wo - j);
      plan.runs.push_back({i * wo + j - l, static_cast<int>(l), static_cast<int>(l + len)});
      l += len;
    }
  }
  plan.first.push_back(static_cast<int64_t>(plan.runs.size()));
  return plan;
}

// Stores lanes [r.lane_begin, r.lane_end) of v at y + r.base + lane. A run whose base lies before
// the plane is first moved down to lane 0 (no pointer outside y is ever formed).
template <class T>
inline void store_run(T* y, const Vec<T>& v, const RowRun& r) {
#if XSIMD_WITH_AVX512F
  const unsigned low = (1u << (r.lane_end - r.lane_begin)) - 1, bits = low << r.lane_begin;
  if constexpr (std::is_same_v<T, float>) {
    if (r.base >= 0) {
      _mm512_mask_storeu_ps(y + r.base, static_cast<__mmask16>(bits), v);
    } else {
      _mm512_mask_storeu_ps(y + (r.base + r.lane_begin), static_cast<__mmask16>(low),
                            _mm512_maskz_compress_ps(static_cast<__mmask16>(bits), v));
    }
  } else {
    if (r.base >= 0) {
      _mm512_mask_storeu_pd(y + r.base, static_cast<__mmask8>(bits), v);
    } else {
      _mm512_mask_storeu_pd(y + (r.base + r.lane_begin), static_cast<__mmask8>(low),
                            _mm512_maskz_compress_pd(static_cast<__mmask8>(bits), v));
    }
  }
#else
  alignas(64) T buf[kLanes<T>];
  v.store_aligned(buf);
  for (int l = r.lane_begin; l < r.lane_end; ++l) y[r.base + l] = buf[l];
#endif
}

// out rows [0, rows) (rows <= ROWS; the others are padding of a partial panel) at y + r * ystride.
template <class T, int ROWS, int NV>
void implicit_tile(int64_t K, const int64_t* off, const T* x, const T* w, int rows, const T* bias, const StorePlan& plan,
                   int64_t v0, T* y, int64_t ystride) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>(T(0));
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    const T* src = x + off[k];
    Vec<T> b[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) b[v] = Vec<T>::load_unaligned(src + v * L);
    const T* wk = w + k * kImplicitMR;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const Vec<T> a(wk[r]);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
    }
  }
  // Unrolled with compile-time indices (a runtime row count would force acc into memory).
  if (bias)
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const Vec<T> bv(r < rows ? bias[r] : T(0));
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] += bv;
    }
  const RowRun* runs = plan.runs.data();
  const int64_t* first = plan.first.data() + v0;
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    if (r >= rows) break;
    T* yr = y + r * ystride;
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v)
      for (int64_t q = first[v]; q < first[v + 1]; ++q) store_run(yr, acc[r][v], runs[q]);
  }
}

template <class T>
using ImplicitTileFn = void (*)(int64_t, const int64_t*, const T*, const T*, int, const T*, const StorePlan&, int64_t,
                                T*, int64_t);

// Instantiated for 1, 2, 4 and 8 rows (a panel's rows are rounded up: the packed weights of the
// extra rows are zero) and 1 to 3 vectors.
template <class T, int NV>
constexpr std::array<ImplicitTileFn<T>, 4> make_implicit_row() {
  return {&implicit_tile<T, 1, NV>, &implicit_tile<T, 2, NV>, &implicit_tile<T, 4, NV>, &implicit_tile<T, 8, NV>};
}
template <class T>
const std::array<std::array<ImplicitTileFn<T>, 4>, kImplicitNV> kImplicitTiles{
    make_implicit_row<T, 1>(), make_implicit_row<T, 2>(), make_implicit_row<T, 3>()};
inline int implicit_rows_index(int rows) { return rows <= 1 ? 0 : rows <= 2 ? 1 : rows <= 4 ? 2 : 3; }

// Vectors per strip: 3, except that a remainder of one vector is avoided (4 = 2 + 2): a 1-vector
// tile needs a broadcast per FMA and runs at less than half speed. The strips only decide which
// tile computes a position, never its sum (same FMA chain over the taps), so results do not change.
inline int strip_vectors(int64_t v0, int64_t nvec) {
  const int64_t left = nvec - v0;
  if (left == 4) return 2;
  return static_cast<int>(std::min<int64_t>(kImplicitNV, left));
}

// Where the implicit GEMM finds its input. Output pixel (i, j) is position i * row + j of a
// buffer of planes, and tap k of input channel c reads it at off[k] + position.
//   unit stride: one zero-padded plane per channel, row width w + pw when the rows can share
//                their padding (a read past a row's right end lands in the next row's left gap,
//                also across planes; needs pw <= (kw - 1) dw), else w + 2 pw.
//   stride s > 1: the padded plane is split into its sh x sw phase planes (padded rows of
//                parity r % sh, columns of parity q % sw; Winograd's phase trick): tap (p, q)
//                then reads phase ((p dh) % sh, (q dw) % sw) at row / column (p dh) / sh,
//                (q dw) / sw plus the output position, so the strided reads become plain vector
//                loads. A phase row has ceil((w + 2 pw) / sw) entries, of which the first wo are outputs.
struct ImplicitLayout {
  int64_t row = 0;         // positions per output row (wo valid, the rest computed and dropped)
  int64_t plane = 0;       // elements per (phase) plane
  int64_t phases = 1;      // planes per input channel: sh * sw
  int64_t nvec = 0;        // vectors of positions
  int64_t xsize = 0;       // buffer elements per group (covers every read of every tap)
  std::vector<int64_t> off;
};

bool strided_implicit(const ConvGeometry& g) {
  return (g.sh > 1 || g.sw > 1) && g.sh <= 4 && g.sw <= 4 && (g.ho - 1) * g.sh + (g.kh - 1) * g.dh < g.h + 2 * g.ph &&
         (g.wo - 1) * g.sw + (g.kw - 1) * g.dw < g.w + 2 * g.pw;
}

template <class T>
ImplicitLayout implicit_layout(const ConvGeometry& g, int64_t cg) {
  constexpr int64_t L = kLanes<T>;
  ImplicitLayout lay;
  lay.off.resize(static_cast<size_t>(cg * g.kh * g.kw));
  if (g.sh == 1 && g.sw == 1) {
    const int64_t hp = g.h + 2 * g.ph;
    lay.row = g.w + (g.pw <= (g.kw - 1) * g.dw ? g.pw : 2 * g.pw);
    lay.plane = hp * lay.row;
    lay.nvec = ceil_div(g.ho * lay.row, L);
    // Reads reach at most (cg - 1) plane + (kh - 1) dh row + (kw - 1) dw + nvec L - 1
    //                   <= cg plane + (kw - 1) dw + L - 1   (since ho + (kh - 1) dh = hp).
    lay.xsize = cg * lay.plane + (g.kw - 1) * g.dw + L;
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t p = 0; p < g.kh; ++p)
        for (int64_t q = 0; q < g.kw; ++q)
          lay.off[static_cast<size_t>((c * g.kh + p) * g.kw + q)] = c * lay.plane + p * g.dh * lay.row + q * g.dw;
    return lay;
  }
  const int64_t hq = ceil_div(g.h + 2 * g.ph, g.sh);
  lay.row = ceil_div(g.w + 2 * g.pw, g.sw);
  lay.plane = hq * lay.row;
  lay.phases = g.sh * g.sw;
  lay.nvec = ceil_div(g.ho * lay.row, L);
  int64_t max_off = 0;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t p = 0; p < g.kh; ++p)
      for (int64_t q = 0; q < g.kw; ++q) {
        const int64_t phase = (p * g.dh) % g.sh * g.sw + (q * g.dw) % g.sw;
        const int64_t o = (c * lay.phases + phase) * lay.plane + (p * g.dh) / g.sh * lay.row + (q * g.dw) / g.sw;
        lay.off[static_cast<size_t>((c * g.kh + p) * g.kw + q)] = o;
        max_off = std::max(max_off, o);
      }
  lay.xsize = std::max(max_off + lay.nvec * L, cg * lay.phases * lay.plane);
  return lay;
}

// Copies the cg channels of one image group (xs, [cg, h, w]) into the layout's buffer; the zero
// padding around them is laid down once per buffer and never written.
template <class T>
void implicit_copy_in(const ConvGeometry& g, const ImplicitLayout& lay, const T* xs, int64_t cg, T* xb) {
  const T* x_end = xs + cg * g.h * g.w;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t h = 0; h < g.h; ++h) {
      const T* src = xs + (c * g.h + h) * g.w;
      if (lay.phases == 1) {
        copy_row(xb + c * lay.plane + (h + g.ph) * lay.row + g.pw, src, g.w);
        continue;
      }
      const int64_t R = h + g.ph;
      T* prow = xb + (c * lay.phases + R % g.sh * g.sw) * lay.plane + R / g.sh * lay.row;  // column phase 0
      if (g.sw == 1) {
        copy_row(prow + g.pw, src, g.w);
      } else if (g.sw == 2) {  // input column iw sits at padded column iw + pw: phase (iw + pw) % 2, entry (iw + pw) / 2
        const int64_t q_even = g.pw & 1;
        conv_util::split_row_columns(src, g.w, x_end, prow + q_even * lay.plane + (g.pw >> 1),
                                     prow + (1 - q_even) * lay.plane + ((g.pw + 1) >> 1));
      } else {
        for (int64_t iw = 0; iw < g.w; ++iw) {
          const int64_t S = iw + g.pw;
          prow[S % g.sw * lay.plane + S / g.sw] = src[iw];
        }
      }
    }
}

// Row tiles: small planes (4 <= wo <= 8 outputs per row, e.g. 7 x 7) waste up to a quarter of
// the position vectors above (7 x 8 positions in 64 lanes). There the vectors run along the
// output channels instead: a tile is NR output rows of RP = wo positions (each a broadcast of
// one input value per tap) x NVO vectors of channels, over the same buffer layout and taps, with
// the weights transposed to [k][o] and walked in blocks of taps that stay in L1 while every row
// uses them (the sums continue through a [position][channel] staging block, which is finally
// transposed into y). Measured 1.3x the implicit tiles on 7 x 7 planes. Every output is the same
// FMA chain over the taps as in the tiles above (then + bias), so the bits do not depend on
// which of the two computes it.
template <class T, int RP, int NVO, int NR>
void row_tile(int64_t K, const int64_t* off, const T* xrow, int64_t row, const T* wt, int64_t ostride, const T* bias,
              T* out, bool init) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[NR][RP][NVO];
#pragma GCC unroll 2
  for (int q = 0; q < NR; ++q)
#pragma GCC unroll 8
    for (int r = 0; r < RP; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NVO; ++v)
        acc[q][r][v] = init ? Vec<T>(T(0)) : Vec<T>::load_unaligned(out + (q * RP + r) * ostride + v * L);
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> wv[NVO];
#pragma GCC unroll 4
    for (int v = 0; v < NVO; ++v) wv[v] = Vec<T>::load_unaligned(wt + k * ostride + v * L);
    const T* xk = xrow + off[k];
#pragma GCC unroll 2
    for (int q = 0; q < NR; ++q)
#pragma GCC unroll 8
      for (int r = 0; r < RP; ++r) {
        const Vec<T> a(xk[q * row + r]);
#pragma GCC unroll 4
        for (int v = 0; v < NVO; ++v) acc[q][r][v] = xsimd::fma(a, wv[v], acc[q][r][v]);
      }
  }
#pragma GCC unroll 2
  for (int q = 0; q < NR; ++q)
#pragma GCC unroll 8
    for (int r = 0; r < RP; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NVO; ++v) {
        Vec<T> a = acc[q][r][v];
        if (bias) a += Vec<T>::load_unaligned(bias + v * L);
        a.store_unaligned(out + (q * RP + r) * ostride + v * L);
      }
}

template <class T>
using RowTileFn = void (*)(int64_t, const int64_t*, const T*, int64_t, const T*, int64_t, const T*, T*, bool);
constexpr int64_t kRowTileTaps = 192;  // taps per block: a block of transposed weights stays in L1 across the rows
constexpr int64_t kRowTileMin = 4, kRowTileMax = 8;  // output row widths with a row tile
// Output rows per tile: two (x 2 vectors of channels: 28 accumulators for rows of 7, measured 8%
// faster than one row x 4 vectors, which needs one register too many), one for rows of 8.
constexpr int row_tile_rows(int64_t wo) { return wo <= 7 ? 2 : 1; }
template <class T, int RP>
constexpr std::array<RowTileFn<T>, 4> make_row_tiles() {  // [rows - 1][vectors - 1]
  return {&row_tile<T, RP, 1, 1>, &row_tile<T, RP, 2, 1>, &row_tile<T, RP, 1, row_tile_rows(RP)>,
          &row_tile<T, RP, 2, row_tile_rows(RP)>};
}
template <class T>
const std::array<std::array<RowTileFn<T>, 4>, 5> kRowTiles{make_row_tiles<T, 4>(), make_row_tiles<T, 5>(),
                                                           make_row_tiles<T, 6>(), make_row_tiles<T, 7>(),
                                                           make_row_tiles<T, 8>()};

// Row tiles suit outputs of wo per row and `channels` output channels.
template <class T>
bool row_tiles_fit(int64_t wo, int64_t channels) {
  return wo >= kRowTileMin && wo <= kRowTileMax && channels % kLanes<T> == 0 && channels >= 2 * kLanes<T>;
}

// stage[i * wo + j][o] = sum over taps k of xb[i * row + off[k] + j] * wt[k][o] (+ bias[o]) for
// the ho x wo outputs of one image: channel blocks outer, then blocks of taps (whose weights stay
// in L1 while every row uses them; the sums continue through the staging block), then rows.
template <class T>
void run_row_tiles(int64_t K, const int64_t* off, const T* xb, int64_t row, int64_t ho, int64_t wo, int64_t channels,
                   const T* wt, const T* bias, T* stage) {
  constexpr int64_t L = kLanes<T>;
  const auto& tiles = kRowTiles<T>[static_cast<size_t>(wo - kRowTileMin)];
  for (int64_t o0 = 0; o0 < channels; o0 += 2 * L) {
    const int64_t nvo = std::min<int64_t>(2, (channels - o0) / L);
    for (int64_t k0 = 0; k0 < K; k0 += kRowTileTaps) {
      const int64_t kn = std::min(kRowTileTaps, K - k0);
      const T* bk = bias && k0 + kn == K ? bias + o0 : nullptr;
      for (int64_t i = 0; i < ho; i += row_tile_rows(wo)) {
        const int64_t nr = std::min<int64_t>(row_tile_rows(wo), ho - i);
        tiles[static_cast<size_t>((nr - 1) * 2 + nvo - 1)](kn, off + k0, xb + i * row, row, wt + k0 * channels + o0, channels,
                                                          bk, stage + i * wo * channels + o0, k0 == 0);
      }
    }
  }
}

template <class T>
void forward_implicit(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  constexpr int MR = kImplicitMR;
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  const ImplicitLayout lay = implicit_layout<T>(g, cg);
  const int64_t nvec = lay.nvec;
  const int64_t panels = ceil_div(og, MR);
  const bool by_rows = row_tiles_fit<T>(g.wo, og);
  // The weights in the tiles' layout: row tiles [gi][k][o]; implicit tiles [gi][panel][k][MR]
  // (zero rows past og). From the caching allocator: a fresh buffer of a big layer's size per call
  // cost its zero fill and page faults (~1 ms per 2.4 MB in a profile).
  Scratch<T> wlay(by_rows ? g.groups * K * og : g.groups * panels * K * MR);
  T* const wt = wlay.get();
  T* const wpack = wlay.get();
  if (by_rows) {
    for (int64_t gi = 0; gi < g.groups; ++gi) transpose(w + gi * og * K, og, K, K, wt + gi * K * og, og);
  } else {
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      if (og % MR != 0) std::fill_n(wpack + (gi * panels + panels - 1) * K * MR, K * MR, T(0));
      for (int64_t o = 0; o < og; ++o)
        for (int64_t k = 0; k < K; ++k) wpack[((gi * panels + o / MR) * K + k) * MR + o % MR] = w[(gi * og + o) * K + k];
    }
  }
  const StorePlan plan = by_rows ? StorePlan{} : make_store_plan(g.ho, g.wo, lay.row, nvec, kLanes<T>);
  parallel_for(g.n, images_per_task(g.n, g.o * P * K), [&](int64_t b, int64_t e) {
    Scratch<T> xb(lay.xsize), stage(by_rows ? P * og : 0);
    std::fill(xb.get(), xb.get() + lay.xsize, T(0));
    for (int64_t n = b; n < e; ++n) {
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const T* xs = x + (n * g.c + gi * cg) * g.h * g.w;
        implicit_copy_in(g, lay, xs, cg, xb.get());
        T* yo = y + (n * g.o + gi * og) * P;
        if (n + 1 < e) {  // the next image's input and output, while this one is computed
          prefetch_range(xs + g.c * g.h * g.w, cg * g.h * g.w * int64_t(sizeof(T)));
          prefetch_range_for_write(yo + g.o * P, og * P * int64_t(sizeof(T)));
        }
        if (by_rows) {
          run_row_tiles(K, lay.off.data(), xb.get(), lay.row, g.ho, g.wo, og, wt + gi * K * og,
                        bias ? bias + gi * og : nullptr, stage.get());
          transpose(stage.get(), P, og, og, yo, P);  // [position][channel] -> [channel][position]
          continue;
        }
        // Positions outer, output-channel panels inner: the input window of a strip of positions
        // (cg planes x kh rows x ~3 vectors) stays in L1 while every panel's weights stream past it.
        for (int64_t v0 = 0; v0 < nvec;) {
          const int nv = strip_vectors(v0, nvec);
          for (int64_t panel = 0; panel < panels; ++panel) {
            const int rows = static_cast<int>(std::min<int64_t>(MR, og - panel * MR));
            const T* wpan = wpack + (gi * panels + panel) * K * MR;
            kImplicitTiles<T>[nv - 1][implicit_rows_index(rows)](K, lay.off.data(), xb.get() + v0 * kLanes<T>, wpan,
                                                                 rows, bias ? bias + gi * og + panel * MR : nullptr,
                                                                 plan, v0, yo + panel * MR * P, P);
          }
          v0 += nv;
        }
      }
    }
  });
}

// The input gradient of a unit-stride convolution is the unit-stride convolution of gy with the
// kernel flipped and the channel roles swapped, padded by (k - 1) d - p (when that is >= 0).
bool implicit_input_grad(const ConvGeometry& g) {
  return natural_unit_stride(g) && g.ph <= (g.kh - 1) * g.dh && g.pw <= (g.kw - 1) * g.dw;
}

template <class T>
void backward_input_implicit(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, kh = g.kh, kw = g.kw, taps = kh * kw;
  const ConvGeometry t{g.n, g.o, g.ho, g.wo, g.c, kh, kw, g.h, g.w, 1, 1,
                       (kh - 1) * g.dh - g.ph, (kw - 1) * g.dw - g.pw, g.dh, g.dw, g.groups};
  // Winograd reads the flipped kernel straight from w. (It declines a gy holding an inf or NaN;
  // see winograd_forward.)
  if (winograd_applies(t) && winograd_flipped(t, gy, w, gx)) return;
  // wf [C][og][kh][kw]: w flipped, channel roles swapped. From the caching allocator: a fresh
  // buffer per call cost its zero fill and page faults, more than the copy.
  Scratch<T> wflip(g.c * og * taps);
  T* const wf = wflip.get();
  for (int64_t gi = 0; gi < g.groups; ++gi)
    for (int64_t o = 0; o < og; ++o)
      for (int64_t c = 0; c < cg; ++c) {
        const T* src = w + ((gi * og + o) * cg + c) * taps;
        T* dst = wf + ((gi * cg + c) * og + o) * taps;
        for (int64_t k = 0; k < taps; ++k) dst[k] = src[taps - 1 - k];  // (p, q) -> (kh-1-p, kw-1-q)
      }
  forward_implicit(t, gy, wf, static_cast<const T*>(nullptr), gx);
}

// The input gradient of a strided convolution, one phase plane of gx at a time. Padded input row
// R = a + sh r (phase a = R % sh) receives gy row i = r - m from exactly the taps p with
// (p dh) % sh == a, where m = (p dh) / sh; likewise for columns. So each phase plane of gx is a
// unit-stride correlation of the zero-padded gy with that phase's sub-kernel -- the implicit
// GEMM again, with the roles of the channels swapped and tap offsets (Mh - m) rows and (Mw - n)
// columns into gy padded by Mh = max m rows and Mw = max n columns. The phase planes are
// computed into a staging buffer and merged into gx (a phase without taps leaves zeros, or the
// bias: with a bias this computes a transposed convolution's forward).
template <class T>
void backward_input_phases(const ConvGeometry& g, const T* gy, const T* w, const T* bias, T* gx) {
  constexpr int64_t L = kLanes<T>;
  constexpr int MR = kImplicitMR;
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, Kfull = cg * g.kh * g.kw, P = g.ho * g.wo;
  const int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw;
  const int64_t Mh = (g.kh - 1) * g.dh / g.sh, Mw = (g.kw - 1) * g.dw / g.sw;
  const int64_t row = ceil_div(wp, g.sw) + Mw, bplane = (ceil_div(hp, g.sh) + Mh) * row;  // padded gy planes
  const int64_t panels = ceil_div(cg, MR);
  // Phase (a, b) holds the padded rows a + sh r and columns b + sw s that are rows and columns of
  // gx: r in [r0, r0 + hq), s in [s0, s0 + wq). Only those are computed (entry (r - r0, s - s0)).
  struct Phase {
    int64_t hq, wq, K = 0, nvec = 0;
    int64_t z = 0;  // offset of the phase's staging planes [cg][hq][wq]
    std::vector<int64_t> off;
    // The phase's weights at wl + w0 in the tiles' layout, for its taps k = (o, p, q):
    // implicit tiles [gi][panel][k][MR] (w[o][c][p][q], zero rows past cg), or, by_rows (small
    // phase planes), row tiles [gi][k][c].
    bool by_rows = false;
    int64_t w0 = 0;
    StorePlan plan;
  };
  std::vector<Phase> phases;  // phase a * sw + b: padded rows of parity a, columns of parity b
  std::vector<std::vector<std::array<int64_t, 3>>> phase_taps;  // (o, p, q) per phase
  int64_t gb_size = og * bplane, z_size = 0, stage_size = 0, wl_size = 0;
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      Phase ph;
      const int64_t r0 = ceil_div(std::max<int64_t>(g.ph - a, 0), g.sh), s0 = ceil_div(std::max<int64_t>(g.pw - b, 0), g.sw);
      ph.hq = ceil_div(g.ph + g.h - a, g.sh) - r0;
      ph.wq = ceil_div(g.pw + g.w - b, g.sw) - s0;
      ph.z = z_size;
      z_size += cg * ph.hq * ph.wq + L;  // + slack: merge_row_columns reads whole vectors
      std::vector<std::array<int64_t, 3>> taps;  // (o, p, q)
      for (int64_t o = 0; o < og; ++o)
        for (int64_t p = 0; p < g.kh; ++p)
          for (int64_t q = 0; q < g.kw; ++q)
            if ((p * g.dh) % g.sh == a && (q * g.dw) % g.sw == b) taps.push_back({o, p, q});
      ph.K = static_cast<int64_t>(taps.size());
      if (ph.K > 0) {
        ph.nvec = ceil_div(ph.hq * row, L);
        for (const auto& [o, p, q] : taps) {
          ph.off.push_back(o * bplane + (r0 + Mh - (p * g.dh) / g.sh) * row + (s0 + Mw - (q * g.dw) / g.sw));
          gb_size = std::max(gb_size, ph.off.back() + ph.nvec * L);
        }
        ph.by_rows = row_tiles_fit<T>(ph.wq, cg);
        ph.w0 = wl_size;
        wl_size += g.groups * (ph.by_rows ? cg : panels * MR) * ph.K;
        if (ph.by_rows) stage_size = std::max(stage_size, ph.hq * ph.wq * cg);
        if (!ph.by_rows) ph.plan = make_store_plan(ph.hq, ph.wq, row, ph.nvec, L);
      }
      phases.push_back(std::move(ph));
      phase_taps.push_back(std::move(taps));
    }
  // The weight layouts, from the caching allocator (a fresh buffer per call costs page faults).
  // Taps outer, channels inner: w is read at a stride of kh * kw, the layouts written along rows.
  Scratch<T> wl_buf(wl_size);
  T* const wl = wl_buf.get();
  for (size_t f = 0; f < phases.size(); ++f) {
    const Phase& ph = phases[f];
    T* const dst = wl + ph.w0;
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      if (!ph.by_rows && cg % MR != 0) std::fill_n(dst + (gi * panels + panels - 1) * ph.K * MR, ph.K * MR, T(0));
      for (int64_t k = 0; k < ph.K; ++k) {
        const auto& [o, p, q] = phase_taps[f][static_cast<size_t>(k)];
        const T* src = w + (((gi * og + o) * cg) * g.kh + p) * g.kw + q;  // channel c at src[c * kh * kw]
        for (int64_t c = 0; c < cg; ++c) {
          const T v = src[c * g.kh * g.kw];
          if (ph.by_rows) {
            dst[(gi * ph.K + k) * cg + c] = v;
          } else {
            dst[((gi * panels + c / MR) * ph.K + k) * MR + c % MR] = v;
          }
        }
      }
    }
  }
  parallel_for(g.n, images_per_task(g.n, g.o * P * Kfull), [&](int64_t lo, int64_t hi) {
    Scratch<T> gb(gb_size), z(z_size), stage(stage_size);
    std::fill(gb.get(), gb.get() + gb_size, T(0));  // the padding; only gy's own positions are written
    std::fill(z.get(), z.get() + z_size, T(0));
    for (int64_t n = lo; n < hi; ++n)
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        // Phases without taps (stride > kernel) stay zero, or hold this group's bias.
        if (bias && (n == lo || g.groups > 1))
          for (const Phase& ph : phases)
            if (ph.K == 0)
              for (int64_t c = 0; c < cg; ++c)
                std::fill_n(z.get() + ph.z + c * ph.hq * ph.wq, ph.hq * ph.wq, bias[gi * cg + c]);
        const T* gys = gy + (n * g.o + gi * og) * P;
        for (int64_t o = 0; o < og; ++o)
          for (int64_t i = 0; i < g.ho; ++i) copy_row(gb.get() + o * bplane + (i + Mh) * row + Mw, gys + (o * g.ho + i) * g.wo, g.wo);
        for (const Phase& ph : phases) {
          const int64_t zp = ph.hq * ph.wq;  // staging plane of one channel
          const T* bg = bias ? bias + gi * cg : nullptr;
          if (ph.K > 0 && ph.by_rows) {
            run_row_tiles(ph.K, ph.off.data(), gb.get(), row, ph.hq, ph.wq, cg, wl + ph.w0 + gi * ph.K * cg, bg,
                          stage.get());
            transpose(stage.get(), zp, cg, cg, z.get() + ph.z, zp);  // [entry][channel] -> [channel][entry]
            continue;
          }
          for (int64_t v0 = 0; v0 < ph.nvec;) {
            const int nv = strip_vectors(v0, ph.nvec);
            for (int64_t panel = 0; panel < panels; ++panel) {
              const int rows = static_cast<int>(std::min<int64_t>(MR, cg - panel * MR));
              const T* wpan = wl + ph.w0 + (gi * panels + panel) * ph.K * MR;
              kImplicitTiles<T>[nv - 1][implicit_rows_index(rows)](ph.K, ph.off.data(), gb.get() + v0 * L, wpan, rows,
                                                                   bg ? bg + panel * MR : nullptr, ph.plan, v0,
                                                                   z.get() + ph.z + panel * MR * zp, zp);
            }
            v0 += nv;
          }
        }
        // gx row h is padded row R = h + ph: row phase R % sh, entry row h / sh (rows h and
        // h + sh are consecutive entries of one phase, the first rows being entry 0); likewise
        // column x is entry x / sw of column phase (x + pw) % sw.
        T* gxg = gx + (n * g.c + gi * cg) * g.h * g.w;
        for (int64_t c = 0; c < cg; ++c)
          for (int64_t h = 0; h < g.h; ++h) {
            const Phase* prow = phases.data() + (h + g.ph) % g.sh * g.sw;  // column phase 0 of the row phase
            auto entry_row = [&](int64_t b) { return z.get() + prow[b].z + (c * prow[b].hq + h / g.sh) * prow[b].wq; };
            T* xr = gxg + (c * g.h + h) * g.w;
            if (g.sw == 2) {
              const int64_t e = g.pw & 1;  // column phase of x = 0
              conv_util::merge_row_columns(entry_row(e), entry_row(1 - e), g.w, xr);
            } else {
              for (int64_t x = 0; x < g.w; ++x) xr[x] = entry_row((x + g.pw) % g.sw)[x / g.sw];
            }
          }
      }
  });
}

// Weight gradient as outer products over positions: dW^T[k][o] += x_k(pos) * gy[o](pos), with the
// output channels along the vector lanes (gy transposed per image to [pos][o]) and the tap values
// broadcast. A micro-tile keeps KR taps x NVO vectors of channels in registers for a block of
// positions; the reduction over positions and images needs no horizontal sums. Any strides work.
constexpr int64_t kWgradPositions = 128;  // at most this many positions per block (gy^T block in L1)

// acc_mem (+)= the tile's sums: `init` starts from zero instead of acc_mem's contents (the first
// block of positions of a partial, so the partials need no zero-filling pass).
template <class T, int KR, int NVO>
void wgrad_tile(int64_t npos, const int64_t* xoff, const int64_t* toff, const T* xb, const T* gyt, int64_t gstride,
                T* acc_mem, int64_t astride, bool init) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[KR][NVO];
  const T* tap[KR];
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r) {
    tap[r] = xb + toff[r];
#pragma GCC unroll 4
    for (int v = 0; v < NVO; ++v) acc[r][v] = init ? Vec<T>(T(0)) : Vec<T>::load_unaligned(acc_mem + r * astride + v * L);
  }
#pragma GCC unroll 2
  for (int64_t pos = 0; pos < npos; ++pos) {
    const int64_t xo = xoff[pos];
    const T* gp = gyt + pos * gstride;
    Vec<T> gv[NVO];
#pragma GCC unroll 4
    for (int v = 0; v < NVO; ++v) gv[v] = Vec<T>::load_unaligned(gp + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < KR; ++r) {
      const Vec<T> a(tap[r][xo]);
#pragma GCC unroll 4
      for (int v = 0; v < NVO; ++v) acc[r][v] = xsimd::fma(a, gv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NVO; ++v) acc[r][v].store_unaligned(acc_mem + r * astride + v * L);
}

template <class T>
using WgradTileFn = void (*)(int64_t, const int64_t*, const int64_t*, const T*, const T*, int64_t, T*, int64_t, bool);

// Taps per micro-tile for 1..4 vectors of channels (at most 24 accumulators). Only these four
// tiles are instantiated: the last block of taps is padded with dummy taps (rows of the partial
// past K, ignored).
constexpr int kWgradTaps[5] = {0, 16, 12, 8, 6};
constexpr int64_t kWgradMaxTaps = 16;
template <class T>
const std::array<WgradTileFn<T>, 4> kWgradTiles{&wgrad_tile<T, 16, 1>, &wgrad_tile<T, 12, 2>, &wgrad_tile<T, 8, 3>,
                                                &wgrad_tile<T, 6, 4>};

template <class T>
void backward_weight_implicit(const ConvGeometry& g, const T* x, const T* gy, T* gw, T* gbias) {
  constexpr int64_t L = kLanes<T>;
  const int64_t cg = g.c / g.groups, og = g.o / g.groups, K = cg * g.kh * g.kw, P = g.ho * g.wo;
  // Padded planes large enough for every window (also when ho/wo exceed the natural sizes).
  const int64_t hp = std::max(g.h + 2 * g.ph, (g.ho - 1) * g.sh + (g.kh - 1) * g.dh + 1);
  const int64_t wp = std::max(g.w + 2 * g.pw, (g.wo - 1) * g.sw + (g.kw - 1) * g.dw + 1), plane = hp * wp;
  const int64_t ogp = ceil_div(og, L) * L;  // channel stride of gy^T and of the partials (padded lanes stay 0)
  const int64_t Kp = K + kWgradMaxTaps;      // partial rows per group: K taps + room for dummy taps
  const int64_t part_size = g.groups * Kp * ogp;
  const int64_t pblock = ceil_div(P, ceil_div(P, kWgradPositions));  // equal blocks
  // Partials of a big layer are kept few (a smaller budget than the other reductions'): each is
  // written once and read back by the combine (7 partials of 256 x 2304 were 16 MB; the time at
  // 1 thread measured alike, the memory is a quarter). The work is then split across threads by
  // blocks of taps as well (parts), which changes no bit: every tap's sums are the same FMA
  // chains whoever computes them.
  const int64_t S = std::min(reduction_groups(g.n, part_size), std::max<int64_t>(1, (int64_t{1} << 20) / part_size));
  constexpr int64_t kTapBlock = 48;  // a multiple of every tile's taps (kWgradTaps), so blocks stay aligned
  const int64_t parts = std::clamp<int64_t>(ceil_div(2 * int64_t{num_threads()}, S), 1, ceil_div(K, kTapBlock));
  const int64_t part_taps = ceil_div(ceil_div(K, parts), kTapBlock) * kTapBlock;
  Scratch<T> part(S * part_size);
  std::vector<double> bpart(static_cast<size_t>(S * g.o), 0.0);
  std::vector<int64_t> xoff(static_cast<size_t>(P)), toff(static_cast<size_t>(Kp), 0);  // dummy taps read offset 0
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) xoff[static_cast<size_t>(i * g.wo + j)] = i * g.sh * wp + j * g.sw;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t p = 0; p < g.kh; ++p)
      for (int64_t q = 0; q < g.kw; ++q) toff[static_cast<size_t>((c * g.kh + p) * g.kw + q)] = c * plane + p * g.dh * wp + q * g.dw;
  parallel_for(S * parts, 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> xb(cg * plane), gyt(P * ogp);
    std::fill(xb.get(), xb.get() + cg * plane, T(0));
    std::fill(gyt.get(), gyt.get() + P * ogp, T(0));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t s = task / parts, k_lo = task % parts * part_taps, k_hi = std::min(K, k_lo + part_taps);
      if (k_lo >= k_hi) continue;
      const bool bias_task = task % parts == 0;  // one part per group sums the bias gradient
      T* ps = part.get() + s * part_size;  // rows [0, K) of each group's block are initialised by the first image
      for (int64_t n = group_begin(g.n, S, s); n < group_begin(g.n, S, s + 1); ++n) {
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          const T* xs = x + (n * g.c + gi * cg) * g.h * g.w;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t h = 0; h < g.h; ++h)
              copy_row(xb.get() + c * plane + (h + g.ph) * wp + g.pw, xs + (c * g.h + h) * g.w, g.w);
          const T* gys = gy + (n * g.o + gi * og) * P;
          transpose(gys, og, P, P, gyt.get(), ogp);
          // The next image, a slice per micro-tile call while this one is computed.
          conv_util::SpreadPrefetch next_gy, next_x;
          if (n + 1 < group_begin(g.n, S, s + 1)) {
            const int64_t calls =
                ceil_div(P, pblock) * ceil_div(ogp, 4 * L) * ceil_div(k_hi - k_lo, kWgradTaps[std::min<int64_t>(4, ogp / L)]);
            next_gy = conv_util::SpreadPrefetch(gys + g.o * P, og * P * int64_t(sizeof(T)), calls, false);
            next_x = conv_util::SpreadPrefetch(xs + g.c * g.h * g.w, cg * g.h * g.w * int64_t(sizeof(T)), calls, false);
          }
          if (gbias && bias_task)
            for (int64_t o = 0; o < og; ++o) bpart[static_cast<size_t>(s * g.o + gi * og + o)] += row_sum(gys + o * P, P);
          T* pg = ps + gi * Kp * ogp;
          for (int64_t p0 = 0; p0 < P; p0 += pblock) {
            const int64_t np = std::min(pblock, P - p0);
            for (int64_t o0 = 0; o0 < ogp; o0 += 4 * L) {
              const int nvo = static_cast<int>(std::min<int64_t>(4, (ogp - o0) / L));
              const WgradTileFn<T> fn = kWgradTiles<T>[static_cast<size_t>(nvo - 1)];
              const bool init = n == group_begin(g.n, S, s) && p0 == 0;
              for (int64_t k0 = k_lo; k0 < k_hi; k0 += kWgradTaps[nvo]) {
                fn(np, xoff.data() + p0, toff.data() + k0, xb.get(), gyt.get() + p0 * ogp + o0, ogp, pg + k0 * ogp + o0, ogp,
                   init);
                next_gy.step();
                next_x.step();
              }
            }
          }
          next_gy.finish();
          next_x.finish();
        }
      }
    }
  });
  // Partials added in their own [tap][channel] layout (contiguous reads: the partials of a big
  // layer do not fit in cache), in group order in f64, and transposed into gw [o][tap] a block
  // of kCombineTaps taps at a time, so that every channel's row of gw gets whole cache lines
  // (tap by tap, each store touched its own line and page: [1, 512, 7, 7] x 512 spent ~15 of its
  // 24 ms here, 3 ms in all after). Blocks are independent, so they are combined in parallel.
  constexpr int64_t kCombineTaps = 16;
  const int64_t tap_blocks = ceil_div(K, kCombineTaps);
  parallel_for(g.groups * tap_blocks, items_per_task(S * og * kCombineTaps * 2), [&](int64_t r0, int64_t r1) {
    Scratch<double> sums(kCombineTaps * og);  // [tap in block][o]
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t gi = r / tap_blocks, k0 = r % tap_blocks * kCombineTaps, kn = std::min(kCombineTaps, K - k0);
      for (int64_t t = 0; t < kn; ++t) {
        const T* src = part.get() + (gi * Kp + k0 + t) * ogp;
        double* row = sums.get() + t * og;
        for (int64_t o = 0; o < og; ++o) row[o] = 0.0 + static_cast<double>(src[o]);  // as from 0: -0 sums to +0
        for (int64_t s = 1; s < S; ++s)
          for (int64_t o = 0; o < og; ++o) row[o] += static_cast<double>(src[s * part_size + o]);
      }
      for (int64_t o = 0; o < og; ++o) {
        T* dst = gw + (gi * og + o) * K + k0;
        for (int64_t t = 0; t < kn; ++t) dst[t] = static_cast<T>(sums.get()[t * og + o]);
      }
    }
  });
  if (gbias) combine_partials(bpart.data(), S, g.o, gbias);
}

// ---------------------------------------------------------------------------------------------
// Pooling

int64_t planes_per_task(int64_t work_per_plane) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(work_per_plane, 1));
}

template <class T>
inline bool takes(T v, T best) {
  return v > best || v != v;  // first maximum; a NaN replaces anything
}

#if XSIMD_WITH_AVX512F
// One vector of outputs of a 2x2 / stride 2 window row pair: even and odd columns are separated
// with a two-source permute; then the same selection rule as the scalar code below (first maximum
// in row-major order, NaN wins), as masks.
inline void max_pool_2x2_vec(const float* r0, const float* r1, int32_t base0, int32_t base1, int64_t j, int64_t cnt,
                             float* y, int32_t* idx) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t n = 2 * cnt;  // input columns to read
  const __m512 lo0 = load_n(r0 + 2 * j, std::min<int64_t>(n, 16)), hi0 = load_n(r0 + 2 * j + 16, std::max<int64_t>(n - 16, 0));
  const __m512 lo1 = load_n(r1 + 2 * j, std::min<int64_t>(n, 16)), hi1 = load_n(r1 + 2 * j + 16, std::max<int64_t>(n - 16, 0));
  const __m512 a = _mm512_permutex2var_ps(lo0, even, hi0), b = _mm512_permutex2var_ps(lo0, odd, hi0);
  const __m512 c = _mm512_permutex2var_ps(lo1, even, hi1), d = _mm512_permutex2var_ps(lo1, odd, hi1);
  auto takes_mask = [](__m512 v, __m512 best) {
    return static_cast<__mmask16>(_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
  };
  const __mmask16 tb = takes_mask(b, a), td = takes_mask(d, c);
  const __m512 m0 = _mm512_mask_blend_ps(tb, a, b), m1 = _mm512_mask_blend_ps(td, c, d);
  const __mmask16 t1 = takes_mask(m1, m0);
  const __m512i col = _mm512_add_epi32(even, _mm512_set1_epi32(static_cast<int32_t>(2 * j)));
  const __m512i one = _mm512_set1_epi32(1);
  __m512i i0 = _mm512_add_epi32(col, _mm512_set1_epi32(base0)), i1 = _mm512_add_epi32(col, _mm512_set1_epi32(base1));
  i0 = _mm512_mask_add_epi32(i0, tb, i0, one);
  i1 = _mm512_mask_add_epi32(i1, td, i1, one);
  const __mmask16 keep = static_cast<__mmask16>((cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1));
  _mm512_mask_storeu_ps(y + j, keep, _mm512_mask_blend_ps(t1, m0, m1));
  _mm512_mask_storeu_epi32(idx + j, keep, _mm512_mask_blend_epi32(t1, i0, i1));
}

inline void max_pool_2x2_vec(const double* r0, const double* r1, int32_t base0, int32_t base1, int64_t j, int64_t cnt,
                             double* y, int32_t* idx) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_add_epi64(even, _mm512_set1_epi64(1));
  const int64_t n = 2 * cnt;
  const __m512d lo0 = load_n(r0 + 2 * j, std::min<int64_t>(n, 8)), hi0 = load_n(r0 + 2 * j + 8, std::max<int64_t>(n - 8, 0));
  const __m512d lo1 = load_n(r1 + 2 * j, std::min<int64_t>(n, 8)), hi1 = load_n(r1 + 2 * j + 8, std::max<int64_t>(n - 8, 0));
  const __m512d a = _mm512_permutex2var_pd(lo0, even, hi0), b = _mm512_permutex2var_pd(lo0, odd, hi0);
  const __m512d c = _mm512_permutex2var_pd(lo1, even, hi1), d = _mm512_permutex2var_pd(lo1, odd, hi1);
  auto takes_mask = [](__m512d v, __m512d best) {
    return static_cast<__mmask8>(_mm512_cmp_pd_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q));
  };
  const __mmask8 tb = takes_mask(b, a), td = takes_mask(d, c);
  const __m512d m0 = _mm512_mask_blend_pd(tb, a, b), m1 = _mm512_mask_blend_pd(td, c, d);
  const __mmask8 t1 = takes_mask(m1, m0);
  const __m256i col = _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), _mm256_set1_epi32(static_cast<int32_t>(2 * j)));
  const __m256i one = _mm256_set1_epi32(1);
  __m256i i0 = _mm256_add_epi32(col, _mm256_set1_epi32(base0)), i1 = _mm256_add_epi32(col, _mm256_set1_epi32(base1));
  i0 = _mm256_mask_add_epi32(i0, tb, i0, one);
  i1 = _mm256_mask_add_epi32(i1, td, i1, one);
  const __mmask8 keep = static_cast<__mmask8>(cnt >= 8 ? 0xFFu : (1u << cnt) - 1);
  _mm512_mask_storeu_pd(y + j, keep, _mm512_mask_blend_pd(t1, m0, m1));
  _mm256_mask_storeu_epi32(idx + j, keep, _mm256_mask_blend_epi32(t1, i0, i1));
}
#endif

template <class T>
void max_pool_plane_2x2(const PoolGeometry& g, const T* xp, T* yp, int32_t* ip) {
  const int64_t W = g.w;
  for (int64_t i = 0; i < g.ho; ++i) {
    const T* r0 = xp + 2 * i * W;
    const T* r1 = r0 + W;
    const int32_t base0 = static_cast<int32_t>(2 * i * W), base1 = static_cast<int32_t>((2 * i + 1) * W);
#if XSIMD_WITH_AVX512F
    for (int64_t j = 0; j < g.wo; j += kLanes<T>)
      max_pool_2x2_vec(r0, r1, base0, base1, j, std::min(kLanes<T>, g.wo - j), yp + i * g.wo, ip + i * g.wo);
    continue;
#endif
    for (int64_t j = 0; j < g.wo; ++j) {
      const T a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      const bool tb = takes(b, a), td = takes(d, c);
      const T m0 = tb ? b : a, m1 = td ? d : c;
      const int32_t i0 = base0 + static_cast<int32_t>(2 * j) + (tb ? 1 : 0);
      const int32_t i1 = base1 + static_cast<int32_t>(2 * j) + (td ? 1 : 0);
      const bool t1 = takes(m1, m0);
      yp[i * g.wo + j] = t1 ? m1 : m0;
      ip[i * g.wo + j] = t1 ? i1 : i0;
    }
  }
}

template <class T>
void max_pool_plane(const PoolGeometry& g, const T* xp, T* yp, int32_t* ip) {
  for (int64_t i = 0; i < g.ho; ++i) {
    int64_t hs = i * g.sh - g.ph;
    const int64_t he = std::min(hs + (g.kh - 1) * g.dh + 1, g.h);
    while (hs < 0) hs += g.dh;
    for (int64_t j = 0; j < g.wo; ++j) {
      int64_t ws = j * g.sw - g.pw;
      const int64_t we = std::min(ws + (g.kw - 1) * g.dw + 1, g.w);
      while (ws < 0) ws += g.dw;
      T best = -std::numeric_limits<T>::infinity();
      int64_t bi = hs < he && ws < we ? hs * g.w + ws : -1;
      for (int64_t h = hs; h < he; h += g.dh)
        for (int64_t w = ws; w < we; w += g.dw) {
          const T v = xp[h * g.w + w];
          if (takes(v, best)) {
            best = v;
            bi = h * g.w + w;
          }
        }
      yp[i * g.wo + j] = best;
      ip[i * g.wo + j] = static_cast<int32_t>(bi);
    }
  }
}

// Whether every weight is finite. An inf or NaN weight must reach only the outputs whose sums hold
// it: Winograd's transforms would spread it over a whole tile, and the input gradient's
// correlation of the zero-padded gy with the flipped kernel would multiply it by padding zeros
// (0 * inf = NaN) at inputs the tap never reads. Such weights take the paths without either.
template <class T>
bool weights_finite(const ConvGeometry& g, const T* w) {
  // On the bits (an all-ones exponent is inf or NaN): an integer OR-reduction, which vectorises
  // (a floating-point sum would run as one serial chain of adds).
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kExponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  const int64_t count = g.o * (g.c / g.groups) * g.kh * g.kw;
  Bits bad = 0;
  for (int64_t i = 0; i < count; ++i) bad |= Bits((std::bit_cast<Bits>(w[i]) & kExponent) == kExponent);
  return bad == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <class T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  if (g.n == 0 || g.o == 0 || g.ho == 0 || g.wo == 0) return;
  if (is_pointwise(g)) {
    forward_gemm(g, x, w, bias, y);
  } else if (use_direct(g)) {
    forward_direct(g, x, w, bias, y);
  } else if (winograd_applies(g) && weights_finite(g, w) && winograd_forward(g, x, w, bias, y)) {
    // done (Winograd declines an input holding an inf or NaN: then the implicit GEMM below)
  } else if (natural_unit_stride(g) || strided_implicit(g)) {
    forward_implicit(g, x, w, bias, y);
  } else {
    forward_gemm(g, x, w, bias, y);
  }
}

template <class T>
void conv2d_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, const T* bias) {
  if (g.n == 0 || g.c == 0 || g.h == 0 || g.w == 0) return;
  if (is_pointwise(g) || !weights_finite(g, w)) {
    backward_input_gemm(g, gy, w, gx);  // col = W^T gy, then col2im: only the taps' real inputs
  } else if (implicit_input_grad(g)) {
    backward_input_implicit(g, gy, w, gx);
  } else if (strided_implicit(g)) {
    backward_input_phases(g, gy, w, bias, gx);  // adds the bias on the way
    return;
  } else {
    backward_input_gemm(g, gy, w, gx);
  }
  if (bias) add_channel_bias(g.n, g.c, g.h * g.w, bias, gx);
}

template <class T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, T* gbias) {
  const int64_t K = g.c / g.groups * g.kh * g.kw;
  if (g.n == 0 || g.ho == 0 || g.wo == 0) {
    std::fill(gw, gw + g.o * K, T(0));
    if (gbias) std::fill(gbias, gbias + g.o, T(0));
    return;
  }
  if (g.o == 0) return;
  if (is_pointwise(g)) {
    backward_weight_pointwise(g, x, gy, gw, gbias);
  } else if (use_direct(g)) {
    backward_weight_direct(g, x, gy, gw, gbias);
  } else {
    backward_weight_implicit(g, x, gy, gw, gbias);
  }
}

template <class T>
void add_channel_bias(int64_t n, int64_t channels, int64_t plane, const T* bias, T* y) {
  parallel_for(n * channels, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(plane, 1)), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T v = bias[pl % channels];
      T* p = y + pl * plane;
      for (int64_t i = 0; i < plane; ++i) p[i] += v;
    }
  });
}

template <class T>
void channel_sums(int64_t n, int64_t channels, int64_t plane, const T* y, T* out) {
  parallel_for(channels, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(n * plane, 1)), [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      double acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(row_sum(y + (i * channels + c) * plane, plane));
      out[c] = static_cast<T>(acc);
    }
  });
}

template <class T>
void max_pool2d_forward(const PoolGeometry& g, const T* x, T* y, int32_t* idx) {
  const bool two_by_two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
                          g.dh == 1 && g.dw == 1 && 2 * g.ho <= g.h && 2 * g.wo <= g.w;
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  parallel_for(g.planes, planes_per_task(out_plane * g.kh * g.kw), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      if (two_by_two) {
        max_pool_plane_2x2(g, x + pl * in_plane, y + pl * out_plane, idx + pl * out_plane);
      } else {
        max_pool_plane(g, x + pl * in_plane, y + pl * out_plane, idx + pl * out_plane);
      }
    }
  });
}

template <class T>
void max_pool2d_backward(const PoolGeometry& g, const T* gy, const int32_t* idx, T* gx) {
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  parallel_for(g.planes, planes_per_task(in_plane + out_plane), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      T* gxp = gx + pl * in_plane;
      const T* gyp = gy + pl * out_plane;
      const int32_t* ip = idx + pl * out_plane;
      std::fill(gxp, gxp + in_plane, T(0));
      for (int64_t i = 0; i < out_plane; ++i)
        if (ip[i] >= 0) gxp[ip[i]] += gyp[i];
    }
  });
}

template <class T>
void avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const AvgPoolWindows& win,
                        const T* x, T* y) {
  parallel_for(planes, planes_per_task(h * w + ho * wo), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* xp = x + pl * h * w;
      T* yp = y + pl * ho * wo;
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          T s = 0;
          for (int64_t r = win.h0[i]; r < win.h1[i]; ++r)
            for (int64_t c = win.w0[j]; c < win.w1[j]; ++c) s += xp[r * w + c];
          const int64_t div = win.hdiv[i] * win.wdiv[j];
          yp[i * wo + j] = div != 0 ? s / static_cast<T>(div) : T(0);
        }
    }
  });
}

template <class T>
void avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const AvgPoolWindows& win,
                         const T* gy, T* gx) {
  parallel_for(planes, planes_per_task(h * w + ho * wo), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      T* gxp = gx + pl * h * w;
      const T* gyp = gy + pl * ho * wo;
      std::fill(gxp, gxp + h * w, T(0));
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          const int64_t div = win.hdiv[i] * win.wdiv[j];
          if (div == 0) continue;
          const T gv = gyp[i * wo + j] / static_cast<T>(div);
          for (int64_t r = win.h0[i]; r < win.h1[i]; ++r)
            for (int64_t c = win.w0[j]; c < win.w1[j]; ++c) gxp[r * w + c] += gv;
        }
    }
  });
}

template <class T>
void upsample2d_forward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const InterpTable<T>& rows,
                        const InterpTable<T>& cols, bool nearest, const T* x, T* y) {
  parallel_for(planes, planes_per_task(4 * ho * wo), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* xp = x + pl * h * w;
      T* yp = y + pl * ho * wo;
      for (int64_t i = 0; i < ho; ++i) {
        T* yr = yp + i * wo;
        const T* x0 = xp + rows.r0[i] * w;
        if (nearest) {
          for (int64_t j = 0; j < wo; ++j) yr[j] = x0[cols.r0[j]];
          continue;
        }
        const T* x1 = xp + rows.r1[i] * w;
        const T a0 = rows.l0[i], a1 = rows.l1[i];
        for (int64_t j = 0; j < wo; ++j) {
          const int64_t c0 = cols.r0[j], c1 = cols.r1[j];
          const T b0 = cols.l0[j], b1 = cols.l1[j];
          yr[j] = a0 * (b0 * x0[c0] + b1 * x0[c1]) + a1 * (b0 * x1[c0] + b1 * x1[c1]);
        }
      }
    }
  });
}

template <class T>
void upsample2d_backward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const InterpTable<T>& rows,
                         const InterpTable<T>& cols, bool nearest, const T* gy, T* gx) {
  parallel_for(planes, planes_per_task(4 * ho * wo + h * w), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      T* gxp = gx + pl * h * w;
      const T* gyp = gy + pl * ho * wo;
      std::fill(gxp, gxp + h * w, T(0));
      for (int64_t i = 0; i < ho; ++i) {
        const T* gr = gyp + i * wo;
        T* x0 = gxp + rows.r0[i] * w;
        if (nearest) {
          for (int64_t j = 0; j < wo; ++j) x0[cols.r0[j]] += gr[j];
          continue;
        }
        T* x1 = gxp + rows.r1[i] * w;
        const T a0 = rows.l0[i], a1 = rows.l1[i];
        for (int64_t j = 0; j < wo; ++j) {
          const int64_t c0 = cols.r0[j], c1 = cols.r1[j];
          const T b0 = cols.l0[j], b1 = cols.l1[j], gv = gr[j];
          x0[c0] += a0 * b0 * gv;
          x0[c1] += a0 * b1 * gv;
          x1[c0] += a1 * b0 * gv;
          x1[c1] += a1 * b1 * gv;
        }
      }
    }
  });
}

#define TG_CONV_INSTANTIATE(T)                                                                                      \
  template void conv2d_forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*);                          \
  template void conv2d_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, const T*);                             \
  template void conv2d_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, T*);                        \
  template void add_channel_bias<T>(int64_t, int64_t, int64_t, const T*, T*);                                      \
  template void channel_sums<T>(int64_t, int64_t, int64_t, const T*, T*);                                          \
  template void max_pool2d_forward<T>(const PoolGeometry&, const T*, T*, int32_t*);                                \
  template void max_pool2d_backward<T>(const PoolGeometry&, const T*, const int32_t*, T*);                         \
  template void avg_pool2d_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const AvgPoolWindows&, const T*, \
                                      T*);                                                                          \
  template void avg_pool2d_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const AvgPoolWindows&,         \
                                       const T*, T*);                                                               \
  template void upsample2d_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const InterpTable<T>&,          \
                                      const InterpTable<T>&, bool, const T*, T*);                                   \
  template void upsample2d_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const InterpTable<T>&,         \
                                       const InterpTable<T>&, bool, const T*, T*);

TG_CONV_INSTANTIATE(float)
TG_CONV_INSTANTIATE(double)
#undef TG_CONV_INSTANTIATE

}  // namespace tg::kernels
