// Test helpers: random tensors in awkward layouts, comparisons, thread-count determinism.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "core/tensor.hpp"

namespace tg::test {

// A contiguous tensor of N(0, 1) values (seeded).
Tensor randn(const Shape& shape, DType dtype = DType::f64, std::uint64_t seed = 1);
// U(low, high) values.
Tensor uniform(const Shape& shape, double low, double high, DType dtype = DType::f64, std::uint64_t seed = 1);
// The same values laid out non-contiguously: a transposed leaf (last two dims swapped in memory)
// for rank >= 2, or every other element of a larger buffer for rank 1.
Tensor transposed_layout(const Tensor& t);
// Every other element of a buffer twice as large along the last dim (a stepped slice), as a leaf.
Tensor strided_layout(const Tensor& t);

// Max |a - b| over all elements (f64 comparison); +inf if shapes differ.
double max_abs_diff(const Tensor& a, const Tensor& b);
// |a - b| <= atol + rtol * |b| everywhere (NaNs must match in position).
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);
std::string describe_mismatch(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);
// Byte-identical data, shape and dtype.
bool same_bits(const Tensor& a, const Tensor& b);
// same_bits, except that a NaN equals any NaN: the sign and payload of a NaN are not specified
// (x86 passes on the first operand's NaN, and a compiler may swap the operands of a * b).
bool same_bits_or_nan(const Tensor& a, const Tensor& b);

// Runs f with 1 thread and with `threads` threads; true when every output is bit-identical.
bool same_bits_across_threads(const std::function<Tensors()>& f, int threads = 4);

// A file's bytes ("" when it cannot be opened).
std::string read_file(const std::string& path);

// Sets a kernel tunable (an atomic threshold or path choice) for a scope, and restores it.
template <class T>
class ScopedSetting {
 public:
  ScopedSetting(std::atomic<T>& setting, T value) : setting_(setting), saved_(setting.load()) { setting_.store(value); }
  ~ScopedSetting() { setting_.store(saved_); }
  ScopedSetting(const ScopedSetting&) = delete;
  ScopedSetting& operator=(const ScopedSetting&) = delete;
  void set(T value) { setting_.store(value); }
  T saved() const { return saved_; }

 private:
  std::atomic<T>& setting_;
  T saved_;
};

}  // namespace tg::test

#define CHECK_ALLCLOSE(a, b, ...)                                               \
  do {                                                                          \
    const ::tg::Tensor tg_a = (a), tg_b = (b);                                  \
    INFO(::tg::test::describe_mismatch(tg_a, tg_b __VA_OPT__(, ) __VA_ARGS__)); \
    CHECK(::tg::test::allclose(tg_a, tg_b __VA_OPT__(, ) __VA_ARGS__));        \
  } while (false)
