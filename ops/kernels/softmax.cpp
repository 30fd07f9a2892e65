#include "ops/kernels/softmax.hpp"

// GCC 12 reports -Wuninitialized inside the AVX-512 intrinsic headers (_mm512_undefined_*) once
// xsimd's max is inlined into the row reduction below: a false positive of the headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <xsimd/xsimd.hpp>

#include <array>
#include <cmath>
#include <limits>

#include "core/parallel.hpp"
#include "ops/kernels/simd_math.hpp"
#include "ops/kernels/simd_partial.hpp"

namespace tg::kernels {
namespace {
using simd::exp_nonpos;
using simd::for_each_batch;
using simd::load_n;
using simd::prefetch_next_row;
using simd::store_n;

template <class T>
using B = xsimd::batch<T>;

// A reduction over a row with 2 batch accumulators and a padded tail; `combine` works on batches
// and on scalars.
template <class T, class Load, class Combine>
T row_reduce(std::int64_t n, T identity, Load load, Combine combine) {
  constexpr std::int64_t W = B<T>::size;
  B<T> a0(identity), a1(identity);
  std::int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    a0 = combine(a0, load(i, W));
    a1 = combine(a1, load(i + W, W));
  }
  for (; i < n; i += W) a0 = combine(a0, load(i, std::min(W, n - i)));
  return simd::reduce_lanes<T>(combine(a0, a1), combine);
}

template <class T>
void forward_row(const T* x, T* y, std::int64_t n, bool log, bool prefetch_next) {
  constexpr std::int64_t W = B<T>::size;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const T m = row_reduce<T>(n, neg_inf, [&](std::int64_t i, std::int64_t c) { return load_n(x + i, c, neg_inf); },
                            [](const auto& a, const auto& b) { return xsimd::max(a, b); });
  const B<T> mb(m);
  // Sum of exp(x - m); softmax stores the exponentials on the way. Four batches per step, their
  // exponentials computed together (simd::exp_nonpos), into four accumulators.
  constexpr std::int64_t U = 4;
  std::array<B<T>, U> acc{B<T>(T(0)), B<T>(T(0)), B<T>(T(0)), B<T>(T(0))};
  std::int64_t i = 0;
  for (; i + U * W <= n; i += U * W) {
    std::array<B<T>, U> e;
    for (std::int64_t u = 0; u < U; ++u) e[u] = B<T>::load_unaligned(x + i + u * W) - mb;
    exp_nonpos(e);
    for (std::int64_t u = 0; u < U; ++u) {
      if (!log) e[u].store_unaligned(y + i + u * W);
      acc[u] += e[u];
      // The next row's lines are fetched meanwhile: memory and the exponentials overlap.
      if (prefetch_next) prefetch_next_row(x + n + i + u * W, y + n + i + u * W);
    }
  }
  for (; i < n; i += W) {
    const std::int64_t c = std::min(W, n - i);
    const B<T> e = exp_nonpos(load_n(x + i, c, neg_inf) - mb);
    if (!log) store_n(y + i, e, c);
    acc[0] += e;
    if (prefetch_next) prefetch_next_row(x + n + i, y + n + i);
  }
  auto add = [](const auto& a, const auto& b) { return a + b; };
  const T s = simd::reduce_lanes<T>((acc[0] + acc[1]) + (acc[2] + acc[3]), add);
  if (log) {
    // (x - m) - log s, not x - (m + log s): the latter rounds the shift to ulp(m), which for large
    // logits (|m| ~ 1e3) is far more than ulp(y).
    const B<T> log_s(std::log(s));
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) { store_n(y + i, (load_n(x + i, c, T(0)) - mb) - log_s, c); });
  } else {
    const B<T> inv(T(1) / s);
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) { store_n(y + i, load_n(y + i, c, T(0)) * inv, c); });
  }
}

// One row of the backward; the inputs `ahead` elements further (a later row, or 0) are prefetched
// during the second pass, which reads this row from L1: the next row's first pass then does not
// wait on memory (as the layer norm backward).
template <class T, bool Stream>
void backward_row(const T* y, const T* g, T* gx, std::int64_t n, bool log, std::int64_t ahead) {
  auto add = [](const auto& a, const auto& b) { return a + b; };
  auto prefetch = [&](std::int64_t i) {
    simd::prefetch_row_ahead<Stream>(y + ahead + i, g + ahead + i, gx + ahead + i);
  };
  if (log) {
    const B<T> sg(row_reduce<T>(n, T(0), [&](std::int64_t i, std::int64_t c) { return load_n(g + i, c, T(0)); }, add));
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) {
      simd::store_out<Stream>(gx + i, load_n(g + i, c, T(0)) - exp_nonpos(load_n(y + i, c, T(0))) * sg, c);
      prefetch(i);
    });
  } else {
    const B<T> dot(row_reduce<T>(
        n, T(0), [&](std::int64_t i, std::int64_t c) { return load_n(g + i, c, T(0)) * load_n(y + i, c, T(0)); },
        add));
    for_each_batch<T>(n, [&](std::int64_t i, std::int64_t c) {
      simd::store_out<Stream>(gx + i, load_n(y + i, c, T(0)) * (load_n(g + i, c, T(0)) - dot), c);
      prefetch(i);
    });
  }
}

std::int64_t row_grain(std::int64_t n) { return std::max<std::int64_t>(1, (1 << 14) / std::max<std::int64_t>(n, 1)); }

}  // namespace

void softmax_forward(const Tensor& x, const Tensor& y, bool log) {
  const std::int64_t rows = x.shape()[0], n = x.shape()[1];
  dispatch_float(x.dtype(), "softmax", [&]<class T>() {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    parallel_for(rows, row_grain(n), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) forward_row(xp + r * n, yp + r * n, n, log, r + 1 < e);
    });
  });
}

void softmax_backward(const Tensor& y, const Tensor& g, const Tensor& gx, bool log) {
  const std::int64_t rows = y.shape()[0], n = y.shape()[1];
  dispatch_float(y.dtype(), "softmax", [&]<class T>() {
    const T* yp = y.data<T>();
    const T* gp = g.data<T>();
    T* gxp = gx.data<T>();
    // A gx larger than the caches is written with non-temporal stores (no read-for-ownership).
    const std::int64_t row_bytes = n * static_cast<std::int64_t>(sizeof(T));
    const bool stream = simd::stream_output(gxp, row_bytes, rows * row_bytes);
    parallel_for(rows, row_grain(n), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) {
        const std::int64_t ahead = simd::rows_ahead(stream, r, e, n);
        if (stream) backward_row<T, true>(yp + r * n, gp + r * n, gxp + r * n, n, log, ahead);
        else backward_row<T, false>(yp + r * n, gp + r * n, gxp + r * n, n, log, ahead);
      }
      if (stream) simd::stream_fence();
    });
  });
}

}  // namespace tg::kernels
