// Optimizers against hand-computed steps, clipping, schedules, EMA.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "core/autograd.hpp"
#include "nn/optim.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
// One parameter w [2], zero at first: for EMA checks.
struct Tiny : nn::Module {
  Tensor w = zeros({2}).requires_grad_();
  void visit(nn::Visitor& v) override { v.param("w", w); }
  std::string type_name() const override { return "Tiny"; }
};
// One parameter of a given name and value: a model that differs from Tiny in either.
struct OneParam : nn::Module {
  OneParam(std::string n, Tensor value) : name(std::move(n)), t(value.requires_grad_()) {}
  void visit(nn::Visitor& v) override { v.param(name, t); }
  std::string type_name() const override { return "OneParam"; }
  std::string name;
  Tensor t;
};

// A parameter with a fixed gradient.
nn::NamedTensor param(std::initializer_list<double> values, DType dtype = DType::f64) {
  return {"p", tensor(values, dtype).requires_grad_()};
}
void set_grad(Tensor& p, std::initializer_list<double> g) { p.set_grad(tensor(g, p.dtype())); }
}  // namespace

TEST_CASE("SGD: plain, momentum, nesterov, weight decay match hand-computed steps", "[nn][optim]") {
  auto p = param({1.0, -2.0});
  nn::SGD sgd({p}, {.lr = 0.1, .momentum = 0.9});
  set_grad(p.tensor, {0.5, 1.0});
  sgd.step();  // b = g; p -= lr b
  CHECK(p.tensor.to_vector<double>() == std::vector<double>{1.0 - 0.05, -2.0 - 0.1});
  sgd.step();  // b = 0.9 b + g
  CHECK(p.tensor.at<double>({0}) == Approx(0.95 - 0.1 * (0.9 * 0.5 + 0.5)).epsilon(1e-15));

  auto q = param({1.0});
  nn::SGD nest({q}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
  set_grad(q.tensor, {0.5});
  nest.step();  // d = g + wd p = 0.51; b = d; d = d + 0.9 b
  CHECK(q.tensor.item() == Approx(1.0 - 0.1 * (0.51 + 0.9 * 0.51)).epsilon(1e-15));

  auto r = param({3.0});
  nn::SGD plain({r}, {.lr = 0.5});
  set_grad(r.tensor, {2.0});
  plain.step();
  CHECK(r.tensor.item() == 2.0);
  CHECK(plain.state().empty());
}

TEST_CASE("Adam and AdamW match hand-computed steps", "[nn][optim]") {
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  for (bool decoupled : {false, true}) {
    auto p = param({0.5, -1.5});
    nn::Adam opt({p}, {.lr = lr, .weight_decay = wd}, decoupled);
    CHECK(opt.type_name() == (decoupled ? "AdamW" : "Adam"));
    double x = 0.5, m = 0, v = 0;
    for (int t = 1; t <= 3; ++t) {
      const double g0 = 0.3 * t;
      set_grad(p.tensor, {g0, -0.2});
      opt.step();
      double g = g0;
      if (decoupled) x *= 1 - lr * wd;
      else g += wd * x;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      const double mhat = m / (1 - std::pow(b1, t)), vhat = v / (1 - std::pow(b2, t));
      x -= lr * mhat / (std::sqrt(vhat) + eps);
      CHECK(p.tensor.at<double>({0}) == Approx(x).epsilon(1e-12));
    }
    CHECK(opt.step_count() == 3);
    CHECK(opt.state().size() == 2);
    CHECK(opt.state()[0].name == "p.exp_avg");
  }
}

TEST_CASE("optimizers: groups, missing gradients, 1 vs N threads", "[nn][optim]") {
  auto a = param({1.0});
  nn::NamedTensor b{"q", tensor({1.0}, DType::f64).requires_grad_()};
  nn::SGD sgd({nn::ParamGroup{{a}, 1.0}, nn::ParamGroup{{b}, 0.5}}, {.lr = 1.0});
  set_grad(a.tensor, {1.0});
  sgd.step();  // b has no gradient: untouched
  CHECK(a.tensor.item() == 0.0);
  CHECK(b.tensor.item() == 1.0);
  set_grad(b.tensor, {1.0});
  sgd.step();
  CHECK(b.tensor.item() == 0.5);

  CHECK(test::same_bits_across_threads([] {
    std::vector<nn::NamedTensor> ps;
    for (int i = 0; i < 5; ++i) {
      Tensor t = test::randn({1000 + 777 * i}, DType::f32, static_cast<std::uint64_t>(i)).requires_grad_();
      t.set_grad(test::randn(t.shape(), DType::f32, static_cast<std::uint64_t>(10 + i)));
      std::string name = "p";  // (not "p" + to_string: GCC 12 -O3 reports a false -Wstringop-overflow)
      name += std::to_string(i);
      ps.push_back({name, t});
    }
    nn::AdamW opt(ps, {.lr = 0.01, .weight_decay = 0.05});
    for (int s = 0; s < 3; ++s) opt.step();
    Tensors out;
    for (auto& p : ps) out.push_back(p.tensor);
    return out;
  }));
  CHECK_THROWS_WITH(nn::SGD({{"x", ones({2}).requires_grad_() * 2.0}}, {}), Contains("must be a floating-point leaf"));
}

TEST_CASE("optimizers: a parameter that misses steps counts only its own updates (as PyTorch)", "[nn][optim]") {
  // b has no gradient in step 1, then gets g2, g3: it must end where a fresh optimizer that only
  // ever saw g2, g3 puts it (Adam's bias correction, SGD's first momentum step with dampening).
  auto check = [](auto make) {
    nn::NamedTensor a = param({0.5, -1.5}), b{"b", tensor({2.0, 0.25}, DType::f64).requires_grad_()};
    auto opt = make(std::vector<nn::NamedTensor>{a, b});
    set_grad(a.tensor, {0.3, -0.2});
    opt.step();
    for (double t : {2.0, 3.0}) {
      set_grad(a.tensor, {0.3 * t, -0.2});
      set_grad(b.tensor, {-0.7 * t, 0.4});
      opt.step();
    }
    CHECK(opt.step_count() == 3);
    CHECK(opt.param_updates(0, 0) == 3);
    CHECK(opt.param_updates(0, 1) == 2);
    CHECK(opt.lagging_params() == std::vector<std::pair<std::string, std::int64_t>>{{"b", 2}});
    auto fresh = param({2.0, 0.25});
    auto alone = make(std::vector<nn::NamedTensor>{fresh});
    for (double t : {2.0, 3.0}) {
      set_grad(fresh.tensor, {-0.7 * t, 0.4});
      alone.step();
    }
    CHECK(b.tensor.to_vector<double>() == fresh.tensor.to_vector<double>());
  };
  check([](std::vector<nn::NamedTensor> ps) { return nn::Adam(ps, {.lr = 0.01, .weight_decay = 0.1}); });
  check([](std::vector<nn::NamedTensor> ps) { return nn::AdamW(ps, {.lr = 0.01, .beta1 = 0.8, .weight_decay = 0.1}); });
  check([](std::vector<nn::NamedTensor> ps) { return nn::SGD(ps, {.lr = 0.1, .momentum = 0.9, .dampening = 0.3}); });
  // PyTorch's defaults: AdamW decays by 0.01 unless told otherwise, Adam not at all.
  CHECK(nn::AdamW(std::vector<nn::NamedTensor>{param({1.0})}).options.weight_decay == 0.01);
  CHECK(nn::AdamW(std::vector<nn::NamedTensor>{param({1.0})}, {.lr = 0.1}).options.weight_decay == 0.01);
  CHECK(nn::Adam(std::vector<nn::NamedTensor>{param({1.0})}, {}).options.weight_decay == 0.0);
  auto p = param({1.0});
  nn::SGD sgd({p}, {.lr = 0.1});
  CHECK_THROWS_WITH(sgd.set_param_updates("p", 1), Contains("cannot have 1 updates after 0 steps"));
  CHECK_THROWS_WITH(sgd.set_param_updates("q", 0), Contains("no parameter named 'q'"));
}

TEST_CASE("gradient clipping, schedules, EMA", "[nn][optim]") {
  Tensor a = ones({3}, DType::f64).requires_grad_(), b = ones({4}, DType::f64).requires_grad_();
  a.set_grad(full({3}, 2.0, DType::f64));
  b.set_grad(full({4}, 2.0, DType::f64));
  const double norm = nn::clip_grad_norm({a, b}, 1.0);
  CHECK(norm == Approx(std::sqrt(7 * 4.0)));
  CHECK(std::sqrt(ops::sum(ops::square(a.grad())).item() + ops::sum(ops::square(b.grad())).item()) == Approx(1.0).epsilon(1e-5));
  CHECK(nn::clip_grad_norm({a, b}, 10.0) == Approx(1.0).epsilon(1e-5));  // below the limit: unchanged
  CHECK(a.grad().at<double>({0}) == Approx(2.0 / std::sqrt(28.0)).epsilon(1e-5));
  // A gradient set as a transposed view (torch: norm 9.5394, each element scaled by 1 / 9.5394).
  Tensor w = zeros({2, 3}, DType::f64).requires_grad_();
  w.set_grad(tensor({1, 2, 3, 4, 5, 6}, DType::f64).reshape({3, 2}).t());  // [[1, 3, 5], [2, 4, 6]]
  CHECK(nn::clip_grad_norm({w}, 1.0) == Approx(std::sqrt(91.0)));
  CHECK(w.grad().at<double>({0, 1}) == Approx(3 / (std::sqrt(91.0) + 1e-6)).epsilon(1e-12));
  CHECK(w.grad().at<double>({1, 0}) == Approx(2 / (std::sqrt(91.0) + 1e-6)).epsilon(1e-12));
  // max_norm 0 zeroes the gradients (as torch); a negative one is refused.
  CHECK(nn::clip_grad_norm({w}, 0.0) == Approx(1.0).epsilon(1e-5));
  CHECK(w.grad().to_vector<double>() == std::vector<double>(6, 0.0));
  CHECK_THROWS_WITH(nn::clip_grad_norm({w}, -1.0), Contains("max_norm must be >= 0, got -1"));

  CHECK(nn::warmup_cosine_schedule(0, 10, 110) == Approx(0.1));
  CHECK(nn::warmup_cosine_schedule(9, 10, 110) == Approx(1.0));
  CHECK(nn::warmup_cosine_schedule(60, 10, 110, 0.1) == Approx(0.55));
  CHECK(nn::warmup_cosine_schedule(110, 10, 110, 0.1) == Approx(0.1));
  CHECK(nn::constant_schedule(5) == 1.0);

  Tiny model;
  nn::EMA ema(model, 0.5);
  {
    NoGradGuard no_grad;
    model.w.fill_(4);
  }
  ema.update(model);  // 0.5 * 0 + 0.5 * 4
  ema.update(model);  // 0.5 * 2 + 0.5 * 4
  Tiny other;
  ema.copy_to(other);
  CHECK(other.w.to_vector<float>() == std::vector<float>{3, 3});
  // Into another model: refused (names, shapes, dtypes as update checks them), the model untouched.
  OneParam wide("w", zeros({3}));
  CHECK_THROWS_WITH(ema.copy_to(wide), Contains("EMA copy_to: 'w' is [3] f32 in the model but [2] f32 in the average"));
  CHECK(wide.t.to_vector<float>() == std::vector<float>{0, 0, 0});
  OneParam renamed("v", zeros({2}));
  CHECK_THROWS_WITH(ema.copy_to(renamed), Contains("tensor 0 is 'v' in the model but 'w' in the average"));
}

TEST_CASE("optimizers refuse what torch refuses, clipping propagates a NaN norm, EMA takes a given decay",
          "[nn][optim][errors]") {
  Tensor p = ones({2}).requires_grad_(), q = ones({2}).requires_grad_();
  // A tensor listed twice would be updated twice per step.
  CHECK_THROWS_WITH(nn::SGD(std::vector<nn::ParamGroup>{{{{"a", p}}}, {{{"b", p}}}}, {.lr = 0.1}),
                    Contains("parameter 'b' is the same tensor as 'a'"));
  CHECK_THROWS_WITH(nn::Adam({{"a", p}, {"tied", p}}, {}), Contains("parameter 'tied' is the same tensor as 'a'"));
  // Names key the saved state: a repeated name is refused at construction, not at the first save.
  CHECK_THROWS_WITH(nn::Adam({{"a", p}, {"a", q}}, {}), Contains("two different parameters are named 'a'"));
  CHECK_THROWS_WITH(nn::SGD(std::vector<nn::ParamGroup>{{{{"w", p}}}, {{{"w", q}}}}, {.lr = 0.1}),
                    Contains("two different parameters are named 'w'"));
  CHECK_THROWS_WITH(nn::SGD({{"p", p}}, {.momentum = -0.5}), Contains("SGD: momentum must be finite and >= 0"));
  CHECK_THROWS_WITH(nn::SGD({{"p", p}}, {.weight_decay = -0.5}), Contains("SGD: weight_decay must be finite and >= 0"));
  CHECK_THROWS_WITH(nn::Adam({{"p", p}}, {.weight_decay = NAN}), Contains("weight_decay must be finite and >= 0"));
  CHECK_THROWS_WITH(nn::SGD(std::vector<nn::ParamGroup>{{.params = {{"p", p}}, .lr_scale = NAN}}, {}),
                    Contains("lr_scale must be finite and >= 0"));
  nn::SGD sgd({{"p", p}, {"q", q}}, {.lr = 0.1});
  CHECK_THROWS_WITH(sgd.set_lr(-1), Contains("learning rate must be finite and >= 0, got -1"));
  CHECK_THROWS_WITH(nn::warmup_cosine_schedule(-3, 10, 100), Contains("warmup_cosine_schedule: expected step, warmup, total >= 0"));
  // A NaN gradient makes the norm NaN and every gradient NaN (torch 1.13), not a silent skip.
  p.set_grad(tensor({NAN, 1}));
  q.set_grad(tensor({1e6, 1e6}));
  CHECK(std::isnan(nn::clip_grad_norm({p, q}, 1.0)));
  for (const float g : q.grad().to_vector<float>()) CHECK(std::isnan(g));
  // EMA::update with this step's decay (the diffusion trainer's warmup ramp).
  Tiny model;
  nn::EMA ema(model, 0.999);
  {
    NoGradGuard no_grad;
    model.w.fill_(4);
  }
  ema.update(model, 0.25);  // 0.25 * 0 + 0.75 * 4
  Tiny other;
  ema.copy_to(other);
  CHECK(other.w.to_vector<float>() == std::vector<float>{3, 3});
  CHECK_THROWS_WITH(ema.update(model, 1.5), Contains("EMA: decay must be in [0, 1], got 1.5"));
}

TEST_CASE("training_diverged names the run, the value and where it happened", "[nn][optim][errors]") {
  using Catch::Matchers::Equals;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(nn::training_diverged("fit", "loss", -nan, "at step 3 (learning rate 0.1)", "try a smaller learning rate."),
                    Equals("fit: training diverged: the loss is nan at step 3 (learning rate 0.1); try a smaller learning rate."));
  CHECK_THROWS_WITH(nn::training_diverged("fit", "test loss", inf, "after step 7", "lower --lr"),
                    Equals("fit: training diverged: the test loss is inf after step 7; lower --lr"));
  CHECK_THROWS_WITH(nn::training_diverged("fit", "loss", -inf, "at step 1", "lower --lr"), Contains("the loss is -inf at step 1"));
  CHECK_THROWS_AS(nn::training_diverged("fit", "loss", nan, "at step 1", ""), Error);
}

TEST_CASE("check_finite_parameters names the first parameter that holds NaN or inf", "[nn][optim][errors]") {
  using Catch::Matchers::Equals;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  OneParam fine("w", tensor({1.0, -2.0}, DType::f32));
  CHECK_NOTHROW(nn::check_finite_parameters(fine, "fit", "after step 1", "lower --lr"));
  OneParam bad("layer.w", tensor({1.0, nan, 3.0, -inf}).narrow(0, 1, 3));  // an offset view: nan first
  CHECK_THROWS_WITH(nn::check_finite_parameters(bad, "experiment", "after step 5 (learning rate 1e+300)", "try a smaller --lr"),
                    Equals("experiment: training diverged: the parameter 'layer.w' is nan after step 5 (learning rate "
                           "1e+300); try a smaller --lr"));
  // A transposed view: the first non-finite element in the view's order, not the storage's.
  OneParam strided("s", tensor({1.0, 2.0, 3.0, inf, -inf, 6.0}).reshape({3, 2}).transpose(0, 1));  // [2, 3]: 1 3 -inf / 2 inf 6
  CHECK(*nn::first_non_finite_value(strided.t) == -inf);
  CHECK_THROWS_WITH(nn::check_finite_parameters(strided, "fit", "after step 1", "x"), Contains("the parameter 's' is -inf"));
  CHECK(!nn::first_non_finite_value(tensor({1.0, 2.0}, DType::i64)));
}
