// Convolution layers (ops/conv.hpp), NCHW.
#pragma once

#include "core/random.hpp"
#include "nn/init.hpp"
#include "nn/module.hpp"
#include "ops/conv.hpp"

namespace tg::nn {

struct Conv2dOptions {
  ops::Size2 stride{1, 1};
  ops::Size2 padding{0, 0};
  ops::Size2 dilation{1, 1};
  std::int64_t groups = 1;
  bool bias = true;
  init::Initializer init;       // default: PyTorch's
  init::Initializer bias_init;  // default: PyTorch's
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// x [N, in, H, W] -> [N, out, Ho, Wo]
class Conv2d : public Module {
 public:
  Conv2d() = default;
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, ops::Size2 kernel, const Conv2dOptions& options = {});
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, const Conv2dOptions& options = {})
      : Conv2d(in_channels, out_channels, ops::Size2{kernel, kernel}, options) {}
  Tensor operator()(const Tensor& x) const;
  // The convolution of x upsampled 2x (nearest): (*this)(ops::upsample(x, 2.0)), computed by
  // ops::upsample_conv2d without the upsampled image where the options allow it (unit stride
  // and dilation, one group, padding < kernel size): a UNet's up-sampling layer.
  Tensor upsampled(const Tensor& x) const;
  void visit(Visitor& v) override;
  std::string type_name() const override { return "Conv2d"; }
  std::string extra_repr() const override;

  Tensor weight;  // [out, in / groups, kh, kw]
  Tensor bias;    // [out] or undefined
  ops::Conv2dOptions conv;
};

struct ConvTranspose2dOptions {
  ops::Size2 stride{1, 1};
  ops::Size2 padding{0, 0};
  ops::Size2 output_padding{0, 0};
  ops::Size2 dilation{1, 1};
  std::int64_t groups = 1;
  bool bias = true;
  init::Initializer init;
  init::Initializer bias_init;
  DType dtype = DType::f32;
  Generator* gen = nullptr;
};

// x [N, in, H, W] -> [N, out, (H - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1, ...]
class ConvTranspose2d : public Module {
 public:
  ConvTranspose2d() = default;
  ConvTranspose2d(std::int64_t in_channels, std::int64_t out_channels, ops::Size2 kernel,
                  const ConvTranspose2dOptions& options = {});
  Tensor operator()(const Tensor& x) const;
  void visit(Visitor& v) override;
  std::string type_name() const override { return "ConvTranspose2d"; }
  std::string extra_repr() const override;

  Tensor weight;  // [in, out / groups, kh, kw]
  Tensor bias;    // [out] or undefined
  ops::ConvTranspose2dOptions conv;
};

}  // namespace tg::nn
