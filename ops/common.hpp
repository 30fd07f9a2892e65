// Helpers shared by the op frontends in ops/*.cpp (internal to ops/).
#pragma once

#include <utility>

#include "core/autograd.hpp"
#include "core/tensor.hpp"

namespace tg::ops::detail {

// Checks that `t` is defined; names the op and the argument otherwise.
inline void check_defined(const Tensor& t, const char* op, const char* arg) {
  TG_CHECK(t.defined(), "{}: argument '{}' is an undefined tensor", op, arg);
}

// Converts both operands to one dtype (promoted, or `dtype` when given) and broadcasts them to
// one shape with explicit expand nodes.
std::pair<Tensor, Tensor> broadcast_pair(const Tensor& a, const Tensor& b, const char* op);
std::pair<Tensor, Tensor> broadcast_pair(const Tensor& a, const Tensor& b, const char* op, DType dtype);

}  // namespace tg::ops::detail
