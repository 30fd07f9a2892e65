// Normalisation layers: frontends, shape checks and backward rules (kernels in ops/kernels/norm.cpp).
#include "ops/norm.hpp"

#include <cmath>

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/kernels/norm.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

void check_input(const char* op, const Tensor& x, double eps) {
  check_defined(x, op, "x");
  TG_CHECK(x.is_floating_point(), "{}: expected a floating-point tensor (f32 or f64), got {} (shape {})", op,
           x.dtype(), x.shape());
  TG_CHECK(std::isfinite(eps) && eps >= 0, "{}: eps must be a finite number >= 0, got {}", op, eps);
}

// An optional affine parameter: checks its shape and returns it in x's dtype (undefined stays undefined).
Tensor affine_param(const char* op, const char* name, const Tensor& p, const Shape& want, const Tensor& x) {
  if (!p.defined()) return p;
  TG_CHECK(p.is_floating_point(), "{}: {} must be a floating-point tensor, got {} (shape {})", op, name, p.dtype(),
           p.shape());
  TG_CHECK(p.shape() == want, "{}: x of shape {} needs a {} of shape {}, got shape {} (a layer built for other sizes?)",
           op, x.shape(), name, want, p.shape());
  return p.to(x.dtype());
}

Tensor flat(const Tensor& t, std::int64_t n) { return t.defined() ? t.detach().contiguous().reshape({n}) : t; }

// Shared by layer_norm (center) and rms_norm.
Tensor row_norm(const char* op, bool center, const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                const Tensor& bias, double eps) {
  check_input(op, x, eps);
  const int k = normalized_shape.size();
  TG_CHECK(k >= 1, "{}: normalized_shape must have at least one dim", op);
  TG_CHECK(k <= x.dim(), "{}: normalized_shape {} has more dims than x (shape {})", op, normalized_shape, x.shape());
  for (int i = 0; i < k; ++i) {
    const int d = x.dim() - k + i;
    TG_CHECK(x.shape()[d] == normalized_shape[i],
             "{}: normalized_shape {} does not match the trailing dims of x (shape {}): dim {} of x is {}, expected {}",
             op, normalized_shape, x.shape(), d, x.shape()[d], normalized_shape[i]);
  }
  const Tensor w = affine_param(op, "weight", weight, normalized_shape, x);
  const Tensor b = affine_param(op, "bias", bias, normalized_shape, x);
  const std::int64_t n = normalized_shape.numel();
  std::int64_t rows = 1;
  for (int d = 0; d < x.dim() - k; ++d) rows *= x.shape()[d];

  const Tensor xc = x.detach().contiguous();
  const Tensor wc = flat(w, n), bc = flat(b, n);
  Tensor y = empty(x.shape(), x.dtype());
  Tensor mean = center ? empty({rows}, x.dtype()) : Tensor();
  Tensor rstd = empty({rows}, x.dtype());
  const bool work = rows > 0 && n > 0;
  if (work) kernels::row_norm_forward(xc.reshape({rows, n}), wc, bc, eps, center, y.reshape({rows, n}), mean, rstd);

  auto backward = [sx = SavedTensor(xc), sw = SavedTensor(wc), has_w = w.defined(), has_b = b.defined(), mean, rstd,
                   rows, n, center, normalized_shape, work](const Tensor& gy) {
    const Tensor xv = sx.get(), wv = sw.get();
    Tensor gx, gw, gb;
    if (input_needs_grad(0)) gx = empty(xv.shape(), xv.dtype());
    if (has_w && input_needs_grad(1)) gw = empty({n}, xv.dtype());
    if (center && has_b && input_needs_grad(2)) gb = empty({n}, xv.dtype());
    if (work) {
      kernels::row_norm_backward(xv.reshape({rows, n}), gy.contiguous().reshape({rows, n}), wv, mean, rstd, center,
                                 gx.defined() ? gx.reshape({rows, n}) : gx, gw, gb);
    } else {
      if (gw.defined()) gw.zero_();
      if (gb.defined()) gb.zero_();
    }
    if (gw.defined()) gw = gw.reshape(normalized_shape);
    if (gb.defined()) gb = gb.reshape(normalized_shape);
    return center ? Tensors{gx, gw, gb} : Tensors{gx, gw};
  };
  return center ? record(op, {x, w, b}, y, backward) : record(op, {x, w}, y, backward);
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias, double eps) {
  return row_norm("layer_norm", true, x, normalized_shape, weight, bias, eps);
}

Tensor rms_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, double eps) {
  return row_norm("rms_norm", false, x, normalized_shape, weight, Tensor(), eps);
}

