// Basic layers: Linear, MonarchLinear, Embedding, MLP (GELU / SiLU / SwiGLU), Dropout.
#pragma once

#include "core/random.hpp"
#include "nn/init.hpp"
#include "nn/module.hpp"

namespace tg::nn {

struct LinearOptions {
  bool bias = true;
  init::Initializer init;       // weight init; default: PyTorch's (U(+-1/sqrt(in)))
  init::Initializer bias_init;  // default: PyTorch's (U(+-1/sqrt(in)))
  DType dtype = DType::f32;
  Generator* gen = nullptr;     // default: the default generator
};

// y = x W^T + b:  x [..., in] -> [..., out]
class Linear : public Module {
 public:
  Linear() = default;
  Linear(std::int64_t in_features, std::int64_t out_features, const LinearOptions& options = {});

  Tensor operator()(const Tensor& x) const;

  void visit(Visitor& v) override;
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;

  Tensor weight;  // [out, in]
  Tensor bias;    // [out] or undefined
};

// A Monarch-structured Linear (ops/monarch.hpp; spec techniques-B §3.2): y = M x + b with
// M = monarch(w1 [K, J, I], w2 [J, Lo, K]), K*J*(I + Lo) weights instead of in*out. Sizes that K or
// J do not divide are handled as fly's StructuredLinear does: x is zero-padded to K*I features
// (I = ceil(in / K)) and the output cut to out of Lo*J (Lo = ceil(out / J)). Each factor block is
// initialised U(+-1/sqrt(its fan-in)) (I for w1, K for w2), the bias U(+-1/sqrt(in)), as fly.
struct MonarchLinearOptions {
  bool bias = true;
  DType dtype = DType::f32;
  Generator* gen = nullptr;  // default: the default generator
};
class MonarchLinear : public Module {
 public:
  MonarchLinear() = default;
  // K blocks on the input side, J on the output side (K = J = sqrt(n) for the square Monarch).
  MonarchLinear(std::int64_t in_features, std::int64_t out_features, std::int64_t K, std::int64_t J,
                const MonarchLinearOptions& options = {});

  Tensor operator()(const Tensor& x) const;  // x [..., in] -> [..., out]
  // The equivalent dense weight [out, in] (for sparse-to-dense training or inspection).
  Tensor dense_weight() const;
  // Dense-to-sparse: sets w1, w2 to the Monarch projection of a dense weight [out, in] (zero-padded
  // to the factors' size; ops::dense::monarch_project), the Frobenius-nearest this layer can hold.
  void set_from_dense(const Tensor& weight);

  void visit(Visitor& v) override;
  std::string type_name() const override { return "MonarchLinear"; }
  std::string extra_repr() const override;

  Tensor w1;    // [K, J, I]
  Tensor w2;    // [J, Lo, K]
  Tensor bias;  // [out] or undefined
  std::int64_t in_features = 0, out_features = 0;
};

struct EmbeddingOptions {
  init::Initializer init;  // default N(0, 1) as PyTorch
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// Rows of a table: index [...] (integer) -> [..., dim]
class Embedding : public Module {
 public:
  Embedding() = default;
  Embedding(std::int64_t num_embeddings, std::int64_t dim, const EmbeddingOptions& options = {});

  Tensor operator()(const Tensor& index) const;

  void visit(Visitor& v) override { v.param("weight", weight); }
  std::string type_name() const override { return "Embedding"; }
  std::string extra_repr() const override;

  Tensor weight;  // [num_embeddings, dim]
};

enum class Activation { relu, gelu, gelu_tanh, silu, tanh };
Tensor activate(const Tensor& x, Activation a);

struct MLPOptions {
  Activation activation = Activation::gelu;
  bool swiglu = false;  // SwiGLU: out(silu(gate(x)) * up(x)); `activation` is ignored
  bool bias = true;
  init::Initializer out_init;  // e.g. zeros() for residual branches; default as Linear
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// Two-layer perceptron: [..., dim] -> hidden -> [..., out_dim (default dim)]
class MLP : public Module {
 public:
  MLP() = default;
  MLP(std::int64_t dim, std::int64_t hidden, std::int64_t out_dim = -1, const MLPOptions& options = {});

  Tensor operator()(const Tensor& x) const;

  void visit(Visitor& v) override;
  std::string type_name() const override { return "MLP"; }
  std::string extra_repr() const override;
  std::string structure() const override;

  Linear fc1;   // dim -> hidden (the "up" projection for SwiGLU)
  Linear gate;  // dim -> hidden (SwiGLU only)
  Linear fc2;   // hidden -> out_dim
  MLPOptions options;
};

// Inverted dropout in training mode, identity in eval mode. The default p is 0.1, the usual rate in
// transformer blocks (torch.nn.Dropout's default is 0.5).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.1, Generator* gen = nullptr);
  Tensor operator()(const Tensor& x) const;
  void visit(Visitor&) override {}
  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override;

  double p;
  Generator* gen;  // not owned (it must outlive the module's use); default generator when null

 protected:
  void use_dropout_generator(Generator* g) override { gen = g; }
};

}  // namespace tg::nn
