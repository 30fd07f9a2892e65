// Dropout: frontend and backward rule; the mask comes from kernels::dropout_keep (vectorised Philox).
#include "ops/dropout.hpp"

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "ops/common.hpp"
#include "ops/kernels/attention.hpp"

namespace tg::ops {

using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

constexpr std::int64_t kGrain = 1 << 15;

// out[i] = in[i] * (keep[i] ? scale : 0) over contiguous buffers.
template <class T>
void apply_mask(const T* in, const std::uint8_t* keep, T scale, T* out, std::int64_t lo, std::int64_t hi) {
  for (std::int64_t i = lo; i < hi; ++i) out[i] = in[i] * (keep[i] ? scale : T(0));
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  check_defined(x, "dropout", "x");
  TG_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got {}", p);
  if (!training || p == 0) return x;
  TG_CHECK(x.is_floating_point(), "dropout: expected a floating-point tensor (f32 or f64), got {} (shape {})",
           x.dtype(), x.shape());
  // Allocations first: a call that runs out of memory leaves the generator where it was.
  Tensor mask = empty(x.shape(), DType::boolean, "dropout");
  Tensor y = empty(x.shape(), x.dtype(), "dropout");
  const Tensor xc = x.detach().contiguous();
  const std::int64_t n = xc.numel();
  const std::uint64_t seed = gen.seed();
  const std::uint64_t first = gen.advance(static_cast<std::uint64_t>(n));
  const std::uint64_t threshold = kernels::dropout_threshold(p);
  auto* keep = reinterpret_cast<std::uint8_t*>(mask.data<bool>());
  dispatch_float(x.dtype(), "dropout", [&]<class T>() {
    const T scale = static_cast<T>(1.0 / (1.0 - p));
    const T* xp = xc.data<T>();
    T* yp = y.data<T>();
    parallel_for(n, kGrain, [&](std::int64_t lo, std::int64_t hi) {
      kernels::dropout_keep(seed, first + static_cast<std::uint64_t>(lo), hi - lo, threshold, keep + lo);
      apply_mask(xp, keep, scale, yp, lo, hi);
    });
  });
  return record("dropout", {x}, y, [sm = SavedTensor(mask), p](const Tensor& g) {
    const Tensor m = sm.get();
    const Tensor gc = g.contiguous();
    Tensor gx = empty(gc.shape(), gc.dtype(), "dropout");
    const auto* keep = reinterpret_cast<const std::uint8_t*>(m.data<bool>());
    dispatch_float(gc.dtype(), "dropout", [&]<class T>() {
      const T scale = static_cast<T>(1.0 / (1.0 - p));
      const T* gp = gc.data<T>();
      T* out = gx.data<T>();
      parallel_for(gc.numel(), kGrain, [&](std::int64_t lo, std::int64_t hi) { apply_mask(gp, keep, scale, out, lo, hi); });
    });
    return Tensors{gx};
  });
}

}  // namespace tg::ops
