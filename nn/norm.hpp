// Normalisation layers (fused ops from ops/norm.hpp).
#pragma once

#include "nn/module.hpp"

namespace tg::nn {

struct NormOptions {
  bool affine = true;  // learnable scale (and bias where the norm has one)
  double eps = 1e-5;
  DType dtype = DType::f32;
};

// Normalises the last dim(s): x [..., *shape] -> same shape.
class LayerNorm : public Module {
 public:
  LayerNorm() = default;
  explicit LayerNorm(std::int64_t dim, const NormOptions& options = {}) : LayerNorm(Shape{dim}, options) {}
  LayerNorm(const Shape& shape, const NormOptions& options);
  Tensor operator()(const Tensor& x) const;
  void visit(Visitor& v) override;
  std::string type_name() const override { return "LayerNorm"; }
  std::string extra_repr() const override;

  Tensor weight, bias;  // [*shape] or undefined
  Shape shape;
  double eps = 1e-5;
};

// x / rms(x) * weight over the last dim(s).
class RMSNorm : public Module {
 public:
  RMSNorm() = default;
  explicit RMSNorm(std::int64_t dim, const NormOptions& options = {.eps = 1e-6});
  Tensor operator()(const Tensor& x) const;
  void visit(Visitor& v) override { v.param("weight", weight); }
  std::string type_name() const override { return "RMSNorm"; }
  std::string extra_repr() const override;

  Tensor weight;  // [dim] or undefined
  Shape shape;
  double eps = 1e-6;
};

// Group normalisation of x [N, C, *].
class GroupNorm : public Module {
 public:
  GroupNorm() = default;
  GroupNorm(std::int64_t groups, std::int64_t channels, const NormOptions& options = {});
  Tensor operator()(const Tensor& x) const;
  // silu(norm(x)) as one fused op (ops::group_norm_silu): same bits, one pass instead of three.
  Tensor with_silu(const Tensor& x) const;
  void visit(Visitor& v) override;
  std::string type_name() const override { return "GroupNorm"; }
  std::string extra_repr() const override;
  std::string structure() const override { return "groups=" + std::to_string(groups); }

  Tensor weight, bias;  // [C] or undefined
  std::int64_t groups = 1;
  double eps = 1e-5;
};

struct BatchNormOptions {
  double momentum = 0.1;             // running = (1 - momentum) running + momentum batch
  double eps = 1e-5;
  bool affine = true;                // learnable weight and bias [C]
  bool track_running_stats = true;   // false: batch statistics in eval mode too
  DType dtype = DType::f32;
};

// Batch normalisation of x [N, C, *] (torch's BatchNorm1d/2d): batch statistics in training mode
// (which also moves the running statistics), running statistics in eval mode (ops::batch_norm).
// running_mean / running_var are buffers: saved in checkpoints, not trained.
class BatchNorm : public Module {
 public:
  BatchNorm() = default;
  explicit BatchNorm(std::int64_t channels, const BatchNormOptions& options = {});
  Tensor operator()(const Tensor& x);  // updates the running statistics in training mode
  void visit(Visitor& v) override;
  std::string type_name() const override { return "BatchNorm"; }
  std::string extra_repr() const override;

  Tensor weight, bias;               // [C] or undefined
  Tensor running_mean, running_var;  // [C] (0 and 1 at first) or undefined
  std::int64_t channels = 0;
  double momentum = 0.1, eps = 1e-5;
};

// LayerNorm or RMSNorm, chosen at construction (model configs pick one by name).
enum class NormKind { layer, rms };
class Norm : public Module {
 public:
  Norm() = default;
  Norm(std::int64_t dim, NormKind kind, const NormOptions& options = {});
  Tensor operator()(const Tensor& x) const { return kind == NormKind::layer ? layer(x) : rms(x); }
  void visit(Visitor& v) override;
  std::string type_name() const override { return kind == NormKind::layer ? "LayerNorm" : "RMSNorm"; }
  std::string extra_repr() const override { return kind == NormKind::layer ? layer.extra_repr() : rms.extra_repr(); }
  std::string structure() const override { return kind == NormKind::layer ? "kind=layer" : "kind=rms"; }

  NormKind kind = NormKind::layer;
  LayerNorm layer;
  RMSNorm rms;
};

}  // namespace tg::nn
