// f64 finite-difference gradient checking.
//
// gradcheck(f, inputs) compares the vector-Jacobian product that backward computes for a random
// cotangent v with central differences of <v, f(x)>:
//     analytic_j = (v^T J)_j            numeric_j = (<v, f(x + eps e_j)> - <v, f(x - eps e_j)>) / (2 eps)
// for every element j of every input. A random cotangent (not sum()) catches transposed and
// symmetric mistakes. Inputs may be non-contiguous leaves (transposed, sliced), but not expanded
// (stride 0), since perturbing one stored element would move several logical ones.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/tensor.hpp"

namespace tg::test {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  std::uint64_t seed = 1234;  // for the cotangent
};

struct GradcheckResult {
  bool ok = true;
  std::string message;  // the worst element: input, index, analytic vs numeric, and the ops involved
};

// f maps the inputs to one or more outputs (all f64). Every input must be an f64 leaf; the
// function marks them requires_grad itself.
GradcheckResult gradcheck(const std::function<Tensors(const Tensors&)>& f, Tensors inputs,
                          const GradcheckOptions& options = {});
GradcheckResult gradcheck(const std::function<Tensor(const Tensors&)>& f, Tensors inputs,
                          const GradcheckOptions& options = {});

}  // namespace tg::test

// Catch2 helper: CHECK_GRADCHECK(f, inputs) fails with the report when the check fails.
#define CHECK_GRADCHECK(...)                                     \
  do {                                                           \
    const auto tg_gc_result = ::tg::test::gradcheck(__VA_ARGS__); \
    INFO(tg_gc_result.message);                                  \
    CHECK(tg_gc_result.ok);                                      \
  } while (false)
