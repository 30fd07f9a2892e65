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

// Batch normalisation of x [N, C, *] per channel (torch.nn.functional.batch_norm).
//   training: normalised by the batch's mean and biased variance over N and * (the fused
//     group_norm kernel on the [1, C, N, *] view: a channel is one group); running_mean and
//     running_var, when given ([C]), are updated in place without grad:
//     r = (1 - momentum) r + momentum s, with the unbiased variance (as torch). At least two
//     values per channel.
//   eval: normalised by running_mean / running_var (required).
// weight, bias: [C] or undefined; statistics and parameters floating-point; eps >= 0; momentum in
// [0, 1]. An empty x
// gives an empty result and leaves the statistics alone (as torch). Gradients reach x, weight and
// bias in both modes.
Tensor batch_norm(const Tensor& x, Tensor running_mean, Tensor running_var, const Tensor& weight = {},
                  const Tensor& bias = {}, bool training = false, double momentum = 0.1, double eps = 1e-5);

}  // namespace tg::ops
