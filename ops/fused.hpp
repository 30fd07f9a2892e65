// Fused in-place parameter updates (optimizers, EMA): one parallel pass over all parameters.
// Not differentiable; they write into their tensors (call them under NoGradGuard: a parameter
// that requires grad is refused while grad mode is on) and bump each tensor's version. All tensors must be contiguous and of one floating dtype per group.
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace tg::ops {

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;  // AdamW: p *= 1 - lr * wd;  Adam: g += wd * p
  std::int64_t step = 1;   // for bias correction (1-based)
};
// For each i: Adam/AdamW update of params[i] with grads[i] and moments exp_avg[i], exp_avg_sq[i],
// exactly as torch.optim.Adam/AdamW (non-amsgrad, non-foreach math).
void adam_step(const Tensors& params, const Tensors& grads, const Tensors& exp_avg, const Tensors& exp_avg_sq,
               const AdamHyper& h);

struct SGDHyper {
  double lr = 1e-2, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  bool first_step = false;  // the momentum buffer starts as the gradient
};
// torch.optim.SGD semantics; momentum buffers are ignored when momentum == 0.
void sgd_step(const Tensors& params, const Tensors& grads, const Tensors& momentum_buffers, const SGDHyper& h);

// shadow[i] = decay * shadow[i] + (1 - decay) * params[i]
void ema_update(const Tensors& shadow, const Tensors& params, double decay);

// Sum over all tensors of sum(t^2), accumulated in f64 in a fixed order (for gradient clipping).
double sum_of_squares(const Tensors& tensors);
// t *= s for every tensor.
void scale_(const Tensors& tensors, double s);

}  // namespace tg::ops
