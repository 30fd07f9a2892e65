// Data movement every tensor needs, whatever ops are built on top: strided copies with dtype
// conversion (contiguous, clone, to, copy_), fill, the same-shape add the engine uses to
// accumulate gradients, and sum_to — the adjoint of expand (broadcasting). Internal to tapegrad.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "core/tensor.hpp"

namespace tg::detail {

// dst[...] = src[...] converted to dst's dtype. Shapes must match (src may be an expanded view).
// A transposed src (reads_across) is copied in tiles.
void copy_into(const Tensor& dst, const Tensor& src);
// Whether walking dst's (same-shape) layout reads src across its contiguous dim: a transpose,
// where every read of an element-by-element walk is a new cache line.
bool reads_across(const Tensor& dst, const Tensor& src);
// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols: one block of a transpose, elements of
// `size` bytes, strides in elements. Through registers on AVX-512 for 4- and 8-byte elements
// (compiled once here, not in every elementwise functor's instantiation). With `prefetch`, each
// source row is requested ahead of its loads.
void transpose_block(const void* src, std::int64_t rows, std::int64_t cols, std::int64_t ss, void* dst, std::int64_t ds,
                     std::size_t size, bool prefetch);
// Every element of dst = value; `op` names the caller in the error for a value dst's integer
// dtype cannot hold.
void fill(const Tensor& dst, double value, const char* op = "fill_");
// The lock that guards a leaf's .grad (shared by a few leaves: striped).
std::mutex& leaf_grad_mutex(const TensorImpl& leaf);
// a + b for tensors of one shape and dtype, as a new contiguous tensor.
Tensor add_same_shape(const Tensor& a, const Tensor& b);
// acc += g (same shape and dtype): in place when acc is the only handle to its own contiguous
// storage, otherwise acc becomes a new tensor acc + g. For gradient accumulation.
void accumulate(Tensor& acc, const Tensor& g);
// Sums g (of a shape `shape` broadcasts to) down to `shape`: the backward of expand.
// Deterministic: each output element is summed in a fixed order, in f64 for float tensors.
Tensor sum_to(const Tensor& g, const Shape& shape);
// Linear (row-major) index of the first NaN/Inf element of a floating-point tensor.
std::optional<std::int64_t> first_non_finite(const Tensor& t);
std::string describe_non_finite(const Tensor& t, std::int64_t linear_index);  // "NaN", "+Inf", "-Inf"

}  // namespace tg::detail
