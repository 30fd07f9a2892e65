#include "nn/positional.hpp"

#include <cmath>

#include "ops/elementwise.hpp"
#include "ops/shape.hpp"

namespace tg::nn {

Tensor sinusoidal_embedding(const Tensor& t, std::int64_t dim, double max_period, DType dtype) {
  TG_CHECK(t.defined() && t.dim() == 1, "sinusoidal_embedding: expected t [N], got {}", t.defined() ? t.shape() : Shape{});
  TG_CHECK(dim >= 2 && dim % 2 == 0, "sinusoidal_embedding: dim must be even and >= 2, got {}", dim);
  TG_CHECK(std::isfinite(max_period) && max_period > 0, "sinusoidal_embedding: max_period must be positive, got {}", max_period);
  const std::int64_t n = t.shape()[0], half = dim / 2;
  const std::vector<double> tv = t.to_vector<double>();
  std::vector<double> out(static_cast<std::size_t>(n * dim));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < half; ++k) {
      const double angle = tv[i] * std::exp(-std::log(max_period) * static_cast<double>(k) / static_cast<double>(half));
      out[i * dim + k] = std::cos(angle);
      out[i * dim + half + k] = std::sin(angle);
    }
  return from_vector(out, {n, dim}).to(dtype);
}

Tensor sincos_2d_embedding(std::int64_t h, std::int64_t w, std::int64_t dim, DType dtype) {
  TG_CHECK(h > 0 && w > 0 && dim > 0 && dim % 4 == 0,
           "sincos_2d_embedding: expected a grid h, w > 0 and dim divisible by 4, got h = {}, w = {}, dim = {}", h, w, dim);
  TG_CHECK(static_cast<double>(h) * static_cast<double>(w) * static_cast<double>(dim) <= 0x1p31,
           "sincos_2d_embedding: a {} x {} grid of dim {} is too large (at most 2^31 values)", h, w, dim);
  const std::int64_t quarter = dim / 4;
  std::vector<double> out(static_cast<std::size_t>(h * w * dim));
  for (std::int64_t i = 0; i < h; ++i)
    for (std::int64_t j = 0; j < w; ++j) {
      double* row = out.data() + (i * w + j) * dim;
      for (std::int64_t k = 0; k < quarter; ++k) {
        const double omega = std::pow(10000.0, -static_cast<double>(k) / static_cast<double>(quarter));
        row[k] = std::sin(static_cast<double>(j) * omega);  // column half: [sin, cos]
        row[quarter + k] = std::cos(static_cast<double>(j) * omega);
        row[2 * quarter + k] = std::sin(static_cast<double>(i) * omega);  // row half: [sin, cos]
        row[3 * quarter + k] = std::cos(static_cast<double>(i) * omega);
      }
    }
  return from_vector(out, {h * w, dim}).to(dtype);
}

TimestepEmbedder::TimestepEmbedder(std::int64_t dim, std::int64_t fd, Generator* gen)
    : fc1(fd, dim, {.gen = gen}), fc2(dim, dim, {.gen = gen}), freq_dim(fd) {}

Tensor TimestepEmbedder::operator()(const Tensor& t) const {
  const Tensor f = sinusoidal_embedding(t, freq_dim, 10000.0, fc1.weight.dtype());  // [N, freq_dim]
  return fc2(ops::silu(fc1(f)));                                                    // [N, dim]
}

void TimestepEmbedder::visit(Visitor& v) {
  v.module("fc1", fc1);
  v.module("fc2", fc2);
}

Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale) {
  TG_CHECK(shift.dim() == 2 && scale.shape() == shift.shape() && x.dim() >= 2 && x.shape()[0] == shift.shape()[0] &&
               x.shape()[x.dim() - 1] == shift.shape()[1],
           "modulate: shift/scale [B, C] must match x [B, ..., C]; got {}, {} and {}", shift.shape(), scale.shape(), x.shape());
  Shape s = shift.shape();  // [B, 1, ..., 1, C]
  for (int d = 1; d < x.dim() - 1; ++d) s.insert(1, 1);
  return x * (scale.reshape(s) + 1.0) + shift.reshape(s);
}

AdaLNModulation::AdaLNModulation(std::int64_t cond_dim, std::int64_t dim, std::int64_t n, Generator* gen)
    : proj(cond_dim, n * dim, {.init = init::zeros(), .bias_init = init::zeros(), .gen = gen}), chunks(n) {}

Tensors AdaLNModulation::operator()(const Tensor& c) const {
  return ops::chunk(proj(ops::silu(c)), chunks, -1);  // chunks x [B, dim]
}

}  // namespace tg::nn
