// Monarch matrices (Dao et al., ICML 2022; spec techniques-B §3): products with a block-diagonal
// matrix, a reshape-transpose permutation and a second block-diagonal matrix, in the rectangular
// form of HazyResearch/fly's blockdiag_butterfly_multiply. For x [..., K*I] and factors
// w1 [K, J, I], w2 [J, Lo, K]:
//   h[b, k, j]    = sum_i w1[k, j, i] x[b, k*I + i]      (stage 1: K blocks of J x I)
//   y[b, l*J + j] = sum_k w2[j, l, k] h[b, k, j]         (stage 2: J blocks of Lo x K)
// so y = x W^T with W[l*J + j, k*I + i] = w2[j, l, k] w1[k, j, i] ([Lo*J, K*I], K*J*(I + Lo)
// parameters). The square Monarch of size n = m^2 is K = J = I = Lo = m with w1 = R, w2 = L
// (M = P BD(L) P BD(R)). The dense projection onto this set is ops::dense::monarch_project.
#pragma once

#include "core/tensor.hpp"

namespace tg::ops {

// y [..., Lo*J] = monarch(w1, w2) x for x [..., K*I]: two batched GEMMs with a transpose between
// them; differentiable in x, w1 and w2. f32 or f64, one dtype for all three.
Tensor monarch_matmul(const Tensor& x, const Tensor& w1, const Tensor& w2);
// The dense [Lo*J, K*I] matrix W of the factors (materialisation; differentiable).
Tensor monarch_dense(const Tensor& w1, const Tensor& w2);

}  // namespace tg::ops
