// Views (same storage, new shape/strides/offset) and copies, each with its backward rule.
#include <algorithm>
#include <optional>

#include "core/autograd.hpp"
#include "core/copy.hpp"
#include "core/tensor.hpp"

namespace tg {
namespace {

Tensor make_view(const Tensor& base, const Shape& shape, const Strides& strides, std::int64_t offset) {
  auto v = std::make_shared<TensorImpl>();
  v->storage = base.storage();
  v->shape = shape;
  v->strides = strides;
  v->offset = offset;
  v->dtype = base.dtype();
  return Tensor(std::move(v));
}

// Strides that let `new_shape` view memory laid out as (old_shape, old_strides), if any exist.
// Groups of old dims that are contiguous among themselves can be split/merged freely.
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides, const Shape& new_shape) {
  if (old_shape.numel() == 0) return contiguous_strides(new_shape);
  Strides out = Shape::filled(new_shape.size(), 0);
  int view_d = new_shape.size() - 1;
  std::int64_t chunk_base_stride = old_strides.size() ? old_strides.back() : 1;
  std::int64_t tensor_numel = 1, view_numel = 1;
  for (int d = old_shape.size() - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    // A chunk ends where the next-outer old dim is not contiguous with this one.
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) {  // trailing size-1 dims of the new shape
    for (; view_d >= 0; --view_d) {
      if (new_shape[view_d] != 1) return std::nullopt;
      out[view_d] = 1;
    }
  }
  return out;
}

Shape infer_shape(const Shape& shape, std::int64_t numel, const Shape& from, const char* op) {
  Shape s = shape;
  int infer = -1;
  std::int64_t known = 1;
  for (int d = 0; d < s.size(); ++d) {
    if (s[d] == -1) {
      TG_CHECK(infer < 0, "{}: only one dimension can be -1, got {}", op, shape);
      infer = d;
    } else {
      TG_CHECK(s[d] >= 0, "{}: invalid dimension {} in shape {}", op, s[d], shape);
      TG_CHECK(!__builtin_mul_overflow(known, s[d], &known), "{}: shape {} has more than 2^63 - 1 elements", op, shape);
    }
  }
  if (infer >= 0) {
    TG_CHECK(known != 0 && numel % known == 0, "{}: cannot reshape a tensor of shape {} ({} elements) into {}", op,
             from, numel, shape);
    s[infer] = numel / known;
  }
  TG_CHECK(s.numel() == numel, "{}: cannot reshape a tensor of shape {} ({} elements) into {} ({} elements)", op, from,
           numel, s, s.numel());
  return s;
}

// Records a view op whose backward maps the output gradient back to the input shape.
Tensor record_view(const char* name, const Tensor& input, const Tensor& out, autograd::UnaryBackwardFn backward) {
  return autograd::record(name, {input}, out, std::move(backward));
}

}  // namespace

Tensor Tensor::view(const Shape& shape_arg) const {
  const Shape shape = infer_shape(shape_arg, numel(), this->shape(), "view");
  auto strides = view_strides(this->shape(), this->strides(), shape);
  TG_CHECK(strides.has_value(),
           "view: a tensor of shape {} with strides {} cannot be viewed as {} without a copy; use reshape()",
           this->shape(), this->strides(), shape);
  const Shape in_shape = this->shape();
  return record_view("view", *this, make_view(*this, shape, *strides, offset()),
                     [in_shape](const Tensor& g) { return Tensors{g.reshape(in_shape)}; });
}

