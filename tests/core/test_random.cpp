// Counter-based RNG: reproducible by seed, independent of thread count, restorable, sane moments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "core/random.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
std::pair<double, double> mean_std(const Tensor& t) {
  const auto v = t.to_vector<double>();
  const double m = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return {m, std::sqrt(s / static_cast<double>(v.size()))};
}
}  // namespace

TEST_CASE("same seed, same numbers, different seeds differ", "[core][random]") {
  Generator a(42), b(42), c(43);
  const Tensor x = randn({1000}, DType::f32, a);
  CHECK(test::same_bits(x, randn({1000}, DType::f32, b)));
  CHECK_FALSE(test::same_bits(x, randn({1000}, DType::f32, c)));
  // Successive draws continue the stream.
  CHECK_FALSE(test::same_bits(randn({1000}, DType::f32, a), x));
}

TEST_CASE("random tensors do not depend on the thread count", "[core][random][threads]") {
  CHECK(test::same_bits_across_threads([] {
    Generator g(7);
    return Tensors{randn({200001}, DType::f32, g), rand({70001}, DType::f64, g), randint(-5, 9, {50001}, DType::i64, g),
                   bernoulli({40001}, 0.3, DType::f32, g)};
  }));
}

TEST_CASE("generator state round-trips", "[core][random]") {
  Generator g(5);
  (void)randn({10}, DType::f32, g);
  const Generator::State s = g.state();
  const Tensor x = rand({100}, DType::f32, g);
  g.set_state(s);
  CHECK(test::same_bits(x, rand({100}, DType::f32, g)));
}

TEST_CASE("distributions have the right support and moments", "[core][random]") {
  Generator g(11);
  auto [m, s] = mean_std(randn({200000}, DType::f64, g));
  CHECK(std::fabs(m) < 0.01);
  CHECK(std::fabs(s - 1) < 0.01);
  const Tensor u = rand({100000}, DType::f32, g);
  const auto uv = u.to_vector<float>();
  CHECK(*std::min_element(uv.begin(), uv.end()) >= 0.0f);
  CHECK(*std::max_element(uv.begin(), uv.end()) < 1.0f);
  CHECK(std::fabs(mean_std(u).first - 0.5) < 0.01);
  const auto n = normal({100000}, 3.0, 2.0, DType::f64, g);
  CHECK(std::fabs(mean_std(n).first - 3.0) < 0.03);
  CHECK(std::fabs(mean_std(n).second - 2.0) < 0.03);
  const auto ri = randint(-3, 4, {10000}, DType::i64, g).to_vector<std::int64_t>();
  CHECK(*std::min_element(ri.begin(), ri.end()) == -3);
  CHECK(*std::max_element(ri.begin(), ri.end()) == 3);
  CHECK(std::fabs(mean_std(bernoulli({100000}, 0.25, DType::f64, g)).first - 0.25) < 0.01);
  const auto tn = trunc_normal({20000}, 0.0, 1.0, -2.0, 2.0, DType::f64, g).to_vector<double>();
  CHECK(*std::min_element(tn.begin(), tn.end()) >= -2.0);
  CHECK(*std::max_element(tn.begin(), tn.end()) <= 2.0);
  auto perm = randperm(1000, g).to_vector<std::int64_t>();
  std::sort(perm.begin(), perm.end());
  for (std::int64_t i = 0; i < 1000; ++i) CHECK(perm[static_cast<std::size_t>(i)] == i);
  CHECK(bernoulli({3}, 1.0, DType::boolean, g).to_vector<bool>() == std::vector<bool>{true, true, true});
}

