// The elementwise kernel driver: applies a SIMD functor to same-shape strided operands.
//
// A functor is written once for xsimd batches, e.g.
//   struct Exp { template <class B> B operator()(const B& x) const { return xsimd::exp(x); } };
// and map<T>(out, Exp{}, x) runs it over every element: contiguous runs load and store whole
// batches, broadcast (stride-0) operands are splatted, other strides are gathered into a batch,
// and the ragged tail of a run is padded into a full batch too. Every element therefore goes
// through the same SIMD code, so a result never depends on layout, chunking or thread count.
//
// Internal to ops/ (includes xsimd): include it only from .cpp files.
#pragma once

#include <xsimd/xsimd.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <utility>

#include "core/copy.hpp"
#include "core/parallel.hpp"
#include "core/strided.hpp"
#include "core/tensor.hpp"

namespace tg::kernels {

template <class T>
using Batch = xsimd::batch<T>;

// sizeof(T) once per element of a pack (for the operand element sizes of a StridedLoop).
template <class Ignored, class T>
inline constexpr std::size_t kSizeOf = sizeof(T);

// A scalar broadcast to the batch type of a functor argument.
template <class B>
inline B splat(double v) {
  return B(static_cast<typename B::value_type>(v));
}

// Activation formulas shared by the elementwise ops and the fused kernels that apply the same
// activation (group_norm_silu), so that a fused result equals the separate ops bit for bit.
template <class B>
inline B sigmoid_of(const B& v) {  // 1 / (1 + e^-v): exp overflows to inf for very negative v, giving 0
  return B(1) / (B(1) + xsimd::exp(-v));
}
template <class B>
inline B silu_of(const B& v) {
  return v * sigmoid_of(v);
}
// The gradient g of silu(v) taken back to v: g s (1 + v (1 - s)). The multiply-add is an
// explicit FMA: left to the compiler, it may be contracted in one inlined copy and not in another.
template <class B>
inline B silu_backward_of(const B& v, const B& g) {
  const B s = sigmoid_of(v);
  return g * s * xsimd::fma(v, B(1) - s, B(1));
}

// log and erf with the special values xsimd 8.1 gets wrong. xsimd::log treats subnormal inputs as
// if their exponent were the minimum one (log(1e-310) came out as -746.5 instead of -713.8): scale
// them into the normal range first. xsimd::erf returns NaN for huge |v| (v^2 overflows): past the
// point where erf rounds to +-1 (4 in f32, 6 in f64), return +-1; NaN stays NaN.
template <class B>
inline B log_of(const B& v) {
  using T = typename B::value_type;
  constexpr int k = std::numeric_limits<T>::digits + 1;  // 2^k lifts every subnormal above the normal minimum
  const auto tiny = v < B(std::numeric_limits<T>::min());
  const B r = xsimd::log(xsimd::select(tiny, v * B(T(std::ldexp(1.0, k))), v));
  return xsimd::select(tiny, r - B(T(k * std::numbers::ln2)), r);
}
template <class B>
inline B erf_of(const B& v) {
  using T = typename B::value_type;
  const T saturate = std::is_same_v<T, float> ? T(4) : T(6);
  return xsimd::select(xsimd::abs(v) > B(saturate), xsimd::copysign(B(1), v), xsimd::erf(v));
}

// The two f64 halves of an f32 batch.
inline void widen(const Batch<float>& v, Batch<double>& lo, Batch<double>& hi) {
#if XSIMD_WITH_AVX512F
  const __m512 r = v;
  lo = Batch<double>(_mm512_cvtps_pd(_mm512_castps512_ps256(r)));
  hi = Batch<double>(_mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_shuffle_f32x4(r, r, 0xEE))));
#elif XSIMD_WITH_AVX
  const __m256 r = v;
  lo = Batch<double>(_mm256_cvtps_pd(_mm256_castps256_ps128(r)));
  hi = Batch<double>(_mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
#else
  alignas(64) float f[Batch<float>::size];
  alignas(64) double d[Batch<float>::size];
  v.store_aligned(f);
  for (std::size_t j = 0; j < Batch<float>::size; ++j) d[j] = f[j];
  lo = Batch<double>::load_aligned(d);
  hi = Batch<double>::load_aligned(d + Batch<double>::size);
#endif
}

// Elements per parallel chunk for memory-bound elementwise loops.
inline constexpr std::int64_t kElementwiseGrain = 1 << 15;

