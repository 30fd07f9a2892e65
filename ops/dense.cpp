#include "ops/dense.hpp"

#include <cmath>
#include <limits>
#include <numeric>
#include <algorithm>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "core/random.hpp"

namespace tg::ops::dense {
namespace {

// A row-major f64 copy of a square (or any) matrix.
std::vector<double> to_f64(const Tensor& a, const char* op, bool square) {
  TG_CHECK(a.defined() && a.dim() == 2, "{}: expected a 2-D matrix, got {}", op, a.defined() ? a.shape() : Shape{});
  TG_CHECK(!square || a.shape()[0] == a.shape()[1], "{}: expected a square matrix, got shape {}", op, a.shape());
  TG_CHECK(a.is_floating_point(), "{}: expected a floating-point matrix, got {}", op, a.dtype());
  return a.to_vector<double>();
}

Tensor from_f64(std::vector<double> v, const Shape& s) { return from_vector(v, s); }

// Scales m by a power of two so that its largest magnitude is in [1, 2) and returns the exponent
// taken out (0 for a zero matrix). Exact, so results on ordinary matrices keep every bit; it keeps
// sums of squares of very large or very small entries from overflowing or underflowing.
int normalize_pow2(std::vector<double>& m, const char* op, const Shape& shape) {
  double big = 0;
  for (double x : m) {
    TG_CHECK(std::isfinite(x), "{}: the matrix (shape {}) has a non-finite entry {}", op, shape, x);
    big = std::max(big, std::fabs(x));
  }
  if (big == 0) return 0;
  const int e = std::ilogb(big);
  for (double& x : m) x = std::ldexp(x, -e);
  return e;
}

}  // namespace

Eigh eigh(const Tensor& a) {
  std::vector<double> m = to_f64(a, "eigh", true);
  const std::int64_t n = a.shape()[0];
  const int exponent = normalize_pow2(m, "eigh", a.shape());
  double scale = 0;
  for (double x : m) scale = std::max(scale, std::fabs(x));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i + 1; j < n; ++j)
      TG_CHECK(std::fabs(m[i * n + j] - m[j * n + i]) <= 1e-8 * std::max(scale, 1e-300),
               "eigh: the matrix (shape {}) is not symmetric (a[{}, {}] = {} vs a[{}, {}] = {})", a.shape(), i, j,
               std::ldexp(m[i * n + j], exponent), j, i, std::ldexp(m[j * n + i], exponent));
  std::vector<double> v(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) v[i * n + i] = 1;
  // Cyclic Jacobi: rotate away each off-diagonal element in turn until they are all negligible.
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      diag += m[i * n + i] * m[i * n + i];
      for (std::int64_t j = i + 1; j < n; ++j) off += m[i * n + j] * m[i * n + j];
    }
    if (off <= 1e-30 * std::max(diag, 1e-300)) break;
    for (std::int64_t p = 0; p < n; ++p) {
      for (std::int64_t q = p + 1; q < n; ++q) {
        const double apq = m[p * n + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (m[q * n + q] - m[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (std::int64_t k = 0; k < n; ++k) {  // columns p, q of m
          const double mkp = m[k * n + p], mkq = m[k * n + q];
          m[k * n + p] = c * mkp - s * mkq;
          m[k * n + q] = s * mkp + c * mkq;
        }
        for (std::int64_t k = 0; k < n; ++k) {  // rows p, q of m
          const double mpk = m[p * n + k], mqk = m[q * n + k];
          m[p * n + k] = c * mpk - s * mqk;
          m[q * n + k] = s * mpk + c * mqk;
        }
        for (std::int64_t k = 0; k < n; ++k) {  // accumulate the rotation into v
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::int64_t i, std::int64_t j) { return m[i * n + i] < m[j * n + j]; });
  std::vector<double> values(static_cast<std::size_t>(n)), vectors(static_cast<std::size_t>(n * n));
  for (std::int64_t c = 0; c < n; ++c) {
    values[c] = std::ldexp(m[order[c] * n + order[c]], exponent);
    for (std::int64_t r = 0; r < n; ++r) vectors[r * n + c] = v[r * n + order[c]];
  }
  return {from_f64(values, {n}), from_f64(vectors, {n, n})};
}

namespace {
// In-place LU with partial pivoting; returns the permutation sign (0 if singular).
double lu(std::vector<double>& m, std::vector<std::int64_t>& piv, std::int64_t n) {
  double sign = 1;
  piv.resize(static_cast<std::size_t>(n));
  for (std::int64_t k = 0; k < n; ++k) {
    std::int64_t best = k;
    for (std::int64_t i = k + 1; i < n; ++i)
      if (std::fabs(m[i * n + k]) > std::fabs(m[best * n + k])) best = i;
    piv[k] = best;
    if (m[best * n + k] == 0) return 0;
    if (best != k) {
      for (std::int64_t j = 0; j < n; ++j) std::swap(m[k * n + j], m[best * n + j]);
      sign = -sign;
    }
    for (std::int64_t i = k + 1; i < n; ++i) {
      const double f = m[i * n + k] /= m[k * n + k];
      for (std::int64_t j = k + 1; j < n; ++j) m[i * n + j] -= f * m[k * n + j];
    }
  }
  return sign;
}
}  // namespace

Tensor solve(const Tensor& a, const Tensor& b) {
  std::vector<double> m = to_f64(a, "solve", true);
  const std::int64_t n = a.shape()[0];
  TG_CHECK(b.defined() && (b.dim() == 1 || b.dim() == 2) && b.shape()[0] == n,
           "solve: b must be [{}] or [{}, k], got {}", n, n, b.defined() ? b.shape() : Shape{});
  TG_CHECK(b.is_floating_point(), "solve: expected a floating-point b, got {} (shape {})", b.dtype(), b.shape());
  const std::int64_t k = b.dim() == 2 ? b.shape()[1] : 1;
  std::vector<double> x = b.to_vector<double>();
  for (double e : m) TG_CHECK(std::isfinite(e), "solve: the matrix (shape {}) has a non-finite entry {}", a.shape(), e);
  for (double e : x) TG_CHECK(std::isfinite(e), "solve: b (shape {}) has a non-finite entry {}", b.shape(), e);
  // As LAPACK's gesv: only an exactly zero pivot is an error. An ill-conditioned matrix (a graded
  // diag(1e14, 1) is fine) gives what partial pivoting gives.
  std::vector<std::int64_t> piv;
  TG_CHECK(lu(m, piv, n) != 0, "solve: the matrix (shape {}) is singular", a.shape());
  for (std::int64_t c = 0; c < k; ++c) {
    auto at = [&](std::int64_t r) -> double& { return x[r * k + c]; };
    for (std::int64_t i = 0; i < n; ++i) std::swap(at(i), at(piv[i]));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < i; ++j) at(i) -= m[i * n + j] * at(j);
    for (std::int64_t i = n - 1; i >= 0; --i) {
      for (std::int64_t j = i + 1; j < n; ++j) at(i) -= m[i * n + j] * at(j);
      at(i) /= m[i * n + i];
    }
  }
  return from_f64(x, b.dim() == 2 ? Shape{n, k} : Shape{n});
}

SlogDet slogdet(const Tensor& a) {
  std::vector<double> m = to_f64(a, "slogdet", true);
  const std::int64_t n = a.shape()[0];
  std::vector<std::int64_t> piv;
  double sign = lu(m, piv, n);
  if (sign == 0) return {0.0, -INFINITY};
  double logabs = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = m[i * n + i];
    if (d < 0) sign = -sign;
    logabs += std::log(std::fabs(d));
  }
  return {sign, logabs};
}

Tensor matrix_power(const Tensor& a, std::int64_t p) {
  TG_CHECK(p >= 0, "matrix_power: the exponent must be >= 0, got {} (matrix of shape {})", p,
           a.defined() ? a.shape() : Shape{});
  const std::vector<double> m = to_f64(a, "matrix_power", true);
  const std::int64_t n = a.shape()[0];
  auto mul = [n](const std::vector<double>& x, const std::vector<double>& y) {
    std::vector<double> z(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < n; ++k)
        for (std::int64_t j = 0; j < n; ++j) z[i * n + j] += x[i * n + k] * y[k * n + j];
    return z;
  };
  std::vector<double> result(static_cast<std::size_t>(n * n), 0.0), base = m;
  for (std::int64_t i = 0; i < n; ++i) result[i * n + i] = 1;
  while (p > 0) {
    if (p & 1) result = mul(result, base);
    p >>= 1;
    if (p) base = mul(base, base);
  }
  return from_f64(result, {n, n});
}

Rank1 rank1_svd(const Tensor& a, int max_iters, double tol) {
  std::vector<double> m = to_f64(a, "rank1_svd", false);
  const std::int64_t rows = a.shape()[0], cols = a.shape()[1];
  TG_CHECK(rows > 0 && cols > 0, "rank1_svd: empty matrix {}", a.shape());
  TG_CHECK(max_iters > 0 && tol > 0, "rank1_svd: max_iters ({}) and tol ({}) must be positive", max_iters, tol);
  // Small matrices, and large ones whose power iteration does not settle: the full SVD's first
  // triple (exact to round-off, also for close or tied top singular values).
  auto exact = [&] {
    const Svd s = svd(a);
    return Rank1{s.s.to_vector<double>()[0], s.u.select(1, 0).contiguous(), s.v.select(1, 0).contiguous()};
  };
  const int exponent = normalize_pow2(m, "rank1_svd", a.shape());  // first: a NaN is reported as rank1_svd's
  if (std::min(rows, cols) <= kRank1ExactMax) return exact();
  auto norm = [](const std::vector<double>& x) {
    double s = 0;
    for (double e : x) s += e * e;
    return std::sqrt(s);
  };
  auto times_v = [&](const std::vector<double>& v) {  // a v
    std::vector<double> u(static_cast<std::size_t>(rows), 0.0);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < cols; ++j) u[i] += m[i * cols + j] * v[j];
    return u;
  };
  auto times_u = [&](const std::vector<double>& u) {  // a^T u
    std::vector<double> v(static_cast<std::size_t>(cols), 0.0);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < cols; ++j) v[j] += m[i * cols + j] * u[i];
    return v;
  };
  // Power iteration on a^T a from a fixed pseudo-random start (a structured start such as the
  // column sums can be orthogonal to the top singular vector, and the iteration would settle on
  // the second one), until v moves less than tol.
  Generator gen(0x5eed);
  std::vector<double> v = randn({cols}, DType::f64, gen).to_vector<double>();
  bool settled = false;
  for (int it = 0; it < max_iters && !settled; ++it) {
    const double vn = norm(v);
    if (vn == 0) break;
    for (double& x : v) x /= vn;
    std::vector<double> next = times_u(times_v(v));
    const double nn = norm(next);
    if (nn == 0) {
      v = std::move(next);
      settled = true;
      break;
    }
    double moved = 0;
    for (std::int64_t j = 0; j < cols; ++j) moved = std::max(moved, std::fabs(next[j] / nn - v[j]));
    v = std::move(next);
    settled = moved <= tol;
  }
  // Close top singular values (too slow to separate this way), or a zero matrix (then svd()'s unit
  // vectors, as for a small one).
  const double vn = norm(v);
  if (!settled || vn == 0) return exact();
  for (double& x : v) x /= vn;
  std::vector<double> u = times_v(v);
  const double sigma = norm(u);
  if (sigma == 0) return exact();
  for (double& x : u) x /= sigma;
  return {std::ldexp(sigma, exponent), from_f64(u, {rows}), from_f64(v, {cols})};
}

