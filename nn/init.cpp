#include "nn/init.hpp"

#include <cmath>

#include "core/autograd.hpp"

namespace tg::nn::init {

std::pair<std::int64_t, std::int64_t> fans(const Shape& shape) {
  if (shape.size() == 0) return {1, 1};
  if (shape.size() == 1) return {shape[0], shape[0]};
  std::int64_t receptive = 1;
  for (int d = 2; d < shape.size(); ++d) receptive *= shape[d];
  return {shape[1] * receptive, shape[0] * receptive};
}

namespace {
// A tensor without elements is left alone (torch's initialisers warn and do nothing): its fans
// may be 0.
Initializer fill_with(std::function<Tensor(const Tensor&, Generator&)> make) {
  return [make = std::move(make)](Tensor& t, Generator& gen) {
    if (t.numel() > 0) t.copy_(make(t, gen));
  };
}
}  // namespace

Initializer zeros() { return constant(0.0); }
Initializer ones() { return constant(1.0); }
Initializer constant(double value) {
  return [value](Tensor& t, Generator&) { t.fill_(value); };
}
Initializer uniform(double low, double high) {
  return fill_with([=](const Tensor& t, Generator& g) { return tg::uniform(t.shape(), low, high, t.dtype(), g); });
}
Initializer normal(double mean, double std) {
  return fill_with([=](const Tensor& t, Generator& g) { return tg::normal(t.shape(), mean, std, t.dtype(), g); });
}
Initializer trunc_normal(double std, double mean, double low, double high) {
  return fill_with([=](const Tensor& t, Generator& g) {
    return tg::trunc_normal(t.shape(), mean, std, mean + low * std, mean + high * std, t.dtype(), g);
  });
}
Initializer xavier_uniform(double gain) {
  return fill_with([=](const Tensor& t, Generator& g) {
    const auto [fan_in, fan_out] = fans(t.shape());
    const double a = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
    return tg::uniform(t.shape(), -a, a, t.dtype(), g);
  });
}
Initializer xavier_normal(double gain) {
  return fill_with([=](const Tensor& t, Generator& g) {
    const auto [fan_in, fan_out] = fans(t.shape());
    return tg::normal(t.shape(), 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), t.dtype(), g);
  });
}
Initializer kaiming_uniform(double a) {
  return fill_with([=](const Tensor& t, Generator& g) {
    const double gain = std::sqrt(2.0 / (1 + a * a));
    const double bound = gain * std::sqrt(3.0 / static_cast<double>(fans(t.shape()).first));
    return tg::uniform(t.shape(), -bound, bound, t.dtype(), g);
  });
}
Initializer kaiming_normal(double a) {
  return fill_with([=](const Tensor& t, Generator& g) {
    const double gain = std::sqrt(2.0 / (1 + a * a));
    return tg::normal(t.shape(), 0.0, gain / std::sqrt(static_cast<double>(fans(t.shape()).first)), t.dtype(), g);
  });
}
Initializer torch_default() { return kaiming_uniform(std::sqrt(5.0)); }
Initializer torch_default_bias(std::int64_t fan_in) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  return uniform(-bound, bound);
}

void apply(Tensor& t, const Initializer& init, Generator& gen) {
  NoGradGuard no_grad;
  init(t, gen);
}

}  // namespace tg::nn::init
