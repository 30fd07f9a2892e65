#include "models/transformer/transformer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/autograd.hpp"
#include "ops/attention.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/shape.hpp"

namespace tg::models::transformer {

Block::Block(const Config& c, Generator* gen)
    : norm1(c.dim, c.norm, {.eps = c.norm_eps}),
      norm2(c.dim, c.norm, {.eps = c.norm_eps}),
      attn(c.dim, c.heads, {.bias = c.bias, .gen = gen}),
      mlp(c.dim, nn::mlp_hidden_width(c.mlp_ratio, c.dim), c.dim,
          {.activation = c.activation, .swiglu = c.swiglu, .bias = c.bias, .gen = gen}) {}

Tensor Block::operator()(const Tensor& x, const nn::RotaryTables& rotary, nn::KVCache* cache) const {
  const Tensor h = x + attn(norm1(x), {.causal = true, .rotary = &rotary, .cache = cache});  // [B, T, dim]
  return h + mlp(norm2(h));                           // [B, T, dim]
}

void Block::visit(nn::Visitor& v) {
  v.module("norm1", norm1);
  v.module("attn", attn);
  v.module("norm2", norm2);
  v.module("mlp", mlp);
}

Transformer::Transformer(const Config& c, Generator* gen) : config(c) {
  TG_CHECK(c.vocab > 0 && c.dim > 0 && c.layers >= 0 && c.heads > 0 && c.dim % c.heads == 0,
           "Transformer: need vocab, dim, heads > 0 with heads dividing dim, got vocab {}, dim {}, heads {}, layers {}",
           c.vocab, c.dim, c.heads, c.layers);
  TG_CHECK(c.head_dim() % 2 == 0, "Transformer: the head dim {} (dim {} / {} heads) must be even for rotary pairs",
           c.head_dim(), c.dim, c.heads);
  TG_CHECK(!c.tied_head || c.output_size() == c.vocab,
           "Transformer: a tied head needs outputs == vocab, got outputs {} and vocab {}", c.output_size(), c.vocab);
  TG_CHECK(c.patch_dim >= 0, "Transformer: patch_dim must be >= 0, got {}", c.patch_dim);
  embed = nn::Embedding(c.vocab, c.dim, {.gen = gen});
  if (c.patch_dim > 0) patch_in = nn::Linear(c.patch_dim, c.dim, {.gen = gen});
  for (std::int64_t l = 0; l < c.layers; ++l) blocks.emplace_back(c, gen);
  norm = nn::Norm(c.dim, c.norm, {.eps = c.norm_eps});
  if (!c.tied_head) head = nn::Linear(c.dim, c.output_size(), {.bias = false, .gen = gen});
  rope = nn::Rope(c.head_dim(), c.axes, c.rope);
}

Tensor Transformer::hidden(const Inputs& in, std::vector<nn::KVCache>* caches) const {
  TG_CHECK(in.tokens.defined() && in.tokens.dim() == 2 && is_integral(in.tokens.dtype()),
           "Transformer: expected integer tokens [B, T], got {}",
           in.tokens.defined() ? fmt::format("{} {}", in.tokens.dtype(), in.tokens.shape()) : "undefined");
  const std::int64_t B = in.tokens.shape()[0], T = in.tokens.shape()[1], A = config.axes;
  TG_CHECK(in.positions.defined() && ((in.positions.dim() == 2 && in.positions.shape() == (Shape{T, A})) ||
                                      (in.positions.dim() == 3 && in.positions.shape() == (Shape{B, T, A}))),
           "Transformer: expected positions [T, A] = [{}, {}] or [B, T, A] = [{}, {}, {}] for tokens {}, got {}", T, A,
           B, T, A, in.tokens.shape(), in.positions.defined() ? in.positions.shape() : Shape{});
  TG_CHECK(caches == nullptr || caches->size() == blocks.size(), "Transformer: {} KV caches given for {} blocks",
           caches ? caches->size() : 0, blocks.size());
  Tensor x;  // [B, T, dim]
  if (in.is_patch.defined()) {
    TG_CHECK(config.patch_dim > 0, "Transformer: is_patch was given but the model has no patch input (patch_dim 0)");
    TG_CHECK(in.is_patch.dtype() == DType::boolean &&
                 (in.is_patch.shape() == (Shape{T}) || in.is_patch.shape() == (Shape{B, T})),
             "Transformer: expected is_patch bool [T] or [B, T] for tokens {}, got {} {}", in.tokens.shape(),
             in.is_patch.dtype(), in.is_patch.shape());
    TG_CHECK(in.patches.defined() && in.patches.shape() == (Shape{B, T, config.patch_dim}),
             "Transformer: expected patches [B, T, patch_dim] = [{}, {}, {}], got {}", B, T, config.patch_dim,
             in.patches.defined() ? in.patches.shape() : Shape{});
    const Tensor p = patch_in(in.patches);                                          // [B, T, dim]
    const Tensor m = in.is_patch.reshape({in.is_patch.dim() == 1 ? 1 : B, T, 1});  // [1 or B, T, 1]
    // The ids at patch positions are not read (placeholders such as -1 are fine): id 0 stands in.
    const Tensor ids = ops::where(m.squeeze(2), zeros_like(in.tokens), in.tokens);  // [B, T]
    x = ops::where(m, p, embed(ids));                                               // [B, T, dim]
  } else {
    TG_CHECK(!in.patches.defined(), "Transformer: patches were given without is_patch (which positions are patches?)");
    x = embed(in.tokens);
  }
  const nn::RotaryTables rot = rope.tables(in.positions, x.dtype());  // cos/sin [T, hd/2] or [B, 1, T, hd/2]
  for (std::size_t l = 0; l < blocks.size(); ++l) x = blocks[l](x, rot, caches ? &(*caches)[l] : nullptr);  // [B, T, dim]
  return norm(x);  // [B, T, dim]
}

Tensor Transformer::head_logits(const Tensor& h) const {
  return config.tied_head ? ops::linear(h, embed.weight) : head(h);  // [B, T, outputs]
}

Tensor Transformer::operator()(const Inputs& in, std::vector<nn::KVCache>* caches) const {
  return head_logits(hidden(in, caches));  // [B, T, outputs]
}

std::vector<nn::KVCache> Transformer::make_caches(std::int64_t capacity) const {
  TG_CHECK(capacity > 0, "Transformer::make_caches: capacity must be positive, got {}", capacity);
  return std::vector<nn::KVCache>(blocks.size(), nn::KVCache(capacity));
}

void Transformer::visit(nn::Visitor& v) {
  v.module("embed", embed);
  if (config.patch_dim > 0) v.module("patch_in", patch_in);
  v.modules("blocks", blocks);
  v.module("norm", norm);
  if (!config.tied_head) v.module("head", head);
}

std::string Transformer::structure() const {
  return fmt::format("axes={}, rope_base={}, layout={}, sections=[{}]", config.axes, config.rope.base,
                     config.rope.layout == ops::RotaryLayout::interleaved ? "interleaved" : "half_split",
                     fmt::join(config.rope.sections, ","));
}

std::string Transformer::extra_repr() const {
  return fmt::format("dim={}, layers={}, heads={}, axes={}, rope_base={}, {}{}", config.dim, config.layers,
                     config.heads, config.axes, config.rope.base,
                     config.rope.layout == ops::RotaryLayout::interleaved ? "interleaved" : "half_split",
                     config.tied_head ? ", tied head" : "");
}

// ---- generation -----------------------------------------------------------------------------------------------

Tensor sample_next(const Tensor& logits, double temperature, std::int64_t top_k, Generator& gen) {
  TG_CHECK(logits.defined() && logits.dim() == 2 && logits.shape()[1] > 0,
           "sample_next: expected logits [B, V], got {}", logits.defined() ? logits.shape() : Shape{});
  TG_CHECK(temperature >= 0 && std::isfinite(temperature), "sample_next: temperature must be >= 0, got {}", temperature);
  TG_CHECK(top_k >= 0, "sample_next: top_k must be >= 0, got {}", top_k);
  const std::int64_t B = logits.shape()[0], V = logits.shape()[1];
  const std::vector<double> l = logits.to_vector<double>();
  for (std::size_t i = 0; i < l.size(); ++i)  // (torch.multinomial refuses them too)
    TG_CHECK(std::isfinite(l[i]), "sample_next: logit [{}, {}] is {}; logits must be finite", static_cast<std::int64_t>(i) / V,
             static_cast<std::int64_t>(i) % V, l[i]);
  std::vector<std::int64_t> out(static_cast<std::size_t>(B));
  std::vector<std::int64_t> order(static_cast<std::size_t>(V));
  for (std::int64_t b = 0; b < B; ++b) {
    const double* row = l.data() + b * V;
    if (temperature == 0.0) {
      out[static_cast<std::size_t>(b)] = std::max_element(row, row + V) - row;  // first maximum
      continue;
    }
    std::iota(order.begin(), order.end(), std::int64_t{0});
    const std::int64_t k = top_k > 0 ? std::min(top_k, V) : V;
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t i, std::int64_t j) { return row[i] > row[j]; });
    const double top = row[order[0]];
    std::vector<double> w(static_cast<std::size_t>(k));
    double total = 0;
    for (std::int64_t i = 0; i < k; ++i) total += (w[static_cast<std::size_t>(i)] = std::exp((row[order[i]] - top) / temperature));
    const double u = gen.uniform() * total;
    double acc = 0;
    std::int64_t pick = order[k - 1];
    for (std::int64_t i = 0; i < k; ++i) {
      acc += w[static_cast<std::size_t>(i)];
      if (u < acc) {
        pick = order[i];
        break;
      }
    }
    out[static_cast<std::size_t>(b)] = pick;
  }
  return from_vector(out, {B});
}

