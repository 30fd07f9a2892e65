#include "ops/registry.hpp"

#include <array>

namespace tg::ops {

std::span<const OpInfo> differentiable_ops() {
  static constexpr std::array kOps = std::to_array<OpInfo>({
      // core/views.cpp
      {"view", "core"}, {"permute", "core"}, {"expand", "core"}, {"slice", "core"}, {"select", "core"},
      {"flip", "core"}, {"diagonal", "core"}, {"clone", "core"}, {"to", "core"},
      // ops/elementwise.cpp
      {"add", "ops"}, {"sub", "ops"}, {"mul", "ops"}, {"div", "ops"}, {"add_scalar", "ops"}, {"sub_scalar", "ops"},
      {"rsub_scalar", "ops"}, {"mul_scalar", "ops"}, {"div_scalar", "ops"}, {"rdiv_scalar", "ops"}, {"neg", "ops"},
      {"pow", "ops"}, {"pow_scalar", "ops"}, {"minimum", "ops"}, {"maximum", "ops"}, {"clamp", "ops"},
      {"where", "ops"}, {"exp", "ops"}, {"log", "ops"}, {"log1p", "ops"}, {"expm1", "ops"}, {"sqrt", "ops"},
      {"rsqrt", "ops"}, {"square", "ops"}, {"reciprocal", "ops"}, {"abs", "ops"}, {"sign", "ops"}, {"sin", "ops"},
      {"cos", "ops"}, {"tanh", "ops"}, {"erf", "ops"}, {"round", "ops"}, {"floor", "ops"}, {"ceil", "ops"},
      {"sigmoid", "ops"}, {"relu", "ops"}, {"leaky_relu", "ops"}, {"gelu", "ops"}, {"gelu_tanh", "ops"},
      {"silu", "ops"}, {"softplus", "ops"}, {"floor_divide", "ops"}, {"remainder", "ops"}, {"fmod", "ops"},
      {"atan2", "ops"}, {"log2", "ops"}, {"log10", "ops"}, {"tan", "ops"}, {"asin", "ops"}, {"acos", "ops"},
      {"atan", "ops"}, {"sinh", "ops"}, {"cosh", "ops"}, {"logsigmoid", "ops"}, {"elu", "ops"}, {"selu", "ops"},
      {"mish", "ops"}, {"hardtanh", "ops"}, {"hardsigmoid", "ops"}, {"hardswish", "ops"},
      // ops/reduce.cpp
      {"sum", "ops"}, {"mean", "ops"}, {"prod", "ops"}, {"amax", "ops"}, {"amin", "ops"}, {"max", "ops"},
      {"min", "ops"}, {"norm", "ops"}, {"stddev", "ops"}, {"cumsum", "ops"},
      // ops/shape.cpp
      {"cat", "ops"}, {"split", "ops"}, {"unbind", "ops"}, {"index_select", "ops"}, {"gather", "ops"}, {"scatter_add", "ops"}, {"roll", "ops"},
      // ops/loss.cpp
      {"softmax", "ops"}, {"log_softmax", "ops"}, {"binary_cross_entropy_with_logits", "ops"}, {"binary_cross_entropy", "ops"},
      // ops/linalg.cpp
      {"matmul", "ops"}, {"linear", "ops"},
      // ops/conv.cpp
      {"conv2d", "ops"}, {"conv_transpose2d", "ops"}, {"upsample_conv2d", "ops"}, {"max_pool2d", "ops"}, {"avg_pool2d", "ops"},
      {"adaptive_avg_pool2d", "ops"}, {"upsample_nearest2d", "ops"}, {"upsample_bilinear2d", "ops"},
      // ops/norm.cpp
      {"layer_norm", "ops"}, {"rms_norm", "ops"}, {"group_norm", "ops"}, {"group_norm_silu", "ops"},
      // ops/fft.cpp
      {"rfft", "ops"}, {"irfft", "ops"}, {"fft", "ops"}, {"complex_mul", "ops"}, {"complex_div", "ops"},
      {"complex_conj", "ops"}, {"complex_abs", "ops"}, {"fft_conv", "ops"},
      // ops/attention.cpp, ops/rotary.cpp, ops/dropout.cpp
      {"scaled_dot_product_attention", "ops"}, {"apply_rotary", "ops"}, {"dropout", "ops"},
  });
  return kOps;
}

}  // namespace tg::ops
