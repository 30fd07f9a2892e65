// Convolution family: frontends, argument checks and backward rules (kernels in
// ops/kernels/conv.cpp).
//
// conv2d and conv_transpose2d share three kernels: the convolution y = conv(x, w), its input
// adjoint and its weight gradient. The transposed convolution is the input adjoint of the
// convolution whose input has the transposed op's output shape, so
//   conv_transpose2d forward      = conv2d input adjoint
//   conv_transpose2d input grad   = conv2d forward (of the output gradient)
//   conv_transpose2d weight grad  = conv2d weight gradient with the roles of x and gy swapped.
#include "ops/conv.hpp"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "ops/common.hpp"
#include "ops/kernels/conv.hpp"
#include "ops/reduce.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

// x as a batch: [N, C, H, W] as is, an unbatched [C, H, W] with a leading 1 (see unbatch()).
struct Batched {
  Tensor x;
  bool unbatched;
};

Batched as_batch(const Tensor& x, const char* op) {
  check_defined(x, op, "x");
  TG_CHECK(x.dim() == 4 || x.dim() == 3, "{}: expected x of shape [N, C, H, W] (or unbatched [C, H, W]), got shape {} ({} dims)",
           op, x.shape(), x.dim());
  TG_CHECK(x.is_floating_point(), "{}: expected a floating-point x (f32 or f64), got {} (shape {})", op, x.dtype(), x.shape());
  return x.dim() == 3 ? Batched{x.unsqueeze(0), true} : Batched{x, false};
}

Tensor unbatch(const Tensor& y, bool unbatched) { return unbatched ? y.squeeze(0) : y; }

// Pooling needs non-empty planes and channels (an empty batch is fine), as in torch.
void check_planes(const char* op, const Tensor& x, const Tensor& x_in) {
  TG_CHECK(x.shape()[1] > 0 && x.shape()[2] > 0 && x.shape()[3] > 0,
           "{}: x of shape {} has an empty channel or spatial dim", op, x_in.shape());
}

// Window parameters (kernel, stride, padding, dilation, sizes) are bounded by 2^31 - 1, so the
// output-size arithmetic on them cannot overflow.
constexpr std::int64_t kMaxWindowParam = (std::int64_t{1} << 31) - 1;

void check_pair(const char* op, const char* what, Size2 v, std::int64_t min) {
  TG_CHECK(v[0] >= min && v[1] >= min, "{}: {} must be {}, got [{}, {}] (dim {})", op, what,
           min == 1 ? "positive" : "non-negative", v[0], v[1], v[0] >= min ? 3 : 2);
  TG_CHECK(v[0] <= kMaxWindowParam && v[1] <= kMaxWindowParam, "{}: {} must be at most 2^31 - 1, got [{}, {}]", op,
           what, v[0], v[1]);
}

void check_same_dtype(const char* op, const Tensor& x, const Tensor& t, const char* name) {
  TG_CHECK(t.dtype() == x.dtype(), "{}: x is {} but {} is {} (shapes {} and {})", op, x.dtype(), name, t.dtype(), x.shape(),
           t.shape());
}

// Output length of a sliding window; raises when the (padded) input is smaller than the window.
// The number of windows along `dim`. With ceil_mode (pooling) a last partial window counts too,
// as long as it starts inside the input or its left padding (torch's rule).
std::int64_t window_output(const char* op, const Tensor& x, int dim, std::int64_t padding, std::int64_t dilation,
                           std::int64_t kernel, std::int64_t stride, bool ceil_mode = false) {
  const std::int64_t size = x.shape()[dim];
  const std::int64_t padded = size + 2 * padding, span = dilation * (kernel - 1) + 1;
  // torch's rule: floor((padded - span) / stride) + 1 windows; with ceil_mode, rounded up, less a
  // last window that would start past the input and its left padding. So ceil_mode keeps one
  // partial window on an input narrower than the kernel (1 wide, kernel 2: one output).
  std::int64_t n = (padded - span + (ceil_mode ? stride - 1 : 0));
  n = (n >= 0 ? n / stride : -((-n + stride - 1) / stride)) + 1;  // floor division
  if (ceil_mode && n > 0 && (n - 1) * stride >= size + padding) --n;
  TG_CHECK(n > 0,
           "{}: input of shape {} is {} wide in dim {} ({} with padding {}), smaller than the {}kernel extent {}: the "
           "output would be empty",
           op, x.shape(), size, dim, padded, padding, dilation > 1 ? "dilated " : "", span);
  return n;
}

