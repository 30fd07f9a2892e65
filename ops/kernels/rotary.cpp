// Rotary embedding kernel: rotates pairs of each row by per-row angles (given as cos/sin tables).
// Plain loops over contiguous rows; GCC vectorises both layouts (the interleaved one with
// even/odd shuffles). Rows are independent, so chunking never changes a bit.
#include <algorithm>

#include "core/parallel.hpp"
#include "ops/kernels/attention.hpp"

namespace tg::kernels {
namespace {

template <class T>
void rotate_row(const T* __restrict x, T* __restrict y, std::int64_t h, const T* __restrict c,
                const T* __restrict s, bool interleaved, bool inverse) {
  if (interleaved) {
    if (!inverse) {
      for (std::int64_t i = 0; i < h; ++i) {
        const T a = x[2 * i], b = x[2 * i + 1];
        y[2 * i] = a * c[i] - b * s[i];
        y[2 * i + 1] = a * s[i] + b * c[i];
      }
    } else {
      for (std::int64_t i = 0; i < h; ++i) {
        const T a = x[2 * i], b = x[2 * i + 1];
        y[2 * i] = a * c[i] + b * s[i];
        y[2 * i + 1] = b * c[i] - a * s[i];
      }
    }
  } else {
    const T* x2 = x + h;
    T* y2 = y + h;
    if (!inverse) {
      for (std::int64_t i = 0; i < h; ++i) {
        y[i] = x[i] * c[i] - x2[i] * s[i];
        y2[i] = x[i] * s[i] + x2[i] * c[i];
      }
    } else {
      for (std::int64_t i = 0; i < h; ++i) {
        y[i] = x[i] * c[i] + x2[i] * s[i];
        y2[i] = x2[i] * c[i] - x[i] * s[i];
      }
    }
  }
}

}  // namespace

template <class T>
void rotary(const T* x, T* y, std::int64_t rows, std::int64_t d, const T* cos, const T* sin, std::int64_t period,
            bool interleaved, bool inverse) {
  const std::int64_t h = d / 2;
  if (rows == 0 || h == 0) return;
  parallel_for(rows, std::max<std::int64_t>(1, (1 << 15) / d), [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      const std::int64_t t = r % period;
      rotate_row(x + r * d, y + r * d, h, cos + t * h, sin + t * h, interleaved, inverse);
    }
  });
}

template void rotary<float>(const float*, float*, std::int64_t, std::int64_t, const float*, const float*,
                            std::int64_t, bool, bool);
template void rotary<double>(const double*, double*, std::int64_t, std::int64_t, const double*, const double*,
                             std::int64_t, bool, bool);

}  // namespace tg::kernels
