// Batched FFT kernels (see fft.hpp for the public contract).
//
// Algorithm
// ---------
// * Rows are processed in batches of W rows (W = SIMD width: 16 floats / 8 doubles with AVX-512,
//   4 / 2 with SSE2). The W rows of a batch are transposed into a "lane-major" work buffer: work
//   element j is a pair of SIMD registers (re, im) whose lane l holds element j of row l. Every
//   step of the FFT is then plain scalar-style code in which each scalar is a SIMD register, so
//   the code vectorises perfectly for any n (mixed radix, odd factors, Bluestein alike), with no
//   shuffles inside the transform. The transposes (W x W register transposes on AVX-512) are fused
//   with the loads of the input rows and the stores of the output rows. Padding lanes of a short
//   last batch duplicate a valid row; their results are discarded. A row's result depends only on
//   its own data, never on its lane or batch, so output is bit-identical for any thread count.
// * Complex transform of length m: iterative in-place decimation-in-time Cooley-Tukey, mixed radix
//   (2, 4, 3, 5 and a generic odd radix up to kMaxDirectRadix). The input digit-reversal
//   permutation is folded into the transposing load (element j is stored at pos[j]), so the
//   stages run in place on one buffer and leave the result in natural order. Stages are run
//   depth-first: all stages inside a sub-block of <= kL1Block elements run while that sub-block
//   is in L1, and only the remaining top stages sweep the whole buffer.
// * Lengths with a prime factor > kMaxDirectRadix use Bluestein's chirp-z algorithm with a
//   power-of-two inner transform of length M >= 2m-1 (chirp and the kernel spectrum are computed in
//   long double; the chirp index j^2 is reduced mod 2m exactly in integers).
// * Inverse complex transforms reuse the forward code: swapping the re/im arrays conjugates the
//   transform direction (DFT+(x) = swap(DFT-(swap(x)))), which costs nothing with split arrays.
// * Real transforms of even n use one complex transform of length m = n/2 on z_j = x_2j + i x_2j+1
//   and the usual split post-processing X_k = E_k + w^k O_k (fused into the transposing store);
//   irfft does the converse pre-processing. Odd n uses a complex transform of length n.
// * All twiddles and constants are computed in long double and rounded once to the scalar type.
// * Plans (factorisation, permutation, per-stage twiddles, Bluestein chirps) are built once per
//   (length, scalar type) under a mutex and shared immutably (thread-safe use).
// * Rows are parallelised with TBB over batches; each batch is computed by one task.
// * Outputs larger than the caches are written with realigned non-temporal stores (RowWriter).
// * Measured and rejected on this design: radix-8 butterflies (slower: register pressure with two
//   registers per complex element), a four-step split fused with the transposing load (slower:
//   the stages are compute-bound, not L2-bound), prefetching and huge pages for the work buffer.
// * Cost model / limitation: a batch's work buffer holds W rows (2 * W * m scalars), so a call with
//   fewer than W rows pays for W (there is no intra-row vectorisation), and a single huge row needs
//   W times its own size of scratch memory per thread.
#include "ops/kernels/fft.hpp"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>