kernels::ConvGeometry conv_geometry(const Shape& x, std::int64_t o, std::int64_t kh, std::int64_t kw, std::int64_t ho,
                                    std::int64_t wo, Size2 stride, Size2 padding, Size2 dilation, std::int64_t groups) {
  return {x[0],      x[1],      x[2],       x[3],       o,           kh,          kw,    ho, wo,
          stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], groups};
}

Tensor contiguous_data(const Tensor& t) { return t.detach().contiguous(); }

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

void check_bias(const char* op, const Tensor& x, const Tensor& bias, std::int64_t channels) {
  if (!bias.defined()) return;
  TG_CHECK(bias.dim() == 1 && bias.shape()[0] == channels, "{}: bias must have shape [{}] (one per output channel), got {}",
           op, channels, bias.shape());
  check_same_dtype(op, x, bias, "bias");
}

// The three convolution kernels on tensors (all contiguous).
void run_forward(const kernels::ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  dispatch_float(x.dtype(), "conv2d", [&]<class T>() {
    kernels::conv2d_forward<T>(g, x.data<T>(), w.data<T>(), data_or_null<T>(bias), y.data<T>());
  });
}
void run_backward_input(const kernels::ConvGeometry& g, const Tensor& gy, const Tensor& w, const Tensor& gx,
                        const Tensor& bias = {}) {
  dispatch_float(gy.dtype(), "conv2d", [&]<class T>() {
    kernels::conv2d_backward_input<T>(g, gy.data<T>(), w.data<T>(), gx.data<T>(), data_or_null<T>(bias));
  });
}
void run_backward_weight(const kernels::ConvGeometry& g, const Tensor& x, const Tensor& gy, const Tensor& gw,
                         const Tensor& gb) {
  dispatch_float(x.dtype(), "conv2d", [&]<class T>() {
    kernels::conv2d_backward_weight<T>(g, x.data<T>(), gy.data<T>(), gw.data<T>(), gb.defined() ? gb.data<T>() : nullptr);
  });
}
Tensor channel_sums(const Tensor& y) {  // [N, C, H, W] -> [C]
  Tensor out = empty({y.shape()[1]}, y.dtype());
  dispatch_float(y.dtype(), "conv2d", [&]<class T>() {
    kernels::channel_sums<T>(y.shape()[0], y.shape()[1], y.shape()[2] * y.shape()[3], y.data<T>(), out.data<T>());
  });
  return out;
}

}  // namespace

// ---- conv2d ---------------------------------------------------------------------------------------------

