// The engine on its own: a two-layer MLP learns to separate two interleaved spirals, with
// parameters as plain tensors, the loss built from ops, gradients from the tape and a hand-written
// gradient-descent step. (The nn/ layer packages all of this; here every piece is visible.)
//
//   build/examples/spirals [steps] [seed]
#include <fmt/core.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <optional>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"

using namespace tg;

namespace {

// n points per class on two spirals, with a little noise: x [2n, 2], label [2n].
std::pair<Tensor, Tensor> make_spirals(std::int64_t n, Generator& gen) {
  Tensor x = empty({2 * n, 2});
  Tensor y = empty({2 * n}, DType::i64);
  float* px = x.data<float>();
  std::int64_t* py = y.data<std::int64_t>();
  for (std::int64_t c = 0; c < 2; ++c) {
    for (std::int64_t i = 0; i < n; ++i) {
      const double t = 0.25 + 2.75 * std::numbers::pi * static_cast<double>(i) / static_cast<double>(n);
      const double r = t / (3 * std::numbers::pi);
      const double angle = t + std::numbers::pi * static_cast<double>(c);
      const std::int64_t k = c * n + i;
      px[2 * k] = static_cast<float>(r * std::cos(angle) + 0.02 * gen.normal());
      px[2 * k + 1] = static_cast<float>(r * std::sin(angle) + 0.02 * gen.normal());
      py[k] = c;
    }
  }
  return {x, y};
}

// The whole of `text` as a number in [lo, hi], else nothing.
template <class T>
std::optional<T> parse_number(const char* text, T lo, T hi) {
  T v{};
  const char* end = text + std::strlen(text);
  const auto [p, err] = std::from_chars(text, end, v);
  if (err != std::errc() || p != end || v < lo || v > hi) return std::nullopt;
  return v;
}

// Trains and reports; a failure is raised as an exception.
int train(std::int64_t total, std::uint64_t seed) {
  Generator gen(seed);
  auto [x, y] = make_spirals(200, gen);  // x [400, 2], y [400]

  // Parameters: leaves that require grad.
  const std::int64_t hidden = 64;
  Tensor w1 = (randn({hidden, 2}, DType::f32, gen) * 2.0).requires_grad_();                          // [64, 2]
  Tensor b1 = zeros({hidden}).requires_grad_();                                                      // [64]
  Tensor w2 = (randn({hidden, hidden}, DType::f32, gen) * std::sqrt(1.0 / hidden)).requires_grad_(); // [64, 64]
  Tensor b2 = zeros({hidden}).requires_grad_();                                                      // [64]
  Tensor w3 = (randn({2, hidden}, DType::f32, gen) * std::sqrt(1.0 / hidden)).requires_grad_();     // [2, 64]
  Tensor b3 = zeros({2}).requires_grad_();                                                           // [2]
  Tensors params{w1, b1, w2, b2, w3, b3};
  Tensors velocity;  // momentum buffers, one per parameter
  for (const Tensor& p : params) velocity.push_back(zeros_like(p));

  const double lr = 0.1, momentum = 0.9;
  const auto start = std::chrono::steady_clock::now();
  fmt::print("fitting an MLP with two {}-unit hidden layers to two spirals ({} points) with momentum gradient descent\n", hidden, x.shape()[0]);
  for (std::int64_t step = 1; step <= total; ++step) {
    Tensor h1 = ops::tanh(ops::linear(x, w1, b1));      // [400, 64]
    Tensor h2 = ops::tanh(ops::linear(h1, w2, b2));     // [400, 64]
    Tensor logits = ops::linear(h2, w3, b3);            // [400, 2]
    Tensor loss = ops::cross_entropy(logits, y);        // []
    // A diverged run stops with an error instead of printing NaN and exiting 0.
    const double l = loss.item();
    TG_CHECK(std::isfinite(l), "spirals: training diverged: the loss is {} at step {} (learning rate {})",
             std::isnan(l) ? std::fabs(l) : l, step, lr);  // "nan", not fmt's "-nan"
    for (Tensor& p : params) p.reset_grad();
    loss.backward();                                    // fills p.grad() for every parameter
    {
      NoGradGuard no_grad;  // the update itself is not differentiated: v = m v + g, p -= lr v
      for (std::size_t i = 0; i < params.size(); ++i) {
        velocity[i].copy_(velocity[i] * momentum + params[i].grad());
        params[i].copy_(params[i] - velocity[i] * lr);
      }
    }
    if (step == 1 || step % (total / 10 > 0 ? total / 10 : 1) == 0) {
      NoGradGuard no_grad;
      const double acc = ops::mean(ops::eq(ops::argmax(logits, 1), y)).item();
      fmt::print("step {:5d}  loss {:.4f}  train accuracy {:5.1f}%\n", step, l, 100 * acc);
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("done: {} steps in {:.2f} s ({:.0f} steps/s)\n", total, secs, static_cast<double>(total) / secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr std::int64_t kMaxSteps = 10'000'000;
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    fmt::print("usage: spirals [steps: 1..{} (default 2000)] [seed: a non-negative integer (default 0)]\n", kMaxSteps);
    return 0;
  }
  const auto steps = argc > 1 ? parse_number<std::int64_t>(argv[1], 1, kMaxSteps) : std::optional<std::int64_t>(2000);
  const auto seed = argc > 2 ? parse_number<std::uint64_t>(argv[2], 0, UINT64_MAX) : std::optional<std::uint64_t>(0);
  if (argc > 3 || !steps || !seed) {
    fmt::print(stderr, "error: usage: spirals [steps: 1..{}] [seed: a non-negative integer]\n", kMaxSteps);
    return 1;
  }
  try {
    return train(*steps, *seed);
  } catch (const std::exception& e) {  // a tg::Error, or out of memory: a message, not an abort
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
