// Correctness checker for tg::kernels::gemm / gemm_batched (fp32 and fp64).
//
// Compares against a naive long-double triple loop over many shapes and layouts: sizes around
// the register / cache block edges (0, 1, 3, 7, 13..17, 31..33, ... 1003), row-major with padded
// leading dimensions, transposed views (rs == 1), arbitrary and negative strides, unaligned
// pointers, column-major and fully strided C, accumulate mode, batched products with broadcast
// operands and a shared C. It also checks that
//   - C elements outside the view (padding, gaps between strided elements, guard zones) are
//     untouched and, without accumulate, C's old contents (NaN) are never read;
//   - results are bit-identical for 1, 2, 4 and 8 threads and between gemm_batched and gemm;
//   - small-integer inputs (exact arithmetic) give exact results.
// Error bound: |C - ref| <= (k + 2) * eps * (sum_k |a||b| + |C_old|), the classic bound for a
// k-term dot product.
//
// Usage: gemm_check [seed=1] [random_cases=300]; exits non-zero on the first failure.
// Also meant to run under -fsanitize=address,undefined.
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/kernels/gemm.hpp"

namespace {

using tg::kernels::ConstMatrix;
using tg::kernels::Matrix;

std::mt19937_64 rng;
int64_t checks = 0;

int64_t rand_int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

// How an operand of shape rows x cols is laid out in its buffer.
// RowNegative / TransposedNegative: contiguous rows (columns) walked backwards, which the GEMM
// reads in place like their positive twins.
enum class Layout { RowMajor, RowPadded, Transposed, TransposedPadded, Strided, Negative, RowNegative, TransposedNegative, Count };
const char* layout_name(Layout l) {
  static const char* names[] = {"row", "row+pad", "trans", "trans+pad", "strided", "negative", "row-neg", "trans-neg"};
  return names[int(l)];
}

// A matrix view into an owned buffer with guard zones on both sides.
template <class T>
struct Operand {
  std::vector<T> buf;
  int64_t offset = 0;  // element (0, 0) is buf[offset]
  int64_t rs = 0, cs = 0;
  int64_t rows = 0, cols = 0;
  T* origin() { return buf.data() + offset; }
  T& at(int64_t i, int64_t j) { return buf[offset + i * rs + j * cs]; }
};

template <class T>
Operand<T> make_operand(int64_t rows, int64_t cols, Layout layout, int misalign) {
  Operand<T> o;
  o.rows = rows;
  o.cols = cols;
  const int64_t pad = rand_int(1, 5);
  int64_t span = 0;  // elements between the lowest and highest addressed element, + 1
  switch (layout) {
    case Layout::RowMajor: o.rs = cols, o.cs = 1; break;
    case Layout::RowPadded: o.rs = cols + pad, o.cs = 1; break;
    case Layout::Transposed: o.rs = 1, o.cs = rows; break;
    case Layout::TransposedPadded: o.rs = 1, o.cs = rows + pad; break;
    case Layout::Strided: o.cs = rand_int(2, 3), o.rs = cols * o.cs + pad; break;
    case Layout::Negative: o.cs = -rand_int(1, 2), o.rs = -(cols * -o.cs + pad); break;
    case Layout::RowNegative: o.rs = -(cols + pad), o.cs = 1; break;
    case Layout::TransposedNegative: o.rs = 1, o.cs = -(rows + pad); break;
    default: break;
  }
  const int64_t guard = 37;
  int64_t lo = 0, hi = 0;  // relative offsets of extreme elements
  if (rows > 0 && cols > 0) {
    for (int64_t ci : {int64_t(0), rows - 1})
      for (int64_t cj : {int64_t(0), cols - 1}) {
        lo = std::min(lo, ci * o.rs + cj * o.cs);
        hi = std::max(hi, ci * o.rs + cj * o.cs);
      }
  }
  span = hi - lo + 1;
  o.buf.assign(size_t(span + 2 * guard + misalign), T(0));
  o.offset = guard + misalign - lo;
  return o;
}

template <class T>
void fill(Operand<T>& o, bool integers) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  for (int64_t i = 0; i < o.rows; ++i)
    for (int64_t j = 0; j < o.cols; ++j) o.at(i, j) = integers ? T(rand_int(-4, 4)) : T(d(rng));
}

struct Case {
  int64_t m, n, k;
  Layout la, lb, lc;
  bool accumulate;
  bool integers;
  int misalign;
};

