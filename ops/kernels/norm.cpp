// Normalisation kernels: one row (or group block) per step, SIMD over the row.
//
// Forward (per row, the row stays in L1 between passes):
//   pass 1  mean, var in f64                      f32 rows: one pass, sum(x - k) and sum((x - k)^2)
//                                                 with k = x[0]; f64 rows: sum(x), then
//                                                 sum((x - mean)^2)
//   pass 2  y    = (x - mean_T) * rstd_T * w + b  in the input precision
// (RMS norm uses mean(x^2).) mean_T, rstd_T are the saved statistics, rounded to the input dtype,
// so forward and backward see the same x_hat.
//
// Backward (per row), with x_hat = (x - mean) * rstd and g = w * dy:
//   pass 1  s1 = sum(g), s2 = sum(g * x_hat)      products and sums of 4 vectors in the input
//                                                 precision, then f64 accumulators
//   pass 2  dx = rstd * (g - s1 / n - x_hat * s2 / n)
//           dw_acc += dy * x_hat, db_acc += dy           (input precision, over <= 16 rows)
// Every 16 rows the accumulators are added into the chunk's f64 partials; the partials of the
// chunks are then added in chunk order (f64). A dx larger than the caches is written with
// non-temporal stores: no read-for-ownership of its lines (a quarter of the DRAM traffic).
// On Zen 5 these loops are bound by their arithmetic rather than by memory, and widening f32 to
// f64 is a large part of it: hence one widening per element in the forward, one per 4 in the
// backward.
#include "ops/kernels/norm.hpp"

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// operands of xsimd's exp/log1p) in some builds (-O1 sanitizer builds); not about this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <xsimd/xsimd.hpp>

#if XSIMD_WITH_AVX512F || XSIMD_WITH_AVX
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/parallel.hpp"
#include "ops/kernels/simd_math.hpp"
#include "ops/kernels/simd_partial.hpp"
#include "ops/kernels/elementwise.hpp"  // silu_of / silu_backward_of: the same formulas as ops::silu

namespace tg::kernels {
namespace {

template <class T>
using B = xsimd::batch<T>;
using D = xsimd::batch<double>;
static_assert(B<float>::size == 2 * D::size, "norm kernels assume f32 batches hold twice as many lanes as f64 ones");


// lo/hi += a * b in f64: for f32 the product is rounded in f32 and widened, for f64 it is one FMA.
// Written out (like the fms/fnma in the group-norm backward) so that the result does not depend on
// whether the compiler contracts a multiply and an add, which it may decide differently in
// different instantiations: group_norm_silu must stay bit-identical to silu(group_norm(x)).
inline void add_product(const B<double>& a, const B<double>& b, D& lo, D& /*hi*/) { lo = xsimd::fma(a, b, lo); }
inline void add_product(const B<float>& a, const B<float>& b, D& lo, D& hi) {
  D l, h;
  widen(a * b, l, h);
  lo += l;
  hi += h;
}

// Sum of the lanes, as a tree (xsimd::hadd trips a GCC 12 -Wuninitialized false positive).
inline double hsum(const D& v) {
  return simd::reduce_lanes<double>(v, [](const auto& a, const auto& b) { return a + b; });
}

// acc (two f64 accumulators) += f(v) for the f64 lanes of v.
template <class F>
inline void add_wide(F& f, const B<double>& v, D& lo, D& /*hi*/) {
  lo += f(v);
}
template <class F>
inline void add_wide(F& f, const B<float>& v, D& lo, D& hi) {
  D l, h;
  widen(v, l, h);
  lo += f(l);
  hi += f(h);
}

// sum_i f(x[i]) in f64; f is a generic callable usable on D batches and on doubles. The ragged
// tail is added by a scalar loop (no padding value could be neutral for every f).
template <class T, class F>
double wide_sum(const T* x, std::int64_t n, F f) {
  constexpr std::int64_t W = B<T>::size;
  D a0(0.0), a1(0.0), a2(0.0), a3(0.0);
  std::int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    add_wide(f, B<T>::load_unaligned(x + i), a0, a1);
    add_wide(f, B<T>::load_unaligned(x + i + W), a2, a3);
  }
  for (; i + W <= n; i += W) add_wide(f, B<T>::load_unaligned(x + i), a0, a1);
  double tail = 0;
  for (; i < n; ++i) tail += f(static_cast<double>(x[i]));
  return hsum((a0 + a2) + (a1 + a3)) + tail;
}

using simd::for_each_batch;
using simd::load_n;
using simd::prefetch_next_row;
using simd::store_n;
using simd::store_out;

// dst[0..count) += v (widened to f64).
template <class T>
inline void add_into(double* dst, std::int64_t count, const B<T>& v) {
  constexpr std::int64_t W = B<T>::size;
  if (count == W) {
    if constexpr (std::is_same_v<T, double>) {
      (D::load_unaligned(dst) + v).store_unaligned(dst);
    } else {
      D lo, hi;
      widen(v, lo, hi);
      (D::load_unaligned(dst) + lo).store_unaligned(dst);
      (D::load_unaligned(dst + D::size) + hi).store_unaligned(dst + D::size);
    }
    return;
  }
  alignas(64) T buf[W];
  v.store_aligned(buf);
  for (std::int64_t j = 0; j < count; ++j) dst[j] += static_cast<double>(buf[j]);
}

// s1 = sum(x - k), s2 = sum((x - k)^2) over an f32 row, in f64, in one pass.
inline void shifted_moments(const float* x, std::int64_t n, double k, double& s1, double& s2) {
  constexpr std::int64_t W = B<float>::size;
  const D kb(k);
  // Two vectors per step, four f64 halves: eight independent accumulator chains.
  D a0(0.0), a1(0.0), a2(0.0), a3(0.0), q0(0.0), q1(0.0), q2(0.0), q3(0.0);
  std::int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    D l0, h0, l1, h1;
    widen(B<float>::load_unaligned(x + i), l0, h0);
    widen(B<float>::load_unaligned(x + i + W), l1, h1);
    l0 -= kb, h0 -= kb, l1 -= kb, h1 -= kb;
    a0 += l0, a1 += h0, a2 += l1, a3 += h1;
    q0 = xsimd::fma(l0, l0, q0), q1 = xsimd::fma(h0, h0, q1), q2 = xsimd::fma(l1, l1, q2), q3 = xsimd::fma(h1, h1, q3);
  }
  double t1 = 0, t2 = 0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - k;
    t1 += d;
    t2 += d * d;
  }
  s1 = hsum((a0 + a2) + (a1 + a3)) + t1;
  s2 = hsum((q0 + q2) + (q1 + q3)) + t2;
}