Svd svd(const Tensor& a) {
  std::vector<double> m = to_f64(a, "svd", false);
  const std::int64_t rows = a.shape()[0], cols = a.shape()[1];
  const int exponent = normalize_pow2(m, "svd", a.shape());  // largest |entry| now in [1, 2)
  // Work on the columns of the taller orientation: a wide matrix is decomposed as its transpose
  // (a^T = v s u^T), so the k = min(m, n) columns are rotated against each other.
  const bool wide = cols > rows;
  const std::int64_t len = wide ? cols : rows, k = wide ? rows : cols;  // column length, count
  std::vector<double> w(static_cast<std::size_t>(k * len));  // w[j] = column j, contiguous
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) (wide ? w[i * len + j] : w[j * len + i]) = m[i * cols + j];
  std::vector<double> v(static_cast<std::size_t>(k * k), 0.0);  // v[j] = column j of the rotation
  for (std::int64_t j = 0; j < k; ++j) v[j * k + j] = 1;
  auto dot = [](const double* x, const double* y, std::int64_t n) {
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += x[i] * y[i];
    return s;
  };
  // |x| without underflow of the squares: scaled by a power of two of its largest entry.
  auto safe_norm = [](const double* x, std::int64_t n) {
    double big = 0;
    for (std::int64_t i = 0; i < n; ++i) big = std::max(big, std::fabs(x[i]));
    if (big == 0) return 0.0;
    const int e = std::ilogb(big);
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += std::ldexp(x[i], -e) * std::ldexp(x[i], -e);
    return std::ldexp(std::sqrt(s), e);
  };
  auto rotate = [](double* x, double* y, std::int64_t n, double c, double s) {
    for (std::int64_t i = 0; i < n; ++i) {
      const double xi = x[i], yi = y[i];
      x[i] = c * xi - s * yi;
      y[i] = s * xi + c * yi;
    }
  };
  // Rotate each pair of columns until it is orthogonal to round-off (|w_p . w_q| <= len u |w_p| |w_q|).
  // A column whose norm is at most len u |a|_F is round-off (a rank-deficient matrix leaves such a
  // column inside the span of the others, where no rotation can make it orthogonal): it takes no
  // further part, as in LAPACK's dgesvj. A sweep without a rotation ends the iteration (quadratic
  // convergence: ~6-10 sweeps).
  const double eps = 2.3e-16 * static_cast<double>(std::max<std::int64_t>(len, 4));
  const double negligible = eps * std::sqrt(dot(w.data(), w.data(), k * len));  // entries <= 2: no overflow
  bool converged = false;
  for (int sweep = 0; sweep < 80 && !converged; ++sweep) {
    converged = true;
    for (std::int64_t p = 0; p < k; ++p)
      for (std::int64_t q = p + 1; q < k; ++q) {
        double* wp = &w[p * len];
        double* wq = &w[q * len];
        const double alpha = dot(wp, wp, len), beta = dot(wq, wq, len), gamma = dot(wp, wq, len);
        const double np = std::sqrt(alpha), nq = std::sqrt(beta);
        if (np <= negligible || nq <= negligible || std::fabs(gamma) <= eps * np * nq) continue;
        // tan of the angle that zeroes the pair's inner product: the smaller root of t^2 + 2 zeta t - 1.
        const double zeta = (beta - alpha) / (2 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::fabs(zeta) + std::sqrt(1 + zeta * zeta));
        if (t == 0) continue;  // the rotation would not change anything
        converged = false;
        const double c = 1 / std::sqrt(1 + t * t), s = c * t;
        rotate(wp, wq, len, c, s);
        rotate(&v[p * k], &v[q * k], k, c, s);
      }
  }
  TG_CHECK(converged, "svd: one-sided Jacobi did not converge for shape {}", a.shape());
  // Singular values are the column norms; sort them descending (ties keep column order).
  std::vector<double> sigma(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j) sigma[j] = safe_norm(&w[j * len], len);
  std::vector<std::int64_t> order(static_cast<std::size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) { return sigma[x] > sigma[y]; });
  // Left vectors: the normalised columns. A negligible column is normalised and orthogonalised
  // against the others (twice); if little of it is left it was round-off inside their span, and a
  // unit vector orthogonal to all of them replaces it (so u always has orthonormal columns).
  std::vector<double> left(static_cast<std::size_t>(k * len), 0.0);  // left[j] = left column j
  std::vector<std::int64_t> small;
  for (std::int64_t j = 0; j < k; ++j) {
    const std::int64_t src = order[j];
    if (sigma[src] > negligible) {
      for (std::int64_t i = 0; i < len; ++i) left[j * len + i] = w[src * len + i] / sigma[src];
    } else {
      small.push_back(j);
    }
  }
  auto orthogonalise = [&](double* x, std::int64_t j) {  // against every other column (zeros drop out)
    for (int pass = 0; pass < 2; ++pass)
      for (std::int64_t o = 0; o < k; ++o) {
        if (o == j) continue;
        const double* y = &left[o * len];
        const double proj = dot(x, y, len);
        for (std::int64_t i = 0; i < len; ++i) x[i] -= proj * y[i];
      }
    return safe_norm(x, len);
  };
  for (std::int64_t j : small) {
    double* x = &left[j * len];
    const std::int64_t src = order[j];
    double rest = 0;
    if (sigma[src] > 0) {
      const int e = std::ilogb(sigma[src]);  // normalise in two exact steps: no overflow for tiny sigma
      for (std::int64_t i = 0; i < len; ++i) x[i] = std::ldexp(w[src * len + i], -e) / std::ldexp(sigma[src], -e);
      rest = orthogonalise(x, j);
    }
    if (rest <= 0.5) {
      // The standard basis vector least covered by the columns so far (its remainder is at least
      // sqrt((len - columns) / len) > 0).
      std::int64_t best = 0;
      double best_rest = -1;
      for (std::int64_t b = 0; b < len; ++b) {
        double covered = 0;
        for (std::int64_t o = 0; o < k; ++o)
          if (o != j) covered += left[o * len + b] * left[o * len + b];
        if (1 - covered > best_rest) {
          best_rest = 1 - covered;
          best = b;
        }
      }
      std::fill(x, x + len, 0.0);
      x[best] = 1;
      rest = orthogonalise(x, j);
    }
    for (std::int64_t i = 0; i < len; ++i) x[i] /= rest;
  }
  // Assemble u [rows, k], s [k], v [cols, k]: for a wide matrix the roles of the two sides swap.
  std::vector<double> s_out(static_cast<std::size_t>(k)), u_out(static_cast<std::size_t>(rows * k)),
      v_out(static_cast<std::size_t>(cols * k));
  for (std::int64_t j = 0; j < k; ++j) {
    s_out[j] = std::ldexp(sigma[order[j]], exponent);
    const double* l = &left[j * len];
    const double* r = &v[order[j] * k];
    for (std::int64_t i = 0; i < len; ++i) (wide ? v_out[i * k + j] : u_out[i * k + j]) = l[i];
    for (std::int64_t i = 0; i < k; ++i) (wide ? u_out[i * k + j] : v_out[i * k + j]) = r[i];
  }
  return {from_f64(u_out, {rows, k}), from_f64(s_out, {k}), from_f64(v_out, {cols, k})};
}