Tensor conv2d(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Conv2dOptions& opt) {
  const char* op = "conv2d";
  const auto [x, unbatched] = as_batch(x_in, op);
  check_defined(weight, op, "weight");
  TG_CHECK(weight.dim() == 4, "conv2d: expected weight of shape [out_channels, in_channels / groups, kh, kw], got shape {}",
           weight.shape());
  check_same_dtype(op, x, weight, "weight");
  check_pair(op, "stride", opt.stride, 1);
  check_pair(op, "padding", opt.padding, 0);
  check_pair(op, "dilation", opt.dilation, 1);
  TG_CHECK(opt.groups >= 1, "conv2d: groups must be positive, got {}", opt.groups);
  const std::int64_t C = x.shape()[1], O = weight.shape()[0], kh = weight.shape()[2], kw = weight.shape()[3];
  TG_CHECK(kh >= 1 && kw >= 1, "conv2d: weight of shape {} has an empty kernel (dim {})", weight.shape(), kh >= 1 ? 3 : 2);
  TG_CHECK(C % opt.groups == 0, "conv2d: groups ({}) must divide the input channels of x (shape {}, dim 1 = {})", opt.groups,
           x.shape(), C);
  TG_CHECK(O % opt.groups == 0, "conv2d: groups ({}) must divide the output channels of weight (shape {}, dim 0 = {})",
           opt.groups, weight.shape(), O);
  TG_CHECK(weight.shape()[1] * opt.groups == C,
           "conv2d: weight of shape {} with groups {} expects {} input channels, but x of shape {} has {} (dim 1)",
           weight.shape(), opt.groups, weight.shape()[1] * opt.groups, x.shape(), C);
  check_bias(op, x, bias, O);
  const std::int64_t ho = window_output(op, x, 2, opt.padding[0], opt.dilation[0], kh, opt.stride[0]);
  const std::int64_t wo = window_output(op, x, 3, opt.padding[1], opt.dilation[1], kw, opt.stride[1]);
  const kernels::ConvGeometry g =
      conv_geometry(x.shape(), O, kh, kw, ho, wo, opt.stride, opt.padding, opt.dilation, opt.groups);

  const Tensor xc = contiguous_data(x), wc = contiguous_data(weight);
  const Tensor bc = bias.defined() ? contiguous_data(bias) : Tensor();
  Tensor y = empty({x.shape()[0], O, ho, wo}, x.dtype(), op);
  run_forward(g, xc, wc, bc, y);

  Tensors inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  // Save only what the backward can need: x for the weight gradient, w for the input gradient.
  const SavedTensor sx = weight.requires_grad() ? SavedTensor(xc) : SavedTensor();
  const SavedTensor sw = x.requires_grad() ? SavedTensor(wc) : SavedTensor();
  y = record("conv2d", inputs, y, [sx, sw, g, x_shape = x.shape(), w_shape = weight.shape(), has_bias = bias.defined()](const Tensor& gy_in) {
    const Tensor gy = gy_in.contiguous();
    Tensors grads(has_bias ? 3 : 2);
    if (input_needs_grad(0) && sw.defined()) {
      grads[0] = empty(x_shape, gy.dtype());
      run_backward_input(g, gy, sw.get(), grads[0]);
    }
    const bool want_b = has_bias && input_needs_grad(2);
    if (input_needs_grad(1) && sx.defined()) {
      grads[1] = empty(w_shape, gy.dtype());
      if (want_b) grads[2] = empty({w_shape[0]}, gy.dtype());
      run_backward_weight(g, sx.get(), gy, grads[1], want_b ? grads[2] : Tensor());
    } else if (want_b) {
      grads[2] = channel_sums(gy);
    }
    return grads;
  });
  return unbatch(y, unbatched);
}

// ---- conv_transpose2d -------------------------------------------------------------------------------------