// Mean (when Center) and rstd of one row or block, as doubles.
template <class T, bool Center>
void row_stats(const T* x, std::int64_t n, double eps, double& mean, double& rstd) {
  const double inv_n = 1.0 / static_cast<double>(n);
  double var;
  if constexpr (Center && std::is_same_v<T, float>) {
    // One pass, each element widened once (widening is what these loops spend their time on):
    // shifted by k = x[0], var = mean((x - k)^2) - mean(x - k)^2. The differences and squares are
    // formed in f64, and k being a value of the row, |mean - k| <= sqrt(n) std, so the subtraction
    // costs at most log10(n) of f64's 16 digits: still far finer than the f32 results.
    const double k = n > 0 ? static_cast<double>(x[0]) : 0.0;
    double s1, s2;
    shifted_moments(x, n, k, s1, s2);
    const double d = s1 * inv_n;
    mean = k + d;
    var = s2 * inv_n - d * d;
    if (var < 0) var = 0;  // rounding; a NaN (an inf or NaN in the row) stays NaN, as in f64
  } else if constexpr (Center) {
    mean = wide_sum(x, n, [](auto v) { return v; }) * inv_n;
    const double m = mean;
    var = wide_sum(x, n, [m](auto v) {
            const auto d = v - m;
            return d * d;
          }) * inv_n;
  } else {
    mean = 0;
    var = wide_sum(x, n, [](auto v) { return v * v; }) * inv_n;
  }
  rstd = 1.0 / std::sqrt(var + eps);
}

// y = (x - mean) * rstd [* w] [+ b] over n elements; w, b may be null.
template <class T, bool Center>
void normalize_row(const T* x, const T* w, const T* b, T* y, std::int64_t n, T mean, T rstd, bool prefetch_next) {
  constexpr std::int64_t W = B<T>::size;
  const B<T> mb(mean), rb(rstd);
  auto one = [&](std::int64_t i, std::int64_t c) {
    B<T> v = load_n(x + i, c, T(0));
    if constexpr (Center) v = v - mb;
    v = v * rb;
    if (w && b) v = xsimd::fma(v, load_n(w + i, c, T(0)), load_n(b + i, c, T(0)));
    else if (w) v = v * load_n(w + i, c, T(0));
    else if (b) v = v + load_n(b + i, c, T(0));
    store_n(y + i, v, c);
  };
  std::int64_t i = 0;
  if (w && b) {  // the common case without per-batch branches
    for (; i + W <= n; i += W) {
      B<T> v = B<T>::load_unaligned(x + i);
      if constexpr (Center) v = v - mb;
      xsimd::fma(v * rb, B<T>::load_unaligned(w + i), B<T>::load_unaligned(b + i)).store_unaligned(y + i);
      if (prefetch_next) prefetch_next_row(x + n + i, y + n + i);
    }
  } else if (w) {
    for (; i + W <= n; i += W) {
      B<T> v = B<T>::load_unaligned(x + i);
      if constexpr (Center) v = v - mb;
      (v * rb * B<T>::load_unaligned(w + i)).store_unaligned(y + i);
      if (prefetch_next) prefetch_next_row(x + n + i, y + n + i);
    }
  }
  for (; i < n; i += W) {
    one(i, std::min(W, n - i));
    if (prefetch_next) prefetch_next_row(x + n + i, y + n + i);
  }
}

// Rows whose weight/bias gradient contributions are summed in the input precision before being
// added to the chunk's f64 partials.
constexpr std::int64_t kFold = 16;

