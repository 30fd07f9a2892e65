// Shape and indexing ops: joining and splitting, gathering and scattering, padding, masks.
// Index tensors are i64 (or i32); out-of-range indices raise an error naming the op.
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace tg::ops {

// Joins tensors of equal shape except along `axis` (dtypes promote).
Tensor cat(const Tensors& xs, std::int64_t axis);
// Joins tensors of equal shape along a new axis.
Tensor stack(const Tensors& xs, std::int64_t axis);
// Views of consecutive pieces along `axis`: of `size` elements each (the last may be shorter), or
// of the listed sizes (which must add up to the dim).
Tensors split(const Tensor& x, std::int64_t size, std::int64_t axis);
Tensors split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t axis);
// Pieces of ceil(size / n) along axis, as torch.chunk: at most n (e.g. 3 for size 5, n = 4), and n
// empty ones of an empty dim. split by size gives one empty piece of an empty dim, as torch.split.
Tensors chunk(const Tensor& x, std::int64_t n, std::int64_t axis);
// The slices x.select(axis, i) for every i (e.g. q, k, v of a fused projection).
// split, chunk and unbind are each one recorded op: their backward assembles one gradient.
Tensors unbind(const Tensor& x, std::int64_t axis);

// Index tensors (i64 or i32) are range-checked; in index_select, gather and scatter_add a negative
// index counts from the end, as in Python. The ops keep a private copy of the index.
// Rows `index[i]` of x along `axis`: out.shape[axis] = index.numel() (index is 1-D).
Tensor index_select(const Tensor& x, std::int64_t axis, const Tensor& index);
// out[..., i, ...] = x[..., index[..., i, ...], ...] along `axis` (torch.gather); index has x's rank.
Tensor gather(const Tensor& x, std::int64_t axis, const Tensor& index);
// x with src added at the positions `index` names along `axis` (torch.scatter_add); deterministic.
// src converts to x's dtype, except a floating src into an integer x (refused). Integers wrap.
Tensor scatter_add(const Tensor& x, std::int64_t axis, const Tensor& index, const Tensor& src);
// Rows of an embedding table: weight [V, D], index of any shape in [0, V) -> [*index.shape, D].
Tensor embedding(const Tensor& weight, const Tensor& index);
// One-hot encoding of integer classes in [0, num_classes): [*index.shape, num_classes] (not
// differentiable).
Tensor one_hot(const Tensor& index, std::int64_t num_classes, DType dtype = DType::f32);
// How often each class in [0, num_classes) occurs in a 1-D integer index -> [num_classes] i64
// (torch.bincount with minlength; e.g. VQ codebook usage). Not differentiable.
Tensor bincount(const Tensor& index, std::int64_t num_classes);

// x with `value` where mask (bool, broadcast to x's shape) is true.
// The result keeps x's dtype; a value it cannot hold (3e9 for i32, NaN for integers) is refused.
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);
// Lower/upper triangle of the last two dims (k shifts the diagonal), zeros elsewhere.
Tensor tril(const Tensor& x, std::int64_t k = 0);
Tensor triu(const Tensor& x, std::int64_t k = 0);

enum class PadMode { constant, reflect, replicate, circular };
// Pads the last dims: pads = {left, right} for the last dim, then {left, right} for the one
// before, and so on (torch.nn.functional.pad order). Negative pads crop (constant mode). reflect
// mirrors without repeating the edge (pads < size), replicate repeats the edge, circular wraps
// around (pads <= size).
Tensor pad(const Tensor& x, const std::vector<std::int64_t>& pads, PadMode mode = PadMode::constant,
           double value = 0.0);
// Tiles x: out.shape[d] = x.shape[d] * repeats[d] (extra leading repeats add dims), as torch.repeat.
Tensor repeat(const Tensor& x, const Shape& repeats);
// Repeats each entry of x along `axis` `repeats` times in place (torch.repeat_interleave):
// [a, b] -> [a, a, b, b]; out.shape[axis] = x.shape[axis] * repeats. The second form takes one
// count per entry (a 1-D integer tensor of x.shape[axis] counts, or a single count for all). x
// needs at least one dim. The backward sums each entry's copies, in order.
Tensor repeat_interleave(const Tensor& x, std::int64_t repeats, std::int64_t axis);
Tensor repeat_interleave(const Tensor& x, const Tensor& repeats, std::int64_t axis);
// Shifts elements along `axis` by `shift` (wrapping around).
Tensor roll(const Tensor& x, std::int64_t shift, std::int64_t axis);

// Images to patch tokens and back. x [B, C, H, W] -> [B, (H/p)(W/p), C p p]: patches in raster
// order (patch row outer, patch column inner), each flattened as (C, p, p) -- torch's
// unfold(kernel = stride = p) transposed. unpatchify(tokens, p, H, W) is the exact inverse.
Tensor patchify(const Tensor& x, std::int64_t p);
Tensor unpatchify(const Tensor& tokens, std::int64_t p, std::int64_t height, std::int64_t width);

}  // namespace tg::ops
