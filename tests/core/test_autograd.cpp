// The engine: tape order, accumulation, retain_graph, saved-tensor checks, grad mode, deep graphs,
// gradients w.r.t. chosen inputs, custom ops, anomaly mode.
#include <catch2/catch.hpp>

#include <thread>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

// A user-defined op through the public mechanism: y = x^3, dy/dx = 3x^2.
Tensor cube(const Tensor& x) {
  Tensor y;
  {
    NoGradGuard no_grad;  // the forward itself records nothing
    y = x * x * x;
  }
  return autograd::record("cube", {x}, y, [sx = autograd::SavedTensor(x)](const Tensor& gy) {
    const Tensor xv = sx.get();
    return Tensors{gy * xv * xv * 3.0};
  });
}

}  // namespace

TEST_CASE("backward of a simple expression", "[core][autograd]") {
  Tensor x = tensor({1, 2, 3}, DType::f64).requires_grad_();
  Tensor y = ops::sum(x * x + x * 2.0);  // dy/dx = 2x + 2
  CHECK(y.grad_fn() != nullptr);
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, 6, 8});
  CHECK(x.is_leaf());
  CHECK_FALSE(y.is_leaf());
  CHECK_FALSE(y.grad().defined());  // non-leaf gradients are not kept
}

TEST_CASE("diamond graph: a tensor used twice sums both paths", "[core][autograd]") {
  Tensor x = tensor({2}, DType::f64).requires_grad_();
  Tensor a = x * 3.0;
  Tensor b = ops::exp(a);
  Tensor c = a * b;  // d/dx = 3b + 3ab = 3e^{3x}(1 + 3x)
  c.backward();
  const double xv = 2, expect = 3 * std::exp(3 * xv) * (1 + 3 * xv);
  CHECK(x.grad().item() == Approx(expect).epsilon(1e-12));
}

TEST_CASE("gradients accumulate over backward calls, leaves never share a gradient buffer", "[core][autograd]") {
  Tensor x = tensor({1, 2}, DType::f64).requires_grad_();
  Tensor w = tensor({3, 4}, DType::f64).requires_grad_();
  ops::sum(x * w).backward();
  ops::sum(x * w).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{6, 8});
  CHECK(w.grad().to_vector<double>() == std::vector<double>{2, 4});
  x.reset_grad();
  CHECK_FALSE(x.grad().defined());

  Tensor a = zeros({2}, DType::f64).requires_grad_();
  Tensor b = zeros({2}, DType::f64).requires_grad_();
  ops::sum(a + b).backward();  // add passes the same gradient tensor to both inputs
  CHECK(a.grad().storage() != b.grad().storage());
  {
    NoGradGuard no_grad;
    a.grad().fill_(5);
  }
  CHECK(b.grad().to_vector<double>() == std::vector<double>{1, 1});
}

TEST_CASE("retain_graph and the second-backward error", "[core][autograd][errors]") {
  Tensor x = tensor({1, 2}, DType::f64).requires_grad_();
  Tensor y = ops::sum(ops::exp(x));
  y.backward({}, /*retain_graph=*/true);
  y.backward();
  CHECK(x.grad().at<double>({0}) == Approx(2 * std::exp(1.0)));
  CHECK_THROWS_WITH(y.backward(), Contains("a second time") && Contains("retain_graph=true"));
}

TEST_CASE("modifying a saved tensor in place is detected", "[core][autograd][errors]") {
  Tensor x = tensor({1, 2, 3}, DType::f64).requires_grad_();
  Tensor a = x * 2.0;
  Tensor b = a * a;  // saves a
  {
    NoGradGuard no_grad;
    a.fill_(0);  // a does not require grad under no_grad... but it's a saved operand of b
  }
  CHECK_THROWS_WITH(ops::sum(b).backward(),
                    Contains("was modified in place after it was saved") && Contains("in the backward of 'mul'"));
}

TEST_CASE("editing the indices returned by max/min is detected", "[core][autograd][errors]") {
  // The indices are both returned and used by the backward: edited, they would send the gradient
  // to the wrong elements (or out of bounds).
  for (bool zero_d : {false, true}) {
    Tensor x = (zero_d ? tensor({4.0}, DType::f64).reshape({}) : tensor({1, 5, 3, 7, 2, 4}, {2, 3}, DType::f64))
                   .detach()
                   .requires_grad_();
    auto [v, i] = zero_d ? ops::max(x, 0) : ops::min(x, 1);
    i.fill_(1000000000);
    CHECK_THROWS_WITH(ops::sum(v).backward(), Contains("was modified in place after it was saved"));
  }
}