// Whether row r ends a fold of the chunk [lo, hi): every kFold rows from lo, and at hi.
inline bool fold_ends(std::int64_t r, std::int64_t lo, std::int64_t hi) {
  return (r - lo + 1) % kFold == 0 || r + 1 == hi;
}

// Elements per forward chunk; backward chunks are larger (each carries f64 partials of size n).
constexpr std::int64_t kForwardChunk = 1 << 15;

std::int64_t forward_grain(std::int64_t n) { return std::max<std::int64_t>(1, kForwardChunk / std::max<std::int64_t>(n, 1)); }

// Rows per backward chunk: at least 64K elements, and at most ~64 chunks.
std::int64_t backward_grain(std::int64_t rows, std::int64_t n) {
  const std::int64_t by_size = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(n, 1));
  const std::int64_t by_count = (rows + 63) / 64;
  return std::max(by_size, by_count);
}

template <class T, bool Center>
void row_forward_impl(const Tensor& x, const Tensor& wt, const Tensor& bt, double eps, const Tensor& y,
                      const Tensor& mean_t, const Tensor& rstd_t) {
  const std::int64_t rows = x.shape()[0], n = x.shape()[1];
  const T* xp = x.data<T>();
  const T* w = wt.defined() ? wt.data<T>() : nullptr;
  const T* b = bt.defined() ? bt.data<T>() : nullptr;
  T* yp = y.data<T>();
  T* mp = Center ? mean_t.data<T>() : nullptr;
  T* rp = rstd_t.data<T>();
  parallel_for(rows, forward_grain(n), [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      const T* xr = xp + r * n;
      double mean, rstd;
      row_stats<T, Center>(xr, n, eps, mean, rstd);
      const T m = static_cast<T>(mean), s = static_cast<T>(rstd);
      if (Center) mp[r] = m;
      rp[r] = s;
      normalize_row<T, Center>(xr, w, b, yp + r * n, n, m, s, r + 1 < hi);
    }
  });
}

// dst[0..count) += v in the input precision.
template <class T>
inline void acc_into(T* dst, std::int64_t count, const B<T>& v) {
  store_n(dst, load_n(dst, count, T(0)) + v, count);
}

// p[0..count) += a[0..count) (the input-precision sums of a fold, widened into the chunk's f64
// partials); a is zeroed for the next fold.
template <class T>
void fold_into(T* a, double* p, std::int64_t count) {
  constexpr std::int64_t W = B<T>::size;
  for (std::int64_t i = 0; i < count; i += W) {
    const std::int64_t c = std::min(W, count - i);
    add_into(p + i, c, load_n(a + i, c, T(0)));
  }
  std::fill(a, a + count, T(0));
}

// dst[0..count) += a * b in the input precision, as one FMA: written out, so that the row and the
// column backward (which must agree bit for bit) do not depend on the compiler contracting it.
template <class T>
inline void fma_into(T* dst, std::int64_t count, const B<T>& a, const B<T>& b) {
  store_n(dst, xsimd::fma(a, b, load_n(dst, count, T(0))), count);
}

// x_hat = (x - mean) * rstd (layer norm) or x * rstd (RMS norm).
template <class T, bool Center>
inline B<T> x_hat(const B<T>& xv, const B<T>& mb, const B<T>& rb) {
  if constexpr (Center) return (xv - mb) * rb;
  else return xv * rb;
}

// The input gradient of a batch from the row's sums: c1 = s1 / n, c2 = s2 / n (see row_grad_sums),
// gx = (dy w - c1 - x_hat c2) rstd, without c1 for the RMS norm. rstd is applied last, to the whole
// bracket: dy w - c1 cancels exactly where it should (e.g. one-element rows, whose gradient is 0),
// instead of leaving the rounding of two products.
template <class T, bool Center, bool HasW>
inline B<T> grad_x(const B<T>& xh, const B<T>& dy, const B<T>& wv, const B<T>& c1, const B<T>& c2, const B<T>& rb) {
  B<T> d = dy;
  // dy w rounded as in s1 (an FMA with 0 cannot be fused with the subtraction below).
  if constexpr (HasW) d = xsimd::fma(dy, wv, B<T>(0));
  if constexpr (Center) d = d - c1;
  return xsimd::fnma(xh, c2, d) * rb;
}

