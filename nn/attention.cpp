#include "nn/attention.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/autograd.hpp"
#include "ops/attention.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"

namespace tg::nn {

MultiheadAttention::MultiheadAttention(std::int64_t dim, std::int64_t h, const AttentionOptions& o)
    : heads(h), cross(o.kv_dim > 0), dropout(o.dropout), gen(o.gen) {
  TG_CHECK(dim > 0 && h > 0 && dim % h == 0, "MultiheadAttention: {} heads must divide dim {}", h, dim);
  TG_CHECK(o.kv_dim == -1 || o.kv_dim > 0, "MultiheadAttention: kv_dim must be -1 (self-attention) or positive, got {}", o.kv_dim);
  head_dim = dim / h;
  scale = o.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim)));
  TG_CHECK(std::isfinite(scale), "MultiheadAttention: the score scale must be finite, got {}", scale);
  const LinearOptions lin{.bias = o.bias, .dtype = o.dtype, .gen = o.gen};
  if (cross) {
    q = Linear(dim, dim, lin);
    kv = Linear(o.kv_dim, 2 * dim, lin);
  } else {
    qkv = Linear(dim, 3 * dim, lin);
  }
  LinearOptions out_opt = lin;
  out_opt.init = o.out_init;
  if (o.out_init) out_opt.bias_init = init::zeros();
  out = Linear(dim, dim, out_opt);
}

Tensor MultiheadAttention::operator()(const Tensor& x, const AttentionArgs& a) const {
  TG_CHECK(x.dim() == 3, "MultiheadAttention: expected x [B, T, dim], got {}", x.shape());
  const std::int64_t dim = (cross ? q : qkv).weight.shape()[1];
  TG_CHECK(x.shape()[2] == dim, "MultiheadAttention: x of shape {} has {} features, the layer was built for dim {}",
           x.shape(), x.shape()[2], dim);
  TG_CHECK(a.temperature > 0 && std::isfinite(a.temperature), "MultiheadAttention: the temperature must be positive and finite, got {}",
           a.temperature);
  TG_CHECK(a.cache_append || a.cache, "MultiheadAttention: cache_append = false needs a cache");
  const std::int64_t B = x.shape()[0], T = x.shape()[1], C = heads * head_dim;
  // Project and split heads: q, k, v [B, H, T, d] (permuted views, read in place by the kernel).
  Tensor qh, kh, vh;
  if (cross) {
    TG_CHECK(a.context != nullptr, "MultiheadAttention: cross-attention needs a context");
    const Tensor& ctx = *a.context;                                                  // [B, S, kv_dim]
    TG_CHECK(ctx.dim() == 3 && ctx.shape()[0] == B, "MultiheadAttention: context {} does not match x {}", ctx.shape(), x.shape());
    qh = q(x).reshape({B, T, heads, head_dim}).permute({0, 2, 1, 3});              // [B, H, T, d]
    const Tensors kvp = ops::unbind(kv(ctx).reshape({B, ctx.shape()[1], 2, heads, head_dim}), 2);  // 2 x [B, S, H, d]
    kh = kvp[0].permute({0, 2, 1, 3});                                                                // [B, H, S, d]
    vh = kvp[1].permute({0, 2, 1, 3});                                                                // [B, H, S, d]
  } else {
    TG_CHECK(a.context == nullptr, "MultiheadAttention: a context was given to a self-attention layer");
    const Tensors p = ops::unbind(qkv(x).reshape({B, T, 3, heads, head_dim}), 2);  // 3 x [B, T, H, d]
    qh = p[0].permute({0, 2, 1, 3});                                               // [B, H, T, d]
    kh = p[1].permute({0, 2, 1, 3});
    vh = p[2].permute({0, 2, 1, 3});
  }
  if (a.rotary) {
    // One table for queries and keys: positions of a context sequence are not the queries' positions.
    TG_CHECK(!cross, "MultiheadAttention: rotary tables apply to self-attention only (this layer is cross-attention)");
    qh = ops::apply_rotary(qh, a.rotary->cos, a.rotary->sin, a.rotary->layout);
    kh = ops::apply_rotary(kh, a.rotary->cos, a.rotary->sin, a.rotary->layout);
  }
  if (a.cache) {
    KVCache& c = *a.cache;
    TG_CHECK(!grad_enabled() || !kh.requires_grad(),
             "MultiheadAttention: the KV cache is for inference; run decoding under NoGradGuard");
    TG_CHECK(c.length + T <= c.capacity, "MultiheadAttention: the KV cache holds {} positions; {} + {} do not fit",
             c.capacity, c.length, T);
    // Storage for this layer's batch, heads, head size, capacity and dtype; an empty cache is
    // re-allocated when any differs (reset() and reused by another model, say).
    const Shape layout{B, heads, c.capacity, head_dim};
    if (!c.k.defined() || c.k.shape() != layout || c.k.dtype() != x.dtype()) {
      TG_CHECK(c.length == 0,
               "MultiheadAttention: the KV cache holds {} positions of {} {} (batch, heads, capacity, head size), not {} {}; "
               "reset() it first",
               c.length, c.k.defined() ? c.k.dtype() : x.dtype(), c.k.defined() ? c.k.shape() : Shape{}, x.dtype(), layout);
      c.k = zeros(layout, x.dtype());
      c.v = zeros(layout, x.dtype());
    }
    // This call's keys/values go into the slots after the cached ones; without append the
    // length stays, so the next call overwrites them.
    NoGradGuard no_grad;
    c.k.narrow(2, c.length, T).copy_(kh);
    c.v.narrow(2, c.length, T).copy_(vh);
    kh = c.k.narrow(2, 0, c.length + T);  // [B, H, cached + T, d]
    vh = c.v.narrow(2, 0, c.length + T);
  }
  ops::AttentionOptions opt;
  opt.causal = a.causal;
  opt.mask = a.mask;
  opt.scale = scale / a.temperature;
  opt.dropout_p = training() ? dropout : 0.0;
  opt.generator = gen;
  const Tensor o = ops::scaled_dot_product_attention(qh, kh, vh, opt);  // [B, H, T, d]
  // Counted as cached only now: a call that failed (a bad mask, say) leaves the cache as it was.
  if (a.cache && a.cache_append) a.cache->length += T;
  return out(o.permute({0, 2, 1, 3}).reshape({B, T, C}));  // [B, T, dim]
}

