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
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <utility>
#include <vector>

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

// sin, cos and tan with every lane computed from its own value. xsimd 8.1 reduces the arguments
// of a whole batch by the method its largest |x| needs (|x| <= pi/4: none; up to pi/2, 20 pi and
// "mediumpi" (64 pi in f32, 2^18 pi in f64): Cody-Waite in growing steps; beyond, and inf and
// NaN: a scalar rem_pio2); the methods differ in the last bit, so a lane's result depended on its
// neighbours -- on where the rows of a layout start, not only on its value. Here every lane up to
// mediumpi takes xsimd's most accurate Cody-Waite step (exact for |x| <= pi/4, where the quadrant
// is 0), the rare larger, infinite or NaN lanes xsimd's scalar path, and the polynomials are
// xsimd's own (its internal kernels, hence the version check).
static_assert(XSIMD_VERSION_MAJOR == 8 && XSIMD_VERSION_MINOR == 1,
              "tg::kernels::sin_of etc. use xsimd 8.1's internal trig kernels; check them against this version");

namespace trig {

// a = |x| reduced to xr in [-pi/4, pi/4], and its quadrant (0..3 as a float), lane by lane.
template <class B>
inline B reduce_quadrant(const B& a, B& xr) {
  namespace c = xsimd::constants;
  if (xsimd::all(a <= c::pio4<B>())) {  // the common small arguments: what the steps below give them
    xr = a;
    return B(0);
  }
  const B fn = xsimd::nearbyint(a * c::twoopi<B>());
  B r = a - fn * c::pio2_1<B>();  // three parts of pi/2, each with its rounding error carried
  B t = r, w = fn * c::pio2_2<B>();
  r = t - w;
  w = fn * c::pio2_2t<B>() - ((t - r) - w);
  t = r;
  w = fn * c::pio2_3<B>();
  r = t - w;
  w = fn * c::pio2_3t<B>() - ((t - r) - w);
  xr = r - w;
  B n = xsimd::kernel::detail::quadrant(fn);
  const auto large = !(a <= c::mediumpi<B>());  // also inf and NaN
  if (xsimd::any(large)) {  // xsimd's scalar reduction, lane by lane; the others get a large dummy
    B xr_large;
    const B n_large = xsimd::kernel::detail::trigo_reducer<B>::reduce(xsimd::select(large, a, B(2) * c::mediumpi<B>()), xr_large);
    xr = xsimd::select(large, xr_large, xr);
    n = xsimd::select(large, n_large, n);
  }
  return n;
}

// What sin, cos and tan share: the reduced argument, its square, and the quadrant's two bits.
template <class B>
struct Reduced {
  B xr, z, swap_bit, high_bit;
  explicit Reduced(const B& v) {
    const B n = reduce_quadrant(xsimd::abs(v), xr);
    z = xr * xr;
    high_bit = xsimd::select(n >= B(2), B(1), B(0));
    swap_bit = xsimd::fma(B(-2), high_bit, n);
  }
};

}  // namespace trig

template <class B>
inline B sin_of(const B& v) {
  namespace d = xsimd::kernel::detail;
  const trig::Reduced<B> q(v);
  const B sign = xsimd::bitofsign(v) ^ xsimd::select(q.high_bit != B(0), xsimd::constants::signmask<B>(), B(0));
  return xsimd::select(q.swap_bit == B(0), d::sin_eval(q.z, q.xr), d::cos_eval(q.z)) ^ sign;
}
template <class B>
inline B cos_of(const B& v) {
  namespace d = xsimd::kernel::detail;
  const trig::Reduced<B> q(v);
  const B sign = xsimd::select((q.swap_bit ^ q.high_bit) != B(0), xsimd::constants::signmask<B>(), B(0));
  return xsimd::select(q.swap_bit != B(0), d::sin_eval(q.z, q.xr), d::cos_eval(q.z)) ^ sign;
}
template <class B>
inline B tan_of(const B& v) {
  const trig::Reduced<B> q(v);
  return xsimd::kernel::detail::tan_eval(q.xr, q.swap_bit == B(0)) ^ xsimd::bitofsign(v);
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

// Per-thread scratch of at least `bytes`, 64-byte aligned, for the tiles of tiled_runs (used in
// leaf work only: no TBB wait while it is live, so no other task reuses it meanwhile).
inline char* tile_scratch(std::size_t bytes) {
  thread_local std::vector<char> buf;
  if (buf.size() < bytes + 64) buf.resize(bytes + 64);
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64);
}