#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "ops/kernels/simd_partial.hpp"
#include "core/simd_transpose.hpp"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <numbers>
#include <unordered_map>
#include <vector>

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// placeholders of unpack/shuffle intrinsics); they are not about this file's code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tg::kernels {
namespace {

template <class T>
using Vec = xsimd::batch<T>;
template <class T>
inline constexpr int kLanes = static_cast<int>(Vec<T>::size);

// Prime factors above this are handled by Bluestein (a direct radix-p stage costs ~p per point).
constexpr int kMaxDirectRadix = 31;
// Sub-transforms of at most this many work elements (2 registers each: 32 KiB at 64-byte
// registers) run all their stages while resident in L1.
constexpr int64_t kL1Block = 256;

using LD = long double;

// exp(-2 pi i num / den), computed in long double after exact integer range reduction.
std::complex<LD> root(int64_t num, int64_t den) {
  num %= den;
  if (num < 0) num += den;
  const LD a = 2 * std::numbers::pi_v<LD> * static_cast<LD>(num) / static_cast<LD>(den);
  return {std::cos(a), -std::sin(a)};
}

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------

template <class T>
struct Stage {
  int radix = 0;
  int64_t span = 0;   // length of the sub-transforms this stage combines
  std::vector<T> tw;  // (re, im) of exp(-2 pi i q k / (span*radix)) at [k*(radix-1) + q-1]
  std::vector<T> cs;  // odd radix p, h = (p-1)/2: cos(2 pi u q / p) at [(u-1)*h + q-1], then sin
};

template <class T>
struct CPlan {
  int64_t m = 0;
  std::vector<Stage<T>> stages;  // direct plans: stage t combines radix_t blocks of length L[t]
  std::vector<int64_t> L;        // L[t] = product of the first t radices
  std::vector<int32_t> pos;      // input element j goes to work position pos[j]
  // Bluestein plans (stages empty, pos = identity):
  bool bluestein = false;
  int64_t M = 0;
  std::unique_ptr<CPlan<T>> inner;  // direct power-of-two plan of length M
  std::vector<T> chirp;             // (re, im) of exp(-i pi j^2 / m), j < m
  std::vector<T> hhat;              // (re, im) of DFT_M(conj chirp, wrapped) / M
  // Work elements of scratch that execute() needs besides the data arrays.
  int64_t scratch() const { return bluestein ? 4 * M + 8 : 0; }
};

int64_t largest_prime_factor(int64_t m) {
  int64_t best = 1;
  for (int64_t f = 2; f * f <= m; ++f)
    while (m % f == 0) {
      best = f;
      m /= f;
    }
  return std::max(best, m);
}

template <class T>
std::unique_ptr<CPlan<T>> build_direct(int64_t m) {
  auto p = std::make_unique<CPlan<T>>();
  p->m = m;
  // Radix order: one radix 2 (if log2 is odd) first, then 4s, then odd factors.
  std::vector<int> radices;
  int64_t r = m;
  int fours = 0;
  while (r % 4 == 0) {
    r /= 4;
    ++fours;
  }
  if (r % 2 == 0) {
    r /= 2;
    radices.push_back(2);
  }
  radices.insert(radices.end(), fours, 4);
  for (int64_t f = 3; r > 1; f += 2)
    while (r % f == 0) {
      radices.push_back(static_cast<int>(f));
      r /= f;
    }
  p->L.assign(1, 1);
  for (const int rad : radices) {
    Stage<T> st;
    st.radix = rad;
    st.span = p->L.back();
    const int64_t len = st.span * rad;
    st.tw.resize(static_cast<size_t>(2 * st.span * (rad - 1)));
    for (int64_t k = 0; k < st.span; ++k)
      for (int q = 1; q < rad; ++q) {
        const auto w = root(q * k, len);
        st.tw[2 * (k * (rad - 1) + q - 1)] = static_cast<T>(w.real());
        st.tw[2 * (k * (rad - 1) + q - 1) + 1] = static_cast<T>(w.imag());
      }
    if (rad % 2 == 1) {
      const int h = (rad - 1) / 2;
      st.cs.resize(static_cast<size_t>(2 * h * h));
      for (int u = 1; u <= h; ++u)
        for (int q = 1; q <= h; ++q) {
          const auto w = root(static_cast<int64_t>(u) * q, rad);
          st.cs[(u - 1) * h + q - 1] = static_cast<T>(w.real());
          st.cs[h * h + (u - 1) * h + q - 1] = static_cast<T>(-w.imag());
        }
    }
    p->stages.push_back(std::move(st));
    p->L.push_back(len);
  }
  // Digit reversal: work position P with digits d_t = (P / L[t]) % radix_t holds the input
  // element (((d_0 * r_1 + d_1) * r_2 + d_2) ...), since the last stage interleaves its
  // sub-transforms by the last radix.
  p->pos.resize(static_cast<size_t>(m));
  for (int64_t P = 0; P < m; ++P) {
    int64_t src = 0;
    for (size_t t = 0; t < radices.size(); ++t) src = src * radices[t] + (P / p->L[t]) % radices[t];
    p->pos[static_cast<size_t>(src)] = static_cast<int32_t>(P);
  }
  return p;
}

// In-place radix-2 FFT in long double (plan construction only).
void fft_ld(std::vector<std::complex<LD>>& a) {
  const size_t n = a.size();
  for (size_t i = 1, j = 0; i < n; ++i) {
    size_t bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) std::swap(a[i], a[j]);
  }
  std::vector<std::complex<LD>> w(n / 2);
  for (size_t k = 0; k < n / 2; ++k) w[k] = root(static_cast<int64_t>(k), static_cast<int64_t>(n));
  for (size_t len = 2; len <= n; len *= 2)
    for (size_t i = 0; i < n; i += len)
      for (size_t k = 0; k < len / 2; ++k) {
        const auto u = a[i + k], v = a[i + k + len / 2] * w[k * (n / len)];
        a[i + k] = u + v;
        a[i + k + len / 2] = u - v;
      }
}

template <class T>
std::unique_ptr<CPlan<T>> build_cplan(int64_t m) {
  if (largest_prime_factor(m) <= kMaxDirectRadix) return build_direct<T>(m);
  auto p = std::make_unique<CPlan<T>>();
  p->m = m;
  p->bluestein = true;
  int64_t M = 1;
  while (M < 2 * m - 1) M *= 2;
  p->M = M;
  p->inner = build_direct<T>(M);
  p->pos.resize(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) p->pos[static_cast<size_t>(j)] = static_cast<int32_t>(j);
  std::vector<std::complex<LD>> c(static_cast<size_t>(m)), h(static_cast<size_t>(M));
  p->chirp.resize(static_cast<size_t>(2 * m));
  for (int64_t j = 0; j < m; ++j) {
    c[j] = root((j * j) % (2 * m), 2 * m);  // exp(-i pi j^2 / m)
    p->chirp[2 * j] = static_cast<T>(c[j].real());
    p->chirp[2 * j + 1] = static_cast<T>(c[j].imag());
  }
  h[0] = std::conj(c[0]);
  for (int64_t j = 1; j < m; ++j) h[j] = h[M - j] = std::conj(c[j]);
  fft_ld(h);
  p->hhat.resize(static_cast<size_t>(2 * M));
  for (int64_t k = 0; k < M; ++k) {
    p->hhat[2 * k] = static_cast<T>(h[k].real() / static_cast<LD>(M));
    p->hhat[2 * k + 1] = static_cast<T>(h[k].imag() / static_cast<LD>(M));
  }
  return p;
}

