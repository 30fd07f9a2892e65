// Reductions: frontends and backward rules (kernels in ops/kernels/reduce.cpp).
#include "ops/reduce.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/kernels/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::ops {

using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

// A 0-d tensor takes axis 0 or -1, as in torch (it reduces like a 1-element vector).
void check_scalar_axis(const char* op, std::int64_t axis) {
  TG_CHECK(axis == 0 || axis == -1, "{}: axis {} is out of range for a 0-d tensor (expected 0 or -1)", op, axis);
}

// The axes to reduce as a bit mask (all axes for an empty list).
std::uint32_t axes_mask(const Tensor& x, const Shape& axes, const char* op) {
  if (axes.empty()) return x.dim() ? (1u << x.dim()) - 1 : 0;
  if (x.dim() == 0) {
    for (std::int64_t a : axes) check_scalar_axis(op, a);
    TG_CHECK(axes.size() == 1, "{}: axis 0 appears twice in {}", op, axes);
    return 0;
  }
  std::uint32_t mask = 0;
  for (std::int64_t a : axes) {
    const int d = normalize_axis(a, x.dim(), op, x.shape());
    TG_CHECK(!(mask & (1u << d)), "{}: axis {} appears twice in {}", op, d, axes);
    mask |= 1u << d;
  }
  return mask;
}