// Transposed inputs read in tiles: the output is cut into tiles of kTile elements along its
// contiguous dim 0 by kTile along dim j, the dim along which the `across` inputs are contiguous.
// Each such input's tile is transposed into a scratch buffer in the output's order (through
// registers on AVX-512, as the tiled copy, requesting each source row ahead of its loads), and
// fn then runs along the tile's output rows with that buffer as a contiguous operand; the other
// operands are read where they are. fn(ptrs, count, byte_strides) as for StridedLoop::run.
template <class T, int N>
void tiled_runs(const StridedLoop<N>& loop, int j, const std::array<bool, N>& across, const std::array<char*, N>& base,
                FunctionRef<void(const std::array<char*, N>&, std::int64_t, const std::array<std::int64_t, N>&)> fn) {
  // 128 x 128 with the row prefetch measured best (64 x 64, 64 x 256, 32 x 256, 256 x 64 were
  // 5-40% slower on the products above; without the prefetch 128 x 128 was 10-25% slower).
  constexpr std::int64_t kTile = 128, size = sizeof(T);
  // Operand 0 is the output, written in place: the scratch holds buffers for inputs 1..N-1 only.
  TG_CHECK(!across[0], "elementwise: internal error, the output of a tiled loop cannot be read across");
  const std::int64_t n0 = loop.size(0), nj = loop.size(j);
  std::int64_t outer = 1;
  for (int d = 1; d < loop.ndim(); ++d)
    if (d != j) outer *= loop.size(d);
  // Tasks are single tiles, numbered along dim 0 first (a task range walks along the output rows).
  const std::int64_t tiles_0 = (n0 + kTile - 1) / kTile, tiles_j = (nj + kTile - 1) / kTile;
  const std::int64_t tile_elements = std::min(n0, kTile) * std::min(nj, kTile);
  const std::int64_t grain = std::max<std::int64_t>(1, kElementwiseGrain / tile_elements);
  parallel_for(outer * tiles_j * tiles_0, grain, [&](std::int64_t t0, std::int64_t t1) {
    T* scratch = reinterpret_cast<T*>(tile_scratch(static_cast<std::size_t>((N - 1) * kTile * kTile * size)));
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t ib = (t % tiles_0) * kTile, ie = std::min(n0, ib + kTile);
      const std::int64_t jb = (t / tiles_0 % tiles_j) * kTile, je = std::min(nj, jb + kTile);
      std::int64_t rest = t / tiles_0 / tiles_j;
      std::array<char*, N> p = base;
      for (int d = 1; d < loop.ndim(); ++d) {  // the other dims, innermost first
        if (d == j) continue;
        const std::int64_t i = rest % loop.size(d);
        rest /= loop.size(d);
        for (int k = 0; k < N; ++k) p[k] += i * loop.stride(d, k);
      }
      std::array<std::int64_t, N> s;  // byte strides along dim 0 of what fn reads
      for (int k = 1; k < N; ++k) {
        s[k] = across[k] ? size : loop.stride(0, k);
        if (!across[k]) continue;
        // Input k's block (rows i at stride s0, contiguous columns jj) -> its buffer, row jj - jb.
        tg::detail::transpose_block(p[k] + ib * loop.stride(0, k) + jb * size, ie - ib, je - jb, loop.stride(0, k) / size,
                                    scratch + (k - 1) * kTile * kTile, kTile, sizeof(T), /*prefetch=*/true);
      }
      s[0] = loop.stride(0, 0);
      for (std::int64_t jj = jb; jj < je; ++jj) {
        std::array<char*, N> q;
        for (int k = 0; k < N; ++k)
          q[k] = across[k] ? reinterpret_cast<char*>(scratch + (k - 1) * kTile * kTile + (jj - jb) * kTile)
                           : p[k] + jj * loop.stride(j, k) + ib * loop.stride(0, k);
        fn(q, ie - ib, s);
      }
    }
  });
}

// out = f(ins...) with transposed inputs read in tiles (tiled_runs): one pass over each operand,
// where staging (a contiguous copy of each transposed input first) writes and reads every
// transposed input once more. Medians of interleaved runs, [2048, 2048] and [4096, 1024] f32:
// x.t() * y.t() 5.5 -> 3.0-3.4 ms at 1 thread, 2.6-2.8 -> 1.7-1.8 ms at 2; with one transposed
// input (exp(x.t()), x.t() + y) 0-20% faster. The functor sees the same values in its lanes, so
// the bits are those of the staged path. Returns false (nothing done) when no input of at least
// 2^14 elements is such a view, or when two inputs are contiguous along different dims.
template <class T, class F, class... Ins>
bool map_tiled(const Tensor& out, F& f, const Ins&... ins) {
  constexpr int N = 1 + static_cast<int>(sizeof...(Ins));
  if (out.numel() < (1 << 14)) return false;
  const StridedLoop<N> loop(out.shape(), {&out.strides(), &ins.strides()...}, {sizeof(T), kSizeOf<Ins, T>...});
  int j = -1;
  std::array<bool, N> across{};
  for (int k = 1; k < N; ++k) {
    const int d = transposed_dim(loop, k, sizeof(T), sizeof(T));
    if (d < 0) continue;
    if (j > 0 && d != j) return false;
    j = d;
    across[k] = true;
  }
  if (j < 0) return false;
  const std::array<char*, N> base{static_cast<char*>(out.raw_data()), static_cast<char*>(ins.raw_data())...};
  tiled_runs<T, N>(loop, j, across, base,
                   [&](const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s) {
                     run_1d<T, N>(f, p, n, s, std::make_index_sequence<N - 1>{});
                   });
  return true;
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
// Transposed inputs are read in tiles (detail::map_tiled), or, when they run along different
// dims, copied contiguous first (detail::staged_input).
template <class T, class F, class... Ins>
void map(const Tensor& out, F f, const Ins&... ins) {
  if (detail::map_tiled<T>(out, f, ins...)) return;
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