namespace {

// group_norm, and with `silu` the fused silu(group_norm(x)) (op name "group_norm_silu").
Tensor group_norm_impl(const char* op, const Tensor& x, std::int64_t num_groups, const Tensor& weight,
                       const Tensor& bias, double eps, bool silu) {
  check_input(op, x, eps);
  TG_CHECK(x.dim() >= 2, "{}: expected x of shape [N, C, *] (at least 2 dims), got shape {}", op, x.shape());
  const std::int64_t N = x.shape()[0], C = x.shape()[1];
  TG_CHECK(num_groups >= 1, "{}: num_groups must be >= 1, got {}", op, num_groups);
  TG_CHECK(C % num_groups == 0, "{}: num_groups {} must divide the number of channels C = {} (dim 1 of x, shape {})",
           op, num_groups, C, x.shape());
  const Tensor w = affine_param(op, "weight", weight, Shape{C}, x);
  const Tensor b = affine_param(op, "bias", bias, Shape{C}, x);
  std::int64_t S = 1;
  for (int d = 2; d < x.dim(); ++d) S *= x.shape()[d];
  const std::int64_t G = num_groups;

  const Tensor xc = x.detach().contiguous();
  const Tensor wc = flat(w, C), bc = flat(b, C);
  Tensor y = empty(x.shape(), x.dtype());
  Tensor mean = empty({N, G}, x.dtype()), rstd = empty({N, G}, x.dtype());
  const bool work = x.numel() > 0;
  if (work) kernels::group_norm_forward(xc.reshape({N, C, S}), G, wc, bc, eps, silu, y.reshape({N, C, S}), mean, rstd);

  // The fused SiLU's backward recomputes the pre-activation, so it also keeps the bias.
  const SavedTensor sb = silu ? SavedTensor(bc) : SavedTensor();
  return record(op, {x, w, b}, y,
                [sx = SavedTensor(xc), sw = SavedTensor(wc), sb, silu, has_w = w.defined(), has_b = b.defined(), mean,
                 rstd, N, C, S, G, work](const Tensor& gy) {
                  const Tensor xv = sx.get(), wv = sw.get(), bv = sb.defined() ? sb.get() : Tensor();
                  Tensor gx, gw, gb;
                  if (input_needs_grad(0)) gx = empty(xv.shape(), xv.dtype());
                  if (has_w && input_needs_grad(1)) gw = empty({C}, xv.dtype());
                  if (has_b && input_needs_grad(2)) gb = empty({C}, xv.dtype());
                  if (work) {
                    kernels::group_norm_backward(xv.reshape({N, C, S}), gy.contiguous().reshape({N, C, S}), G, wv, bv,
                                                 silu, mean, rstd, gx.defined() ? gx.reshape({N, C, S}) : gx, gw, gb);
                  } else {
                    if (gw.defined()) gw.zero_();
                    if (gb.defined()) gb.zero_();
                  }
                  return Tensors{gx, gw, gb};
                });
}

}  // namespace

Tensor group_norm(const Tensor& x, std::int64_t num_groups, const Tensor& weight, const Tensor& bias, double eps) {
  return group_norm_impl("group_norm", x, num_groups, weight, bias, eps, false);
}

Tensor group_norm_silu(const Tensor& x, std::int64_t num_groups, const Tensor& weight, const Tensor& bias, double eps) {
  return group_norm_impl("group_norm_silu", x, num_groups, weight, bias, eps, true);
}

Tensor batch_norm(const Tensor& x, Tensor running_mean, Tensor running_var, const Tensor& weight, const Tensor& bias,
                  bool training, double momentum, double eps) {
  TG_CHECK(x.defined() && x.dim() >= 2, "batch_norm: expected x [N, C, *], got {}", x.defined() ? x.shape() : Shape{});
  check_input("batch_norm", x, eps);
  const std::int64_t C = x.shape()[1];
  // Everything is checked before the running statistics change.
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"running_mean", &running_mean}, {"running_var", &running_var},
                                {"weight", &weight}, {"bias", &bias}}) {
    TG_CHECK(!t->defined() || t->shape() == Shape{C}, "batch_norm: {} must be [{}] for x {}, got {}", name, C, x.shape(),
             t->shape());
    TG_CHECK(!t->defined() || t->is_floating_point(), "batch_norm: {} must be a floating-point tensor, got {}", name, t->dtype());
  }
  TG_CHECK(running_mean.defined() == running_var.defined(), "batch_norm: give both running_mean and running_var, or neither");
  TG_CHECK(momentum >= 0 && momentum <= 1, "batch_norm: momentum must be in [0, 1], got {}", momentum);
  if (x.numel() == 0) return empty(x.shape(), x.dtype());  // as torch: nothing to normalise, statistics untouched
  Shape per_channel;  // [1, C, 1, ...]
  for (std::int64_t d = 0; d < x.dim(); ++d) per_channel.push_back(d == 1 ? C : 1);
  if (!training) {
    TG_CHECK(running_mean.defined(), "batch_norm: eval mode (training = false) needs running_mean and running_var");
    // y = x * scale + shift with scale = weight / sqrt(var + eps), shift = bias - mean * scale.
    Tensor scale = rsqrt(running_var.to(x.dtype()) + eps);  // [C]
    if (weight.defined()) scale = scale * weight.to(x.dtype());
    Tensor shift = neg(running_mean.to(x.dtype()) * scale);
    if (bias.defined()) shift = shift + bias.to(x.dtype());
    return x * scale.reshape(per_channel) + shift.reshape(per_channel);
  }
  const std::int64_t count = C > 0 ? x.numel() / C : 0;
  TG_CHECK(count > 1, "batch_norm: training needs more than one value per channel, x is {}", x.shape());
  if (running_mean.defined()) {
    NoGradGuard no_grad;
    Shape axes;  // every dim but the channels
    for (std::int64_t d = 0; d < x.dim(); ++d)
      if (d != 1) axes.push_back(d);
    const Tensor x64 = x.detach().to(DType::f64);
    const Tensor mean = ops::mean(x64, axes);                                                     // [C]
    const Tensor var = ops::mean(square(x64 - mean.reshape(per_channel)), axes);                 // [C], biased
    const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
    running_mean.copy_(running_mean.to(DType::f64) * (1 - momentum) + mean * momentum);
    running_var.copy_(running_var.to(DType::f64) * (1 - momentum) + var * (momentum * unbias));
  }
  // A channel of the [N, C, *] batch is a group of the [1, C, N, *] view: the fused group norm.
  const Tensor grouped = x.transpose(0, 1).unsqueeze(0);  // [1, C, N, *]
  return group_norm(grouped, C, weight, bias, eps).squeeze(0).transpose(0, 1).contiguous();  // [N, C, *]
}

}  // namespace tg::ops