namespace detail {

template <class T, int N>
struct RunArgs {
  const std::array<char*, N>& p;
  const std::array<std::int64_t, N>& s;
};

// Loads `count` (<= W) elements of operand k starting at element i into a batch; missing lanes
// are 1 (harmless for every functor: no division by zero, log(1) = 0).
template <class T, int N>
inline Batch<T> load(const RunArgs<T, N>& a, int k, std::int64_t i, std::int64_t count) {
  constexpr std::int64_t W = Batch<T>::size;
  const std::int64_t s = a.s[k];
  const char* base = a.p[k];
  if (s == 0) return Batch<T>(*reinterpret_cast<const T*>(base));
  if (count == W && s == static_cast<std::int64_t>(sizeof(T)))
    return Batch<T>::load_unaligned(reinterpret_cast<const T*>(base) + i);
  alignas(64) T buf[W];
  for (std::int64_t j = 0; j < W; ++j)
    buf[j] = j < count ? *reinterpret_cast<const T*>(base + (i + j) * s) : T(1);
  return Batch<T>::load_aligned(buf);
}

template <class O, class T, int N>
inline void store(const RunArgs<T, N>& a, std::int64_t i, std::int64_t count, const Batch<O>& v) {
  constexpr std::int64_t W = Batch<O>::size;
  const std::int64_t s = a.s[0];
  if (count == W && s == static_cast<std::int64_t>(sizeof(O))) {
    v.store_unaligned(reinterpret_cast<O*>(a.p[0]) + i);
    return;
  }
  alignas(64) O buf[W];
  v.store_aligned(buf);
  for (std::int64_t j = 0; j < count; ++j) *reinterpret_cast<O*>(a.p[0] + (i + j) * s) = buf[j];
}

template <class T, int N, class F, std::size_t... I>
inline void run_1d(F& f, const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s,
                   std::index_sequence<I...>) {
  constexpr std::int64_t W = Batch<T>::size;
  const RunArgs<T, N> a{p, s};
  bool contiguous = true;
  for (int k = 0; k < N; ++k) contiguous = contiguous && s[k] == static_cast<std::int64_t>(sizeof(T));
  std::int64_t i = 0;
  if (contiguous) {  // the hot path: plain loads and stores
    T* out = reinterpret_cast<T*>(p[0]);
    for (; i + W <= n; i += W)
      f(Batch<T>::load_unaligned(reinterpret_cast<const T*>(p[1 + I]) + i)...).store_unaligned(out + i);
  }
  for (; i < n; i += W) {
    const std::int64_t count = std::min(W, n - i);
    store<T, T, N>(a, i, count, f(load<T, N>(a, 1 + static_cast<int>(I), i, count)...));
  }
}

// An input whose elements run along another dim than the output's (a transposed view: every
// element of a strided gather is a new cache line, 4 KiB or more from the last) is first copied
// contiguous by the tiled copy -- several times cheaper than the gathers. The functor then sees
// the same values in the same lanes, so the results are the same bits.
inline Tensor staged_input(const Tensor& out, const Tensor& in) {
  if (in.numel() < (1 << 14) || in.is_contiguous() || !tg::detail::reads_across(out, in)) return in;
  return in.detach().contiguous();  // a kernel input: nothing to record
}

template <class T, class F, class... Ins>
void map_staged(const Tensor& out, F f, const Ins&... ins) {
  constexpr int N = 1 + static_cast<int>(sizeof...(Ins));
  const StridedLoop<N> loop(out.shape(), {&out.strides(), &ins.strides()...}, {sizeof(T), kSizeOf<Ins, T>...});
  const std::array<char*, N> base{static_cast<char*>(out.raw_data()), static_cast<char*>(ins.raw_data())...};
  parallel_for(loop.numel(), kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
    loop.run(base, b, e, [&](const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s) {
      run_1d<T, N>(f, p, n, s, std::make_index_sequence<N - 1>{});
    });
  });
}

}  // namespace detail

// out = f(ins...) elementwise. All operands have out's shape (inputs may be strided/expanded
// views) and dtype T; out must not overlap the inputs unless it is identical to one of them.
// Transposed inputs are copied contiguous first (detail::staged_input).
template <class T, class F, class... Ins>
void map(const Tensor& out, F f, const Ins&... ins) {
  detail::map_staged<T>(out, f, detail::staged_input(out, ins)...);
}

// out (bool) = pred(ins...) elementwise, where pred returns a batch_bool of T.
template <class T, class F, class... Ins>
void map_predicate(const Tensor& out, F pred, const Ins&... ins) {
  constexpr int N = 1 + static_cast<int>(sizeof...(Ins));
  constexpr std::int64_t W = Batch<T>::size;
  const StridedLoop<N> loop(out.shape(), {&out.strides(), &ins.strides()...}, {sizeof(bool), kSizeOf<Ins, T>...});
  const std::array<char*, N> base{static_cast<char*>(out.raw_data()), static_cast<char*>(ins.raw_data())...};
  parallel_for(loop.numel(), kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
    loop.run(base, b, e, [&](const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s) {
      const detail::RunArgs<T, N> a{p, s};
      alignas(64) bool buf[W];
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        for (std::int64_t i = 0; i < n; i += W) {
          const std::int64_t count = std::min(W, n - i);
          pred(detail::load<T, N>(a, 1 + static_cast<int>(I), i, count)...).store_aligned(buf);
          for (std::int64_t j = 0; j < count; ++j) *reinterpret_cast<bool*>(p[0] + (i + j) * s[0]) = buf[j];
        }
      }(std::make_index_sequence<N - 1>{});
    });
  });
}

// A plain (non-SIMD) elementwise loop over mixed element types, for the few ops that need it
// (where, masked_fill, bool logic): out[i] = f(ins[i]...), with explicit C++ types.
template <class O, class... Ts, class F, class... Ins>
void map_scalar(const Tensor& out, F f, const Ins&... ins) {
  static_assert(sizeof...(Ts) == sizeof...(Ins));
  constexpr int N = 1 + static_cast<int>(sizeof...(Ins));
  const StridedLoop<N> loop(out.shape(), {&out.strides(), &ins.strides()...}, {sizeof(O), sizeof(Ts)...});
  const std::array<char*, N> base{static_cast<char*>(out.raw_data()), static_cast<char*>(ins.raw_data())...};
  parallel_for(loop.numel(), kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
    loop.run(base, b, e, [&](const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s) {
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        for (std::int64_t i = 0; i < n; ++i)
          *reinterpret_cast<O*>(p[0] + i * s[0]) = f(*reinterpret_cast<const Ts*>(p[1 + I] + i * s[1 + I])...);
      }(std::make_index_sequence<N - 1>{});
    });
  });
}

}  // namespace tg::kernels