Tensor conv_transpose2d(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const ConvTranspose2dOptions& opt) {
  const char* op = "conv_transpose2d";
  const auto [x, unbatched] = as_batch(x_in, op);
  check_defined(weight, op, "weight");
  TG_CHECK(weight.dim() == 4,
           "conv_transpose2d: expected weight of shape [in_channels, out_channels / groups, kh, kw], got shape {}",
           weight.shape());
  check_same_dtype(op, x, weight, "weight");
  check_pair(op, "stride", opt.stride, 1);
  check_pair(op, "padding", opt.padding, 0);
  check_pair(op, "output_padding", opt.output_padding, 0);
  check_pair(op, "dilation", opt.dilation, 1);
  TG_CHECK(opt.groups >= 1, "conv_transpose2d: groups must be positive, got {}", opt.groups);
  const std::int64_t C = x.shape()[1], kh = weight.shape()[2], kw = weight.shape()[3];
  TG_CHECK(kh >= 1 && kw >= 1, "conv_transpose2d: weight of shape {} has an empty kernel (dim {})", weight.shape(),
           kh >= 1 ? 3 : 2);
  TG_CHECK(C % opt.groups == 0, "conv_transpose2d: groups ({}) must divide the input channels of x (shape {}, dim 1 = {})",
           opt.groups, x.shape(), C);
  TG_CHECK(weight.shape()[0] == C,
           "conv_transpose2d: weight of shape {} expects {} input channels (dim 0), but x of shape {} has {} (dim 1)",
           weight.shape(), weight.shape()[0], x.shape(), C);
  const std::int64_t O = weight.shape()[1] * opt.groups;
  for (int d = 0; d < 2; ++d)
    TG_CHECK(opt.output_padding[d] < opt.stride[d] || opt.output_padding[d] < opt.dilation[d],
             "conv_transpose2d: output_padding [{}, {}] must be smaller than either stride [{}, {}] or dilation [{}, {}] "
             "(dim {})",
             opt.output_padding[0], opt.output_padding[1], opt.stride[0], opt.stride[1], opt.dilation[0], opt.dilation[1],
             d + 2);
  check_bias(op, x, bias, O);
  std::int64_t out[2];
  const std::int64_t k[2] = {kh, kw};
  for (int d = 0; d < 2; ++d) {
    // The parameters are < 2^31, but the input extent need not be: bound the product first.
    TG_CHECK(static_cast<double>(x.shape()[2 + d]) * static_cast<double>(opt.stride[d]) < 0x1p62,
             "conv_transpose2d: output size would overflow in dim {} for x of shape {} and stride {}", d + 2, x.shape(),
             opt.stride[d]);
    out[d] = (x.shape()[2 + d] - 1) * opt.stride[d] - 2 * opt.padding[d] + opt.dilation[d] * (k[d] - 1) +
             opt.output_padding[d] + 1;
    TG_CHECK(out[d] >= 1,
             "conv_transpose2d: output size would be {} in dim {} for x of shape {}, weight of shape {}, stride {}, "
             "padding {}, dilation {}, output_padding {}",
             out[d], d + 2, x.shape(), weight.shape(), opt.stride[d], opt.padding[d], opt.dilation[d], opt.output_padding[d]);
  }
  const std::int64_t N = x.shape()[0];
  // The convolution whose input adjoint this op is: input [N, O, out], output [N, C, H, W].
  const kernels::ConvGeometry g = conv_geometry(Shape{N, O, out[0], out[1]}, C, kh, kw, x.shape()[2], x.shape()[3],
                                                opt.stride, opt.padding, opt.dilation, opt.groups);

  const Tensor xc = contiguous_data(x), wc = contiguous_data(weight);
  Tensor y = empty({N, O, out[0], out[1]}, x.dtype(), op);
  run_backward_input(g, xc, wc, y, bias.defined() ? contiguous_data(bias) : Tensor());  // + bias per channel of y

  Tensors inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  const SavedTensor sx = weight.requires_grad() ? SavedTensor(xc) : SavedTensor();
  const SavedTensor sw = x.requires_grad() ? SavedTensor(wc) : SavedTensor();
  y = record(op, inputs, y, [sx, sw, g, x_shape = x.shape(), w_shape = weight.shape(), has_bias = bias.defined()](const Tensor& gy_in) {
    const Tensor gy = gy_in.contiguous();
    Tensors grads(has_bias ? 3 : 2);
    if (input_needs_grad(0) && sw.defined()) {
      grads[0] = empty(x_shape, gy.dtype());
      run_forward(g, gy, sw.get(), Tensor(), grads[0]);
    }
    if (input_needs_grad(1) && sx.defined()) {
      grads[1] = empty(w_shape, gy.dtype());
      run_backward_weight(g, gy, sx.get(), grads[1], Tensor());
    }
    if (has_bias && input_needs_grad(2)) grads[2] = channel_sums(gy);
    return grads;
  });
  return unbatch(y, unbatched);
}

// ---- pooling --------------------------------------------------------------------------------------------------

namespace {

struct PoolArgs {
  Batched b;
  Size2 stride;
};

PoolArgs pool_args(const char* op, const Tensor& x_in, Size2 kernel, Size2 stride, Size2 padding) {
  PoolArgs a{as_batch(x_in, op), stride};
  check_planes(op, a.b.x, x_in);
  check_pair(op, "kernel size", kernel, 1);
  if (stride[0] == 0 && stride[1] == 0) a.stride = kernel;
  check_pair(op, "stride", a.stride, 1);
  check_pair(op, "padding", padding, 0);
  return a;
}

// Average-pooling windows for both dims, kept alive by the backward closure.
struct AvgWindows {
  std::vector<std::int64_t> h0, h1, hdiv, w0, w1, wdiv;
  kernels::AvgPoolWindows view() const {
    return {h0.data(), h1.data(), hdiv.data(), w0.data(), w1.data(), wdiv.data()};
  }
};

Tensor avg_pool_impl(const char* op, const Tensor& x, std::int64_t ho, std::int64_t wo,
                     std::shared_ptr<const AvgWindows> win) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const Tensor xc = contiguous_data(x);
  Tensor y = empty({N, C, ho, wo}, x.dtype(), op);
  dispatch_float(x.dtype(), op, [&]<class T>() {
    kernels::avg_pool2d_forward<T>(N * C, H, W, ho, wo, win->view(), xc.data<T>(), y.data<T>());
  });
  return record(op, {x}, y, [win, x_shape = x.shape(), ho, wo, op](const Tensor& gy_in) {
    const Tensor gy = gy_in.contiguous();
    Tensor gx = empty(x_shape, gy.dtype());
    dispatch_float(gy.dtype(), op, [&]<class T>() {
      kernels::avg_pool2d_backward<T>(x_shape[0] * x_shape[1], x_shape[2], x_shape[3], ho, wo, win->view(), gy.data<T>(),
                                      gx.data<T>());
    });
    return Tensors{gx};
  });
}

}  // namespace

