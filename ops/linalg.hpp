// Matrix products on the project's own GEMM (ops/kernels/gemm.cpp): no BLAS at runtime.
// Transposed and strided operands are read in place (the kernel packs them), never copied.
#pragma once

#include "core/tensor.hpp"

namespace tg::ops {

// NumPy/PyTorch matmul: 1-D·1-D is a dot product; a 1-D operand gains and then loses a matrix dim;
// N-D operands multiply their last two dims and broadcast the batch dims. An N-D · 2-D product
// folds the batch into the rows and runs as one GEMM.
Tensor matmul(const Tensor& a, const Tensor& b);
// Batched product of [B, M, K] and [B, K, N] (no broadcasting).
Tensor bmm(const Tensor& a, const Tensor& b);
// x [..., K] · weight [N, K]^T + bias [N] -> [..., N], as one op (the bias is fused into the GEMM
// and its gradient is one column reduction). bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});
// u [M] ⊗ v [N] -> [M, N].
Tensor outer(const Tensor& u, const Tensor& v);
// Squared Euclidean distances between the rows of a [N, D] and of b [M, D] -> [N, M], as
// |a_i|^2 - 2 a_i·b_j + |b_j|^2 with one GEMM (nearest-codebook searches, energy distances),
// clamped at 0 against cancellation. Differentiable. Like torch.cdist's matmul path, it loses
// relative accuracy for points much closer to each other than to the origin.
Tensor pairwise_sq_distances(const Tensor& a, const Tensor& b);

}  // namespace tg::ops
