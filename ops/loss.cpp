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

// Whether a tensor of shape `from` broadcasts to `to` (NumPy rules, without changing `to`).
bool broadcasts_to(const Shape& from, const Shape& to) {
  if (from.size() > to.size()) return false;
  for (int d = 1; d <= from.size(); ++d)
    if (from[from.size() - d] != 1 && from[from.size() - d] != to[to.size() - d]) return false;
  return true;
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(a, op, "input");
  check_defined(b, op, "target");
  TG_CHECK(a.shape() == b.shape(), "{}: input shape {} and target shape {} differ", op, a.shape(), b.shape());
}

}  // namespace

Tensor softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("softmax", x, axis, false); }
Tensor log_softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("log_softmax", x, axis, true); }

namespace {
// The class weights as a [C] tensor of `like`'s dtype (ones without a weight), checked.
Tensor class_weights(const char* op, const CrossEntropyOptions& opt, std::int64_t C, const Tensor& like) {
  if (!opt.weight.defined()) return ones({C}, like.dtype());
  TG_CHECK(opt.weight.dim() == 1 && opt.weight.shape()[0] == C, "{}: weight must be [{}] (one per class), got {}", op, C,
           opt.weight.shape());
  TG_CHECK(opt.weight.is_floating_point(), "{}: weight must be floating-point, got {}", op, opt.weight.dtype());
  // As torch: the class weights get no gradient (the weighted mean's denominator would need one).
  TG_CHECK(!(grad_enabled() && opt.weight.requires_grad()),
           "{}: the class weight is not differentiable, but it requires grad; pass weight.detach()", op);
  return opt.weight.to(like.dtype());
}

// w [C] shaped to broadcast along dim 1 of an [N, C, d1, ...] tensor: [1, C, 1, ...].
Tensor along_class_dim(const Tensor& w, int dims) {
  Shape s = Shape::filled(dims, 1);
  s[1] = w.shape()[0];
  return w.reshape(s);
}

// The class-target loss on log-probabilities logp [N, C, ...] (the one behind cross_entropy and
// nll_loss): -w[t] logp[t], plus the label-smoothing term, reduced as torch does.
Tensor class_target_loss(const char* op, const Tensor& logp, const Tensor& target, const CrossEntropyOptions& opt) {
  Shape want = logp.shape();
  const std::int64_t C = want[1];
  want.erase(1);
  TG_CHECK(target.shape() == want, "{}: target shape {} must be the input shape {} without the class dim ({})", op,
           target.shape(), logp.shape(), want);
  const Tensor w = class_weights(op, opt, C, logp);  // [C]
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
      TG_CHECK(!vp[i] || (tp[i] >= 0 && tp[i] < C), "{}: target {} at flat position {} is out of range for {} classes", op,
               tp[i], i, C);
      sp[i] = vp[i] ? tp[i] : 0;
    }
  }
  const Tensor picked = gather(logp, 1, safe.unsqueeze(1)).squeeze(1);        // [N, ...]
  const Tensor wt = where(valid, index_select(w, 0, safe.reshape({-1})).reshape(safe.shape()), 0.0);  // [N, ...]
  Tensor loss = neg(mul(picked, wt));
  if (opt.label_smoothing > 0) {  // (1 - e) nll + e/C sum_c -w_c logp_c
    const Tensor smooth = neg(sum(mul(logp, along_class_dim(w, logp.dim())), {1}));  // [N, ...]
    loss = add(mul(loss, 1.0 - opt.label_smoothing), mul(smooth, opt.label_smoothing / static_cast<double>(C)));
  }
  loss = where(valid, loss, 0.0);
  if (opt.reduction == Reduction::none) return loss;
  if (opt.reduction == Reduction::sum) return sum(loss);
  return div(sum(loss), sum(wt).detach());  // 0/0 = NaN when every target is ignored, as in PyTorch
}