namespace {

// Eigenvalues of the upper Hessenberg matrix h (1-based, h[i * (n + 1) + j]) by the Francis
// double-shift QR iteration with deflation at negligible subdiagonal elements (EISPACK's hqr).
// h is destroyed. Returns false when an eigenvalue needs more than 60 iterations.
bool hessenberg_eigenvalues(std::vector<double>& h, std::int64_t n, std::vector<double>& wr, std::vector<double>& wi) {
  const std::int64_t ld = n + 1;
  auto H = [&](std::int64_t i, std::int64_t j) -> double& { return h[static_cast<std::size_t>(i * ld + j)]; };
  auto sign = [](double x, double y) { return y >= 0 ? std::fabs(x) : -std::fabs(x); };
  std::int64_t nn = n, l = 1;
  // Whether H(k, k-1) may be set to 0: LAPACK dlahqr's test (Ahues and Tisseur), which compares it
  // with its neighbours rather than the whole matrix's norm, so that small eigenvalues of a matrix
  // with much larger ones survive (EISPACK's test zeroed 1 next to 1e17 on a zero diagonal).
  const double ulp = std::numeric_limits<double>::epsilon();
  const double smlnum = std::numeric_limits<double>::min() * (static_cast<double>(n) / ulp);
  auto negligible_subdiagonal = [&](std::int64_t k) {
    const double sub = std::fabs(H(k, k - 1));
    if (sub <= smlnum) return true;
    double tst = std::fabs(H(k - 1, k - 1)) + std::fabs(H(k, k));
    if (tst == 0) {
      if (k - 2 >= 1) tst += std::fabs(H(k - 1, k - 2));
      if (k + 1 <= nn) tst += std::fabs(H(k + 1, k));
    }
    if (sub > ulp * tst) return false;
    const double ab = std::max(sub, std::fabs(H(k - 1, k))), ba = std::min(sub, std::fabs(H(k - 1, k)));
    const double diff = std::fabs(H(k - 1, k - 1) - H(k, k));
    const double aa = std::max(std::fabs(H(k, k)), diff), bb = std::min(std::fabs(H(k, k)), diff);
    const double sum = aa + ab;
    return ba * (ab / sum) <= std::max(smlnum, ulp * (bb * (aa / sum)));
  };
  double t = 0;  // the accumulated exceptional shift
  double p = 0, q = 0, r = 0, s = 0, w = 0, x = 0, y = 0, z = 0;
  while (nn >= 1) {
    int its = 0;
    do {
      for (l = nn; l >= 2; --l) {  // look for a single small subdiagonal element
        if (negligible_subdiagonal(l)) {
          H(l, l - 1) = 0;
          break;
        }
      }
      x = H(nn, nn);
      if (l == nn) {  // one root found
        wr[nn] = x + t;
        wi[nn] = 0;
        --nn;
      } else {
        y = H(nn - 1, nn - 1);
        w = H(nn, nn - 1) * H(nn - 1, nn);
        if (l == nn - 1) {  // two roots found: the trailing 2 x 2 block's
          p = 0.5 * (y - x);
          q = p * p + w;
          z = std::sqrt(std::fabs(q));
          x += t;
          if (q >= 0) {  // a real pair
            z = p + sign(z, p);
            wr[nn - 1] = wr[nn] = x + z;
            if (z != 0) wr[nn] = x - w / z;
            wi[nn - 1] = wi[nn] = 0;
          } else {  // a complex pair
            wr[nn - 1] = wr[nn] = x + p;
            wi[nn - 1] = z;
            wi[nn] = -z;
          }
          nn -= 2;
        } else {  // no root yet: one double-shift QR step on rows/columns l..nn
          if (its == 60) return false;
          if (its != 0 && its % 10 == 0) {  // an exceptional shift breaks rare cycles
            t += x;
            for (std::int64_t i = 1; i <= nn; ++i) H(i, i) -= x;
            s = std::fabs(H(nn, nn - 1)) + std::fabs(H(nn - 1, nn - 2));
            y = x = 0.75 * s;
            w = -0.4375 * s * s;
          }
          ++its;
          std::int64_t m = nn - 2;
          for (; m >= l; --m) {  // two consecutive small subdiagonal elements start the bulge
            z = H(m, m);
            r = x - z;
            s = y - z;
            p = (r * s - w) / H(m + 1, m) + H(m, m + 1);
            q = H(m + 1, m + 1) - z - r - s;
            r = H(m + 2, m + 1);
            s = std::fabs(p) + std::fabs(q) + std::fabs(r);
            p /= s;
            q /= s;
            r /= s;
            if (m == l) break;
            const double u = std::fabs(H(m, m - 1)) * (std::fabs(q) + std::fabs(r));
            const double v = std::fabs(p) * (std::fabs(H(m - 1, m - 1)) + std::fabs(z) + std::fabs(H(m + 1, m + 1)));
            if (u + v == v) break;
          }
          for (std::int64_t i = m + 2; i <= nn; ++i) {
            H(i, i - 2) = 0;
            if (i != m + 2) H(i, i - 3) = 0;
          }
          for (std::int64_t k = m; k <= nn - 1; ++k) {  // chase the bulge down the matrix
            if (k != m) {
              p = H(k, k - 1);
              q = H(k + 1, k - 1);
              r = 0;
              if (k != nn - 1) r = H(k + 2, k - 1);
              if ((x = std::fabs(p) + std::fabs(q) + std::fabs(r)) != 0) {
                p /= x;
                q /= x;
                r /= x;
              }
            }
            if ((s = sign(std::sqrt(p * p + q * q + r * r), p)) != 0) {
              if (k == m) {
                if (l != m) H(k, k - 1) = -H(k, k - 1);
              } else {
                H(k, k - 1) = -s * x;
              }
              p += s;
              x = p / s;
              y = q / s;
              z = r / s;
              q /= p;
              r /= p;
              for (std::int64_t j = k; j <= nn; ++j) {  // row modification
                p = H(k, j) + q * H(k + 1, j);
                if (k != nn - 1) {
                  p += r * H(k + 2, j);
                  H(k + 2, j) -= p * z;
                }
                H(k + 1, j) -= p * y;
                H(k, j) -= p * x;
              }
              const std::int64_t mmin = std::min(nn, k + 3);
              for (std::int64_t i = l; i <= mmin; ++i) {  // column modification
                p = x * H(i, k) + y * H(i, k + 1);
                if (k != nn - 1) {
                  p += z * H(i, k + 2);
                  H(i, k + 2) -= p * r;
                }
                H(i, k + 1) -= p * q;
                H(i, k) -= p;
              }
            }
          }
        }
      }
    } while (nn >= 1 && l < nn - 1);
  }
  return true;
}

}  // namespace

