#include "nn/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "ops/dense.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::nn::metrics {

double accuracy(const Tensor& scores, const Tensor& labels) {
  NoGradGuard no_grad;
  // Class ids are integers: float ids would be compared as floats (0.9 is not class 1), or truncated.
  TG_CHECK(is_integral(labels.dtype()) && (scores.dim() == 2 || is_integral(scores.dtype())),
           "accuracy: need integer labels and either scores [N, C] or integer class ids [N], got {} {} and labels {} {}",
           scores.dtype(), scores.shape(), labels.dtype(), labels.shape());
  const Tensor pred = scores.dim() == 2 ? ops::argmax(scores, 1) : scores;
  TG_CHECK(pred.shape() == labels.shape(), "accuracy: {} predictions for labels of shape {}", pred.shape(), labels.shape());
  TG_CHECK(labels.numel() > 0, "accuracy: no samples (labels of shape {})", labels.shape());
  return ops::mean(ops::eq(pred, labels)).item();
}

Tensor confusion_matrix(const Tensor& predicted, const Tensor& labels, std::int64_t classes) {
  TG_CHECK(classes >= 1, "confusion_matrix: need at least 1 class, got {}", classes);
  TG_CHECK(predicted.shape() == labels.shape() && predicted.dim() == 1,
           "confusion_matrix: expected 1-D predictions and labels of one shape, got {} and {}", predicted.shape(),
           labels.shape());
  // Float ids would be truncated to integers (0.9 counted as class 0).
  TG_CHECK(is_integral(predicted.dtype()) && is_integral(labels.dtype()),
           "confusion_matrix: need integer class ids, got predictions {} and labels {}", predicted.dtype(), labels.dtype());
  Tensor counts = zeros({classes, classes}, DType::i64);
  const auto p = predicted.to_vector<std::int64_t>(), l = labels.to_vector<std::int64_t>();
  std::int64_t* c = counts.data<std::int64_t>();
  for (std::size_t i = 0; i < p.size(); ++i) {
    TG_CHECK(p[i] >= 0 && p[i] < classes && l[i] >= 0 && l[i] < classes,
             "confusion_matrix: class {} / {} at {} outside 0..{}", l[i], p[i], i, classes - 1);
    ++c[l[i] * classes + p[i]];
  }
  return counts;
}

namespace {
// Mean [D] and covariance [D, D] (divisor N - 1) in f64.
std::pair<Tensor, Tensor> moments(const Tensor& x) {
  TG_CHECK(x.dim() == 2 && x.shape()[0] >= 2, "frechet_distance: need features [N >= 2, D], got {}", x.shape());
  const Tensor f = x.detach().to(DType::f64);
  const std::int64_t bad = x.numel() - ops::sum(ops::isfinite(f)).item<std::int64_t>();
  TG_CHECK(bad == 0, "frechet_distance: {} of the features ({}) are NaN or infinite (samples from a diverged model?)", bad,
           x.shape());
  const Tensor mu = ops::mean(f, {0});
  const Tensor c = f - mu;
  return {mu, ops::matmul(c.t(), c) / static_cast<double>(x.shape()[0] - 1)};
}
double trace(const Tensor& m) { return ops::sum(m.diagonal()).item(); }
}  // namespace

double frechet_distance(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  TG_CHECK(a.dim() == 2 && b.dim() == 2 && a.shape()[1] == b.shape()[1],
           "frechet_distance: feature sets [N, D] and [M, D] needed, got {} and {}", a.shape(), b.shape());
  auto [mu_a, s_a] = moments(a);
  auto [mu_b, s_b] = moments(b);
  const double mean_term = ops::sum(ops::square(mu_a - mu_b)).item();
  const Tensor root_a = ops::dense::sqrtm_psd(s_a);
  Tensor inner = ops::matmul(ops::matmul(root_a, s_b), root_a);
  inner = (inner + inner.t()) * 0.5;  // symmetric up to round-off
  const Tensor w = ops::dense::eigh(inner).values;
  double cross = 0;
  for (double v : w.to_vector<double>()) cross += std::sqrt(std::max(0.0, v));
  return std::max(0.0, mean_term + trace(s_a) + trace(s_b) - 2 * cross);
}

double frechet_noise_floor(const Tensor& real, std::uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  TG_CHECK(real.dim() == 2 && real.shape()[0] >= 4,
           "frechet_noise_floor: need features [N >= 4, D] (two halves of at least 2), got {}", real.shape());
  const std::int64_t n = real.shape()[0];
  const Tensor perm = randperm(n, gen);
  const Tensor shuffled = ops::index_select(real, 0, perm);
  return frechet_distance(shuffled.narrow(0, 0, n / 2), shuffled.narrow(0, n / 2, n - n / 2));
}