TEST_CASE("copy_ refuses a source that requires grad in grad mode (the copy is not recorded)", "[core][autograd][errors]") {
  Tensor x = tensor({1, 2, 3}, DType::f64).requires_grad_();
  Tensor buf = zeros({3}, DType::f64);
  CHECK_THROWS_WITH(buf.copy_(x * 2.0), Contains("copy_: the source (shape [3]) requires grad"));
  buf.copy_((x * 2.0).detach());  // explicit: fine
  {
    NoGradGuard no_grad;
    buf.copy_(x);  // fine too
  }
  CHECK(buf.to_vector<double>() == std::vector<double>{1, 2, 3});
}

TEST_CASE("a leaf frozen after the forward receives no gradient, as in torch", "[core][autograd]") {
  Tensor x = tensor({1, 2, 3}, DType::f64).requires_grad_();
  Tensor w = tensor({1, 1, 1}, DType::f64).requires_grad_();
  Tensor y = ops::sum(x * w);
  x.requires_grad_(false);
  y.backward();
  CHECK_FALSE(x.grad().defined());
  CHECK(w.grad().to_vector<double>() == std::vector<double>{1, 2, 3});
}

TEST_CASE("a backward that throws a non-tg exception leaves the engine usable", "[core][autograd][errors]") {
  Tensor x = tensor({1, 2}, DType::f64).requires_grad_();
  Tensor bad = autograd::record("throws", {x}, x.detach() * 1.0, [](const Tensor&) -> Tensors { throw std::runtime_error("boom"); });
  CHECK_THROWS_WITH(ops::sum(bad).backward(), Contains("boom"));
  ops::sum(x * 3.0).backward();  // the next backward works normally
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3, 3});
  CHECK_THROWS_WITH(ones({1, 1}).expand({INT64_MAX, INT64_MAX}), Contains("expand: cannot expand shape [1, 1]") &&
                                                                     Contains("more than 2^63 - 1 elements"));
}

TEST_CASE("no_grad records nothing, grad mode is per thread", "[core][autograd]") {
  Tensor x = ones({3}).requires_grad_();
  const auto nodes_before = autograd::live_node_count();
  {
    NoGradGuard no_grad;
    Tensor y = ops::exp(x) * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(autograd::live_node_count() == nodes_before);
    bool other_thread_enabled = false;
    std::thread([&] { other_thread_enabled = grad_enabled(); }).join();
    CHECK(other_thread_enabled);
    {
      EnableGradGuard enable;
      CHECK(ops::exp(x).requires_grad());
    }
  }
  CHECK(grad_enabled());
  CHECK(autograd::live_node_count() == nodes_before);
}

TEST_CASE("graphs are freed: no cycles through saved outputs", "[core][autograd]") {
  const auto base = autograd::live_node_count();
  {
    Tensor x = ones({4}, DType::f64).requires_grad_();
    Tensor y = ops::sum(ops::tanh(ops::exp(x)) * ops::sigmoid(x));  // exp/tanh/sigmoid save their outputs
    CHECK(autograd::live_node_count() > base);
    y.backward();
  }
  CHECK(autograd::live_node_count() == base);
  {
    Tensor x = ones({4}, DType::f64).requires_grad_();
    Tensor y = ops::sum(ops::exp(x));  // never backpropagated
  }
  CHECK(autograd::live_node_count() == base);
}

TEST_CASE("a 100 000-op chain: backward and destruction without recursion", "[core][autograd]") {
  const auto base = autograd::live_node_count();
  Tensor x = tensor({0.5}, DType::f64).requires_grad_();
  {
    Tensor y = x;
    for (int i = 0; i < 100000; ++i) y = y * 1.0;
    CHECK(autograd::live_node_count() - base == 100000);
    y.backward();
    CHECK(x.grad().item() == 1.0);
  }
  {
    Tensor y = x;
    for (int i = 0; i < 100000; ++i) y = y + 0.0;
  }  // destroyed without being backpropagated
  CHECK(autograd::live_node_count() == base);
}

TEST_CASE("autograd::grad: gradients w.r.t. chosen inputs, .grad untouched", "[core][autograd]") {
  Tensor w = tensor({2, 3}, DType::f64).requires_grad_();
  Tensor x = tensor({5, 7}, DType::f64).requires_grad_();
  Tensor h = x * w;         // intermediate
  Tensor y = ops::sum(h * h);  // dy/dh = 2h, dy/dx = 2 h w
  const Tensors g = autograd::grad({y}, {x, h}, {}, /*retain_graph=*/true);
  CHECK(g[0].to_vector<double>() == std::vector<double>{2 * 10 * 2, 2 * 21 * 3});
  CHECK(g[1].to_vector<double>() == std::vector<double>{20, 42});
  // The same leaf or intermediate listed twice: its gradient twice, in separate buffers.
  const Tensors twice = autograd::grad({y}, {x, w, x, h, h}, {}, /*retain_graph=*/true);
  CHECK(twice[0].to_vector<double>() == g[0].to_vector<double>());
  CHECK(twice[2].to_vector<double>() == g[0].to_vector<double>());
  CHECK(twice[1].to_vector<double>() == std::vector<double>{2 * 10 * 5, 2 * 21 * 7});
  CHECK(twice[3].to_vector<double>() == g[1].to_vector<double>());
  CHECK(twice[4].to_vector<double>() == g[1].to_vector<double>());
  CHECK(twice[0].raw_data() != twice[2].raw_data());
  CHECK(twice[3].raw_data() != twice[4].raw_data());  // the intermediate's too (they were one handle)
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(x.grad().defined());
  Tensor unused = ones({1}, DType::f64).requires_grad_();
  CHECK_THROWS_WITH(autograd::grad({y}, {unused}, {}, true), Contains("is not used to compute the outputs"));
  CHECK(autograd::grad({y}, {unused}, {}, true, /*allow_unused=*/true)[0].to_vector<double>() == std::vector<double>{0});
  // Non-scalar output with an explicit cotangent.
  const Tensors gx = autograd::grad({h}, {x}, {tensor({1, -1}, DType::f64)});
  CHECK(gx[0].to_vector<double>() == std::vector<double>{2, -3});
}

