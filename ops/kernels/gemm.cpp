// GEMM for strided fp32 / fp64 matrices, GotoBLAS/BLIS style.
//
// Summation order (what makes results deterministic). k is split into equal k-blocks of at most
// KC (a function of k only). For every element of C: per k-block one FMA chain in k order
// starting from 0, then one add into C per block, in block order (block 0 overwrites C unless
// accumulating). Nothing else -- thread count, tiling, which code path or kernel height handles
// an element, batching, operand layouts -- changes the bits.
//
// Blocking (AVX-512 fp32 values; MR x NR micro-tile, KC k-block, NC column chunk):
//   micro-kernel  MR x NR = 14 x 32: 28 zmm accumulators, per k step 2 B vectors are loaded and
//                 14 A values broadcast (~90% of FMA peak with operands in L1). Small
//                 products use 6 x 64 tiles instead (see small_product).
//   KC = 384      equal k-blocks rounded to 16 (k = 1024 -> 3 blocks of 352/352/320).
//   NC = 512      columns per B chunk: a packed KC x NC chunk (~768 KiB) stays in L2 (1 MiB per
//                 core on this machine's Zen 5; NC = 256 measured alike).
//   Loop order in a tile, per (column chunk, k-block): pack B chunk; for each A panel (MR rows,
//   stays in L1): for each B panel (NR columns): micro-kernel. C is walked along its rows and
//   prefetched by the kernel; packed A is prefetched ~32 k steps ahead, and a B read in place
//   one panel ahead during the first A panel's pass (see next_direct_b_panel).
//
// Packing. B panels are packed per tile into a thread-local buffer (row-major B: plain copies, or
// in a tile with few row panels by the first A panel's kernels as they read B in place; transposed
// B: 16 x 16 in-register transposes). A panels (MR rows, k-major) are either packed
// by each tile as it goes (when C is at most one chunk wide) or, when every A panel is used by
// several tiles / chunks, packed once per k-block into a shared buffer, in parallel, before the
// tiles run; a large transposed A is packed by sweeping its rows (see pack_a_panels). A
// row-major fp32 A is read in place (measured 1-7% faster than packing on large products, 5-17%
// on mid-size ones), unless a large product's rows are a multiple of 4 KiB apart (see
// rows_share_cache_sets). Small products (<= 2^23 multiply-adds) also read a transposed A and
// full row-major B panels in place, and so do products with at most 256 rows of A for B (see
// kDirectBMaxRows).
//
// Few rows (the linear layers of sampling loops). A tile of at most 8 rows with a transposed B
// (x W^T) packs and uses W panel by panel over all k-blocks, so that W is read along its rows
// (see run_tile); one row with a row-major B (x W) reads W row after row (vector_matrix).
//
// Threads. C is cut into tiles of whole panels (up to 4 per thread, at least ~0.5M
// multiply-adds each), choosing the row/column split by what it copies and streams (see
// plan_tiles); tiles run under tbb::parallel_for. Products up to 2^19 multiply-adds run on the
// calling thread; small ones up to 2^20 are cut into row or column ranges of 6 x 64 tiles
// (small_product_parallel).
//
// Edges. Partial row panels run as sums of 8/4/3/2/1-row kernels (with A in place, a tail that
// would need the slow 2-row kernel is merged with the panel before it: 14 + 2 = 8 + 8), a
// partial last column panel uses masked stores (and, when at most half full, kernels one vector
// wide: 14 x 16, half the FMAs), C with a column stride != 1 is stored element-wise -- and a
// column-major C is handled as C^T = B^T A^T. So are products of at most 4 columns (A x), and
// the last n mod 16 columns when at most 4, as a product of their own: their rows then fill the
// vector lanes (see narrow_cols). Other targets (SSE2/AVX2 builds) use a 6 x 2-vector kernel
// (6 x 1 for half-full last panels).
#include "ops/kernels/gemm.hpp"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

#if XSIMD_WITH_AVX512F
#include <immintrin.h>

#include "core/simd_transpose.hpp"
#endif

namespace tg::kernels {
namespace {

template <class T>
using Batch = xsimd::batch<T>;

// Register blocking per target. AVX-512: 32 zmm registers = 28 accumulators + 2 B vectors +
// 1 broadcast (measured ~90% of FMA peak in L1). Narrower targets have 16 registers: 6 x 2 vectors.
#if XSIMD_WITH_AVX512F
constexpr int kMR = 14;
#else
constexpr int kMR = 6;
#endif
constexpr int kNV = 2;  // B vectors per k step (NR = kNV * lanes)

template <class T>
struct Blocking {
  static constexpr int L = static_cast<int>(Batch<T>::size);
  static constexpr int MR = kMR;
  static constexpr int NR = kNV * L;
  // k-block: the KC x NR B micro-panel (48 KiB fp32) and the MR x KC A panel stream from L2 / L1;
  // larger blocks mean fewer passes over C. Column chunk: a packed KC x NC B chunk (768 KiB fp32)
  // stays in L2 while every A panel of the tile runs over it. (Measured plateau: KC 256..512 and
  // NC 8..32 panels perform alike.)
  static constexpr int64_t KC = 384;
  static constexpr int64_t NC = 16 * NR;
};

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Scratch memory. Blocks from 256 KiB up are 2 MiB aligned and marked for transparent huge
// pages (the kernels stream packed panels: a 4 KiB page lasts only a few k steps). Buffers are
// kept for reuse: a fresh allocation per call would cost page faults.

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr_); }

  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(ptr_);
      constexpr size_t kHuge = size_t{2} << 20;
      const size_t align = bytes >= kHuge / 8 ? kHuge : 4096;
      size_ = (bytes + align - 1) / align * align;
      ptr_ = std::aligned_alloc(align, size_);
      if (!ptr_) {
        size_ = 0;
        throw std::bad_alloc();
      }
      if (align == kHuge) madvise(ptr_, size_, MADV_HUGEPAGE);
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// Per-call buffers (the packed A shared by all tiles of one call). A pool rather than a
// thread_local: a thread waiting in parallel_for may run tasks of another gemm call.
class BufferPool {
 public:
  std::unique_ptr<AlignedBuffer> acquire() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::make_unique<AlignedBuffer>();
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void release(std::unique_ptr<AlignedBuffer> b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<AlignedBuffer>> free_;
};

BufferPool& buffer_pool() {
  static BufferPool pool;
  return pool;
}

// A pool buffer held for the duration of one call (acquired on first use).
class PooledBuffer {
 public:
  PooledBuffer() = default;
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() {
    if (buf_) buffer_pool().release(std::move(buf_));
  }
  void* get(size_t bytes) {
    if (!buf_) buf_ = buffer_pool().acquire();
    return buf_->get(bytes);
  }