std::string describe(const Case& c) {
  char s[256];
  std::snprintf(s, sizeof s, "m=%lld n=%lld k=%lld A=%s B=%s C=%s acc=%d int=%d mis=%d", (long long)c.m,
                (long long)c.n, (long long)c.k, layout_name(c.la), layout_name(c.lb), layout_name(c.lc),
                int(c.accumulate), int(c.integers), c.misalign);
  return s;
}

[[noreturn]] void fail(const std::string& what, const Case& c) {
  std::fprintf(stderr, "FAIL: %s\n  case: %s\n", what.c_str(), describe(c).c_str());
  std::exit(1);
}

template <class T>
ConstMatrix<T> view(Operand<T>& o) {
  return {o.origin(), o.rs, o.cs};
}
template <class T>
Matrix<T> mview(Operand<T>& o) {
  return {o.origin(), o.rs, o.cs};
}

// Runs f with at most `threads` TBB threads (an explicit arena, so 4 and 8 also work on 2 cores).
template <class F>
void with_threads(int threads, F&& f) {
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, size_t(threads));
  tbb::task_arena arena(threads);
  arena.execute(f);
}

// Checks C against the long-double reference on rows/cols subsets (all of them when small).
template <class T>
void verify(const Case& cs, Operand<T>& a, Operand<T>& b, const Operand<T>& c_before, Operand<T>& c) {
  const int64_t m = cs.m, n = cs.n, k = cs.k;
  std::vector<int64_t> rows, cols;
  auto pick = [](int64_t count, std::vector<int64_t>& out) {
    if (count <= 48) {
      for (int64_t i = 0; i < count; ++i) out.push_back(i);
    } else {  // edges + random interior
      for (int64_t i = 0; i < 16; ++i) out.push_back(i);
      for (int64_t i = count - 16; i < count; ++i) out.push_back(i);
      for (int i = 0; i < 16; ++i) out.push_back(rand_int(16, count - 17));
    }
  };
  pick(m, rows);
  pick(n, cols);
  const long double eps = std::numeric_limits<T>::epsilon();
  for (int64_t i : rows)
    for (int64_t j : cols) {
      long double ref = 0, mag = 0;
      for (int64_t p = 0; p < k; ++p) {
        const long double x = (long double)a.at(i, p) * (long double)b.at(p, j);
        ref += x;
        mag += std::fabs(x);
      }
      const T old = const_cast<Operand<T>&>(c_before).at(i, j);
      if (cs.accumulate) {
        ref += old;
        mag += std::fabs((long double)old);
      }
      const T got = c.at(i, j);
      const long double tol = cs.integers ? 0.0L : (k + 2) * eps * mag + std::numeric_limits<T>::min();
      if (!(std::fabs((long double)got - ref) <= tol)) {
        char s[200];
        std::snprintf(s, sizeof s, "C(%lld,%lld) = %.10Lg, expected %.10Lg (tol %.3Lg)", (long long)i,
                      (long long)j, (long double)got, ref, tol);
        fail(s, cs);
      }
      ++checks;
    }
  // Everything outside the view must be untouched (bitwise; NaN-safe).
  std::vector<char> inside(c.buf.size(), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) inside[size_t(c.offset + i * c.rs + j * c.cs)] = 1;
  for (size_t x = 0; x < c.buf.size(); ++x)
    if (!inside[x] && std::memcmp(&c.buf[x], &c_before.buf[x], sizeof(T)) != 0)
      fail("wrote outside C at buffer index " + std::to_string(x), cs);
}

template <class T>
void run_case(const Case& cs, bool check_threads) {
  Operand<T> a = make_operand<T>(cs.m, cs.k, cs.la, cs.misalign);
  Operand<T> b = make_operand<T>(cs.k, cs.n, cs.lb, (cs.misalign + 1) % 4);
  Operand<T> c = make_operand<T>(cs.m, cs.n, cs.lc, (cs.misalign + 2) % 4);
  fill(a, cs.integers);
  fill(b, cs.integers);
  // Guards / gaps hold a recognisable value; C's elements hold NaN unless accumulating.
  for (auto& x : c.buf) x = T(-7.25);
  if (cs.accumulate)
    fill(c, cs.integers);
  else
    for (int64_t i = 0; i < cs.m; ++i)
      for (int64_t j = 0; j < cs.n; ++j) c.at(i, j) = std::numeric_limits<T>::quiet_NaN();
  const Operand<T> before = c;

  tg::kernels::gemm(cs.m, cs.n, cs.k, view(a), view(b), mview(c), cs.accumulate);
  verify(cs, a, b, before, c);

  if (check_threads) {
    for (int threads : {1, 2, 4, 8}) {
      Operand<T> c2 = before;
      with_threads(threads, [&] { tg::kernels::gemm(cs.m, cs.n, cs.k, view(a), view(b), mview(c2), cs.accumulate); });
      if (std::memcmp(c2.buf.data(), c.buf.data(), c.buf.size() * sizeof(T)) != 0)
        fail("result differs with " + std::to_string(threads) + " threads", cs);
    }
  }
}