// Twiddles of the real <-> half-length complex split, n even, k = 0 .. n/2.
template <class T>
struct RPlan {
  std::vector<T> post;  // (re, im) of 0.5 * exp(-2 pi i k / n)   (rfft)
  std::vector<T> pre;   // (re, im) of exp(+2 pi i k / n) / n     (irfft)
  T inv_n = 1;
};

template <class T>
std::unique_ptr<RPlan<T>> build_rplan(int64_t n) {
  auto p = std::make_unique<RPlan<T>>();
  const int64_t m = n / 2;
  p->post.resize(static_cast<size_t>(2 * (m + 1)));
  p->pre.resize(static_cast<size_t>(2 * (m + 1)));
  for (int64_t k = 0; k <= m; ++k) {
    const auto w = root(k, n);
    p->post[2 * k] = static_cast<T>(w.real() / 2);
    p->post[2 * k + 1] = static_cast<T>(w.imag() / 2);
    p->pre[2 * k] = static_cast<T>(w.real() / static_cast<LD>(n));
    p->pre[2 * k + 1] = static_cast<T>(-w.imag() / static_cast<LD>(n));
  }
  p->inv_n = static_cast<T>(1 / static_cast<LD>(n));
  return p;
}

// Plans are immutable once built and never evicted, so handing out raw pointers is safe.
template <class T>
struct PlanCache {
  std::mutex mu;
  std::unordered_map<int64_t, std::unique_ptr<CPlan<T>>> complex_plans;
  std::unordered_map<int64_t, std::unique_ptr<RPlan<T>>> real_plans;
};

template <class T>
PlanCache<T>& plan_cache() {
  static PlanCache<T> cache;
  return cache;
}

template <class T>
const CPlan<T>& get_cplan(int64_t m) {
  auto& c = plan_cache<T>();
  std::lock_guard<std::mutex> lock(c.mu);
  auto& slot = c.complex_plans[m];
  if (!slot) slot = build_cplan<T>(m);
  return *slot;
}

template <class T>
const RPlan<T>& get_rplan(int64_t n) {
  auto& c = plan_cache<T>();
  std::lock_guard<std::mutex> lock(c.mu);
  auto& slot = c.real_plans[n];
  if (!slot) slot = build_rplan<T>(n);
  return *slot;
}

// ---------------------------------------------------------------------------------------------
// Butterfly stages on lane-major split arrays (re[j], im[j] hold element j of W rows)
// ---------------------------------------------------------------------------------------------

// x *= w, w a broadcast scalar twiddle.
template <class T>
inline void cmul(Vec<T>& xr, Vec<T>& xi, T wr, T wi) {
  const Vec<T> vr(wr), vi(wi);
  const Vec<T> r = xsimd::fms(xr, vr, xi * vi);
  xi = xsimd::fma(xr, vi, xi * vr);
  xr = r;
}

template <class T>
void stage2(Vec<T>* re, Vec<T>* im, int64_t total, int64_t s, const T* tw) {
  using V = Vec<T>;
  for (int64_t b = 0; b < total; b += 2 * s) {
    V* xr = re + b;
    V* xi = im + b;
    for (int64_t k = 0; k < s; ++k) {
      const V ar = xr[k], ai = xi[k];
      V br = xr[k + s], bi = xi[k + s];
      if (s > 1) cmul(br, bi, tw[2 * k], tw[2 * k + 1]);
      xr[k] = ar + br;
      xi[k] = ai + bi;
      xr[k + s] = ar - br;
      xi[k + s] = ai - bi;
    }
  }
}

template <class T, bool kTwiddle>
inline void bfly4(Vec<T>* xr, Vec<T>* xi, int64_t k, int64_t s, const T* w) {
  using V = Vec<T>;
  const V a0r = xr[k], a0i = xi[k];
  V a1r = xr[k + s], a1i = xi[k + s];
  V a2r = xr[k + 2 * s], a2i = xi[k + 2 * s];
  V a3r = xr[k + 3 * s], a3i = xi[k + 3 * s];
  if constexpr (kTwiddle) {
    cmul(a1r, a1i, w[0], w[1]);
    cmul(a2r, a2i, w[2], w[3]);
    cmul(a3r, a3i, w[4], w[5]);
  }
  const V t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i;
  const V t2r = a1r + a3r, t2i = a1i + a3i, t3r = a1r - a3r, t3i = a1i - a3i;
  xr[k] = t0r + t2r;
  xi[k] = t0i + t2i;
  xr[k + 2 * s] = t0r - t2r;
  xi[k + 2 * s] = t0i - t2i;
  xr[k + s] = t1r + t3i;  // t1 - i t3
  xi[k + s] = t1i - t3r;
  xr[k + 3 * s] = t1r - t3i;  // t1 + i t3
  xi[k + 3 * s] = t1i + t3r;
}

template <class T>
void stage4(Vec<T>* re, Vec<T>* im, int64_t total, int64_t s, const T* tw) {
  if (s == 1) {  // first stage: all twiddles are 1
    for (int64_t b = 0; b < total; b += 4) bfly4<T, false>(re + b, im + b, 0, 1, tw);
    return;
  }
  for (int64_t b = 0; b < total; b += 4 * s)
    for (int64_t k = 0; k < s; ++k) bfly4<T, true>(re + b, im + b, k, s, tw + 6 * k);
}

