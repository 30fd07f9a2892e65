// Dense f64 linear algebra for metrics, tests and mode conversions (no autograd, small matrices):
// symmetric eigendecomposition (cyclic Jacobi), LU solve and log-determinant (partial pivoting),
// matrix powers (repeated squaring), the singular value decomposition (one-sided Jacobi) and its
// leading triple (power iteration for large matrices), and the eigenvalues of general matrices and
// the roots of polynomials (balanced Hessenberg QR).
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

// x with a x = b; b is [n] or [n, k]. Partial pivoting; as LAPACK's gesv, an exactly zero pivot
// (a singular matrix) is an error, and an ill-conditioned matrix gives what LU gives. Non-finite
// entries are refused.
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
// the first triple of svd(): exact to round-off, also when the top singular values are close or
// tied (then a unit vector of the top subspace is returned). Larger matrices use power iteration
// on a^T a from a fixed pseudo-random start until v moves less than tol in a step (its error shrinks
// like (sigma_2 / sigma_1)^(2 steps), so it ends about tol / (1 - (sigma_2 / sigma_1)^2) from the
// exact vector, not at round-off); when that takes more than max_iters steps (close top singular
// values), the result is svd()'s after all.
inline constexpr std::int64_t kRank1ExactMax = 64;
Rank1 rank1_svd(const Tensor& a, int max_iters = 1000, double tol = 1e-12);

struct Svd {
  Tensor u;  // [m, k] with orthonormal columns, k = min(m, n)
  Tensor s;  // [k], descending, >= 0
  Tensor v;  // [n, k] with orthonormal columns; a = u diag(s) v^T
};
// The thin SVD of a [m, n] by one-sided (Hestenes) Jacobi: singular values to round-off relative to
// the largest one (also tied or clustered ones); directions of singular values at round-off level
// (rank deficiency) are completed to an orthonormal set. The best rank-r approximation is the first
// r columns and values. O(m n min(m, n)) per sweep, meant for small matrices (Monarch blocks, tests).
Svd svd(const Tensor& a);

// The eigenvalues of a real square matrix as [n, 2] (real part, imaginary part), sorted by
// descending magnitude, then real part, then imaginary part (so a complex pair lists +i first).
// Balancing, Hessenberg reduction and the Francis double-shift QR iteration (as in EISPACK's hqr).
Tensor eigvals(const Tensor& a);

// max |lambda| over the eigenvalues of a square matrix (0 for an empty one).
double spectral_radius(const Tensor& a);

// The roots of c[0] x^d + c[1] x^(d-1) + ... + c[d] as [d', 2] (real, imaginary), in eigvals' order:
// the eigenvalues of the companion matrix, as numpy.roots. Leading zero coefficients are dropped,
// trailing ones give roots at 0; c must not be all zero (an empty c has no roots).
Tensor poly_roots(const Tensor& coefficients);

struct MonarchFactors {
  Tensor w1;  // [K, J, I]
  Tensor w2;  // [J, Lo, K]
};
// The Monarch matrix nearest to a [Lo*J, K*I] in Frobenius norm, in ops/monarch.hpp's form (spec
// techniques-B §3.3): every entry lies in exactly one slice S_kj[l][i] = a[l*J + j][k*I + i], and
// each slice is any rank-1 matrix, so the optimum replaces each slice by its best rank-1
// approximation sigma u v^T (rank1_svd): w2[j, :, k] = sqrt(sigma) u, w1[k, j, :] = sqrt(sigma) v
// (zero factors for a zero slice). K must divide the columns and J the rows. Slices run in
// parallel; the factors are f64 whatever a's dtype.
MonarchFactors monarch_project(const Tensor& a, std::int64_t K, std::int64_t J);

// The square root of a symmetric positive semi-definite matrix. Negative eigenvalues down to
// -sqrt(eps) times the largest magnitude (eps of the input's dtype) are taken as round-off and
// clamped to 0; a more negative one is an error (the matrix is not PSD).
Tensor sqrtm_psd(const Tensor& a);

}  // namespace tg::ops::dense
