// Tensor: a cheap handle (one shared_ptr) to a TensorImpl that describes a strided view of a
// shared Storage, plus the autograd metadata of that tensor.
//
// Views (reshape, permute, expand, slice, squeeze, flip, ...) create a new TensorImpl over the same
// storage and only change shape/strides/offset. All of them are differentiable. Compute ops live in
// ops/ as free functions (ops::exp(x), ops::matmul(a, b), x + y).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/shape.hpp"
#include "core/storage.hpp"

namespace tg {

class Node;
class Tensor;
using Tensors = std::vector<Tensor>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;          // in elements; may be 0 (expanded) or negative (flipped)
  std::int64_t offset = 0;  // in elements, from storage->data()
  DType dtype = DType::f32;

  // Autograd metadata. A leaf has no grad_fn; requires_grad marks leaves whose gradient is wanted.
  // Outputs of recorded ops have grad_fn (and output_nr, their index among the op's outputs).
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  std::uint32_t output_nr = 0;
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient of a leaf

  ~TensorImpl();
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (no data); most calls on it raise an error
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  explicit operator bool() const = delete;  // ambiguous for tensors: use defined()

  // ---- metadata --------------------------------------------------------------------------------
  const Shape& shape() const { return impl().shape; }
  int dim() const { return impl().shape.size(); }
  std::int64_t size(std::int64_t axis) const;  // negative axes count from the end
  std::int64_t numel() const { return impl().shape.numel(); }
  const Strides& strides() const { return impl().strides; }
  std::int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  std::size_t element_size() const { return dtype_size(impl().dtype); }
  bool is_contiguous() const;  // row-major dense (size-1 dims may have any stride)
  bool is_floating_point() const { return is_floating(dtype()); }