void check_logits(const char* op, const char* what, const Tensor& logits, const CrossEntropyOptions& opt) {
  TG_CHECK(logits.dim() >= 2, "{}: {} must be [N, C, ...] (or [C] with a 0-d target), got shape {}", op, what, logits.shape());
  TG_CHECK(logits.is_floating_point(), "{}: expected floating-point {}, got {} (shape {})", op, what, logits.dtype(),
           logits.shape());
  TG_CHECK(opt.label_smoothing >= 0 && opt.label_smoothing <= 1, "{}: label_smoothing must be in [0, 1], got {}", op,
           opt.label_smoothing);
}
}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opt) {
  check_defined(logits, "cross_entropy", "logits");
  check_defined(target, "cross_entropy", "target");
  // An unbatched sample, as torch takes it: logits [C] and a 0-d target (or a [C] distribution) are a batch of one.
  if (logits.dim() == 1 && (target.dim() == 0 || (target.dim() == 1 && target.is_floating_point()))) {
    const Tensor loss = cross_entropy(logits.unsqueeze(0), target.unsqueeze(0), opt);
    return opt.reduction == Reduction::none ? loss.squeeze(0) : loss;
  }
  check_logits("cross_entropy", "logits", logits, opt);
  const Tensor logp = log_softmax(logits, 1);  // [N, C, ...]
  if (!target.is_floating_point()) {
    TG_CHECK(target.dtype() == DType::i64 || target.dtype() == DType::i32,
             "cross_entropy: target must hold integer class indices (i64 or i32) or class probabilities (floating, "
             "the logits' shape), got {}",
             target.dtype());
    return class_target_loss("cross_entropy", logp, target, opt);
  }
  // Probability targets.
  TG_CHECK(target.shape() == logits.shape(),
           "cross_entropy: probability targets must have the logits' shape {}, got {} (class indices must be integers)",
           logits.shape(), target.shape());
  const std::int64_t C = logits.shape()[1];
  const Tensor w = class_weights("cross_entropy", opt, C, logits);  // [C]
  Tensor q = target.to(logits.dtype());                              // [N, C, ...]
  if (opt.label_smoothing > 0) q = add(mul(q, 1.0 - opt.label_smoothing), opt.label_smoothing / static_cast<double>(C));
  const Tensor loss = neg(sum(mul(mul(logp, q), along_class_dim(w, logits.dim())), {1}));  // [N, ...]
  if (opt.reduction == Reduction::none) return loss;
  if (opt.reduction == Reduction::sum) return sum(loss);
  return mean(loss);
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& target, const CrossEntropyOptions& opt) {
  check_defined(log_probs, "nll_loss", "input");
  check_defined(target, "nll_loss", "target");
  if (log_probs.dim() == 1 && target.dim() == 0) {
    const Tensor loss = nll_loss(log_probs.unsqueeze(0), target.unsqueeze(0), opt);
    return opt.reduction == Reduction::none ? loss.squeeze(0) : loss;
  }
  check_logits("nll_loss", "log-probabilities", log_probs, opt);
  TG_CHECK(opt.label_smoothing == 0, "nll_loss: label_smoothing is cross_entropy's option, got {}", opt.label_smoothing);
  TG_CHECK(target.dtype() == DType::i64 || target.dtype() == DType::i32,
           "nll_loss: target must hold integer class indices (i64 or i32), got {}", target.dtype());
  return class_target_loss("nll_loss", log_probs, target, opt);
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

Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, const BCEWithLogitsOptions& o) {
  check_same_shape("binary_cross_entropy_with_logits", logits, target);
  auto fits = [&](const Tensor& t, const char* name) {
    if (!t.defined()) return;
    TG_CHECK(t.is_floating_point() && broadcasts_to(t.shape(), logits.shape()),
             "binary_cross_entropy_with_logits: {} ({} {}) must be floating-point and broadcast to the logits' shape {}",
             name, t.dtype(), t.shape(), logits.shape());
  };
  fits(o.weight, "weight");
  fits(o.pos_weight, "pos_weight");
  Tensor loss;
  if (!o.pos_weight.defined()) {
    loss = binary_cross_entropy_with_logits(logits, target, Reduction::none);
  } else {  // (1 - y) x + (1 + (p - 1) y) softplus(-x), softplus(-x) = -logsigmoid(x)
    const Tensor y = target.to(logits.dtype());
    const Tensor lw = add(mul(sub(o.pos_weight.to(logits.dtype()), 1.0), y), 1.0);
    loss = sub(mul(sub(1.0, y), logits), mul(lw, logsigmoid(logits)));
  }
  if (o.weight.defined()) loss = mul(loss, o.weight.to(logits.dtype()));
  return reduce(loss, o.reduction);
}