// The two sums over a row that its input gradient needs, in f64: s1 = sum(g) (layer norm only) and
// s2 = sum(g x_hat), g = dy [* w]. Padded lanes have dy = 0 and w = 0, so they add exact zeros.
// Four vectors per step, summed in pairs in the input precision before the f64 accumulators:
// widening each vector is what this loop would spend its time on. (A sum of 4 in f32 is off by at
// most 2 ulp of the sum of their magnitudes, so s1/n is within ~1e-7 of mean |g|: the precision of
// g itself.) A last pair of vectors goes through the same two accumulators.
template <class T, bool Center, bool HasW>
void row_grad_sums(const T* x, const T* gy, const T* w, T mean, T rstd, std::int64_t n, double& s1, double& s2) {
  constexpr std::int64_t W = B<T>::size;
  const B<T> mb(mean), rb(rstd);
  // load_n with c == W (every step but the last) is a plain load.
  auto gw_at = [&](std::int64_t i, std::int64_t c) {
    const B<T> g = load_n(gy + i, c, T(0));
    if constexpr (HasW) return g * load_n(w + i, c, T(0));
    else return g;
  };
  auto id = [](const D& v) { return v; };
  D s1a(0.0), s1b(0.0), s2a(0.0), s2b(0.0);
  auto xh_at = [&](std::int64_t i) { return x_hat<T, Center>(B<T>::load_unaligned(x + i), mb, rb); };
  std::int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    const B<T> g0 = gw_at(i, W), g1 = gw_at(i + W, W), g2 = gw_at(i + 2 * W, W), g3 = gw_at(i + 3 * W, W);
    if constexpr (Center) add_wide(id, (g0 + g1) + (g2 + g3), s1a, s1b);
    add_wide(id, (g0 * xh_at(i) + g1 * xh_at(i + W)) + (g2 * xh_at(i + 2 * W) + g3 * xh_at(i + 3 * W)), s2a, s2b);
  }
  for (; i + 2 * W <= n; i += 2 * W) {
    const B<T> g0 = gw_at(i, W), g1 = gw_at(i + W, W);
    if constexpr (Center) add_wide(id, g0 + g1, s1a, s1b);
    add_wide(id, g0 * xh_at(i) + g1 * xh_at(i + W), s2a, s2b);
  }
  for (; i < n; i += W) {
    const std::int64_t c = std::min(W, n - i);
    const B<T> g = gw_at(i, c);
    const B<T> xh = x_hat<T, Center>(load_n(x + i, c, T(0)), mb, rb);
    if constexpr (Center) add_wide(id, g, s1a, s1b);
    add_wide(id, g * xh, s2a, s2b);
  }
  s1 = hsum(s1a + s1b);
  s2 = hsum(s2a + s2b);
}

// One row of the backward. pw, pb: running sums of dy * x_hat and dy over a few rows, in the input
// precision (null when not wanted); the caller folds them into f64 partials. HasW, AccW, AccB say
// whether w, pw, pb are there: the loops carry no per-vector branches (with them, the backward
// without weight took a third longer). The inputs `ahead` elements further (a later row of the
// chunk, or 0) are prefetched.
template <class T, bool Center, bool HasW, bool AccW, bool AccB, bool Stream>
void backward_row_impl(const T* x, const T* gy, const T* w, T mean, T rstd, std::int64_t n, T* gx, T* pw, T* pb,
                       std::int64_t ahead) {
  const B<T> mb(mean), rb(rstd);
  if (gx) {
    double s1, s2;
    row_grad_sums<T, Center, HasW>(x, gy, w, mean, rstd, n, s1, s2);
    const double inv_n = 1.0 / static_cast<double>(n);
    const B<T> c1(static_cast<T>(s1 * inv_n)), c2(static_cast<T>(s2 * inv_n));
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) {
      const B<T> xh = x_hat<T, Center>(load_n(x + i, c, T(0)), mb, rb);
      const B<T> dy = load_n(gy + i, c, T(0));
      store_out<Stream>(gx + i, grad_x<T, Center, HasW>(xh, dy, HasW ? load_n(w + i, c, T(0)) : dy, c1, c2, rb), c);
      if constexpr (AccW) fma_into(pw + i, c, dy, xh);
      if constexpr (AccB) acc_into(pb + i, c, dy);
      simd::prefetch_row_ahead<Stream>(x + ahead + i, gy + ahead + i, gx + ahead + i);
    });
  } else {
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) {
      const B<T> dy = load_n(gy + i, c, T(0));
      if constexpr (AccW) fma_into(pw + i, c, dy, x_hat<T, Center>(load_n(x + i, c, T(0)), mb, rb));
      if constexpr (AccB) acc_into(pb + i, c, dy);
    });
  }
}

template <class T, bool Center, bool Stream>
void backward_row(const T* x, const T* gy, const T* w, T mean, T rstd, std::int64_t n, T* gx, T* pw, T* pb,
                  std::int64_t ahead) {
  auto run = [&](auto has_w, auto acc_w, auto acc_b) {
    backward_row_impl<T, Center, has_w(), acc_w(), acc_b(), Stream>(x, gy, w, mean, rstd, n, gx, pw, pb, ahead);
  };
  auto with_b = [&](auto has_w, auto acc_w) {
    if (pb) run(has_w, acc_w, std::true_type{});
    else run(has_w, acc_w, std::false_type{});
  };
  auto with_acc_w = [&](auto has_w) {
    if (pw) with_b(has_w, std::true_type{});
    else with_b(has_w, std::false_type{});
  };
  if (w) with_acc_w(std::true_type{});
  else with_acc_w(std::false_type{});
}

