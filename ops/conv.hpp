// Convolution family (NCHW, f32 and f64), with PyTorch semantics: conv2d, conv_transpose2d,
// max/average pooling, adaptive and global average pooling, nearest/bilinear upsampling.
//
// Every op takes a batch [N, C, H, W] or one unbatched image [C, H, W] (the result is then
// unbatched too), any layout (non-contiguous inputs are copied), and raises a tg::Error naming
// the op, the shapes and the offending dim for bad arguments. Results are bit-identical for any
// thread count. Kernels: ops/kernels/conv.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "core/tensor.hpp"

namespace tg::ops {

// (height, width) pairs of sizes, strides, paddings, dilations. One number stands for both, as in
// torch: `.padding = 1` is {1, 1} (as a plain std::array it would silently have been {1, 0}).
struct Size2 : std::array<std::int64_t, 2> {
  constexpr Size2() : std::array<std::int64_t, 2>{0, 0} {}
  constexpr Size2(std::int64_t both) : std::array<std::int64_t, 2>{both, both} {}  // NOLINT: implicit on purpose
  constexpr Size2(std::int64_t h, std::int64_t w) : std::array<std::int64_t, 2>{h, w} {}
};

struct Conv2dOptions {
  Size2 stride{1, 1};
  Size2 padding{0, 0};  // zeros on each side; may exceed the kernel size
  Size2 dilation{1, 1};
  std::int64_t groups = 1;  // must divide the input and output channels
};

// x [N, C, H, W], weight [O, C / groups, kh, kw], bias [O] or undefined -> [N, O, Ho, Wo] with
// Ho = (H + 2 padding - dilation (kh - 1) - 1) / stride + 1 (cross-correlation, as torch).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, const Conv2dOptions& options = {});

struct ConvTranspose2dOptions {
  Size2 stride{1, 1};
  Size2 padding{0, 0};
  Size2 output_padding{0, 0};  // extra rows/columns at the end; smaller than stride or dilation
  Size2 dilation{1, 1};
  std::int64_t groups = 1;
};

// The adjoint of conv2d with respect to its input (torch.nn.functional.conv_transpose2d):
// x [N, C, H, W], weight [C, O / groups, kh, kw], bias [O] or undefined -> [N, O, Ho, Wo] with
// Ho = (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1.
Tensor conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
                        const ConvTranspose2dOptions& options = {});

// Max over windows (padding never wins). stride {0, 0} means stride = kernel. padding must be at
// most half the dilated kernel. The gradient goes to the first maximum of each window (row-major).
// ceil_mode also keeps a last partial window that starts inside the input or its left padding
// (output size rounded up, as torch).
Tensor max_pool2d(const Tensor& x, Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0},
                  Size2 dilation = {1, 1}, bool ceil_mode = false);
// Mean over windows; padding (at most half the kernel) counts as zeros when count_include_pad,
// otherwise only the input elements of a window are averaged. stride {0, 0} means stride = kernel.
// With ceil_mode, a last partial window divides by its part inside input + padding (torch's rule).
Tensor avg_pool2d(const Tensor& x, Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0},
                  bool count_include_pad = true, bool ceil_mode = false);
// Averages over the windows [floor(i H / Ho), ceil((i + 1) H / Ho)) (torch's adaptive pooling).
Tensor adaptive_avg_pool2d(const Tensor& x, Size2 output_size);
// Mean over H and W: [N, C] (or [N, C, 1, 1] with keepdim). A composite of mean().
Tensor global_avg_pool2d(const Tensor& x, bool keepdim = false);

enum class UpsampleMode { nearest, bilinear };

struct UpsampleOptions {
  std::optional<Size2> size{};                  // output (H, W), or
  std::optional<std::array<double, 2>> scale{}; // scale factors: output = floor(input * scale)
  UpsampleMode mode = UpsampleMode::nearest;
  bool align_corners = false;                   // bilinear only
};

// torch.nn.functional.interpolate for 4-D inputs in modes "nearest" and "bilinear" (exactly one
// of size / scale; given scale factors are used for the source coordinates, as torch does
// without recompute_scale_factor).
Tensor upsample(const Tensor& x, const UpsampleOptions& options);
Tensor upsample(const Tensor& x, double scale, UpsampleMode mode = UpsampleMode::nearest, bool align_corners = false);

// conv2d(upsample(x, 2, nearest), weight, bias, {.padding = padding}) -- a UNet's up-sampling
// layer -- without forming the 4x larger upsampled image. Every output pixel of a k x k kernel
// over a nearest-upsampled image sees only (k + 1) / 2 or so distinct input rows and columns, so
// the layer is the stride-2 transposed convolution of x with the kernel flipped and summed over
// 2 x 2 boxes ([C, O, kh + 1, kw + 1]): 16 instead of 36 multiply-adds per output pixel for a 3x3
// kernel, forward and backward. Equal to the composition up to rounding (a different summation
// order). x [N, C, H, W] (or [C, H, W]), weight [O, C, kh, kw] (one group), bias [O] or undefined,
// 0 <= padding <= k - 1 -> [N, O, 2H + 2 padding - kh + 1, 2W + 2 padding - kw + 1].
Tensor upsample_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, Size2 padding = {0, 0});

}  // namespace tg::ops