 private:
  std::unique_ptr<AlignedBuffer> buf_;
};

// Thread-local scratch for packed B panels and A panels of a tile (and a small product's padded
// B block). Only used inside leaf work (no TBB waits while it is live), so no other task can run
// on this thread and reuse it meanwhile.
template <class T>
T* thread_scratch(size_t elems) {
  thread_local AlignedBuffer buf;
  return static_cast<T*>(buf.get(elems * sizeof(T)));
}

// ---------------------------------------------------------------------------------------------
// Packing. A panel holds `lines` (<= W) lines of length kc and is stored k-major:
// dst[p * W + l] = src(l, p) = src[l * ls + p * ps], zero for lines <= l < W.
// For A the lines are rows (ls = rs, ps = cs), for B the lines are columns (ls = cs, ps = rs).

#if XSIMD_WITH_AVX512F
// ps == 1: every line is contiguous along k, so transpose 16 x 16 (8 x 8) blocks in registers;
// the lanes past `lines` of a partial panel are zero. `from_memory`: the source is expected to
// come from DRAM, so its lines are prefetched ahead (see transpose_matrix).
template <int W, class T>
void pack_transposed(const T* src, int64_t ls, int lines, int64_t kc, T* dst, bool from_memory) {
  if (lines < W) std::fill(dst, dst + kc * W, T(0));
  simd::transpose_matrix(src, lines, kc, ls, dst, W, from_memory);
}
#else
template <int W, class T>
void pack_transposed(const T* src, int64_t ls, int lines, int64_t kc, T* dst, bool /*from_memory*/) {
  for (int64_t p = 0; p < kc; ++p) {
    for (int l = 0; l < lines; ++l) dst[p * W + l] = src[l * ls + p];
    for (int l = lines; l < W; ++l) dst[p * W + l] = T(0);
  }
}
#endif

template <int W, class T>
void pack_panel(const T* src, int64_t ls, int64_t ps, int lines, int64_t kc, T* dst, bool from_memory = false) {
  if (ps == 1 && ls != 1) {
    pack_transposed<W>(src, ls, lines, kc, dst, from_memory);
  } else if (ls == 1 && lines == W) {  // lines contiguous for each k: plain copies
    for (int64_t p = 0; p < kc; ++p) std::memcpy(dst + p * W, src + p * ps, W * sizeof(T));
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      for (int l = 0; l < lines; ++l) dst[p * W + l] = src[l * ls + p * ps];
      for (int l = lines; l < W; ++l) dst[p * W + l] = T(0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel: C[ROWS, cols] (+)= A[ROWS, kc] · B[kc, NR] with cols <= NR.
// B row p is read at b + p * bs (bs = NR for packed panels, the row stride for B read in place).
// A is read k-major (element (i, p) at a[i + p * as]: packed panels, or a transposed A in place)
// or row-major in place (element (i, p) at a[i * as + p]).

template <class T>
struct CTile {
  T* p;
  int64_t rs, cs;
  int cols;  // valid columns (the kernel computes NR)
  bool add;  // C += result (else C = result; C is not read)
};

// Stores the first `count` lanes of v at q (adding q's old values if `add`).
template <class T>
inline void store_lanes(T* q, Batch<T> v, int count, bool add) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    const __mmask16 mk = static_cast<__mmask16>((1u << count) - 1);
    __m512 x = v;
    if (add) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mk, q));
    _mm512_mask_storeu_ps(q, mk, x);
  } else {
    const __mmask8 mk = static_cast<__mmask8>((1u << count) - 1);
    __m512d x = v;
    if (add) x = _mm512_add_pd(x, _mm512_maskz_loadu_pd(mk, q));
    _mm512_mask_storeu_pd(q, mk, x);
  }
#else
  alignas(64) T tmp[Batch<T>::size];
  v.store_aligned(tmp);
  for (int i = 0; i < count; ++i) q[i] = add ? q[i] + tmp[i] : tmp[i];
#endif
}

// C (+)= tile for a partial last column panel or a C with column stride != 1; the tile is
// `rows` x NR, row-major. Kept out of the kernel instantiations.
template <class T, int NV>
void store_tile(const T* tile, int rows, const CTile<T>& c) {
  constexpr int L = Batch<T>::size, NR = NV * L;
  for (int i = 0; i < rows; ++i) {
    const T* src = tile + i * NR;
    T* q = c.p + i * c.rs;
    if (c.cs == 1) {
      for (int j = 0; j < c.cols; j += L)
        store_lanes(q + j, Batch<T>::load_aligned(src + j), std::min(L, c.cols - j), c.add);
    } else {
      for (int j = 0; j < c.cols; ++j) q[j * c.cs] = c.add ? q[j * c.cs] + src[j] : src[j];
    }
  }
}

// Row access for the A operand of the micro-kernel; row(i) is A(i, p) for the current p.
template <class T, int ROWS, bool ROW_MAJOR>
struct ARows;

template <class T, int ROWS>
struct ARows<T, ROWS, false> {
  const T* a;
  int64_t as;
  T row(int i) const { return a[i]; }
  void next() { a += as; }
};

// Row-major A in place: one pointer per three rows, the other two are reached with the row
// stride as index register ([base], [base + s], [base + 2s]), so only a few pointers advance.
// The loops over the pointers must be unrolled: otherwise GCC keeps the array on the stack and
// every k step reloads and read-modify-writes it (measured 15-20% slower on small products).
template <class T, int ROWS>
struct ARows<T, ROWS, true> {
  static constexpr int G = (ROWS + 2) / 3;
  const T* base[G];
  int64_t as;
  ARows(const T* a, int64_t s) : as(s) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) base[g] = a + 3 * g * s;
  }
  T row(int i) const { return base[i / 3][(i % 3) * as]; }
  void next() {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) ++base[g];
  }
};

// With PREFETCH_B, b_next is the next B panel read in place (same stride bs): its row p is
// requested while row p of this one is used, see run_tile. With STORE_B, the B panel read in
// place is also copied, packed (NR values per k step), to b_pack: B packed during its first use.
template <class T, int ROWS, int NV, bool A_ROW_MAJOR, bool PREFETCH_B = false, bool STORE_B = false>
void micro_kernel(int64_t kc, const T* a_ptr, int64_t as, const T* b, int64_t bs, const CTile<T>& c,
                  const T* b_next = nullptr, T* b_pack = nullptr) {
  using B = Batch<T>;
  constexpr int L = B::size;
  // C is swept once per k-block, so it is usually not cached: request it now, it is needed at
  // the end. Packed A is prefetched ~32 k steps ahead: a panel's first use comes from L3.
  if (c.cs == 1)
    for (int i = 0; i < ROWS; ++i) {
      __builtin_prefetch(c.p + i * c.rs, 1, 3);
      __builtin_prefetch(c.p + i * c.rs + NV * L - 1, 1, 3);
    }
  ARows<T, ROWS, A_ROW_MAJOR> a{a_ptr, as};
  B acc[ROWS][NV];
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = B(T(0));

  // Unrolled 4 times: measured +8% with B streaming from L2 (a software prefetch of B did not help).
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    if constexpr (!A_ROW_MAJOR) __builtin_prefetch(a.a + 32 * as, 0, 3);
    if constexpr (PREFETCH_B) {
#pragma GCC unroll 4
      for (int j = 0; j < NV * L; j += 64 / int(sizeof(T))) __builtin_prefetch(b_next + j, 0, 3);
      b_next += bs;
    }
    B bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = B::load_unaligned(b + j * L);
    if constexpr (STORE_B) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j].store_aligned(b_pack + j * L);
      b_pack += NV * L;
    }
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) {
      const B av(a.row(i));
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
    }
    a.next();
    b += bs;
  }

  if (c.cs == 1 && c.cols == NV * L) {
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        T* q = c.p + i * c.rs + j * L;
        B v = acc[i][j];
        if (c.add) v += B::load_unaligned(q);
        v.store_unaligned(q);
      }
  } else {  // edge or strided tile: spill the accumulators, store from memory
    alignas(64) T tmp[ROWS * NV * L];
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j].store_aligned(tmp + (i * NV + j) * L);
    store_tile<T, NV>(tmp, ROWS, c);
  }
}