// out[j] = sum over chunks c (in order) of part[c * n + j], cast to T: the per-chunk partials of
// the weight/bias gradients. Summed chunk by chunk over strips of columns (the same order per
// column): a walk down each column reads one element per line, and chunk rows a multiple of 4 KiB
// apart fall into one L1 set (64 chunks of 1024 columns: 11% of the layer_norm backward's perf
// samples with weight and bias; in strips 5%).
template <class T>
void combine_partials(const double* part, std::int64_t chunks, std::int64_t n, T* out) {
  constexpr std::int64_t kStrip = 512;
  parallel_for(n, 4096, [&](std::int64_t lo, std::int64_t hi) {
    double acc[kStrip];
    for (std::int64_t j0 = lo; j0 < hi; j0 += kStrip) {
      const std::int64_t len = std::min(kStrip, hi - j0);
      std::fill(acc, acc + len, 0.0);
      for (std::int64_t c = 0; c < chunks; ++c) {
        const double* p = part + c * n + j0;
        for (std::int64_t j = 0; j < len; ++j) acc[j] += p[j];
      }
      for (std::int64_t j = 0; j < len; ++j) out[j0 + j] = static_cast<T>(acc[j]);
    }
  });
}

// Few long rows with weight or bias gradients (see row_backward_impl for when): the row chunks of
// row_backward_impl would each carry f64 partials of n columns, and every row would read and write
// its chunk's running sums of n columns, far from L1 ([64, 65536] f32: 64 chunks of 1 MiB of
// partials per gradient, 16 ms against torch's 6). Instead, pass 1 takes each row's two sums
// (row_grad_sums, parallel over rows); pass 2, parallel over strips of columns, walks every row of
// its strip in order: gx, and the strip's running sums, which stay in L1. The sums follow the row
// path's chunks, folds and order (backward_grain, kFold), so every output has its bits.
template <class T, bool Center, bool HasW, bool Stream>
void column_backward(const T* xp, const T* gp, const T* w, const T* mp, const T* rp, T* gx, T* gw, T* gb,
                     std::int64_t rows, std::int64_t n, std::int64_t grain) {
  constexpr std::int64_t kStrip = 512;  // columns per task: 2 x 512 running sums + 4 x 512 f64, 20 KiB in f32
  std::vector<T> c1(gx ? rows : 0), c2(gx ? rows : 0);  // s1 / n, s2 / n per row
  if (gx) {
    const double inv_n = 1.0 / static_cast<double>(n);
    parallel_for(rows, 1, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t r = lo; r < hi; ++r) {
        double s1, s2;
        row_grad_sums<T, Center, HasW>(xp + r * n, gp + r * n, w, Center ? mp[r] : T(0), rp[r], n, s1, s2);
        c1[static_cast<std::size_t>(r)] = static_cast<T>(s1 * inv_n);
        c2[static_cast<std::size_t>(r)] = static_cast<T>(s2 * inv_n);
      }
    });
  }
  const std::int64_t strips = (n + kStrip - 1) / kStrip;
  parallel_for(strips, 1, [&](std::int64_t s_lo, std::int64_t s_hi) {
    alignas(64) T aw[kStrip], ab[kStrip];                                 // sums of the current fold
    alignas(64) double pw[kStrip], pb[kStrip], tw[kStrip], tb[kStrip];  // of the chunk; of all rows
    for (std::int64_t s = s_lo; s < s_hi; ++s) {
      const std::int64_t j0 = s * kStrip, len = std::min(kStrip, n - j0);
      std::fill(aw, aw + len, T(0)), std::fill(ab, ab + len, T(0));
      for (double* q : {pw, pb, tw, tb}) std::fill(q, q + len, 0.0);
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* x = xp + r * n + j0;
        const T* g = gp + r * n + j0;
        const std::int64_t ahead = r + 1 < rows ? n : 0;  // the strip of the next row is prefetched
        const B<T> mb(Center ? mp[r] : T(0)), rb(rp[r]);
        const B<T> c1b(gx ? c1[static_cast<std::size_t>(r)] : T(0)), c2b(gx ? c2[static_cast<std::size_t>(r)] : T(0));
        for_each_batch<T>(len, [&](std::int64_t i, std::int64_t c) {
          const B<T> xh = x_hat<T, Center>(load_n(x + i, c, T(0)), mb, rb);
          const B<T> dy = load_n(g + i, c, T(0));
          if (gx) {
            const B<T> wv = HasW ? load_n(w + j0 + i, c, T(0)) : dy;
            store_out<Stream>(gx + r * n + j0 + i, grad_x<T, Center, HasW>(xh, dy, wv, c1b, c2b, rb), c);
          }
          if (gw) fma_into(aw + i, c, dy, xh);
          if (gb) acc_into(ab + i, c, dy);
          // The inputs only (gx's strips are written once): as with a streamed gx.
          simd::prefetch_row_ahead<true>(x + ahead + i, g + ahead + i, nullptr);
        });
        // The row path's boundaries: chunks of `grain` rows, folds within them.
        const std::int64_t chunk_lo = r / grain * grain, chunk_hi = std::min(rows, chunk_lo + grain);
        if (fold_ends(r, chunk_lo, chunk_hi)) {
          if (gw) fold_into(aw, pw, len);
          if (gb) fold_into(ab, pb, len);
        }
        if (r + 1 == chunk_hi) {  // as combine_partials: chunk partials added in order
          for (std::int64_t j = 0; j < len; ++j) tw[j] += pw[j], tb[j] += pb[j];
          std::fill(pw, pw + len, 0.0), std::fill(pb, pb + len, 0.0);
        }
      }
      for (std::int64_t j = 0; j < len; ++j) {
        if (gw) gw[j0 + j] = static_cast<T>(tw[j]);
        if (gb) gb[j0 + j] = static_cast<T>(tb[j]);
      }
    }
    if constexpr (Stream) simd::stream_fence();
  });
}

