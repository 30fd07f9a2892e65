// Random numbers from seeded, counter-based streams (Philox4x32-10).
//
// A Generator is (seed, offset). Element i of a tensor drawn from it is a pure function of
// (seed, offset + i), and the draw advances the offset by the element count. So the same seed gives
// the same numbers whatever the thread count, and a stream can be saved and restored exactly
// (checkpoints store the state).
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.hpp"

namespace tg {

class Generator {
 public:
  struct State {
    std::uint64_t seed = 0;
    std::uint64_t offset = 0;
  };

  explicit Generator(std::uint64_t seed = 0) : state_{seed, 0} {}
  void manual_seed(std::uint64_t seed) { state_ = {seed, 0}; }
  std::uint64_t seed() const { return state_.seed; }
  State state() const { return state_; }
  void set_state(State s) { state_ = s; }

  // Reserves n counters; returns the first. (A Generator is not thread-safe: use one per thread.)
  std::uint64_t advance(std::uint64_t n) {
    const std::uint64_t first = state_.offset;
    state_.offset += n;
    return first;
  }

  // Scalar draws, for host-side logic (shuffles, sampling decisions).
  double uniform();                       // [0, 1)
  double normal();                        // N(0, 1)
  std::int64_t randint(std::int64_t low, std::int64_t high);  // [low, high)

 private:
  State state_;
};

// The process-wide default stream (seed 0 until manual_seed).
Generator& default_generator();
void manual_seed(std::uint64_t seed);

// Philox4x32-10: four 32-bit random words for a 64-bit key and a 128-bit counter.
std::array<std::uint32_t, 4> philox(std::uint64_t key, std::uint64_t counter_lo, std::uint64_t counter_hi = 0);

Tensor rand(const Shape& shape, DType dtype = DType::f32, Generator& gen = default_generator());   // U[0, 1)
Tensor randn(const Shape& shape, DType dtype = DType::f32, Generator& gen = default_generator());  // N(0, 1)
Tensor uniform(const Shape& shape, double low, double high, DType dtype = DType::f32,
               Generator& gen = default_generator());
Tensor normal(const Shape& shape, double mean, double std, DType dtype = DType::f32,
              Generator& gen = default_generator());
// N(mean, std) restricted to [low, high] (each element has its own counter stream): rejection from
// N(mean, std) when the window holds >= 25% of the mass, else rejection from the uniform distribution
// on a narrow window, or the inverse CDF on a tail. The window must come within 6 std of the mean.
Tensor trunc_normal(const Shape& shape, double mean, double std, double low, double high,
                    DType dtype = DType::f32, Generator& gen = default_generator());
// Integers uniform in [low, high).
Tensor randint(std::int64_t low, std::int64_t high, const Shape& shape, DType dtype = DType::i64,
               Generator& gen = default_generator());
// 1 with probability p, else 0 (f32 by default; DType::boolean for masks).
Tensor bernoulli(const Shape& shape, double p, DType dtype = DType::f32, Generator& gen = default_generator());
// A random permutation of 0..n-1 (i64).
Tensor randperm(std::int64_t n, Generator& gen = default_generator());
// Category indices drawn from the rows of `probs` (torch.multinomial): probs [N] or [B, N] holds
// non-negative finite weights with a positive sum (they need not sum to 1); the result is i64
// [num_samples] or [B, num_samples]. With replacement each draw is independent; without, the
// indices of a row are distinct, in the order sequential draws (each renormalised over the
// categories left) would give, and the row needs at least num_samples positive weights. A zero
// weight is never drawn. Rows are drawn one after another from gen: the same seed gives the same
// indices whatever the thread count.
Tensor multinomial(const Tensor& probs, std::int64_t num_samples, bool replacement = false,
                   Generator& gen = default_generator());

}  // namespace tg