// Batched: `batch` products with each operand either per-item or broadcast (stride 0); the
// result of every item must be bit-identical to a plain gemm of that item.
template <class T>
void run_batched(int64_t batch, int64_t m, int64_t n, int64_t k, bool bcast_a, bool bcast_b, bool accumulate,
                 bool transpose_b) {
  Case cs{m, n, k, Layout::RowMajor, transpose_b ? Layout::Transposed : Layout::RowMajor, Layout::RowMajor,
          accumulate, false, 0};
  const int64_t a_items = bcast_a ? 1 : batch, b_items = bcast_b ? 1 : batch;
  const int64_t sa = bcast_a ? 0 : m * k + 3, sb = bcast_b ? 0 : k * n + 5, sc = m * n + 2;
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> A(size_t(std::max<int64_t>(1, a_items * (m * k + 3)))), B(size_t(std::max<int64_t>(1, b_items * (k * n + 5))));
  std::vector<T> C(size_t(batch * sc));
  for (auto& x : A) x = T(d(rng));
  for (auto& x : B) x = T(d(rng));
  for (auto& x : C) x = T(d(rng));
  const std::vector<T> C0 = C;
  const ConstMatrix<T> a{A.data(), k, 1};
  const ConstMatrix<T> b = transpose_b ? ConstMatrix<T>{B.data(), 1, k} : ConstMatrix<T>{B.data(), n, 1};
  std::vector<T> Cb;
  for (int threads : {1, 2, 8}) {
    C = C0;
    with_threads(threads, [&] {
      tg::kernels::gemm_batched(batch, m, n, k, a, sa, b, sb, Matrix<T>{C.data(), n, 1}, sc, accumulate);
    });
    if (threads == 1)
      Cb = C;
    else if (std::memcmp(C.data(), Cb.data(), C.size() * sizeof(T)) != 0)
      fail("batched result differs with " + std::to_string(threads) + " threads", cs);
  }
  std::vector<T> Ci = C0;
  for (int64_t i = 0; i < batch; ++i)
    tg::kernels::gemm(m, n, k, {a.data + i * sa, a.rs, a.cs}, {b.data + i * sb, b.rs, b.cs},
                      {Ci.data() + i * sc, n, 1}, accumulate);
  if (std::memcmp(Ci.data(), Cb.data(), C.size() * sizeof(T)) != 0) fail("batched != per-item gemm", cs);
  // Spot-check one item against the reference.
  const int64_t item = batch - 1;
  for (int64_t i = 0; i < m; i += std::max<int64_t>(1, m / 7))
    for (int64_t j = 0; j < n; j += std::max<int64_t>(1, n / 7)) {
      long double ref = accumulate ? (long double)C0[size_t(item * sc + i * n + j)] : 0, mag = std::fabs(ref);
      for (int64_t p = 0; p < k; ++p) {
        const long double x = (long double)a.data[item * sa + i * a.rs + p * a.cs] *
                              (long double)b.data[item * sb + p * b.rs + j * b.cs];
        ref += x;
        mag += std::fabs(x);
      }
      const long double got = Cb[size_t(item * sc + i * n + j)];
      if (!(std::fabs(got - ref) <= (k + 2) * (long double)std::numeric_limits<T>::epsilon() * mag + 1e-30L))
        fail("batched item value wrong", cs);
      ++checks;
    }
}

