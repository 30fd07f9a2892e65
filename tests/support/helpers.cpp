#include "tests/support/helpers.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "core/random.hpp"

namespace tg::test {

Tensor randn(const Shape& shape, DType dtype, std::uint64_t seed) {
  Generator gen(seed);
  return tg::randn(shape, DType::f64, gen).to(dtype);
}

Tensor uniform(const Shape& shape, double low, double high, DType dtype, std::uint64_t seed) {
  Generator gen(seed);
  return tg::uniform(shape, low, high, DType::f64, gen).to(dtype);
}

Tensor transposed_layout(const Tensor& t) {
  NoGradGuard no_grad;
  if (t.dim() < 2) return strided_layout(t);
  // Store with the last two dims swapped, then view them back: same values, transposed strides.
  const Tensor stored = t.transpose(-1, -2).contiguous();
  return stored.transpose(-1, -2).detach();
}

Tensor strided_layout(const Tensor& t) {
  NoGradGuard no_grad;
  if (t.dim() == 0) return t.clone().detach();
  Shape big = t.shape();
  big[big.size() - 1] *= 2;
  Tensor buffer = zeros(big, t.dtype());
  Tensor view = buffer.slice(-1, 0, big.back(), 2);
  view.copy_(t);
  return view.detach();
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) != std::isnan(y[i])) return INFINITY;
    if (std::isnan(x[i])) continue;
    if (std::isinf(x[i]) || std::isinf(y[i])) {
      if (x[i] != y[i]) return INFINITY;
      continue;
    }
    m = std::max(m, std::fabs(x[i] - y[i]));
  }
  return m;
}

std::string describe_mismatch(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return fmt::format("shapes differ: {} vs {}", a.shape(), b.shape());
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  std::size_t worst = 0;
  double worst_excess = -INFINITY;
  int bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool both_nan = std::isnan(x[i]) && std::isnan(y[i]);
    const double err = both_nan ? 0 : (x[i] == y[i] ? 0 : std::fabs(x[i] - y[i]));
    const double excess = std::isnan(err) ? INFINITY : err - (atol + rtol * std::fabs(y[i]));
    if (excess > 0) ++bad;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (x.empty()) return "empty tensors";
  return fmt::format("{} of {} elements out of tolerance; worst at flat index {}: {:.10g} vs {:.10g}", bad, x.size(),
                     worst, x[worst], y[worst]);
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) {
      if (!(std::isnan(x[i]) && std::isnan(y[i]))) return false;
      continue;
    }
    if (x[i] == y[i]) continue;  // equal infinities
    if (!(std::fabs(x[i] - y[i]) <= atol + rtol * std::fabs(y[i]))) return false;
  }
  return true;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor x = a.detach().contiguous(), y = b.detach().contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), static_cast<std::size_t>(x.numel()) * x.element_size()) == 0;
}

bool same_bits_or_nan(const Tensor& a, const Tensor& b) {
  if (same_bits(a, b)) return true;
  if (a.shape() != b.shape() || a.dtype() != b.dtype() || !is_floating(a.dtype())) return false;
  const Tensor x = a.detach().to(DType::f64).contiguous(), y = b.detach().to(DType::f64).contiguous();
  const double *p = x.data<double>(), *q = y.data<double>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const bool both_nan = std::isnan(p[i]) && std::isnan(q[i]);
    if (!both_nan && std::memcmp(p + i, q + i, sizeof(double)) != 0) return false;
  }
  return true;
}

bool same_bits_across_threads(const std::function<Tensors()>& f, int threads) {
  // An arena wider than the machine only adds idle slots (and a TBB warning): cap it, but keep
  // at least 2 so that chunks really run on two threads.
  threads = std::max(2, std::min<int>(threads, static_cast<int>(std::thread::hardware_concurrency())));
  Tensors one, many;
  with_threads(1, [&] { one = f(); });
  with_threads(threads, [&] { many = f(); });
  if (one.size() != many.size()) return false;
  for (std::size_t i = 0; i < one.size(); ++i)
    if (!same_bits(one[i], many[i])) return false;
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace tg::test