Tensor eigvals(const Tensor& a) {
  const std::vector<double> m = to_f64(a, "eigvals", true);
  const std::int64_t n = a.shape()[0], ld = n + 1;
  for (double x : m) TG_CHECK(std::isfinite(x), "eigvals: the matrix (shape {}) has a non-finite entry {}", a.shape(), x);
  // Balance first: a diagonal similarity by powers of two (exact) that evens out row and column
  // norms, which keeps the QR iteration's round-off relative to the balanced, smaller norm. It runs
  // in long double (exponents to +-16382), so that no entry is lost to overflow or underflow before
  // balancing has brought the matrix to a sane range ([[0, 1e-170], [1e170, 0]] becomes [[0, 1], [1, 0]]).
  std::vector<long double> b(static_cast<std::size_t>(ld * ld), 0.0L);  // 1-based
  auto B = [&](std::int64_t i, std::int64_t j) -> long double& { return b[static_cast<std::size_t>(i * ld + j)]; };
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) B(i + 1, j + 1) = m[i * n + j];
  for (bool done = false; !done;) {
    done = true;
    for (std::int64_t i = 1; i <= n; ++i) {
      long double c = 0, r = 0;
      for (std::int64_t j = 1; j <= n; ++j)
        if (j != i) {
          c += std::fabs(B(j, i));
          r += std::fabs(B(i, j));
        }
      if (c == 0 || r == 0) continue;
      long double g = r / 2, f = 1;
      const long double total = c + r;
      while (c < g) {
        f *= 2;
        c *= 4;
      }
      g = r * 2;
      while (c > g) {
        f /= 2;
        c /= 4;
      }
      if ((c + r) / f < 0.95L * total) {
        done = false;
        for (std::int64_t j = 1; j <= n; ++j) B(i, j) /= f;
        for (std::int64_t j = 1; j <= n; ++j) B(j, i) *= f;
      }
    }
  }
  // Back to double, scaled by a power of two so that the largest entry is in [1, 2) (exact).
  long double big = 0;
  for (long double x : b) big = std::max(big, std::fabs(x));
  const int exponent = big > 0 ? std::ilogb(big) : 0;
  std::vector<double> h(static_cast<std::size_t>(ld * ld), 0.0);
  auto H = [&](std::int64_t i, std::int64_t j) -> double& { return h[static_cast<std::size_t>(i * ld + j)]; };
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<double>(std::ldexp(b[i], -exponent));
  // Reduce to upper Hessenberg form by Gaussian elimination with pivoting (a similarity transform).
  for (std::int64_t k = 2; k < n; ++k) {
    double x = 0;
    std::int64_t piv = k;
    for (std::int64_t j = k; j <= n; ++j)
      if (std::fabs(H(j, k - 1)) > std::fabs(x)) {
        x = H(j, k - 1);
        piv = j;
      }
    if (piv != k) {
      for (std::int64_t j = k - 1; j <= n; ++j) std::swap(H(piv, j), H(k, j));
      for (std::int64_t j = 1; j <= n; ++j) std::swap(H(j, piv), H(j, k));
    }
    if (x == 0) continue;
    for (std::int64_t i = k + 1; i <= n; ++i) {
      const double y = H(i, k - 1) / x;
      if (y == 0) continue;
      H(i, k - 1) = 0;
      for (std::int64_t j = k; j <= n; ++j) H(i, j) -= y * H(k, j);
      for (std::int64_t j = 1; j <= n; ++j) H(j, k) += y * H(j, i);
    }
  }
  std::vector<double> wr(static_cast<std::size_t>(ld), 0.0), wi(static_cast<std::size_t>(ld), 0.0);
  TG_CHECK(hessenberg_eigenvalues(h, n, wr, wi), "eigvals: the QR iteration did not converge for shape {}", a.shape());
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 1);
  // Magnitudes rounded to 40 significant bits, so that eigenvalues of equal magnitude (+-1 of a
  // permutation) are ordered by real part, not by round-off; exact comparisons of the rounded keys
  // keep the order a strict weak ordering.
  auto magnitude_key = [&](std::int64_t i) {
    int e = 0;
    const double f = std::frexp(std::hypot(wr[i], wi[i]), &e);
    return std::ldexp(std::round(std::ldexp(f, 40)), e - 40);
  };
  std::sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) {
    const double mx = magnitude_key(x), my = magnitude_key(y);
    if (mx != my) return mx > my;
    if (wr[x] != wr[y]) return wr[x] > wr[y];
    return wi[x] > wi[y];
  });
  std::vector<double> out(static_cast<std::size_t>(2 * n));
  for (std::int64_t i = 0; i < n; ++i) {
    out[2 * i] = std::ldexp(wr[order[i]], exponent);
    out[2 * i + 1] = std::ldexp(wi[order[i]], exponent);
  }
  return from_f64(out, {n, 2});
}

