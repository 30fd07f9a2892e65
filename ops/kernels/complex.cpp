// Complex elementwise kernels and the fused FFT convolution (see complex.hpp for the contracts).
#include "ops/kernels/complex.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <complex>
#include <cstddef>
#include <limits>
#include <new>

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

// Calls op(x, y) -> Cx for the nb complex elements of rows a and b and stores into dst (which may
// alias a). The ragged tail is padded into a full batch: every element sees the same SIMD code.
template <class T, class Op>
inline void row_binary(std::complex<T>* dst, const std::complex<T>* a, const std::complex<T>* b, std::int64_t nb, Op op) {
  constexpr std::int64_t W = kW<T>;
  std::int64_t i = 0;
  for (; i + W <= nb; i += W) {
    const CB<T> x = CB<T>::load_unaligned(a + i), y = CB<T>::load_unaligned(b + i);
    const Cx<T> r = op(Cx<T>{x.real(), x.imag()}, Cx<T>{y.real(), y.imag()});
    CB<T>(r.re, r.im).store_unaligned(dst + i);
  }
  if (i < nb) {
    alignas(64) std::complex<T> ta[W], tb[W], tc[W];
    const std::int64_t cnt = nb - i;
    for (std::int64_t j = 0; j < W; ++j) {
      ta[j] = j < cnt ? a[i + j] : std::complex<T>();
      tb[j] = j < cnt ? b[i + j] : std::complex<T>();
    }
    const CB<T> x = CB<T>::load_aligned(ta), y = CB<T>::load_aligned(tb);
    const Cx<T> r = op(Cx<T>{x.real(), x.imag()}, Cx<T>{y.real(), y.imag()});
    CB<T>(r.re, r.im).store_aligned(tc);
    for (std::int64_t j = 0; j < cnt; ++j) dst[i + j] = tc[j];
  }
}

// acc = (first ? 0 : acc) + a * conj(b) over a row of nb complex numbers.
template <class T>
inline void row_mac_conj(std::complex<T>* acc, const std::complex<T>* a, const std::complex<T>* b, std::int64_t nb,
                         bool first) {
  if (first) {
    row_binary<T>(acc, a, b, nb, [](const Cx<T>& x, const Cx<T>& y) { return cmul_conj(x, y); });
    return;
  }
  constexpr std::int64_t W = kW<T>;
  std::int64_t i = 0;
  auto step = [](const CB<T>& s, const CB<T>& x, const CB<T>& y) {
    // s + x conj(y): re = s.re + x.re y.re + x.im y.im, im = s.im + x.im y.re - x.re y.im
    const V<T> re = xsimd::fma(x.real(), y.real(), xsimd::fma(x.imag(), y.imag(), s.real()));
    const V<T> im = xsimd::fma(x.imag(), y.real(), xsimd::fnma(x.real(), y.imag(), s.imag()));
    return CB<T>(re, im);
  };
  for (; i + W <= nb; i += W)
    step(CB<T>::load_unaligned(acc + i), CB<T>::load_unaligned(a + i), CB<T>::load_unaligned(b + i))
        .store_unaligned(acc + i);
  if (i < nb) {
    alignas(64) std::complex<T> ts[W], ta[W], tb[W];
    const std::int64_t cnt = nb - i;
    for (std::int64_t j = 0; j < W; ++j) {
      ts[j] = j < cnt ? acc[i + j] : std::complex<T>();
      ta[j] = j < cnt ? a[i + j] : std::complex<T>();
      tb[j] = j < cnt ? b[i + j] : std::complex<T>();
    }
    step(CB<T>::load_aligned(ts), CB<T>::load_aligned(ta), CB<T>::load_aligned(tb)).store_aligned(ts);
    for (std::int64_t j = 0; j < cnt; ++j) acc[i + j] = ts[j];
  }
}