double bits_per_dim(double nll_nats, std::int64_t dims, std::int64_t levels) {
  TG_CHECK(dims > 0 && levels > 1, "bits_per_dim: need dims > 0 and levels > 1");
  const double log_bin = std::log(2.0 / static_cast<double>(levels));
  return (nll_nats / static_cast<double>(dims) - log_bin) / std::numbers::ln2;
}

double sliced_wasserstein(const Tensor& a, const Tensor& b, std::int64_t directions, Generator& gen) {
  NoGradGuard no_grad;
  TG_CHECK(a.dim() == 2 && a.shape() == b.shape(), "sliced_wasserstein: need point sets of one shape [N, D], got {} and {}",
           a.shape(), b.shape());
  TG_CHECK(directions > 0, "sliced_wasserstein: directions must be positive");
  TG_CHECK(a.shape()[0] > 0 && a.shape()[1] > 0, "sliced_wasserstein: need at least one point of at least one dim, got {}",
           a.shape());
  Tensor dirs = randn({a.shape()[1], directions}, DType::f64, gen);
  dirs = dirs / ops::norm(dirs, 2.0, {0}, true);
  const Tensor pa = ops::matmul(a.detach().to(DType::f64), dirs), pb = ops::matmul(b.detach().to(DType::f64), dirs);
  const std::int64_t n = a.shape()[0];
  double total = 0;
  for (std::int64_t d = 0; d < directions; ++d) {
    std::vector<double> x = pa.select(1, d).to_vector<double>(), y = pb.select(1, d).to_vector<double>();
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += (x[i] - y[i]) * (x[i] - y[i]);
    total += s / static_cast<double>(n);
  }
  return std::sqrt(total / static_cast<double>(directions));
}

namespace {
// The mean Euclidean distance between the rows of x [n, d] and y [m, d] (row-major f64): per-row
// sums in parallel, added in row order.
double mean_distance(const std::vector<double>& x, std::int64_t n, const std::vector<double>& y, std::int64_t m, std::int64_t d) {
  std::vector<double> row_sum(static_cast<std::size_t>(n));
  parallel_for(n, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, m * d)), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const double* xi = &x[static_cast<std::size_t>(i * d)];
      double s = 0;
      for (std::int64_t j = 0; j < m; ++j) {
        const double* yj = &y[static_cast<std::size_t>(j * d)];
        double sq = 0;
        for (std::int64_t k = 0; k < d; ++k) sq += (xi[k] - yj[k]) * (xi[k] - yj[k]);
        s += std::sqrt(sq);
      }
      row_sum[static_cast<std::size_t>(i)] = s;
    }
  });
  double total = 0;
  for (double s : row_sum) total += s;
  return total / (static_cast<double>(n) * static_cast<double>(m));
}
}  // namespace

double energy_distance(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  TG_CHECK(a.defined() && b.defined() && a.dim() == 2 && b.dim() == 2 && a.shape()[1] == b.shape()[1],
           "energy_distance: need point sets [N, D] and [M, D], got {} and {}", a.defined() ? a.shape() : Shape{},
           b.defined() ? b.shape() : Shape{});
  TG_CHECK(a.shape()[0] > 0 && b.shape()[0] > 0 && a.shape()[1] > 0,
           "energy_distance: need at least one point of at least one dim in each set, got {} and {}", a.shape(), b.shape());
  TG_CHECK(a.is_floating_point() && b.is_floating_point(), "energy_distance: need floating-point points, got {} and {}",
           a.dtype(), b.dtype());
  const std::int64_t n = a.shape()[0], m = b.shape()[0], d = a.shape()[1];
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double big = 0;
  for (const auto* v : {&x, &y})
    for (double e : *v) {
      TG_CHECK(std::isfinite(e), "energy_distance: the points hold a non-finite value {}", e);
      big = std::max(big, std::fabs(e));
    }
  // Distances scale with the points: compute on points scaled by a power of two (exact) to
  // [-2, 2], where squared differences cannot overflow, and scale the result back.
  const int e = big > 0 ? std::ilogb(big) : 0;
  for (auto* v : {&x, &y})
    for (double& c : *v) c = std::ldexp(c, -e);
  return std::ldexp(2 * mean_distance(x, n, y, m, d) - mean_distance(x, n, x, n, d) - mean_distance(y, m, y, m, d), e);
}

}  // namespace tg::nn::metrics