// Odd radix p (P = p known at compile time, or P = 0 with runtime p <= kMaxDirectRadix), using the
// symmetric form: with S_q = a_q + a_{p-q}, D_q = a_q - a_{p-q} (q = 1..h),
//   X_u = A_u - i B_u,  X_{p-u} = A_u + i B_u,  A_u = a_0 + sum_q S_q cos(2pi uq/p),
//   B_u = sum_q D_q sin(2pi uq/p).
template <int P, class T>
void stage_odd(Vec<T>* re, Vec<T>* im, int64_t total, int64_t s, int p_rt, const T* tw, const T* cs) {
  using V = Vec<T>;
  constexpr int kMax = P ? P : kMaxDirectRadix;
  constexpr int kMaxH = (kMax - 1) / 2 + 1;
  const int p = P ? P : p_rt;
  const int h = (p - 1) / 2;
  const T* cosv = cs;
  const T* sinv = cs + h * h;
  V ar[kMax], ai[kMax];
  V sr[kMaxH], si[kMaxH], dr[kMaxH], di[kMaxH];
  for (int64_t b = 0; b < total; b += p * s) {
    V* xr = re + b;
    V* xi = im + b;
    for (int64_t k = 0; k < s; ++k) {
      for (int q = 0; q < p; ++q) {
        ar[q] = xr[k + q * s];
        ai[q] = xi[k + q * s];
      }
      if (s > 1) {
        const T* w = tw + 2 * k * (p - 1);
        for (int q = 1; q < p; ++q) cmul(ar[q], ai[q], w[2 * (q - 1)], w[2 * (q - 1) + 1]);
      }
      V x0r = ar[0], x0i = ai[0];
      for (int q = 1; q <= h; ++q) {
        sr[q] = ar[q] + ar[p - q];
        si[q] = ai[q] + ai[p - q];
        dr[q] = ar[q] - ar[p - q];
        di[q] = ai[q] - ai[p - q];
        x0r += sr[q];
        x0i += si[q];
      }
      xr[k] = x0r;
      xi[k] = x0i;
      for (int u = 1; u <= h; ++u) {
        V Ar = ar[0], Ai = ai[0], Br(T(0)), Bi(T(0));
        for (int q = 1; q <= h; ++q) {
          const V c(cosv[(u - 1) * h + q - 1]), sn(sinv[(u - 1) * h + q - 1]);
          Ar = xsimd::fma(sr[q], c, Ar);
          Ai = xsimd::fma(si[q], c, Ai);
          Br = xsimd::fma(dr[q], sn, Br);
          Bi = xsimd::fma(di[q], sn, Bi);
        }
        xr[k + u * s] = Ar + Bi;
        xi[k + u * s] = Ai - Br;
        xr[k + (p - u) * s] = Ar - Bi;
        xi[k + (p - u) * s] = Ai + Br;
      }
    }
  }
}

template <class T>
void run_stage(const Stage<T>& st, Vec<T>* re, Vec<T>* im, int64_t total) {
  const T* tw = st.tw.data();
  switch (st.radix) {
    case 2: stage2<T>(re, im, total, st.span, tw); break;
    case 4: stage4<T>(re, im, total, st.span, tw); break;
    case 3: stage_odd<3, T>(re, im, total, st.span, 3, tw, st.cs.data()); break;
    case 5: stage_odd<5, T>(re, im, total, st.span, 5, tw, st.cs.data()); break;
    case 7: stage_odd<7, T>(re, im, total, st.span, 7, tw, st.cs.data()); break;
    default: stage_odd<0, T>(re, im, total, st.span, st.radix, tw, st.cs.data()); break;
  }
}

// Applies stages 0..t-1 to a block of length L[t], depth-first so that sub-blocks that fit in L1
// are finished before the next sub-block is touched.
template <class T>
void dit(const CPlan<T>& p, Vec<T>* re, Vec<T>* im, int t) {
  if (t == 0) return;
  if (p.L[t] <= kL1Block) {
    for (int s = 0; s < t; ++s) run_stage(p.stages[s], re, im, p.L[t]);
    return;
  }
  const int64_t sub = p.L[t - 1];
  for (int q = 0; q < p.stages[t - 1].radix; ++q) dit(p, re + q * sub, im + q * sub, t - 1);
  run_stage(p.stages[t - 1], re, im, p.L[t]);
}