  // ---- raw data (kernels, tests) ----------------------------------------------------------------
  // Pointer to element [0, ..., 0]; T must match the dtype.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data");
    return static_cast<T*>(impl().storage->data()) + impl().offset;
  }
  void* raw_data() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  // The storage version, bumped by every in-place write to this tensor or a view of it.
  std::uint32_t version() const { return impl().storage->version(); }

  // ---- element access (tests, small tensors; slow) ---------------------------------------------
  // The single element of a one-element tensor, converted to T.
  template <class T = double>
  T item() const;
  // Element at a full index (negative indices count from the end), converted to T.
  template <class T = double>
  T at(std::initializer_list<std::int64_t> index) const;
  // All elements in row-major order, converted to T.
  template <class T>
  std::vector<T> to_vector() const;

  // ---- views: share storage, differentiable ------------------------------------------------------
  Tensor reshape(const Shape& shape) const;  // one dim may be -1; copies only if no view exists
  Tensor view(const Shape& shape) const;     // like reshape, but never copies (error instead)
  Tensor flatten(std::int64_t start_axis = 0, std::int64_t end_axis = -1) const;
  Tensor permute(const Shape& axes) const;
  Tensor transpose(std::int64_t a, std::int64_t b) const;
  Tensor t() const;  // transpose of a 2-D tensor
  Tensor expand(const Shape& shape) const;  // NumPy rules; -1 keeps a dim
  Tensor expand_as(const Tensor& other) const { return expand(other.shape()); }
  // Elements start, start+step, ... < stop along `axis` (start/stop clamped like Python slices).
  Tensor slice(std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step = 1) const;
  Tensor narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const;
  Tensor select(std::int64_t axis, std::int64_t index) const;  // removes `axis`
  Tensor squeeze() const;                                      // removes all size-1 dims
  Tensor squeeze(std::int64_t axis) const;
  Tensor unsqueeze(std::int64_t axis) const;
  Tensor flip(const Shape& axes) const;
  Tensor diagonal() const;  // of a 2-D tensor

  // ---- copies (differentiable) ---------------------------------------------------------------------
  Tensor contiguous() const;  // this tensor if already contiguous, else a row-major copy
  Tensor clone() const;       // always a new row-major copy
  // Floats to integers truncate toward zero; NaN and values outside the integer type's range become
  // its lowest value (x86's and torch's result), unchecked: fill_/full refuse such values instead.
  Tensor to(DType dtype) const;

  // ---- autograd ------------------------------------------------------------------------------------
  bool requires_grad() const;  // a leaf marked requires_grad, or the output of a recorded op
  // Marks a leaf whose gradient backward() should accumulate in grad().
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  Tensor grad() const;  // undefined until a backward pass reaches this leaf
  void set_grad(const Tensor& g);
  void reset_grad();  // back to undefined (what optimizers' zero_grad does)
  // The same data, cut from the graph (never requires grad).
  Tensor detach() const;
  // Backpropagates from this tensor. Without `grad`, the tensor must have exactly one element
  // (gradient 1). Gradients accumulate into the .grad() of the leaves that require grad. The
  // graph is released unless retain_graph is true.
  void backward(const Tensor& grad = {}, bool retain_graph = false) const;

  // ---- in-place (no autograd) -------------------------------------------------------------------------
  // Refused on tensors that require grad while grad mode is on; use them under NoGradGuard
  // (e.g. optimizer updates). Each bumps the storage version.
  Tensor& copy_(const Tensor& src);  // src broadcasts to this shape; dtypes convert
  Tensor& fill_(double value);       // a value an integer dtype cannot hold is refused
  Tensor& zero_() { return fill_(0.0); }

  // ---- printing --------------------------------------------------------------------------------------
  std::string summary() const;  // one line: "Tensor[2, 3] f32 grad_fn=mul"
  std::string to_string(int precision = 4) const;  // PyTorch-like, summarised when large

  // ---- identity -----------------------------------------------------------------------------------------
  TensorImpl& impl() const {
    TG_CHECK(impl_ != nullptr, "operation on an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

  // Checks `dtype() == want`, raising "<op>: expected <want>, got <dtype> (shape ...)" otherwise.
  void check_dtype(DType want, const char* op) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- factories -------------------------------------------------------------------------------------------
// Values are numbers converted to the dtype; for i32/i64 a value out of the type's range (or NaN)
// is refused with an error naming the factory (fractions truncate toward zero).
Tensor empty(const Shape& shape, DType dtype = DType::f32);  // uninitialised
// empty() for an op's result: a shape too large to allocate is reported under the op's name.
Tensor empty(const Shape& shape, DType dtype, const char* op);
Tensor zeros(const Shape& shape, DType dtype = DType::f32);
Tensor ones(const Shape& shape, DType dtype = DType::f32);
Tensor full(const Shape& shape, double value, DType dtype = DType::f32);
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor scalar_tensor(double value, DType dtype = DType::f32);  // 0-d
// [start, stop) with `step`; i64 by default.
Tensor arange(double start, double stop, double step = 1.0, DType dtype = DType::i64);
Tensor arange(std::int64_t stop, DType dtype = DType::i64);
// n points from start to stop inclusive.
Tensor linspace(double start, double stop, std::int64_t n, DType dtype = DType::f32);
Tensor eye(std::int64_t n, std::int64_t m = -1, DType dtype = DType::f32);  // m = -1: square
// A tensor holding `values` (row-major) with the given shape (default: 1-D).
Tensor tensor(std::initializer_list<double> values, DType dtype = DType::f32);
Tensor tensor(std::initializer_list<double> values, const Shape& shape, DType dtype = DType::f32);
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape);
template <class T>
Tensor from_vector(const std::vector<T>& values) {
  return from_vector(values, Shape{static_cast<std::int64_t>(values.size())});
}

// ---- template definitions ------------------------------------------------------------------------------
namespace detail {
double read_as_double(const Tensor& t, std::int64_t element_offset);
std::int64_t read_as_int(const Tensor& t, std::int64_t element_offset);
std::int64_t element_offset(const Tensor& t, std::initializer_list<std::int64_t> index);
Tensor from_buffer(const void* data, DType dtype, const Shape& shape);
}  // namespace detail

template <class T>
T Tensor::item() const {
  TG_CHECK(numel() == 1, "item: expected a tensor with one element, got shape {}", shape());
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (is_integral(dtype())) return static_cast<T>(detail::read_as_int(*this, offset()));
  }
  return static_cast<T>(detail::read_as_double(*this, offset()));
}

template <class T>
T Tensor::at(std::initializer_list<std::int64_t> index) const {
  const std::int64_t off = detail::element_offset(*this, index);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (is_integral(dtype())) return static_cast<T>(detail::read_as_int(*this, off));
  }
  return static_cast<T>(detail::read_as_double(*this, off));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = detach().contiguous().to(dtype_of<T>());
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
  TG_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(),
           "from_vector: {} values do not fill shape {} ({} elements)", values.size(), shape, shape.numel());
  if constexpr (std::is_same_v<T, bool>) {
    std::vector<unsigned char> bytes(values.begin(), values.end());
    return detail::from_buffer(bytes.data(), DType::boolean, shape);
  } else {
    return detail::from_buffer(values.data(), dtype_of<T>(), shape);
  }
}

}  // namespace tg

// fmt::print("{}", t) prints like PyTorch; "{:.2}" sets the precision.
template <>
struct fmt::formatter<tg::Tensor> {
  int precision = 4;
  constexpr auto parse(fmt::format_parse_context& ctx) {
    auto it = ctx.begin();
    if (it != ctx.end() && *it == '.') {
      ++it;
      precision = 0;
      while (it != ctx.end() && *it >= '0' && *it <= '9') precision = precision * 10 + (*it++ - '0');
    }
    return it;
  }
  template <class Ctx>
  auto format(const tg::Tensor& t, Ctx& ctx) const {
    const std::string s = t.defined() ? t.to_string(precision) : std::string("Tensor(undefined)");
    return fmt::format_to(ctx.out(), "{}", s);
  }
};
