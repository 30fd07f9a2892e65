// Fused scaled-dot-product attention (flash-attention style) and the vectorised dropout mask.
//
// Blocking. Queries are cut into blocks of BR = 64 rows and keys into blocks of BC = 4 SIMD vectors
// (64 keys for f32 with AVX-512, 32 for f64). Scores are held TRANSPOSED, S^T[key][query], never
// more than BC x BR of them: S^T = K_j (scale Q_i)^T puts the queries along the SIMD lanes, so the
// softmax statistics of a query (running max, sum, logsumexp) live in one lane and every softmax
// step is a vertical vector op (no horizontal reductions), and the products need no transposed K:
//   S^T  = K_j Qs_i^T   A = K rows read in place (any strides), B = Qs^T (packed once per task)
//   O   += P V_j       A = P read transposed out of S^T,        B = V rows (in place if dense)
// Every block product runs one register-tiled micro-kernel (6 rows x 4 vectors of accumulators),
// C (+)= A B, with B rows of contiguous vectors and A read as broadcast scalars through arbitrary
// (row, col) strides. Only Q (and dout in the backward) are packed/transposed, once per task, with
// in-register 16x16 (8x8) transposes; K and V are read where they are (a permuted
// [B, T, H, d] -> [B, H, T, d] view costs nothing). exp is a 1-ulp f32 polynomial for x <= 0.
// (The micro-kernel reaches ~190 GFLOP/s on 64x64x64 blocks here, kernels::gemm ~175 GFLOP/s on
// the same block, and kernels::gemm would also pack every operand on every call.)
//
// Forward: one task per (batch*head, query block). For each visible key block: S^T = K Qs^T, mask,
// online softmax (running row max m and sum l; the output accumulator is rescaled by
// exp(m_old - m_new)), O += P V. At the end O /= l and lse = m + log l. Rows with no visible key
// get O = 0 and lse = +inf, so that the backward's exp(S - lse) is 0 there (no NaN from masking; a NaN
// or +inf score still gives NaN, as the unfused softmax would; all visible scores -inf give zeros).
//
// Backward (FlashAttention-2 order): D_i = <dO_i, O_i>; one task per (batch*head, range of key
// blocks). For each key block j, over the query blocks i in order:
//   S^T = K_j Qs_i^T, P^T = exp(S^T - lse_i), dV_j += P^T dO_i, dP^T = V_j dO_i^T,
//   dS^T = P^T (dP^T - D_i), dK_j += dS^T Qs_i, dQ_i += dS K_j   (5 block products; dQ scaled at the end).
// dK_j, dV_j belong to one task. dQ_i gets contributions from every key block: with one range per
// batch*head (the usual case) the task accumulates them in key-block order; with several ranges
// (chosen from the shape only, when there are few batch*heads) each range writes its own partial
// dQ and a second pass adds the partials in range order. So the result never depends on the
// number of threads.
//
// Dropout (p > 0): element (b, i, j) of P is kept iff Philox counter first + (b*Tq + i)*Tk + j draws
// a uniform >= p (the mask is regenerated in the backward, never stored); the normaliser l uses the
// undropped probabilities, as in PyTorch (dropout applied after the softmax).
#include "ops/kernels/attention.hpp"

// GCC 12 flags the _mm512_undefined_* placeholders inside AVX-512 intrinsics (transposes, xsimd
// reductions and exp) as uninitialised: a known false positive. For the whole file, since the
// templates instantiated from the headers are compiled under the state at their own location.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <xsimd/xsimd.hpp>

#if XSIMD_WITH_AVX512F
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "core/parallel.hpp"
#include "core/random.hpp"
#include "core/simd_transpose.hpp"
#include "ops/kernels/scratch.hpp"
#include "ops/kernels/simd_math.hpp"


