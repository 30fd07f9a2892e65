// Reductions. `axes` lists the axes to reduce (negative axes count from the end); an empty list
// reduces all axes. keepdim keeps reduced axes as size 1. All are deterministic for any thread count.
#pragma once

#include <limits>

#include "core/tensor.hpp"

namespace tg::ops {

Tensor sum(const Tensor& x, const Shape& axes = {}, bool keepdim = false);  // bool/ints sum to i64
Tensor mean(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
Tensor prod(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
// Largest/smallest values; the gradient is shared equally by tied elements. NaN propagates (into
// the gradient of its whole slice too, as in torch).
Tensor amax(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const Shape& axes = {}, bool keepdim = false);

// Max/min along one axis with the (first) index where it occurs; the gradient goes to that index.
struct ValuesIndices {
  Tensor values;
  Tensor indices;  // i64
};
ValuesIndices max(const Tensor& x, std::int64_t axis, bool keepdim = false);
ValuesIndices min(const Tensor& x, std::int64_t axis, bool keepdim = false);
Tensor argmax(const Tensor& x, std::int64_t axis, bool keepdim = false);
Tensor argmin(const Tensor& x, std::int64_t axis, bool keepdim = false);

// ---- sorting (along one axis; stable: equal values keep their order, as torch's stable=True;
// NaN counts as larger than every number, so it comes last ascending and first descending) ----
// values is differentiable (a gather of x: each gradient returns to where its value came from);
// indices are i64. A 0-d x sorts as one element.
ValuesIndices sort(const Tensor& x, std::int64_t axis = -1, bool descending = false);
Tensor argsort(const Tensor& x, std::int64_t axis = -1, bool descending = false);
// The k largest (largest = true, largest first) or smallest (smallest first) along axis: torch.topk
// with sorted results; 0 <= k <= size (k = 1 for a 0-d x).
ValuesIndices topk(const Tensor& x, std::int64_t k, std::int64_t axis = -1, bool largest = true);

// log(sum(exp(x))) without overflow.
Tensor logsumexp(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
// Variance with divisor (N - correction): correction 1 is the unbiased estimate, 0 the population one.
Tensor var(const Tensor& x, const Shape& axes = {}, double correction = 1.0, bool keepdim = false);
// Square root of var; its gradient is 0 on constant slices (std = 0), where sqrt's would be NaN.
Tensor stddev(const Tensor& x, const Shape& axes = {}, double correction = 1.0, bool keepdim = false);
// Vector norm over `axes`: p = 1, 2 or infinity. The L2 gradient at 0 is 0.
inline constexpr double kInf = std::numeric_limits<double>::infinity();
Tensor norm(const Tensor& x, double p = 2.0, const Shape& axes = {}, bool keepdim = false);
// x / max(norm(x, p) along `axis`, eps), as torch.nn.functional.normalize: unit vectors along
// `axis` (p = 1, 2 or infinity). A slice whose norm is below eps is divided by eps instead (an all-
// zero slice stays zero, with gradient 1 / eps), so with eps > 0 the result is finite wherever x
// is. An empty x gives an empty result (torch refuses p = infinity over an empty dim).
Tensor normalize(const Tensor& x, double p = 2.0, std::int64_t axis = -1, double eps = 1e-12);
// Inclusive cumulative sum along `axis`.
Tensor cumsum(const Tensor& x, std::int64_t axis);

}  // namespace tg::ops