// acc += a over a row of n scalars (fixed order: deterministic).
template <class T>
inline void row_add(T* acc, const T* a, std::int64_t n) {
  constexpr std::int64_t W = kW<T>;
  std::int64_t i = 0;
  for (; i + W <= n; i += W) (V<T>::load_unaligned(acc + i) + V<T>::load_unaligned(a + i)).store_unaligned(acc + i);
  for (; i < n; ++i) acc[i] += a[i];
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

template <class T>
std::complex<T>* as_complex(T* p) {
  return reinterpret_cast<std::complex<T>*>(p);
}
template <class T>
const std::complex<T>* as_complex(const T* p) {
  return reinterpret_cast<const std::complex<T>*>(p);
}

// Parallel tasks of at least ~this many FFT points (rows * nf) each.
constexpr std::int64_t kConvTaskPoints = 1 << 15;

// Below this many independent (kernel-row block) tasks, the backward pass also splits the rows
// that share a kernel row into this many groups, with partial spectra summed in group order.
constexpr std::int64_t kMinReductionTasks = 16;

template <class T>
void conv_forward(const T* u, std::int64_t us, const T* K, T* y, T* Usave, const FftConvGeometry& g) {
  if (g.rows <= 0 || g.out_len <= 0) return;
  const std::int64_t R = fft_rows_per_call<T>(), nb = g.nf / 2 + 1, row2 = 2 * nb;
  const std::int64_t blocks = (g.rows + R - 1) / R;
  const std::int64_t grain = std::max<std::int64_t>(1, kConvTaskPoints / (R * g.nf));
  parallel_for(blocks, grain, [&](std::int64_t b0, std::int64_t b1) {
    T* S = thread_buffer<T, 0>(R * row2);
    for (std::int64_t blk = b0; blk < b1; ++blk) {
      const std::int64_t r0 = blk * R, cnt = std::min(R, g.rows - r0);
      T* U = Usave ? Usave + r0 * row2 : S;
      rfft_padded(u + r0 * us, us, g.L, U, row2, cnt, g.nf);
      for (std::int64_t i = 0; i < cnt; ++i) {
        const std::int64_t c = (r0 + i) % g.ck;
        row_binary<T>(as_complex(S + i * row2), as_complex(U + i * row2), as_complex(K + c * row2), nb,
                      [](const Cx<T>& x, const Cx<T>& w) { return cmul(x, w); });
      }
      irfft_truncated(S, row2, y + r0 * g.out_len, g.out_len, cnt, g.nf, g.out_len);
    }
  });
}

template <class T>
void conv_backward(const T* u, std::int64_t us, const T* Usaved, const T* gy, std::int64_t gs, const T* K, T* gu, T* gk,
                   const FftConvGeometry& g) {
  if (g.rows <= 0 || (!gu && !gk)) return;
  const std::int64_t R = fft_rows_per_call<T>(), nb = g.nf / 2 + 1, row2 = 2 * nb;
  const std::int64_t P = g.rows / g.ck, cblocks = (g.ck + R - 1) / R;
  auto mul_conj_k = [&](T* S, std::int64_t c0, std::int64_t cnt) {  // S_i *= conj(K_{c0+i})
    for (std::int64_t i = 0; i < cnt; ++i)
      row_binary<T>(as_complex(S + i * row2), as_complex(S + i * row2), as_complex(K + (c0 + i) * row2), nb,
                    [](const Cx<T>& x, const Cx<T>& w) { return cmul_conj(x, w); });
  };
  if (!gk) {  // only gu: every block of rows is independent
    const std::int64_t grain = std::max<std::int64_t>(1, kConvTaskPoints / (R * g.nf));
    parallel_for(P * cblocks, grain, [&](std::int64_t t0, std::int64_t t1) {
      T* S = thread_buffer<T, 0>(R * row2);
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t p = t / cblocks, c0 = (t % cblocks) * R, cnt = std::min(R, g.ck - c0);
        const std::int64_t r0 = p * g.ck + c0;
        rfft_padded(gy + r0 * gs, gs, g.out_len, S, row2, cnt, g.nf);
        mul_conj_k(S, c0, cnt);
        irfft_truncated(S, row2, gu + r0 * g.L, g.L, cnt, g.nf, g.L);
      }
    });
    return;
  }
  // Tasks (kernel-row block cb, row group q); group q holds the rows p in [q P / Q, (q+1) P / Q).
  const std::int64_t Q = cblocks >= kMinReductionTasks
                             ? 1
                             : std::min<std::int64_t>(P, (kMinReductionTasks + cblocks - 1) / cblocks);
  Tensor part_t = empty({Q * g.ck * row2}, std::is_same_v<T, float> ? DType::f32 : DType::f64);
  T* part = part_t.data<T>();
  parallel_for(Q * cblocks, 1, [&](std::int64_t t0, std::int64_t t1) {
    T* S = thread_buffer<T, 0>(R * row2);
    T* Ub = thread_buffer<T, 1>(Usaved ? 0 : R * row2);
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t q = t / cblocks, c0 = (t % cblocks) * R, cnt = std::min(R, g.ck - c0);
      const std::int64_t pb = q * P / Q, pe = (q + 1) * P / Q;
      T* acc = part + (q * g.ck + c0) * row2;
      for (std::int64_t p = pb; p < pe; ++p) {
        const std::int64_t r0 = p * g.ck + c0;
        rfft_padded(gy + r0 * gs, gs, g.out_len, S, row2, cnt, g.nf);
        const T* U = Usaved ? Usaved + r0 * row2 : Ub;
        if (!Usaved) rfft_padded(u + r0 * us, us, g.L, Ub, row2, cnt, g.nf);
        for (std::int64_t i = 0; i < cnt; ++i)
          row_mac_conj<T>(as_complex(acc + i * row2), as_complex(S + i * row2), as_complex(U + i * row2), nb, p == pb);
        if (gu) {
          mul_conj_k(S, c0, cnt);
          irfft_truncated(S, row2, gu + r0 * g.L, g.L, cnt, g.nf, g.L);
        }
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

void complex_abs_backward(const Tensor& out, const Tensor& g, const Tensor& a, const Tensor& r) {
  dispatch_float(out.dtype(), "complex_abs", [&]<class T>() {
    cmap<T, 1, 2, true>(out, {&a}, {&g, &r}, [](const std::array<Cx<T>, 1>& c, const std::array<V<T>, 2>& x) {
      const V<T> zero(T(0));
      const V<T> k = xsimd::select(x[1] == zero, zero, x[0] / x[1]);
      return Cx<T>{c[0].re * k, c[0].im * k};
    });
  });
}

// ---- fused convolution entry points -----------------------------------------------------------------

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
