// Normalisation layers as fused ops (one tape node each, with a fused backward).
//
// All take f32 or f64 inputs of any layout (non-contiguous inputs are copied once). Statistics are
// accumulated in f64; the weight/bias gradients are deterministic reductions (bit-identical for
// any thread count). weight/bias are optional (pass an undefined Tensor) and are converted to x's
// dtype when they differ.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace tg::ops {

// Layer normalisation over the last k = normalized_shape.size() dims of x (which must equal
// normalized_shape): y = (x - mean) / sqrt(var + eps) * weight + bias, var biased (as PyTorch).
// weight, bias: normalized_shape or undefined.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {}, const Tensor& bias = {},
                  double eps = 1e-5);

// RMS normalisation over the last k dims: y = x / sqrt(mean(x^2) + eps) * weight.
Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {}, double eps = 1e-6);

// Group normalisation of x [N, C, *] (any number of spatial dims, possibly none): the C channels
// are split into num_groups groups of C / num_groups consecutive channels; each (sample, group)
// is normalised over its channels and spatial positions, then scaled per channel.
// weight, bias: [C] or undefined.
Tensor group_norm(const Tensor& x, std::int64_t num_groups, const Tensor& weight = {}, const Tensor& bias = {},
                  double eps = 1e-5);

// silu(group_norm(x, ...)) as one op: the pair every UNet block starts with, in one pass over x
// forward and backward instead of three. Bit-identical to the two ops applied one after the other.
Tensor group_norm_silu(const Tensor& x, std::int64_t num_groups, const Tensor& weight = {}, const Tensor& bias = {},
                       double eps = 1e-5);

}  // namespace tg::ops