// Forward DFT of the m work elements. Input: element j at position pos[j]; output: natural order.
// `scratch` must hold p.scratch() elements.
template <class T>
void execute(const CPlan<T>& p, Vec<T>* re, Vec<T>* im, Vec<T>* scratch) {
  using V = Vec<T>;
  if (!p.bluestein) {
    dit(p, re, im, static_cast<int>(p.stages.size()));
    return;
  }
  const CPlan<T>& in = *p.inner;
  const int64_t m = p.m, M = p.M;
  // Separate the four arrays by a few registers so equal indices do not share cache sets.
  V* ar = scratch;
  V* ai = ar + M + 2;
  V* br = ai + M + 2;
  V* bi = br + M + 2;
  const int32_t* ipos = in.pos.data();
  const T* c = p.chirp.data();
  const V zero(T(0));
  for (int64_t j = 0; j < M; ++j) {
    const int32_t d = ipos[j];
    if (j < m) {
      V xr = re[j], xi = im[j];
      cmul(xr, xi, c[2 * j], c[2 * j + 1]);
      ar[d] = xr;
      ai[d] = xi;
    } else {
      ar[d] = zero;
      ai[d] = zero;
    }
  }
  dit(in, ar, ai, static_cast<int>(in.stages.size()));
  const T* hh = p.hhat.data();
  for (int64_t k = 0; k < M; ++k) {
    V yr = ar[k], yi = ai[k];
    cmul(yr, yi, hh[2 * k], hh[2 * k + 1]);
    br[ipos[k]] = yi;  // swapped: the forward transform of swapped data is the swapped inverse
    bi[ipos[k]] = yr;
  }
  dit(in, br, bi, static_cast<int>(in.stages.size()));
  for (int64_t k = 0; k < m; ++k) {
    V xr = bi[k], xi = br[k];
    cmul(xr, xi, c[2 * k], c[2 * k + 1]);
    re[k] = xr;
    im[k] = xi;
  }
}

// ---------------------------------------------------------------------------------------------
// Transposing loads and stores between W rows and lane-major column registers
// ---------------------------------------------------------------------------------------------

#if defined(__AVX512F__)
using simd::transpose16x16;
using simd::transpose8x8;
#endif

// cols[t] lane l = rp[l][c + t], t < W.
template <class T>
inline void load_cols(const T* const* rp, int64_t c, Vec<T>* cols) {
  constexpr int W = kLanes<T>;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && W == 16) {
    __m512 r[16];
    for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(rp[l] + c);
    transpose16x16(r);
    for (int t = 0; t < 16; ++t) cols[t] = r[t];
    return;
  } else if constexpr (std::is_same_v<T, double> && W == 8) {
    __m512d r[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm512_loadu_pd(rp[l] + c);
    transpose8x8(r);
    for (int t = 0; t < 8; ++t) cols[t] = r[t];
    return;
  }
#endif
  alignas(64) T tmp[W];
  for (int t = 0; t < W; ++t) {
    for (int l = 0; l < W; ++l) tmp[l] = rp[l][c + t];
    cols[t] = Vec<T>::load_aligned(tmp);
  }
}

// Writes full blocks of W columns, block by block in increasing column order, into the first nl
// lane rows: row_l[c + t] = cols[t] lane l. In streaming mode (AVX-512 only) the transposed rows
// are realigned with one permute per row (each row has its own offset within a 64-byte line) so
// that every store is a full aligned line written with a non-temporal store, which skips the
// read-for-ownership of output lines (~15-20% of the time of a large out-of-cache rfft).
// Otherwise plain unaligned stores are used (measured faster than realigning for cached data).
template <class T>
class RowWriter {
 public:
  static constexpr int W = kLanes<T>;
  RowWriter(T* const* wp, int nl, bool stream) : wp_(wp), nl_(nl), stream_(stream) {
#if defined(__AVX512F__)
    realign_ = stream_;
    for (int l = 0; l < nl_; ++l) {
      const auto addr = reinterpret_cast<uintptr_t>(wp_[l]);
      if (addr % sizeof(T) != 0) realign_ = false;  // not element-aligned: cannot realign
      delta_[l] = static_cast<int>((addr % 64) / sizeof(T));
    }
#else
    (void)stream_;
#endif
  }
  // Block of columns [c, c + W); calls must come in order c = 0, W, 2W, ... (cols is clobbered).
  void block(Vec<T>* cols, int64_t c) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> && W == 16) {
      __m512 r[16];
      for (int t = 0; t < 16; ++t) r[t] = cols[t];
      transpose16x16(r);
      if (!realign_) {
        for (int l = 0; l < nl_; ++l) _mm512_storeu_ps(wp_[l] + c, r[l]);
        return;
      }
      const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      for (int l = 0; l < nl_; ++l) {
        const int d = delta_[l];
        if (c == 0) {
          _mm512_mask_storeu_ps(wp_[l], static_cast<__mmask16>((1u << (16 - d)) - 1), r[l]);
        } else {
          // Aligned line = last d elements of the previous block, then the first 16-d of this one.
          const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(16 - d));
          const __m512 line = _mm512_permutex2var_ps(prev_f_[l], idx, r[l]);
          float* dst = wp_[l] + c - d;
          _mm512_stream_ps(dst, line);
        }
        prev_f_[l] = r[l];
      }
      written_ = c + 16;
      return;
    } else if constexpr (std::is_same_v<T, double> && W == 8) {
      __m512d r[8];
      for (int t = 0; t < 8; ++t) r[t] = cols[t];
      transpose8x8(r);
      if (!realign_) {
        for (int l = 0; l < nl_; ++l) _mm512_storeu_pd(wp_[l] + c, r[l]);
        return;
      }
      const __m512i iota = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
      for (int l = 0; l < nl_; ++l) {
        const int d = delta_[l];
        if (c == 0) {
          _mm512_mask_storeu_pd(wp_[l], static_cast<__mmask8>((1u << (8 - d)) - 1), r[l]);
        } else {
          const __m512i idx = _mm512_add_epi64(iota, _mm512_set1_epi64(8 - d));
          const __m512d line = _mm512_permutex2var_pd(prev_d_[l], idx, r[l]);
          double* dst = wp_[l] + c - d;
          _mm512_stream_pd(dst, line);
        }
        prev_d_[l] = r[l];
      }
      written_ = c + 8;
      return;
    }
