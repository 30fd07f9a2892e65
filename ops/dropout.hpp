// Inverted dropout with a counter-based mask.
#pragma once

#include "core/random.hpp"
#include "core/tensor.hpp"

namespace tg::ops {

// Training: zeroes each element with probability p and scales the others by 1 / (1 - p). The mask
// comes from `gen` (Philox): element i (row-major over x's shape, whatever its layout) is kept iff
// the uniform of counter gen.offset + i is >= p (the same uniform tg::rand draws), and the draw
// advances gen by x.numel(). So a seed gives the same mask at any thread count. The backward
// multiplies by the same (stored) mask.
// p == 0 or !training returns x itself (no op recorded, generator untouched). p must be in [0, 1).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());

}  // namespace tg::ops