double spectral_radius(const Tensor& a) {
  const std::vector<double> lambda = eigvals(a).to_vector<double>();
  double rho = 0;
  for (std::size_t i = 0; i + 1 < lambda.size(); i += 2) rho = std::max(rho, std::hypot(lambda[i], lambda[i + 1]));
  return rho;
}

Tensor poly_roots(const Tensor& coefficients) {
  TG_CHECK(coefficients.defined() && coefficients.dim() == 1, "poly_roots: expected a 1-D tensor of coefficients, got {}",
           coefficients.defined() ? coefficients.shape() : Shape{});
  TG_CHECK(coefficients.is_floating_point(), "poly_roots: expected floating-point coefficients, got {}", coefficients.dtype());
  const std::vector<double> c = coefficients.to_vector<double>();
  for (double x : c) TG_CHECK(std::isfinite(x), "poly_roots: non-finite coefficient {}", x);
  if (c.empty()) return zeros({0, 2}, DType::f64);  // as numpy.roots([])
  const auto first = std::find_if(c.begin(), c.end(), [](double x) { return x != 0; });
  TG_CHECK(first != c.end(), "poly_roots: all {} coefficients are zero: every number is a root", c.size());
  const auto last = std::find_if(c.rbegin(), c.rend(), [](double x) { return x != 0; }).base();  // one past
  const std::vector<double> p(first, last);  // leading coefficient p[0] != 0, constant term != 0
  const std::int64_t zero_roots = c.end() - last, d = static_cast<std::int64_t>(p.size()) - 1;
  // Companion matrix: first row -p[1..d] / p[0], ones on the subdiagonal.
  std::vector<double> comp(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t j = 0; j < d; ++j) {
    comp[j] = -p[j + 1] / p[0];
    TG_CHECK(std::isfinite(comp[j]), "poly_roots: coefficient {} / leading coefficient {} overflows: the roots are beyond the double range",
             p[j + 1], p[0]);
  }
  for (std::int64_t i = 1; i < d; ++i) comp[i * d + i - 1] = 1;
  std::vector<double> roots = d > 0 ? eigvals(from_f64(comp, {d, d})).to_vector<double>() : std::vector<double>{};
  roots.resize(static_cast<std::size_t>(2 * (d + zero_roots)), 0.0);  // zero roots come last (smallest magnitude)
  return from_f64(roots, {d + zero_roots, 2});
}