// Kernels are instantiated for MR rows and for 8, 4, 3, 2, 1 rows; other heights run as sums of
// those (e.g. 13 = 8 + 4 + 1, and up to 2 * MR rows of an A read in place: 16 = 8 + 8). Rows
// are independent, so the bits are the same as with one kernel of the exact height, and there
// are a few instantiations instead of MR (compile time). A kernel of r rows and NV vectors runs
// r * NV FMA chains, and a step of each takes the FMA latency (4 cycles): below 8 chains the
// kernel waits on it. Hence the 3-row kernel (2 + 1 rows took twice as long per row; measured at
// 1 thread 3 x 512 x 512 1.9x, 7 x 512 x 512 1.6x, 512 x 3 x 512 1.3x).
template <class T, bool ROW_MAJOR, int MR = kMR, int NV = kNV>
struct KernelSet {
  static constexpr int kSizes[] = {8, 4, 3, 2, 1};

  // Full MR-row panels only (both optional, see micro_kernel): b_next, the next B panel to
  // prefetch; b_pack, where to pack this B panel as it is read.
  static void run(int rows, int64_t kc, const T* a, int64_t as, const T* b, int64_t bs, const CTile<T>& c,
                  const T* b_next = nullptr, T* b_pack = nullptr) {
    if (rows == MR) {
      if (b_pack) {
        if (b_next)
          micro_kernel<T, MR, NV, ROW_MAJOR, true, true>(kc, a, as, b, bs, c, b_next, b_pack);
        else
          micro_kernel<T, MR, NV, ROW_MAJOR, false, true>(kc, a, as, b, bs, c, nullptr, b_pack);
      } else if (b_next)
        micro_kernel<T, MR, NV, ROW_MAJOR, true>(kc, a, as, b, bs, c, b_next);
      else
        micro_kernel<T, MR, NV, ROW_MAJOR>(kc, a, as, b, bs, c);
      return;
    }
    int done = 0;
    for (int size : kSizes) {
      if (size >= MR) continue;
      for (; rows - done >= size; done += size) {
        const T* ap = ROW_MAJOR ? a + done * as : a + done;
        const CTile<T> part{c.p + done * c.rs, c.rs, c.cs, c.cols, c.add};
        switch (size) {
          case 8: micro_kernel<T, std::min(8, MR), NV, ROW_MAJOR>(kc, ap, as, b, bs, part); break;
          case 4: micro_kernel<T, std::min(4, MR), NV, ROW_MAJOR>(kc, ap, as, b, bs, part); break;
          case 3: micro_kernel<T, 3, NV, ROW_MAJOR>(kc, ap, as, b, bs, part); break;
          case 2: micro_kernel<T, 2, NV, ROW_MAJOR>(kc, ap, as, b, bs, part); break;
          default: micro_kernel<T, 1, NV, ROW_MAJOR>(kc, ap, as, b, bs, part); break;
        }
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Driver.

template <class T>
struct Panel {
  const T* p;
  int64_t stride;
};

template <class T>
struct Problem {
  int64_t m, n, k;
  ConstMatrix<T> a, b;
  Matrix<T> c;
  bool accumulate;
  int64_t kc;       // k-block size; block q covers [q * kc, min(k, (q + 1) * kc))
  int64_t nkb;      // number of k-blocks
  int64_t mpanels;  // ceil(m / MR)
  // Packing skipped where the layout allows: A is read in place when it is row-major (fp32,
  // a_row_major) or, for small products, k-major (a.rs == 1); small products and fp32 products
  // with few rows also read their full-width B panels in place when B is row-major.
  bool direct_a, a_row_major, direct_b;
  bool a_sweep;  // pack a k-major A one k row at a time across all panels (see pack_a_panels)
  // Packed A of the current k-block (when its panels are shared by several tiles or column
  // chunks): mpanels panels of MR x kc_of(q), one after the other. Or nullptr: A is read in
  // place, or each tile packs its own A panels (each right before use, or a swept group).
  T* apack;
  // Operands large enough to be expected in DRAM rather than in cache (see kFromMemoryBytes).
  bool a_from_memory = false, b_from_memory = false;

  int64_t kc_of(int64_t q) const { return std::min(kc, k - q * kc); }
  T* packed_a(int64_t q, int64_t panel) const { return apack + panel * Blocking<T>::MR * kc_of(q); }
};

// An operand of at least this many bytes is taken to come from DRAM, not from cache, when it is
// packed by transposing (its lines are then prefetched, see transpose_matrix). Measured on skinny
// products x W^T at 1 thread, where packing W is most of the work: 64 MB W +71%, 32 MiB +12%,
// 16 MiB +3%, 8 MiB -4% (still in this machine's L3 between calls), 1-4 MiB -3 to -7%.
constexpr double kFromMemoryBytes = 16 << 20;

// Tiles of at most this many rows (and one row panel) with a transposed B stream B panel by
// panel (see run_tile).
constexpr int64_t kSkinnyRows = 8;

// Products with at most narrow_cols columns (a quarter of the lanes: 4 in fp32 with AVX-512) and at
// least kNarrowMinRows rows (A x for a vector x, heads with a few outputs) are computed as
// C^T = B^T A^T: the kernels put C's columns into the vector lanes, where n <= 4 would leave 12 or
// more of 16 idle; transposed, C's rows fill them. Same products, same k order, same bits.
// Measured at 1 thread, fp32: 512 x n x 512 for n = 1..4 1.2-1.5x (A transposed, n = 1: 4.2x,
// through vector_matrix), 2048 x 1 x 2048 1.3x, 64 x 2 x 64 TN 6x, 20 x 4 x 1000 1.9x; n = 5 and
// up are faster as they are.
template <class T>
constexpr int64_t narrow_cols() {
  return static_cast<int64_t>(Batch<T>::size) / 4;
}
constexpr int64_t kNarrowMinRows = 16;

// The k-blocking depends on k only (never on threads or tiling): equal blocks of at most KC,
// rounded to a multiple of 16 so packed panels stay vector aligned.
template <class T>
int64_t k_block_size(int64_t k) {
  const int64_t nb = ceil_div(k, Blocking<T>::KC);
  return std::min(k, ceil_div(ceil_div(k, nb), 16) * 16);
}

template <class T>
void pack_a_panel(const Problem<T>& pr, int64_t q, int64_t panel, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  const int64_t i0 = panel * MR;
  const T* src = pr.a.data + i0 * pr.a.rs + q * pr.kc * pr.a.cs;
  pack_panel<MR>(src, pr.a.rs, pr.a.cs, static_cast<int>(std::min<int64_t>(MR, pr.m - i0)), pr.kc_of(q), dst,
                 pr.a_from_memory);
}

// A k-major A of at least this many elements (1 MiB fp32: no longer in L2 beside the B chunk) is
// packed by sweeping its rows (see pack_a_panels), at most kSweepPanels panels at a time in a
// tile (a bounded buffer: 32 panels of 384 k steps are 688 KiB fp32).
constexpr double kSweepMin = 1 << 18;
constexpr int64_t kSweepPanels = 32;

// Packs the A panels [p0, p1) of k-block q, panel p at dst + (p - p0) * MR * kc. A large k-major
// A (a_sweep: a transposed A, as in the weight gradient dY^T X) is swept one k row at a time
// across all the panels: panel by panel reads 14-element pieces of kc rows far apart from memory,
// which is latency-bound (13% of a 768 x 256 x 2048 product; with the sweep 9%, 5% faster).
// A small one stays panel by panel: it comes from L2, and each packed panel is then still in L1
// when the kernel first reads it.
template <class T>
void pack_a_panels(const Problem<T>& pr, int64_t q, int64_t p0, int64_t p1, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  const int64_t kc = pr.kc_of(q);
  if (!pr.a_sweep) {
    for (int64_t panel = p0; panel < p1; ++panel) pack_a_panel(pr, q, panel, dst + (panel - p0) * MR * kc);
    return;
  }
  for (int64_t p = 0; p < kc; ++p) {
    const T* row = pr.a.data + (q * pr.kc + p) * pr.a.cs;
    for (int64_t panel = p0; panel < p1; ++panel) {
      T* d = dst + (panel - p0) * MR * kc + p * MR;
      const int64_t i0 = panel * MR;
      if (i0 + MR <= pr.m) {
        std::memcpy(d, row + i0, MR * sizeof(T));
      } else {
        const int64_t lines = pr.m - i0;
        std::memcpy(d, row + i0, static_cast<size_t>(lines) * sizeof(T));
        std::fill(d + lines, d + MR, T(0));
      }
    }
  }
}

// A panel (rows panel * MR ...) of k-block q: pre-packed, read in place, or packed now into buf.
template <class T>
Panel<T> a_panel(const Problem<T>& pr, int64_t q, int64_t panel, T* buf) {
  constexpr int MR = Blocking<T>::MR;
  if (pr.apack) return {pr.packed_a(q, panel), MR};
  if (pr.direct_a) return {pr.a.data + panel * MR * pr.a.rs + q * pr.kc * pr.a.cs, pr.a_row_major ? pr.a.rs : pr.a.cs};
  pack_a_panel(pr, q, panel, buf);
  return {buf, MR};
}

// Prepares the B panels of columns [jc, jc + nc) for k-block q: packed into `buf` (panel t at
// buf + t * NR * kc) or, `in_place` (a row-major B), the full panels pointing into B itself.
template <class T>
void prepare_b(const Problem<T>& pr, int64_t q, int64_t jc, int64_t nc, T* buf, Panel<T>* panels, bool in_place) {
  constexpr int NR = Blocking<T>::NR;
  const ConstMatrix<T> b = pr.b;
  const int64_t k0 = q * pr.kc, kc = pr.kc_of(q), npanels = ceil_div(nc, NR);
  const T* src = b.data + k0 * b.rs + jc * b.cs;
  if (in_place) {
    for (int64_t t = 0; t < npanels; ++t) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, nc - t * NR));
      if (cols == NR) {
        panels[t] = {src + t * NR, b.rs};
      } else {
        pack_panel<NR>(src + t * NR, 1, b.rs, cols, kc, buf + t * NR * kc);
        panels[t] = {buf + t * NR * kc, NR};
      }
    }
    return;
  }
  for (int64_t t = 0; t < npanels; ++t) panels[t] = {buf + t * NR * kc, NR};
  if (b.cs == 1) {
    // Row-major B: copy groups of a few rows at a time, panel by panel. The source is then read
    // as a few sequential streams (panel by panel over all kc rows would be too many streams for
    // the hardware prefetcher) and the stores go to one panel at a time (row by row over all
    // panels would write npanels streams whose addresses can collide in the same L1 set).
    constexpr int64_t kRows = 8;
    for (int64_t p0 = 0; p0 < kc; p0 += kRows) {
      const int64_t p1 = std::min(kc, p0 + kRows);
      for (int64_t t = 0; t < npanels; ++t) {
        const int64_t cols = std::min<int64_t>(NR, nc - t * NR);
        for (int64_t p = p0; p < p1; ++p) {
          T* d = buf + t * NR * kc + p * NR;
          const T* row = src + p * b.rs + t * NR;
          if (cols == NR) {
            std::memcpy(d, row, NR * sizeof(T));
          } else {
            std::memcpy(d, row, static_cast<size_t>(cols) * sizeof(T));
            std::fill(d + cols, d + NR, T(0));
          }
        }
      }
    }
  } else {
    for (int64_t t = 0; t < npanels; ++t)
      pack_panel<NR>(src + t * NR * b.cs, b.cs, b.rs, static_cast<int>(std::min<int64_t>(NR, nc - t * NR)), kc,
                     buf + t * NR * kc, pr.b_from_memory);
  }
}

// B read in place (direct, or packed during its first use) comes from memory on the first A
// panel's pass over a chunk (the others find it in L2 or packed), row by row at the row stride:
// the hardware prefetchers do not follow that, so the kernel is left waiting on memory latency.
// During that pass each kernel call prefetches the next panel's rows. Returns that panel (the one
// after panel t of chunk jc; at the last one, the first panel of the next chunk when the tile has
// a single k-block, so that it has the same rows), or nullptr when there is none or it is not
// read in place. (Measured at 1 thread: 64 x 25088 x 288, whose B comes from DRAM, 144 -> 173
// GFLOP/s; L2-resident B alike.)
template <class T>
const T* next_direct_b_panel(const Problem<T>& pr, bool b_in_place, int64_t q, bool one_kblock, int64_t jc, int64_t j1,
                             int64_t t, const Panel<T>* bpanels, int64_t npanels) {
  constexpr int NR = Blocking<T>::NR;
  constexpr int64_t NC = Blocking<T>::NC;
  if (!b_in_place) return nullptr;
  if (t + 1 < npanels) return bpanels[t + 1].stride == NR ? nullptr : bpanels[t + 1].p;  // packed: cached
  const int64_t j = jc + NC;
  if (!one_kblock || j + NR > j1) return nullptr;  // next chunk: other rows, or a packed partial panel
  return pr.b.data + q * pr.kc * pr.b.rs + j * pr.b.cs;
}

// Adds the k-blocks [q0, q1) to the C tile rows [i0, i1) x columns [j0, j1) (block 0 overwrites
// unless accumulating); i0 and j0 are multiples of MR and NR.
template <class T>
void run_tile(const Problem<T>& pr, int64_t q0, int64_t q1, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  constexpr int64_t NC = Blocking<T>::NC;
  // A swept A is packed kSweepPanels panels at a time (see pack_a_panels), others panel by panel
  // just before use (+ slack: the micro-kernel prefetches A up to 32 steps beyond a panel).
  const bool sweep_a = !pr.apack && !pr.direct_a && pr.a_sweep;
  const int64_t group_rows = sweep_a ? kSweepPanels * MR : MR;  // rows of A packed at a time
  T* bbuf = thread_scratch<T>(static_cast<size_t>(pr.kc * (NC + group_rows) + 64 * MR));
  T* abuf = bbuf + pr.kc * NC;
  Panel<T> bpanels[NC / NR];
  const Matrix<T> c = pr.c;
  // A last column panel at most half full runs the one-vector kernels (half the FMAs).
  auto run_kernel = &KernelSet<T, false>::run;
  auto run_half = &KernelSet<T, false, MR, 1>::run;
  if constexpr (std::is_same_v<T, float>)
    if (pr.direct_a && pr.a_row_major) {
      run_kernel = &KernelSet<T, true>::run;
      run_half = &KernelSet<T, true, MR, 1>::run;
    }

  // With A read in place, a last partial panel whose height needs the 2-row kernel (2, 6 or 10
  // rows) runs together with the full panel before it as 8-row kernels (14 + 2 = 8 + 8,
  // 14 + 6 = 8 + 8 + 4): the 2-row kernel has 4 FMA chains, too few to cover the FMA latency,
  // and streams 128 bytes of B from L2 per 4 FMAs (measured +1-4% on m = 128 products). The
  // 3-row kernel's 6 chains nearly do, and merging 3, 7 or 11 rows would leave a 1-row kernel.
  const int64_t tail = (i1 - i0) % MR;
  const int64_t merge_at = pr.direct_a && tail % 4 == 2 && i1 - i0 > MR ? i1 - tail - MR : -1;
  // Rows of the A panel (kernel call) starting at row i.
  auto panel_rows = [&](int64_t i) {
    return i == merge_at ? MR + static_cast<int>(tail) : static_cast<int>(std::min<int64_t>(MR, pr.m - i));
  };

  // A packed row-major B is packed by the first A panel's kernels as they read it in place (one
  // pass over B instead of a copy and then a read), when that panel is a full one and the tile
  // has few row panels: over many, the copy is a small share, and reading in place on the first
  // pass measured slower (4096 x 1024 x 256, -1%). Measured at 1 (2) threads, in-process A/B:
  // 256 x 1024 x 4096 TN +1-2.5% (+5-7%), 300 x 700 x 500 +2.5% (alike), 784 x 512 x 128 TN +2%
  // (alike); the other benchmark shapes alike.
  const bool pack_b_on_use = !pr.direct_b && pr.b.cs == 1 && panel_rows(i0) == MR && ceil_div(i1 - i0, MR) <= 64;
  const bool b_in_place = pr.direct_b || pack_b_on_use;

  // A tile of at most kSkinnyRows rows with a transposed B (x W^T for a few rows x: the linear
  // layers of sampling loops) uses each B panel once: pack it k-block after k-block and run its
  // kernels right away, so that W is read along its rows, instead of a chunk of 16 panels per
  // k-block. Measured with the packing prefetch (in-process, 1 / 2 threads): 1 x 4000 x 4000 NT
  // 2.2x / 2.3x, 8 x 4000 x 4000 NT 2.1x / 2.1x, W in cache (1-8 MiB) +13-37% / +5-40%;
  // 12-14 rows gained at 1 thread and lost 6-11% at 2, hence the bound.
  if (i1 - i0 <= std::min<int64_t>(kSkinnyRows, MR) && !pr.direct_b && pr.b.rs == 1 && pr.b.cs != 1) {
    const int rows = static_cast<int>(i1 - i0);
    for (int64_t j = j0; j < j1; j += NR) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, j1 - j));
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t kc = pr.kc_of(q);
        pack_panel<NR>(pr.b.data + q * pr.kc + j * pr.b.cs, pr.b.cs, 1, cols, kc, bbuf, pr.b_from_memory);
        const Panel<T> ap = a_panel(pr, q, i0 / MR, abuf);
        const CTile<T> tile{c.data + i0 * c.rs + j * c.cs, c.rs, c.cs, cols, pr.accumulate || q > 0};
        if (cols <= NR / 2)
          run_half(rows, kc, ap.p, ap.stride, bbuf, NR, tile, nullptr, nullptr);
        else
          run_kernel(rows, kc, ap.p, ap.stride, bbuf, NR, tile, nullptr, nullptr);
      }
    }
    return;
  }

  for (int64_t jc = j0; jc < j1; jc += NC) {
    const int64_t nc = std::min(NC, j1 - jc);
    const int64_t npanels = ceil_div(nc, NR);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t kc = pr.kc_of(q);
      prepare_b(pr, q, jc, nc, bbuf, bpanels, b_in_place);
      const bool add = pr.accumulate || q > 0;
      // A micro-panel outer (it stays in L1), B micro-panels inner (the chunk stays in L2): each
      // A panel is fetched from memory once per chunk and C is walked along its rows.
      for (int64_t i = i0; i < i1;) {
        const int rows = panel_rows(i);
        const int64_t g0 = i0 + (i - i0) / group_rows * group_rows;  // first row of i's group
        if (sweep_a && i == g0)
          pack_a_panels(pr, q, i / MR, ceil_div(std::min(i1, g0 + group_rows), MR), abuf);
        const Panel<T> ap = sweep_a ? Panel<T>{abuf + (i - g0) * kc, MR} : a_panel(pr, q, i / MR, abuf);
        for (int64_t t = 0; t < npanels; ++t) {
          const int64_t j = jc + t * NR;
          const int cols = static_cast<int>(std::min<int64_t>(NR, pr.n - j));
          const CTile<T> tile{c.data + i * c.rs + j * c.cs, c.rs, c.cs, cols, add};
          if (cols <= NR / 2) {  // the last panel of C: no next B panel to prefetch
            run_half(rows, kc, ap.p, ap.stride, bpanels[t].p, bpanels[t].stride, tile, nullptr, nullptr);
            continue;
          }
          const T* b_next =
              i == i0 ? next_direct_b_panel(pr, b_in_place, q, q1 - q0 == 1, jc, j1, t, bpanels, npanels) : nullptr;
          T* b_pack = pack_b_on_use && i == i0 && bpanels[t].stride != NR ? bbuf + t * NR * kc : nullptr;
          run_kernel(rows, kc, ap.p, ap.stride, bpanels[t].p, bpanels[t].stride, tile, b_next, b_pack);
          if (b_pack) bpanels[t] = {b_pack, NR};
        }
        i += rows;
      }
    }
  }
}