Tensor max_pool2d(const Tensor& x_in, Size2 kernel, Size2 stride_in, Size2 padding, Size2 dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  const auto [b, stride] = pool_args(op, x_in, kernel, stride_in, padding);
  const Tensor& x = b.x;
  check_pair(op, "dilation", dilation, 1);
  for (int d = 0; d < 2; ++d)
    TG_CHECK(padding[d] <= ((kernel[d] - 1) * dilation[d] + 1) / 2,
             "max_pool2d: padding [{}, {}] must be at most half of the dilated kernel extent [{}, {}] (dim {})", padding[0],
             padding[1], (kernel[0] - 1) * dilation[0] + 1, (kernel[1] - 1) * dilation[1] + 1, d + 2);
  const std::int64_t ho = window_output(op, x, 2, padding[0], dilation[0], kernel[0], stride[0], ceil_mode);
  const std::int64_t wo = window_output(op, x, 3, padding[1], dilation[1], kernel[1], stride[1], ceil_mode);
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  TG_CHECK(H * W <= std::numeric_limits<std::int32_t>::max(), "max_pool2d: planes of {}x{} elements are too large (shape {})",
           H, W, x.shape());
  const kernels::PoolGeometry g{N * C, H, W, ho, wo, kernel[0], kernel[1], stride[0], stride[1],
                                padding[0], padding[1], dilation[0], dilation[1]};
  const Tensor xc = contiguous_data(x);
  Tensor y = empty({N, C, ho, wo}, x.dtype(), op);
  Tensor idx = empty({N, C, ho, wo}, DType::i32, op);
  dispatch_float(x.dtype(), op, [&]<class T>() {
    kernels::max_pool2d_forward<T>(g, xc.data<T>(), y.data<T>(), idx.data<std::int32_t>());
  });
  y = record(op, {x}, y, [g, idx, x_shape = x.shape()](const Tensor& gy_in) {
    const Tensor gy = gy_in.contiguous();
    Tensor gx = empty(x_shape, gy.dtype());
    dispatch_float(gy.dtype(), "max_pool2d", [&]<class T>() {
      kernels::max_pool2d_backward<T>(g, gy.data<T>(), idx.data<std::int32_t>(), gx.data<T>());
    });
    return Tensors{gx};
  });
  return unbatch(y, b.unbatched);
}

Tensor avg_pool2d(const Tensor& x_in, Size2 kernel, Size2 stride_in, Size2 padding, bool count_include_pad, bool ceil_mode) {
  const char* op = "avg_pool2d";
  const auto [b, stride] = pool_args(op, x_in, kernel, stride_in, padding);
  const Tensor& x = b.x;
  for (int d = 0; d < 2; ++d)
    TG_CHECK(padding[d] <= kernel[d] / 2, "avg_pool2d: padding [{}, {}] must be at most half of the kernel size [{}, {}] (dim {})",
             padding[0], padding[1], kernel[0], kernel[1], d + 2);
  const std::int64_t ho = window_output(op, x, 2, padding[0], 1, kernel[0], stride[0], ceil_mode);
  const std::int64_t wo = window_output(op, x, 3, padding[1], 1, kernel[1], stride[1], ceil_mode);
  auto win = std::make_shared<AvgWindows>();
  auto fill = [&](std::int64_t size, std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p,
                  std::vector<std::int64_t>& lo, std::vector<std::int64_t>& hi, std::vector<std::int64_t>& div) {
    for (std::int64_t i = 0; i < n; ++i) {
      std::int64_t start = i * s - p, end = std::min(start + k, size + p);
      const std::int64_t pool = end - start;
      start = std::max<std::int64_t>(start, 0);
      end = std::min(end, size);
      lo.push_back(start);
      hi.push_back(end);
      div.push_back(count_include_pad ? pool : end - start);
    }
  };
  fill(x.shape()[2], ho, kernel[0], stride[0], padding[0], win->h0, win->h1, win->hdiv);
  fill(x.shape()[3], wo, kernel[1], stride[1], padding[1], win->w0, win->w1, win->wdiv);
  return unbatch(avg_pool_impl(op, x, ho, wo, win), b.unbatched);
}

