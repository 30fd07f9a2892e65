// Rotary embeddings: frontend, shape checks and backward rule (kernel in ops/kernels/rotary.cpp).
#include "ops/rotary.hpp"

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/kernels/attention.hpp"

namespace tg::ops {

using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

constexpr const char* kOp = "apply_rotary";

// y = rotation of the rows of xc (contiguous [rows, d]) by the tables (contiguous [period, d/2]).
Tensor rotate(const Tensor& xc, const Tensor& cos, const Tensor& sin, std::int64_t period, bool interleaved,
              bool inverse) {
  Tensor y = empty(xc.shape(), xc.dtype(), "apply_rotary");
  const std::int64_t d = xc.shape().back();
  const std::int64_t rows = d ? xc.numel() / d : 0;
  dispatch_float(xc.dtype(), kOp, [&]<class T>() {
    kernels::rotary<T>(xc.data<T>(), y.data<T>(), rows, d, cos.data<T>(), sin.data<T>(), period, interleaved, inverse);
  });
  return y;
}

}  // namespace

Tensor apply_rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, RotaryLayout layout) {
  check_defined(x, kOp, "x");
  check_defined(cos, kOp, "cos");
  check_defined(sin, kOp, "sin");
  TG_CHECK(x.is_floating_point(), "{}: x must be a floating-point tensor (f32 or f64), got {} (shape {})", kOp,
           x.dtype(), x.shape());
  TG_CHECK(x.dim() >= 2, "{}: x must have shape [..., T, d] (at least 2 dims), got shape {}", kOp, x.shape());
  const std::int64_t T = x.shape()[x.dim() - 2], d = x.shape().back();
  TG_CHECK(d % 2 == 0, "{}: the feature size d (dim -1 of x, shape {}) must be even to form pairs, got d = {}", kOp,
           x.shape(), d);
  TG_CHECK(cos.shape() == sin.shape(), "{}: cos shape {} and sin shape {} differ", kOp, cos.shape(), sin.shape());
  TG_CHECK(cos.is_floating_point() && sin.is_floating_point(),
           "{}: cos and sin must be floating-point tensors, got {} and {}", kOp, cos.dtype(), sin.dtype());
  TG_CHECK(!grad_enabled() || (!cos.requires_grad() && !sin.requires_grad()),
           "{}: cos/sin are non-differentiable inputs (no gradient flows to them), but they require grad; pass "
           "cos.detach() / sin.detach()",
           kOp);
  const std::int64_t h = d / 2;
  Shape table = x.shape();
  table[table.size() - 1] = h;  // [..., T, d/2]
  TG_CHECK(cos.dim() >= 2 && cos.dim() <= x.dim(),
           "{}: cos/sin shape {} must be [T, d/2] = [{}, {}] or broadcast to [..., T, d/2] = {} (x shape {})", kOp,
           cos.shape(), T, h, table, x.shape());
  for (int i = 1; i <= cos.dim(); ++i) {
    const std::int64_t c = cos.shape()[cos.dim() - i], want = table[table.size() - i];
    const char* what = i == 1 ? "d/2 frequencies" : (i == 2 ? "T positions" : "a leading dim of x");
    TG_CHECK(c == want || (i > 2 && c == 1),
             "{}: cos/sin shape {} does not match x shape {}: dim -{} has {} but x needs {} ({})", kOp, cos.shape(),
             x.shape(), i, c, want, what);
  }
  // Tables shared by every leading index stay [T, d/2] (period T); others are expanded to one row per row of x.
  Tensor c = cos.detach().to(x.dtype()), s = sin.detach().to(x.dtype());
  std::int64_t period = T;
  if (c.numel() == T * h) {
    c = c.reshape({T, h}).contiguous();
    s = s.reshape({T, h}).contiguous();
  } else {
    c = c.expand(table).contiguous();
    s = s.expand(table).contiguous();
    period = T == 0 ? 1 : table.numel() / std::max<std::int64_t>(h, 1);
  }
  if (period == 0) period = 1;
  const bool interleaved = layout == RotaryLayout::interleaved;
  const Tensor xc = x.detach().contiguous();
  Tensor y = rotate(xc, c, s, period, interleaved, false);
  // The tables may still be the caller's tensors (same dtype, already contiguous): saved with
  // their version, so that writing into them before the backward is an error, not a wrong gradient.
  return record(kOp, {x}, y, [sc = SavedTensor(c), ss = SavedTensor(s), period, interleaved](const Tensor& g) {
    return Tensors{rotate(g.contiguous(), sc.get(), ss.get(), period, interleaved, true)};
  });
}

}  // namespace tg::ops
