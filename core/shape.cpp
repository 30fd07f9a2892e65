#include "core/shape.hpp"

#include <algorithm>

namespace tg {

Shape Shape::filled(int n, std::int64_t value) {
  TG_CHECK(n >= 0 && n <= kMaxDims, "tapegrad tensors have at most {} dims, got {}", kMaxDims, n);
  Shape s;
  s.n_ = n;
  for (int i = 0; i < n; ++i) s.d_[i] = value;
  return s;
}

void Shape::push_back(std::int64_t v) {
  TG_CHECK(n_ < kMaxDims, "cannot add a dim to shape {}: tapegrad tensors have at most {} dims", *this, kMaxDims);
  d_[n_++] = v;
}

void Shape::insert(int pos, std::int64_t v) {
  TG_CHECK(n_ < kMaxDims, "cannot add a dim to shape {}: tapegrad tensors have at most {} dims", *this, kMaxDims);
  for (int i = n_; i > pos; --i) d_[i] = d_[i - 1];
  d_[pos] = v;
  ++n_;
}

void Shape::erase(int pos) {
  for (int i = pos; i + 1 < n_; ++i) d_[i] = d_[i + 1];
  --n_;
}

void Shape::resize(int n, std::int64_t fill) {
  TG_CHECK(n >= 0 && n <= kMaxDims, "tapegrad tensors have at most {} dims, got {}", kMaxDims, n);
  for (int i = n_; i < n; ++i) d_[i] = fill;
  n_ = n;
}

std::int64_t Shape::numel() const {
  std::int64_t p = 1;
  for (int i = 0; i < n_; ++i)
    if (d_[i] == 0) return 0;
  for (int i = 0; i < n_; ++i)
    TG_CHECK(!__builtin_mul_overflow(p, d_[i], &p), "shape {} has more than 2^63 - 1 elements", *this);
  return p;
}

Strides contiguous_strides(const Shape& shape) {
  Strides s = Shape::filled(shape.size(), 1);
  for (int i = shape.size() - 2; i >= 0; --i) s[i] = s[i + 1] * std::max<std::int64_t>(shape[i + 1], 1);
  return s;
}

int normalize_axis(std::int64_t axis, int ndim, const char* op, const Shape& shape) {
  const std::int64_t a = axis < 0 ? axis + ndim : axis;
  if (ndim == shape.size())
    TG_CHECK(a >= 0 && a < ndim, "{}: axis {} is out of range for a {}-d tensor of shape {}", op, axis, ndim, shape);
  else  // a new axis (unsqueeze, stack)
    TG_CHECK(a >= 0 && a < ndim, "{}: axis {} is out of range for a new dim of a {}-d tensor of shape {} (expected {} to {})", op,
             axis, shape.size(), shape, -ndim, ndim - 1);
  return static_cast<int>(a);
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const int n = std::max(a.size(), b.size());
  Shape out = Shape::filled(n, 1);
  for (int i = 1; i <= n; ++i) {
    const std::int64_t da = i <= a.size() ? a[a.size() - i] : 1;
    const std::int64_t db = i <= b.size() ? b[b.size() - i] : 1;
    TG_CHECK(da == db || da == 1 || db == 1,
             "{}: shapes {} and {} cannot be broadcast (dim -{}: {} vs {})", op, a, b, i, da, db);
    out[n - i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace tg