Tensor Tensor::reshape(const Shape& shape_arg) const {
  const Shape shape = infer_shape(shape_arg, numel(), this->shape(), "reshape");
  if (view_strides(this->shape(), this->strides(), shape)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::flatten(std::int64_t start_axis, std::int64_t end_axis) const {
  if (dim() == 0) return reshape({1});
  const int s = normalize_axis(start_axis, dim(), "flatten", shape());
  const int e = normalize_axis(end_axis, dim(), "flatten", shape());
  TG_CHECK(s <= e, "flatten: start axis {} is after end axis {}", start_axis, end_axis);
  Shape out;
  for (int d = 0; d < s; ++d) out.push_back(shape()[d]);
  std::int64_t merged = 1;
  for (int d = s; d <= e; ++d) merged *= shape()[d];
  out.push_back(merged);
  for (int d = e + 1; d < dim(); ++d) out.push_back(shape()[d]);
  return reshape(out);
}

Tensor Tensor::permute(const Shape& axes) const {
  TG_CHECK(axes.size() == dim(), "permute: got {} axes {} for a {}-d tensor of shape {}", axes.size(), axes, dim(),
           shape());
  Shape s, st, inverse = Shape::filled(dim(), -1);
  for (int i = 0; i < dim(); ++i) {
    const int a = normalize_axis(axes[i], dim(), "permute", shape());
    TG_CHECK(inverse[a] < 0, "permute: axis {} appears twice in {}", a, axes);
    inverse[a] = i;
    s.push_back(shape()[a]);
    st.push_back(strides()[a]);
  }
  return record_view("permute", *this, make_view(*this, s, st, offset()),
                     [inverse](const Tensor& g) { return Tensors{g.permute(inverse)}; });
}

Tensor Tensor::transpose(std::int64_t a, std::int64_t b) const {
  const int x = normalize_axis(a, dim(), "transpose", shape());
  const int y = normalize_axis(b, dim(), "transpose", shape());
  Shape axes;
  for (int d = 0; d < dim(); ++d) axes.push_back(d);
  std::swap(axes[x], axes[y]);
  return permute(axes);
}

Tensor Tensor::t() const {
  TG_CHECK(dim() <= 2, "t: expected a tensor with at most 2 dims, got shape {}; use transpose(a, b)", shape());
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::expand(const Shape& shape_arg) const {
  TG_CHECK(shape_arg.size() >= dim(), "expand: cannot expand shape {} to fewer dims {}", shape(), shape_arg);
  const int lead = shape_arg.size() - dim();
  Shape s, st;
  for (int d = 0; d < shape_arg.size(); ++d) {
    const std::int64_t want = shape_arg[d];
    if (d < lead) {
      TG_CHECK(want >= 0, "expand: invalid size {} for new leading dim {} in {}", want, d, shape_arg);
      s.push_back(want);
      st.push_back(0);
      continue;
    }
    const std::int64_t have = shape()[d - lead];
    if (want == -1 || want == have) {
      s.push_back(have);
      st.push_back(strides()[d - lead]);
    } else {
      TG_CHECK(have == 1, "expand: cannot expand shape {} to {} (dim {}: {} vs {}; only size-1 dims expand)", shape(),
               shape_arg, d, have, want);
      TG_CHECK(want >= 0, "expand: invalid size {} in {}", want, shape_arg);
      s.push_back(want);
      st.push_back(0);
    }
  }
  if (s == shape()) return *this;
  bool empty_result = false, overflows = false;
  std::int64_t count = 1;
  for (int d = 0; d < s.size(); ++d) {
    empty_result = empty_result || s[d] == 0;
    overflows = overflows || __builtin_mul_overflow(count, s[d], &count);
  }
  TG_CHECK(empty_result || !overflows, "expand: cannot expand shape {} to {}: more than 2^63 - 1 elements", shape(), s);
  const Shape in_shape = shape();
  return record_view("expand", *this, make_view(*this, s, st, offset()),
                     [in_shape](const Tensor& g) { return Tensors{detail::sum_to(g, in_shape)}; });
}

Tensor Tensor::slice(std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step) const {
  const int a = normalize_axis(axis, dim(), "slice", shape());
  TG_CHECK(step > 0, "slice: step must be positive, got {} (use flip() to reverse)", step);
  const std::int64_t n = shape()[a];
  auto clamp = [n](std::int64_t i) { return std::clamp(i < 0 ? i + n : i, std::int64_t{0}, n); };
  const std::int64_t b = clamp(start), e = clamp(stop);
  const std::int64_t len = e > b ? (e - b - 1) / step + 1 : 0;
  Shape s = shape();
  Strides st = strides();
  s[a] = len;
  if (len > 1) st[a] = strides()[a] * step;  // (a step beyond the dim would overflow, and no stride is needed)
  const Shape in_shape = shape();
  const DType dt = dtype();
  return record_view("slice", *this, make_view(*this, s, st, offset() + b * strides()[a]),
                     [in_shape, dt, a, b, e, step](const Tensor& g) {
                       Tensor z = zeros(in_shape, dt);
                       z.slice(a, b, e, step).copy_(g);
                       return Tensors{z};
                     });
}

Tensor Tensor::narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const {
  const int a = normalize_axis(axis, dim(), "narrow", shape());
  const std::int64_t n = shape()[a];
  const std::int64_t b = start < 0 ? start + n : start;
  TG_CHECK(b >= 0 && b <= n && length >= 0 && length <= n - b,
           "narrow: range [{}, {}) is out of bounds for dim {} of size {} (shape {})", start,
           static_cast<double>(start) + static_cast<double>(length), a, n, shape());  // (the sum may not fit int64)
  return slice(a, b, b + length);
}

Tensor Tensor::select(std::int64_t axis, std::int64_t index) const {
  const int a = normalize_axis(axis, dim(), "select", shape());
  const std::int64_t n = shape()[a];
  const std::int64_t i = index < 0 ? index + n : index;
  TG_CHECK(i >= 0 && i < n, "select: index {} is out of range for dim {} of size {} (shape {})", index, a, n, shape());
  Shape s = shape();
  Strides st = strides();
  s.erase(a);
  st.erase(a);
  const Shape in_shape = shape();
  const DType dt = dtype();
  return record_view("select", *this, make_view(*this, s, st, offset() + i * strides()[a]),
                     [in_shape, dt, a, i](const Tensor& g) {
                       Tensor z = zeros(in_shape, dt);
                       z.select(a, i).copy_(g);
                       return Tensors{z};
                     });
}

Tensor Tensor::squeeze() const {
  Shape s;
  for (std::int64_t d : shape())
    if (d != 1) s.push_back(d);
  return s == shape() ? *this : reshape(s);
}

Tensor Tensor::squeeze(std::int64_t axis) const {
  const int a = normalize_axis(axis, dim(), "squeeze", shape());
  if (shape()[a] != 1) return *this;
  Shape s = shape();
  s.erase(a);
  return reshape(s);
}

Tensor Tensor::unsqueeze(std::int64_t axis) const {
  const int a = normalize_axis(axis, dim() + 1, "unsqueeze", shape());
  Shape s = shape();
  s.insert(a, 1);
  return reshape(s);
}

Tensor Tensor::flip(const Shape& axes) const {
  Shape st = strides();
  std::int64_t off = offset();
  std::uint32_t seen = 0;
  for (std::int64_t axis : axes) {
    const int a = normalize_axis(axis, dim(), "flip", shape());
    TG_CHECK(!(seen & (1u << a)), "flip: axis {} appears twice in {}", a, axes);
    seen |= 1u << a;
    if (shape()[a] > 0) off += (shape()[a] - 1) * st[a];
    st[a] = -st[a];
  }
  return record_view("flip", *this, make_view(*this, shape(), st, off),
                     [axes](const Tensor& g) { return Tensors{g.flip(axes)}; });
}

Tensor Tensor::diagonal() const {
  TG_CHECK(dim() == 2, "diagonal: expected a 2-D tensor, got shape {}", shape());
  const std::int64_t n = std::min(shape()[0], shape()[1]);
  const Shape in_shape = shape();
  const DType dt = dtype();
  return record_view("diagonal", *this, make_view(*this, Shape{n}, Strides{strides()[0] + strides()[1]}, offset()),
                     [in_shape, dt](const Tensor& g) {
                       Tensor z = zeros(in_shape, dt);
                       z.diagonal().copy_(g);
                       return Tensors{z};
                     });
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), "clone");
  detail::copy_into(out, *this);
  return autograd::record("clone", {*this}, out, [](const Tensor& g) { return Tensors{g}; });
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(shape(), target, "to");
  detail::copy_into(out, *this);
  const DType source = dtype();
  return autograd::record("to", {*this}, out, [source](const Tensor& g) { return Tensors{g.to(source)}; });
}

}  // namespace tg