namespace tg::kernels {
namespace {

template <class T>
using V = xsimd::batch<T>;

template <class T>
constexpr std::int64_t kW = static_cast<std::int64_t>(V<T>::size);
constexpr int kMR = 6;  // micro-kernel rows (6 x 4 vectors = 24 accumulators)
constexpr int kNV = 4;  // micro-kernel vectors per row
template <class T>
constexpr std::int64_t kBC = kNV * kW<T>;  // keys per block
template <class T>
constexpr std::int64_t kBR = 64;  // queries per block

std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

using simd::exp_nonpos;

// ---- micro-kernel --------------------------------------------------------------------------------------
// C[MR x NV*W] (+)= sum_p A(r, p) * B[p, :], with A(r, p) = A[r * ars + p * acs] and B rows of
// stride ldb. One FMA chain per output element in p order.
template <class T, int MR, int NV>
void micro(std::int64_t K, const T* A, std::int64_t ars, std::int64_t acs, const T* Bm, std::int64_t ldb, T* C,
           std::int64_t ldc, bool accumulate) {
  constexpr std::int64_t W = kW<T>;
  V<T> c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? V<T>::load_unaligned(C + r * ldc + v * W) : V<T>(T(0));
  for (std::int64_t p = 0; p < K; ++p) {
    V<T> b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V<T>::load_unaligned(Bm + p * ldb + v * W);
    const T* a = A + p * acs;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V<T> av(a[r * ars]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = xsimd::fma(av, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v].store_unaligned(C + r * ldc + v * W);
}

template <class T>
using MicroFn = void (*)(std::int64_t, const T*, std::int64_t, std::int64_t, const T*, std::int64_t, T*, std::int64_t,
                         bool);

template <class T, int MR>
constexpr std::array<MicroFn<T>, kNV> micro_row() {
  return {&micro<T, MR, 1>, &micro<T, MR, 2>, &micro<T, MR, 3>, &micro<T, MR, 4>};
}

template <class T>
constexpr std::array<std::array<MicroFn<T>, kNV>, kMR> kMicro = {micro_row<T, 1>(), micro_row<T, 2>(), micro_row<T, 3>(),
                                                               micro_row<T, 4>(), micro_row<T, 5>(), micro_row<T, 6>()};

// C[M x N] (+)= A[M x K] B[K x N]; N a multiple of the vector width.
template <class T>
void block_gemm(std::int64_t M, std::int64_t N, std::int64_t K, const T* A, std::int64_t ars, std::int64_t acs,
                const T* Bm, std::int64_t ldb, T* C, std::int64_t ldc, bool accumulate) {
  constexpr std::int64_t W = kW<T>;
  const std::int64_t nvec = N / W;
  for (std::int64_t j = 0; j < nvec; j += kNV) {
    const int nv = static_cast<int>(std::min<std::int64_t>(kNV, nvec - j));
    for (std::int64_t i = 0; i < M; i += kMR) {
      const int mr = static_cast<int>(std::min<std::int64_t>(kMR, M - i));
      kMicro<T>[mr - 1][nv - 1](K, A + i * ars, ars, acs, Bm + j * W, ldb, C + i * ldc + j * W, ldc, accumulate);
    }
  }
}

// ---- per-thread arena ------------------------------------------------------------------------------------
// Per-thread bump allocator (tasks never wait inside TBB while they hold it).
class ThreadArena {
 public:
  ~ThreadArena() { std::free(base_); }
  void reset(std::size_t bytes) {
    if (bytes > cap_) {
      std::free(base_);
      cap_ = round_up(static_cast<std::int64_t>(bytes), 4096);
      base_ = static_cast<char*>(std::aligned_alloc(64, cap_));
      if (!base_) {
        cap_ = 0;
        throw std::bad_alloc();
      }
    }
    used_ = 0;
  }
  template <class U>
  U* take(std::int64_t n) {
    U* p = reinterpret_cast<U*>(base_ + used_);
    used_ += static_cast<std::size_t>(round_up(n * static_cast<std::int64_t>(sizeof(U)), 64));
    return p;
  }
  static std::size_t bytes(std::int64_t n, std::size_t elem) {
    return static_cast<std::size_t>(round_up(n * static_cast<std::int64_t>(elem), 64));
  }

 private:
  char* base_ = nullptr;
  std::size_t cap_ = 0, used_ = 0;
};

ThreadArena& thread_arena() {
  thread_local ThreadArena s;
  return s;
}

// ---- packing ---------------------------------------------------------------------------------------------
// dst[r * ld + p] = mult * src(b, i0 + r, p) for r < n, p < cols; zeros for p in [cols, ld).
template <class T>
void pack_rows(T* dst, std::int64_t ld, const AttnOperand<T>& src, std::int64_t b, std::int64_t i0, std::int64_t n,
               std::int64_t cols, T mult) {
  for (std::int64_t r = 0; r < n; ++r) {
    const T* s = src.data + src.off[b] + (i0 + r) * src.rs;
    T* d = dst + r * ld;
    if (src.cs == 1) {
      for (std::int64_t p = 0; p < cols; ++p) d[p] = mult * s[p];
    } else {
      for (std::int64_t p = 0; p < cols; ++p) d[p] = mult * s[p * src.cs];
    }
    for (std::int64_t p = cols; p < ld; ++p) d[p] = T(0);
  }
}

#if XSIMD_WITH_AVX512F
// One full tile (cs == 1): dst[p * ld + r] = mult * s[r * rs + p] for r, p < L.
inline void transpose_tile(float* dst, std::int64_t ld, const float* s, std::int64_t rs, float mult) {
  __m512 r[16];
  const __m512 m = _mm512_set1_ps(mult);
  for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(_mm512_loadu_ps(s + i * rs), m);
  simd::transpose16x16(r);
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}
inline void transpose_tile(double* dst, std::int64_t ld, const double* s, std::int64_t rs, double mult) {
  __m512d r[8];
  const __m512d m = _mm512_set1_pd(mult);
  for (int i = 0; i < 8; ++i) r[i] = _mm512_mul_pd(_mm512_loadu_pd(s + i * rs), m);
  simd::transpose8x8(r);
  for (int i = 0; i < 8; ++i) _mm512_storeu_pd(dst + i * ld, r[i]);
}
#endif

// dst[p * ld + r] = mult * src(b, i0 + r, p) for r < n, p < cols; zeros for r in [n, ld).
template <class T>
void pack_transposed(T* dst, std::int64_t ld, const AttnOperand<T>& src, std::int64_t b, std::int64_t i0,
                     std::int64_t n, std::int64_t cols, T mult) {
  for (std::int64_t p = 0; p < cols; ++p) std::fill(dst + p * ld + n, dst + (p + 1) * ld, T(0));
  const T* base = src.data + src.off[b] + i0 * src.rs;
  std::int64_t r0 = 0;
#if XSIMD_WITH_AVX512F
  constexpr std::int64_t L = 64 / sizeof(T);
  if (src.cs == 1) {
    for (; r0 + L <= n; r0 += L) {
      std::int64_t p0 = 0;
      for (; p0 + L <= cols; p0 += L) transpose_tile(dst + p0 * ld + r0, ld, base + r0 * src.rs + p0, src.rs, mult);
      for (std::int64_t r = r0; r < r0 + L; ++r)
        for (std::int64_t p = p0; p < cols; ++p) dst[p * ld + r] = mult * base[r * src.rs + p];
    }
  }
#endif
  for (std::int64_t r = r0; r < n; ++r)
    for (std::int64_t p = 0; p < cols; ++p) dst[p * ld + r] = mult * base[r * src.rs + p * src.cs];
}

// Rows j0 .. j0 + n of an operand as a B matrix with contiguous rows of ld >= cols (a multiple of the
// vector width) elements: the operand itself when its layout allows, else a zero-padded copy.
template <class T>
const T* rows_as_b(const AttnOperand<T>& src, std::int64_t b, std::int64_t j0, std::int64_t n, std::int64_t cols,
                   std::int64_t padded, T* buf, std::int64_t& ld) {
  if (src.cs == 1 && cols == padded && src.rs >= cols) {
    ld = src.rs;
    return src.data + src.off[b] + j0 * src.rs;
  }
  pack_rows(buf, padded, src, b, j0, n, cols, T(1));
  ld = padded;
  return buf;
}

// ---- masking ---------------------------------------------------------------------------------------------
// Scores are held transposed, st[c * BR + r] for key j0 + c and query i0 + r.
// Whether the block needs per-element masking: a bool mask, or a causal boundary through it.
bool block_needs_mask(const AttentionConfig& cfg, std::int64_t i0, std::int64_t j0, std::int64_t nk) {
  if (cfg.mask.data) return true;
  if (!cfg.causal) return false;
  return j0 + nk - 1 > i0 + cfg.Tk - cfg.Tq;  // the block's first query does not see its last key
}

template <class T>
void mask_block(const AttentionConfig& cfg, T* st, std::int64_t ld, std::int64_t bh, std::int64_t i0, std::int64_t nq,
                std::int64_t j0, std::int64_t nk) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const std::int64_t shift = cfg.Tk - cfg.Tq;
  for (std::int64_t c = 0; c < nk; ++c) {
    T* row = st + c * ld;
    std::int64_t r_min = 0;  // causal: query i0 + r sees key j0 + c iff r >= j0 + c - i0 - shift
    if (cfg.causal) {
      r_min = std::clamp<std::int64_t>(j0 + c - i0 - shift, 0, nq);
      std::fill(row, row + r_min, neg_inf);
    }
    if (cfg.mask.data) {
      const bool* m = cfg.mask.data + cfg.mask.off[bh] + i0 * cfg.mask.rs + (j0 + c) * cfg.mask.cs;
      for (std::int64_t r = r_min; r < nq; ++r)
        if (!m[r * cfg.mask.rs]) row[r] = neg_inf;
    }
  }
}

// Dropout factors z[c * ld + r] = keep(i0 + r, j0 + c) ? 1/(1-p) : 0 for r < nq, c < nk.
template <class T>
void dropout_block(const AttentionConfig& cfg, std::uint64_t threshold, std::int64_t bh, std::int64_t i0,
                   std::int64_t nq, std::int64_t j0, std::int64_t nk, T* z, std::int64_t ld) {
  std::uint8_t keep[256];
  const T inv = static_cast<T>(1.0 / (1.0 - cfg.dropout_p));
  for (std::int64_t r = 0; r < nq; ++r) {
    const std::uint64_t first = cfg.dropout_first + static_cast<std::uint64_t>((bh * cfg.Tq + i0 + r) * cfg.Tk + j0);
    dropout_keep(cfg.dropout_seed, first, nk, threshold, keep);
    for (std::int64_t c = 0; c < nk; ++c) z[c * ld + r] = keep[c] ? inv : T(0);
  }
}

// ---- forward ---------------------------------------------------------------------------------------------
template <class T>
void forward_task(const AttentionConfig& cfg, const AttnOperand<T>& q, const AttnOperand<T>& k,
                  const AttnOperand<T>& v, T* out, T* lse, std::int64_t bh, std::int64_t qb) {
  constexpr std::int64_t W = kW<T>, BC = kBC<T>, BR = kBR<T>;
  const std::int64_t d = cfg.d, dv = cfg.dv, dvp = round_up(std::max<std::int64_t>(dv, 1), W);
  const std::int64_t i0 = qb * BR, nq = std::min(BR, cfg.Tq - i0), nqp = round_up(nq, W);
  const bool dropout = cfg.dropout_p > 0;
  const std::uint64_t threshold = dropout ? dropout_threshold(cfg.dropout_p) : 0;
  const T neg_inf = -std::numeric_limits<T>::infinity();

  ThreadArena& sc = thread_arena();
  sc.reset(ThreadArena::bytes(d * BR, sizeof(T)) + ThreadArena::bytes(BC * dvp, sizeof(T)) +
           2 * ThreadArena::bytes(BC * BR, sizeof(T)) + ThreadArena::bytes(BR * dvp, sizeof(T)) +
           3 * ThreadArena::bytes(BR, sizeof(T)));
  T* QsT = sc.take<T>(d * BR);   // (scale * Q)^T, [d][BR]
  T* Vb = sc.take<T>(BC * dvp);  // V rows when V cannot be read in place
  T* ST = sc.take<T>(BC * BR);   // scores / probabilities, transposed: [key][query]
  T* Z = sc.take<T>(BC * BR);    // dropout factors (dropout only)
  T* O = sc.take<T>(BR * dvp);   // unnormalised output rows
  T* m = sc.take<T>(BR);         // running max per query
  T* l = sc.take<T>(BR);         // running sum per query
  T* alpha = sc.take<T>(BR);

  pack_transposed(QsT, BR, q, bh, i0, nq, d, static_cast<T>(cfg.scale));
  std::fill(O, O + BR * dvp, T(0));
  std::fill(m, m + BR, neg_inf);
  std::fill(l, l + BR, T(0));

  // Keys beyond the last one the block's last query may see are skipped.
  std::int64_t kend = cfg.Tk;
  if (cfg.causal) kend = std::clamp<std::int64_t>(i0 + nq + cfg.Tk - cfg.Tq, 0, cfg.Tk);
  const T* kb = k.data + k.off[bh];
  for (std::int64_t j0 = 0; j0 < kend; j0 += BC) {
    const std::int64_t nk = std::min(BC, cfg.Tk - j0);
    // S^T = K_j (scale Q)^T: [nk][nqp]
    block_gemm<T>(nk, nqp, d, kb + j0 * k.rs, k.rs, k.cs, QsT, BR, ST, BR, false);
    if (block_needs_mask(cfg, i0, j0, nk)) mask_block(cfg, ST, BR, bh, i0, nq, j0, nk);
    // Online softmax down the columns (one lane per query), up to kNV query vectors at a time.
    for (std::int64_t r0 = 0; r0 < nqp; r0 += kNV * W) {
      const int nv = static_cast<int>(std::min<std::int64_t>(kNV, (nqp - r0) / W));
      V<T> mx[kNV], mu[kNV], sum[kNV];
      for (int u = 0; u < nv; ++u) mx[u] = V<T>::load_aligned(ST + r0 + u * W);
      for (std::int64_t c = 1; c < nk; ++c)
        for (int u = 0; u < nv; ++u) mx[u] = xsimd::max(mx[u], V<T>::load_aligned(ST + c * BR + r0 + u * W));
      for (int u = 0; u < nv; ++u) {
        const V<T> m_new = xsimd::max(V<T>::load_aligned(m + r0 + u * W), mx[u]);
        mu[u] = xsimd::select(m_new == V<T>(neg_inf), V<T>(T(0)), m_new);  // no key visible yet: exp(-inf) = 0
        sum[u] = V<T>(T(0));
        mx[u] = m_new;
      }
      for (std::int64_t c = 0; c < nk; ++c)
        for (int u = 0; u < nv; ++u) {
          T* p = ST + c * BR + r0 + u * W;
          const V<T> e = exp_nonpos<T>(V<T>::load_aligned(p) - mu[u]);
          e.store_aligned(p);
          sum[u] += e;
        }
      for (int u = 0; u < nv; ++u) {
        const V<T> a = exp_nonpos<T>(V<T>::load_aligned(m + r0 + u * W) - mu[u]);
        (V<T>::load_aligned(l + r0 + u * W) * a + sum[u]).store_aligned(l + r0 + u * W);
        mx[u].store_aligned(m + r0 + u * W);
        a.store_aligned(alpha + r0 + u * W);
      }
    }
    for (std::int64_t r = 0; r < nq; ++r) {
      if (alpha[r] == T(1)) continue;
      const V<T> ab(alpha[r]);
      for (std::int64_t e = 0; e < dvp; e += W) (V<T>::load_aligned(O + r * dvp + e) * ab).store_aligned(O + r * dvp + e);
    }
    if (dropout) {
      dropout_block(cfg, threshold, bh, i0, nq, j0, nk, Z, BR);
      for (std::int64_t c = 0; c < nk; ++c)
        for (std::int64_t r = 0; r < nqp; r += W)
          (V<T>::load_aligned(ST + c * BR + r) * V<T>::load_aligned(Z + c * BR + r)).store_aligned(ST + c * BR + r);
    }
    // O += P V_j  (P read transposed from ST)
    std::int64_t ldv;
    const T* vb = rows_as_b(v, bh, j0, nk, dv, dvp, Vb, ldv);
    block_gemm<T>(nq, dvp, nk, ST, 1, BR, vb, ldv, O, dvp, true);
  }
  for (std::int64_t r = 0; r < nq; ++r) {
    T* o = out + (bh * cfg.Tq + i0 + r) * dv;
    // l == 0 when no key is visible, and also when every visible score is -inf (then zeros too, where
    // the unfused softmax gives NaN). A NaN l (a NaN or +inf score) takes the first branch and yields
    // NaN, as the unfused softmax would: a diverged model must not look healthy.
    if (l[r] != T(0)) {
      const T inv = T(1) / l[r];
      for (std::int64_t e = 0; e < dv; ++e) o[e] = O[r * dvp + e] * inv;
      lse[bh * cfg.Tq + i0 + r] = m[r] + std::log(l[r]);
    } else {
      std::fill(o, o + dv, T(0));
      lse[bh * cfg.Tq + i0 + r] = std::numeric_limits<T>::infinity();
    }
  }
}

// ---- backward --------------------------------------------------------------------------------------------
// Key-block ranges per batch*head: enough tasks for parallelism when there are few batch*heads
// (a function of the shape only).
std::int64_t key_ranges(std::int64_t BH, std::int64_t n_kb) {
  const std::int64_t want = (16 + BH - 1) / std::max<std::int64_t>(BH, 1);
  return std::clamp<std::int64_t>(want, 1, std::max<std::int64_t>(n_kb, 1));
}

template <class T>
void backward_task(const AttentionConfig& cfg, const AttnOperand<T>& q, const AttnOperand<T>& k,
                   const AttnOperand<T>& v, const T* out, const T* lse, const T* dout, T* dq_out, T* dk, T* dvv,
                   std::int64_t bh, std::int64_t range, std::int64_t n_ranges, T* dq_partial) {
  constexpr std::int64_t W = kW<T>, BC = kBC<T>, BR = kBR<T>;
  const std::int64_t Tq = cfg.Tq, Tk = cfg.Tk, d = cfg.d, dv = cfg.dv;
  const std::int64_t dp = round_up(std::max<std::int64_t>(d, 1), W), dvp = round_up(std::max<std::int64_t>(dv, 1), W);
  const std::int64_t Tqp = round_up(Tq, W);
  const std::int64_t n_kb = (Tk + BC - 1) / BC;
  const std::int64_t kb_lo = n_kb * range / n_ranges, kb_hi = n_kb * (range + 1) / n_ranges;
  const bool dropout = cfg.dropout_p > 0;
  const std::uint64_t threshold = dropout ? dropout_threshold(cfg.dropout_p) : 0;
  const T scale = static_cast<T>(cfg.scale);

  ThreadArena& sc = thread_arena();
  sc.reset(2 * ThreadArena::bytes(Tq * dp, sizeof(T)) + ThreadArena::bytes(d * Tqp, sizeof(T)) +
           ThreadArena::bytes(Tq * dvp, sizeof(T)) + 2 * ThreadArena::bytes(dv * Tqp, sizeof(T)) +
           2 * ThreadArena::bytes(Tqp, sizeof(T)) + 2 * ThreadArena::bytes(BC * dp, sizeof(T)) +
           ThreadArena::bytes(BC * dvp, sizeof(T)) + 4 * ThreadArena::bytes(BC * BR, sizeof(T)));
  T* Qs = sc.take<T>(Tq * dp);    // scale * Q rows, zero-padded to dp
  T* dQ = sc.take<T>(Tq * dp);    // sum over this range's key blocks of dS K
  T* QsT = sc.take<T>(d * Tqp);   // (scale * Q)^T
  T* dO = sc.take<T>(Tq * dvp);   // dout rows, zero-padded
  T* dOT = sc.take<T>(dv * Tqp);  // dout^T
  T* OT = sc.take<T>(dv * Tqp);   // out^T
  T* Dr = sc.take<T>(Tqp);        // <dO_i, O_i>
  T* L = sc.take<T>(Tqp);         // logsumexp (+inf in the padding: P = 0 there)
  T* Kb = sc.take<T>(BC * dp);    // K_j rows when K cannot be read in place
  T* dK = sc.take<T>(BC * dp);
  T* dV = sc.take<T>(BC * dvp);
  T* PT = sc.take<T>(BC * BR);    // P^T
  T* PdT = sc.take<T>(BC * BR);   // dropped-out P^T (dropout only)
  T* dST = sc.take<T>(BC * BR);   // dP^T, then dS^T
  T* Z = sc.take<T>(BC * BR);     // dropout factors (dropout only)

  pack_rows(Qs, dp, q, bh, 0, Tq, d, scale);
  pack_transposed(QsT, Tqp, q, bh, 0, Tq, d, scale);
  {
    // dO rows and dO^T from the contiguous dout ([BH, Tq, dv]).
    const std::int64_t off = bh * Tq * dv;
    const AttnOperand<T> g{dout, &off, dv, 1};
    pack_rows(dO, dvp, g, 0, 0, Tq, dv, T(1));
    pack_transposed(dOT, Tqp, g, 0, 0, Tq, dv, T(1));
    const AttnOperand<T> o{out, &off, dv, 1};
    pack_transposed(OT, Tqp, o, 0, 0, Tq, dv, T(1));
  }
  // D_i = <dO_i, O_i> (0 in the padding), with lanes over queries and one FMA chain over the
  // features, in the order block_gemm forms dP_ij = <dO_i, V_j>: where a query sees a single key,
  // O_i = V_j exactly, so dP - D and the gradients through that softmax row are exactly 0.
  for (std::int64_t r = 0; r < Tqp; r += W) {
    V<T> acc(T(0));
    for (std::int64_t e = 0; e < dv; ++e)
      acc = xsimd::fma(V<T>::load_aligned(dOT + e * Tqp + r), V<T>::load_aligned(OT + e * Tqp + r), acc);
    acc.store_aligned(Dr + r);
  }
  for (std::int64_t i = 0; i < Tq; ++i) L[i] = lse[bh * Tq + i];
  std::fill(L + Tq, L + Tqp, std::numeric_limits<T>::infinity());
  std::fill(dQ, dQ + Tq * dp, T(0));
  const std::int64_t shift = Tk - Tq;
  const T* kbase = k.data + k.off[bh];
  const T* vbase = v.data + v.off[bh];

  for (std::int64_t kb = kb_lo; kb < kb_hi; ++kb) {
    const std::int64_t j0 = kb * BC, nk = std::min(BC, Tk - j0);
    std::int64_t ldk;
    const T* Kr = rows_as_b(k, bh, j0, nk, d, dp, Kb, ldk);
    std::fill(dK, dK + BC * dp, T(0));
    std::fill(dV, dV + BC * dvp, T(0));
    // Queries that see no key of this block are skipped (causal: i + shift < j0).
    const std::int64_t i_first = cfg.causal ? std::clamp<std::int64_t>(j0 - shift, 0, Tq) : 0;
    for (std::int64_t i0 = i_first / BR * BR; i0 < Tq; i0 += BR) {
      const std::int64_t nq = std::min(BR, Tq - i0), nqp = round_up(nq, W);
      // S^T = K_j (scale Q_i)^T, then P^T = exp(S^T - lse)
      block_gemm<T>(nk, nqp, d, kbase + j0 * k.rs, k.rs, k.cs, QsT + i0, Tqp, PT, BR, false);
      if (block_needs_mask(cfg, i0, j0, nk)) mask_block(cfg, PT, BR, bh, i0, nq, j0, nk);
      for (std::int64_t c = 0; c < nk; ++c)
        for (std::int64_t r = 0; r < nqp; r += W)
          exp_nonpos<T>(V<T>::load_aligned(PT + c * BR + r) - V<T>::load_unaligned(L + i0 + r)).store_aligned(PT + c * BR + r);
      const T* Pv = PT;
      if (dropout) {
        dropout_block(cfg, threshold, bh, i0, nq, j0, nk, Z, BR);
        for (std::int64_t c = 0; c < nk; ++c)
          for (std::int64_t r = 0; r < nqp; r += W)
            (V<T>::load_aligned(PT + c * BR + r) * V<T>::load_aligned(Z + c * BR + r)).store_aligned(PdT + c * BR + r);
        Pv = PdT;
      }
      // dV_j += P^T dO_i
      block_gemm<T>(nk, dvp, nq, Pv, BR, 1, dO + i0 * dvp, dvp, dV, dvp, true);
      // dP^T = V_j dO_i^T ; dS^T = P^T (dP^T z - D)
      block_gemm<T>(nk, nqp, dv, vbase + j0 * v.rs, v.rs, v.cs, dOT + i0, Tqp, dST, BR, false);
      for (std::int64_t c = 0; c < nk; ++c)
        for (std::int64_t r = 0; r < nqp; r += W) {
          V<T> g = V<T>::load_aligned(dST + c * BR + r);
          if (dropout) g = g * V<T>::load_aligned(Z + c * BR + r);
          (V<T>::load_aligned(PT + c * BR + r) * (g - V<T>::load_unaligned(Dr + i0 + r))).store_aligned(dST + c * BR + r);
        }
      // dK_j += dS^T (scale Q_i) ; dQ_i += dS K_j
      block_gemm<T>(nk, dp, nq, dST, BR, 1, Qs + i0 * dp, dp, dK, dp, true);
      block_gemm<T>(nq, dp, nk, dST, 1, BR, Kr, ldk, dQ + i0 * dp, dp, true);
    }
    if (dk) {
      for (std::int64_t c = 0; c < nk; ++c) std::copy(dK + c * dp, dK + c * dp + d, dk + (bh * Tk + j0 + c) * d);
    }
    if (dvv) {
      for (std::int64_t c = 0; c < nk; ++c) std::copy(dV + c * dvp, dV + c * dvp + dv, dvv + (bh * Tk + j0 + c) * dv);
    }
  }
  if (!dq_out) return;
  if (n_ranges == 1) {
    for (std::int64_t i = 0; i < Tq; ++i)
      for (std::int64_t p = 0; p < d; ++p) dq_out[(bh * Tq + i) * d + p] = dQ[i * dp + p] * scale;
  } else {
    T* dst = dq_partial + (bh * n_ranges + range) * Tq * d;
    for (std::int64_t i = 0; i < Tq; ++i) std::copy(dQ + i * dp, dQ + i * dp + d, dst + i * d);
  }
}

}  // namespace

template <class T>
void attention_forward(const AttentionConfig& cfg, AttnOperand<T> q, AttnOperand<T> k, AttnOperand<T> v, T* out,
                       T* lse) {
  if (cfg.BH == 0 || cfg.Tq == 0) return;
  const std::int64_t n_qb = (cfg.Tq + kBR<T> - 1) / kBR<T>;
  parallel_for(cfg.BH * n_qb, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) forward_task<T>(cfg, q, k, v, out, lse, t / n_qb, t % n_qb);
  });
}