Tensor adaptive_avg_pool2d(const Tensor& x_in, Size2 output_size) {
  const char* op = "adaptive_avg_pool2d";
  const auto [x, unbatched] = as_batch(x_in, op);
  check_planes(op, x, x_in);
  check_pair(op, "output size", output_size, 1);
  auto win = std::make_shared<AvgWindows>();
  auto fill = [](std::int64_t size, std::int64_t n, std::vector<std::int64_t>& lo, std::vector<std::int64_t>& hi,
                 std::vector<std::int64_t>& div) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t start = i * size / n, end = ((i + 1) * size + n - 1) / n;
      lo.push_back(start);
      hi.push_back(end);
      div.push_back(end - start);
    }
  };
  fill(x.shape()[2], output_size[0], win->h0, win->h1, win->hdiv);
  fill(x.shape()[3], output_size[1], win->w0, win->w1, win->wdiv);
  return unbatch(avg_pool_impl(op, x, output_size[0], output_size[1], win), unbatched);
}

Tensor global_avg_pool2d(const Tensor& x_in, bool keepdim) {
  const auto [x, unbatched] = as_batch(x_in, "global_avg_pool2d");
  TG_CHECK(x.shape()[2] * x.shape()[3] > 0, "global_avg_pool2d: x of shape {} has empty planes", x_in.shape());
  return unbatch(mean(x, {2, 3}, keepdim), unbatched);
}

// ---- upsampling -------------------------------------------------------------------------------------------------

namespace {

template <class T>
struct Tables {
  std::vector<std::int64_t> r0, r1;
  std::vector<T> l0, l1;
  kernels::InterpTable<T> view() const { return {r0.data(), r1.data(), l0.data(), l1.data()}; }
};

// torch's source-index rules (aten/src/ATen/native/UpSample.h), for one dim.
template <class T>
void build_table(Tables<T>& t, std::int64_t in, std::int64_t out, std::optional<double> scale, bool nearest,
                 bool align_corners) {
  for (std::int64_t d = 0; d < out; ++d) {
    std::int64_t i0 = d, i1 = d;
    T lambda1 = 0;
    if (nearest) {  // float arithmetic, as torch's nearest_idx for every dtype
      if (out == in) {
        i0 = d;
      } else if (out == 2 * in) {
        i0 = d >> 1;
      } else {
        const float s = scale ? static_cast<float>(1.0 / *scale) : static_cast<float>(in) / static_cast<float>(out);
        i0 = std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(d) * s)), in - 1);
      }
      i1 = i0;
    } else if (out != in) {
      T ratio;
      if (align_corners) {
        ratio = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
      } else {
        ratio = scale ? static_cast<T>(1.0 / *scale) : static_cast<T>(in) / static_cast<T>(out);
      }
      T real;
      if (align_corners) {
        real = ratio * static_cast<T>(d);
      } else {
        real = ratio * (static_cast<T>(d) + T(0.5)) - T(0.5);
        if (real < 0) real = 0;
      }
      i0 = std::min(static_cast<std::int64_t>(std::floor(real)), in - 1);
      lambda1 = std::min(std::max(real - static_cast<T>(i0), T(0)), T(1));
      i1 = i0 + (i0 < in - 1 ? 1 : 0);
    }
    t.r0.push_back(i0);
    t.r1.push_back(i1);
    t.l0.push_back(T(1) - lambda1);
    t.l1.push_back(lambda1);
  }
}

}  // namespace

