// Fused softmax / log-softmax over contiguous rows, forward and backward. Max-subtracted, so
// finite for any finite input; a row of all -inf gives NaN (softmax) as in PyTorch.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

// x, y: [rows, n] contiguous.
void softmax_forward(const Tensor& x, const Tensor& y, bool log);
// gx = y * (g - <g, y>)            (softmax)
// gx = g - exp(y) * sum(g)         (log-softmax; y is the log-probabilities)
void softmax_backward(const Tensor& y, const Tensor& g, const Tensor& gx, bool log);

}  // namespace tg::kernels