// Splits `panels` panels into `parts` nearly equal contiguous ranges; returns the start of `idx`.
inline int64_t split_point(int64_t panels, int64_t parts, int64_t idx) { return panels * idx / parts; }

// Runs f(0) ... f(parts - 1), one TBB task each (on the calling thread when there is one part).
template <class F>
void run_parts(int64_t parts, F&& f) {
  if (parts <= 1) {
    f(int64_t{0});
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, parts, 1),
      [&](const tbb::blocked_range<int64_t>& r) {
        for (int64_t idx = r.begin(); idx < r.end(); ++idx) f(idx);
      },
      tbb::simple_partitioner());
}

#if XSIMD_WITH_AVX512F
// Small fp32 products (one k-block, A and B read in place) run 6 x 64 tiles: 24
// accumulators fed by 4 B vectors and 6 broadcasts per k step, a quarter of a broadcast per FMA
// instead of the 14 x 32 tile's half. With every operand in L1 the broadcasts are what limits the
// kernel (measured 4-9% faster on 64^3 products); in larger products the B panels stream from
// L2, where 64 columns would double that traffic. The last columns run narrower kernels instead
// of wasting FMAs on zero columns: 33-48 as 14 x 32 + 14 x 16, 17-32 as 14 x 32, at most 16 as
// 14 x 16 (measured 30-40% faster on n = 48 products). Each element of C is still one FMA chain
// over k plus one store or add, so the bits are the general path's.
template <bool A_ROW_MAJOR>
void small_product(const Problem<float>& pr) {
  constexpr int MR = 6, NV = 4, NR = NV * Batch<float>::size;
  const int64_t k = pr.k, as = A_ROW_MAJOR ? pr.a.rs : pr.a.cs;
  const Matrix<float> c = pr.c;
  for (int64_t j = 0; j < pr.n;) {
    // 64-column blocks (the last one may hold 49-63), then at most one 32- and one 16-column block.
    const int64_t left = pr.n - j;
    const int width = left <= NR / 4 ? NR / 4 : left <= 3 * NR / 4 ? NR / 2 : NR;  // 16, 32 or 64
    const int cols = static_cast<int>(std::min<int64_t>(width, left));
    // B block: in place when full width, else packed with zero columns up to `width`.
    const float* bp = pr.b.data + j;
    int64_t bs = pr.b.rs;
    if (cols < width) {
      float* buf = thread_scratch<float>(static_cast<size_t>(k * NR));
      switch (width) {
        case NR / 4: pack_panel<NR / 4>(bp, 1, bs, cols, k, buf); break;
        case NR / 2: pack_panel<NR / 2>(bp, 1, bs, cols, k, buf); break;
        default: pack_panel<NR>(bp, 1, bs, cols, k, buf); break;
      }
      bp = buf;
      bs = width;
    }
    const int64_t rows_step = width == NR ? MR : kMR;
    // On the 14-row kernels, a last tile that would need the 2-row kernel runs with the one
    // before as 8-row kernels, as in run_tile (1 thread: 16^3 1.04x, 48^3 TN 1.05x, 44 x 32 x 100 1.06x).
    const int64_t tail = pr.m % rows_step;
    const int64_t merge_at = rows_step == kMR && tail % 4 == 2 && pr.m > kMR ? pr.m - tail - kMR : -1;
    for (int64_t i = 0, rows = 0; i < pr.m; i += rows) {
      rows = i == merge_at ? kMR + tail : std::min<int64_t>(rows_step, pr.m - i);
      const float* ap = pr.a.data + i * pr.a.rs;
      const CTile<float> tile{c.data + i * c.rs + j * c.cs, c.rs, c.cs, cols, pr.accumulate};
      switch (width) {
        case NR / 4: KernelSet<float, A_ROW_MAJOR, kMR, 1>::run(static_cast<int>(rows), k, ap, as, bp, bs, tile); break;
        case NR / 2: KernelSet<float, A_ROW_MAJOR>::run(static_cast<int>(rows), k, ap, as, bp, bs, tile); break;
        default: KernelSet<float, A_ROW_MAJOR, MR, NV>::run(static_cast<int>(rows), k, ap, as, bp, bs, tile); break;
      }
    }
    j += cols;
  }
}

