// Reduction kernels: deterministic for any thread count (fixed blocks, partials combined in
// order). No autograd here; ops/reduce.cpp holds the frontends and backward rules.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

enum class ReduceOp { sum, prod, max, min };

// out = op-reduction of x over the axes set in `axes_mask` (bit d = axis d). out is contiguous,
// of x's dtype (numeric), with the reduced dims removed (or kept as size 1: only numel matters).
// max/min propagate NaN. Float sums accumulate in blocks; outer-axis sums of f32 in f64.
void reduce(ReduceOp op, const Tensor& x, std::uint32_t axes_mask, const Tensor& out);

// Max (or min) along one axis with the index of its first occurrence (NaN counts as the extreme).
// values: x's dtype, indices: i64, both contiguous with x's shape minus `axis`.
void arg_reduce(bool is_max, const Tensor& x, int axis, const Tensor& values, const Tensor& indices);

// out = inclusive cumulative sum of x along `axis` (out contiguous, x's shape and dtype);
// reverse == true sums from the end.
void cumsum(const Tensor& x, int axis, bool reverse, const Tensor& out);

}  // namespace tg::kernels
