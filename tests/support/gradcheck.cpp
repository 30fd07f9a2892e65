#include "tests/support/gradcheck.hpp"

#include <cmath>
#include <set>

#include "core/autograd.hpp"
#include "core/random.hpp"

namespace tg::test {
namespace {

// Names of the ops on the graph of `outputs` (for the failure report).
std::string graph_ops(const Tensors& outputs) {
  std::set<std::string> names;
  std::vector<const Node*> stack;
  std::set<const Node*> seen;
  for (const Tensor& o : outputs)
    if (o.defined() && o.grad_fn()) stack.push_back(o.grad_fn().get());
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    names.insert(n->name());
    for (const auto& e : n->next_edges())
      if (e.node) stack.push_back(e.node.get());
  }
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

double dot(const Tensors& ys, const Tensors& vs) {
  double total = 0;
  for (std::size_t k = 0; k < ys.size(); ++k) {
    const std::vector<double> y = ys[k].to_vector<double>(), v = vs[k].to_vector<double>();
    for (std::size_t i = 0; i < y.size(); ++i) total += y[i] * v[i];
  }
  return total;
}

std::string index_of(const Shape& shape, std::int64_t linear) {
  Shape idx = Shape::filled(shape.size(), 0);
  for (int d = shape.size() - 1; d >= 0; --d) {
    idx[d] = linear % shape[d];
    linear /= shape[d];
  }
  return fmt::format("{}", idx);
}

}  // namespace

GradcheckResult gradcheck(const std::function<Tensors(const Tensors&)>& f, Tensors inputs,
                          const GradcheckOptions& opt) {
  GradcheckResult result;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    Tensor& x = inputs[i];
    TG_CHECK(x.defined() && x.dtype() == DType::f64 && x.is_leaf(),
             "gradcheck: input {} must be a defined f64 leaf", i);
    for (int d = 0; d < x.dim(); ++d)
      TG_CHECK(x.strides()[d] != 0 || x.shape()[d] <= 1, "gradcheck: input {} is expanded (stride 0 in dim {})", i, d);
    x.requires_grad_(true);
  }

  // Analytic: v^T J through the tape.
  const Tensors ys = f(inputs);
  Tensors vs;
  Generator gen(opt.seed);
  for (const Tensor& y : ys) {
    TG_CHECK(y.dtype() == DType::f64, "gradcheck: outputs must be f64, got {}", y.dtype());
    vs.push_back(randn(y.shape(), DType::f64, gen));
  }
  const std::string ops = graph_ops(ys);
  Tensors analytic;
  {
    Tensors roots, seeds;
    for (std::size_t k = 0; k < ys.size(); ++k)
      if (ys[k].requires_grad()) {
        roots.push_back(ys[k]);
        seeds.push_back(vs[k]);
      }
    if (roots.empty()) {
      for (const Tensor& x : inputs) analytic.push_back(zeros_like(x));
    } else {
      analytic = autograd::grad(roots, inputs, seeds, false, /*allow_unused=*/true);
    }
  }

  // Numeric: central differences of <v, f(x)>, perturbing one stored element at a time.
  double worst_excess = -INFINITY;
  std::string worst;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    const std::vector<double> a = analytic[i].to_vector<double>();
    for (std::int64_t j = 0; j < x.numel(); ++j) {
      // Address of logical element j in storage.
      std::int64_t off = x.offset(), rem = j;
      for (int d = x.dim() - 1; d >= 0; --d) {
        off += (rem % x.shape()[d]) * x.strides()[d];
        rem /= x.shape()[d];
      }
      double* p = static_cast<double*>(x.storage()->data()) + off;
      const double orig = *p;
      double f_plus, f_minus;
      {
        NoGradGuard no_grad;
        *p = orig + opt.eps;
        f_plus = dot(f(inputs), vs);
        *p = orig - opt.eps;
        f_minus = dot(f(inputs), vs);
        *p = orig;
      }
      const double numeric = (f_plus - f_minus) / (2 * opt.eps);
      const double err = std::fabs(a[static_cast<std::size_t>(j)] - numeric);
      const double tol = opt.atol + opt.rtol * std::fabs(numeric);
      const double excess = err <= tol ? err - tol : (std::isnan(err) ? INFINITY : err - tol);
      if (excess > worst_excess) {  // remember the worst element (the closest call when all pass)
        worst_excess = excess;
        worst = fmt::format("input {} (shape {}) element {}: analytic {:.10g} vs numeric {:.10g} (|diff| {:.3g}, "
                            "tolerance {:.3g})",
                            i, x.shape(), index_of(x.shape(), j), a[static_cast<std::size_t>(j)], numeric, err, tol);
      }
    }
  }
  result.ok = worst_excess <= 0;
  result.message = fmt::format("gradcheck {} (ops: {}); worst {}", result.ok ? "passed" : "FAILED", ops,
                               worst.empty() ? std::string("(no elements)") : worst);
  for (Tensor& x : inputs) x.requires_grad_(false);
  return result;
}

GradcheckResult gradcheck(const std::function<Tensor(const Tensors&)>& f, Tensors inputs,
                          const GradcheckOptions& options) {
  return gradcheck([&](const Tensors& in) { return Tensors{f(in)}; }, std::move(inputs), options);
}

}  // namespace tg::test
