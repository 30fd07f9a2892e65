// Multi-head attention (self or cross, causal or masked, with rotary tables and a KV cache for
// decoding) and the pre-norm transformer block built on it.
#pragma once

#include <optional>

#include "core/random.hpp"
#include "nn/linear.hpp"
#include "nn/norm.hpp"
#include "ops/rotary.hpp"

namespace tg::nn {

// Keys and values of earlier positions, for incremental decoding (inference only: use it under
// NoGradGuard). Buffers [B, H, capacity, head_dim] are allocated on first use, and again when the
// cache is empty (new, or reset()) and a layer of another batch, heads, head size or dtype uses it.
struct KVCache {
  explicit KVCache(std::int64_t capacity = 0) : capacity(capacity) {}
  void reset() { length = 0; }
  std::int64_t capacity;
  std::int64_t length = 0;  // positions stored
  Tensor k, v;
};

// Rotary tables for the positions of the tokens in this call (see ops::apply_rotary): cos, sin of
// shape [T, head_dim / 2] or [B, 1, T, head_dim / 2].
struct RotaryTables {
  Tensor cos, sin;
  ops::RotaryLayout layout = ops::RotaryLayout::interleaved;
};

// Per-call arguments of attention.
struct AttentionArgs {
  bool causal = false;                  // bottom-right aligned with a cache (see ops/attention.hpp)
  Tensor mask;                          // bool, broadcastable to [B, H, Tq, Tk]; true = attend
  const Tensor* context = nullptr;      // cross-attention source [B, S, kv_dim]
  const RotaryTables* rotary = nullptr;  // rotates q and k (self-attention)
  KVCache* cache = nullptr;             // attends over the cached keys/values and this call's
  bool cache_append = true;             // false: this call's keys/values are not kept in the cache
                                        // (a query that must not become context, e.g. a noisy token)
  double temperature = 1.0;             // scores are divided by it (> 0; attention-temperature guidance)
};

struct AttentionOptions {
  std::int64_t kv_dim = -1;  // context dim for cross-attention; -1: self-attention
  bool bias = true;
  double dropout = 0.0;      // on the attention probabilities, in training mode
  std::optional<double> scale;  // score scale; default 1 / sqrt(head_dim)
  init::Initializer out_init;  // e.g. zeros() for residual branches
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// x [B, T, dim] -> [B, T, dim]
class MultiheadAttention : public Module {
 public:
  MultiheadAttention() = default;
  MultiheadAttention(std::int64_t dim, std::int64_t heads, const AttentionOptions& options = {});

  Tensor operator()(const Tensor& x, const AttentionArgs& args = {}) const;

  void visit(Visitor& v) override;
  std::string type_name() const override { return "MultiheadAttention"; }
  std::string extra_repr() const override;
  std::string structure() const override;

  Linear qkv;  // self-attention: dim -> 3 dim
  Linear q;    // cross-attention: dim -> dim
  Linear kv;   //                  kv_dim -> 2 dim
  Linear out;  // dim -> dim
  std::int64_t heads = 1, head_dim = 1;
  bool cross = false;
  double dropout = 0.0;
  double scale = 1.0;  // score scale
  Generator* gen = nullptr;  // for the dropout (not owned; default generator when null)

 protected:
  void use_dropout_generator(Generator* g) override { gen = g; }
};

struct TransformerBlockOptions {
  double mlp_ratio = 4.0;
  NormKind norm = NormKind::layer;
  double norm_eps = 1e-5;
  bool swiglu = false;
  Activation activation = Activation::gelu;
  bool bias = true;
  double dropout = 0.0;  // on the residual branches and the attention probabilities
  std::optional<double> attention_scale;  // default 1 / sqrt(head_dim)
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// The MLP's hidden width round(mlp_ratio * dim), checked: the ratio must be finite and positive,
// and the width at least 1 and at most 2^31.
std::int64_t mlp_hidden_width(double mlp_ratio, std::int64_t dim);

// Pre-norm block: x + attn(norm1(x)), then h + mlp(norm2(h)).   x [B, T, dim] -> [B, T, dim]
class TransformerBlock : public Module {
 public:
  TransformerBlock() = default;
  TransformerBlock(std::int64_t dim, std::int64_t heads, const TransformerBlockOptions& options = {});

  Tensor operator()(const Tensor& x, const AttentionArgs& args = {}) const;

  void visit(Visitor& v) override;
  std::string type_name() const override { return "TransformerBlock"; }

  Norm norm1, norm2;
  MultiheadAttention attn;
  MLP mlp;
  Dropout drop;
};

}  // namespace tg::nn