Tensor upsample(const Tensor& x_in, const UpsampleOptions& opt) {
  const bool nearest = opt.mode == UpsampleMode::nearest;
  const char* op = nearest ? "upsample_nearest2d" : "upsample_bilinear2d";
  const auto [x, unbatched] = as_batch(x_in, "upsample");
  TG_CHECK(opt.size.has_value() != opt.scale.has_value(),
           "upsample: give either an output size or scale factors (exactly one), got {} for x of shape {}",
           opt.size ? "both" : "neither", x_in.shape());
  TG_CHECK(!(nearest && opt.align_corners), "upsample: align_corners only applies to bilinear mode, not nearest");
  const std::int64_t H = x.shape()[2], W = x.shape()[3];
  Size2 out{};
  if (opt.size) {
    out = *opt.size;
    TG_CHECK(out[0] >= 1 && out[1] >= 1, "upsample: output size must be positive, got [{}, {}] (dim {})", out[0], out[1],
             out[0] >= 1 ? 3 : 2);
  } else {
    const auto s = *opt.scale;
    for (int d = 0; d < 2; ++d) {
      TG_CHECK(std::isfinite(s[d]) && s[d] > 0, "upsample: scale factors must be positive and finite, got [{}, {}] (dim {})",
               s[0], s[1], d + 2);
      const double size = std::floor(static_cast<double>(x.shape()[2 + d]) * s[d]);
      TG_CHECK(size < 0x1p62, "upsample: output size would be {} in dim {} for x of shape {} and scale factor {}", size,
               d + 2, x.shape(), s[d]);
      out[d] = static_cast<std::int64_t>(size);
      TG_CHECK(out[d] >= 1, "upsample: output size would be {} in dim {} for x of shape {} and scale factor {}", out[d],
               d + 2, x.shape(), s[d]);
    }
  }
  TG_CHECK(H >= 1 && W >= 1, "upsample: x of shape {} has empty planes", x_in.shape());
  std::optional<double> sh, sw;
  if (opt.scale) {
    sh = (*opt.scale)[0];
    sw = (*opt.scale)[1];
  }
  const std::int64_t N = x.shape()[0], C = x.shape()[1];
  const Tensor xc = contiguous_data(x);
  Tensor y = empty({N, C, out[0], out[1]}, x.dtype(), op);
  y = dispatch_float(x.dtype(), op, [&]<class T>() {
    auto rows = std::make_shared<Tables<T>>(), cols = std::make_shared<Tables<T>>();
    build_table(*rows, H, out[0], sh, nearest, opt.align_corners);
    build_table(*cols, W, out[1], sw, nearest, opt.align_corners);
    kernels::upsample2d_forward<T>(N * C, H, W, out[0], out[1], rows->view(), cols->view(), nearest, xc.data<T>(),
                                   y.data<T>());
    return record(op, {x}, y, [rows, cols, nearest, x_shape = x.shape(), out](const Tensor& gy_in) {
      const Tensor gy = gy_in.contiguous();
      Tensor gx = empty(x_shape, gy.dtype());
      kernels::upsample2d_backward<T>(x_shape[0] * x_shape[1], x_shape[2], x_shape[3], out[0], out[1], rows->view(),
                                      cols->view(), nearest, gy.data<T>(), gx.data<T>());
      return Tensors{gx};
    });
  });
  return unbatch(y, unbatched);
}

Tensor upsample(const Tensor& x, double scale, UpsampleMode mode, bool align_corners) {
  UpsampleOptions opt;
  opt.scale = std::array<double, 2>{scale, scale};
  opt.mode = mode;
  opt.align_corners = align_corners;
  return upsample(x, opt);
}

// ---- upsample_conv2d --------------------------------------------------------------------------------------------

