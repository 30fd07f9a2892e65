#include "nn/norm.hpp"

#include <cmath>

#include <fmt/format.h>

#include "ops/norm.hpp"

namespace tg::nn {

LayerNorm::LayerNorm(const Shape& s, const NormOptions& o) : shape(s), eps(o.eps) {
  TG_CHECK(s.numel() > 0, "LayerNorm: empty normalized shape {}", s);
  if (o.affine) {
    weight = ones(s, o.dtype).requires_grad_();
    bias = zeros(s, o.dtype).requires_grad_();
  }
}
Tensor LayerNorm::operator()(const Tensor& x) const { return ops::layer_norm(x, shape, weight, bias, eps); }
void LayerNorm::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
}
std::string LayerNorm::extra_repr() const { return fmt::format("{}, eps={}, affine={}", shape, eps, weight.defined()); }

RMSNorm::RMSNorm(std::int64_t dim, const NormOptions& o) : shape{dim}, eps(o.eps) {
  TG_CHECK(dim > 0, "RMSNorm: dim must be positive, got {}", dim);
  if (o.affine) weight = ones({dim}, o.dtype).requires_grad_();
}
Tensor RMSNorm::operator()(const Tensor& x) const { return ops::rms_norm(x, shape, weight, eps); }
std::string RMSNorm::extra_repr() const { return fmt::format("{}, eps={}, affine={}", shape, eps, weight.defined()); }

GroupNorm::GroupNorm(std::int64_t g, std::int64_t channels, const NormOptions& o) : groups(g), eps(o.eps) {
  TG_CHECK(g > 0 && channels > 0 && channels % g == 0, "GroupNorm: {} groups do not divide {} channels", g, channels);
  if (o.affine) {
    weight = ones({channels}, o.dtype).requires_grad_();
    bias = zeros({channels}, o.dtype).requires_grad_();
  }
}
Tensor GroupNorm::operator()(const Tensor& x) const { return ops::group_norm(x, groups, weight, bias, eps); }
Tensor GroupNorm::with_silu(const Tensor& x) const { return ops::group_norm_silu(x, groups, weight, bias, eps); }
void GroupNorm::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
}
std::string GroupNorm::extra_repr() const {
  return fmt::format("groups={}, channels={}, eps={}", groups, weight.defined() ? weight.size(0) : -1, eps);
}

BatchNorm::BatchNorm(std::int64_t c, const BatchNormOptions& o) : channels(c), momentum(o.momentum), eps(o.eps) {
  TG_CHECK(c > 0, "BatchNorm: channels must be positive, got {}", c);
  TG_CHECK(o.momentum >= 0 && o.momentum <= 1, "BatchNorm: momentum must be in [0, 1], got {}", o.momentum);
  TG_CHECK(o.eps >= 0 && std::isfinite(o.eps), "BatchNorm: eps must be a finite number >= 0, got {}", o.eps);
  if (o.affine) {
    weight = ones({c}, o.dtype).requires_grad_();
    bias = zeros({c}, o.dtype).requires_grad_();
  }
  if (o.track_running_stats) {
    running_mean = zeros({c}, o.dtype);
    running_var = ones({c}, o.dtype);
  }
}
Tensor BatchNorm::operator()(const Tensor& x) {
  TG_CHECK(x.defined() && x.dim() >= 2 && x.shape()[1] == channels, "BatchNorm: expected x [N, {}, *], got {}", channels,
           x.defined() ? x.shape() : Shape{});
  // Without running statistics the batch's own are used in eval mode too (as torch).
  const bool use_batch = training() || !running_mean.defined();
  return ops::batch_norm(x, running_mean, running_var, weight, bias, use_batch, momentum, eps);
}
void BatchNorm::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
  v.buffer("running_mean", running_mean);
  v.buffer("running_var", running_var);
}
std::string BatchNorm::extra_repr() const {
  return fmt::format("{}, eps={}, momentum={}, affine={}, track_running_stats={}", channels, eps, momentum, weight.defined(),
                     running_mean.defined());
}

Norm::Norm(std::int64_t dim, NormKind k, const NormOptions& o) : kind(k) {
  if (k == NormKind::layer) layer = LayerNorm(dim, o);
  else rms = RMSNorm(dim, o);
}

void Norm::visit(Visitor& v) {  // the wrapped norm's tensors, without an extra name level
  if (kind == NormKind::layer) layer.visit(v);
  else rms.visit(v);
}

}  // namespace tg::nn
