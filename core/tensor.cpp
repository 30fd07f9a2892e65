#include "core/tensor.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "core/autograd.hpp"
#include "core/copy.hpp"

namespace tg {

// ---- metadata -------------------------------------------------------------------------------------------
std::int64_t Tensor::size(std::int64_t axis) const {
  return shape()[normalize_axis(axis, dim(), "size", shape())];
}

bool Tensor::is_contiguous() const {
  const TensorImpl& t = impl();
  std::int64_t expected = 1;
  for (int d = t.shape.size() - 1; d >= 0; --d) {
    if (t.shape[d] == 1) continue;
    if (t.strides[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

void* Tensor::raw_data() const {
  const TensorImpl& t = impl();
  return static_cast<char*>(t.storage->data()) + t.offset * static_cast<std::int64_t>(dtype_size(t.dtype));
}

void Tensor::check_dtype(DType want, const char* op) const {
  TG_CHECK(dtype() == want, "{}: expected a {} tensor, got {} (shape {})", op, want, dtype(), shape());
}

namespace detail {

std::int64_t element_offset(const Tensor& t, std::initializer_list<std::int64_t> index) {
  TG_CHECK(static_cast<int>(index.size()) == t.dim(), "at: got {} indices for a {}-d tensor of shape {}",
           index.size(), t.dim(), t.shape());
  std::int64_t off = t.offset();
  int d = 0;
  for (std::int64_t i : index) {
    const std::int64_t n = t.shape()[d];
    const std::int64_t j = i < 0 ? i + n : i;
    TG_CHECK(j >= 0 && j < n, "at: index {} is out of range for dim {} of size {} (shape {})", i, d, n, t.shape());
    off += j * t.strides()[d];
    ++d;
  }
  return off;
}

double read_as_double(const Tensor& t, std::int64_t element_offset) {
  return dispatch(t.dtype(), "item", [&]<class T>() {
    return static_cast<double>(static_cast<const T*>(t.storage()->data())[element_offset]);
  });
}

std::int64_t read_as_int(const Tensor& t, std::int64_t element_offset) {
  return dispatch(t.dtype(), "item", [&]<class T>() {
    return static_cast<std::int64_t>(static_cast<const T*>(t.storage()->data())[element_offset]);
  });
}

Tensor from_buffer(const void* data, DType dtype, const Shape& shape) {
  Tensor t = empty(shape, dtype);
  if (t.numel() > 0) std::memcpy(t.raw_data(), data, static_cast<std::size_t>(t.numel()) * dtype_size(dtype));
  return t;
}

}  // namespace detail

// ---- autograd -------------------------------------------------------------------------------------------
bool Tensor::requires_grad() const { return impl().requires_grad || impl().grad_fn != nullptr; }

Tensor& Tensor::requires_grad_(bool on) {
  TG_CHECK(is_leaf(),
           "requires_grad_: only leaf tensors can be marked, but this one is the output of '{}'; use "
           "detach().requires_grad_() to start a new leaf",
           grad_fn()->name());
  TG_CHECK(!on || is_floating_point(),
           "requires_grad_: only floating-point tensors can require gradients, got {} (shape {})", dtype(), shape());
  impl().requires_grad = on;
  return *this;
}

namespace detail {
std::mutex& leaf_grad_mutex(const TensorImpl& leaf) {
  // Striped: a lock per leaf would cost a mutex in every tensor.
  static std::array<std::mutex, 64> stripes;
  return stripes[(reinterpret_cast<std::uintptr_t>(&leaf) >> 6) % stripes.size()];
}
}  // namespace detail

Tensor Tensor::grad() const {
  std::lock_guard lock(detail::leaf_grad_mutex(impl()));
  const auto& g = impl().grad;
  return g ? Tensor(g) : Tensor();
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined())
    TG_CHECK(g.shape() == shape() && g.dtype() == dtype(), "set_grad: gradient {} {} does not match tensor {} {}",
             g.shape(), g.dtype(), shape(), dtype());
  std::shared_ptr<TensorImpl> value = g.defined() ? g.detach().impl_ptr() : nullptr;
  std::lock_guard lock(detail::leaf_grad_mutex(impl()));
  impl().grad.swap(value);  // the old gradient is released after the lock
}

void Tensor::reset_grad() { set_grad(Tensor()); }

Tensor Tensor::detach() const {
  auto d = std::make_shared<TensorImpl>();
  const TensorImpl& s = impl();
  d->storage = s.storage;
  d->shape = s.shape;
  d->strides = s.strides;
  d->offset = s.offset;
  d->dtype = s.dtype;
  return Tensor(std::move(d));
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, {grad}, retain_graph);
}

// ---- in-place ---------------------------------------------------------------------------------------------
namespace {
void check_writable(const Tensor& t, const char* op) {
  TG_CHECK(!(grad_enabled() && t.requires_grad()),
           "{}: in-place writes to a tensor that requires grad (shape {}) are not recorded; use the "
           "out-of-place op, or write under NoGradGuard (as optimizers do)",
           op, t.shape());
  for (int d = 0; d < t.dim(); ++d)
    TG_CHECK(t.strides()[d] != 0 || t.shape()[d] <= 1,
             "{}: cannot write into an expanded tensor (shape {}, stride 0 in dim {}): its elements share memory; "
             "clone() it first",
             op, t.shape(), d);
}
}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  check_writable(*this, "copy_");
  // The copy is not recorded: a source that requires grad would silently lose its gradient.
  TG_CHECK(!(grad_enabled() && src.defined() && src.requires_grad()),
           "copy_: the source (shape {}) requires grad, and in-place copies are not recorded, so its gradient would "
           "be lost; use the source tensor itself, or copy src.detach() (or under NoGradGuard) if that is intended",
           src.shape());
  Tensor s = src.detach();
  if (s.shape() != shape()) {
    broadcast_shapes(shape(), s.shape(), "copy_");  // raises the usual message if incompatible
    TG_CHECK(broadcast_shapes(shape(), s.shape(), "copy_") == shape(),
             "copy_: source of shape {} does not broadcast to destination shape {}", s.shape(), shape());
    s = s.expand(shape());
  }
  // Source and destination may overlap (e.g. x.copy_(x.flip(...))): copy through a temporary then.
  if (s.storage() == storage()) s = s.clone();
  detail::copy_into(*this, s);
  impl().storage->bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_writable(*this, "fill_");
  detail::fill(*this, value);
  impl().storage->bump_version();
  return *this;
}

// ---- factories --------------------------------------------------------------------------------------------
void check_scalar_fits(std::string_view op, double v, DType t) {
  TG_CHECK(scalar_fits(v, t), "{}: value {} does not fit in {}", op, v, dtype_name(t));
}

namespace {

// A new row-major tensor; `op` (the factory the caller used) names it in errors.
Tensor allocate(const char* op, const Shape& shape, DType dtype) {
  for (int d = 0; d < shape.size(); ++d)
    TG_CHECK(shape[d] >= 0, "{}: negative dimension {} in shape {}", op, shape[d], shape);
  std::int64_t n = 0;
  try {
    n = shape.numel();
  } catch (const Error&) {  // name the op, not just the shape
    TG_FAIL("{}: shape {} of {} has more than 2^63 - 1 elements", op, shape, dtype);
  }
  // Sizes a pointer difference can span (and well past any real memory): larger requests are
  // malformed, not merely too big, so they are rejected before asking the allocator.
  constexpr std::int64_t kMaxBytes = std::int64_t{1} << 56;
  TG_CHECK(n <= kMaxBytes / static_cast<std::int64_t>(dtype_size(dtype)),
           "{}: shape {} of {} would need {} elements of {} bytes, more than 2^56 bytes", op, shape, dtype, n,
           dtype_size(dtype));
  auto impl = std::make_shared<TensorImpl>();
  try {
    impl->storage = Storage::allocate(static_cast<std::size_t>(n) * dtype_size(dtype));
  } catch (const OutOfMemory& e) {  // name the tensor that did not fit
    throw OutOfMemory(fmt::format("{}: {} (shape {} of {})", op, e.what(), shape, dtype));
  }
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor filled(const char* op, const Shape& shape, double value, DType dtype) {
  check_scalar_fits(op, value, dtype);  // before allocating
  Tensor t = allocate(op, shape, dtype);
  detail::fill(t, value, op);
  return t;
}

}  // namespace

Tensor empty(const Shape& shape, DType dtype) { return allocate("empty", shape, dtype); }
Tensor empty(const Shape& shape, DType dtype, const char* op) { return allocate(op, shape, dtype); }
Tensor full(const Shape& shape, double value, DType dtype) { return filled("full", shape, value, dtype); }
Tensor zeros(const Shape& shape, DType dtype) { return filled("zeros", shape, 0.0, dtype); }
Tensor ones(const Shape& shape, DType dtype) { return filled("ones", shape, 1.0, dtype); }
Tensor empty_like(const Tensor& t) { return allocate("empty_like", t.shape(), t.dtype()); }
Tensor zeros_like(const Tensor& t) { return filled("zeros_like", t.shape(), 0.0, t.dtype()); }
Tensor ones_like(const Tensor& t) { return filled("ones_like", t.shape(), 1.0, t.dtype()); }
Tensor full_like(const Tensor& t, double value) { return filled("full_like", t.shape(), value, t.dtype()); }
Tensor scalar_tensor(double value, DType dtype) { return filled("scalar_tensor", Shape{}, value, dtype); }

Tensor arange(double start, double stop, double step, DType dtype) {
  TG_CHECK(step != 0.0 && std::isfinite(step) && std::isfinite(start) && std::isfinite(stop),
           "arange: need finite start/stop and a nonzero step, got ({}, {}, {})", start, stop, step);
  // As torch.arange: a step pointing away from `stop` is an error, not an empty range.
  TG_CHECK(start == stop || (stop > start) == (step > 0.0),
           "arange: step {} points away from stop: start {}, stop {} (the range would be empty)", step, start, stop);
  // Integer start and step for an integer dtype: exact integer arithmetic (in doubles, values past
  // 2^53 would round: arange(2^53, 2^53 + 4) gave 2^53 twice and stop itself).
  auto integral = [](double v) { return std::trunc(v) == v && std::fabs(v) < 0x1p63; };
  const bool exact = !is_floating(dtype) && integral(start) && integral(step);
  double count = std::ceil((stop - start) / step);
  if (exact && integral(stop)) {  // ceil((stop - start) / step) without rounding
    const __int128 span = static_cast<__int128>(stop) - static_cast<__int128>(start);
    const __int128 st = static_cast<__int128>(step);
    const __int128 q = span / st, r = span % st;
    count = static_cast<double>(q + (r != 0 && (r > 0) == (st > 0) ? 1 : 0));
  }
  TG_CHECK(count < 0x1p62, "arange: ({}, {}, {}) would have {} elements", start, stop, step, count);
  const auto n = static_cast<std::int64_t>(std::max(0.0, count));
  if (n > 0) {  // the first and the last value must fit an integer dtype
    check_scalar_fits("arange", start, dtype);
    if (exact) {
      const __int128 last = static_cast<__int128>(start) + static_cast<__int128>(n - 1) * static_cast<__int128>(step);
      TG_CHECK(last >= std::numeric_limits<std::int64_t>::min() && last <= std::numeric_limits<std::int64_t>::max(),
               "arange: the last value of ({}, {}, {}) does not fit in {}", start, stop, step, dtype_name(dtype));
      if (dtype != DType::i64)  // narrower: the double is exact
        check_scalar_fits("arange", static_cast<double>(static_cast<std::int64_t>(last)), dtype);
    } else {
      check_scalar_fits("arange", start + static_cast<double>(n - 1) * step, dtype);
    }
  }
  Tensor t = allocate("arange", Shape{n}, dtype);
  dispatch(dtype, "arange", [&]<class T>() {
    T* p = t.data<T>();
    if constexpr (std::is_integral_v<T>) {
      if (exact) {
        // Stepped, not first + i * by: every value lies between the first and the (checked) last,
        // while i * by alone could overflow.
        auto v = static_cast<std::int64_t>(start);
        const auto by = static_cast<std::int64_t>(step);
        for (std::int64_t i = 0; i < n; ++i) {
          p[i] = static_cast<T>(v);
          if (i + 1 < n) v += by;
        }
        return;
      }
    }
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(start + static_cast<double>(i) * step);
  });
  return t;
}
Tensor arange(std::int64_t stop, DType dtype) { return arange(0.0, static_cast<double>(stop), 1.0, dtype); }

Tensor linspace(double start, double stop, std::int64_t n, DType dtype) {
  TG_CHECK(n >= 0, "linspace: expected n >= 0, got {}", n);
  if (n > 0) {
    check_scalar_fits("linspace", start, dtype);
    check_scalar_fits("linspace", stop, dtype);
  }
  Tensor t = allocate("linspace", Shape{n}, dtype);
  dispatch(dtype, "linspace", [&]<class T>() {
    T* p = t.data<T>();
    const double step = n > 1 ? (stop - start) / static_cast<double>(n - 1) : 0.0;
    for (std::int64_t i = 0; i < n; ++i)  // the last point is exactly `stop`
      p[i] = static_cast<T>(i == n - 1 && n > 1 ? stop : start + static_cast<double>(i) * step);
  });
  return t;
}

Tensor eye(std::int64_t n, std::int64_t m, DType dtype) {
  TG_CHECK(n >= 0 && m >= -1, "eye: expected n >= 0 and m >= 0 (or -1 for m = n), got n = {}, m = {}", n, m);
  if (m == -1) m = n;
  Tensor t = filled("eye", Shape{n, m}, 0.0, dtype);
  dispatch(dtype, "eye", [&]<class T>() {
    T* p = t.data<T>();
    for (std::int64_t i = 0; i < std::min(n, m); ++i) p[i * m + i] = T(1);
  });
  return t;
}

Tensor tensor(std::initializer_list<double> values, DType dtype) {
  return tensor(values, Shape{static_cast<std::int64_t>(values.size())}, dtype);
}

Tensor tensor(std::initializer_list<double> values, const Shape& shape, DType dtype) {
  TG_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(), "tensor: {} values do not fill shape {} ({} elements)",
           values.size(), shape, shape.numel());
  for (double v : values) check_scalar_fits("tensor", v, dtype);
  Tensor t = allocate("tensor", shape, dtype);
  dispatch(dtype, "tensor", [&]<class T>() {
    T* p = t.data<T>();
    std::int64_t i = 0;
    for (double v : values) p[i++] = static_cast<T>(v);
  });
  return t;
}

// ---- printing ---------------------------------------------------------------------------------------------
std::string Tensor::summary() const {
  if (!defined()) return "Tensor(undefined)";
  std::string s = fmt::format("Tensor{} {}", shape(), dtype());
  if (grad_fn()) s += fmt::format(" grad_fn={}", grad_fn()->name());
  else if (requires_grad()) s += " requires_grad";
  return s;
}

namespace {

constexpr std::int64_t kSummarizeThreshold = 1000;  // print "..." above this many elements
constexpr std::int64_t kEdgeItems = 3;

// Reads the shown elements in place through the strides: a summarised tensor is never copied
// (printing a large expanded view must not materialise it).
struct Printer {
  const Tensor& t;
  bool integral, boolean, summarize;
  int precision;
  int width = 1;
  bool scientific = false;  // 1.0000e-08: chosen from the shown values, as torch does

  std::string element(std::int64_t k) const {  // k: element offset from t's first element
    if (boolean) return t.data<bool>()[k] ? "true" : "false";
    if (integral)
      return dispatch(t.dtype(), "to_string", [&]<class T>() { return fmt::format("{}", t.data<T>()[k]); });
    const double v = value(k);
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    return scientific ? fmt::format("{:.{}e}", v, precision) : fmt::format("{:.{}f}", v, precision);
  }
  double value(std::int64_t k) const {
    return dispatch(t.dtype(), "to_string", [&]<class T>() { return static_cast<double>(t.data<T>()[k]); });
  }
  bool shown(std::int64_t idx, std::int64_t n) const {
    return !summarize || n <= 2 * kEdgeItems || idx < kEdgeItems || idx >= n - kEdgeItems;
  }
  // The next index after k, jumping over the summarised middle (so a huge dim costs nothing).
  std::int64_t next(std::int64_t k, std::int64_t n) const {
    return shown(k + 1, n) || k + 1 >= n ? k + 1 : n - kEdgeItems;
  }
  // f(offset) for every shown element, in order.
  template <class F>
  void visit(int d, std::int64_t base, F&& f) const {
    const std::int64_t n = t.shape()[d], stride = t.strides()[d];
    for (std::int64_t k = 0; k < n; k = next(k, n)) {
      if (d + 1 == t.dim()) f(base + k * stride);
      else visit(d + 1, base + k * stride, f);
    }
  }
  // Fixed-point would show tiny values as 0.0000 and huge ones as long digit strings: torch's rule
  // switches to scientific notation when the shown finite nonzero magnitudes reach 1e8, go below
  // 1e-4 or span more than 1000x (only the first of these for integer values).
  void choose_notation() {
    if (integral || boolean) return;
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    bool whole = true;
    visit(0, 0, [&](std::int64_t k) {
      const double a = std::fabs(value(k));
      if (a == 0 || !std::isfinite(a)) return;
      lo = std::min(lo, a);
      hi = std::max(hi, a);
      whole = whole && std::trunc(a) == a;
    });
    if (hi == 0) return;
    scientific = hi > 1e8 || (!whole && (lo < 1e-4 || hi / lo > 1000));
  }
  void measure() {
    visit(0, 0, [&](std::int64_t k) { width = std::max(width, static_cast<int>(element(k).size())); });
  }
  void print(std::string& out, int d, std::int64_t base, int indent) const {
    const std::int64_t n = t.shape()[d], stride = t.strides()[d];
    out += '[';
    for (std::int64_t k = 0; k < n; k = next(k, n)) {
      if (k == n - kEdgeItems && !shown(k - 1, n))  // the middle was skipped
        out += d + 1 == t.dim() ? "..., " : fmt::format("...,\n{:{}}", "", indent + 1);
      if (d + 1 == t.dim()) {
        out += fmt::format("{:>{}}", element(base + k * stride), width);
        if (k + 1 < n) out += ", ";
      } else {
        print(out, d + 1, base + k * stride, indent + 1);
        if (k + 1 < n) {
          out += ',';
          out.append(static_cast<std::size_t>(t.dim() - d - 1), '\n');
          out.append(static_cast<std::size_t>(indent + 1), ' ');
        }
      }
    }
    out += ']';
  }
};

}  // namespace

std::string Tensor::to_string(int precision) const {
  if (!defined()) return "Tensor(undefined)";
  TG_CHECK(precision >= 0 && precision <= 30, "to_string: precision must be in 0..30 digits, got {}", precision);
  Printer p{*this, !is_floating_point(), dtype() == DType::boolean, numel() > kSummarizeThreshold, precision};
  std::string out = "tensor(";
  if (dim() == 0) {
    const double v = is_floating_point() ? p.value(0) : 0;
    p.scientific = v != 0 && std::isfinite(v) && (std::fabs(v) > 1e8 || std::fabs(v) < 1e-4);
    out += p.element(0);
  } else if (numel() == 0) {
    out += "[]";
  } else {
    p.choose_notation();
    p.measure();
    p.print(out, 0, 0, 7);
  }
  out += fmt::format(", shape={}, dtype={}", shape(), dtype());
  if (grad_fn()) out += fmt::format(", grad_fn={}", grad_fn()->name());
  else if (requires_grad()) out += ", requires_grad";
  out += ')';
  return out;
}

}  // namespace tg