// A row-major operand whose rows are a multiple of 4 KiB apart is packed where the same rows a
// little further apart would be read in place: A of a large product, and (fp32) B of a product
// with few rows of A. Forwards, flipped (negative row stride) and padded (in place) rows of that
// operand must give the same bits.
template <class T>
void run_page_strided(char operand) {
  const bool is_b = operand == 'B';
  // A: rows 8 KiB apart, fp32 33 x 130 x 2048 (just above the size read in place regardless).
  // B: rows 4 KiB apart, fp32 33 x 1024 x 300 (likewise).
  const int64_t m = 33, n = is_b ? 4096 / int64_t(sizeof(T)) : 130, k = is_b ? 300 : 4096 / int64_t(sizeof(T)) * 2;
  const int64_t rows = is_b ? k : m, cols = is_b ? n : k, pad = is_b ? 5 : 3;  // the operand's layout
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> A(size_t(m * k)), B(size_t(k * n));
  for (auto& x : A) x = T(d(rng));
  for (auto& x : B) x = T(d(rng));
  const std::vector<T>& X = is_b ? B : A;
  std::vector<T> Xflip(X.size()), Xpad(size_t(rows * (cols + pad)));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      Xflip[size_t((rows - 1 - r) * cols + c)] = X[size_t(r * cols + c)];
      Xpad[size_t(r * (cols + pad) + c)] = X[size_t(r * cols + c)];
    }
  // C = A B with the operand under test given as (data, row stride).
  auto product = [&](const T* x, int64_t stride) {
    std::vector<T> C(size_t(m * n));
    const ConstMatrix<T> a = is_b ? ConstMatrix<T>{A.data(), k, 1} : ConstMatrix<T>{x, stride, 1};
    const ConstMatrix<T> b = is_b ? ConstMatrix<T>{x, stride, 1} : ConstMatrix<T>{B.data(), n, 1};
    tg::kernels::gemm(m, n, k, a, b, {C.data(), n, 1}, false);
    return C;
  };
  const std::vector<T> C1 = product(X.data(), cols), C2 = product(Xflip.data() + (rows - 1) * cols, -cols),
                       C3 = product(Xpad.data(), cols + pad);
  const Case cs{m, n, k, Layout::RowMajor, Layout::RowMajor, Layout::RowMajor, false, false, 0};
  const std::string name = std::string("a 4 KiB-strided ") + operand;
  if (C1 != C2) fail("a flipped " + name.substr(2) + " differs from the same rows forwards", cs);
  if (C1 != C3) fail(name + " (packed) differs from the same rows padded (in place)", cs);
  for (int64_t i = 0; i < m; i += is_b ? 4 : 1)
    for (int64_t j = 0; j < n; j += is_b ? 7 : 23) {
      double ref = 0;
      for (int64_t p = 0; p < k; ++p) ref += double(A[size_t(i * k + p)]) * double(B[size_t(p * n + j)]);
      const double tol = (std::is_same_v<T, float> ? 1e-4 : 1e-12) * std::sqrt(double(k));
      if (std::abs(double(C1[size_t(i * n + j)]) - ref) > tol) fail(name + " gives a wrong product", cs);
      ++checks;
    }
}

// A vector times a matrix whose rows are a multiple of 4 KiB apart is computed row by row of B (in column
// ranges when threaded, the last n mod L columns on the general path); the same rows 4 elements
// further apart go down B's column panels. Both must give the same bits, at 1 and 2 threads.
template <class T>
void run_vector_matrix_page_strided() {
  const int64_t n = 4093, k = 600;
  const int64_t page = (n * int64_t(sizeof(T)) + 4095) / 4096 * 4096 / int64_t(sizeof(T));  // >= n, whole pages
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> A(static_cast<size_t>(k)), B1(static_cast<size_t>(k * page)), B2(static_cast<size_t>(k * (page + 4)));
  for (auto& x : A) x = T(d(rng));
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j) B1[size_t(p * page + j)] = B2[size_t(p * (page + 4) + j)] = T(d(rng));
  const Case cs{1, n, k, Layout::RowMajor, Layout::RowPadded, Layout::RowMajor, false, false, 0};
  std::vector<T> first;
  for (int threads : {1, 2})
    for (int64_t stride : {page, page + 4}) {
      std::vector<T> C(static_cast<size_t>(n));
      with_threads(threads, [&] {
        tg::kernels::gemm(1, n, k, {A.data(), k, 1}, {stride == page ? B1.data() : B2.data(), stride, 1},
                          {C.data(), n, 1}, false);
      });
      if (first.empty()) {
        first = C;
        for (int64_t j = 0; j < n; j += 97) {
          double ref = 0;
          for (int64_t p = 0; p < k; ++p) ref += double(A[size_t(p)]) * double(B1[size_t(p * page + j)]);
          const double tol = (std::is_same_v<T, float> ? 1e-4 : 1e-12) * std::sqrt(double(k));
          if (std::abs(double(C[size_t(j)]) - ref) > tol) fail("a vector times a page-strided matrix is wrong", cs);
          ++checks;
        }
      } else if (C != first) {
        fail("a vector times a matrix differs between B row strides or thread counts", cs);
      }
    }
}

