#include "ops/dense.hpp"

#include <cmath>
#include <numeric>
#include <algorithm>
#include <vector>

#include "core/autograd.hpp"

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
               "eigh: the matrix is not symmetric (a[{}, {}] = {} vs a[{}, {}] = {})", i, j, m[i * n + j], j, i, m[j * n + i]);
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
  std::vector<std::int64_t> piv;
  double scale = 0;
  for (double e : m) scale = std::max(scale, std::fabs(e));
  TG_CHECK(lu(m, piv, n) != 0, "solve: the matrix is singular");
  for (std::int64_t i = 0; i < n; ++i)
    TG_CHECK(std::fabs(m[i * n + i]) > 1e-14 * scale * static_cast<double>(n),
             "solve: the matrix is singular to working precision (pivot {} is {:.3g})", i, m[i * n + i]);
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
  TG_CHECK(p >= 0, "matrix_power: the exponent must be >= 0, got {}", p);
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
  const int exponent = normalize_pow2(m, "rank1_svd", a.shape());
  TG_CHECK(rows > 0 && cols > 0, "rank1_svd: empty matrix {}", a.shape());
  TG_CHECK(max_iters > 0 && tol > 0, "rank1_svd: max_iters ({}) and tol ({}) must be positive", max_iters, tol);
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
  // The right singular vector v: for small matrices the top eigenvector of the Gram matrix a^T a
  // (or of a a^T, then v = a^T u), which is exact however close the top singular values are; for
  // large ones power iteration from the column sums plus a ramp, until v stops moving.
  std::vector<double> v;
  const std::int64_t small = std::min(rows, cols);
  if (small <= kRank1ExactMax) {
    const bool by_cols = cols <= rows;
    std::vector<double> gram(static_cast<std::size_t>(small * small), 0.0);
    for (std::int64_t p = 0; p < small; ++p)
      for (std::int64_t q = 0; q <= p; ++q) {
        double s = 0;
        for (std::int64_t k = 0; k < (by_cols ? rows : cols); ++k)
          s += by_cols ? m[k * cols + p] * m[k * cols + q] : m[p * cols + k] * m[q * cols + k];
        gram[p * small + q] = gram[q * small + p] = s;
      }
    const Eigh e = eigh(from_f64(gram, {small, small}));
    const std::vector<double> vecs = e.vectors.to_vector<double>();
    std::vector<double> top(static_cast<std::size_t>(small));
    for (std::int64_t p = 0; p < small; ++p) top[p] = vecs[p * small + small - 1];  // ascending: last column
    v = by_cols ? top : times_u(top);
  } else {
    v.assign(static_cast<std::size_t>(cols), 0.0);
    for (std::int64_t j = 0; j < cols; ++j) {
      v[j] = 1.0 + 0.01 * static_cast<double>(j);
      for (std::int64_t i = 0; i < rows; ++i) v[j] += m[i * cols + j];
    }
    for (int it = 0; it < max_iters; ++it) {
      const double vn = norm(v);
      if (vn == 0) break;
      for (double& x : v) x /= vn;
      std::vector<double> next = times_u(times_v(v));
      const double nn = norm(next);
      if (nn == 0) break;
      double moved = 0;
      for (std::int64_t j = 0; j < cols; ++j) moved = std::max(moved, std::fabs(next[j] / nn - v[j]));
      v = std::move(next);
      if (moved <= tol) break;
    }
  }
  const double vn = norm(v);
  if (vn == 0) return {0.0, zeros({rows}, DType::f64), zeros({cols}, DType::f64)};
  for (double& x : v) x /= vn;
  std::vector<double> u = times_v(v);
  const double sigma = norm(u);
  if (sigma == 0) return {0.0, zeros({rows}, DType::f64), from_f64(v, {cols})};
  for (double& x : u) x /= sigma;
  return {std::ldexp(sigma, exponent), from_f64(u, {rows}), from_f64(v, {cols})};
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
  std::vector<double> r(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t k = 0; k < n; ++k) {
    const double s = std::sqrt(std::max(0.0, w[k]));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j) r[i * n + j] += q[i * n + k] * s * q[j * n + k];
  }
  return from_f64(r, {n, n});
}

}  // namespace tg::ops::dense
