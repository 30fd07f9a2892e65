// Helpers shared by the convolution kernels (conv.cpp, conv_winograd.cpp): SIMD batch aliases,
// partial vector loads/stores (from simd_partial.hpp) and task-owned scratch buffers. Internal to ops/kernels.
#pragma once
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/tensor.hpp"
#include "ops/kernels/scratch.hpp"
#include "ops/kernels/simd_partial.hpp"

#if XSIMD_WITH_AVX512F
#include <immintrin.h>
#endif

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

using kernels::Scratch;

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

// a = x0 x1 x2 ..., b = the next L elements: even = x0 x2 x4 ..., odd = x1 x3 x5 ...
template <class T>
inline void deinterleave(const Vec<T>& a, const Vec<T>& b, Vec<T>& even, Vec<T>& odd) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    even = Vec<T>(_mm512_permutex2var_ps(a, ie, b));
    odd = Vec<T>(_mm512_permutex2var_ps(a, io, b));
  } else {
    const __m512i ie = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    even = Vec<T>(_mm512_permutex2var_pd(a, ie, b));
    odd = Vec<T>(_mm512_permutex2var_pd(a, io, b));
  }
#else
  constexpr int64_t L = kLanes<T>;
  alignas(64) T ab[2 * L], e[L], o[L];
  a.store_aligned(ab);
  b.store_aligned(ab + L);
  for (int64_t l = 0; l < L; ++l) {
    e[l] = ab[2 * l];
    o[l] = ab[2 * l + 1];
  }
  even = Vec<T>::load_aligned(e);
  odd = Vec<T>::load_aligned(o);
#endif
}

// The two column phases of one image row: even_dst[m] = xr[2 m] for m < (w + 1) / 2 and
// odd_dst[m] = xr[2 m + 1] for m < w / 2. Whole vectors are loaded while they stay below x_end
// (the end of the image: lanes past the row are loaded but not stored), masked ones after.
template <class T>
inline void split_row_columns(const T* xr, int64_t w, const T* x_end, T* even_dst, T* odd_dst) {
  constexpr int64_t L = kLanes<T>;
  const int64_t n_even = (w + 1) / 2, n_odd = w / 2;
  for (int64_t k = 0; k * L < n_even; ++k) {
    const int64_t iw = 2 * L * k;
    Vec<T> even, odd;
    if (xr + iw + 2 * L <= x_end) {
      deinterleave(Vec<T>::load_unaligned(xr + iw), Vec<T>::load_unaligned(xr + iw + L), even, odd);
    } else {
      deinterleave(load_n(xr + iw, w - iw), load_n(xr + iw + L, w - iw - L), even, odd);
    }
    store_n(even_dst + k * L, even, n_even - k * L);
    if (n_odd > k * L) store_n(odd_dst + k * L, odd, n_odd - k * L);
  }
}

// The four column phases of one image row: dst[r][m] = xr[4 m + r] for 4 m + r < w. Like
// split_row_columns, whole vectors are loaded while they stay below x_end, masked ones after.
template <class T>
inline void split_row_columns4(const T* xr, int64_t w, const T* x_end, T* const dst[4]) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t k = 0; 4 * L * k < w; ++k) {
    const int64_t iw = 4 * L * k;
    Vec<T> v[4];
    for (int64_t j = 0; j < 4; ++j) {
      v[j] = xr + iw + (j + 1) * L <= x_end ? Vec<T>::load_unaligned(xr + iw + j * L) : load_n(xr + iw + j * L, w - iw - j * L);
    }
    Vec<T> e0, o0, e1, o1, r[4];
    deinterleave(v[0], v[1], e0, o0);  // x0 x2 x4 ... | x1 x3 x5 ...
    deinterleave(v[2], v[3], e1, o1);
    deinterleave(e0, e1, r[0], r[2]);  // x0 x4 x8 ... | x2 x6 x10 ...
    deinterleave(o0, o1, r[1], r[3]);  // x1 x5 x9 ... | x3 x7 x11 ...
    for (int64_t q = 0; q < 4; ++q) store_n(dst[q] + k * L, r[q], (w - q + 3) / 4 - k * L);
  }
}