// A small product cut into `parts` pieces run by TBB tasks: ranges of rows at multiples of the
// 6-row tile or, with fewer than 12 rows, of columns at multiples of the 64-column block. Rows
// and columns of C are independent (each element is one FMA chain over k), so the cut does not
// change the bits. Returns false when the product is too narrow to cut (fewer than two units).
inline bool small_product_parallel(const Problem<float>& pr, int64_t parts) {
  const bool by_rows = pr.m >= 12;
  const int64_t unit = by_rows ? 6 : 64, units = ceil_div(by_rows ? pr.m : pr.n, unit);
  parts = std::min(parts, units);
  if (parts < 2) return false;
  run_parts(parts, [&](int64_t idx) {
    const int64_t lo = split_point(units, parts, idx) * unit, hi = split_point(units, parts, idx + 1) * unit;
    Problem<float> sub = pr;
    if (by_rows) {
      sub.m = std::min(pr.m, hi) - lo;
      sub.a.data = pr.a.data + lo * pr.a.rs;
      sub.c.data = pr.c.data + lo * pr.c.rs;
    } else {
      sub.n = std::min(pr.n, hi) - lo;
      sub.b.data = pr.b.data + lo * pr.b.cs;
      sub.c.data = pr.c.data + lo * pr.c.cs;
    }
    if (pr.a_row_major)
      small_product<true>(sub);
    else
      small_product<false>(sub);
  });
  return true;
}
#endif

