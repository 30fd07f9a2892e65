// Partial SIMD vectors: the first n lanes of a load or store, for row and plane ends (masked
// loads/stores on AVX-512, a small buffer elsewhere); the prefetch of the next row in row kernels,
// and their non-temporal stores of large outputs. Shared by the convolution, norm and softmax
// kernels (the FFT takes its streaming threshold from here too). Internal to ops/kernels.
#pragma once
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <atomic>
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

// The same in a backward row kernel with two inputs: with a streamed output (Stream: written with
// non-temporal stores, never read back) only the inputs are requested.
template <bool Stream>
inline void prefetch_row_ahead(const void* read1, const void* read2, void* write) {
  if constexpr (Stream) {
    __builtin_prefetch(read1, 0, 3);
    __builtin_prefetch(read2, 0, 3);
  } else {
    prefetch_next_row(read1, read2, write);
  }
}

// How far ahead (in elements) such a kernel prefetches on row r of a task ending at row `end`: a
// later row of the task (the last row re-touches its own lines) -- the next one, or, with a
// streamed output, whose inputs come from DRAM, the one after: more lines in flight (measured on
// the layer norm backward, see norm.cpp).
inline int64_t rows_ahead(bool stream, int64_t r, int64_t end, int64_t n) {
  return std::min<int64_t>(stream ? 2 : 1, end - 1 - r) * n;
}

// Kernels write an output of at least this many bytes with non-temporal stores (the FFT's outputs,
// the row kernels' large gradients; default 16 MiB, more than the caches hold beside the inputs):
// an ordinary store first reads the line it writes (read-for-ownership), one more stream from
// memory, and evicts useful lines. Smaller outputs keep ordinary stores: the next op reads them
// back from the cache. The bits are the same either way; tests set 0 to stream every eligible
// output.
inline std::atomic<int64_t> stream_threshold{int64_t{16} << 20};

// Whether an output of `bytes` at dst, in rows of `row_bytes`, is streamed: AVX-512 only, and every
// row must start on a cache line.
inline bool stream_output(const void* dst, int64_t row_bytes, int64_t bytes) {
#if XSIMD_WITH_AVX512F
  return bytes >= stream_threshold.load(std::memory_order_relaxed) && reinterpret_cast<uintptr_t>(dst) % 64 == 0 &&
         row_bytes % 64 == 0;
#else
  (void)dst, (void)row_bytes, (void)bytes;
  return false;
#endif
}

// store_n of an output row's batch; with Stream (the output passed stream_output, so p is 64-byte
// aligned and rows hold whole batches) a non-temporal store, and the task ends with stream_fence().
template <bool Stream, class T>
inline void store_out(T* p, const xsimd::batch<T>& v, int64_t n) {
#if XSIMD_WITH_AVX512F
  if constexpr (Stream) {
    if (n >= static_cast<int64_t>(xsimd::batch<T>::size)) {
      if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(p, v);
      else _mm512_stream_pd(p, v);
      return;
    }
  }
#endif
  store_n(p, v, n);
}

// Orders a task's non-temporal stores before whatever reads them after the task.
inline void stream_fence() {
#if XSIMD_WITH_AVX512F
  _mm_sfence();
#endif
}

}  // namespace tg::kernels::simd