template <class T>
void attention_backward(const AttentionConfig& cfg, AttnOperand<T> q, AttnOperand<T> k, AttnOperand<T> v,
                        const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dvv) {
  const std::int64_t BH = cfg.BH, Tq = cfg.Tq, Tk = cfg.Tk, d = cfg.d;
  if (BH == 0) return;
  if (Tq == 0 || Tk == 0) {  // nothing attends: zero gradients
    if (dk) std::fill(dk, dk + BH * Tk * d, T(0));
    if (dvv) std::fill(dvv, dvv + BH * Tk * cfg.dv, T(0));
    if (dq) std::fill(dq, dq + BH * Tq * d, T(0));
    return;
  }
  const std::int64_t n_kb = (Tk + kBC<T> - 1) / kBC<T>;
  const std::int64_t R = key_ranges(BH, n_kb);
  Scratch<T> partial(dq && R > 1 ? BH * R * Tq * d : 0);  // written whole by the tasks
  parallel_for(BH * R, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t)
      backward_task<T>(cfg, q, k, v, out, lse, dout, dq, dk, dvv, t / R, t % R, R, partial.get());
  });
  if (dq && R > 1) {
    const T sc_t = static_cast<T>(cfg.scale);
    const std::int64_t per = Tq * d;
    parallel_for(BH * per, 1 << 14, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t e = lo; e < hi; ++e) {
        const std::int64_t b = e / per, rem = e % per;
        const T* pb = partial.get() + b * R * per + rem;
        T s = pb[0];
        for (std::int64_t r = 1; r < R; ++r) s += pb[r * per];
        dq[e] = s * sc_t;
      }
    });
  }
}