// A vector times a row-major matrix, c[j] (+)= sum_p a[p] b(p, j) (m = 1: x W with W stored
// k x n), over the columns [j0, j1), a multiple of the vector width. B is read row after row,
// each row contiguously, while the sums of a column block stay in an L1 buffer: no packing, no
// strided walks down B's columns (a W from DRAM is then read as one stream; its rows may be any
// distance apart). Same bits as the kernels: per k-block one FMA chain per column in k order
// from 0, then one store or add into C.
template <class T>
void vector_matrix(const Problem<T>& pr, int64_t j0, int64_t j1) {
  constexpr int L = static_cast<int>(Batch<T>::size);
  constexpr int64_t kBlock = 8192 / static_cast<int64_t>(sizeof(T));  // columns per pass: 8 KiB of sums
  alignas(64) T acc[kBlock];
  for (int64_t jb = j0; jb < j1; jb += kBlock) {
    const int64_t width = std::min(kBlock, j1 - jb);  // a multiple of L
    for (int64_t q = 0; q < pr.nkb; ++q) {
      const int64_t p0 = q * pr.kc, p1 = p0 + pr.kc_of(q);
      std::fill(acc, acc + width, T(0));
      for (int64_t p = p0; p < p1; ++p) {
        const Batch<T> x(pr.a.data[p * pr.a.cs]);
        const T* row = pr.b.data + p * pr.b.rs + jb;
        for (int64_t j = 0; j < width; j += L)
          xsimd::fma(x, Batch<T>::load_unaligned(row + j), Batch<T>::load_aligned(acc + j)).store_aligned(acc + j);
      }
      T* out = pr.c.data + jb * pr.c.cs;
      const bool add = pr.accumulate || q > 0;
      for (int64_t j = 0; j < width; ++j) out[j * pr.c.cs] = add ? out[j * pr.c.cs] + acc[j] : acc[j];
    }
  }
}

// Products up to kSerialMax multiply-adds run on the calling thread (~2.5 us; forking and
// joining TBB tasks costs about 1 us even with the workers awake: 64^3 in two halves ran 30%
// slower, 2^18..2^19 -5 to +8%). Small products (see small_product) up to kSmallMax are cut into
// pieces of at least kSmallPiece for the threads (small_product_parallel): measured at 2 threads
// (in-process, alternating calls) 25-55% faster than on one at 2^19..2^20 (100^3 with A
// row-major or transposed, 96^3, 32 x 256 x 128, 512 x 32 x 64). Larger ones and the other
// layouts are tiled (plan_tiles: a tile per ~0.5M, so threads from 10^6 on). Cutting 2^20..2^22
// into 6 x 64 tiles instead gained on some shapes and lost on others (-13% to +48% from run to
// run), and at 1 thread the tiled path is 2-12% faster there (the small path's 64-column B
// blocks then stream from L2). Products up to kDirectMax read a transposed A and row-major B in
// place (a row-major fp32 A is read in place at every size) instead of packing them: the copies
// would cost more than they save (measured 3-14% faster than packing at 2^21..2^23, e.g.
// 256 x 256 x 64 and 128 x 512 x 128).
constexpr double kSerialMax = 1 << 19;
constexpr double kVectorMatrixMin = 1 << 16;  // see vector_matrix's use in gemm_impl
constexpr double kVectorMatrixCachedBytes = 8 << 20;
constexpr double kSmallMax = 1 << 20;
constexpr double kSmallPiece = 1 << 18;
constexpr double kDirectMax = 1 << 23;

// A row-major fp32 B is also read in place, at any size, when A has at most this many rows: each
// B panel then serves at most 19 A panels, too few to pay for copying it (measured at 1 thread:
// 128 x 512 x 784 and 128 x 512 x 512 5-8% faster, 256^3 4%, 64 x 25088 x 288 7%; 512^3 alike,
// 4096 x 1024 x 256 slower) -- unless B's rows are a multiple of 4 KiB apart: a panel's rows then
// fall into 1/64 of the L2's sets and do not stay there between A panels (1024^3: 20% slower).
constexpr int64_t kDirectBMaxRows = 256;

// Rows of A read in place at a stride of a multiple of 4 KiB (1024 x 1024, 2048 x 2048 fp32 ...)
// sit at one offset within their pages: the 14 rows of a panel all fall into the same set of the
// 12-way L1 (whose set index is the offset in the page), and into sets of the L2 picked by which
// physical pages they got -- so the panel does not stay in L1 across its column tiles, and the
// speed depends on the process's page layout (Zen 5, 1024^3 at 1 thread: 115-190 GFLOP/s from
// run to run; packed: 185-200). Such an A is packed.
inline bool rows_share_cache_sets(int64_t row_stride_bytes) { return row_stride_bytes % 4096 == 0; }