TEST_CASE("trunc_normal: the moments of the truncated normal in every regime, and no hang on thin windows", "[core][random]") {
  Generator g(21);
  struct Case {
    double mean, std, low, high;
  };
  // +-2 std (rejection from the normal), a window thin against std (uniform proposal), upper and
  // lower tails (inverse CDF), and a window straddling the mean with little mass.
  for (const Case c : {Case{0, 1, -2, 2}, Case{1, 1e6, -2, 2}, Case{0, 2, 0.5, 0.9}, Case{0, 1, 2.5, INFINITY},
                       Case{3, 2, -INFINITY, -4}, Case{0, 1, -0.2, 0.2}, Case{0, 1, 5.5, 7},
                       // thin windows at the 6-std edge: the uniform proposal's acceptance step matters there
                       Case{0, 1, 5.8, 6.0}, Case{0, 1, -6.0, -5.8}}) {
    INFO("mean " << c.mean << " std " << c.std << " [" << c.low << ", " << c.high << "]");
    // The truncated moments by Simpson's rule in standard units, relative to the window's point
    // nearest the mean (exact to rounding for thin windows, where closed forms cancel).
    const double a = std::max((c.low - c.mean) / c.std, -40.0), b = std::min((c.high - c.mean) / c.std, 40.0);
    const double near = std::clamp(0.0, a, b);
    const int steps = 20000;
    double w0 = 0, w1 = 0, w2 = 0;
    for (int i = 0; i <= steps; ++i) {
      const double t = static_cast<double>(i) / steps, z = a + (b - a) * t, u = (b - a) * t;  // u = z - a
      const double w = (i == 0 || i == steps ? 1.0 : i % 2 ? 4.0 : 2.0) * std::exp(-0.5 * (z * z - near * near));
      w0 += w;
      w1 += w * u;
      w2 += w * u * u;
    }
    const double mu = w1 / w0, var = std::max(0.0, w2 / w0 - mu * mu);
    const double mean = c.mean + c.std * (a + mu), sd = c.std * std::sqrt(var);
    const std::int64_t n = 40000;
    const auto v = trunc_normal({n}, c.mean, c.std, c.low, c.high, DType::f64, g).to_vector<double>();
    CHECK(*std::min_element(v.begin(), v.end()) >= c.low);
    CHECK(*std::max_element(v.begin(), v.end()) <= c.high);
    const auto [got_mean, got_sd] = mean_std(from_vector(v));
    CHECK(std::abs(got_mean - mean) <= 5 * sd / std::sqrt(static_cast<double>(n)));
    CHECK(std::abs(got_sd - sd) <= 0.03 * sd);
  }
  // In f32 the values stay inside after rounding, also for bounds that are not floats (+-0.04).
  for (const Case c : {Case{0, 0.02, -0.04, 0.04}, Case{0, 1, 0.1, 0.1 + 1e-7}, Case{0, 1, 2.9, 3.1}}) {
    const auto v = trunc_normal({20000}, c.mean, c.std, c.low, c.high, DType::f32, g).to_vector<float>();
    CHECK(static_cast<double>(*std::min_element(v.begin(), v.end())) >= c.low);
    CHECK(static_cast<double>(*std::max_element(v.begin(), v.end())) <= c.high);
  }
  // Windows far thinner than std, or than the spacing of doubles around the mean: no hang.
  for (const Case c : {Case{0, 1e300, -1, 1}, Case{0, 1, 0, 1e-300}, Case{1, 1, 1, std::nextafter(1.0, 2.0)}}) {
    const auto v = trunc_normal({1000}, c.mean, c.std, c.low, c.high, DType::f64, g).to_vector<double>();
    CHECK(*std::min_element(v.begin(), v.end()) >= c.low);
    CHECK(*std::max_element(v.begin(), v.end()) <= c.high);
  }
}