template void attention_forward<float>(const AttentionConfig&, AttnOperand<float>, AttnOperand<float>,
                                       AttnOperand<float>, float*, float*);
template void attention_forward<double>(const AttentionConfig&, AttnOperand<double>, AttnOperand<double>,
                                        AttnOperand<double>, double*, double*);
template void attention_backward<float>(const AttentionConfig&, AttnOperand<float>, AttnOperand<float>,
                                        AttnOperand<float>, const float*, const float*, const float*, float*, float*,
                                        float*);
template void attention_backward<double>(const AttentionConfig&, AttnOperand<double>, AttnOperand<double>,
                                         AttnOperand<double>, const double*, const double*, const double*, double*,
                                         double*, double*);

// ---- dropout masks ----------------------------------------------------------------------------------------

std::uint64_t dropout_threshold(double p) {
  if (!(p > 0)) return 0;
  return static_cast<std::uint64_t>(std::ceil(p * 0x1.0p53));
}

namespace {
constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

inline bool keep_scalar(std::uint64_t seed, std::uint64_t counter, std::uint64_t threshold) {
  const auto w = philox(seed, counter);
  const std::uint64_t bits = ((static_cast<std::uint64_t>(w[0]) << 21) ^ (w[1] >> 11)) & ((std::uint64_t{1} << 53) - 1);
  return bits >= threshold;
}
}  // namespace

