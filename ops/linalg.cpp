// Matrix products: frontends and backward rules on top of kernels::gemm.
#include "ops/linalg.hpp"

#include <optional>

#include "core/autograd.hpp"
#include "core/copy.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/kernels/gemm.hpp"
#include "ops/reduce.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

template <class T>
kernels::ConstMatrix<T> in_matrix(const Tensor& t) {  // the last two dims of t
  return {t.data<T>(), t.strides()[t.dim() - 2], t.strides()[t.dim() - 1]};
}
template <class T>
kernels::Matrix<T> out_matrix(const Tensor& t) {
  return {t.data<T>(), t.strides()[t.dim() - 2], t.strides()[t.dim() - 1]};
}

// The single stride that walks the flattened batch dims of t (all dims but the last two), if one
// exists: size-1 dims are free, expanded dims have stride 0 throughout.
std::optional<std::int64_t> batch_stride(const Tensor& t) {
  std::optional<std::int64_t> stride;
  std::int64_t inner_size = 1;  // elements of the batch dims already walked (innermost first)
  for (int d = t.dim() - 3; d >= 0; --d) {
    const std::int64_t n = t.shape()[d], s = t.strides()[d];
    if (n == 1) continue;
    if (!stride) {
      stride = s;
    } else if (s != *stride * inner_size) {
      return std::nullopt;
    }
    inner_size *= n;
  }
  return stride.value_or(0);
}

// C = A·B over matching batch dims (A [..., M, K], B [..., K, N]); accumulate adds into C.
void batched_gemm(const Tensor& a_in, const Tensor& b_in, const Tensor& c, bool accumulate) {
  Tensor a = a_in, b = b_in;
  auto sa = batch_stride(a), sb = batch_stride(b);
  if (!sa) {
    a = a.contiguous();
    sa = batch_stride(a);
  }
  if (!sb) {
    b = b.contiguous();
    sb = batch_stride(b);
  }
  const std::int64_t M = a.shape()[a.dim() - 2], K = a.shape()[a.dim() - 1], N = b.shape()[b.dim() - 1];
  std::int64_t batch = 1;
  for (int d = 0; d < c.dim() - 2; ++d) batch *= c.shape()[d];
  const std::int64_t sc = M * N;  // c is always a fresh contiguous tensor here
  dispatch_float(c.dtype(), "matmul", [&]<class T>() {
    if (batch == 1) {
      kernels::gemm(M, N, K, in_matrix<T>(a), in_matrix<T>(b), out_matrix<T>(c), accumulate);
    } else {
      kernels::gemm_batched(batch, M, N, K, in_matrix<T>(a), *sa, in_matrix<T>(b), *sb, out_matrix<T>(c), sc, accumulate);
    }
  });
}

Tensor product(const Tensor& a, const Tensor& b) {  // fresh contiguous A·B, no recording
  Shape shape = a.shape();
  shape[shape.size() - 1] = b.shape()[b.dim() - 1];
  Tensor c = empty(shape, a.dtype());
  batched_gemm(a, b, c, false);
  return c;
}

DType common_float_dtype(const char* op, const Tensor& a, const Tensor& b) {
  TG_CHECK(a.is_floating_point() && b.is_floating_point(), "{}: expected floating-point operands, got {} and {}", op,
           a.dtype(), b.dtype());
  return promote(a.dtype(), b.dtype());
}

// The recorded product of operands with equal batch shapes: [..., M, K] · [..., K, N].
Tensor batched_matmul(const char* op, const Tensor& a, const Tensor& b) {
  Tensor c = product(a, b);
  return record(op, {a, b}, c, [sa = SavedTensor(a), sb = SavedTensor(b)](const Tensor& g) {
    Tensor ga, gb;
    if (input_needs_grad(0)) ga = product(g, sb.get().transpose(-1, -2));  // dA = dC · B^T
    if (input_needs_grad(1)) gb = product(sa.get().transpose(-1, -2), g);  // dB = A^T · dC
    return Tensors{ga, gb};
  });
}

}  // namespace