#endif
    alignas(64) T tmp[W];
    for (int t = 0; t < W; ++t) {
      cols[t].store_aligned(tmp);
      for (int l = 0; l < nl_; ++l) wp_[l][c + t] = tmp[l];
    }
  }
  // Writes what the realigned stores still hold back (the last d elements of the last block).
  void finish() {
#if defined(__AVX512F__)
    if (!realign_ || written_ == 0) return;
    for (int l = 0; l < nl_; ++l) {
      const int d = delta_[l];
      if (d == 0) continue;
      if constexpr (std::is_same_v<T, float> && W == 16)
        _mm512_mask_storeu_ps(wp_[l] + written_ - 16, static_cast<__mmask16>(~((1u << (16 - d)) - 1)),
                              prev_f_[l]);
      else if constexpr (std::is_same_v<T, double> && W == 8)
        _mm512_mask_storeu_pd(wp_[l] + written_ - 8, static_cast<__mmask8>(~((1u << (8 - d)) - 1)), prev_d_[l]);
    }
    _mm_sfence();  // order the streaming stores before the task completes
#endif
  }

 private:
  T* const* wp_;
  int nl_;
  bool stream_;
#if defined(__AVX512F__)
  bool realign_ = false;
  int64_t written_ = 0;
  int delta_[W] = {};
  __m512 prev_f_[std::is_same_v<T, float> ? W : 1];
  __m512d prev_d_[std::is_same_v<T, double> ? W : 1];
#endif
};

// Reads columns [0, ncols) of the W lane rows, columns >= avail being zero, and calls
// put(j, a, b) with the column registers 2j and 2j+1 (b is zero past ncols).
template <class T, class Put>
void gather_pairs(const T* const* rp, int64_t avail, int64_t ncols, Put&& put) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  avail = std::min(avail, ncols);
  int64_t c = 0;
  V cols[W];
  for (; c + W <= avail; c += W) {
    load_cols<T>(rp, c, cols);
    for (int t = 0; t < W; t += 2) put((c + t) >> 1, cols[t], cols[t + 1]);
  }
  alignas(64) T ta[W], tb[W];
  for (; c < avail; c += 2) {
    for (int l = 0; l < W; ++l) {
      ta[l] = rp[l][c];
      tb[l] = c + 1 < avail ? rp[l][c + 1] : T(0);
    }
    put(c >> 1, V::load_aligned(ta), V::load_aligned(tb));
  }
  const V zero(T(0));
  for (; c < ncols; c += 2) put(c >> 1, zero, zero);
}