Tensor generate(const Transformer& model, const Inputs& prompt, nn::PositionBuilder& positions,
                const SampleOptions& o, Generator& gen) {
  TG_CHECK(o.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  TG_CHECK(prompt.tokens.defined() && prompt.tokens.dim() == 2 && prompt.tokens.shape()[1] > 0,
           "generate: expected prompt tokens [B, T] with T >= 1, got {}",
           prompt.tokens.defined() ? prompt.tokens.shape() : Shape{});
  const std::int64_t B = prompt.tokens.shape()[0], T = prompt.tokens.shape()[1];
  TG_CHECK(positions.size() == T, "generate: the position builder holds {} tokens but the prompt has T = {}",
           positions.size(), T);
  TG_CHECK(positions.axes() == model.config.axes, "generate: the position builder has {} axes, the model {}",
           positions.axes(), model.config.axes);
  TG_CHECK(model.config.output_size() == model.config.vocab,
           "generate: the model's head has {} outputs, not a vocabulary of {} tokens", model.config.output_size(),
           model.config.vocab);
  // Checked before the KV caches are sized by it.
  TG_CHECK(o.max_new_tokens <= nn::PositionBuilder::kMaxTokens - T,
           "generate: max_new_tokens must be at most {} (a sequence holds at most {} tokens; the prompt has {}), got {}",
           nn::PositionBuilder::kMaxTokens - T, nn::PositionBuilder::kMaxTokens, T, o.max_new_tokens);
  // In training mode, attention dropout would make the samples depend on the model's generator.
  for (const Block& b : model.blocks)
    TG_CHECK(!model.training() || b.attn.dropout == 0,
             "generate: the model is in training mode with attention dropout {}; call eval() before generating",
             b.attn.dropout);
  NoGradGuard no_grad;
  std::vector<nn::KVCache> caches = model.make_caches(T + std::max<std::int64_t>(o.max_new_tokens, 1));
  Inputs in = prompt;
  if (!in.positions.defined()) {
    in.positions = positions.positions();  // [T, A]
  } else {
    // The generated tokens continue the builder's layout, so the prompt must have been laid out by it.
    const std::vector<double> want = positions.positions().to(DType::f64).to_vector<double>();  // [T, A]
    const std::vector<double> got = in.positions.to(DType::f64).contiguous().to_vector<double>();  // [T, A] or [B, T, A]
    bool same = !want.empty() && got.size() % want.size() == 0;
    for (std::size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i % want.size()];
    TG_CHECK(same, "generate: prompt.positions {} differ from the position builder's (the decoded tokens continue the "
             "builder's layout); leave prompt.positions undefined to take them from the builder",
             in.positions.shape());
  }
  Tensor logits = model(in, &caches);                                 // [B, T, V]
  std::vector<std::int64_t> out(static_cast<std::size_t>(B * o.max_new_tokens));
  std::vector<bool> done(static_cast<std::size_t>(B), false);
  for (std::int64_t s = 0; s < o.max_new_tokens; ++s) {
    const Tensor last = logits.select(1, logits.shape()[1] - 1);  // [B, V]
    std::vector<std::int64_t> next = sample_next(last, o.temperature, o.top_k, gen).to_vector<std::int64_t>();
    for (std::int64_t b = 0; b < B; ++b) {
      auto& t = next[static_cast<std::size_t>(b)];
      if (done[static_cast<std::size_t>(b)]) t = o.eos;
      if (o.eos >= 0 && t == o.eos) done[static_cast<std::size_t>(b)] = true;
      out[static_cast<std::size_t>(b * o.max_new_tokens + s)] = t;
    }
    if (s + 1 == o.max_new_tokens) break;
    positions.add_text(1);
    Inputs step;
    step.tokens = from_vector(next, {B, 1});                               // [B, 1]
    step.positions = positions.positions(positions.size() - 1, 1);  // [1, A]
    logits = model(step, &caches);  // [B, 1, V]
  }
  if (o.max_new_tokens > 0) positions.add_text(1);  // the last generated token's position
  return from_vector(out, {B, o.max_new_tokens});
}

}  // namespace tg::models::transformer
