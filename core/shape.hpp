// Shape: a small fixed-capacity list of int64 (used for dims, strides and axis lists).
// Tensors have at most kMaxDims dimensions; asking for more raises an error naming the caller.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <vector>

#include "core/error.hpp"

namespace tg {

inline constexpr int kMaxDims = 8;

class Shape {
 public:
  using value_type = std::int64_t;

  constexpr Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(std::span<const std::int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<std::int64_t>& dims) { assign(dims.begin(), dims.end()); }
  // n copies of `value`.
  static Shape filled(int n, std::int64_t value);

  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  std::int64_t& operator[](int i) { return d_[i]; }
  std::int64_t operator[](int i) const { return d_[i]; }
  std::int64_t back() const { return d_[n_ - 1]; }
  std::int64_t* begin() { return d_.data(); }
  std::int64_t* end() { return d_.data() + n_; }
  const std::int64_t* begin() const { return d_.data(); }
  const std::int64_t* end() const { return d_.data() + n_; }
  const std::int64_t* data() const { return d_.data(); }

  void push_back(std::int64_t v);
  void insert(int pos, std::int64_t v);
  void erase(int pos);
  void resize(int n, std::int64_t fill = 0);
  std::vector<std::int64_t> to_vector() const { return {begin(), end()}; }

  // Product of the dims (1 for a 0-d shape).
  std::int64_t numel() const;

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.n_ != b.n_) return false;
    for (int i = 0; i < a.n_; ++i)
      if (a.d_[i] != b.d_[i]) return false;
    return true;
  }

 private:
  template <class It>
  void assign(It first, It last);

  std::array<std::int64_t, kMaxDims> d_{};
  int n_ = 0;
};

using Strides = Shape;

// Row-major (C-order) strides for `shape`, in elements.
Strides contiguous_strides(const Shape& shape);

// Maps a possibly negative axis into [0, ndim); raises "<op>: axis <a> is out of range for a
// <ndim>-d tensor of shape <shape>" otherwise.
int normalize_axis(std::int64_t axis, int ndim, const char* op, const Shape& shape);

// NumPy broadcasting of two shapes; raises
// "<op>: shapes [2, 3] and [4] cannot be broadcast (dim -1: 3 vs 4)" when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

template <class It>
void Shape::assign(It first, It last) {
  const auto n = last - first;
  TG_CHECK(n <= kMaxDims, "tapegrad tensors have at most {} dims, got a shape with {}", kMaxDims, n);
  n_ = static_cast<int>(n);
  for (int i = 0; i < n_; ++i, ++first) d_[i] = *first;
}

}  // namespace tg

template <>
struct fmt::formatter<tg::Shape> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const tg::Shape& s, Ctx& ctx) const {
    auto out = ctx.out();
    *out++ = '[';
    for (int i = 0; i < s.size(); ++i) {
      if (i) {
        *out++ = ',';
        *out++ = ' ';
      }
      out = fmt::format_to(out, "{}", s[i]);
    }
    *out++ = ']';
    return out;
  }
};
