// Position and time embeddings, and adaLN modulation (DiT-style conditioning).
#pragma once

#include "core/random.hpp"
#include "nn/linear.hpp"

namespace tg::nn {

// Sinusoidal features of scalar positions or times t [N] -> [N, dim]: the first half
// cos(t * f_i), the second half sin(t * f_i), with f_i = max_period^(-i / (dim / 2)) (computed in
// f64, returned as `dtype`). Not differentiable with respect to t.
Tensor sinusoidal_embedding(const Tensor& t, std::int64_t dim, double max_period = 10000.0, DType dtype = DType::f32);

// Fixed 2-D sin-cos position embedding of an h x w grid of patches -> [h * w, dim] (rows in raster
// order), as MAE's / DiT's get_2d_sincos_pos_embed: the first dim/2 features encode the patch
// column j, the last dim/2 the patch row i (their meshgrid puts the width axis first); each half is
// [sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/4)), k < dim/4. dim % 4 == 0.
Tensor sincos_2d_embedding(std::int64_t h, std::int64_t w, std::int64_t dim, DType dtype = DType::f32);

// Embeds scalar times t [N] -> [N, dim]: sinusoidal features (freq_dim) through Linear, SiLU, Linear.
class TimestepEmbedder : public Module {
 public:
  TimestepEmbedder() = default;
  TimestepEmbedder(std::int64_t dim, std::int64_t freq_dim = 256, Generator* gen = nullptr);
  Tensor operator()(const Tensor& t) const;
  void visit(Visitor& v) override;
  std::string type_name() const override { return "TimestepEmbedder"; }

  Linear fc1, fc2;
  std::int64_t freq_dim = 256;
};

// x * (1 + scale) + shift; shift/scale [B, C] broadcast over the middle dims of x [B, ..., C].
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);

// adaLN: SiLU then a zero-initialised Linear from the conditioning vector c [B, cond_dim] to
// `chunks` vectors [B, dim] (shift, scale, gate, ...). Zero init makes every block start as the
// identity.
class AdaLNModulation : public Module {
 public:
  AdaLNModulation() = default;
  AdaLNModulation(std::int64_t cond_dim, std::int64_t dim, std::int64_t chunks, Generator* gen = nullptr);
  Tensors operator()(const Tensor& c) const;
  void visit(Visitor& v) override { v.module("proj", proj); }
  std::string type_name() const override { return "AdaLNModulation"; }

  Linear proj;
  std::int64_t chunks = 1;
};

}  // namespace tg::nn
