// Parameter initialisers. An Initializer fills a tensor in place from a generator; layers take one
// per weight so that the scheme is chosen per layer:
//   nn::Linear head(512, 10, {.init = nn::init::zeros()});
#pragma once

#include <functional>
#include <utility>

#include "core/random.hpp"
#include "core/tensor.hpp"

namespace tg::nn::init {

using Initializer = std::function<void(Tensor& t, Generator& gen)>;

// fan_in and fan_out of a weight [out, in, *kernel] (a 1-D tensor counts as [n]).
std::pair<std::int64_t, std::int64_t> fans(const Shape& shape);

Initializer zeros();
Initializer ones();
Initializer constant(double value);
Initializer uniform(double low, double high);
Initializer normal(double mean, double std);
// N(mean, std) truncated to [mean + low*std, mean + high*std] (default +-2 std).
Initializer trunc_normal(double std, double mean = 0.0, double low = -2.0, double high = 2.0);
Initializer xavier_uniform(double gain = 1.0);  // U(+-gain sqrt(6 / (fan_in + fan_out)))
Initializer xavier_normal(double gain = 1.0);   // N(0, gain^2 * 2 / (fan_in + fan_out))
// He initialisation for a leaky ReLU of slope a (a = 0: ReLU), by fan_in.
Initializer kaiming_uniform(double a = 0.0);
Initializer kaiming_normal(double a = 0.0);
// PyTorch's default for Linear/Conv weights: kaiming_uniform(a = sqrt(5)) = U(+-1/sqrt(fan_in)).
Initializer torch_default();
// PyTorch's default for biases: U(+-1/sqrt(fan_in)) with the fan_in of the layer's weight.
Initializer torch_default_bias(std::int64_t fan_in);

// Fills t (under NoGradGuard) and bumps its version.
void apply(Tensor& t, const Initializer& init, Generator& gen);

}  // namespace tg::nn::init