void dropout_keep(std::uint64_t seed, std::uint64_t first, std::int64_t n, std::uint64_t threshold,
                  std::uint8_t* keep) {
  std::int64_t i = 0;
#if XSIMD_WITH_AVX512F
  // Eight counters per vector, one 32-bit Philox word per 64-bit lane (_mm512_mul_epu32 gives the
  // full 64-bit product of the low halves). counter_hi = 0, as tg::philox(seed, counter).
  std::uint32_t k0s[10], k1s[10];
  {
    std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      k0s[r] = k0;
      k1s[r] = k1;
      k0 += kW0;
      k1 += kW1;
    }
  }
  const __m512i lo_mask = _mm512_set1_epi64(0xFFFFFFFFll);
  const __m512i m0 = _mm512_set1_epi64(kM0), m1 = _mm512_set1_epi64(kM1);
  const __m512i thr = _mm512_set1_epi64(static_cast<long long>(threshold));
  const __m512i bits53 = _mm512_set1_epi64(static_cast<long long>((std::uint64_t{1} << 53) - 1));
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  for (; i + 8 <= n; i += 8) {
    const __m512i ctr = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first + static_cast<std::uint64_t>(i))), lane);
    __m512i c0 = _mm512_and_si512(ctr, lo_mask), c1 = _mm512_srli_epi64(ctr, 32);
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    for (int r = 0; r < 10; ++r) {
      const __m512i p0 = _mm512_mul_epu32(c0, m0), p1 = _mm512_mul_epu32(c2, m1);
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), c1), _mm512_set1_epi64(k0s[r]));
      const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), c3), _mm512_set1_epi64(k1s[r]));
      c1 = _mm512_and_si512(p1, lo_mask);
      c3 = _mm512_and_si512(p0, lo_mask);
      c0 = n0;
      c2 = n2;
    }
    const __m512i bits = _mm512_and_si512(_mm512_xor_si512(_mm512_slli_epi64(c0, 21), _mm512_srli_epi64(c1, 11)), bits53);
    const __mmask8 k = _mm512_cmpge_epu64_mask(bits, thr);
    for (int j = 0; j < 8; ++j) keep[i + j] = static_cast<std::uint8_t>((k >> j) & 1);
  }
#endif
  for (; i < n; ++i) keep[i] = keep_scalar(seed, first + static_cast<std::uint64_t>(i), threshold);
}

}  // namespace tg::kernels
