// StridedLoop: row-major iteration over a shape for N operands with their own strides — the one
// loop nest that every elementwise kernel (copy, convert, add, the ops' SIMD functors) runs on.
//
// Dims are coalesced first (adjacent dims that are contiguous for every operand merge into one,
// size-1 dims vanish), so a contiguous tensor of any rank becomes a single 1-D run. The callback
// sees one innermost run at a time:
//   fn(std::array<char*, N> ptrs, std::int64_t count, std::array<std::int64_t, N> byte_strides)
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

#include "core/shape.hpp"

namespace tg {

template <int N>
class StridedLoop {
 public:
  // strides[k] are operand k's strides in elements; elem_size[k] its element size in bytes.
  StridedLoop(const Shape& shape, const std::array<const Strides*, N>& strides,
              const std::array<std::size_t, N>& elem_size) {
    numel_ = shape.numel();
    if (numel_ == 0) {  // nothing to visit (and the strides of an empty shape may be huge)
      ndim_ = 1;
      return;
    }
    // Build innermost-first lists, dropping size-1 dims and merging contiguous neighbours.
    ndim_ = 0;
    for (int d = shape.size() - 1; d >= 0; --d) {
      if (shape[d] == 1) continue;
      std::array<std::int64_t, N> s;
      for (int k = 0; k < N; ++k) s[k] = (*strides[k])[d] * static_cast<std::int64_t>(elem_size[k]);
      if (ndim_ > 0) {
        bool mergeable = true;
        for (int k = 0; k < N; ++k) mergeable = mergeable && s[k] == stride_[ndim_ - 1][k] * size_[ndim_ - 1];
        if (mergeable) {
          size_[ndim_ - 1] *= shape[d];
          continue;
        }
      }
      size_[ndim_] = shape[d];
      stride_[ndim_] = s;
      ++ndim_;
    }
    if (ndim_ == 0) {  // a single element
      size_[0] = 1;
      stride_[0].fill(0);
      ndim_ = 1;
    }
  }

  std::int64_t numel() const { return numel_; }
  int ndim() const { return ndim_; }
  std::int64_t inner_size() const { return size_[0]; }
  std::int64_t inner_stride(int k) const { return stride_[0][k]; }
  // The coalesced dims, innermost first: dim d's size and operand k's stride in bytes.
  std::int64_t size(int d) const { return size_[d]; }
  std::int64_t stride(int d, int k) const { return stride_[d][k]; }

  // Runs fn over the linear (row-major) element range [begin, end).
  template <class F>
  void run(const std::array<char*, N>& base, std::int64_t begin, std::int64_t end, F&& fn) const {
    if (begin >= end) return;
    std::array<std::int64_t, kMaxDims> idx{};
    std::array<char*, N> ptr = base;
    std::int64_t rem = begin;
    for (int d = 0; d < ndim_; ++d) {
      idx[d] = rem % size_[d];
      rem /= size_[d];
      for (int k = 0; k < N; ++k) ptr[k] += idx[d] * stride_[d][k];
    }
    std::int64_t pos = begin;
    while (pos < end) {
      const std::int64_t count = std::min(size_[0] - idx[0], end - pos);
      fn(ptr, count, stride_[0]);
      pos += count;
      if (pos >= end) break;
      // Advance the multi-index by `count` along dim 0, carrying into outer dims.
      for (int k = 0; k < N; ++k) ptr[k] += count * stride_[0][k];
      idx[0] += count;
      for (int d = 0; d < ndim_ - 1 && idx[d] == size_[d]; ++d) {
        for (int k = 0; k < N; ++k) ptr[k] += stride_[d + 1][k] - size_[d] * stride_[d][k];
        idx[d] = 0;
        ++idx[d + 1];
      }
    }
  }

 private:
  std::int64_t numel_ = 0;
  int ndim_ = 0;
  std::array<std::int64_t, kMaxDims> size_{};                   // innermost first
  std::array<std::array<std::int64_t, N>, kMaxDims> stride_{};  // bytes, innermost first
};

// The dim (> 0) along which operand k is contiguous (elements of k_size bytes, at least 8 of them)
// while operand 0 runs contiguously along dim 0 (elements of out_size bytes, at least 8): operand
// k is a transposed view of operand 0's layout, which a walk along dim 0 reads a new cache line
// per element. -1 when there is no such dim, or when k is contiguous or expanded along dim 0.
template <int N>
int transposed_dim(const StridedLoop<N>& loop, int k, std::int64_t out_size, std::int64_t k_size) {
  if (loop.ndim() < 2 || loop.stride(0, 0) != out_size || loop.size(0) < 8) return -1;
  if (loop.stride(0, k) == k_size || loop.stride(0, k) == 0) return -1;
  for (int d = 1; d < loop.ndim(); ++d)
    if (loop.stride(d, k) == k_size && loop.size(d) >= 8) return d;
  return -1;
}

}  // namespace tg