namespace {

// W'[c][o][u][v] = sum over e, f in {0, 1} of w[o][c][kh - 1 - u + e][kw - 1 - v + f] (terms
// outside the kernel omitted): with it, input row I feeds output row i = 2 I + u - (kh - 1 - p)
// exactly when the upsampled row under kernel row kh - 1 - u + e is row 2 I + e.
Tensor upsample_kernel(const Tensor& w) {
  const std::int64_t O = w.shape()[0], C = w.shape()[1], kh = w.shape()[2], kw = w.shape()[3];
  // Output channels per task: ~32K additions each.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 15) / (C * kh * kw * 4 + 1));
  // Where w[o][c][p][q] lands in W' with the box offsets e, f (the one map both passes use).
  const auto boxed = [=](std::int64_t o, std::int64_t c, std::int64_t p, std::int64_t q, std::int64_t e, std::int64_t f) {
    return ((c * O + o) * (kh + 1) + (kh - 1 - p + e)) * (kw + 1) + (kw - 1 - q + f);
  };
  const Tensor wc = contiguous_data(w);
  Tensor k = zeros({C, O, kh + 1, kw + 1}, w.dtype());
  dispatch_float(w.dtype(), "upsample_conv2d", [&]<class T>() {
    const T* src = wc.data<T>();
    T* dst = k.data<T>();
    parallel_for(O, grain, [&](std::int64_t o0, std::int64_t o1) {
      for (std::int64_t o = o0; o < o1; ++o)
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t p = 0; p < kh; ++p)
            for (std::int64_t q = 0; q < kw; ++q)
              for (std::int64_t e = 0; e < 2; ++e)
                for (std::int64_t f = 0; f < 2; ++f)
                  dst[boxed(o, c, p, q, e, f)] += src[((o * C + c) * kh + p) * kw + q];
    });
  });
  return record("upsample_conv2d", {w}, k, [O, C, kh, kw, grain, boxed](const Tensor& gk_in) {
    const Tensor gk = gk_in.contiguous();
    Tensor gw = empty({O, C, kh, kw}, gk.dtype());
    dispatch_float(gk.dtype(), "upsample_conv2d", [&]<class T>() {
      const T* src = gk.data<T>();
      T* dst = gw.data<T>();
      parallel_for(O, grain, [&](std::int64_t o0, std::int64_t o1) {
        for (std::int64_t o = o0; o < o1; ++o)
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t p = 0; p < kh; ++p)
              for (std::int64_t q = 0; q < kw; ++q) {
                T s = 0;
                for (std::int64_t e = 0; e < 2; ++e)
                  for (std::int64_t f = 0; f < 2; ++f)
                    s += src[boxed(o, c, p, q, e, f)];
                dst[((o * C + c) * kh + p) * kw + q] = s;
              }
      });
    });
    return Tensors{gw};
  });
}

}  // namespace

Tensor upsample_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 padding) {
  const char* op = "upsample_conv2d";
  check_defined(x, op, "x");
  check_defined(weight, op, "weight");
  TG_CHECK(x.dim() == 3 || x.dim() == 4, "upsample_conv2d: expected x of shape [N, C, H, W] or [C, H, W], got shape {}",
           x.shape());
  TG_CHECK(weight.dim() == 4, "upsample_conv2d: expected weight of shape [out_channels, in_channels, kh, kw], got shape {}",
           weight.shape());
  check_same_dtype(op, x, weight, "weight");
  TG_CHECK(x.shape()[x.dim() - 2] >= 1 && x.shape()[x.dim() - 1] >= 1, "upsample_conv2d: x of shape {} has an empty image",
           x.shape());
  const std::int64_t C = x.shape()[x.dim() - 3], kh = weight.shape()[2], kw = weight.shape()[3];
  TG_CHECK(weight.shape()[1] == C,
           "upsample_conv2d: weight of shape {} expects {} input channels (dim 1), but x of shape {} has {}",
           weight.shape(), weight.shape()[1], x.shape(), C);
  TG_CHECK(kh >= 1 && kw >= 1, "upsample_conv2d: weight of shape {} has an empty kernel", weight.shape());
  check_bias(op, x, bias, weight.shape()[0]);
  check_pair(op, "padding", padding, 0);
  TG_CHECK(padding[0] <= kh - 1 && padding[1] <= kw - 1,
           "upsample_conv2d: padding [{}, {}] must be at most the kernel size - 1 ([{}, {}]); use conv2d(upsample(x))",
           padding[0], padding[1], kh - 1, kw - 1);
  const std::int64_t H = x.shape()[x.dim() - 2], W = x.shape()[x.dim() - 1];
  TG_CHECK(2 * H + 2 * padding[0] >= kh && 2 * W + 2 * padding[1] >= kw,
           "upsample_conv2d: a {} x {} kernel with padding [{}, {}] leaves no output for x of shape {} (upsampled to {} x {})", kh,
           kw, padding[0], padding[1], x.shape(), 2 * H, 2 * W);
  ConvTranspose2dOptions opt;
  opt.stride = {2, 2};
  opt.padding = {kh - 1 - padding[0], kw - 1 - padding[1]};
  return conv_transpose2d(x, upsample_kernel(weight), bias, opt);
}

}  // namespace tg::ops
