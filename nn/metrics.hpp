// Evaluation metrics: accuracy, confusion matrix, Fréchet distance on features (FD_clf, with the
// noise floor of the real data), bits per dimension, sliced Wasserstein and energy distances.
#pragma once

#include <cstdint>

#include "core/random.hpp"
#include "core/tensor.hpp"

namespace tg::nn::metrics {

// Fraction of correct predictions: `scores` are logits [N, C] (argmax taken) or integer class ids
// [N]; labels are integer class ids [N]. N = 0 is an error (there is no fraction to report).
double accuracy(const Tensor& scores, const Tensor& labels);
// counts[true class, predicted class] over N samples (i64 [classes, classes]); integer ids [N].
Tensor confusion_matrix(const Tensor& predicted, const Tensor& labels, std::int64_t classes);

// Fréchet distance between Gaussians fitted to two feature sets a [N, D] and b [M, D]:
// |mu_a - mu_b|^2 + Tr Sa + Tr Sb - 2 Tr((Sa^1/2 Sb Sa^1/2)^1/2), in f64 with symmetric
// eigendecompositions only.
double frechet_distance(const Tensor& a, const Tensor& b);
// The FD between two disjoint halves of `real` (the first and the second half after a seeded
// shuffle): the value below which differences are noise.
double frechet_noise_floor(const Tensor& real, std::uint64_t seed = 0);

// Bits per dimension from the mean negative log-likelihood (nats per sample) of data quantised to
// `levels` levels on [-1, 1] with uniform dequantisation: (nll / dims - log(2 / levels)) / ln 2.
double bits_per_dim(double nll_nats, std::int64_t dims, std::int64_t levels = 256);

// Sliced Wasserstein-2 distance between point sets a and b [N, D] (equal N): the root mean over
// random unit directions of the 1-D W2^2 between the sorted projections.
double sliced_wasserstein(const Tensor& a, const Tensor& b, std::int64_t directions, Generator& gen);

// Energy distance between point sets a [N, D] and b [M, D] (Szekely; the V-statistic, as dcor's
// default): 2 mean|a_i - b_j| - mean|a_i - a_k| - mean|b_j - b_l| over all pairs, with Euclidean
// distances computed directly in f64 (no |x|^2 - 2xy + |y|^2 cancellation). Zero for equal sets,
// non-negative up to round-off. O((N + M)^2 D), threaded, the same bits for any thread count.
double energy_distance(const Tensor& a, const Tensor& b);

}  // namespace tg::nn::metrics