Shape reduced_shape(const Shape& shape, std::uint32_t mask, bool keepdim) {
  Shape out;
  for (int d = 0; d < shape.size(); ++d) {
    if (!(mask & (1u << d))) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

std::int64_t reduced_count(const Shape& shape, std::uint32_t mask) {
  std::int64_t n = 1;
  for (int d = 0; d < shape.size(); ++d)
    if (mask & (1u << d)) n *= shape[d];
  return n;
}

// A gradient of the reduced shape, broadcast back over the input shape.
Tensor expand_back(const Tensor& g, const Shape& in_shape, std::uint32_t mask) {
  return g.reshape(reduced_shape(in_shape, mask, true)).expand(in_shape);
}

Tensor run_reduce(kernels::ReduceOp op, const Tensor& x, std::uint32_t mask, bool keepdim) {
  Tensor out = empty(reduced_shape(x.shape(), mask, keepdim), x.dtype());
  kernels::reduce(op, x, mask, out);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x_in, const Shape& axes, bool keepdim) {
  check_defined(x_in, "sum", "x");
  const Tensor x = x_in.is_floating_point() || x_in.dtype() == DType::i64 ? x_in : x_in.to(DType::i64);
  const std::uint32_t mask = axes_mask(x, axes, "sum");
  Tensor out = run_reduce(kernels::ReduceOp::sum, x, mask, keepdim);
  return record("sum", {x}, out, [in_shape = x.shape(), mask](const Tensor& g) {
    return Tensors{expand_back(g, in_shape, mask)};
  });
}

Tensor mean(const Tensor& x_in, const Shape& axes, bool keepdim) {
  check_defined(x_in, "mean", "x");
  const Tensor x = x_in.is_floating_point() ? x_in : x_in.to(DType::f32);
  const std::uint32_t mask = axes_mask(x, axes, "mean");
  const std::int64_t n = reduced_count(x.shape(), mask);
  Tensor out = run_reduce(kernels::ReduceOp::sum, x, mask, keepdim);
  {
    NoGradGuard no_grad;
    out = div(out, static_cast<double>(n));
  }
  return record("mean", {x}, out, [in_shape = x.shape(), mask, n](const Tensor& g) {
    return Tensors{expand_back(div(g, static_cast<double>(n)), in_shape, mask)};
  });
}

Tensor prod(const Tensor& x_in, const Shape& axes, bool keepdim) {
  check_defined(x_in, "prod", "x");
  const Tensor x = x_in.is_floating_point() || x_in.dtype() == DType::i64 ? x_in : x_in.to(DType::i64);
  const std::uint32_t mask = axes_mask(x, axes, "prod");
  Tensor out = run_reduce(kernels::ReduceOp::prod, x, mask, keepdim);
  return record("prod", {x}, out, [sx = SavedTensor(x), mask](const Tensor& g) {
    // d prod / d x_i = product of the other elements, computed with prefix/suffix products so
    // that zeros are handled exactly (prod / x_i would divide by zero).
    const Tensor xv = sx.get();
    Shape perm;
    for (int d = 0; d < xv.dim(); ++d)
      if (!(mask & (1u << d))) perm.push_back(d);
    for (int d = 0; d < xv.dim(); ++d)
      if (mask & (1u << d)) perm.push_back(d);
    Shape inverse = Shape::filled(perm.size(), 0);
    for (int i = 0; i < perm.size(); ++i) inverse[static_cast<int>(perm[i])] = i;
    const Tensor xp = xv.permute(perm).contiguous();
    const std::int64_t R = reduced_count(xv.shape(), mask);
    const std::int64_t K = R ? xp.numel() / R : 0;
    Tensor others = empty(xp.shape(), xp.dtype());
    dispatch_float(xp.dtype(), "prod", [&]<class T>() {
      using Acc = double;  // f32 rows too: long products lose accuracy step by step in f32
      const T* p = xp.data<T>();
      T* o = others.data<T>();
      std::vector<Acc> prefix(static_cast<std::size_t>(R));
      for (std::int64_t k = 0; k < K; ++k) {
        Acc run(1);
        for (std::int64_t i = 0; i < R; ++i) {
          prefix[i] = run;
          run *= p[k * R + i];
        }
        Acc suffix(1);
        for (std::int64_t i = R - 1; i >= 0; --i) {
          o[k * R + i] = static_cast<T>(prefix[i] * suffix);
          suffix *= p[k * R + i];
        }
      }
    });
    return Tensors{mul(expand_back(g, xv.shape(), mask), others.permute(inverse))};
  });
}

namespace {
template <bool IsMax>
Tensor extreme(const char* op, const Tensor& x, const Shape& axes, bool keepdim) {
  check_defined(x, op, "x");
  TG_CHECK(x.dtype() != DType::boolean, "{}: expected a numeric tensor, got bool (shape {})", op, x.shape());
  const std::uint32_t mask = axes_mask(x, axes, op);
  TG_CHECK(reduced_count(x.shape(), mask) > 0, "{}: cannot reduce an empty dimension (shape {})", op, x.shape());
  TG_CHECK(x.numel() > 0 || !axes.empty(), "{}: cannot reduce an empty tensor (shape {})", op, x.shape());
  Tensor out = run_reduce(IsMax ? kernels::ReduceOp::max : kernels::ReduceOp::min, x, mask, keepdim);
  return record(op, {x}, out, [sx = SavedTensor(x), so = SavedTensor(out), mask](const Tensor& g) {
    const Tensor xv = sx.get();
    const Shape kshape = reduced_shape(xv.shape(), mask, true);
    Shape reduced_axes;
    for (int d = 0; d < xv.dim(); ++d)
      if (mask & (1u << d)) reduced_axes.push_back(d);
    // Ties share the gradient equally. A NaN extreme matches nothing: g / 0 * 0 makes its whole
    // slice NaN, as in torch, rather than hiding the NaN behind zeros.
    const Tensor hit = eq(xv, so.get().reshape(kshape)).to(xv.dtype());
    const Tensor count = sum(hit, reduced_axes, true);
    return Tensors{mul(div(g.reshape(kshape), count).expand(xv.shape()), hit)};
  });
}
}  // namespace

Tensor amax(const Tensor& x, const Shape& axes, bool keepdim) { return extreme<true>("amax", x, axes, keepdim); }
Tensor amin(const Tensor& x, const Shape& axes, bool keepdim) { return extreme<false>("amin", x, axes, keepdim); }

namespace {
ValuesIndices arg_extreme(const char* op, bool is_max, const Tensor& x, std::int64_t axis, bool keepdim) {
  check_defined(x, op, "x");
  if (x.dim() == 0) {  // as a 1-element vector; the results are 0-d again
    check_scalar_axis(op, axis);
    const ValuesIndices r = arg_extreme(op, is_max, x.reshape({1}), 0, false);
    return {r.values.reshape({}), r.indices.reshape({})};
  }
  const int a = normalize_axis(axis, x.dim(), op, x.shape());
  TG_CHECK(x.shape()[a] > 0, "{}: cannot reduce dim {} of size 0 (shape {})", op, a, x.shape());
  TG_CHECK(x.dtype() != DType::boolean, "{}: expected a numeric tensor, got bool (shape {})", op, x.shape());
  const std::uint32_t mask = 1u << a;
  Tensor values = empty(reduced_shape(x.shape(), mask, keepdim), x.dtype());
  Tensor indices = empty(values.shape(), DType::i64);
  kernels::arg_reduce(is_max, x, a, values, indices);
  // The indices are saved (version-checked): they are also returned, and a caller who edited them
  // would otherwise send the gradient to the wrong elements, or write out of bounds.
  values = record(op, {x}, values, [in_shape = x.shape(), dt = x.dtype(), a, si = SavedTensor(indices)](const Tensor& g) {
    // Scatter each gradient to the position its value came from.
    Shape perm;
    for (int d = 0; d < in_shape.size(); ++d)
      if (d != a) perm.push_back(d);
    perm.push_back(a);
    Shape permuted;
    for (std::int64_t d : perm) permuted.push_back(in_shape[static_cast<int>(d)]);
    Tensor gx = zeros(permuted, dt);
    const Tensor gc = g.contiguous();
    const std::int64_t R = in_shape[a];
    const Tensor indices = si.get();
    const std::int64_t* idx = indices.data<std::int64_t>();
    dispatch_float(dt, "max", [&]<class T>() {
      T* o = gx.data<T>();
      const T* gp = gc.data<T>();
      for (std::int64_t k = 0; k < gc.numel(); ++k) o[k * R + idx[k]] = gp[k];
    });
    Shape inverse = Shape::filled(perm.size(), 0);
    for (int i = 0; i < perm.size(); ++i) inverse[static_cast<int>(perm[i])] = i;
    return Tensors{gx.permute(inverse)};
  });
  return {values, indices};
}
}  // namespace

ValuesIndices max(const Tensor& x, std::int64_t axis, bool keepdim) { return arg_extreme("max", true, x, axis, keepdim); }
ValuesIndices min(const Tensor& x, std::int64_t axis, bool keepdim) { return arg_extreme("min", false, x, axis, keepdim); }
Tensor argmax(const Tensor& x, std::int64_t axis, bool keepdim) {
  NoGradGuard no_grad;
  return arg_extreme("argmax", true, x, axis, keepdim).indices;
}
Tensor argmin(const Tensor& x, std::int64_t axis, bool keepdim) {
  NoGradGuard no_grad;
  return arg_extreme("argmin", false, x, axis, keepdim).indices;
}

// ---- sorting ----------------------------------------------------------------------------------------------
namespace {
// The first k positions of the sorted order of every row along `axis`, as i64 indices with x's
// shape except k along axis. Rows are sorted independently (in parallel) with a total order --
// value, then position -- so the result is the stable sort's, for any thread count.
Tensor sorted_positions(const char* op, const Tensor& x, int a, bool descending, std::int64_t k) {
  Shape perm;  // axis last
  for (int d = 0; d < x.dim(); ++d)
    if (d != a) perm.push_back(d);
  perm.push_back(a);
  const Tensor rows = x.permute(perm).contiguous();  // [..., n]
  const std::int64_t n = x.shape()[a], count = n > 0 ? rows.numel() / n : 0;
  Shape out_shape = rows.shape();
  out_shape[out_shape.size() - 1] = k;
  Tensor out = empty(out_shape, DType::i64);  // [..., k]
  std::int64_t* o = out.data<std::int64_t>();
  dispatch(x.dtype(), op, [&]<class T>() {
    const T* v = rows.data<T>();
    parallel_for(count, std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(n, 1)), [&](std::int64_t begin, std::int64_t end) {
      std::vector<std::int64_t> order(static_cast<std::size_t>(n));
      for (std::int64_t r = begin; r < end; ++r) {
        const T* row = v + r * n;
        const auto before = [&](std::int64_t i, std::int64_t j) {  // i sorts before j
          if constexpr (std::is_floating_point_v<T>) {
            const bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
            if (ni || nj) return ni && nj ? i < j : (ni == descending);
          }
          if (row[i] != row[j]) return descending ? row[j] < row[i] : row[i] < row[j];
          return i < j;
        };
        std::iota(order.begin(), order.end(), 0);
        if (k < n) std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
        else std::sort(order.begin(), order.end(), before);
        std::copy(order.begin(), order.begin() + k, o + r * k);
      }
    });
  });
  Shape inverse = Shape::filled(perm.size(), 0);
  for (int i = 0; i < perm.size(); ++i) inverse[static_cast<int>(perm[i])] = i;
  return out.permute(inverse).contiguous();
}

// values (unless only the indices are asked for) and indices of the first k (default: all).
ValuesIndices sort_impl(const char* op, const Tensor& x, std::int64_t axis, bool descending, std::optional<std::int64_t> k,
                        bool values = true) {
  check_defined(x, op, "x");
  if (x.dim() == 0) {  // as a 1-element vector; the results are 0-d again
    check_scalar_axis(op, axis);
    TG_CHECK(!k || *k == 1, "{}: k = {} for a 0-d tensor (one element, and a 0-d result): k must be 1", op, *k);
    const ValuesIndices r = sort_impl(op, x.reshape({1}), 0, descending, k, values);
    return {values ? r.values.reshape({}) : Tensor(), r.indices.reshape({})};
  }
  const int a = normalize_axis(axis, x.dim(), op, x.shape());
  const std::int64_t n = x.shape()[a];
  TG_CHECK(!k || (*k >= 0 && *k <= n), "{}: k = {} is out of range for dim {} of size {} (shape {})", op, *k, a, n, x.shape());
  Tensor indices;
  {
    NoGradGuard no_grad;
    indices = sorted_positions(op, x, a, descending, k.value_or(n));
  }
  return {values ? gather(x, a, indices) : Tensor(), indices};
}
}  // namespace

ValuesIndices sort(const Tensor& x, std::int64_t axis, bool descending) { return sort_impl("sort", x, axis, descending, std::nullopt); }
Tensor argsort(const Tensor& x, std::int64_t axis, bool descending) {
  return sort_impl("argsort", x, axis, descending, std::nullopt, /*values=*/false).indices;
}
ValuesIndices topk(const Tensor& x, std::int64_t k, std::int64_t axis, bool largest) { return sort_impl("topk", x, axis, largest, k); }

Tensor logsumexp(const Tensor& x, const Shape& axes, bool keepdim) {
  check_defined(x, "logsumexp", "x");
  TG_CHECK(x.is_floating_point(), "logsumexp: expected a floating-point tensor, got {}", x.dtype());
  const std::uint32_t mask = axes_mask(x, axes, "logsumexp");
  // An empty reduction is log(0) = -inf: no shift (amax of nothing is undefined).
  Tensor shift = reduced_count(x.shape(), mask) == 0 ? zeros(reduced_shape(x.shape(), mask, true), x.dtype())
                                                     : amax(x, axes, true).detach();
  shift = where(isfinite(shift), shift, 0.0);  // all -inf (or inf) rows: no shift, exact result
  Tensor out = add(log(sum(exp(sub(x, shift)), axes, true)), shift);
  if (keepdim) return out;
  return out.reshape(reduced_shape(x.shape(), mask, false));
}

Tensor var(const Tensor& x, const Shape& axes, double correction, bool keepdim) {
  check_defined(x, "var", "x");
  TG_CHECK(x.is_floating_point(), "var: expected a floating-point tensor, got {}", x.dtype());
  const std::uint32_t mask = axes_mask(x, axes, "var");
  const double n = static_cast<double>(reduced_count(x.shape(), mask));
  const Tensor centered = sub(x, mean(x, axes, true));
  return div(sum(square(centered), axes, keepdim), std::max(0.0, n - correction));
}

Tensor stddev(const Tensor& x, const Shape& axes, double correction, bool keepdim) {
  check_defined(x, "stddev", "x");
  TG_CHECK(x.is_floating_point(), "stddev: expected a floating-point tensor, got {}", x.dtype());
  const std::uint32_t mask = axes_mask(x, axes, "stddev");
  const double divisor = std::max(0.0, static_cast<double>(reduced_count(x.shape(), mask)) - correction);
  Tensor out;
  {
    NoGradGuard no_grad;
    // The variance of f32 data in f64 (as PyTorch): its squares can leave f32's range where the
    // standard deviation does not (values near 1e19 or 1e-25).
    const Tensor v = var(x.dtype() == DType::f32 ? x.to(DType::f64) : x, axes, correction, keepdim);
    out = sqrt(v).to(x.dtype());
  }
  // d std / dx = (x - mean) / (std * divisor); where std == 0 (a constant slice) the subgradient 0
  // instead of sqrt's 0 * inf = NaN, as PyTorch does.
  return record("stddev", {x}, out, [sx = SavedTensor(x), so = SavedTensor(out), axes, mask, divisor](const Tensor& g) {
    const Tensor xv = sx.get();
    const Shape kshape = reduced_shape(xv.shape(), mask, true);
    const Tensor s = so.get().reshape(kshape);
    const Tensor scale = where(eq(s, 0.0), 0.0, div(g.reshape(kshape), mul(s, divisor)));
    return Tensors{mul(sub(xv, mean(xv, axes, true)), scale)};
  });
}

Tensor norm(const Tensor& x, double p, const Shape& axes, bool keepdim) {
  check_defined(x, "norm", "x");
  TG_CHECK(x.is_floating_point(), "norm: expected a floating-point tensor, got {}", x.dtype());
  (void)axes_mask(x, axes, "norm");  // bad axes are reported as norm's, not as those of sum or amax
  if (p == 1.0) return sum(abs(x), axes, keepdim);
  if (std::isinf(p) && p > 0) return amax(abs(x), axes, keepdim);
  TG_CHECK(p == 2.0, "norm: p must be 1, 2 or infinity, got {}", p);
  const std::uint32_t mask = axes_mask(x, axes, "norm");
  Tensor out;
  {
    NoGradGuard no_grad;
    out = sqrt(sum(square(x), axes, keepdim));
  }
  return record("norm", {x}, out, [sx = SavedTensor(x), so = SavedTensor(out), mask](const Tensor& g) {
    const Tensor xv = sx.get();
    const Shape kshape = reduced_shape(xv.shape(), mask, true);
    const Tensor n = so.get().reshape(kshape);
    const Tensor scale = where(eq(n, 0.0), 0.0, div(g.reshape(kshape), n));  // subgradient 0 at 0
    return Tensors{mul(xv, scale)};
  });
}

Tensor normalize(const Tensor& x, double p, std::int64_t axis, double eps) {
  check_defined(x, "normalize", "x");
  TG_CHECK(x.is_floating_point(), "normalize: expected a floating-point tensor, got {} (shape {})", x.dtype(), x.shape());
  TG_CHECK(x.dim() > 0, "normalize: expected a tensor with at least one dim, got a 0-d tensor");
  const int a = normalize_axis(axis, x.dim(), "normalize", x.shape());
  TG_CHECK(p == 1.0 || p == 2.0 || (std::isinf(p) && p > 0), "normalize: p must be 1, 2 or infinity, got {} (x {})",
           p, x.shape());
  TG_CHECK(std::isfinite(eps) && eps >= 0, "normalize: eps must be finite and >= 0, got {} (x {})", eps, x.shape());
  if (x.numel() == 0) return mul(x, 1.0);  // (the infinity norm of an empty slice does not exist)
  const Tensor n = norm(x, p, {a}, /*keepdim=*/true);  // [..., 1, ...]
  return div(x, clamp(n, eps, std::nullopt));
}

Tensor cumsum(const Tensor& x_in, std::int64_t axis) {
  check_defined(x_in, "cumsum", "x");
  const Tensor x = x_in.is_floating_point() || x_in.dtype() == DType::i64 ? x_in : x_in.to(DType::i64);
  if (x.dim() == 0) {  // as a 1-element vector, as torch
    check_scalar_axis("cumsum", axis);
    return cumsum(x.reshape({1}), 0).reshape({});
  }
  const int a = normalize_axis(axis, x.dim(), "cumsum", x.shape());
  Tensor out = empty(x.shape(), x.dtype());
  kernels::cumsum(x, a, false, out);
  return record("cumsum", {x}, out, [a](const Tensor& g) {
    Tensor gx = empty(g.shape(), g.dtype());
    kernels::cumsum(g, a, true, gx);  // the adjoint sums from the end
    return Tensors{gx};
  });
}

}  // namespace tg::ops