Tensor binary_cross_entropy(const Tensor& probs, const Tensor& target, const Tensor& weight, Reduction reduction) {
  const char* op = "binary_cross_entropy";
  check_same_shape(op, probs, target);
  TG_CHECK(probs.is_floating_point(), "{}: expected floating-point probabilities, got {} (shape {})", op, probs.dtype(),
           probs.shape());
  if (probs.numel() > 0) {
    const Tensor outside = logical_not(logical_and(ge(probs, 0.0), le(probs, 1.0)));
    TG_CHECK(sum(outside).item<std::int64_t>() == 0,
             "{}: every probability must be in [0, 1] (input of shape {}; use binary_cross_entropy_with_logits on logits)",
             op, probs.shape());
  }
  const Tensor y = target.to(probs.dtype());
  Tensor loss = dispatch_float(probs.dtype(), op, [&]<class T>() {
    Tensor out = empty(probs.shape(), probs.dtype());
    kernels::map<T>(out, [](auto p, auto t) {
      using B = decltype(p);
      const B log_p = xsimd::max(kernels::log_of(p), B(-100)), log_q = xsimd::max(xsimd::log1p(-p), B(-100));
      return -(t * log_p + (B(1) - t) * log_q);
    }, probs, y);
    return out;
  });
  loss = record(op, {probs, y}, loss, [sp = SavedTensor(probs), sy = SavedTensor(y)](const Tensor& g) {
    const Tensor p = sp.get(), t = sy.get();
    Tensor gp, gt;
    if (autograd::input_needs_grad(0))  // (p - y) / max(p (1 - p), eps), eps = 1e-12 rounded to f32, as torch
      gp = dispatch_float(p.dtype(), "binary_cross_entropy", [&]<class T>() {
        Tensor out = empty(p.shape(), p.dtype());
        kernels::map<T>(out, [](auto gg, auto pv, auto tv) {
          using B = decltype(pv);
          return gg * (pv - tv) / xsimd::max((B(1) - pv) * pv, B(T(1e-12f)));
        }, g, p, t);
        return out;
      });
    if (autograd::input_needs_grad(1)) gt = mul(g, sub(log1p(neg(p)), log(p)));  // unclamped, as torch
    return Tensors{gp, gt};
  });
  if (weight.defined()) {
    TG_CHECK(weight.is_floating_point() && broadcasts_to(weight.shape(), probs.shape()),
             "{}: weight ({} {}) must be floating-point and broadcast to the input shape {}", op, weight.dtype(),
             weight.shape(), probs.shape());
    loss = mul(loss, weight.to(probs.dtype()));
  }
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

Tensor smooth_l1_loss(const Tensor& input, const Tensor& target, Reduction reduction, double beta) {
  check_same_shape("smooth_l1_loss", input, target);
  TG_CHECK(beta >= 0 && std::isfinite(beta), "smooth_l1_loss: beta must be finite and >= 0, got {}", beta);
  TG_CHECK(input.is_floating_point(), "smooth_l1_loss: expected a floating-point input, got {} (shape {})", input.dtype(),
           input.shape());
  const Tensor d = abs(sub(input, target));
  if (beta == 0) return reduce(d, reduction);  // l1 (torch: the quadratic piece vanishes)
  return reduce(where(lt(d, beta), mul(square(d), 0.5 / beta), sub(d, 0.5 * beta)), reduction);
}

Tensor huber_loss(const Tensor& input, const Tensor& target, Reduction reduction, double delta) {
  check_same_shape("huber_loss", input, target);
  TG_CHECK(delta > 0 && std::isfinite(delta), "huber_loss: delta must be finite and > 0, got {}", delta);
  TG_CHECK(input.is_floating_point(), "huber_loss: expected a floating-point input, got {} (shape {})", input.dtype(),
           input.shape());
  const Tensor d = abs(sub(input, target));
  return reduce(where(le(d, delta), mul(square(d), 0.5), mul(sub(d, 0.5 * delta), delta)), reduction);
}

Tensor kl_div(const Tensor& input, const Tensor& target, KLReduction reduction, bool log_target) {
  check_same_shape("kl_div", input, target);
  TG_CHECK(input.is_floating_point(), "kl_div: expected a floating-point input (log-probabilities), got {} (shape {})",
           input.dtype(), input.shape());
  const Tensor t = target.to(input.dtype());
  Tensor loss;
  // A zero target probability contributes 0 whatever the input, -inf included (0 log 0 = 0 and
  // 0 (-inf) = 0 here; torch gives NaN for the latter), with zero gradients.
  if (log_target) {
    const Tensor p = exp(t);
    loss = where(gt(p, 0.0), mul(p, sub(t, input)), 0.0);
  } else {  // t log t - t input (the t log t term's gradient at t = 0 is taken as 0)
    const Tensor positive = gt(t, 0.0);
    const Tensor t_log_t = where(positive, mul(t, log(where(positive, t, 1.0))), where(eq(t, 0.0), zeros_like(t), NAN));
    loss = sub(t_log_t, where(ne(t, 0.0), mul(t, input), 0.0));
  }
  switch (reduction) {
    case KLReduction::none: return loss;
    case KLReduction::sum: return sum(loss);
    case KLReduction::mean: return mean(loss);
    case KLReduction::batchmean:
      return div(sum(loss), input.dim() > 0 ? static_cast<double>(input.shape()[0]) : 1.0);
  }
  return loss;
}

}  // namespace tg::ops
