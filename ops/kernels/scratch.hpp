// Scratch buffers for the kernels: from the caching allocator (64-byte aligned, uninitialised,
// reused across calls). A fresh std::vector of a big layer's size costs its zero fill and page
// faults on every call (measured ~1 ms per 2.4 MB on this machine), more than many kernels' work.
// Internal to ops/kernels.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

// A task-owned buffer of n elements of T (at least one, so get() is never null).
template <class T>
class Scratch {
 public:
  explicit Scratch(std::int64_t n) : t_(empty({std::max<std::int64_t>(n, 1)}, dtype_of<T>())), p_(t_.data<T>()) {}
  T* get() const { return p_; }

 private:
  Tensor t_;
  T* p_;
};

}  // namespace tg::kernels