void MultiheadAttention::visit(Visitor& v) {
  if (cross) {
    v.module("q", q);
    v.module("kv", kv);
  } else {
    v.module("qkv", qkv);
  }
  v.module("out", out);
}

std::string MultiheadAttention::structure() const {
  // The exact scale ({} prints the shortest text that reads back as the same double).
  return fmt::format("heads={}, scale={}", heads, scale);
}

std::string MultiheadAttention::extra_repr() const {
  const bool default_scale = scale == 1.0 / std::sqrt(static_cast<double>(head_dim));
  return fmt::format("dim={}, heads={}{}{}", heads * head_dim, heads, cross ? ", cross" : "",
                     default_scale ? std::string() : fmt::format(", scale={:g}", scale));
}

std::int64_t mlp_hidden_width(double mlp_ratio, std::int64_t dim) {
  const double width = mlp_ratio * static_cast<double>(dim);
  TG_CHECK(std::isfinite(mlp_ratio) && mlp_ratio > 0 && width >= 0.5 && width <= 0x1p31,
           "mlp_ratio {} with dim {} gives an MLP width of {}; expected a positive ratio and a width in 1..2^31", mlp_ratio, dim,
           width);
  return static_cast<std::int64_t>(std::llround(width));
}

TransformerBlock::TransformerBlock(std::int64_t dim, std::int64_t heads, const TransformerBlockOptions& o)
    : norm1(dim, o.norm, {.eps = o.norm_eps, .dtype = o.dtype}),
      norm2(dim, o.norm, {.eps = o.norm_eps, .dtype = o.dtype}),
      attn(dim, heads, {.bias = o.bias, .dropout = o.dropout, .scale = o.attention_scale, .dtype = o.dtype, .gen = o.gen}),
      mlp(dim, mlp_hidden_width(o.mlp_ratio, dim), dim,
          {.activation = o.activation, .swiglu = o.swiglu, .bias = o.bias, .dtype = o.dtype, .gen = o.gen}),
      drop(o.dropout, o.gen) {}

Tensor TransformerBlock::operator()(const Tensor& x, const AttentionArgs& args) const {
  const Tensor h = x + drop(attn(norm1(x), args));  // [B, T, dim]
  return h + drop(mlp(norm2(h)));                   // [B, T, dim]
}

void TransformerBlock::visit(Visitor& v) {
  v.module("norm1", norm1);
  v.module("attn", attn);
  v.module("norm2", norm2);
  v.module("mlp", mlp);
  v.module("drop", drop);  // no tensors, but train()/eval() must reach it
}

}  // namespace tg::nn
