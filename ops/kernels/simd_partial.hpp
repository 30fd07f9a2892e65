// Partial SIMD vectors: the first n lanes of a load or store, for row and plane ends (masked
// loads/stores on AVX-512, a small buffer elsewhere); and the prefetch of the next row in row
// kernels. Shared by the convolution, norm and softmax kernels. Internal to ops/kernels.
#pragma once
#include <xsimd/xsimd.hpp>

#include <cstdint>
#include <type_traits>

#if XSIMD_WITH_AVX512F
#include <immintrin.h>
#endif

namespace tg::kernels::simd {

// The first n elements at p (all lanes when n >= lanes), `fill` in the other lanes; never reads
// past p + n (nothing when n <= 0).
template <class T>
inline xsimd::batch<T> load_n(const T* p, int64_t n, T fill = T(0)) {
  using V = xsimd::batch<T>;
  constexpr int64_t L = static_cast<int64_t>(V::size);
  if (n >= L) return V::load_unaligned(p);
  if (n <= 0) return V(fill);
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    return V(_mm512_mask_loadu_ps(_mm512_set1_ps(fill), static_cast<__mmask16>((1u << n) - 1), p));
  } else {
    return V(_mm512_mask_loadu_pd(_mm512_set1_pd(fill), static_cast<__mmask8>((1u << n) - 1), p));
  }
#else
  alignas(64) T buf[L];
  for (int64_t i = 0; i < L; ++i) buf[i] = i < n ? p[i] : fill;
  return V::load_aligned(buf);
#endif
}

// Stores the first n lanes of v (all when n >= lanes, none when n <= 0).
template <class T>
inline void store_n(T* p, const xsimd::batch<T>& v, int64_t n) {
  constexpr int64_t L = static_cast<int64_t>(xsimd::batch<T>::size);
  if (n >= L) {
    v.store_unaligned(p);
    return;
  }
  if (n <= 0) return;
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  } else {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v);
  }
#else
  alignas(64) T buf[L];
  v.store_aligned(buf);
  for (int64_t i = 0; i < n; ++i) p[i] = buf[i];
#endif
}

// f(i, count) over [0, n) in steps of the batch width: in the main loop count is the constant
// width, so that load_n / store_n there are plain loads and stores without branches; the
// remainder comes once at the end.
template <class T, class F>
inline void for_each_batch(int64_t n, F f) {
  constexpr int64_t L = static_cast<int64_t>(xsimd::batch<T>::size);
  int64_t i = 0;
  for (; i + L <= n; i += L) f(i, L);
  if (i < n) f(i, n - i);
}

// The last pass over a row mostly hits L1; while it runs, the next row's cache lines (x + n + i ...)
// are pulled in, so that the next row's first pass does not wait on memory (called once per
// vector: W elements are 64 bytes in f32 and f64).
inline void prefetch_next_row(const void* read, void* write) {
  __builtin_prefetch(read, 0, 3);
  __builtin_prefetch(write, 1, 3);
}
inline void prefetch_next_row(const void* read1, const void* read2, void* write) {
  __builtin_prefetch(read2, 0, 3);
  prefetch_next_row(read1, write);
}

}  // namespace tg::kernels::simd