// A shared C (c_batch_stride == 0) with accumulate sums the products in batch order.
template <class T>
void run_shared_c() {
  const int64_t batch = 5, m = 19, n = 37, k = 11;
  std::vector<T> A(size_t(batch * m * k)), B(size_t(batch * k * n)), C(size_t(m * n), T(1)), C2 = C;
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  for (auto& x : A) x = T(d(rng));
  for (auto& x : B) x = T(d(rng));
  tg::kernels::gemm_batched(batch, m, n, k, {A.data(), k, 1}, m * k, {B.data(), n, 1}, k * n, {C.data(), n, 1}, 0, true);
  for (int64_t i = 0; i < batch; ++i)
    tg::kernels::gemm(m, n, k, {A.data() + i * m * k, k, 1}, {B.data() + i * k * n, n, 1}, {C2.data(), n, 1}, true);
  if (C != C2) fail("shared-C batched differs from sequential gemm", Case{m, n, k, {}, {}, {}, true, false, 0});
}

// The same values in every layout of A, B and C (row-major A/B are read in place by small
// products, other layouts are packed, a column-major C swaps the roles of A and B) must give
// bit-identical results: every path sums each element in the same order.
template <class T>
void run_layout_invariance(int64_t m, int64_t n, int64_t k, bool accumulate) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> av(size_t(m * k)), bv(size_t(k * n)), cv(size_t(m * n));
  for (auto& x : av) x = T(d(rng));
  for (auto& x : bv) x = T(d(rng));
  for (auto& x : cv) x = T(d(rng));
  std::vector<T> first;
  const Layout layouts[] = {Layout::RowMajor, Layout::Transposed, Layout::Strided, Layout::Negative};
  // A also padded: a row-major A is read in place, except a large product's whose row stride is a
  // multiple of 4 KiB (k = 1024 fp32 below), which is packed.
  for (Layout la : {Layout::RowMajor, Layout::RowPadded, Layout::Transposed, Layout::Strided, Layout::Negative})
    for (Layout lb : layouts)
      for (Layout lc : {Layout::RowMajor, Layout::Transposed, Layout::Strided}) {
        const Case cs{m, n, k, la, lb, lc, accumulate, false, int(la) % 4};
        Operand<T> a = make_operand<T>(m, k, la, cs.misalign), b = make_operand<T>(k, n, lb, 1);
        Operand<T> c = make_operand<T>(m, n, lc, 2);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t p = 0; p < k; ++p) a.at(i, p) = av[size_t(i * k + p)];
        for (int64_t p = 0; p < k; ++p)
          for (int64_t j = 0; j < n; ++j) b.at(p, j) = bv[size_t(p * n + j)];
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) c.at(i, j) = cv[size_t(i * n + j)];
        tg::kernels::gemm(m, n, k, view(a), view(b), mview(c), accumulate);
        std::vector<T> out(size_t(m * n));
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) out[size_t(i * n + j)] = c.at(i, j);
        if (first.empty())
          first = out;
        else if (std::memcmp(first.data(), out.data(), out.size() * sizeof(T)) != 0)
          fail("result depends on the operand layout", cs);
      }
}

// Column split invariance: each element of C is one FMA chain over k per k-block whatever path
// computes it, so the columns [j0, j1) of a product, computed as a product of their own (other
// paths: narrow products, column tails, other panel splits), have the bits of the whole product's.
template <class T>
void run_column_split(int64_t m, int64_t n, int64_t k, bool a_transposed) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> av(size_t(m * k)), bv(size_t(k * n)), full(size_t(m * n)), part(size_t(m * n));
  for (auto& x : av) x = T(d(rng));
  for (auto& x : bv) x = T(d(rng));
  const ConstMatrix<T> a = a_transposed ? ConstMatrix<T>{av.data(), 1, m} : ConstMatrix<T>{av.data(), k, 1};
  tg::kernels::gemm(m, n, k, a, {bv.data(), n, 1}, {full.data(), n, 1}, false);
  const Case cs{m, n, k, a_transposed ? Layout::Transposed : Layout::RowMajor, Layout::RowMajor, Layout::RowMajor,
                false, false, 0};
  for (const int64_t w : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{16}, int64_t{17}, n - 4, n - 1}) {
    if (w <= 0 || w > n) continue;
    for (const int64_t j0 : {int64_t{0}, n - w}) {
      tg::kernels::gemm(m, w, k, a, {bv.data() + j0, n, 1}, {part.data(), w, 1}, false);
      for (int64_t i = 0; i < m; ++i)
        if (std::memcmp(&part[size_t(i * w)], &full[size_t(i * n + j0)], size_t(w) * sizeof(T)) != 0)
          fail("columns [" + std::to_string(j0) + ", " + std::to_string(j0 + w) +
                   ") computed alone differ from the whole product's",
               cs);
      ++checks;
    }
  }
}

