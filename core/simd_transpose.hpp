// In-register transposes of AVX-512 blocks, shared by the code that changes layouts on the fly:
// transposing tensor copies (core/copy.cpp, hence this header's place in core/), GEMM packing, FFT
// lane-major loads/stores, attention's transposed scores, the convolution's weight-gradient
// layout. Internal (not part of the API): includes intrinsics headers. The namespace is that of
// the other SIMD helpers in ops/kernels.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace tg::kernels::simd {

// GCC 12's shuffle intrinsics use a self-initialised _mm512_undefined_*(), which -Wall reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// r[i] lane j -> r[j] lane i, for a 16 x 16 block of floats.
inline void transpose16x16(__m512 r[16]) {
  __m512 u[16], v[16];
  for (int i = 0; i < 16; i += 2) {  // interleave row pairs within 128-bit lanes
    u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 64-bit interleave: lane l of v[i + c] = column 4l + c
    const __m512d a0 = _mm512_castps_pd(u[i]), a1 = _mm512_castps_pd(u[i + 1]);
    const __m512d a2 = _mm512_castps_pd(u[i + 2]), a3 = _mm512_castps_pd(u[i + 3]);
    v[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    v[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    v[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    v[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; ++c) {  // gather the four 128-bit lanes of column 4l + c
    const __m512 w0 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0x88), w1 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0xDD);
    const __m512 x0 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0x88), x1 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(w0, x0, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(w0, x0, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(w1, x1, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(w1, x1, 0xDD);
  }
}

// r[i] lane j -> r[j] lane i, for an 8 x 8 block of doubles.
inline void transpose8x8(__m512d r[8]) {
  __m512d u[8];
  for (int i = 0; i < 8; i += 2) {  // lane l of u[i + c] = column 2l + c of rows i, i + 1
    u[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
    u[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
  }
  for (int c = 0; c < 2; ++c) {
    const __m512d w0 = _mm512_shuffle_f64x2(u[c], u[2 + c], 0x88), w1 = _mm512_shuffle_f64x2(u[c], u[2 + c], 0xDD);
    const __m512d x0 = _mm512_shuffle_f64x2(u[4 + c], u[6 + c], 0x88), x1 = _mm512_shuffle_f64x2(u[4 + c], u[6 + c], 0xDD);
    r[c] = _mm512_shuffle_f64x2(w0, x0, 0x88);
    r[4 + c] = _mm512_shuffle_f64x2(w0, x0, 0xDD);
    r[2 + c] = _mm512_shuffle_f64x2(w1, x1, 0x88);
    r[6 + c] = _mm512_shuffle_f64x2(w1, x1, 0xDD);
  }
}

// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols: 16 x 16 (8 x 8) blocks through
// registers, the ragged edges with masked loads and stores (nothing outside the two matrices is
// read or written). With `prefetch`, each row is also requested 256 bytes ahead of its loads (a
// hint, never a read): a source that comes from DRAM is otherwise fetched as 16 short row
// streams that the hardware prefetchers do not follow (measured on a 64 MB source: 5.7 -> 17.6
// GB/s); one in cache only pays the extra instructions.
inline void transpose_matrix(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t ss, float* dst,
                             std::int64_t ds, bool prefetch = false) {
  constexpr int kAhead = 256 / sizeof(float);
  for (std::int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int nr = static_cast<int>(std::min<std::int64_t>(16, rows - r0));
    const __mmask16 store_mask = static_cast<__mmask16>((1u << nr) - 1);
    for (std::int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int nc = static_cast<int>(std::min<std::int64_t>(16, cols - c0));
      const __mmask16 load_mask = static_cast<__mmask16>((1u << nc) - 1);
      __m512 b[16];
      if (prefetch)
        for (int i = 0; i < nr; ++i) _mm_prefetch(reinterpret_cast<const char*>(src + (r0 + i) * ss + c0 + kAhead), _MM_HINT_T0);
      for (int i = 0; i < 16; ++i)
        b[i] = i < nr ? _mm512_maskz_loadu_ps(load_mask, src + (r0 + i) * ss + c0) : _mm512_setzero_ps();
      transpose16x16(b);
      for (int j = 0; j < nc; ++j) _mm512_mask_storeu_ps(dst + (c0 + j) * ds + r0, store_mask, b[j]);
    }
  }
}
inline void transpose_matrix(const double* src, std::int64_t rows, std::int64_t cols, std::int64_t ss, double* dst,
                             std::int64_t ds, bool prefetch = false) {
  constexpr int kAhead = 256 / sizeof(double);
  for (std::int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int nr = static_cast<int>(std::min<std::int64_t>(8, rows - r0));
    const __mmask8 store_mask = static_cast<__mmask8>((1u << nr) - 1);
    for (std::int64_t c0 = 0; c0 < cols; c0 += 8) {
      const int nc = static_cast<int>(std::min<std::int64_t>(8, cols - c0));
      const __mmask8 load_mask = static_cast<__mmask8>((1u << nc) - 1);
      __m512d b[8];
      if (prefetch)
        for (int i = 0; i < nr; ++i) _mm_prefetch(reinterpret_cast<const char*>(src + (r0 + i) * ss + c0 + kAhead), _MM_HINT_T0);
      for (int i = 0; i < 8; ++i)
        b[i] = i < nr ? _mm512_maskz_loadu_pd(load_mask, src + (r0 + i) * ss + c0) : _mm512_setzero_pd();
      transpose8x8(b);
      for (int j = 0; j < nc; ++j) _mm512_mask_storeu_pd(dst + (c0 + j) * ds + r0, store_mask, b[j]);
    }
  }
}

#pragma GCC diagnostic pop

}  // namespace tg::kernels::simd

#endif  // __AVX512F__
