#include "models/diffusion/unet.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "nn/positional.hpp"
#include "ops/attention.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"

namespace tg::models::diffusion {

namespace {

const double kSqrtHalf = std::sqrt(0.5);

nn::Conv2d conv(std::int64_t in, std::int64_t out, std::int64_t k, bool zero, const UNetConfig& c, Generator* gen) {
  nn::Conv2dOptions o;
  o.padding = {k / 2, k / 2};
  o.dtype = c.dtype;
  o.gen = gen;
  if (zero) {
    o.init = nn::init::zeros();
    o.bias_init = nn::init::zeros();
  }
  return nn::Conv2d(in, out, k, o);
}

nn::LinearOptions linear_options(const UNetConfig& c, Generator* gen) {
  nn::LinearOptions o;
  o.dtype = c.dtype;
  o.gen = gen;
  return o;
}

bool has(const std::vector<std::int64_t>& v, std::int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

std::int64_t group_count(const UNetConfig& c, std::int64_t channels) {
  TG_CHECK(channels > 0 && c.max_groups > 0 && c.min_group_channels > 0,
           "UNet: group_count needs positive channels ({}), max_groups ({}) and min_group_channels ({})", channels,
           c.max_groups, c.min_group_channels);
  std::int64_t g = std::max<std::int64_t>(1, std::min(c.max_groups, channels / c.min_group_channels));
  while (channels % g != 0) --g;
  return g;
}

std::vector<double> skip_tuning_scales(std::int64_t count, double rho_bottom, double rho_top) {
  TG_CHECK(count >= 1, "skip_tuning_scales: need at least one skip, got {}", count);
  TG_CHECK(std::isfinite(rho_bottom) && std::isfinite(rho_top) && rho_bottom >= 0 && rho_top >= 0,
           "skip_tuning_scales: rho must be finite and >= 0, got rho_bottom {} and rho_top {}", rho_bottom, rho_top);
  std::vector<double> rho(static_cast<std::size_t>(count));
  const std::int64_t k = count - 1;
  for (std::int64_t i = 0; i <= k; ++i)
    rho[static_cast<std::size_t>(i)] =
        k == 0 ? rho_bottom : rho_bottom + (rho_top - rho_bottom) * static_cast<double>(i) / static_cast<double>(k);
  rho.front() = rho_bottom;
  if (k > 0) rho.back() = rho_top;
  return rho;
}

// ---- UNetBlock ------------------------------------------------------------------------------------------------

UNetBlock::UNetBlock(std::int64_t in, std::int64_t out, std::int64_t emb_dim, const BlockOptions& o,
                     const UNetConfig& c, Generator* gen)
    : drop(c.dropout), options(o), in_channels(in), out_channels(out) {
  TG_CHECK(in > 0 && out > 0, "UNetBlock: channels must be positive, got {} -> {}", in, out);
  const nn::NormOptions norm{.eps = 1e-5, .dtype = c.dtype};
  norm0 = nn::GroupNorm(group_count(c, in), in, norm);
  conv0 = conv(in, out, 3, false, c, gen);
  affine = nn::Linear(emb_dim, 2 * out, linear_options(c, gen));
  norm1 = nn::GroupNorm(group_count(c, out), out, norm);
  conv1 = conv(out, out, 3, c.zero_init, c, gen);
  if (in != out) shortcut = conv(in, out, 1, false, c, gen);
  if (o.attention) {
    TG_CHECK(o.heads >= 1 && out % o.heads == 0, "UNetBlock: {} attention heads must divide {} channels", o.heads, out);
    norm2 = nn::GroupNorm(group_count(c, out), out, norm);
    qkv = conv(out, 3 * out, 1, false, c, gen);
    proj = conv(out, out, 1, c.zero_init, c, gen);
  }
}

Tensor UNetBlock::operator()(const Tensor& x, const Tensor& emb) const {
  TG_CHECK(x.dim() == 4 && x.shape()[1] == in_channels, "UNetBlock: expected x [B, {}, H, W], got {}", in_channels, x.shape());
  const std::int64_t B = x.shape()[0];
  auto resample = [&](const Tensor& t) {
    switch (options.resample) {
      case Resample::down: return ops::avg_pool2d(t, {2, 2});  // [B, C, H/2, W/2]
      case Resample::up: return ops::upsample(t, 2.0);         // [B, C, 2H, 2W] (nearest)
      case Resample::none: break;
    }
    return t;
  };
  // Main branch, norm first (up-sampling and convolution as one op: no upsampled image).
  const Tensor n0 = norm0.with_silu(x);                                  // [B, in, H, W]
  Tensor h = options.resample == Resample::up ? conv0.upsampled(n0) : conv0(resample(n0));  // [B, out, H', W']
  const Tensors ss = ops::chunk(affine(emb).reshape({B, 2 * out_channels, 1, 1}), 2, 1);  // 2 x [B, out, 1, 1]
  h = ops::silu(norm1(h) * (ss[0] + 1.0) + ss[1]);                       // [B, out, H', W']
  h = conv1(drop(h));                                                    // [B, out, H', W']
  // Linear shortcut.
  const Tensor r = resample(x);                                          // [B, in, H', W']
  Tensor y = (h + (shortcut.weight.defined() ? shortcut(r) : r)) * kSqrtHalf;  // [B, out, H', W']
  if (!options.attention) return y;
  const std::int64_t H = y.shape()[2], W = y.shape()[3], heads = options.heads, d = out_channels / heads;
  const Tensor p = qkv(norm2(y)).reshape({B, 3, heads, d, H * W});      // [B, 3, heads, d, HW]
  const Tensor q = p.select(1, 0).transpose(2, 3);                       // [B, heads, HW, d] (views)
  const Tensor k = p.select(1, 1).transpose(2, 3);
  const Tensor v = p.select(1, 2).transpose(2, 3);
  const Tensor a = ops::scaled_dot_product_attention(q, k, v);          // [B, heads, HW, d]
  const Tensor o = a.transpose(2, 3).reshape({B, out_channels, H, W});  // [B, out, H, W]
  return (y + proj(o)) * kSqrtHalf;                                      // [B, out, H, W]
}

void UNetBlock::visit(nn::Visitor& v) {
  v.module("norm0", norm0);
  v.module("conv0", conv0);
  v.module("affine", affine);
  v.module("norm1", norm1);
  v.module("drop", drop);  // no tensors, but train()/eval() must reach it
  v.module("conv1", conv1);
  if (shortcut.weight.defined()) v.module("shortcut", shortcut);
  if (options.attention) {
    v.module("norm2", norm2);
    v.module("qkv", qkv);
    v.module("proj", proj);
  }
}

std::string UNetBlock::structure() const {
  const char* rs = options.resample == Resample::down ? "down" : options.resample == Resample::up ? "up" : "none";
  return fmt::format("resample={}, attention_heads={}", rs, options.attention ? options.heads : 0);
}

std::string UNetBlock::extra_repr() const {
  const char* rs = options.resample == Resample::down ? ", down" : options.resample == Resample::up ? ", up" : "";
  return fmt::format("{}->{}{}{}", in_channels, out_channels, rs,
                     options.attention ? fmt::format(", attention heads={}", options.heads) : std::string());
}

// ---- UNet -----------------------------------------------------------------------------------------------------

UNet::UNet(const UNetConfig& c, Generator* gen) : config(c) {
  const auto L = static_cast<std::int64_t>(c.channels.size());
  TG_CHECK(L >= 1 && L <= 16, "UNet: need 1..16 resolution levels, got {}", L);
  for (std::int64_t ch : c.channels) TG_CHECK(ch > 0, "UNet: channels must be positive, got {}", fmt::join(c.channels, ", "));
  TG_CHECK(c.in_channels > 0 && c.blocks_per_level >= 1, "UNet: in_channels ({}) and blocks_per_level ({}) must be positive",
           c.in_channels, c.blocks_per_level);
  TG_CHECK(c.image_size > 0 && c.image_size % (std::int64_t{1} << (L - 1)) == 0,
           "UNet: image size {} is not divisible by 2^{} ({} levels)", c.image_size, L - 1, L);
  for (std::int64_t a : c.attention_levels)
    TG_CHECK(a >= 0 && a < L, "UNet: attention level {} is outside 0..{}", a, L - 1);
  TG_CHECK(c.num_classes >= 0 && c.dropout >= 0 && c.dropout < 1 && c.head_channels > 0,
           "UNet: bad num_classes ({}), dropout ({}) or head_channels ({})", c.num_classes, c.dropout, c.head_channels);
  TG_CHECK(c.noise_channels >= 0 && c.emb_dim >= 0, "UNet: noise_channels ({}) and emb_dim ({}) must be >= 0 (0: derived)",
           c.noise_channels, c.emb_dim);
  config.noise_channels = c.noise_channels > 0 ? c.noise_channels : c.channels[0];
  config.emb_dim = c.emb_dim > 0 ? c.emb_dim : 4 * c.channels[0];
  TG_CHECK(config.noise_channels % 2 == 0, "UNet: noise_channels must be even, got {}{}", config.noise_channels,
           c.noise_channels > 0 ? "" : " (derived from channels[0]; set noise_channels, or make channels[0] even)");
  const std::int64_t E = config.emb_dim;

  map_noise0 = nn::Linear(config.noise_channels, E, linear_options(c, gen));
  map_noise1 = nn::Linear(E, E, linear_options(c, gen));
  if (c.num_classes > 0) {
    nn::EmbeddingOptions eo;
    eo.dtype = c.dtype;
    eo.gen = gen;
    map_label = nn::Embedding(c.num_classes + 1, config.noise_channels, eo);
  }

  auto block = [&](std::int64_t in, std::int64_t out, std::int64_t level, Resample rs) {
    const bool attn = rs == Resample::none && has(c.attention_levels, level);
    const std::int64_t heads = std::max<std::int64_t>(1, out / c.head_channels);
    TG_CHECK(!attn || out % heads == 0,
             "UNet: head_channels {} gives {} attention heads at level {}, which do not divide its {} channels (heads = "
             "channels / head_channels, rounded down)",
             c.head_channels, heads, level, out);
    return UNetBlock(in, out, E, {.resample = rs, .attention = attn, .heads = heads},
                     config, gen);
  };
  stem = conv(c.in_channels, c.channels[0], 3, false, config, gen);
  std::int64_t cur = c.channels[0];
  skip_channels_.push_back(cur);
  for (std::int64_t l = 0; l < L; ++l) {
    if (l > 0) {
      enc.push_back(block(cur, cur, l, Resample::down));
      skip_channels_.push_back(cur);
    }
    for (std::int64_t b = 0; b < c.blocks_per_level; ++b) {
      enc.push_back(block(cur, c.channels[l], l, Resample::none));
      cur = c.channels[l];
      skip_channels_.push_back(cur);
    }
  }
  mid.push_back(block(cur, cur, L - 1, Resample::none));
  mid.push_back(UNetBlock(cur, cur, E, {}, config, gen));
  std::vector<std::int64_t> pending = skip_channels_;
  for (std::int64_t l = L - 1; l >= 0; --l) {
    for (std::int64_t b = 0; b <= c.blocks_per_level; ++b) {
      dec.push_back(block(cur + pending.back(), c.channels[l], l, Resample::none));
      dec_takes_skip_.push_back(true);
      pending.pop_back();
      cur = c.channels[l];
    }
    if (l > 0) {
      dec.push_back(block(cur, c.channels[l - 1], l - 1, Resample::up));
      dec_takes_skip_.push_back(false);
      cur = c.channels[l - 1];
    }
  }
  out_norm = nn::GroupNorm(group_count(config, cur), cur, {.dtype = c.dtype});
  out_conv = conv(cur, c.in_channels, 3, c.zero_init, config, gen);
}

Tensor UNet::embed(const Tensor& c_noise, const Tensor& labels, std::int64_t B) const {
  TG_CHECK(c_noise.defined() && c_noise.dim() == 1 && c_noise.shape()[0] == B, "UNet: expected c_noise [{}], got {}", B,
           c_noise.defined() ? c_noise.shape() : Shape{});
  Tensor f = nn::sinusoidal_embedding(c_noise, config.noise_channels, 10000.0, config.dtype);  // [B, noise_channels]
  if (config.num_classes > 0) {
    const Tensor y = labels.defined() ? labels : full({B}, static_cast<double>(config.num_classes), DType::i64);  // [B]
    TG_CHECK(y.dim() == 1 && y.shape()[0] == B, "UNet: expected labels [{}], got {}", B, y.shape());
    f = f + map_label(y);  // [B, noise_channels]
  } else {
    TG_CHECK(!labels.defined(), "UNet: labels given to an unconditional model (num_classes = 0)");
  }
  return ops::silu(map_noise1(ops::silu(map_noise0(f))));  // [B, emb_dim]
}

Tensor UNet::tuned_skip(const Tensor& h, std::size_t i) const {
  if (skip_scales.empty()) return h;
  return h * skip_scales[i];  // [B, C_i, H_i, W_i]
}

Tensor UNet::operator()(const Tensor& x, const Tensor& c_noise, const Tensor& labels) const {
  const std::int64_t S = config.image_size;
  TG_CHECK(x.dim() == 4 && x.shape()[1] == config.in_channels && x.shape()[2] == S && x.shape()[3] == S,
           "UNet: expected x [B, {}, {}, {}], got {}", config.in_channels, S, S, x.shape());
  TG_CHECK(skip_scales.empty() || static_cast<std::int64_t>(skip_scales.size()) == num_skips(),
           "UNet: {} skip scales for {} skips", skip_scales.size(), num_skips());
  const std::int64_t B = x.shape()[0];
  const Tensor emb = embed(c_noise, labels, B);  // [B, E]
  std::vector<Tensor> skips;                     // creation order: top level first
  Tensor h = stem(x);                            // [B, C0, S, S]
  skips.push_back(h);
  for (const UNetBlock& b : enc) {
    h = b(h, emb);  // [B, C_l, S / 2^l, S / 2^l]
    skips.push_back(h);
  }
  for (const UNetBlock& b : mid) h = b(h, emb);  // [B, C_{L-1}, S / 2^(L-1), ...]
  std::size_t consumed = 0;                      // skip index i: 0 = deepest
  for (std::size_t j = 0; j < dec.size(); ++j) {
    if (dec_takes_skip_[j]) {
      h = ops::cat({h, tuned_skip(skips.back(), consumed++)}, 1);  // [B, C + C_skip, H, W]
      skips.pop_back();
    }
    h = dec[j](h, emb);  // [B, C_l, H, W] (2H, 2W after an up block)
  }
  return out_conv(out_norm.with_silu(h));  // [B, in_channels, S, S]
}

void UNet::set_skip_tuning(double rho_bottom, double rho_top) {
  skip_scales = skip_tuning_scales(num_skips(), rho_bottom, rho_top);
}

void UNet::visit(nn::Visitor& v) {
  v.module("map_noise0", map_noise0);
  v.module("map_noise1", map_noise1);
  if (config.num_classes > 0) v.module("map_label", map_label);
  v.module("stem", stem);
  v.modules("enc", enc);
  v.modules("mid", mid);
  v.modules("dec", dec);
  v.module("out_norm", out_norm);
  v.module("out_conv", out_conv);
}

std::string UNet::extra_repr() const {
  return fmt::format("{}x{}, channels=[{}], blocks/level={}, attention levels=[{}], classes={}, skips={}", config.image_size,
                     config.image_size, fmt::join(config.channels, ", "), config.blocks_per_level,
                     fmt::join(config.attention_levels, ", "), config.num_classes, num_skips());
}

}  // namespace tg::models::diffusion
