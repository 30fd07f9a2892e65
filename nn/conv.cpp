#include "nn/conv.hpp"

#include <fmt/format.h>

namespace tg::nn {

Conv2d::Conv2d(std::int64_t in, std::int64_t out, ops::Size2 k, const Conv2dOptions& o)
    : conv{o.stride, o.padding, o.dilation, o.groups} {
  TG_CHECK(in > 0 && out > 0 && k[0] > 0 && k[1] > 0, "Conv2d: channels and kernel must be positive, got {} -> {}, {}x{}",
           in, out, k[0], k[1]);
  TG_CHECK(o.groups > 0 && in % o.groups == 0 && out % o.groups == 0, "Conv2d: {} groups must divide {} and {} channels",
           o.groups, in, out);
  Generator& gen = o.gen ? *o.gen : default_generator();
  weight = empty({out, in / o.groups, k[0], k[1]}, o.dtype);
  init::apply(weight, o.init ? o.init : init::torch_default(), gen);
  weight.requires_grad_();
  if (o.bias) {
    bias = empty({out}, o.dtype);
    init::apply(bias, o.bias_init ? o.bias_init : init::torch_default_bias(init::fans(weight.shape()).first), gen);
    bias.requires_grad_();
  }
}

Tensor Conv2d::operator()(const Tensor& x) const { return ops::conv2d(x, weight, bias, conv); }

Tensor Conv2d::upsampled(const Tensor& x) const {
  const bool fused = conv.stride == ops::Size2{1, 1} && conv.dilation == ops::Size2{1, 1} && conv.groups == 1 &&
                     weight.defined() && conv.padding[0] < weight.shape()[2] && conv.padding[1] < weight.shape()[3];
  return fused ? ops::upsample_conv2d(x, weight, bias, conv.padding) : (*this)(ops::upsample(x, 2.0));
}

void Conv2d::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
}

std::string Conv2d::extra_repr() const {
  return fmt::format("{}->{}, kernel={}x{}, stride={}, padding={}{}", weight.size(1) * conv.groups, weight.size(0),
                     weight.size(2), weight.size(3), conv.stride[0], conv.padding[0],
                     conv.groups > 1 ? fmt::format(", groups={}", conv.groups) : "");
}

ConvTranspose2d::ConvTranspose2d(std::int64_t in, std::int64_t out, ops::Size2 k, const ConvTranspose2dOptions& o)
    : conv{o.stride, o.padding, o.output_padding, o.dilation, o.groups} {
  TG_CHECK(in > 0 && out > 0 && k[0] > 0 && k[1] > 0, "ConvTranspose2d: channels and kernel must be positive");
  TG_CHECK(o.groups > 0 && in % o.groups == 0 && out % o.groups == 0,
           "ConvTranspose2d: {} groups must divide {} and {} channels", o.groups, in, out);
  Generator& gen = o.gen ? *o.gen : default_generator();
  weight = empty({in, out / o.groups, k[0], k[1]}, o.dtype);
  init::apply(weight, o.init ? o.init : init::torch_default(), gen);
  weight.requires_grad_();
  if (o.bias) {
    bias = empty({out}, o.dtype);
    init::apply(bias, o.bias_init ? o.bias_init : init::torch_default_bias(init::fans(weight.shape()).first), gen);
    bias.requires_grad_();
  }
}

Tensor ConvTranspose2d::operator()(const Tensor& x) const { return ops::conv_transpose2d(x, weight, bias, conv); }

void ConvTranspose2d::visit(Visitor& v) {
  v.param("weight", weight);
  v.param("bias", bias);
}

std::string ConvTranspose2d::extra_repr() const {
  return fmt::format("{}->{}, kernel={}x{}, stride={}", weight.size(0), weight.size(1) * conv.groups, weight.size(2),
                     weight.size(3), conv.stride[0]);
}

}  // namespace tg::nn
