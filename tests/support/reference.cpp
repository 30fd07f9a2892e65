#include "tests/support/reference.hpp"

namespace tg::test::ref {

std::vector<std::int64_t> unravel(std::int64_t flat, const Shape& shape) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(shape.size()));
  for (int d = shape.size() - 1; d >= 0; --d) {
    idx[static_cast<std::size_t>(d)] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

// `index` addresses a tensor of a larger (broadcast) rank; `shape` is right-aligned against it
// and its size-1 dims repeat.
std::int64_t ravel_broadcast(const std::vector<std::int64_t>& index, const Shape& shape) {
  const int lead = static_cast<int>(index.size()) - shape.size();
  std::int64_t flat = 0;
  for (int d = 0; d < shape.size(); ++d) {
    const std::int64_t i = shape[d] == 1 ? 0 : index[static_cast<std::size_t>(d + lead)];
    flat = flat * shape[d] + i;
  }
  return flat;
}

Tensor unary(const Tensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = f(e);
  return from_vector(v, x.shape());
}

Tensor binary(const Tensor& a, const Tensor& b, const std::function<double(double, double)>& f) {
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), "ref::binary");
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(static_cast<std::size_t>(shape.numel()));
  for (std::int64_t i = 0; i < shape.numel(); ++i) {
    const auto idx = unravel(i, shape);
    out[static_cast<std::size_t>(i)] = f(va[static_cast<std::size_t>(ravel_broadcast(idx, a.shape()))],
                                         vb[static_cast<std::size_t>(ravel_broadcast(idx, b.shape()))]);
  }
  return from_vector(out, shape);
}

Tensor reduce(const Tensor& x, const Shape& axes, bool keepdim, const std::function<double(const std::vector<double>&)>& f) {
  std::vector<bool> reduced(static_cast<std::size_t>(x.dim()), axes.empty());
  for (std::int64_t a : axes) reduced[static_cast<std::size_t>(a < 0 ? a + x.dim() : a)] = true;
  Shape out_shape, kept_shape;
  for (int d = 0; d < x.dim(); ++d) {
    if (!reduced[static_cast<std::size_t>(d)]) {
      out_shape.push_back(x.shape()[d]);
      kept_shape.push_back(x.shape()[d]);
    } else if (keepdim) {
      out_shape.push_back(1);
    }
  }
  const std::vector<double> v = x.to_vector<double>();
  std::vector<std::vector<double>> groups(static_cast<std::size_t>(kept_shape.numel()));
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const auto idx = unravel(i, x.shape());
    std::int64_t k = 0;
    for (int d = 0; d < x.dim(); ++d)
      if (!reduced[static_cast<std::size_t>(d)]) k = k * x.shape()[d] + idx[static_cast<std::size_t>(d)];
    groups[static_cast<std::size_t>(k)].push_back(v[static_cast<std::size_t>(i)]);
  }
  std::vector<double> out;
  for (const auto& g : groups) out.push_back(f(g));
  return from_vector(out, out_shape);
}

}  // namespace tg::test::ref
