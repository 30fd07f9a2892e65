// Helpers shared by the convolution kernels (conv.cpp, conv_winograd.cpp): SIMD batch aliases,
// partial vector loads/stores (from simd_partial.hpp) and task-owned scratch buffers. Internal to ops/kernels.
#pragma once
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>

#include "core/tensor.hpp"
#include "ops/kernels/simd_partial.hpp"

namespace tg::kernels::conv_util {

template <class T>
using Vec = xsimd::batch<T>;
template <class T>
constexpr int64_t kLanes = static_cast<int64_t>(Vec<T>::size);

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Work per task, in multiply-adds: enough to hide the task overhead.
constexpr int64_t kTaskWork = int64_t{1} << 19;
inline int64_t items_per_task(int64_t work_per_item) {
  return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(work_per_item, 1));
}
// Images per task for the batch loops: enough work per task, and at most ~32 tasks so that a task
// walks several images (reusing its scratch, prefetching the next image while computing one).
inline int64_t images_per_task(int64_t n, int64_t work_per_image) {
  return std::max(items_per_task(work_per_image), n / 32);
}

// A task-owned scratch buffer from the caching allocator (64-byte aligned, reused across calls).
template <class T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : t_(empty({std::max<int64_t>(n, 1)}, dtype_of<T>())), p_(t_.data<T>()) {}
  T* get() const { return p_; }

 private:
  Tensor t_;
  T* p_;
};

using simd::load_n;
using simd::store_n;

// dst[0, n) = src[0, n) for short rows (a few vectors): inline vector copies with a masked tail,
// which for image rows of 7 to 28 elements cost far less than a call to memcpy each.
template <class T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  int64_t i = 0;
  for (; i + L <= n; i += L) Vec<T>::load_unaligned(src + i).store_unaligned(dst + i);
  if (i < n) store_n(dst + i, load_n(src + i, n - i), n - i);
}

// Asks for [p, p + bytes) to be brought into the cache ahead of use (e.g. the next image's data
// while the current one is computed: the strided reads that follow would otherwise wait on memory).
inline void prefetch_range(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 2);
}
inline void prefetch_range_for_write(void* p, int64_t bytes) {
  char* c = static_cast<char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 1, 2);
}

}  // namespace tg::kernels::conv_util
