// Dense f64 linear algebra for metrics, tests and mode conversions (no autograd, small matrices):
// symmetric eigendecomposition (cyclic Jacobi), LU solve and log-determinant (partial pivoting),
// matrix powers (repeated squaring) and the leading singular triple (power iteration).
// Inputs of other float dtypes are converted to f64; results are f64.
#pragma once

#include "core/tensor.hpp"

namespace tg::ops::dense {

struct Eigh {
  Tensor values;   // [n], ascending
  Tensor vectors;  // [n, n], column i is the eigenvector of values[i]
};
// a must be square and symmetric (checked to a relative 1e-8).
Eigh eigh(const Tensor& a);

// x with a x = b; b is [n] or [n, k]. Raises an error for a singular matrix.
Tensor solve(const Tensor& a, const Tensor& b);

struct SlogDet {
  double sign;     // -1, 0 or +1
  double logabs;   // log |det a| (-inf when singular)
};
SlogDet slogdet(const Tensor& a);

// a^n for n >= 0 (a^0 = I).
Tensor matrix_power(const Tensor& a, std::int64_t n);

struct Rank1 {
  double sigma;  // the largest singular value
  Tensor u;      // [m]
  Tensor v;      // [n]
};
// The best rank-1 approximation sigma u v^T of a [m, n]. When min(m, n) <= kRank1ExactMax it is
// exact to round-off (Jacobi eigendecomposition of the smaller Gram matrix), also when the top
// singular values are close or tied (then any unit vector of the top subspace is returned). Larger
// matrices use power iteration on a^T a until v moves less than tol (at most max_iters steps):
// its error shrinks like (sigma_2 / sigma_1)^(2 steps).
inline constexpr std::int64_t kRank1ExactMax = 256;
Rank1 rank1_svd(const Tensor& a, int max_iters = 1000, double tol = 1e-12);

// The square root of a symmetric positive semi-definite matrix (negative eigenvalues from
// round-off are clamped to 0).
Tensor sqrtm_psd(const Tensor& a);

}  // namespace tg::ops::dense