// Threads that can run: the arena's slots, capped by a tbb::global_control limit if any.
inline int64_t usable_threads() {
  const size_t limit = tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism);
  return std::max<int64_t>(1, std::min<int64_t>(tbb::this_task_arena::max_concurrency(), int64_t(limit)));
}

// The threads a product of `madds` multiply-adds runs on: 1 up to kSerialMax (or when threads
// are not allowed, inside a batch of products run one per task), else all usable ones.
inline int64_t gemm_threads(double madds, bool allow_threads) {
  return allow_threads && madds > kSerialMax ? usable_threads() : 1;
}

// How C is cut into tiles (tm row ranges x tn column ranges of whole panels), and whether A is
// packed once up front (shared by all tiles) or by each tile for its own rows as it goes.
struct TilePlan {
  int64_t tm = 1, tn = 1;
  bool prepack_a = false;
};

// A parallel pass (fork + join of the TBB threads), in element copies: ~5 us.
constexpr double kBarrierCost = 20000;

// The tiling never changes results, only who computes which tile, so it may depend on the
// thread count. Aim for up to 4 tiles per thread (load balance on a shared machine) of at least
// ~0.5M multiply-adds, and pick the split that costs the least memory traffic: a tile packs the B
// panels of its columns and (without prepacking) the A panels of its rows, or streams its A rows
// in place.
template <class T>
TilePlan plan_tiles(const Problem<T>& pr, int64_t threads) {
  constexpr int64_t NR = Blocking<T>::NR, NC = Blocking<T>::NC;
  const double m = double(pr.m), n = double(pr.n), k = double(pr.k);
  const int64_t npanels = ceil_div(pr.n, NR);
  int64_t target = std::min<int64_t>(4 * threads, static_cast<int64_t>(m * n * k / 5e5));
  if (threads <= 1 || target < 2) target = 1;
  else if (target > threads) target = target / threads * threads;  // e.g. not 3 tiles on 2 threads

  TilePlan best;
  if (pr.direct_a) {
    // A is read in place: each column tile streams the A rows of its row tile from memory
    // (counted at half the price of a copied element: the kernel overlaps it with its FMAs; 0.5
    // measured as well as 0.25), each row tile packs the B panels of its column tile. Splitting
    // columns only would stream all of A once per tile (measured 3-8% slower 2-thread products
    // 2048..4096 x 256..1024 x k, the transformer's projections).
    double best_cost = std::numeric_limits<double>::infinity();
    for (int64_t tm = 1; tm <= std::min(pr.mpanels, target); ++tm) {
      const int64_t tn = std::min(npanels, ceil_div(target, tm));
      const double cost = 0.5 * m * k * double(tn) + k * n * double(tm);
      if (cost < best_cost) {
        best_cost = cost;
        best.tm = tm;
        best.tn = tn;
      }
    }
    return best;
  }
  // Prepacking: A copied once, plus two passes of synchronisation per k-block when threaded.
  // Rows are cut once per thread, so that each thread reads only its share of the packed A
  // (2-thread, against column tiles only: 1024^3 +6%, 784 x 512 x 128 TN +9%, others alike), and
  // columns into the rest, keeping at least two B panels per tile where there are enough (9-13%
  // faster 2-thread weight gradients 768 x 256 x 2048 TN).
  best.prepack_a = true;
  const int64_t row_tiles = std::min(threads, target);
  best.tm = std::min(pr.mpanels, row_tiles);
  const int64_t tn_cap = best.tm < row_tiles ? npanels : std::max<int64_t>(1, npanels / 2);  // few row panels
  best.tn = std::min(tn_cap, ceil_div(target, best.tm));
  best.tm = std::min(pr.mpanels, std::max(best.tm, ceil_div(target, best.tn)));  // few column panels
  double best_cost = m * k + k * n * double(best.tm) + (target > 1 ? 2.0 * kBarrierCost * double(pr.nkb) : 0.0);
  // Per-tile packing: A copied once per column tile; only when a tile is one column chunk wide
  // (otherwise every chunk would pack the tile's A panels again).
  for (int64_t tm = 1; tm <= std::min(pr.mpanels, target); ++tm) {
    const int64_t tn = std::min(npanels, ceil_div(target, tm));
    if (ceil_div(npanels, tn) * NR > NC) continue;
    const double cost = m * k * double(tn) + k * n * double(tm);
    if (cost <= best_cost) {  // ties: per-tile packing (no shared buffer, no extra pass)
      best_cost = cost;
      best = {tm, tn, false};
    }
  }
  return best;
}

