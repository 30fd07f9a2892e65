#include "core/random.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "core/parallel.hpp"

namespace tg {

std::array<std::uint32_t, 4> philox(std::uint64_t key, std::uint64_t counter_lo, std::uint64_t counter_hi) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  std::uint32_t c0 = static_cast<std::uint32_t>(counter_lo), c1 = static_cast<std::uint32_t>(counter_lo >> 32);
  std::uint32_t c2 = static_cast<std::uint32_t>(counter_hi), c3 = static_cast<std::uint32_t>(counter_hi >> 32);
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * c2;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

namespace {

// 53-bit uniform in [0, 1) from two words.
double u53(std::uint32_t a, std::uint32_t b) {
  const std::uint64_t bits = (static_cast<std::uint64_t>(a) << 21) ^ (b >> 11);
  return static_cast<double>(bits & ((std::uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

// Standard normal by Box-Muller (cosine branch) from one Philox block.
double normal_from(const std::array<std::uint32_t, 4>& w) {
  const double u1 = 1.0 - u53(w[0], w[1]);  // (0, 1]: log is finite
  const double u2 = u53(w[2], w[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Fills t (contiguous, fresh) with f(philox block of element i), i over [0, numel).
template <class F>
Tensor generate(const Shape& shape, DType dtype, Generator& gen, const char* op, F&& f) {
  for (int d = 0; d < shape.size(); ++d)
    TG_CHECK(shape[d] >= 0, "{}: negative dimension {} in shape {}", op, shape[d], shape);
  Tensor t = empty(shape, dtype);
  const std::int64_t n = t.numel();
  const std::uint64_t seed = gen.seed();
  const std::uint64_t first = gen.advance(static_cast<std::uint64_t>(n));
  dispatch(dtype, op, [&]<class T>() {
    T* p = t.data<T>();
    parallel_for(n, 1 << 14, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) p[i] = static_cast<T>(f(seed, first + static_cast<std::uint64_t>(i)));
    });
  });
  return t;
}

}  // namespace

Generator& default_generator() {
  static Generator g(0);
  return g;
}
void manual_seed(std::uint64_t seed) { default_generator().manual_seed(seed); }

double Generator::uniform() {
  const auto w = philox(state_.seed, advance(1));
  return u53(w[0], w[1]);
}
double Generator::normal() { return normal_from(philox(state_.seed, advance(1))); }
std::int64_t Generator::randint(std::int64_t low, std::int64_t high) {
  TG_CHECK(high > low, "randint: empty range [{}, {})", low, high);
  const auto w = philox(state_.seed, advance(1));
  const std::uint64_t r = (static_cast<std::uint64_t>(w[0]) << 32) | w[1];
  // Unsigned arithmetic: the span of [INT64_MIN, INT64_MAX) does not fit in an int64.
  const std::uint64_t span = static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low);
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(low) + r % span);
}

Tensor rand(const Shape& shape, DType dtype, Generator& gen) {
  return uniform(shape, 0.0, 1.0, dtype, gen);
}

Tensor uniform(const Shape& shape, double low, double high, DType dtype, Generator& gen) {
  TG_CHECK(is_floating(dtype), "uniform: expected a floating dtype, got {}", dtype);
  TG_CHECK(std::isfinite(low) && std::isfinite(high) && low <= high, "uniform: expected finite low <= high, got [{}, {})", low,
           high);
  return generate(shape, dtype, gen, "uniform", [low, high, dtype](std::uint64_t s, std::uint64_t c) {
    const auto w = philox(s, c);
    double v = low + (high - low) * u53(w[0], w[1]);
    // Rounding to f32 could land exactly on `high`; keep the interval half-open.
    if (dtype == DType::f32 && static_cast<float>(v) >= static_cast<float>(high) && high > low)
      v = std::nextafter(static_cast<float>(high), static_cast<float>(low));
    return v;
  });
}

Tensor randn(const Shape& shape, DType dtype, Generator& gen) { return normal(shape, 0.0, 1.0, dtype, gen); }

Tensor normal(const Shape& shape, double mean, double std, DType dtype, Generator& gen) {
  TG_CHECK(is_floating(dtype), "normal: expected a floating dtype, got {}", dtype);
  TG_CHECK(std::isfinite(mean) && std::isfinite(std) && std >= 0, "normal: expected a finite mean and a finite std >= 0, got {} and {}",
           mean, std);
  return generate(shape, dtype, gen, "normal",
                  [mean, std](std::uint64_t s, std::uint64_t c) { return mean + std * normal_from(philox(s, c)); });
}

namespace {

// Phi(x) = P(N(0, 1) <= x), with full relative precision in the lower tail.
double std_normal_cdf(double x) { return 0.5 * std::erfc(-x / std::numbers::sqrt2); }

// The x in [a, b] (finite) with Phi(x) = u, for Phi(a) <= u <= Phi(b): Newton steps, bisecting
// whenever a step leaves the bracket that the signs of Phi(x) - u narrow down.
double std_normal_quantile_in(double u, double a, double b) {
  double x = 0.5 * (a + b);
  for (int i = 0; i < 200; ++i) {
    const double f = std_normal_cdf(x) - u;
    if (f == 0) break;
    (f > 0 ? b : a) = x;
    const double density = std::exp(-0.5 * x * x) / std::sqrt(2 * std::numbers::pi);
    double next = x - f / density;
    if (!(next > a && next < b)) next = 0.5 * (a + b);
    if (next == x || b - a <= 4 * std::numeric_limits<double>::epsilon() * std::max(1.0, std::abs(x))) break;
    x = next;
  }
  return x;
}

}  // namespace

Tensor trunc_normal(const Shape& shape, double mean, double std, double low, double high, DType dtype,
                    Generator& gen) {
  TG_CHECK(is_floating(dtype), "trunc_normal: expected a floating dtype, got {}", dtype);
  TG_CHECK(std::isfinite(mean) && std::isfinite(std) && std > 0 && low < high,
           "trunc_normal: need a finite mean, a finite std > 0 and low < high, got mean={} std={} [{}, {}]", mean, std,
           low, high);
  TG_CHECK(low <= mean + 6 * std && high >= mean - 6 * std,
           "trunc_normal: the interval [{}, {}] is too far from the mean {} (std {}) to sample by rejection", low,
           high, mean, std);
  // In standard units: z in [a, b], which holds the share p of N(0, 1).
  const double a = (low - mean) / std, b = (high - mean) / std;
  const double p = a > 0 ? std_normal_cdf(-a) - std_normal_cdf(-b) : std_normal_cdf(b) - std_normal_cdf(a);
  // mean + std z can round outside [low, high], and so can its cast to f32: clamp, then step inward
  // to the nearest float in the window (none exists only in a window thinner than a float's spacing).
  auto in_bounds = [low, high, dtype](double v) {
    v = std::clamp(v, low, high);
    if (dtype != DType::f32) return v;
    float f = static_cast<float>(v);
    if (f < low) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    if (f > high) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return static_cast<double>(f);
  };
  if (p >= 0.25)  // the usual case (e.g. +-2 std: p = 0.95): rejection from N(mean, std)
    return generate(shape, dtype, gen, "trunc_normal", [=](std::uint64_t s, std::uint64_t c) {
      for (std::uint64_t attempt = 0;; ++attempt) {  // the element's own stream: counter_hi = attempt
        const double v = mean + std * normal_from(philox(s, c, attempt));
        if (v >= low && v <= high) return in_bounds(v);  // (unchanged in f64; in f32 kept inside after rounding)
      }
    });
  if (b - a <= 0.25) {
    // A narrow window (relative to std): rejection from the uniform distribution on it, accepting z
    // with probability phi(z) / phi(z_near), z_near the window's point nearest the mean. With
    // |z_near| <= 6 (checked above) that is at least exp(-6 * 0.25 - 0.25^2 / 2) = 0.21.
    const double near = std::clamp(0.0, a, b);
    return generate(shape, dtype, gen, "trunc_normal", [=](std::uint64_t s, std::uint64_t c) {
      for (std::uint64_t attempt = 0;; ++attempt) {
        const auto w = philox(s, c, attempt);
        const double z = a + (b - a) * u53(w[0], w[1]);
        if (u53(w[2], w[3]) < std::exp(-0.5 * (z * z - near * near))) return in_bounds(mean + std * z);
      }
    });
  }
  // A wide window with little mass (a tail): the inverse CDF, on the lower tail's side (mirrored
  // when the window lies above the mean) where Phi keeps its relative precision.
  const bool mirrored = a > 0;
  const double lo = std::max(mirrored ? -b : a, -40.0), hi = std::min(mirrored ? -a : b, 40.0);
  const double cdf_lo = std_normal_cdf(lo), cdf_hi = std_normal_cdf(hi);
  return generate(shape, dtype, gen, "trunc_normal", [=](std::uint64_t s, std::uint64_t c) {
    const auto w = philox(s, c);
    const double z = std_normal_quantile_in(cdf_lo + (cdf_hi - cdf_lo) * u53(w[0], w[1]), lo, hi);
    return in_bounds(mean + std * (mirrored ? -z : z));
  });
}

Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, DType dtype, Generator& gen) {
  TG_CHECK(high > low, "randint: empty range [{}, {})", low, high);
  TG_CHECK(dtype != DType::i32 || (low >= std::numeric_limits<std::int32_t>::min() && high - 1 <= std::numeric_limits<std::int32_t>::max()),
           "randint: the range [{}, {}) does not fit in i32", low, high);
  const std::uint64_t span = static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low);  // may not fit int64
  return generate(shape, dtype, gen, "randint", [low, span](std::uint64_t s, std::uint64_t c) {
    const auto w = philox(s, c);
    const std::uint64_t r = (static_cast<std::uint64_t>(w[0]) << 32) | w[1];
    return static_cast<double>(static_cast<std::int64_t>(static_cast<std::uint64_t>(low) + r % span));
  });
}

Tensor bernoulli(const Shape& shape, double p, DType dtype, Generator& gen) {
  TG_CHECK(p >= 0 && p <= 1, "bernoulli: probability must be in [0, 1], got {}", p);
  return generate(shape, dtype, gen, "bernoulli", [p](std::uint64_t s, std::uint64_t c) {
    const auto w = philox(s, c);
    return u53(w[0], w[1]) < p ? 1.0 : 0.0;
  });
}

Tensor randperm(std::int64_t n, Generator& gen) {
  TG_CHECK(n >= 0, "randperm: expected n >= 0, got {}", n);
  Tensor t = arange(n, DType::i64);
  std::int64_t* p = t.data<std::int64_t>();
  for (std::int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[gen.randint(0, i + 1)]);  // Fisher-Yates
  return t;
}

Tensor multinomial(const Tensor& probs, std::int64_t num_samples, bool replacement, Generator& gen) {
  TG_CHECK(probs.defined(), "multinomial: probs is undefined");
  TG_CHECK(probs.is_floating_point(), "multinomial: probs must be a floating-point tensor, got {} (shape {})",
           probs.dtype(), probs.shape());
  TG_CHECK(probs.dim() == 1 || probs.dim() == 2, "multinomial: probs must be [N] or [B, N], got shape {}", probs.shape());
  const std::int64_t rows = probs.dim() == 2 ? probs.shape()[0] : 1, n = probs.shape()[probs.dim() - 1];
  TG_CHECK(n > 0, "multinomial: probs of shape {} has no categories", probs.shape());
  TG_CHECK(num_samples > 0, "multinomial: num_samples must be positive, got {}", num_samples);
  TG_CHECK(replacement || num_samples <= n,
           "multinomial: cannot draw {} samples without replacement from {} categories (probs {})", num_samples, n,
           probs.shape());
  TG_CHECK(num_samples <= (std::int64_t{1} << 40), "multinomial: num_samples {} is too large (more than 2^40)", num_samples);
  const std::vector<double> w = probs.to(DType::f64).contiguous().to_vector<double>();
  Tensor out = empty(probs.dim() == 2 ? Shape{rows, num_samples} : Shape{num_samples}, DType::i64, "multinomial");
  std::int64_t* o = out.data<std::int64_t>();
  std::vector<double> cumulative(static_cast<std::size_t>(n));
  std::vector<std::pair<double, std::int64_t>> keys;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* row = w.data() + r * n;
    double total = 0;
    std::int64_t positive = 0, last_positive = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      TG_CHECK(std::isfinite(row[i]) && row[i] >= 0, "multinomial: probability {} is {}; weights must be finite and >= 0",
               probs.dim() == 2 ? fmt::format("[{}, {}]", r, i) : fmt::format("[{}]", i), row[i]);
      total += row[i];
      cumulative[static_cast<std::size_t>(i)] = total;
      if (row[i] > 0) {
        ++positive;
        last_positive = i;
      }
    }
    TG_CHECK(std::isfinite(total) && total > 0, "multinomial: the weights of row {} sum to {}; they must have a positive, finite sum",
             r, total);
    std::int64_t* orow = o + r * num_samples;
    if (replacement) {
      // Inverse CDF: the first category whose cumulative weight exceeds u (a zero weight adds
      // nothing, so it is never the first); u rounded up to the total falls to the last positive one.
      for (std::int64_t s = 0; s < num_samples; ++s) {
        const double u = gen.uniform() * total;
        const auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
        orow[s] = it == cumulative.end() ? last_positive : it - cumulative.begin();
      }
      continue;
    }
    TG_CHECK(positive >= num_samples,
             "multinomial: row {} has {} positive weights, fewer than the {} samples drawn without replacement", r, positive,
             num_samples);
    // Sequential draws without replacement, all at once (Efraimidis-Spirakis): category i gets the
    // key -log(u_i) / w_i, an exponential variable of rate w_i; the categories in order of
    // increasing key are distributed as draws that each renormalise over the categories left.
    keys.clear();
    for (std::int64_t i = 0; i < n; ++i) {
      const double u = gen.uniform();  // one per category, drawn whether or not it is positive
      if (row[i] > 0) keys.emplace_back(-std::log1p(-u) / row[i], i);
    }
    std::partial_sort(keys.begin(), keys.begin() + num_samples, keys.end());  // ties: the lower index first
    for (std::int64_t s = 0; s < num_samples; ++s) orow[s] = keys[static_cast<std::size_t>(s)].second;
  }
  return out;
}

}  // namespace tg
