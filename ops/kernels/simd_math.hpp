// SIMD math for the row kernels, whose speed on wide cores is decided by their arithmetic: exp of
// non-positive arguments (softmax, attention's online softmax, the Gaussian density in GELU's
// gradient) and the reduction of a batch's lanes. Internal to ops/ (includes xsimd).
#pragma once
#include <xsimd/xsimd.hpp>

#include <array>
#include <cstdint>
#include <limits>
#include <type_traits>

#if XSIMD_WITH_AVX512F
#include <immintrin.h>
#endif

// GCC 12 flags the _mm512_undefined_* placeholders inside the AVX-512 intrinsics (and xsimd's f64
// exp) as uninitialised once inlined here, in -O1 sanitizer builds: a known false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tg::kernels::simd {

// exp(x) for x <= 0, -inf and NaN (NaN propagates, -inf gives 0); what a softmax needs: scores
// minus their max or their logsumexp. Applied to U batches at once, step by step across them: the
// ~15 dependent steps of one exp are latency-bound, and GCC does not interleave separate calls.
// f64: xsimd::exp.
//
// f32: x = n ln2 + r with n = round(x log2 e) and r in [-ln2/2, ln2/2] (ln2 in two parts, so r is
// exact to a few ulp), e^r by a degree-6 polynomial (fitted for this project: relative error 2e-9
// on the interval; 6 FMAs, where Cephes' expf takes 8 operations), then 2^n applied. Measured
// over every f32 in [-104, 0]: at most 1 ulp from the correctly rounded result, 99.3% exact.
// xsimd::exp also guards overflow, which cannot happen here. With AVX-512, vscalefps applies 2^n,
// rounding subnormal results correctly and giving 0 far below; elsewhere 2^n is built in the
// exponent bits and arguments below -87 give 0 (e^-87 is about the smallest normal f32: only
// subnormals are lost). About 12 vector instructions per batch against xsimd's ~20.
template <class T, std::size_t U>
inline void exp_nonpos(std::array<xsimd::batch<T>, U>& v) {
  using V = xsimd::batch<T>;
  if constexpr (std::is_same_v<T, float>) {
    V nb[U], r[U], y[U];
#if XSIMD_WITH_AVX512F
    // max(c, x) returns its second operand when either is NaN: NaN passes. Below -104, e^x is
    // under half the smallest subnormal, so the clamp changes nothing.
    for (std::size_t u = 0; u < U; ++u) v[u] = V(_mm512_max_ps(_mm512_set1_ps(-104.0f), v[u]));
    for (std::size_t u = 0; u < U; ++u)
      nb[u] = V(_mm512_roundscale_ps(_mm512_mul_ps(v[u], _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    xsimd::batch_bool<T> under[U], nan[U];
    for (std::size_t u = 0; u < U; ++u) {
      under[u] = v[u] < V(-87.0f);
      nan[u] = xsimd::isnan(v[u]);
      v[u] = xsimd::max(v[u], V(-87.0f));
      nb[u] = xsimd::nearbyint(v[u] * V(1.44269504088896341f));
    }
#endif
    for (std::size_t u = 0; u < U; ++u) r[u] = xsimd::fnma(nb[u], V(0.693359375f), v[u]);
    for (std::size_t u = 0; u < U; ++u) r[u] = xsimd::fnma(nb[u], V(-2.12194440e-4f), r[u]);
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(V(0.0013843875f), r[u], V(0.008374165f));
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(y[u], r[u], V(0.041667998f));
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(y[u], r[u], V(0.16666432f));
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(y[u], r[u], V(0.49999994f));
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(y[u], r[u], V(1.0f));
    for (std::size_t u = 0; u < U; ++u) y[u] = xsimd::fma(y[u], r[u], V(1.0f));
#if XSIMD_WITH_AVX512F
    for (std::size_t u = 0; u < U; ++u) v[u] = V(_mm512_scalef_ps(y[u], nb[u]));
#else
    using I = xsimd::batch<std::int32_t>;
    for (std::size_t u = 0; u < U; ++u) {
      const V scale = xsimd::bitwise_cast<V>((xsimd::batch_cast<std::int32_t>(nb[u]) + I(127)) << 23);
      // NaN is restored: the clamp replaced it.
      v[u] = xsimd::select(nan[u], V(std::numeric_limits<float>::quiet_NaN()),
                           xsimd::select(under[u], V(0.0f), y[u] * scale));
    }
#endif
  } else {
    for (std::size_t u = 0; u < U; ++u) v[u] = xsimd::exp(v[u]);
  }
}

template <class T>
inline xsimd::batch<T> exp_nonpos(const xsimd::batch<T>& x) {
  std::array<xsimd::batch<T>, 1> v{x};
  exp_nonpos(v);
  return v[0];
}

// The lanes of v combined pairwise, as a tree (log2(lanes) dependent steps, not lanes - 1);
// `combine` takes two batches or two scalars (e.g. + or xsimd::max), in the same order everywhere:
// the result does not depend on the thread count or on where the row lies.
template <class T, class Combine>
inline T reduce_lanes(xsimd::batch<T> v, Combine combine) {
  using V = xsimd::batch<T>;
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    v = combine(v, V(_mm512_shuffle_f32x4(v, v, 0x4E)));  // 256-bit halves swapped
    v = combine(v, V(_mm512_shuffle_f32x4(v, v, 0xB1)));  // 128-bit quarters swapped in pairs
    v = combine(v, V(_mm512_permute_ps(v, 0x4E)));        // 64-bit pairs within 128 bits
    v = combine(v, V(_mm512_permute_ps(v, 0xB1)));        // neighbours
    return _mm512_cvtss_f32(v);
  } else {
    v = combine(v, V(_mm512_shuffle_f64x2(v, v, 0x4E)));
    v = combine(v, V(_mm512_shuffle_f64x2(v, v, 0xB1)));
    v = combine(v, V(_mm512_permute_pd(v, 0x55)));
    return _mm512_cvtsd_f64(v);
  }
#else
  constexpr std::size_t W = V::size;
  alignas(64) T lanes[W];
  v.store_aligned(lanes);
  for (std::size_t half = W / 2; half >= 1; half /= 2)
    for (std::size_t j = 0; j < half; ++j) lanes[j] = combine(lanes[j], lanes[j + half]);
  return lanes[0];
#endif
}

}  // namespace tg::kernels::simd

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