namespace {
// The number of rows when every dim but the last is folded into one (also when the last is 0,
// where reshape({-1, 0}) would be ambiguous).
std::int64_t leading_rows(const Shape& shape) {
  std::int64_t rows = 1;
  for (int d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  return rows;
}
}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  check_defined(a_in, "matmul", "a");
  check_defined(b_in, "matmul", "b");
  TG_CHECK(a_in.dim() >= 1 && b_in.dim() >= 1, "matmul: operands must have at least one dim, got shapes {} and {}",
           a_in.shape(), b_in.shape());
  const DType dt = common_float_dtype("matmul", a_in, b_in);
  const Tensor a = a_in.to(dt), b = b_in.to(dt);
  if (a.dim() == 1 && b.dim() == 1) {
    TG_CHECK(a.shape()[0] == b.shape()[0], "matmul: dot product of vectors of sizes {} and {}", a.shape()[0], b.shape()[0]);
    return matmul(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  }
  if (a.dim() == 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul(a, b.unsqueeze(-1)).squeeze(-1);
  const std::int64_t K = a.shape()[a.dim() - 1];
  TG_CHECK(K == b.shape()[b.dim() - 2],
           "matmul: shapes {} and {} do not match: the last dim of a ({}) must equal the second-to-last dim of b ({})",
           a.shape(), b.shape(), K, b.shape()[b.dim() - 2]);
  if (b.dim() == 2 && a.dim() > 2) {  // fold the batch into the rows: one large GEMM
    Shape out_shape = a.shape();
    out_shape[out_shape.size() - 1] = b.shape()[1];
    return batched_matmul("matmul", a.reshape({leading_rows(a.shape()), K}), b).reshape(out_shape);
  }
  if (a.dim() == 2 && b.dim() == 2) return batched_matmul("matmul", a, b);
  // Broadcast the batch dims with explicit expand nodes.
  Shape a_batch(std::span<const std::int64_t>(a.shape().begin(), a.shape().end() - 2));
  Shape b_batch(std::span<const std::int64_t>(b.shape().begin(), b.shape().end() - 2));
  Shape batch;
  try {
    batch = broadcast_shapes(a_batch, b_batch, "matmul");
  } catch (const Error&) {
    TG_FAIL("matmul: the batch dims of a (shape {}) and b (shape {}), {} and {}, cannot be broadcast", a.shape(), b.shape(),
            a_batch, b_batch);
  }
  Shape ae = batch, be = batch;
  ae.push_back(a.shape()[a.dim() - 2]);
  ae.push_back(K);
  be.push_back(K);
  be.push_back(b.shape()[b.dim() - 1]);
  return batched_matmul("matmul", a.expand(ae), b.expand(be));
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  check_defined(a, "bmm", "a");
  check_defined(b, "bmm", "b");
  TG_CHECK(a.dim() == 3 && b.dim() == 3, "bmm: expected 3-D operands [B, M, K] and [B, K, N], got shapes {} and {}",
           a.shape(), b.shape());
  TG_CHECK(a.shape()[0] == b.shape()[0] && a.shape()[2] == b.shape()[1],
           "bmm: shapes {} and {} do not match (batch {} vs {}, inner {} vs {})", a.shape(), b.shape(), a.shape()[0],
           b.shape()[0], a.shape()[2], b.shape()[1]);
  const DType dt = common_float_dtype("bmm", a, b);
  return batched_matmul("matmul", a.to(dt), b.to(dt));
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_defined(x, "linear", "x");
  check_defined(weight, "linear", "weight");
  TG_CHECK(weight.dim() == 2, "linear: weight must be [out_features, in_features], got shape {}", weight.shape());
  TG_CHECK(x.dim() >= 1 && x.shape()[x.dim() - 1] == weight.shape()[1],
           "linear: the last dim of x (shape {}) must equal in_features of weight (shape {})", x.shape(), weight.shape());
  TG_CHECK(x.dtype() == weight.dtype() && x.is_floating_point(), "linear: x is {} but weight is {}", x.dtype(),
           weight.dtype());
  const std::int64_t K = weight.shape()[1], N = weight.shape()[0];
  if (bias.defined()) {
    TG_CHECK(bias.shape() == Shape{N}, "linear: bias must have shape [{}], got {}", N, bias.shape());
    TG_CHECK(bias.dtype() == x.dtype(), "linear: bias is {} but x is {}", bias.dtype(), x.dtype());
  }
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = N;
  const Tensor x2 = x.reshape({leading_rows(x.shape()), K});
  const std::int64_t R = x2.shape()[0];
  Tensor y = empty({R, N}, x.dtype());
  if (bias.defined()) tg::detail::copy_into(y, bias.detach().expand({R, N}));  // the GEMM accumulates onto it
  batched_gemm(x2.detach(), weight.detach().t(), y, bias.defined());
  Tensors inputs{x2, weight};
  if (bias.defined()) inputs.push_back(bias);
  y = record("linear", inputs, y, [sx = SavedTensor(x2), sw = SavedTensor(weight), has_bias = bias.defined()](const Tensor& g) {
    Tensors grads(has_bias ? 3 : 2);
    if (input_needs_grad(0)) grads[0] = product(g, sw.get());                   // dx = dy · W
    if (input_needs_grad(1)) grads[1] = product(g.t(), sx.get());               // dW = dy^T · x
    if (has_bias && input_needs_grad(2)) grads[2] = sum(g, {0});                // db = column sums
    return grads;
  });
  return y.reshape(out_shape);
}

Tensor pairwise_sq_distances(const Tensor& a, const Tensor& b) {
  check_defined(a, "pairwise_sq_distances", "a");
  check_defined(b, "pairwise_sq_distances", "b");
  TG_CHECK(a.dim() == 2 && b.dim() == 2 && a.shape()[1] == b.shape()[1],
           "pairwise_sq_distances: expected a [N, D] and b [M, D], got shapes {} and {}", a.shape(), b.shape());
  const Tensor aa = sum(square(a), {1}, true);                  // [N, 1]
  const Tensor bb = sum(square(b), {1}, true).t();              // [1, M]
  const Tensor ab = matmul(a, b.t());                           // [N, M]
  return clamp(aa - ab * 2.0 + bb, 0.0, std::nullopt);          // [N, M]
}

Tensor outer(const Tensor& u, const Tensor& v) {
  check_defined(u, "outer", "u");
  check_defined(v, "outer", "v");
  TG_CHECK(u.dim() == 1 && v.dim() == 1, "outer: expected 1-D operands, got shapes {} and {}", u.shape(), v.shape());
  return mul(u.unsqueeze(1), v.unsqueeze(0));
}

}  // namespace tg::ops
