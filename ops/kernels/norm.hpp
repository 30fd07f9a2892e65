// Fused normalisation kernels (layer norm, RMS norm, group norm), forward and backward.
//
// Pure kernels: contiguous operands, no autograd, no shape checks. Statistics (mean, variance,
// mean square) are accumulated in f64 for f32 and f64 inputs alike, in two passes over the row
// (mean, then the sum of squared deviations), so large offsets do not cancel. The weight/bias
// gradients are reductions over rows: each parallel chunk of rows accumulates its own partial sums
// (rows in order; groups of 16 rows in the input precision, folded into f64), and the partials are
// added in chunk order (f64). Chunk boundaries depend only
// on the shape, so every result is bit-identical for any thread count.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

// Row normalisation of x [rows, n] (contiguous, f32 or f64):
//   center = true  (layer norm): y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps), var biased
//   center = false (RMS norm):   y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
// w, b: [n] contiguous of x's dtype, or undefined. mean (undefined when !center), rstd: [rows].
void row_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, bool center, const Tensor& y,
                      const Tensor& mean, const Tensor& rstd);

// Backward of row_norm_forward for the output gradient gy [rows, n]. gx [rows, n], gw [n], gb [n]
// are written when defined (gb only with center).
void row_norm_backward(const Tensor& x, const Tensor& gy, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                       bool center, const Tensor& gx, const Tensor& gw, const Tensor& gb);
// A large gx is written with non-temporal stores (simd::stream_output in simd_partial.hpp).
// Few long rows with a weight or bias gradient take a backward that walks strips of columns
// rather than chunks of rows (column_backward in norm.cpp); the bits are the same either way.
// Tests force one path or the other to compare them.
enum class RowNormBackward { automatic, by_rows, by_columns };
inline std::atomic<RowNormBackward> row_norm_backward_path{RowNormBackward::automatic};

// Group normalisation of x [N, C, S] (contiguous) with `groups` groups of C / groups channels:
// statistics over each (sample, group) block of (C / groups) * S elements; w, b: [C] or undefined;
// mean, rstd: [N, groups]. With silu, y = silu(group_norm(x)) in the same pass, and the backward
// takes gy through the activation first (it needs b for that).
void group_norm_forward(const Tensor& x, std::int64_t groups, const Tensor& w, const Tensor& b, double eps, bool silu,
                        const Tensor& y, const Tensor& mean, const Tensor& rstd);
void group_norm_backward(const Tensor& x, const Tensor& gy, std::int64_t groups, const Tensor& w, const Tensor& b,
                         bool silu, const Tensor& mean, const Tensor& rstd, const Tensor& gx, const Tensor& gw,
                         const Tensor& gb);

}  // namespace tg::kernels
