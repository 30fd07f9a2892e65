// A decoder-only causal transformer over text tokens and image patches, with rotary positions
// from nn::PositionBuilder (RoPE-1D, RoPE-2D, RoPE-Tie, RoPE-TV, M-RoPE; spec techniques-A §1):
//
//   tokens [B, T] --Embedding--.
//                               +-- where(is_patch) --> x [B, T, dim] --> L x pre-norm Block
//   patches [B, T, D] --Linear-'        (causal self-attention with RoPE at `positions`)
//                                --> final norm --> hidden [B, T, dim] --> head --> logits [B, T, outputs]
//
// Generation continues prompts with KV caches (one per block) and greedy, temperature or top-k
// sampling; the positions of generated tokens come from the prompt's PositionBuilder, so decoding
// after an image continues at the right text position.
#pragma once

#include <string>
#include <vector>

#include "core/random.hpp"
#include "nn/attention.hpp"
#include "nn/rope.hpp"

namespace tg::models::transformer {

struct Config {
  std::int64_t vocab = 256;     // token ids (text and special tokens)
  std::int64_t patch_dim = 0;   // > 0: image patches of this size are projected to `dim`
  std::int64_t outputs = -1;    // head size; -1: vocab (a language-model head)
  std::int64_t dim = 256, layers = 4, heads = 4;
  double mlp_ratio = 4.0;
  nn::NormKind norm = nn::NormKind::layer;
  double norm_eps = 1e-5;
  bool swiglu = false;                             // SwiGLU MLP (else `activation`)
  nn::Activation activation = nn::Activation::gelu;  // exact (erf) GELU by default
  bool bias = false;                               // biases in the attention and MLP projections
  bool tied_head = false;                          // logits = hidden . embedding^T (needs outputs == vocab)
  std::int64_t axes = 1;                           // position axes A (1: RoPE-1D)
  nn::RopeOptions rope;                            // base, pair layout, frequency -> axis map
  std::int64_t head_dim() const { return heads > 0 ? dim / heads : 0; }
  std::int64_t output_size() const { return outputs > 0 ? outputs : vocab; }
};

// One forward call's input. Text-only input leaves patches and is_patch undefined.
struct Inputs {
  Tensor tokens;     // [B, T] integer ids (read where is_patch is false)
  Tensor patches;    // [B, T, patch_dim] (read where is_patch is true), or undefined
  Tensor is_patch;   // [T] or [B, T] bool, or undefined (all text)
  Tensor positions;  // [T, A] (shared by the batch) or [B, T, A], e.g. PositionBuilder::positions()
};

// Pre-norm block: h = x + attn(norm1(x)); h + mlp(norm2(h)).   x [B, T, dim] -> [B, T, dim]
class Block : public nn::Module {
 public:
  Block() = default;
  Block(const Config& config, Generator* gen);
  Tensor operator()(const Tensor& x, const nn::RotaryTables& rotary, nn::KVCache* cache = nullptr) const;
  void visit(nn::Visitor& v) override;
  std::string type_name() const override { return "Block"; }

  nn::Norm norm1, norm2;
  nn::MultiheadAttention attn;  // causal self-attention, rotary q/k, optional KV cache
  nn::MLP mlp;
};

class Transformer : public nn::Module {
 public:
  Transformer() = default;
  explicit Transformer(const Config& config, Generator* gen = nullptr);

  // The final-norm hidden states [B, T, dim]. With caches (one per block, see make_caches) the
  // call appends its T positions to them and attends over everything cached (inference only).
  Tensor hidden(const Inputs& in, std::vector<nn::KVCache>* caches = nullptr) const;
  // hidden [B, T, dim] -> logits [B, T, outputs]
  Tensor head_logits(const Tensor& hidden) const;
  // logits [B, T, outputs]
  Tensor operator()(const Inputs& in, std::vector<nn::KVCache>* caches = nullptr) const;

  std::vector<nn::KVCache> make_caches(std::int64_t capacity) const;

  void visit(nn::Visitor& v) override;
  std::string type_name() const override { return "Transformer"; }
  std::string extra_repr() const override;
  std::string structure() const override;  // the rotary positions (heads etc. are the blocks')

  Config config;
  nn::Embedding embed;                   // vocab -> dim
  nn::Linear patch_in;                   // patch_dim -> dim (when patch_dim > 0)
  std::vector<Block> blocks;
  nn::Norm norm;                         // final norm
  nn::Linear head;                       // dim -> outputs (untied)
  nn::Rope rope;
};

// ---- generation -----------------------------------------------------------------------------------------------

struct SampleOptions {
  std::int64_t max_new_tokens = 16;  // 0 .. PositionBuilder::kMaxTokens - T (the prompt's T)
  double temperature = 0.0;  // 0: greedy (argmax); > 0: sample softmax(logits / temperature)
  std::int64_t top_k = 0;    // > 0: sample among the k most likely tokens only
  std::int64_t eos = -1;     // >= 0: a sequence that emitted eos keeps emitting it
};

// The next token of every row of logits [B, V] -> [B] i64. Deterministic given the generator (one
// uniform draw per row; ties in top-k and argmax go to the smaller id).
Tensor sample_next(const Tensor& logits, double temperature, std::int64_t top_k, Generator& gen);

// Continues the prompts (all sharing the position layout `positions`, which has exactly the prompt's
// T tokens and gets one text token appended per generated token) with KV-cached decoding.
// prompt.positions may be left undefined (taken from the builder). Returns the new tokens
// [B, max_new_tokens] i64. Runs without recording gradients.
Tensor generate(const Transformer& model, const Inputs& prompt, nn::PositionBuilder& positions,
                const SampleOptions& options, Generator& gen);

}  // namespace tg::models::transformer
