// Softmax family and losses, numerically stable for extreme inputs.
#pragma once

#include "core/tensor.hpp"

namespace tg::ops {

Tensor softmax(const Tensor& x, std::int64_t axis = -1);
Tensor log_softmax(const Tensor& x, std::int64_t axis = -1);

enum class Reduction { mean, sum, none };

struct CrossEntropyOptions {
  Tensor weight;                     // optional [C]: a weight per class (torch's `weight`)
  std::int64_t ignore_index = -100;  // targets equal to this contribute nothing (and are not counted)
  double label_smoothing = 0.0;      // mixes the one-hot target with the uniform distribution
  Reduction reduction = Reduction::mean;
};
// logits [N, C] (or [N, C, d1, ...], or [C] with a 0-d target), as torch.nn.functional.cross_entropy:
// - class targets: integer [N] (or [N, d1, ...]); loss_i = -w[t_i] log p_i[t_i] (w = 1 without a
//   weight), and with label smoothing e: (1 - e) loss_i + e/C sum_c -w_c log p_ic. The mean divides
//   by the sum of w[t_i] over the targets that are not ignored (their count without a weight; 0/0 =
//   NaN when all are ignored, as torch).
// - probability targets: a floating tensor of the logits' shape; loss_i = -sum_c w_c q_ic log p_ic
//   with q = (1 - e) target + e/C. The mean divides by the number of samples (N d1 ...);
//   ignore_index does not apply.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& options = {});
// The negative log-likelihood of log-probabilities [N, C, ...] (torch.nn.functional.nll_loss): the
// class-target cross_entropy without the log_softmax. options.label_smoothing must be 0.
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, const CrossEntropyOptions& options = {});

struct BCEWithLogitsOptions {
  Tensor weight;      // optional, broadcast to the logits' shape: rescales each element's loss
  Tensor pos_weight;  // optional, broadcast to the logits' shape (e.g. [C] for [N, C]): weight of the positive term
  Reduction reduction = Reduction::mean;
};
// -(p y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))) times weight, p = pos_weight (1 without it);
// computed as (1 - y) x + (1 + (p - 1) y) softplus(-x), without overflow. Without pos_weight, as
// max(x, 0) - x y + log(1 + e^-|x|). Targets in [0, 1] (not checked, as torch).
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                        Reduction reduction = Reduction::mean);
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, const BCEWithLogitsOptions& options);
// -weight (y log p + (1 - y) log(1 - p)) on probabilities p in [0, 1] (checked), each log clamped to
// >= -100 and the gradient's denominator p (1 - p) to >= 1e-12 (in f32), as torch. Prefer the logits form.
Tensor binary_cross_entropy(const Tensor& probs, const Tensor& target, const Tensor& weight = {},
                            Reduction reduction = Reduction::mean);
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
// |d| < beta: 0.5 d^2 / beta, else |d| - 0.5 beta (d = input - target; beta = 0 is l1_loss).
Tensor smooth_l1_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean,
                      double beta = 1.0);
// |d| <= delta: 0.5 d^2, else delta (|d| - 0.5 delta); delta > 0 (torch's huber_loss).
Tensor huber_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean, double delta = 1.0);
// Kullback-Leibler divergence with input = log q (torch.nn.functional.kl_div): elementwise
// target (log target - input), or e^target (target - input) with log_target; 0 where target = 0
// (e^target = 0), even where input = -inf (torch: NaN).
// batchmean divides the sum by the first dim (the mathematically right KL per sample).
enum class KLReduction { mean, sum, none, batchmean };
Tensor kl_div(const Tensor& input, const Tensor& target, KLReduction reduction = KLReduction::mean,
              bool log_target = false);

}  // namespace tg::ops
