#include "nn/linear.hpp"

#include <cmath>

#include <fmt/format.h>

#include "core/autograd.hpp"
#include "ops/dense.hpp"
#include "ops/dropout.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/monarch.hpp"
#include "ops/shape.hpp"

namespace tg::nn {

Linear::Linear(std::int64_t in_features, std::int64_t out_features, const LinearOptions& o) {
  TG_CHECK(in_features > 0 && out_features > 0, "Linear: feature sizes must be positive, got in={} out={}",
           in_features, out_features);
  Generator& gen = o.gen ? *o.gen : default_generator();
  weight = empty({out_features, in_features}, o.dtype);
  init::apply(weight, o.init ? o.init : init::torch_default(), gen);
  weight.requires_grad_();
  if (o.bias) {
    bias = empty({out_features}, o.dtype);
    init::apply(bias, o.bias_init ? o.bias_init : init::torch_default_bias(in_features), gen);
    bias.requires_grad_();
  }
}

Tensor Linear::operator()(const Tensor& x) const { return ops::linear(x, weight, bias); }

MonarchLinear::MonarchLinear(std::int64_t in, std::int64_t out, std::int64_t K, std::int64_t J, const MonarchLinearOptions& o)
    : in_features(in), out_features(out) {
  TG_CHECK(in > 0 && out > 0 && K > 0 && J > 0 && K <= in && J <= out,
           "MonarchLinear: need in, out > 0 and 0 < K <= in, 0 < J <= out, got in={} out={} K={} J={}", in, out, K, J);
  Generator& gen = o.gen ? *o.gen : default_generator();
  const std::int64_t I = (in + K - 1) / K, Lo = (out + J - 1) / J;
  const double b1 = 1.0 / std::sqrt(static_cast<double>(I)), b2 = 1.0 / std::sqrt(static_cast<double>(K));
  w1 = empty({K, J, I}, o.dtype);
  init::apply(w1, init::uniform(-b1, b1), gen);
  w1.requires_grad_();
  w2 = empty({J, Lo, K}, o.dtype);
  init::apply(w2, init::uniform(-b2, b2), gen);
  w2.requires_grad_();
  if (o.bias) {
    bias = empty({out}, o.dtype);
    init::apply(bias, init::torch_default_bias(in), gen);
    bias.requires_grad_();
  }
}

Tensor MonarchLinear::operator()(const Tensor& x) const {
  TG_CHECK(x.defined() && x.dim() >= 1 && x.shape()[x.dim() - 1] == in_features, "MonarchLinear: expected x [..., {}], got {}",
           in_features, x.defined() ? x.shape() : Shape{});
  const std::int64_t padded = w1.shape()[0] * w1.shape()[2];
  const Tensor xp = padded == in_features ? x : ops::pad(x, {0, padded - in_features});  // [..., K*I]
  Tensor y = ops::monarch_matmul(xp, w1, w2);                                               // [..., Lo*J]
  if (y.shape()[y.dim() - 1] != out_features) y = y.narrow(-1, 0, out_features);           // [..., out]
  return bias.defined() ? y + bias : y;
}

Tensor MonarchLinear::dense_weight() const {
  return ops::monarch_dense(w1, w2).narrow(0, 0, out_features).narrow(1, 0, in_features);  // [out, in]
}

void MonarchLinear::set_from_dense(const Tensor& weight) {
  TG_CHECK(weight.defined() && weight.shape() == (Shape{out_features, in_features}),
           "MonarchLinear::set_from_dense: expected a weight [{}, {}], got {}", out_features, in_features,
           weight.defined() ? weight.shape() : Shape{});
  const std::int64_t K = w1.shape()[0], J = w1.shape()[1], I = w1.shape()[2], Lo = w2.shape()[1];
  NoGradGuard no_grad;
  const Tensor padded = ops::pad(weight.to(DType::f64), {0, K * I - in_features, 0, Lo * J - out_features});  // [Lo*J, K*I]
  const ops::dense::MonarchFactors f = ops::dense::monarch_project(padded, K, J);
  w1.copy_(f.w1);
  w2.copy_(f.w2);
}

void MonarchLinear::visit(Visitor& v) {
  v.param("w1", w1);
  v.param("w2", w2);
  v.param("bias", bias);
}

std::string MonarchLinear::extra_repr() const {
  return fmt::format("in={}, out={}, K={}, J={}, bias={}", in_features, out_features, w1.shape()[0], w1.shape()[1],
                     bias.defined());
}

void Linear::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
}

std::string Linear::extra_repr() const {
  return fmt::format("in={}, out={}, bias={}", weight.size(1), weight.size(0), bias.defined());
}

Embedding::Embedding(std::int64_t num_embeddings, std::int64_t dim, const EmbeddingOptions& o) {
  TG_CHECK(num_embeddings > 0 && dim > 0, "Embedding: sizes must be positive, got {} x {}", num_embeddings, dim);
  weight = empty({num_embeddings, dim}, o.dtype);
  init::apply(weight, o.init ? o.init : init::normal(0.0, 1.0), o.gen ? *o.gen : default_generator());
  weight.requires_grad_();
}

Tensor Embedding::operator()(const Tensor& index) const { return ops::embedding(weight, index); }

std::string Embedding::extra_repr() const { return fmt::format("num={}, dim={}", weight.size(0), weight.size(1)); }

Tensor activate(const Tensor& x, Activation a) {
  switch (a) {
    case Activation::relu: return ops::relu(x);
    case Activation::gelu: return ops::gelu(x);
    case Activation::gelu_tanh: return ops::gelu(x, ops::GeluApprox::tanh);
    case Activation::silu: return ops::silu(x);
    case Activation::tanh: return ops::tanh(x);
  }
  return x;
}

MLP::MLP(std::int64_t dim, std::int64_t hidden, std::int64_t out_dim, const MLPOptions& o) : options(o) {
  if (out_dim < 0) out_dim = dim;
  LinearOptions lin{.bias = o.bias, .dtype = o.dtype, .gen = o.gen};
  fc1 = Linear(dim, hidden, lin);
  if (o.swiglu) gate = Linear(dim, hidden, lin);
  LinearOptions out = lin;
  out.init = o.out_init;
  if (o.out_init) out.bias_init = init::zeros();
  fc2 = Linear(hidden, out_dim, out);
}

Tensor MLP::operator()(const Tensor& x) const {
  if (options.swiglu) return fc2(ops::silu(gate(x)) * fc1(x));  // [..., hidden] -> [..., out]
  return fc2(activate(fc1(x), options.activation));
}

void MLP::visit(Visitor& v) {
  v.module("fc1", fc1);
  if (options.swiglu) v.module("gate", gate);
  v.module("fc2", fc2);
}

namespace {
const char* activation_name(const MLPOptions& o) {
  static constexpr const char* kNames[] = {"relu", "gelu", "gelu_tanh", "silu", "tanh"};
  return o.swiglu ? "swiglu" : kNames[static_cast<int>(o.activation)];
}
}  // namespace

std::string MLP::extra_repr() const { return fmt::format("{}, hidden={}", activation_name(options), fc1.weight.size(0)); }
std::string MLP::structure() const { return fmt::format("activation={}", activation_name(options)); }

Dropout::Dropout(double p_, Generator* g) : p(p_), gen(g) {
  TG_CHECK(p >= 0 && p < 1, "Dropout: p must be in [0, 1), got {}", p);
}

Tensor Dropout::operator()(const Tensor& x) const {
  return ops::dropout(x, p, training(), gen ? *gen : default_generator());
}

std::string Dropout::extra_repr() const { return fmt::format("p={}", p); }

}  // namespace tg::nn