// Writes columns [0, ncols) of the first nl lane rows; get(j, a, b) supplies the column
// registers 2j and 2j+1 (b is ignored past ncols). `stream` selects non-temporal stores.
template <class T, class Get>
void scatter_pairs(T* const* wp, int nl, int64_t ncols, bool stream, Get&& get) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  int64_t c = 0;
  V cols[W];
  RowWriter<T> writer(wp, nl, stream);
  for (; c + W <= ncols; c += W) {
    for (int t = 0; t < W; t += 2) get((c + t) >> 1, cols[t], cols[t + 1]);
    writer.block(cols, c);
  }
  writer.finish();
  alignas(64) T ta[W], tb[W];
  for (; c < ncols; c += 2) {
    V a, b;
    get(c >> 1, a, b);
    a.store_aligned(ta);
    b.store_aligned(tb);
    for (int l = 0; l < nl; ++l) {
      wp[l][c] = ta[l];
      if (c + 1 < ncols) wp[l][c + 1] = tb[l];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Batching, scratch and threading
// ---------------------------------------------------------------------------------------------

// Row pointers of batch b; lanes past the last row duplicate it (results discarded).
template <class T>
struct BatchRows {
  static constexpr int W = kLanes<T>;
  const T* in[W];
  T* out[W];
  int valid;
  BatchRows(const T* i, int64_t is, T* o, int64_t os, int64_t rows, int64_t b) {
    const int64_t r0 = b * W;
    valid = static_cast<int>(std::min<int64_t>(W, rows - r0));
    for (int l = 0; l < W; ++l) {
      const int64_t r = r0 + std::min(l, valid - 1);
      in[l] = i + r * is;
      out[l] = o + r * os;
    }
  }
};

// Per-thread work buffer, grown on demand and reused across calls.
template <class T>
Vec<T>* thread_scratch(int64_t count) {
  static thread_local std::vector<Vec<T>> buf;
  if (static_cast<int64_t>(buf.size()) < count) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(static_cast<size_t>(count));
  }
  return buf.data();
}

// Outputs of at least simd::stream_threshold bytes are written with non-temporal stores (see
// RowWriter).
template <class T>
bool use_streaming(int64_t rows, int64_t row_elems) {
  return rows * row_elems * static_cast<int64_t>(sizeof(T)) >= simd::stream_threshold.load(std::memory_order_relaxed);
}

// Calls f(b) for every batch of W rows; batches are independent, so the split among threads
// cannot change any result. Small problems run inline.
template <class T, class F>
void for_each_batch(int64_t rows, int64_t n, F&& f) {
  constexpr int W = kLanes<T>;
  const int64_t nb = (rows + W - 1) / W;
  const int64_t grain = std::max<int64_t>(1, 32768 / (W * std::max<int64_t>(n, 1)));
  if (nb <= grain) {
    for (int64_t b = 0; b < nb; ++b) f(b);
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, nb, grain),
      [&](const tbb::blocked_range<int64_t>& r) {
        for (int64_t b = r.begin(); b < r.end(); ++b) f(b);
      },
      tbb::simple_partitioner());
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

template <class T>
void rfft_run(const T* in, int64_t is, int64_t in_len, T* out, int64_t os, int64_t rows, int64_t n) {
  using V = Vec<T>;
  if (rows <= 0 || n <= 0) return;
  in_len = std::clamp<int64_t>(in_len, 0, n);
  if (n % 2 == 0) {
    const int64_t m = n / 2;
    const CPlan<T>& cp = get_cplan<T>(m);
    const RPlan<T>& rp = get_rplan<T>(n);
    const int64_t need = 2 * m + 4 + cp.scratch();
    const bool stream = use_streaming<T>(rows, 2 * (m + 1));
    for_each_batch<T>(rows, n, [&](int64_t b) {
      V* re = thread_scratch<T>(need);
      V* im = re + m + 2;
      V* ex = im + m + 2;
      const BatchRows<T> br(in, is, out, os, rows, b);
      const int32_t* pos = cp.pos.data();
      // z_j = x_2j + i x_2j+1, stored in digit-reversed order.
      gather_pairs<T>(br.in, in_len, n, [&](int64_t j, V a, V c) {
        re[pos[j]] = a;
        im[pos[j]] = c;
      });
      execute(cp, re, im, ex);
      // X_k = E_k + w^k O_k with E_k = (Z_k + conj Z_{m-k})/2, O_k = -i (Z_k - conj Z_{m-k})/2.
      const T* w = rp.post.data();
      const V half(T(0.5));
      scatter_pairs<T>(br.out, br.valid, 2 * (m + 1), stream, [&](int64_t k, V& xr, V& xi) {
        const int64_t j1 = k == m ? 0 : k, j2 = k == 0 ? 0 : m - k;
        const V ar = re[j1], ai = im[j1], cr = re[j2], ci = im[j2];
        const V dr = ar - cr, di = ai + ci;
        const V wr(w[2 * k]), wi(w[2 * k + 1]);  // already halved
        xr = xsimd::fma(ar + cr, half, xsimd::fma(wr, di, wi * dr));
        xi = xsimd::fma(ai - ci, half, xsimd::fms(wi, di, wr * dr));
      });
    });
  } else {
    const CPlan<T>& cp = get_cplan<T>(n);
    const int64_t need = 2 * n + 4 + cp.scratch();
    const bool stream = use_streaming<T>(rows, 2 * (n / 2 + 1));
    for_each_batch<T>(rows, n, [&](int64_t b) {
      V* re = thread_scratch<T>(need);
      V* im = re + n + 2;
      V* ex = im + n + 2;
      const BatchRows<T> br(in, is, out, os, rows, b);
      const int32_t* pos = cp.pos.data();
      const V zero(T(0));
      gather_pairs<T>(br.in, in_len, n, [&](int64_t j, V a, V c) {
        re[pos[2 * j]] = a;
        im[pos[2 * j]] = zero;
        if (2 * j + 1 < n) {
          re[pos[2 * j + 1]] = c;
          im[pos[2 * j + 1]] = zero;
        }
      });
      execute(cp, re, im, ex);
      scatter_pairs<T>(br.out, br.valid, 2 * (n / 2 + 1), stream, [&](int64_t k, V& xr, V& xi) {
        xr = re[k];
        xi = im[k];
      });
    });
  }
}

template <class T>
void irfft_run(const T* in, int64_t is, T* out, int64_t os, int64_t rows, int64_t n, int64_t out_len) {
  using V = Vec<T>;
  if (rows <= 0 || n <= 0) return;
  out_len = std::clamp<int64_t>(out_len, 0, n);
  if (out_len == 0) return;
  const int64_t h = n / 2;  // bins 0..h
  const int64_t cn = n % 2 == 0 ? h : n;
  const CPlan<T>& cp = get_cplan<T>(cn);
  const RPlan<T>* rp = n % 2 == 0 ? &get_rplan<T>(n) : nullptr;
  const T inv_n = static_cast<T>(1 / static_cast<LD>(n));
  const int64_t need = 2 * cn + 2 * (h + 1) + 8 + cp.scratch();
  const bool stream = use_streaming<T>(rows, out_len);
  for_each_batch<T>(rows, n, [&](int64_t b) {
    V* re = thread_scratch<T>(need);
    V* im = re + cn + 2;
    V* tr = im + cn + 2;
    V* ti = tr + h + 2;
    V* ex = ti + h + 2;
    const BatchRows<T> br(in, is, out, os, rows, b);
    const int32_t* pos = cp.pos.data();
    gather_pairs<T>(br.in, 2 * (h + 1), 2 * (h + 1), [&](int64_t k, V a, V c) {
      tr[k] = a;
      ti[k] = c;
    });
    const V zero(T(0));
    ti[0] = zero;  // numpy ignores Im X_0 (and Im X_{n/2} for even n)
    if (n % 2 == 0) {
      ti[h] = zero;
      // Z_k = E_k + i O_k (scaled by 1/n): E_k = X_k + conj X_{m-k}, O_k = (X_k - conj X_{m-k}) w^-k.
      const int64_t m = h;
      const T* w = rp->pre.data();
      const V vinv(inv_n);
      for (int64_t k = 0; k < m; ++k) {
        const V ar = tr[k], ai = ti[k], cr = tr[m - k], ci = ti[m - k];
        const V dr = ar - cr, di = ai + ci;
        const V wr(w[2 * k]), wi(w[2 * k + 1]);
        const V odr = xsimd::fms(dr, wr, di * wi), odi = xsimd::fma(dr, wi, di * wr);
        re[pos[k]] = xsimd::fms(ar + cr, vinv, odi);
        im[pos[k]] = xsimd::fma(ai - ci, vinv, odr);
      }
      execute(cp, im, re, ex);  // swapped arrays: inverse transform
      scatter_pairs<T>(br.out, br.valid, out_len, stream, [&](int64_t j, V& a, V& c) {
        a = re[j];
        c = im[j];
      });
    } else {
      for (int64_t k = 0; k < n; ++k) {
        if (k <= h) {
          re[pos[k]] = tr[k];
          im[pos[k]] = ti[k];
        } else {
          re[pos[k]] = tr[n - k];
          im[pos[k]] = zero - ti[n - k];
        }
      }
      execute(cp, im, re, ex);
      const V vinv(inv_n);
      scatter_pairs<T>(br.out, br.valid, out_len, stream, [&](int64_t j, V& a, V& c) {
        a = re[2 * j] * vinv;
        c = 2 * j + 1 < n ? re[2 * j + 1] * vinv : zero;
      });
    }
  });
}

template <class T>
void cfft_run(const T* in, int64_t is, T* out, int64_t os, int64_t rows, int64_t n, bool inverse) {
  using V = Vec<T>;
  if (rows <= 0 || n <= 0) return;
  const CPlan<T>& cp = get_cplan<T>(n);
  const T inv_n = static_cast<T>(1 / static_cast<LD>(n));
  const int64_t need = 2 * n + 4 + cp.scratch();
  const bool stream = use_streaming<T>(rows, 2 * n);
  for_each_batch<T>(rows, 2 * n, [&](int64_t b) {
    V* re = thread_scratch<T>(need);
    V* im = re + n + 2;
    V* ex = im + n + 2;
    const BatchRows<T> br(in, is, out, os, rows, b);
    const int32_t* pos = cp.pos.data();
    gather_pairs<T>(br.in, 2 * n, 2 * n, [&](int64_t j, V a, V c) {
      re[pos[j]] = a;
      im[pos[j]] = c;
    });
    if (inverse) {
      execute(cp, im, re, ex);
      const V vinv(inv_n);
      scatter_pairs<T>(br.out, br.valid, 2 * n, stream, [&](int64_t j, V& a, V& c) {
        a = re[j] * vinv;
        c = im[j] * vinv;
      });
    } else {
      execute(cp, re, im, ex);
      scatter_pairs<T>(br.out, br.valid, 2 * n, stream, [&](int64_t j, V& a, V& c) {
        a = re[j];
        c = im[j];
      });
    }
  });
}

}  // namespace