MonarchFactors monarch_project(const Tensor& a, std::int64_t K, std::int64_t J) {
  std::vector<double> m = to_f64(a, "monarch_project", false);
  const std::int64_t rows = a.shape()[0], cols = a.shape()[1];
  TG_CHECK(K > 0 && J > 0 && cols % K == 0 && rows % J == 0,
           "monarch_project: K = {} must divide the {} columns and J = {} the {} rows of a {}", K, cols, J, rows, a.shape());
  // Scaled by a power of two (exact) so that sigma cannot overflow; the factors get half of it each.
  const int exponent = normalize_pow2(m, "monarch_project", a.shape());
  const std::int64_t I = cols / K, Lo = rows / J;
  std::vector<double> w1(static_cast<std::size_t>(K * J * I), 0.0), w2(static_cast<std::size_t>(J * Lo * K), 0.0);
  if (I > 0 && Lo > 0) {
    // The K J slices are independent: in parallel, each writing its own factor entries.
    parallel_for(K * J, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<double> slice(static_cast<std::size_t>(Lo * I));
      for (std::int64_t kj = begin; kj < end; ++kj) {
        const std::int64_t k = kj / J, j = kj % J;
        for (std::int64_t l = 0; l < Lo; ++l)
          for (std::int64_t i = 0; i < I; ++i) slice[l * I + i] = m[(l * J + j) * cols + k * I + i];
        const Rank1 r = rank1_svd(from_f64(slice, {Lo, I}));
        const double root = std::sqrt(r.sigma);
        const std::vector<double> u = r.u.to_vector<double>(), v = r.v.to_vector<double>();
        for (std::int64_t l = 0; l < Lo; ++l) w2[(j * Lo + l) * K + k] = root * u[l];
        for (std::int64_t i = 0; i < I; ++i) w1[(k * J + j) * I + i] = root * v[i];
      }
    });
  }
  const int e1 = exponent / 2, e2 = exponent - e1;  // w2 w1 scales by 2^exponent
  for (double& x : w1) x = std::ldexp(x, e1);
  for (double& x : w2) x = std::ldexp(x, e2);
  return {from_f64(w1, {K, J, I}), from_f64(w2, {J, Lo, K})};
}