template <class T>
void run_all(int random_cases) {
  const char* tname = sizeof(T) == 4 ? "f32" : "f64";
  const int64_t edge_sizes[] = {1, 2, 3, 7, 8, 13, 14, 15, 16, 17, 29, 31, 32, 33, 47, 63, 65};
  int64_t cases = 0;

  // 1. Degenerate sizes: m, n or k == 0, and k == 0 with/without accumulate.
  for (int64_t m : {0, 1, 5})
    for (int64_t n : {0, 1, 9})
      for (int64_t k : {0, 1, 4})
        for (bool acc : {false, true}) {
          run_case<T>({m, n, k, Layout::RowMajor, Layout::RowMajor, Layout::RowMajor, acc, false, 0}, false);
          ++cases;
        }

  // 2. Every edge size for m and n against small / block-edge k, all layouts cycled through.
  int rot = 0;
  for (int64_t m : edge_sizes)
    for (int64_t n : edge_sizes)
      for (int64_t k : {1, 5, 17}) {
        const Layout la = Layout(rot % int(Layout::Count)), lb = Layout((rot / 2 + 1) % int(Layout::Count));
        const Layout lc = Layout((rot / 3) % int(Layout::Count));
        run_case<T>({m, n, k, la, lb, lc, rot % 5 == 0, rot % 7 == 0, rot % 4}, false);
        ++rot;
        ++cases;
      }

  // 3. k around the k-block boundaries (KC = 384 -> equal blocks rounded to 16).
  for (int64_t k : {15, 16, 63, 255, 383, 384, 385, 400, 769, 800, 1003})
    for (Layout la : {Layout::RowMajor, Layout::Transposed, Layout::Strided})
      for (bool acc : {false, true}) {
        run_case<T>({33, 47, k, la, la == Layout::RowMajor ? Layout::Transposed : Layout::RowMajor,
                     acc ? Layout::RowPadded : Layout::RowMajor, acc, false, 1},
                    false);
        ++cases;
      }

  // 4. Every layout combination on a medium shape that is tiled across threads; thread check.
  for (int la = 0; la < int(Layout::Count); ++la)
    for (int lb = 0; lb < int(Layout::Count); ++lb) {
      const Layout lc = Layout((la + lb) % int(Layout::Count));
      run_case<T>({131, 301, 67, Layout(la), Layout(lb), lc, (la + lb) % 2 == 1, false, (la + 2 * lb) % 4}, true);
      ++cases;
    }

  // 5. Larger shapes (sampled reference), including multi-block k, tall/skinny, wide, last column
  // panels at most half full (the one-vector kernels); thread check.
  const int64_t big[][3] = {{1003, 517, 1500}, {64, 4100, 288}, {2000, 33, 129}, {17, 1003, 1003},
                            {512, 512, 512}, {300, 1, 800}, {1, 700, 900}, {449, 785, 31},
                            {700, 48, 900},  {130, 80, 1030}, {1024, 20, 4096}};
  for (auto& s : big)
    for (int v = 0; v < 2; ++v) {
      run_case<T>({s[0], s[1], s[2], v ? Layout::Transposed : Layout::RowMajor, v ? Layout::RowMajor : Layout::Transposed,
                   v ? Layout::Transposed : Layout::RowMajor, v == 1, v == 0 && s[2] < 600, v},
                  true);
      ++cases;
    }

  // 6. Random shapes and layouts.
  for (int r = 0; r < random_cases; ++r) {
    const int64_t m = rand_int(0, 3) == 0 ? rand_int(1, 400) : rand_int(1, 70);
    const int64_t n = rand_int(0, 3) == 0 ? rand_int(1, 400) : rand_int(1, 70);
    const int64_t k = rand_int(0, 3) == 0 ? rand_int(1, 900) : rand_int(1, 70);
    const int64_t nl = int64_t(Layout::Count) - 1;
    run_case<T>({m, n, k, Layout(rand_int(0, nl)), Layout(rand_int(0, nl)), Layout(rand_int(0, nl)), rand_int(0, 1) == 1,
                 rand_int(0, 3) == 0, int(rand_int(0, 3))},
                m * n * k > 500000);
    ++cases;
  }

  // 7. Layout invariance, small (in-place operands) and large (packed) products; 200 x 300 x 400
  // reads a row-major B in place (few rows of A), its other layouts are packed; m = 1 with a
  // row-major B is a vector times a matrix (so is 700 x 1 x 300, computed as C^T = B^T A^T, when A
  // is transposed), and 5 x 1000 x 900 with a transposed B streams it panel by panel (the skinny
  // tiles). Products of at most a quarter of a vector of columns (fp32: 4, fp64: 2) and at least 16
  // rows are computed as C^T = B^T A^T (700 x 1 x 300, 300 x 3 x 200, 64 x 4 x 64, 16 x 2 x 900;
  // not 15 x 4 x 100 or 64 x 5 x 64), and so are the last n mod 16 (8) columns when as few, in
  // products up to 2^23 multiply-adds (40 x 100 x 60, 33 x 258 x 50, 200 x 1010 x 40).
  const int64_t inv[][3] = {{5, 7, 3},     {14, 32, 16},   {29, 45, 67},   {64, 64, 64},  {100, 90, 70},
                            {131, 97, 400}, {200, 300, 100}, {450, 70, 800}, {66, 128, 1024}, {200, 300, 400},
                            {1, 300, 500},  {1, 1024, 700},  {5, 1000, 900}, {700, 1, 300},  {300, 3, 200},
                            {64, 4, 64},    {16, 2, 900},    {15, 4, 100},   {64, 5, 64},   {40, 100, 60},
                            {33, 258, 50},  {200, 1010, 40}};
  for (auto& s : inv)
    for (bool acc : {false, true}) {
      run_layout_invariance<T>(s[0], s[1], s[2], acc);
      ++cases;
    }

  // Columns computed alone: narrow products and column tails (100 = 96 + 4, 1010 = 1008 + 2) against
  // the panels of the whole product, at sizes of the small, direct and packed paths.
  const int64_t splits[][3] = {{100, 100, 100}, {64, 196, 288}, {300, 20, 200}, {40, 1010, 30}, {17, 37, 900},
                               {700, 260, 500}};
  for (auto& s : splits)
    for (bool at : {false, true}) {
      run_column_split<T>(s[0], s[1], s[2], at);
      ++cases;
    }

  // 8. Paths picked by size and shape. Small serial products (6 x 64 tiles; the last columns on
  // the 14 x 32 and 14 x 16 kernels: 33-48 as 32 + 16; partial blocks packed) with operands read
  // in place, also backwards; a large transposed A packed by row sweeps (more than one group of
  // panels), with row-major C; products with few row or column panels split across threads; a
  // row-major B packed during its first use (tiles of at most 64 row panels: 700 x 90 x 400,
  // 3000 x 40 x 300 split across threads); small products of 2^19..2^20 multiply-adds cut into
  // pieces for the threads, by rows (100^3, 128 x 64 x 72, 12 x 300 x 200, 40 x 100 x 200) or, with
  // fewer than 12 rows, by columns (8 x 512 x 200, 11 x 200 x 384); products of few columns, threaded
  // as C^T = B^T A^T (3000 x 3 x 1000, 5000 x 1 x 700).
  for (int64_t n : {16, 32, 33, 40, 48, 64, 96, 100, 112, 127})
    for (int64_t m : {1, 6, 13, 64})
      for (Layout la : {Layout::RowMajor, Layout::Transposed, Layout::RowNegative, Layout::TransposedNegative}) {
        const Layout lb = (m + n) % 2 ? Layout::RowNegative : Layout::RowMajor;
        run_case<T>({m, n, 71, la, lb, Layout::RowMajor, (m + n + int64_t(la)) % 2 == 1, false, int(n % 4)}, false);
        ++cases;
      }
  const int64_t paths[][3] = {{1003, 517, 1500}, {700, 90, 400}, {8, 64, 20000}, {20, 96, 9000}, {3000, 40, 300},
                              {100, 100, 100}, {128, 64, 72},   {12, 300, 200}, {40, 100, 200}, {8, 512, 200},
                              {11, 200, 384},  {3000, 3, 1000}, {5000, 1, 700}};
  for (auto& s : paths)
    for (Layout la : {Layout::RowMajor, Layout::Transposed, Layout::TransposedNegative}) {
      const Layout lb = s[0] % 2 ? Layout::RowNegative : Layout::RowMajor;
      run_case<T>({s[0], s[1], s[2], la, lb, Layout::RowMajor, la == Layout::Transposed, false, 1}, true);
      ++cases;
    }

  // Few rows (at most 8) with a transposed B: B streamed panel by panel over all k-blocks (partial
  // last panels, accumulation, A in place, transposed or strided); 2 x 2100 x 2048 has a B of
  // more than 16 MiB, which is packed with prefetching.
  const int64_t skinny[][3] = {{1, 1000, 900}, {8, 333, 800}, {5, 77, 1000}, {3, 50, 400}, {2, 2100, 2048}};
  int srot = 0;
  for (auto& s : skinny)
    for (Layout la : {Layout::RowMajor, Layout::Transposed, Layout::Strided}) {
      const Layout lb = srot % 3 == 0 ? Layout::Transposed : srot % 3 == 1 ? Layout::TransposedPadded : Layout::TransposedNegative;
      run_case<T>({s[0], s[1], s[2], la, lb, Layout::RowMajor, la == Layout::Transposed, false, 2},
                  s[0] * s[1] * s[2] > 500000);
      ++srot;
      ++cases;
    }

  // One row of A and a row-major B (vector_matrix; the last n mod L columns on the general path):
  // rows of B a multiple of 4 KiB apart (n = 1024, 2048, 4096), mid-size serial products, B rows
  // padded or walked backwards, C strided, accumulation; thread check on the large ones.
  const int64_t vecmat[][2] = {{16, 4096}, {17, 4000}, {100, 700}, {256, 1024}, {1000, 300}, {1024, 1000}, {1024, 64}};
  int vrot = 0;
  for (auto& s : vecmat)
    for (Layout lb : {Layout::RowMajor, Layout::RowPadded, Layout::RowNegative}) {
      const Layout la = Layout(vrot % 3 == 0 ? Layout::RowMajor : vrot % 3 == 1 ? Layout::Transposed : Layout::Strided);
      const Layout lc = vrot % 4 == 3 ? Layout::Strided : Layout::RowMajor;
      run_case<T>({1, s[0], s[1], la, lb, lc, vrot % 2 == 1, false, vrot % 4}, s[0] * s[1] > 500000);
      ++vrot;
      ++cases;
    }
  for (const int64_t n : {2048, 4096})
    for (Layout la : {Layout::RowMajor, Layout::Transposed}) {
      run_case<T>({1, n, n + 3, la, Layout::RowMajor, Layout::RowMajor, la == Layout::Transposed, false, 0}, true);
      ++cases;
    }
  // 1 x 3005 x 600: by rows of B at 1 thread (a partial second 8 KiB block of sums), by column
  // panels at 2 -- the thread check compares the two paths bit for bit.
  run_case<T>({1, 3005, 600, Layout::RowMajor, Layout::RowMajor, Layout::RowMajor, false, false, 1}, true);
  run_vector_matrix_page_strided<T>();
  cases += 2;

  // 9. Batched products.
  for (bool ba : {false, true})
    for (bool bb : {false, true})
      for (bool acc : {false, true}) {
        if (ba && bb) continue;
        run_batched<T>(7, 29, 45, 23, ba, bb, acc, acc);
        run_batched<T>(3, 130, 257, 200, ba, bb, acc, !acc);  // big enough to be threaded per item
        cases += 2;
      }
  run_batched<T>(1, 5, 5, 5, false, false, false, false);
  run_batched<T>(4, 3, 2, 0, false, false, true, false);
  run_shared_c<T>();
  run_page_strided<T>('A');
  run_page_strided<T>('B');
  cases += 4;

  std::printf("%s: %lld cases passed\n", tname, (long long)cases);
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int random_cases = argc > 2 ? std::atoi(argv[2]) : 300;
  rng.seed(seed);
  run_all<float>(random_cases);
  run_all<double>(random_cases);
  std::printf("all passed (%lld element checks, seed %llu)\n", (long long)checks, (unsigned long long)seed);
  return 0;
}
