#include "ops/monarch.hpp"

#include <array>

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"

namespace tg::ops {
using detail::check_defined;
namespace {
// Checks the factor shapes w1 [K, J, I], w2 [J, Lo, K] (and their dtype) and returns {K, J, I, Lo}.
std::array<std::int64_t, 4> factor_sizes(const char* op, const Tensor& w1, const Tensor& w2) {
  check_defined(w1, op, "w1");
  check_defined(w2, op, "w2");
  TG_CHECK(w1.dim() == 3 && w2.dim() == 3, "{}: expected factors w1 [K, J, I] and w2 [J, Lo, K], got {} and {}", op, w1.shape(),
           w2.shape());
  const std::int64_t K = w1.shape()[0], J = w1.shape()[1], I = w1.shape()[2], Lo = w2.shape()[1];
  TG_CHECK(w2.shape()[0] == J && w2.shape()[2] == K, "{}: w2 must be [J = {}, Lo, K = {}] for w1 {}, got {}", op, J, K,
           w1.shape(), w2.shape());
  TG_CHECK(w1.is_floating_point() && w1.dtype() == w2.dtype(), "{}: expected factors of one floating-point dtype, got {} and {}",
           op, w1.dtype(), w2.dtype());
  return {K, J, I, Lo};
}
}  // namespace

Tensor monarch_matmul(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  const auto [K, J, I, Lo] = factor_sizes("monarch_matmul", w1, w2);
  check_defined(x, "monarch_matmul", "x");
  TG_CHECK(x.dim() >= 1 && x.shape()[x.dim() - 1] == K * I, "monarch_matmul: x must end in K*I = {} features for w1 {}, got {}",
           K * I, w1.shape(), x.shape());
  TG_CHECK(x.dtype() == w1.dtype(), "monarch_matmul: x is {} but the factors are {}", x.dtype(), w1.dtype());
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = Lo * J;
  std::int64_t B = 1;  // rows: the product of the leading dims
  for (std::int64_t d = 0; d + 1 < x.dim(); ++d) B *= x.shape()[d];
  const Tensor xb = x.reshape({B, K, I}).transpose(0, 1);        // [K, B, I]
  const Tensor h = bmm(xb, w1.transpose(1, 2));                   // [K, B, J]
  const Tensor y = bmm(h.permute({2, 1, 0}), w2.transpose(1, 2));  // [J, B, Lo]
  return y.permute({1, 2, 0}).reshape(out_shape);                 // [B, Lo, J] -> [..., Lo*J]
}

Tensor monarch_dense(const Tensor& w1, const Tensor& w2) {
  const auto [K, J, I, Lo] = factor_sizes("monarch_dense", w1, w2);
  // W[(l, j), (k, i)] = w2[j, l, k] w1[k, j, i]: a broadcast product over [Lo, J, K, I].
  const Tensor a = w2.permute({1, 0, 2}).unsqueeze(3);  // [Lo, J, K, 1]
  const Tensor b = w1.permute({1, 0, 2}).unsqueeze(0);  // [1, J, K, I]
  return mul(a, b).reshape({Lo * J, K * I});
}

}  // namespace tg::ops