Tensor sqrtm_psd(const Tensor& a) {
  Eigh e;
  try {
    e = eigh(a);
  } catch (const Error& err) {  // name the function the caller called
    TG_FAIL("sqrtm_psd: {}", err.what());
  }
  const std::int64_t n = a.shape()[0];
  const std::vector<double> w = e.values.to_vector<double>(), q = e.vectors.to_vector<double>();
  // Negative eigenvalues at the level of the input's round-off are clamped to 0; larger ones mean
  // the matrix is not positive semi-definite, and its square root is not real.
  if (n > 0) {
    const double largest = std::max(std::fabs(w.front()), std::fabs(w.back()));
    const double tol = std::sqrt(a.dtype() == DType::f32 ? double(std::numeric_limits<float>::epsilon())
                                                          : std::numeric_limits<double>::epsilon());
    TG_CHECK(w.front() >= -tol * largest,
             "sqrtm_psd: the matrix (shape {}) is not positive semi-definite: its smallest eigenvalue is {:.6g} "
             "(largest magnitude {:.6g})",
             a.shape(), w.front(), largest);
  }
  std::vector<double> r(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t k = 0; k < n; ++k) {
    const double s = std::sqrt(std::max(0.0, w[k]));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j) r[i * n + j] += q[i * n + k] * s * q[j * n + k];
  }
  return from_f64(r, {n, n});
}

}  // namespace tg::ops::dense
