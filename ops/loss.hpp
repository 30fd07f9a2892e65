// Softmax family and losses, numerically stable for extreme inputs.
#pragma once

#include "core/tensor.hpp"

namespace tg::ops {

Tensor softmax(const Tensor& x, std::int64_t axis = -1);
Tensor log_softmax(const Tensor& x, std::int64_t axis = -1);

enum class Reduction { mean, sum, none };

struct CrossEntropyOptions {
  std::int64_t ignore_index = -100;  // targets equal to this contribute nothing (and are not counted)
  double label_smoothing = 0.0;      // mixes the one-hot target with the uniform distribution
  Reduction reduction = Reduction::mean;
};
// logits [N, C] (or [N, C, d1, ...]) and integer class targets [N] (or [N, d1, ...]).
// The mean is over the targets that are not ignored.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& options = {});
// -sum(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), computed as max(x, 0) - x y + log(1 + e^-|x|).
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                        Reduction reduction = Reduction::mean);
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);

}  // namespace tg::ops
