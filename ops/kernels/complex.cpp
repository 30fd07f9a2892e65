// Complex elementwise kernels and the fused FFT convolution (see complex.hpp for the contracts).
#include "ops/kernels/complex.hpp"

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// operand of _mm512_permutexvar_pd behind xsimd::swizzle) in -O1 sanitizer builds; not about this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "core/parallel.hpp"
#include "core/strided.hpp"
#include "ops/kernels/fft.hpp"

namespace tg::kernels {
namespace {

template <class T>
using V = xsimd::batch<T>;
template <class T>
using CB = xsimd::batch<std::complex<T>>;
template <class T>
inline constexpr std::int64_t kW = static_cast<std::int64_t>(V<T>::size);

template <class T>
struct Cx {
  V<T> re, im;
};

// ---------------------------------------------------------------------------------------------
// Elementwise driver
// ---------------------------------------------------------------------------------------------

// Complex elements per parallel chunk (memory-bound loops).
constexpr std::int64_t kComplexGrain = 1 << 14;

// Loads `count` (<= W) complex elements of an operand with byte stride s (per complex element)
// starting at element i. Missing lanes are 1 + 0i (harmless for every functor).
template <class T>
inline Cx<T> load_c(const char* p, std::int64_t s, std::int64_t i, std::int64_t count) {
  constexpr std::int64_t W = kW<T>;
  if (s == 0) {
    const T* q = reinterpret_cast<const T*>(p);
    return {V<T>(q[0]), V<T>(q[1])};
  }
  if (count == W && s == static_cast<std::int64_t>(2 * sizeof(T))) {
    const CB<T> c = CB<T>::load_unaligned(reinterpret_cast<const std::complex<T>*>(p) + i);
    return {c.real(), c.imag()};
  }
  alignas(64) T re[W], im[W];
  for (std::int64_t j = 0; j < W; ++j) {
    if (j < count) {
      const T* q = reinterpret_cast<const T*>(p + (i + j) * s);
      re[j] = q[0];
      im[j] = q[1];
    } else {
      re[j] = T(1);
      im[j] = T(0);
    }
  }
  return {V<T>::load_aligned(re), V<T>::load_aligned(im)};
}

template <class T>
inline V<T> load_r(const char* p, std::int64_t s, std::int64_t i, std::int64_t count) {
  constexpr std::int64_t W = kW<T>;
  if (s == 0) return V<T>(*reinterpret_cast<const T*>(p));
  if (count == W && s == static_cast<std::int64_t>(sizeof(T)))
    return V<T>::load_unaligned(reinterpret_cast<const T*>(p) + i);
  alignas(64) T buf[W];
  for (std::int64_t j = 0; j < W; ++j) buf[j] = j < count ? *reinterpret_cast<const T*>(p + (i + j) * s) : T(1);
  return V<T>::load_aligned(buf);
}

template <class T>
inline void store_c(char* p, std::int64_t s, std::int64_t i, std::int64_t count, const Cx<T>& v) {
  constexpr std::int64_t W = kW<T>;
  if (count == W && s == static_cast<std::int64_t>(2 * sizeof(T))) {
    CB<T>(v.re, v.im).store_unaligned(reinterpret_cast<std::complex<T>*>(p) + i);
    return;
  }
  alignas(64) T re[W], im[W];
  v.re.store_aligned(re);
  v.im.store_aligned(im);
  for (std::int64_t j = 0; j < count; ++j) {
    T* q = reinterpret_cast<T*>(p + (i + j) * s);
    q[0] = re[j];
    q[1] = im[j];
  }
}

template <class T>
inline void store_r(char* p, std::int64_t s, std::int64_t i, std::int64_t count, const V<T>& v) {
  constexpr std::int64_t W = kW<T>;
  if (count == W && s == static_cast<std::int64_t>(sizeof(T))) {
    v.store_unaligned(reinterpret_cast<T*>(p) + i);
    return;
  }
  alignas(64) T buf[W];
  v.store_aligned(buf);
  for (std::int64_t j = 0; j < count; ++j) *reinterpret_cast<T*>(p + (i + j) * s) = buf[j];
}

// The strides of t over its leading dims (all but the trailing (re, im) pair for complex tensors).
Strides lead_strides(const Tensor& t, bool is_complex) {
  Strides s = t.strides();
  if (is_complex) s.resize(s.size() - 1);
  return s;
}

// out = f(complex inputs..., real inputs...) elementwise over the leading shape. f receives
// std::array<Cx<T>, NC> and std::array<V<T>, NR> and returns Cx<T> (complex out) or V<T>.
template <class T, int NC, int NR, bool kOutComplex, class F>
void cmap(const Tensor& out, const std::array<const Tensor*, NC>& cin, const std::array<const Tensor*, NR>& rin, F f) {
  constexpr int N = 1 + NC + NR;
  constexpr std::int64_t W = kW<T>;
  Shape lead = out.shape();
  if (kOutComplex) lead.resize(lead.size() - 1);
  std::array<Strides, N> st;
  std::array<char*, N> base;
  st[0] = lead_strides(out, kOutComplex);
  base[0] = static_cast<char*>(out.raw_data());
  for (int k = 0; k < NC; ++k) {
    st[1 + k] = lead_strides(*cin[k], true);
    base[1 + k] = static_cast<char*>(cin[k]->raw_data());
  }
  for (int k = 0; k < NR; ++k) {
    st[1 + NC + k] = rin[k]->strides();
    base[1 + NC + k] = static_cast<char*>(rin[k]->raw_data());
  }
  std::array<const Strides*, N> sp;
  std::array<std::size_t, N> es;
  for (int k = 0; k < N; ++k) {
    sp[k] = &st[k];
    es[k] = sizeof(T);
  }
  const StridedLoop<N> loop(lead, sp, es);
  parallel_for(loop.numel(), kComplexGrain, [&](std::int64_t b, std::int64_t e) {
    loop.run(base, b, e, [&](const std::array<char*, N>& p, std::int64_t n, const std::array<std::int64_t, N>& s) {
      for (std::int64_t i = 0; i < n; i += W) {
        const std::int64_t count = std::min(W, n - i);
        std::array<Cx<T>, NC> c;
        std::array<V<T>, NR> r;
        for (int k = 0; k < NC; ++k) c[k] = load_c<T>(p[1 + k], s[1 + k], i, count);
        for (int k = 0; k < NR; ++k) r[k] = load_r<T>(p[1 + NC + k], s[1 + NC + k], i, count);
        if constexpr (kOutComplex) {
          store_c<T>(p[0], s[0], i, count, f(c, r));
        } else {
          store_r<T>(p[0], s[0], i, count, f(c, r));
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Complex arithmetic on batches (the one formula of each op, shared by every code path)
// ---------------------------------------------------------------------------------------------

template <class T>
inline Cx<T> cmul(const Cx<T>& a, const Cx<T>& b) {  // a * b
  return {xsimd::fms(a.re, b.re, a.im * b.im), xsimd::fma(a.re, b.im, a.im * b.re)};
}
template <class T>
inline Cx<T> cmul_conj(const Cx<T>& a, const Cx<T>& b) {  // a * conj(b)
  return {xsimd::fma(a.re, b.re, a.im * b.im), xsimd::fms(a.im, b.re, a.re * b.im)};
}

// a / b by Smith's algorithm: divide through by the larger of |Re b|, |Im b| (no |b|^2 overflow).
template <class T>
inline Cx<T> cdiv(const Cx<T>& a, const Cx<T>& b) {
  const auto big = xsimd::abs(b.re) >= xsimd::abs(b.im);
  const V<T> rat = xsimd::select(big, b.im / b.re, b.re / b.im);
  const V<T> den = xsimd::select(big, xsimd::fma(b.im, rat, b.re), xsimd::fma(b.re, rat, b.im));
  const V<T> nre = xsimd::select(big, xsimd::fma(a.im, rat, a.re), xsimd::fma(a.re, rat, a.im));
  const V<T> nim = xsimd::select(big, xsimd::fnma(a.re, rat, a.im), xsimd::fms(a.im, rat, a.re));
  return {nre / den, nim / den};
}

// |z| = m sqrt(1 + (s/m)^2) with m = max(|re|, |im|), s = min: no overflow or underflow.
template <class T>
inline V<T> cabs(const Cx<T>& z) {
  const V<T> x = xsimd::abs(z.re), y = xsimd::abs(z.im);
  const V<T> m = xsimd::max(x, y), s = xsimd::min(x, y);
  const V<T> zero(T(0));
  const auto mz = m == zero;
  const V<T> q = s / xsimd::select(mz, V<T>(T(1)), m);
  V<T> r = xsimd::select(mz, zero, m * xsimd::sqrt(xsimd::fma(q, q, V<T>(T(1)))));
  r = xsimd::select(xsimd::isnan(z.re) || xsimd::isnan(z.im), V<T>(std::numeric_limits<T>::quiet_NaN()), r);
  r = xsimd::select(xsimd::isinf(z.re) || xsimd::isinf(z.im), V<T>(std::numeric_limits<T>::infinity()), r);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Rows of interleaved complex numbers (fused convolution)
// ---------------------------------------------------------------------------------------------
// Arithmetic directly on interleaved batches [re0, im0, re1, im1, ...] (W/2 complex numbers per
// batch): in-register pair swaps and duplications instead of de-interleaving loads.

template <class T>
using UIdx = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
struct SwapPairs {
  static constexpr unsigned get(unsigned i, unsigned) { return i ^ 1u; }
};
struct DupEven {
  static constexpr unsigned get(unsigned i, unsigned) { return i & ~1u; }
};
struct DupOdd {
  static constexpr unsigned get(unsigned i, unsigned) { return i | 1u; }
};
template <class T, class G>
inline V<T> swz(const V<T>& x) {
  return xsimd::swizzle(x, xsimd::make_batch_constant<xsimd::batch<UIdx<T>, typename V<T>::arch_type>, G>());
}
// Sign masks: -0.0 in the odd (imaginary) / even (real) lanes, 0 elsewhere (xor flips those signs).
template <class T>
struct SignMasks {
  V<T> odd, even;
  SignMasks() {
    alignas(64) T mo[kW<T>], me[kW<T>];
    for (std::int64_t j = 0; j < kW<T>; ++j) {
      mo[j] = j % 2 ? T(-0.0) : T(0);
      me[j] = j % 2 ? T(0) : T(-0.0);
    }
    odd = V<T>::load_aligned(mo);
    even = V<T>::load_aligned(me);
  }
};

// a * b: [ar br - ai bi, ai br + ar bi] = a * dup(br) + swap(a) * [-bi, bi].
template <class T>
inline V<T> imul(const V<T>& a, const V<T>& b, const SignMasks<T>& m) {
  return xsimd::fma(a, swz<T, DupEven>(b), swz<T, SwapPairs>(a) * xsimd::bitwise_xor(swz<T, DupOdd>(b), m.even));
}
// a * conj(b): [ar br + ai bi, ai br - ar bi] = a * dup(br) + swap(a) * [bi, -bi].
template <class T>
inline V<T> imul_conj(const V<T>& a, const V<T>& b, const SignMasks<T>& m) {
  return xsimd::fma(a, swz<T, DupEven>(b), swz<T, SwapPairs>(a) * xsimd::bitwise_xor(swz<T, DupOdd>(b), m.odd));
}
// acc + a * conj(b), as two fused steps.
template <class T>
inline V<T> imac_conj(const V<T>& acc, const V<T>& a, const V<T>& b, const SignMasks<T>& m) {
  const V<T> s = xsimd::fma(a, swz<T, DupEven>(b), acc);
  return xsimd::fma(swz<T, SwapPairs>(a), xsimd::bitwise_xor(swz<T, DupOdd>(b), m.odd), s);
}

// dst[j] = op(a[j], b[j]) over n scalars (n even; dst may alias a). The ragged tail is padded
// into a full batch, so every element goes through the same SIMD code.
template <class T, class Op>
inline void row_map2(T* dst, const T* a, const T* b, std::int64_t n, Op op) {
  constexpr std::int64_t W = kW<T>;
  std::int64_t i = 0;
  for (; i + W <= n; i += W) op(V<T>::load_unaligned(a + i), V<T>::load_unaligned(b + i)).store_unaligned(dst + i);
  if (i < n) {
    alignas(64) T ta[W] = {}, tb[W] = {};
    std::copy(a + i, a + n, ta);
    std::copy(b + i, b + n, tb);
    op(V<T>::load_aligned(ta), V<T>::load_aligned(tb)).store_aligned(ta);
    std::copy(ta, ta + (n - i), dst + i);
  }
}

// acc[j] += sum_{r < cnt} a_r[j] * conj(b_r[j]) over n scalars (n even), rows a_r = a + r*as,
// b_r = b + r*bs, summed in increasing r (fixed order: deterministic). Row-outer, so that each
// b row (the saved spectra, from memory) is streamed sequentially; acc stays in cache.
template <class T>
inline void rows_mac_conj(T* acc, const T* a, std::int64_t as, const T* b, std::int64_t bs, std::int64_t cnt, std::int64_t n,
                          const SignMasks<T>& m) {
  constexpr std::int64_t W = kW<T>;
  const std::int64_t nfull = n - n % W;
  for (std::int64_t r = 0; r < cnt; ++r) {
    const T* ar = a + r * as;
    const T* br = b + r * bs;
    for (std::int64_t i = 0; i < nfull; i += W)
      imac_conj(V<T>::load_unaligned(acc + i), V<T>::load_unaligned(ar + i), V<T>::load_unaligned(br + i), m)
          .store_unaligned(acc + i);
    if (nfull < n) {
      alignas(64) T ts[W] = {}, ta[W] = {}, tb[W] = {};
      std::copy(acc + nfull, acc + n, ts);
      std::copy(ar + nfull, ar + n, ta);
      std::copy(br + nfull, br + n, tb);
      imac_conj(V<T>::load_aligned(ts), V<T>::load_aligned(ta), V<T>::load_aligned(tb), m).store_aligned(ts);
      std::copy(ts, ts + (n - nfull), acc + nfull);
    }
  }
}

// dst[0, n) = src[0, n) with non-temporal stores where available (dst 64-byte aligned): the saved
// spectra are read again only in the backward pass, so they should not evict useful cache lines
// nor pay the read-for-ownership of a normal store.
template <class T>
inline void stream_copy(T* dst, const T* src, std::int64_t n) {
#if defined(__AVX512F__)
  constexpr std::int64_t W = 64 / sizeof(T);
  std::int64_t i = 0;
  if (reinterpret_cast<std::uintptr_t>(dst) % 64 == 0) {
    for (; i + W <= n; i += W) {
      if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
      else _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
    }
  }
  std::copy(src + i, src + n, dst + i);
#else
  std::copy(src, src + n, dst);
#endif
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// acc += a over a row of n scalars (fixed order: deterministic).
template <class T>
inline void row_add(T* acc, const T* a, std::int64_t n) {
  row_map2<T>(acc, acc, a, n, [](const V<T>& x, const V<T>& y) { return x + y; });
}

// A per-thread, 64-byte aligned scratch buffer (slot: independent buffers), grown on demand.
template <class T, int Slot>
T* thread_buffer(std::int64_t count) {
  struct Holder {
    T* p = nullptr;
    std::int64_t n = 0;
    ~Holder() { ::operator delete(p, std::align_val_t{64}); }
  };
  static thread_local Holder h;
  if (h.n < count) {
    ::operator delete(h.p, std::align_val_t{64});
    h.p = nullptr;
    h.n = 0;
    h.p = static_cast<T*>(::operator new(static_cast<std::size_t>(count) * sizeof(T), std::align_val_t{64}));
    h.n = count;
  }
  return h.p;
}

template <class T>
std::int64_t fft_rows_per_call() {
  if constexpr (std::is_same_v<T, float>) return fft_row_batch_float();
  else return fft_row_batch_double();
}

// Parallel tasks of at least ~this many FFT points (rows * nf) each.
constexpr std::int64_t kConvTaskPoints = 1 << 15;

// The backward pass wants at least this many independent tasks; with fewer blocks of kernel rows,
// the rows that share a kernel row are split into groups whose partial spectra are summed in
// group order.
constexpr std::int64_t kMinReductionTasks = 16;

// A block of up to R rows transformed by one kernel call: rows r0 + i*step, i < cnt. Output row
// r = p*ck + c uses kernel row c. "p-major" blocks hold rows of one kernel row c (step ck: the
// kernel spectrum is read once and, in the backward pass, the block's kernel-gradient spectra are
// reduced in registers); "c-major" blocks hold consecutive rows (step 1, kernel rows c .. c+cnt-1).
struct Block {
  std::int64_t r0, step, cnt, c;
  bool p_major;
};

// The blocks covering rows p in [pb, pe) x kernel rows c in [c0, c1), in a fixed order: full
// p-major blocks (c outer, p inner), then the remaining p < R rows per kernel row, in whichever
// orientation needs fewer kernel calls.
void make_blocks(std::vector<Block>& out, std::int64_t ck, std::int64_t R, std::int64_t pb, std::int64_t pe,
                 std::int64_t c0, std::int64_t c1) {
  const std::int64_t n = pe - pb, full = n / R, rem = n % R, nc = c1 - c0;
  for (std::int64_t c = c0; c < c1; ++c)
    for (std::int64_t j = 0; j < full; ++j) out.push_back({(pb + j * R) * ck + c, ck, R, c, true});
  if (rem == 0) return;
  const std::int64_t p1 = pb + full * R;
  if (rem * ((nc + R - 1) / R) <= nc) {
    for (std::int64_t p = p1; p < pe; ++p)
      for (std::int64_t c = c0; c < c1; c += R) out.push_back({p * ck + c, 1, std::min(R, c1 - c), c, false});
  } else {
    for (std::int64_t c = c0; c < c1; ++c) out.push_back({p1 * ck + c, ck, rem, c, true});
  }
}

// S_i = src_i * K_{c(i)} (or * conj(K)) for the rows i of block b; S holds cnt contiguous rows of
// row2 scalars, src rows are src_step scalars apart (src may be S itself).
template <class T>
void mul_kernel_rows(T* S, const T* src, std::int64_t src_step, const T* K, const Block& b, std::int64_t row2, bool conj,
                     const SignMasks<T>& m) {
  for (std::int64_t i = 0; i < b.cnt; ++i) {
    const T* k = K + (b.p_major ? b.c : b.c + i) * row2;
    T* s = S + i * row2;
    const T* x = src + i * src_step;
    if (conj) row_map2<T>(s, x, k, row2, [&](const V<T>& a, const V<T>& w) { return imul_conj(a, w, m); });
    else row_map2<T>(s, x, k, row2, [&](const V<T>& a, const V<T>& w) { return imul(a, w, m); });
  }
}

template <class T>
void conv_forward(const T* u, std::int64_t us, const T* K, T* y, T* Usave, const FftConvGeometry& g) {
  if (g.rows <= 0 || g.out_len <= 0) return;
  const std::int64_t R = fft_rows_per_call<T>(), nb = g.nf / 2 + 1, row2 = 2 * nb;
  const std::int64_t ss = fft_conv_saved_stride(g.nf, sizeof(T));
  std::vector<Block> blocks;
  make_blocks(blocks, g.ck, R, 0, g.rows / g.ck, 0, g.ck);
  const std::int64_t grain = std::max<std::int64_t>(1, kConvTaskPoints / (R * g.nf));
  const SignMasks<T> masks;
  parallel_for(static_cast<std::int64_t>(blocks.size()), grain, [&](std::int64_t b0, std::int64_t b1) {
    T* S = thread_buffer<T, 0>(R * row2);
    for (std::int64_t t = b0; t < b1; ++t) {
      const Block& b = blocks[static_cast<std::size_t>(t)];
      rfft_padded(u + b.r0 * us, b.step * us, g.L, S, row2, b.cnt, g.nf);
      if (Usave) {  // keep the signal spectrum for the backward pass
        for (std::int64_t i = 0; i < b.cnt; ++i) stream_copy(Usave + (b.r0 + i * b.step) * ss, S + i * row2, row2);
      }
      mul_kernel_rows<T>(S, S, row2, K, b, row2, false, masks);
      irfft_truncated(S, row2, y + b.r0 * g.out_len, b.step * g.out_len, b.cnt, g.nf, g.out_len);
    }
    if (Usave) stream_fence();
  });
}

template <class T>
void conv_backward(const T* u, std::int64_t us, const T* Usaved, const T* gy, std::int64_t gs, const T* K, T* gu, T* gk,
                   const FftConvGeometry& g) {
  if (g.rows <= 0 || (!gu && !gk)) return;
  const std::int64_t R = fft_rows_per_call<T>(), nb = g.nf / 2 + 1, row2 = 2 * nb;
  const std::int64_t P = g.rows / g.ck, ss = fft_conv_saved_stride(g.nf, sizeof(T));
  const SignMasks<T> masks;
  // G = rfft(gy) of block b into S; then, when wanted, gu = irfft(G * conj(K)).
  auto grad_rows = [&](const Block& b, T* S) {
    rfft_padded(gy + b.r0 * gs, b.step * gs, g.out_len, S, row2, b.cnt, g.nf);
  };
  auto grad_u = [&](const Block& b, T* S) {
    mul_kernel_rows<T>(S, S, row2, K, b, row2, true, masks);
    irfft_truncated(S, row2, gu + b.r0 * g.L, b.step * g.L, b.cnt, g.nf, g.L);
  };
  if (!gk) {  // only gu: every block is independent
    std::vector<Block> blocks;
    make_blocks(blocks, g.ck, R, 0, P, 0, g.ck);
    const std::int64_t grain = std::max<std::int64_t>(1, kConvTaskPoints / (R * g.nf));
    parallel_for(static_cast<std::int64_t>(blocks.size()), grain, [&](std::int64_t t0, std::int64_t t1) {
      T* S = thread_buffer<T, 0>(R * row2);
      for (std::int64_t t = t0; t < t1; ++t) {
        grad_rows(blocks[static_cast<std::size_t>(t)], S);
        grad_u(blocks[static_cast<std::size_t>(t)], S);
      }
    });
    return;
  }
  // Tasks (kernel rows [c0, c0 + R), row group q). Group q holds the chunks of R rows p in
  // [q nch / Q, (q+1) nch / Q) (nch = ceil(P / R)) and accumulates its kernel-gradient spectra into
  // its own partial part[q]; the partials are summed in q order at the end.
  const std::int64_t cblocks = (g.ck + R - 1) / R, nch = (P + R - 1) / R;
  const std::int64_t Q = std::min<std::int64_t>(nch, (kMinReductionTasks + cblocks - 1) / cblocks);
  Tensor part_t = zeros({Q * g.ck * row2}, std::is_same_v<T, float> ? DType::f32 : DType::f64);
  T* part = part_t.data<T>();
  parallel_for(Q * cblocks, 1, [&](std::int64_t t0, std::int64_t t1) {
    T* S = thread_buffer<T, 0>(R * row2);
    T* Ub = thread_buffer<T, 1>(Usaved ? 1 : R * row2);
    std::vector<Block> blocks;
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t q = t / cblocks, c0 = (t % cblocks) * R, c1 = std::min(g.ck, c0 + R);
      const std::int64_t pb = std::min(P, R * (q * nch / Q)), pe = std::min(P, R * ((q + 1) * nch / Q));
      blocks.clear();
      make_blocks(blocks, g.ck, R, pb, pe, c0, c1);
      T* acc = part + q * g.ck * row2;
      for (const Block& b : blocks) {
        grad_rows(b, S);
        const T* U;
        std::int64_t ustep;
        if (Usaved) {
          U = Usaved + b.r0 * ss;
          ustep = b.step * ss;
        } else {
          rfft_padded(u + b.r0 * us, b.step * us, g.L, Ub, row2, b.cnt, g.nf);
          U = Ub;
          ustep = row2;
        }
        if (b.p_major) {
          rows_mac_conj<T>(acc + b.c * row2, S, row2, U, ustep, b.cnt, row2, masks);
        } else {
          for (std::int64_t i = 0; i < b.cnt; ++i)
            rows_mac_conj<T>(acc + (b.c + i) * row2, S + i * row2, row2, U + i * ustep, ustep, 1, row2, masks);
        }
        if (gu) grad_u(b, S);
      }
    }
  });
  parallel_for(cblocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t cb = b0; cb < b1; ++cb) {
      const std::int64_t c0 = cb * R, cnt = std::min(R, g.ck - c0);
      T* acc = part + c0 * row2;
      for (std::int64_t q = 1; q < Q; ++q) row_add(acc, part + (q * g.ck + c0) * row2, cnt * row2);
      irfft_truncated(acc, row2, gk + c0 * g.Lk, g.Lk, cnt, g.nf, g.Lk);
    }
  });
}

}  // namespace

// ---- elementwise entry points ------------------------------------------------------------------------

void complex_mul(const Tensor& out, const Tensor& a, const Tensor& b, bool conj_b, double scale) {
  dispatch_float(out.dtype(), "complex_mul", [&]<class T>() {
    const V<T> s(static_cast<T>(scale));
    cmap<T, 2, 0, true>(out, {&a, &b}, {}, [&](const std::array<Cx<T>, 2>& c, const std::array<V<T>, 0>&) {
      const Cx<T> r = conj_b ? cmul_conj(c[0], c[1]) : cmul(c[0], c[1]);
      return scale == 1.0 ? r : Cx<T>{r.re * s, r.im * s};
    });
  });
}

void complex_div(const Tensor& out, const Tensor& a, const Tensor& b, bool conj_b) {
  dispatch_float(out.dtype(), "complex_div", [&]<class T>() {
    cmap<T, 2, 0, true>(out, {&a, &b}, {}, [&](const std::array<Cx<T>, 2>& c, const std::array<V<T>, 0>&) {
      return conj_b ? cdiv(c[0], Cx<T>{c[1].re, -c[1].im}) : cdiv(c[0], c[1]);
    });
  });
}

void complex_conj(const Tensor& out, const Tensor& a) {
  dispatch_float(out.dtype(), "complex_conj", [&]<class T>() {
    cmap<T, 1, 0, true>(out, {&a}, {}, [](const std::array<Cx<T>, 1>& c, const std::array<V<T>, 0>&) {
      return Cx<T>{c[0].re, -c[0].im};
    });
  });
}

void complex_abs(const Tensor& out, const Tensor& a) {
  dispatch_float(out.dtype(), "complex_abs", [&]<class T>() {
    cmap<T, 1, 0, false>(out, {&a}, {}, [](const std::array<Cx<T>, 1>& c, const std::array<V<T>, 0>&) {
      return cabs(c[0]);
    });
  });
}

void complex_abs_backward(const Tensor& out, const Tensor& g, const Tensor& a) {
  dispatch_float(out.dtype(), "complex_abs", [&]<class T>() {
    cmap<T, 1, 1, true>(out, {&a}, {&g}, [](const std::array<Cx<T>, 1>& c, const std::array<V<T>, 1>& x) {
      // The direction a / |a| from a scaled by m = max(|re|, |im|), so that neither g / |a| (inf
      // for a subnormal |a|) nor |a| itself (inf in f32 past 1.8e38) is formed. An infinite
      // component counts as 1 (the limit of the direction), the other then as 0.
      const V<T> zero(T(0)), one(T(1));
      const V<T> m = xsimd::max(xsimd::abs(c[0].re), xsimd::abs(c[0].im));
      const auto m_zero = m == zero, m_inf = xsimd::isinf(m);
      const V<T> safe_m = xsimd::select(m_zero || m_inf, one, m);
      const auto unit = [&](const V<T>& v) {
        return xsimd::select(m_inf, xsimd::select(xsimd::isinf(v), xsimd::copysign(one, v), zero), v / safe_m);
      };
      const V<T> ure = unit(c[0].re), uim = unit(c[0].im);  // max(|ure|, |uim|) = 1
      const V<T> k = xsimd::select(m_zero, zero, x[0] / xsimd::sqrt(xsimd::fma(ure, ure, uim * uim)));
      return Cx<T>{ure * k, uim * k};
    });
  });
}

// ---- fused convolution entry points -----------------------------------------------------------------

std::int64_t fft_conv_saved_stride(std::int64_t nf, std::size_t scalar_size) {
  const std::int64_t per_line = 64 / static_cast<std::int64_t>(scalar_size);
  const std::int64_t row2 = 2 * (nf / 2 + 1);
  return (row2 + per_line - 1) / per_line * per_line;
}

void fft_conv_forward(const float* u, std::int64_t u_stride, const float* K, float* y, float* U_save,
                      const FftConvGeometry& g) {
  conv_forward<float>(u, u_stride, K, y, U_save, g);
}
void fft_conv_forward(const double* u, std::int64_t u_stride, const double* K, double* y, double* U_save,
                      const FftConvGeometry& g) {
  conv_forward<double>(u, u_stride, K, y, U_save, g);
}
void fft_conv_backward(const float* u, std::int64_t u_stride, const float* U_saved, const float* gy,
                       std::int64_t gy_stride, const float* K, float* gu, float* gk, const FftConvGeometry& g) {
  conv_backward<float>(u, u_stride, U_saved, gy, gy_stride, K, gu, gk, g);
}
void fft_conv_backward(const double* u, std::int64_t u_stride, const double* U_saved, const double* gy,
                       std::int64_t gy_stride, const double* K, double* gu, double* gk, const FftConvGeometry& g) {
  conv_backward<double>(u, u_stride, U_saved, gy, gy_stride, K, gu, gk, g);
}

}  // namespace tg::kernels
