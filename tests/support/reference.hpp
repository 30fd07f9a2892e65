// Naive f64 reference implementations: plain loops over multi-indices, written for clarity, used
// to check the optimised kernels.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.hpp"

namespace tg::test::ref {

// f applied to every element; the result is f64 with x's shape.
Tensor unary(const Tensor& x, const std::function<double(double)>& f);
// f(a, b) with NumPy broadcasting (index arithmetic, no views).
Tensor binary(const Tensor& a, const Tensor& b, const std::function<double(double, double)>& f);
// f over the values of each reduced group (in row-major order), for the axes listed (all if empty).
Tensor reduce(const Tensor& x, const Shape& axes, bool keepdim, const std::function<double(const std::vector<double>&)>& f);

// Row-major multi-index of a flat position, and the flat position of a (broadcast) index.
std::vector<std::int64_t> unravel(std::int64_t flat, const Shape& shape);
std::int64_t ravel_broadcast(const std::vector<std::int64_t>& index, const Shape& shape);

}  // namespace tg::test::ref