template <class T, bool Center>
void row_backward_impl(const Tensor& x, const Tensor& gy, const Tensor& wt, const Tensor& mean_t,
                       const Tensor& rstd_t, const Tensor& gx_t, const Tensor& gw_t, const Tensor& gb_t) {
  const std::int64_t rows = x.shape()[0], n = x.shape()[1];
  const T* xp = x.data<T>();
  const T* gp = gy.data<T>();
  const T* w = wt.defined() ? wt.data<T>() : nullptr;
  const T* mp = Center ? mean_t.data<T>() : nullptr;
  const T* rp = rstd_t.data<T>();
  T* gx = gx_t.defined() ? gx_t.data<T>() : nullptr;
  const bool want_w = gw_t.defined(), want_b = Center && gb_t.defined();
  const std::int64_t grain = backward_grain(rows, n);
  const std::int64_t chunks = (rows + grain - 1) / grain;
  const std::int64_t row_bytes = n * static_cast<std::int64_t>(sizeof(T));
  const bool stream = gx && simd::stream_output(gx, row_bytes, rows * row_bytes);
  // By columns: rows of at least 32768 elements in chunks of at most n / 8192 rows. Measured at 1
  // thread, f32, layer / RMS norm: [64, 65536] 3.1x / 2.0x, [16, 262144] 2.8x / 1.9x, [2, 10^6] 1.9x
  // / 1.1x, [128, 32768] (chunks of 2) 1.9x / 1.05x, [512, 65536] (8) 1.26x / 1.0x; with more rows
  // per chunk the row path is faster ([1024, 32768] (16) 0.72x, [1024, 65536] (16) 0.83-0.97x), and
  // so it is with shorter rows ([128, 16384] 0.7-0.8x).
  const RowNormBackward path = row_norm_backward_path.load(std::memory_order_relaxed);
  const bool by_columns = path == RowNormBackward::by_columns ||
                          (path == RowNormBackward::automatic && n >= (std::int64_t{1} << 15) && grain * 8192 <= n);
  if ((want_w || want_b) && by_columns) {
    T* gw = want_w ? gw_t.data<T>() : nullptr;
    T* gb = want_b ? gb_t.data<T>() : nullptr;
    auto run = [&](auto has_w, auto streamed) {
      column_backward<T, Center, has_w(), streamed()>(xp, gp, w, mp, rp, gx, gw, gb, rows, n, grain);
    };
    auto with_stream = [&](auto has_w) {
      if (stream) run(has_w, std::true_type{});
      else run(has_w, std::false_type{});
    };
    if (w) with_stream(std::true_type{});
    else with_stream(std::false_type{});
    return;
  }
  Tensor part_w = want_w ? empty({chunks, n}, DType::f64) : Tensor();
  Tensor part_b = want_b ? empty({chunks, n}, DType::f64) : Tensor();
  double* pw_all = want_w ? part_w.data<double>() : nullptr;
  double* pb_all = want_b ? part_b.data<double>() : nullptr;
  parallel_for(rows, grain, [&](std::int64_t lo, std::int64_t hi) {
    const std::int64_t c = lo / grain;
    double* pw = pw_all ? pw_all + c * n : nullptr;
    double* pb = pb_all ? pb_all + c * n : nullptr;
    // Groups of kFold rows are summed in the input precision, then folded into the f64 partials.
    std::vector<T> acc((pw ? n : 0) + (pb ? n : 0), T(0));
    T* aw = pw ? acc.data() : nullptr;
    T* ab = pb ? acc.data() + (pw ? n : 0) : nullptr;
    if (pw) std::fill(pw, pw + n, 0.0);
    if (pb) std::fill(pb, pb + n, 0.0);
    for (std::int64_t r = lo; r < hi; ++r) {
      // Each row prefetches a later one of the chunk (simd::rows_ahead): with a streamed gx two
      // rows ahead (the two versions alternating in one process, [4096, 1024] f32: 1 thread +3-9%
      // while other tenants left memory bandwidth, alike when they did not; 2 threads +2-4%). A
      // cached gx keeps the next row (2 rows ahead: 7-12% slower on [2048, 1024]).
      const std::int64_t ahead = simd::rows_ahead(stream, r, hi, n);
      if (stream)
        backward_row<T, Center, true>(xp + r * n, gp + r * n, w, Center ? mp[r] : T(0), rp[r], n, gx + r * n, aw, ab,
                                      ahead);
      else
        backward_row<T, Center, false>(xp + r * n, gp + r * n, w, Center ? mp[r] : T(0), rp[r], n,
                                       gx ? gx + r * n : nullptr, aw, ab, ahead);
      if (fold_ends(r, lo, hi)) {
        if (aw) fold_into(aw, pw, n);
        if (ab) fold_into(ab, pb, n);
      }
    }
    if (stream) simd::stream_fence();
  });
  if (want_w) combine_partials(pw_all, chunks, n, gw_t.data<T>());
  if (want_b) combine_partials(pb_all, chunks, n, gb_t.data<T>());
}