template <class T>
void gemm_impl(int64_t m, int64_t n, int64_t k, ConstMatrix<T> a, ConstMatrix<T> b, Matrix<T> c, bool accumulate,
               bool allow_threads) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c.data[i * c.rs + j * c.cs] = T(0);
    return;
  }
  // Column-major C: compute C^T = B^T A^T instead (same products, same k order, same bits) so
  // the micro-kernel stores contiguous vectors.
  auto transpose_problem = [&] {
    std::swap(m, n);
    const ConstMatrix<T> at{a.data, a.cs, a.rs};
    a = {b.data, b.cs, b.rs};
    b = at;
    c = {c.data, c.cs, c.rs};
  };
  if (c.cs != 1 && c.rs == 1) transpose_problem();
  if (n <= narrow_cols<T>() && m >= kNarrowMinRows) transpose_problem();  // C^T is then column-major
  // The last n mod L columns, when at most narrow_cols, likewise: as a product of their own
  // (computed transposed), instead of a last column panel of mostly idle lanes -- in products up
  // to kDirectMax that run on one thread. Measured at 1 thread (in-process and alternating
  // processes): 100^3 1.07-1.2x, 97^3 1.09x, 100^3 TN 1.12x, 256 x 100 x 256 1.09x. At 2 threads
  // the tail on its own is a serial step (100^3 0.92x, 256 x 100 x 256 0.86x), and in larger
  // products its share is too small to pay for the copy of A it transposes (1024 x 1026 x 1024
  // 0.96x, 257^3 1.02x, others alike).
  const double all_madds = double(m) * double(n) * double(k);
  if (constexpr int64_t L = Batch<T>::size; all_madds <= kDirectMax && gemm_threads(all_madds, allow_threads) == 1 &&
                                            n > L && n % L <= narrow_cols<T>() && n % L > 0 && m >= kNarrowMinRows) {
    const int64_t body = n - n % L;
    gemm_impl<T>(m, n - body, k, a, {b.data + body * b.cs, b.rs, b.cs}, {c.data + body * c.cs, c.rs, c.cs},
                 accumulate, allow_threads);
    n = body;
  }

  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  const double madds = double(m) * double(n) * double(k);
  const bool direct = madds <= kDirectMax;
  // In place: row-major A for fp32 (fp64 packs it: fewer kernel variants), except a large
  // product's A whose row stride is a multiple of 4 KiB; k-major A (a.rs == 1) for small products
  // only (a large one strides across the whole of A per step).
  // (A single row is row-major whatever its row stride; up to kSkinnyRows rows a multiple of
  // 4 KiB apart still fit in one set of the 12-way L1.)
  const bool a_row_major = std::is_same_v<T, float> && (a.rs != 1 || m == 1) && a.cs == 1 &&
                           (direct || m <= kSkinnyRows || !rows_share_cache_sets(a.rs * int64_t(sizeof(T))));
  const bool b_in_place = b.cs == 1 && (direct || (std::is_same_v<T, float> && m <= kDirectBMaxRows &&
                                                    !rows_share_cache_sets(b.rs * int64_t(sizeof(T)))));
  Problem<T> pr{m, n, k, a, b, c, accumulate, k_block_size<T>(k), 0, ceil_div(m, MR),
                (direct && a.rs == 1) || a_row_major, a_row_major, b_in_place,
                a.rs == 1 && !direct && double(m) * double(k) >= kSweepMin, nullptr};
  pr.nkb = ceil_div(k, pr.kc);
  pr.a_from_memory = double(m) * double(k) * sizeof(T) >= kFromMemoryBytes;
  pr.b_from_memory = double(k) * double(n) * sizeof(T) >= kFromMemoryBytes;
  const int64_t npanels = ceil_div(n, NR);

  const int64_t threads = gemm_threads(madds, allow_threads);
  // One row of A and a row-major B: a vector times a matrix (see vector_matrix), cut into column
  // ranges for the threads; the last n mod L columns go through the general path below. Used
  // where the general path would pack B or walk down its columns with rows a multiple of 4 KiB
  // apart (1 x 4096 x 4096 1.5-1.6x, 1 x 2048 x 2048 2.1-3x), for mid-size serial products
  // (1 x 256 x 1024, 1 x 1024 x 256, 1 x 512 x 512: 1.7-3x) and, at 1 thread, for Bs of up to
  // 8 MiB (1 x 1000 x 1000 +18%, 1 x 1500 x 1500 +6%). Larger Bs read in place stream faster
  // down their column panels, which keep many rows in flight (1 x 2000 x 2000 -12%, 1 x 4000 x
  // 4000 -15% row by row), and so do threads splitting the panels of a cached B (1 x 1000 x 1000
  // at 2 threads: -35% cut into column ranges); tiny products lose to the extra call for the
  // last columns.
  if (m == 1 && b.cs == 1 && n >= static_cast<int64_t>(Batch<T>::size) &&
      (!b_in_place || rows_share_cache_sets(b.rs * int64_t(sizeof(T))) ||
       (madds >= kVectorMatrixMin &&
        (madds <= kSerialMax || (threads == 1 && madds * sizeof(T) <= kVectorMatrixCachedBytes))))) {
    constexpr int64_t L = Batch<T>::size;
    const int64_t vectors = n / L, body = vectors * L, parts = std::min(threads, vectors);
    run_parts(parts, [&](int64_t idx) {
      vector_matrix(pr, split_point(vectors, parts, idx) * L, split_point(vectors, parts, idx + 1) * L);
    });
    if (body < n)
      gemm_impl<T>(1, n - body, k, a, {b.data + body, b.rs, b.cs}, {c.data + body * c.cs, c.rs, c.cs}, accumulate,
                   false);
    return;
  }
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    const bool small_candidate = pr.direct_a && pr.direct_b && pr.nkb == 1;
    if (small_candidate && madds <= kSmallMax) {
      if (threads > 1 && small_product_parallel(pr, std::min<int64_t>(threads, static_cast<int64_t>(madds / kSmallPiece))))
        return;
      if (pr.a_row_major)
        small_product<true>(pr);
      else
        small_product<false>(pr);
      return;
    }
  }
#endif
  const TilePlan plan = plan_tiles<T>(pr, threads);
  const int64_t tm = plan.tm, tn = plan.tn;
  const bool prepack_a = plan.prepack_a;

  // Tile idx adds k-blocks [q0, q1).
  auto tile = [&](int64_t idx, int64_t q0, int64_t q1) {
    const int64_t ti = idx / tn, tj = idx % tn;
    const int64_t i0 = split_point(pr.mpanels, tm, ti) * MR;
    const int64_t i1 = std::min(m, split_point(pr.mpanels, tm, ti + 1) * MR);
    const int64_t j0 = split_point(npanels, tn, tj) * NR;
    const int64_t j1 = std::min(n, split_point(npanels, tn, tj + 1) * NR);
    if (i0 < i1 && j0 < j1) run_tile(pr, q0, q1, i0, i1, j0, j1);
  };
  auto all_tiles = [&](int64_t q0, int64_t q1) { run_parts(tm * tn, [&](int64_t idx) { tile(idx, q0, q1); }); };

  if (!prepack_a) {
    all_tiles(0, pr.nkb);
    return;
  }
  // Prepacked A, one k-block at a time: the packed block (m x kc) stays in cache while all
  // tiles use it. The blocks are added to C in order, as in the per-tile loop.
  PooledBuffer abuf;
  pr.apack = static_cast<T*>(abuf.get(static_cast<size_t>(pr.mpanels * MR * pr.kc + 64 * MR) * sizeof(T)));
  for (int64_t q = 0; q < pr.nkb; ++q) {
    if (tm * tn > 1 && pr.mpanels > 8) {
      tbb::parallel_for(tbb::blocked_range<int64_t>(0, pr.mpanels, 4), [&](const tbb::blocked_range<int64_t>& r) {
        pack_a_panels(pr, q, r.begin(), r.end(), pr.packed_a(q, r.begin()));
      });
    } else {
      pack_a_panels(pr, q, 0, pr.mpanels, pr.apack);
    }
    all_tiles(q, q + 1);
  }
}

template <class T>
void gemm_batched_impl(int64_t batch, int64_t m, int64_t n, int64_t k, ConstMatrix<T> a, int64_t sa, ConstMatrix<T> b,
                       int64_t sb, Matrix<T> c, int64_t sc, bool accumulate) {
  if (batch <= 0 || m <= 0 || n <= 0) return;
  auto one = [&](int64_t i, bool threads) {
    gemm_impl<T>(m, n, k, {a.data + i * sa, a.rs, a.cs}, {b.data + i * sb, b.rs, b.cs}, {c.data + i * sc, c.rs, c.cs},
                 accumulate, threads);
  };
  // A shared C (stride 0) is updated product by product, in batch order. Large products are
  // parallel on their own; small ones run one per task.
  const double madds = double(m) * double(n) * double(k);
  if (batch == 1 || sc == 0 || madds >= 8e6) {
    for (int64_t i = 0; i < batch; ++i) one(i, true);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, batch, 1), [&](const tbb::blocked_range<int64_t>& r) {
    for (int64_t i = r.begin(); i < r.end(); ++i) one(i, false);
  });
}

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, ConstMatrix<float> a, ConstMatrix<float> b, Matrix<float> c,
          bool accumulate) {
  gemm_impl<float>(m, n, k, a, b, c, accumulate, true);
}
void gemm(int64_t m, int64_t n, int64_t k, ConstMatrix<double> a, ConstMatrix<double> b, Matrix<double> c,
          bool accumulate) {
  gemm_impl<double>(m, n, k, a, b, c, accumulate, true);
}

void gemm_batched(int64_t batch, int64_t m, int64_t n, int64_t k, ConstMatrix<float> a, int64_t a_batch_stride,
                  ConstMatrix<float> b, int64_t b_batch_stride, Matrix<float> c, int64_t c_batch_stride,
                  bool accumulate) {
  gemm_batched_impl<float>(batch, m, n, k, a, a_batch_stride, b, b_batch_stride, c, c_batch_stride, accumulate);
}
void gemm_batched(int64_t batch, int64_t m, int64_t n, int64_t k, ConstMatrix<double> a, int64_t a_batch_stride,
                  ConstMatrix<double> b, int64_t b_batch_stride, Matrix<double> c, int64_t c_batch_stride,
                  bool accumulate) {
  gemm_batched_impl<double>(batch, m, n, k, a, a_batch_stride, b, b_batch_stride, c, c_batch_stride, accumulate);
}

}  // namespace tg::kernels