void rfft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n) {
  rfft_run<float>(in, in_row_stride, n, out, out_row_stride, rows, n);
}
void rfft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n) {
  rfft_run<double>(in, in_row_stride, n, out, out_row_stride, rows, n);
}
void rfft_padded(const float* in, int64_t in_row_stride, int64_t in_len, float* out, int64_t out_row_stride,
                 int64_t rows, int64_t n) {
  rfft_run<float>(in, in_row_stride, in_len, out, out_row_stride, rows, n);
}
void rfft_padded(const double* in, int64_t in_row_stride, int64_t in_len, double* out, int64_t out_row_stride,
                 int64_t rows, int64_t n) {
  rfft_run<double>(in, in_row_stride, in_len, out, out_row_stride, rows, n);
}
void irfft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n) {
  irfft_run<float>(in, in_row_stride, out, out_row_stride, rows, n, n);
}
void irfft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n) {
  irfft_run<double>(in, in_row_stride, out, out_row_stride, rows, n, n);
}
void irfft_truncated(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows,
                     int64_t n, int64_t out_len) {
  irfft_run<float>(in, in_row_stride, out, out_row_stride, rows, n, out_len);
}
void irfft_truncated(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows,
                     int64_t n, int64_t out_len) {
  irfft_run<double>(in, in_row_stride, out, out_row_stride, rows, n, out_len);
}
void fft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n,
         bool inverse) {
  cfft_run<float>(in, in_row_stride, out, out_row_stride, rows, n, inverse);
}
void fft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n,
         bool inverse) {
  cfft_run<double>(in, in_row_stride, out, out_row_stride, rows, n, inverse);
}
int fft_row_batch_float() { return kLanes<float>; }
int fft_row_batch_double() { return kLanes<double>; }

}  // namespace tg::kernels
