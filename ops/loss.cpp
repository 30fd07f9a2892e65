// Softmax family and losses: frontends and backward rules (kernels in ops/kernels/softmax.cpp).
#include "ops/loss.hpp"

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// operands of xsimd's exp/log1p) in some builds (-O1 sanitizer builds); not about this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/kernels/elementwise.hpp"
#include "ops/kernels/softmax.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::ops {

using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

// Runs the row kernel with `axis` moved last; returns y in x's layout.
Tensor softmax_impl(const char* op, const Tensor& x, std::int64_t axis, bool log) {
  check_defined(x, op, "x");
  TG_CHECK(x.is_floating_point(), "{}: expected a floating-point tensor, got {} (shape {})", op, x.dtype(), x.shape());
  if (x.dim() == 0) return softmax_impl(op, x.reshape({1}), 0, log).reshape({});
  const int a = normalize_axis(axis, x.dim(), op, x.shape());
  const int last = x.dim() - 1;
  const Tensor xt = x.detach().transpose(a, last).contiguous();  // rows along `axis`
  const std::int64_t n = x.shape()[a];
  const std::int64_t rows = n ? xt.numel() / n : 0;
  Tensor yt = empty(xt.shape(), x.dtype());
  if (rows > 0 && n > 0) kernels::softmax_forward(xt.reshape({rows, n}), yt.reshape({rows, n}), log);
  Tensor y = yt.transpose(a, last);
  return record(op, {x}, y, [sy = SavedTensor(yt), a, last, rows, n, log](const Tensor& g) {
    const Tensor yv = sy.get();
    const Tensor gt = g.transpose(a, last).contiguous();
    Tensor gx = empty(yv.shape(), yv.dtype());
    if (rows > 0 && n > 0) kernels::softmax_backward(yv.reshape({rows, n}), gt.reshape({rows, n}), gx.reshape({rows, n}), log);
    return Tensors{gx.transpose(a, last)};
  });
}

Tensor reduce(const Tensor& loss, Reduction r) {
  switch (r) {
    case Reduction::mean: return mean(loss);
    case Reduction::sum: return sum(loss);
    case Reduction::none: return loss;
  }
  return loss;
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(a, op, "input");
  check_defined(b, op, "target");
  TG_CHECK(a.shape() == b.shape(), "{}: input shape {} and target shape {} differ", op, a.shape(), b.shape());
}

}  // namespace

Tensor softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("softmax", x, axis, false); }
Tensor log_softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("log_softmax", x, axis, true); }

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opt) {
  check_defined(logits, "cross_entropy", "logits");
  check_defined(target, "cross_entropy", "target");
  // An unbatched sample, as torch takes it: logits [C] and a 0-d target are a batch of one.
  if (logits.dim() == 1 && target.dim() == 0) {
    const Tensor loss = cross_entropy(logits.unsqueeze(0), target.unsqueeze(0), opt);
    return opt.reduction == Reduction::none ? loss.squeeze(0) : loss;
  }
  TG_CHECK(logits.dim() >= 2, "cross_entropy: logits must be [N, C, ...] (or [C] with a 0-d target), got shape {}",
           logits.shape());
  TG_CHECK(logits.is_floating_point(), "cross_entropy: expected floating-point logits, got {} (shape {})",
           logits.dtype(), logits.shape());
  TG_CHECK(target.dtype() == DType::i64 || target.dtype() == DType::i32,
           "cross_entropy: target must hold integer class indices (i64 or i32), got {}", target.dtype());
  Shape want = logits.shape();
  const std::int64_t C = want[1];
  want.erase(1);
  TG_CHECK(target.shape() == want, "cross_entropy: target shape {} must be logits shape {} without the class dim ({})",
           target.shape(), logits.shape(), want);
  TG_CHECK(opt.label_smoothing >= 0 && opt.label_smoothing <= 1,
           "cross_entropy: label_smoothing must be in [0, 1], got {}", opt.label_smoothing);
  // Validate targets and build the mask of counted positions (one pass over the indices).
  const Tensor t = target.to(DType::i64).contiguous();
  Tensor valid = empty(t.shape(), DType::boolean);
  Tensor safe = empty(t.shape(), DType::i64);  // ignored positions gather class 0 (then masked)
  {
    const std::int64_t* tp = t.data<std::int64_t>();
    bool* vp = valid.data<bool>();
    std::int64_t* sp = safe.data<std::int64_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      vp[i] = tp[i] != opt.ignore_index;
      TG_CHECK(!vp[i] || (tp[i] >= 0 && tp[i] < C),
               "cross_entropy: target {} at flat position {} is out of range for {} classes", tp[i], i, C);
      sp[i] = vp[i] ? tp[i] : 0;
    }
  }
  const Tensor logp = log_softmax(logits, 1);                    // [N, C, ...]
  const Tensor picked = gather(logp, 1, safe.unsqueeze(1)).squeeze(1);  // [N, ...]
  Tensor loss = neg(picked);
  if (opt.label_smoothing > 0) {  // (1 - e) * nll + e * mean over classes of -log p
    const Tensor smooth = neg(mean(logp, {1}));
    loss = add(mul(loss, 1.0 - opt.label_smoothing), mul(smooth, opt.label_smoothing));
  }
  loss = where(valid, loss, 0.0);
  if (opt.reduction == Reduction::none) return loss;
  if (opt.reduction == Reduction::sum) return sum(loss);
  const double count = static_cast<double>(sum(valid).item<std::int64_t>());
  return div(sum(loss), count);  // 0/0 = NaN when every target is ignored, as in PyTorch
}

Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, Reduction reduction) {
  check_same_shape("binary_cross_entropy_with_logits", logits, target);
  TG_CHECK(logits.is_floating_point(), "binary_cross_entropy_with_logits: expected floating-point logits, got {}",
           logits.dtype());
  const Tensor y = target.to(logits.dtype());
  Tensor loss = dispatch_float(logits.dtype(), "binary_cross_entropy_with_logits", [&]<class T>() {
    Tensor out = empty(logits.shape(), logits.dtype());
    kernels::map<T>(out, [](auto x, auto t) {
      using Bt = decltype(x);
      return xsimd::max(x, Bt(0)) - x * t + xsimd::log1p(xsimd::exp(-xsimd::abs(x)));
    }, logits, y);
    return out;
  });
  loss = record("binary_cross_entropy_with_logits", {logits, y}, loss,
                [sx = SavedTensor(logits), sy = SavedTensor(y)](const Tensor& g) {
                  const Tensor x = sx.get(), t = sy.get();
                  Tensor gx, gt;
                  if (autograd::input_needs_grad(0)) gx = mul(g, sub(sigmoid(x), t));  // exact at x = 0 too
                  if (autograd::input_needs_grad(1)) gt = mul(g, neg(x));
                  return Tensors{gx, gt};
                });
  return reduce(loss, reduction);
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  check_same_shape("mse_loss", input, target);
  TG_CHECK(input.is_floating_point(), "mse_loss: expected a floating-point input, got {} (shape {})", input.dtype(),
           input.shape());
  return reduce(square(sub(input, target)), reduction);
}

Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  check_same_shape("l1_loss", input, target);
  TG_CHECK(input.is_floating_point(), "l1_loss: expected a floating-point input, got {} (shape {})", input.dtype(),
           input.shape());
  return reduce(abs(sub(input, target)), reduction);
}

}  // namespace tg::ops
