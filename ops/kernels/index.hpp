// Gather/scatter kernels over tensors viewed as [outer, axis, inner]. Scatters are deterministic:
// each output element is written by one task, in index order. No autograd.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

// out[o, i, n] = x[o, index[i], n]   (x: [O, N, I] contiguous, out: [O, M, I] contiguous, index: M int64)
void index_select(const Tensor& x, const Tensor& index, const Tensor& out);
// out[o, index[i], n] += src[o, i, n]  (out: [O, N, I] contiguous, accumulated in index order)
void index_add(const Tensor& out, const Tensor& index, const Tensor& src);
// torch.gather / scatter_add over contiguous tensors of one rank; `axis` is the indexed dim.
void gather(const Tensor& x, int axis, const Tensor& index, const Tensor& out);
void scatter_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src);

}  // namespace tg::kernels