// ---- group norm ------------------------------------------------------------------------------------

template <class T, bool Silu>
void group_forward_impl(const Tensor& x, std::int64_t G, const Tensor& wt, const Tensor& bt, double eps,
                        const Tensor& y, const Tensor& mean_t, const Tensor& rstd_t) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.shape()[2];
  const std::int64_t Cg = C / G, M = Cg * S;
  const T* xp = x.data<T>();
  const T* w = wt.defined() ? wt.data<T>() : nullptr;
  const T* b = bt.defined() ? bt.data<T>() : nullptr;
  T* yp = y.data<T>();
  T* mp = mean_t.data<T>();
  T* rp = rstd_t.data<T>();
  parallel_for(N * G, forward_grain(M), [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t ng = lo; ng < hi; ++ng) {
      const std::int64_t g = ng % G;
      const T* xb = xp + ng * M;  // (n * C + g * Cg) * S
      double mean, rstd;
      row_stats<T, true>(xb, M, eps, mean, rstd);
      const T m = static_cast<T>(mean), s = static_cast<T>(rstd);
      mp[ng] = m;
      rp[ng] = s;
      constexpr std::int64_t W = B<T>::size;
      const B<T> mb(m), rb(s);
      for (std::int64_t cc = 0; cc < Cg; ++cc) {
        const std::int64_t ch = g * Cg + cc;
        const B<T> wc(w ? w[ch] : T(1)), bc(b ? b[ch] : T(0));
        const T* xr = xb + cc * S;
        T* yr = yp + ng * M + cc * S;
        for (std::int64_t i = 0; i < S; i += W) {
          const std::int64_t c = std::min(W, S - i);
          const B<T> z = xsimd::fma((load_n(xr + i, c, T(0)) - mb) * rb, wc, bc);
          if constexpr (Silu) store_n(yr + i, silu_of(z), c);
          else store_n(yr + i, z, c);
          if (ng + 1 < hi) prefetch_next_row(xr + M + i, yr + M + i);
        }
      }
    }
  });
}