// lo = a0 b0 a1 b1 ... (first halves of a and b interleaved), hi = the second halves.
template <class T>
inline void interleave(const Vec<T>& a, const Vec<T>& b, Vec<T>& lo, Vec<T>& hi) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ih = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    lo = Vec<T>(_mm512_permutex2var_ps(a, il, b));
    hi = Vec<T>(_mm512_permutex2var_ps(a, ih, b));
  } else {
    const __m512i il = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i ih = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    lo = Vec<T>(_mm512_permutex2var_pd(a, il, b));
    hi = Vec<T>(_mm512_permutex2var_pd(a, ih, b));
  }
#else
  constexpr int64_t L = kLanes<T>;
  alignas(64) T ab[2 * L], out[2 * L];
  a.store_aligned(ab);
  b.store_aligned(ab + L);
  for (int64_t l = 0; l < L; ++l) {
    out[2 * l] = ab[l];
    out[2 * l + 1] = ab[L + l];
  }
  lo = Vec<T>::load_aligned(out);
  hi = Vec<T>::load_aligned(out + L);
#endif
}

// The inverse of split_row_columns: dst[2 m] = even_src[m], dst[2 m + 1] = odd_src[m] for
// 2 m (+ 1) < w. Reads whole vectors of both sources (up to L - 1 entries past their ends).
template <class T>
inline void merge_row_columns(const T* even_src, const T* odd_src, int64_t w, T* dst) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t col = 0; col < w; col += 2 * L) {
    Vec<T> lo, hi;
    interleave(Vec<T>::load_unaligned(even_src + col / 2), Vec<T>::load_unaligned(odd_src + col / 2), lo, hi);
    store_n(dst + col, lo, w - col);
    if (w - col > L) store_n(dst + col + L, hi, w - col - L);
  }
}

// The inverse of split_row_columns4: dst[4 m + q] = src[q][m] for 4 m + q < w. Reads whole
// vectors of the sources (up to L - 1 entries past their ends).
template <class T>
inline void merge_row_columns4(const T* const src[4], int64_t w, T* dst) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t col = 0; col < w; col += 4 * L) {
    Vec<T> e_lo, e_hi, o_lo, o_hi, v[4];
    interleave(Vec<T>::load_unaligned(src[0] + col / 4), Vec<T>::load_unaligned(src[2] + col / 4), e_lo, e_hi);
    interleave(Vec<T>::load_unaligned(src[1] + col / 4), Vec<T>::load_unaligned(src[3] + col / 4), o_lo, o_hi);
    interleave(e_lo, o_lo, v[0], v[1]);  // x0 x1 x2 ... x(2L - 1)
    interleave(e_hi, o_hi, v[2], v[3]);
    for (int64_t j = 0; j < 4; ++j) store_n(dst + col + j * L, v[j], w - col - j * L);
  }
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

// Prefetches a range a slice per step of a computation, e.g. the next image while the current
// one is computed. In one burst, thousands of prefetches compete with the loads of the work in
// hand; spread out, they overlap with it (the weight gradients of the UNet's 28 x 28 layers got
// 4-8% faster).
class SpreadPrefetch {
 public:
  SpreadPrefetch() = default;
  SpreadPrefetch(const void* p, int64_t bytes, int64_t steps, bool for_write)
      : next_(static_cast<const char*>(p)),
        end_(next_ + bytes),
        per_step_((bytes / std::max<int64_t>(steps, 1) + 127) / 64 * 64),
        write_(for_write) {}
  void step() { issue(next_ + std::min<int64_t>(per_step_, end_ - next_)); }
  void finish() { issue(end_); }

 private:
  void issue(const char* to) {
    for (; next_ < to; next_ += 64) {
      if (write_) {
        __builtin_prefetch(next_, 1, 2);
      } else {
        __builtin_prefetch(next_, 0, 2);
      }
    }
  }
  const char* next_ = nullptr;
  const char* end_ = nullptr;
  int64_t per_step_ = 0;
  bool write_ = false;
};

}  // namespace tg::kernels::conv_util