TEST_CASE("backward checks its arguments", "[core][autograd][errors]") {
  Tensor x = ones({2, 2}).requires_grad_();
  Tensor y = x * 2.0;
  CHECK_THROWS_WITH(y.backward(), Contains("implied only for a one-element tensor, but tensor 0 has shape [2, 2]"));
  CHECK_THROWS_WITH(y.backward(ones({4})), Contains("gradient 0 has shape [4] but its tensor has shape [2, 2]"));
  CHECK_THROWS_WITH(y.backward(ones({2, 2}, DType::f64)), Contains("dtype f64 but its tensor has dtype f32"));
  CHECK_THROWS_WITH(ones({2}).backward(), Contains("does not require grad"));
  CHECK_THROWS_WITH(y.requires_grad_(), Contains("only leaf tensors can be marked") && Contains("'mul_scalar'"));
  CHECK_THROWS_WITH(arange(3).requires_grad_(), Contains("only floating-point tensors can require gradients"));
  Tensor d = y.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.storage() == y.storage());
}

TEST_CASE("custom op through autograd::record", "[core][autograd][grad][cube]") {
  Tensor x = tensor({1, -2}, DType::f64).requires_grad_();
  Tensor y = cube(x);
  CHECK(y.grad_fn()->name() == "cube");
  ops::sum(y).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3, 12});
  CHECK_GRADCHECK([](const Tensors& v) { return cube(v[0]); }, {test::randn({7}, DType::f64, 3)});

  // A backward that returns a wrongly shaped gradient gets a clear error.
  Tensor z = ones({3}).requires_grad_();
  Tensor bad = autograd::record("bad_op", {z}, ones({3}), [](const Tensor&) { return Tensors{ones({2})}; });
  CHECK_THROWS_WITH(ops::sum(bad).backward(),
                    Contains("backward of 'bad_op'") && Contains("gradient of shape [2] for its input 0 of shape [3]"));
}

TEST_CASE("anomaly mode names the op that produced NaN/Inf", "[core][autograd][anomaly]") {
  Tensor x = tensor({1, -1}, DType::f64).requires_grad_();
  CHECK_NOTHROW(ops::log(x));  // off by default
  {
    autograd::AnomalyModeGuard anomaly;
    CHECK_THROWS_WITH(ops::log(x), Contains("anomaly: 'log'") && Contains("NaN") && Contains("index [1]"));
    Tensor z = tensor({0, 4}, DType::f64).requires_grad_();
    Tensor s = ops::sqrt(z);  // finite forward, infinite gradient at 0
    CHECK_THROWS_WITH(ops::sum(s).backward(), Contains("the backward of 'sqrt'") && Contains("+Inf"));
  }
  CHECK_FALSE(autograd::anomaly_mode());
  // Per thread: another thread's guard neither reaches this thread nor is left switched on.
  {
    autograd::AnomalyModeGuard anomaly;
    bool other_sees = true, other_threw = true;
    std::thread([&] {
      other_sees = autograd::anomaly_mode();
      try {
        ops::log(tensor({0.0}, DType::f64).requires_grad_());
        other_threw = false;
      } catch (const Error&) {
      }
    }).join();
    CHECK_FALSE(other_sees);
    CHECK_FALSE(other_threw);
  }
}

TEST_CASE("backward passes on several threads accumulate into one leaf without losing any", "[core][autograd][threads]") {
  constexpr int kThreads = 4, kIters = 2000;
  Tensor w = zeros({16}, DType::f64).requires_grad_();
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&] {
      for (int i = 0; i < kIters; ++i) ops::sum(w * 1.0).backward();
    });
  for (std::thread& t : pool) t.join();
  CHECK(w.grad().to_vector<double>() == std::vector<double>(16, kThreads * kIters));
}

TEST_CASE("num_threads reports the limit set_num_threads sets", "[core][threads]") {
  const int all = num_threads();
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(0);
  CHECK(num_threads() == all);
}