TEST_CASE("multinomial: frequencies with and without replacement, zero weights, reproducible", "[core][random][multinomial]") {
  // Each count within 5 binomial standard deviations of its expectation (a false failure has a
  // probability of about 1e-6 per check; the seeds are fixed anyway).
  auto check_count = [](std::int64_t count, std::int64_t trials, double p) {
    const double expect = double(trials) * p, sd = std::sqrt(double(trials) * p * (1 - p));
    INFO(fmt::format("count {} of {} trials, p = {}", count, trials, p));
    CHECK(std::fabs(double(count) - expect) <= 5 * sd + 1e-9);
  };
  Generator g(21);
  // With replacement, unnormalised weights, a zero weight.
  const Tensor w = tensor({0.2, 0.0, 0.6, 1.2});  // p = 0.1, 0, 0.3, 0.6
  const std::int64_t n = 200000;
  const std::vector<std::int64_t> draws = multinomial(w, n, true, g).to_vector<std::int64_t>();
  std::vector<std::int64_t> counts(4, 0);
  for (std::int64_t d : draws) ++counts[static_cast<std::size_t>(d)];
  CHECK(counts[1] == 0);
  check_count(counts[0], n, 0.1);
  check_count(counts[2], n, 0.3);
  check_count(counts[3], n, 0.6);
  // Without replacement: P(first = i, second = j) = p_i p_j / (1 - p_i), rows drawn independently.
  const std::int64_t rows = 60000;
  const std::vector<double> p = {0.5, 0.3, 0.2};
  const Tensor probs = tensor({0.5, 0.3, 0.2}, DType::f64).reshape({1, 3}).expand({rows, 3});
  const std::vector<std::int64_t> pairs = multinomial(probs, 2, false, g).to_vector<std::int64_t>();
  std::vector<std::int64_t> pair_counts(9, 0);
  for (std::int64_t r = 0; r < rows; ++r)
    ++pair_counts[static_cast<std::size_t>(3 * pairs[static_cast<std::size_t>(2 * r)] + pairs[static_cast<std::size_t>(2 * r + 1)])];
  CHECK(pair_counts[0] + pair_counts[4] + pair_counts[8] == 0);  // never the same category twice
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      if (a != b) check_count(pair_counts[3 * a + b], rows, p[a] * p[b] / (1 - p[a]));
  // All categories without replacement: a permutation of the positive ones.
  std::vector<std::int64_t> all = multinomial(tensor({3.0, 0.0, 1.0, 2.0, 5.0}), 4, false, g).to_vector<std::int64_t>();
  std::sort(all.begin(), all.end());
  CHECK(all == std::vector<std::int64_t>{0, 2, 3, 4});
  CHECK(multinomial(tensor({0.0, 0.0, 4.0}), 3, true, g).to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 2, 2});
  // Same seed, same draws; shapes.
  Generator a(5), b(5);
  const Tensor big = rand({7, 300}, DType::f32, a);
  (void)rand({7, 300}, DType::f32, b);
  CHECK(test::same_bits(multinomial(big, 50, false, a), multinomial(big, 50, false, b)));
  CHECK(test::same_bits(multinomial(big, 500, true, a), multinomial(big, 500, true, b)));
  CHECK(multinomial(big, 3, false, a).shape() == Shape{7, 3});
  CHECK(test::same_bits_across_threads([&] {
    Generator t(9);
    return Tensors{multinomial(big, 40, false, t), multinomial(big, 40, true, t)};
  }));
  // Errors.
  CHECK_THROWS_WITH(multinomial(tensor({0.5, -0.1}), 1), Contains("multinomial: probability [1] is -0.1"));
  CHECK_THROWS_WITH(multinomial(tensor({0.5, NAN, 1, 1}, {2, 2}), 1), Contains("multinomial: probability [0, 1] is nan"));
  CHECK_THROWS_WITH(multinomial(zeros({2, 3}), 1), Contains("the weights of row 0 sum to 0"));
  CHECK_THROWS_WITH(multinomial(tensor({1, 1}), 3), Contains("cannot draw 3 samples without replacement from 2 categories"));
  CHECK_THROWS_WITH(multinomial(tensor({1, 0, 1}), 3), Contains("row 0 has 2 positive weights, fewer than the 3 samples"));
  CHECK_THROWS_WITH(multinomial(tensor({1, 1}), 0), Contains("num_samples must be positive, got 0"));
  CHECK_THROWS_WITH(multinomial(arange(3), 1), Contains("probs must be a floating-point tensor, got i64"));
  CHECK_THROWS_WITH(multinomial(zeros({2, 2, 2}), 1), Contains("probs must be [N] or [B, N], got shape [2, 2, 2]"));
  CHECK_THROWS_WITH(multinomial(zeros({2, 0}), 1), Contains("has no categories"));
}

TEST_CASE("random factories check their arguments", "[core][random][errors]") {
  CHECK_THROWS_WITH(randint(3, 3, {2}), Contains("randint: empty range [3, 3)"));
  CHECK_THROWS_WITH(bernoulli({2}, 1.5), Contains("probability must be in [0, 1]"));
  CHECK_THROWS_WITH(randn({2}, DType::i64), Contains("expected a floating dtype"));
  CHECK_THROWS_WITH(normal({2}, 0, -1), Contains("normal: expected a finite mean and a finite std >= 0, got 0 and -1"));
  CHECK_THROWS_WITH(normal({2}, NAN, 1), Contains("normal: expected a finite mean"));
  CHECK_THROWS_WITH(uniform({2}, -INFINITY, 0.0), Contains("uniform: expected finite low <= high, got [-inf, 0)"));
}