// With Silu, the output gradient is first taken through the activation: dz = dy * silu'(z), with
// z = x_hat * w + b recomputed exactly as in the forward. dz is written once per block (into the
// block of gx, which is overwritten afterwards, or into task scratch) and read by both passes.
template <class T, bool Silu>
void group_backward_impl(const Tensor& x, const Tensor& gy, std::int64_t G, const Tensor& wt, const Tensor& bt,
                         const Tensor& mean_t, const Tensor& rstd_t, const Tensor& gx_t, const Tensor& gw_t,
                         const Tensor& gb_t) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.shape()[2];
  const std::int64_t Cg = C / G, M = Cg * S;
  const T* xp = x.data<T>();
  const T* gp = gy.data<T>();
  const T* w = wt.defined() ? wt.data<T>() : nullptr;
  const T* bias = bt.defined() ? bt.data<T>() : nullptr;
  const T* mp = mean_t.data<T>();
  const T* rp = rstd_t.data<T>();
  T* gx = gx_t.defined() ? gx_t.data<T>() : nullptr;
  // Per (sample, channel): A = sum_s dy, Bsum = sum_s dy * x_hat (f64). dw, db sum them over samples in order.
  Tensor sums = empty({2, N, C}, DType::f64);
  double* A = sums.data<double>();
  double* Bs = A + N * C;
  constexpr std::int64_t W = B<T>::size;
  auto id = [](const D& v) { return v; };
  parallel_for(N * G, forward_grain(M), [&](std::int64_t lo, std::int64_t hi) {
    std::vector<T> dz_scratch(Silu && !gx ? static_cast<std::size_t>(M) : 0);
    for (std::int64_t ng = lo; ng < hi; ++ng) {
      const std::int64_t nn = ng / G, g = ng % G;
      const B<T> mb(mp[ng]), rb(rp[ng]);
      const T* xb = xp + ng * M;
      const T* gb = gp + ng * M;
      if constexpr (Silu) {  // gb := dz for this block
        T* dz = gx ? gx + ng * M : dz_scratch.data();
        for (std::int64_t cc = 0; cc < Cg; ++cc) {
          const std::int64_t ch = g * Cg + cc;
          const B<T> wc(w ? w[ch] : T(1)), bc(bias ? bias[ch] : T(0));
          for (std::int64_t i = 0; i < S; i += W) {
            const std::int64_t c = std::min(W, S - i);
            const B<T> z = xsimd::fma((load_n(xb + cc * S + i, c, T(0)) - mb) * rb, wc, bc);
            store_n(dz + cc * S + i, silu_backward_of(z, load_n(gb + cc * S + i, c, T(0))), c);
          }
        }
        gb = dz;
      }
      double s1 = 0, s2 = 0;
      for (std::int64_t cc = 0; cc < Cg; ++cc) {
        const std::int64_t ch = g * Cg + cc;
        // Two vectors per step into separate f64 accumulators (the adds are latency-bound otherwise).
        D a0(0.0), a1(0.0), b0(0.0), b1(0.0), a2(0.0), a3(0.0), b2(0.0), b3(0.0);
        const T* gc = gb + cc * S;
        const T* xc = xb + cc * S;
        std::int64_t i = 0;
        for (; i + 2 * W <= S; i += 2 * W) {
          const B<T> dy0 = B<T>::load_unaligned(gc + i), dy1 = B<T>::load_unaligned(gc + i + W);
          const B<T> xh0 = (B<T>::load_unaligned(xc + i) - mb) * rb, xh1 = (B<T>::load_unaligned(xc + i + W) - mb) * rb;
          add_wide(id, dy0, a0, a1);
          add_wide(id, dy1, a2, a3);
          add_product(dy0, xh0, b0, b1);
          add_product(dy1, xh1, b2, b3);
        }
        for (; i < S; i += W) {  // padded lanes: dy = 0
          const std::int64_t c = std::min(W, S - i);
          const B<T> dy = load_n(gc + i, c, T(0));
          const B<T> xh = (load_n(xc + i, c, T(0)) - mb) * rb;
          add_wide(id, dy, a0, a1);
          add_product(dy, xh, b0, b1);
        }
        const double sa = hsum((a0 + a2) + (a1 + a3)), sb = hsum((b0 + b2) + (b1 + b3));
        A[nn * C + ch] = sa;
        Bs[nn * C + ch] = sb;
        const double wc = w ? static_cast<double>(w[ch]) : 1.0;
        s1 = std::fma(wc, sa, s1);  // explicit, like add_product
        s2 = std::fma(wc, sb, s2);
      }
      if (!gx) continue;
      // rstd applied last, as in the row kernel.
      const double inv_m = 1.0 / static_cast<double>(M);
      const B<T> c1(static_cast<T>(s1 * inv_m)), c2(static_cast<T>(s2 * inv_m));
      for (std::int64_t cc = 0; cc < Cg; ++cc) {
        const std::int64_t ch = g * Cg + cc;
        const B<T> wc(w ? w[ch] : T(1));
        for (std::int64_t i = 0; i < S; i += W) {
          const std::int64_t c = std::min(W, S - i);
          const B<T> dy = load_n(gb + cc * S + i, c, T(0));
          const B<T> xh = (load_n(xb + cc * S + i, c, T(0)) - mb) * rb;
          // dy w rounded first (an FMA with 0, which the compiler cannot fuse with the subtraction):
          // c1 holds the f32 rounding of the same products, so one-element groups cancel exactly.
          store_n(gx + ng * M + cc * S + i, xsimd::fnma(xh, c2, xsimd::fma(dy, wc, B<T>(0)) - c1) * rb, c);
        }
      }
    }
  });
  if (gw_t.defined()) combine_partials(Bs, N, C, gw_t.data<T>());
  if (gb_t.defined()) combine_partials(A, N, C, gb_t.data<T>());
}

}  // namespace

void row_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, bool center, const Tensor& y,
                      const Tensor& mean, const Tensor& rstd) {
  dispatch_float(x.dtype(), center ? "layer_norm" : "rms_norm", [&]<class T>() {
    if (center) row_forward_impl<T, true>(x, w, b, eps, y, mean, rstd);
    else row_forward_impl<T, false>(x, w, b, eps, y, mean, rstd);
  });
}

void row_norm_backward(const Tensor& x, const Tensor& gy, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                       bool center, const Tensor& gx, const Tensor& gw, const Tensor& gb) {
  dispatch_float(x.dtype(), center ? "layer_norm" : "rms_norm", [&]<class T>() {
    if (center) row_backward_impl<T, true>(x, gy, w, mean, rstd, gx, gw, gb);
    else row_backward_impl<T, false>(x, gy, w, mean, rstd, gx, gw, gb);
  });
}

void group_norm_forward(const Tensor& x, std::int64_t groups, const Tensor& w, const Tensor& b, double eps, bool silu,
                        const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  dispatch_float(x.dtype(), "group_norm", [&]<class T>() {
    if (silu) group_forward_impl<T, true>(x, groups, w, b, eps, y, mean, rstd);
    else group_forward_impl<T, false>(x, groups, w, b, eps, y, mean, rstd);
  });
}

void group_norm_backward(const Tensor& x, const Tensor& gy, std::int64_t groups, const Tensor& w, const Tensor& b,
                         bool silu, const Tensor& mean, const Tensor& rstd, const Tensor& gx, const Tensor& gw,
                         const Tensor& gb) {
  dispatch_float(x.dtype(), "group_norm", [&]<class T>() {
    if (silu) group_backward_impl<T, true>(x, gy, groups, w, b, mean, rstd, gx, gw, gb);
    else group_backward_impl<T, false>(x, gy, groups, w, b, mean, rstd, gx, gw, gb);
  });
}

}  // namespace tg::kernels
