// Elementwise ops: forward vs naive f64 references, f64 gradchecks (broadcast, non-contiguous and
// odd sizes), 1-vs-N-thread bit equality, dtype rules, extreme inputs and error messages.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <limits>
#include <numbers>
#include <utility>
#include <vector>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  double lo = -3, hi = 3;  // input domain
};

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::numbers::sqrt2)); }
double gelu_tanh_ref(double x) {
  const double k = std::sqrt(2 / std::numbers::pi);
  return 0.5 * x * (1 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }

std::vector<UnaryCase> unary_cases() {
  return {
      {"exp", ops::exp, [](double x) { return std::exp(x); }},
      {"log", ops::log, [](double x) { return std::log(x); }, 0.1, 5},
      {"log1p", ops::log1p, [](double x) { return std::log1p(x); }, -0.5, 5},
      {"expm1", ops::expm1, [](double x) { return std::expm1(x); }},
      {"sqrt", ops::sqrt, [](double x) { return std::sqrt(x); }, 0.1, 5},
      {"rsqrt", ops::rsqrt, [](double x) { return 1 / std::sqrt(x); }, 0.1, 5},
      {"square", ops::square, [](double x) { return x * x; }},
      {"reciprocal", ops::reciprocal, [](double x) { return 1 / x; }, 0.2, 5},
      {"abs", ops::abs, [](double x) { return std::fabs(x); }},
      {"sign", ops::sign, [](double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }},
      {"neg", ops::neg, [](double x) { return -x; }},
      {"sin", ops::sin, [](double x) { return std::sin(x); }},
      {"cos", ops::cos, [](double x) { return std::cos(x); }},
      {"tanh", ops::tanh, [](double x) { return std::tanh(x); }},
      {"tan", ops::tan, [](double x) { return std::tan(x); }, -1.3, 1.3},
      {"asin", ops::asin, [](double x) { return std::asin(x); }, -0.95, 0.95},
      {"acos", ops::acos, [](double x) { return std::acos(x); }, -0.95, 0.95},
      {"atan", ops::atan, [](double x) { return std::atan(x); }, -5, 5},
      {"sinh", ops::sinh, [](double x) { return std::sinh(x); }},
      {"cosh", ops::cosh, [](double x) { return std::cosh(x); }},
      {"log2", ops::log2, [](double x) { return std::log2(x); }, 0.1, 5},
      {"log10", ops::log10, [](double x) { return std::log10(x); }, 0.1, 5},
      {"erf", ops::erf, [](double x) { return std::erf(x); }},
      {"round", ops::round, [](double x) { return std::nearbyint(x); }},
      {"floor", ops::floor, [](double x) { return std::floor(x); }},
      {"ceil", ops::ceil, [](double x) { return std::ceil(x); }},
      {"sigmoid", ops::sigmoid, sigmoid_ref},
      {"relu", ops::relu, [](double x) { return x > 0 ? x : 0.0; }},
      {"leaky_relu", [](const Tensor& x) { return ops::leaky_relu(x, 0.2); }, [](double x) { return x > 0 ? x : 0.2 * x; }},
      {"gelu", [](const Tensor& x) { return ops::gelu(x); }, gelu_ref},
      {"gelu_tanh", [](const Tensor& x) { return ops::gelu(x, ops::GeluApprox::tanh); }, gelu_tanh_ref},
      {"silu", ops::silu, [](double x) { return x * sigmoid_ref(x); }},
      {"softplus", [](const Tensor& x) { return ops::softplus(x); }, [](double x) { return std::log1p(std::exp(x)); }},
      {"softplus_beta", [](const Tensor& x) { return ops::softplus(x, 2.0, 3.0); },
       [](double x) { return 2 * x > 3 ? x : std::log1p(std::exp(2 * x)) / 2; }},
      {"logsigmoid", ops::logsigmoid, [](double x) { return -std::log1p(std::exp(-x)); }, -8, 8},
      {"elu", [](const Tensor& x) { return ops::elu(x); }, [](double x) { return x > 0 ? x : std::expm1(x); }},
      {"elu_alpha", [](const Tensor& x) { return ops::elu(x, 0.3); }, [](double x) { return x > 0 ? x : 0.3 * std::expm1(x); }},
      {"selu", ops::selu, [](double x) { return 1.0507009873554804934 * (x > 0 ? x : 1.6732632423543772848 * std::expm1(x)); }},
      {"mish", ops::mish, [](double x) { return x * std::tanh(std::log1p(std::exp(x))); }, -6, 6},
      {"hardtanh", [](const Tensor& x) { return ops::hardtanh(x); }, [](double x) { return std::clamp(x, -1.0, 1.0); }},
      {"hardtanh_range", [](const Tensor& x) { return ops::hardtanh(x, -0.5, 2.0); }, [](double x) { return std::clamp(x, -0.5, 2.0); }},
      {"relu6", ops::relu6, [](double x) { return std::clamp(x, 0.0, 6.0); }, -2, 8},
      {"hardsigmoid", ops::hardsigmoid, [](double x) { return std::clamp(x + 3, 0.0, 6.0) / 6; }, -5, 5},
      {"hardswish", ops::hardswish, [](double x) { return x * std::clamp(x + 3, 0.0, 6.0) / 6; }, -5, 5},
      {"clamp", [](const Tensor& x) { return ops::clamp(x, -1.0, 0.5); }, [](double x) { return std::clamp(x, -1.0, 0.5); }},
      {"clamp_min", [](const Tensor& x) { return ops::clamp(x, 0.0, std::nullopt); }, [](double x) { return std::max(x, 0.0); }},
      {"pow_scalar_3", [](const Tensor& x) { return ops::pow(x, 3.0); }, [](double x) { return x * x * x; }},
      {"pow_scalar_-2", [](const Tensor& x) { return ops::pow(x, -2.0); }, [](double x) { return 1 / (x * x); }, 0.3, 3},
      {"pow_scalar_2.5", [](const Tensor& x) { return ops::pow(x, 2.5); }, [](double x) { return std::pow(x, 2.5); }, 0.1, 3},
      {"pow_scalar_0.5", [](const Tensor& x) { return ops::pow(x, 0.5); }, [](double x) { return std::sqrt(x); }, 0.1, 3},
      {"add_scalar", [](const Tensor& x) { return x + 1.5; }, [](double x) { return x + 1.5; }},
      {"sub_scalar", [](const Tensor& x) { return x - 1.5; }, [](double x) { return x - 1.5; }},
      {"rsub_scalar", [](const Tensor& x) { return 1.5 - x; }, [](double x) { return 1.5 - x; }},
      {"mul_scalar", [](const Tensor& x) { return x * -2.5; }, [](double x) { return x * -2.5; }},
      {"div_scalar", [](const Tensor& x) { return x / 4.0; }, [](double x) { return x / 4.0; }},
      {"rdiv_scalar", [](const Tensor& x) { return 3.0 / x; }, [](double x) { return 3.0 / x; }, 0.2, 4},
  };
}

const Shape kOddSizes[] = {{1}, {7}, {17}, {1003}};

}  // namespace

TEST_CASE("unary ops: forward matches the f64 reference (f32 and f64, odd sizes, strided)", "[ops][elementwise]") {
  for (const UnaryCase& c : unary_cases()) {
    INFO(c.name);
    for (const Shape& s : kOddSizes) {
      const Tensor x64 = test::uniform(s, c.lo, c.hi, DType::f64, 3);
      CHECK_ALLCLOSE(c.op(x64), test::ref::unary(x64, c.ref), 1e-12, 1e-14);
      const Tensor x32 = x64.to(DType::f32);
      const Tensor y32 = c.op(x32);
      CHECK(y32.dtype() == DType::f32);
      CHECK_ALLCLOSE(y32, test::ref::unary(x32, c.ref), 1e-5, 1e-6);
    }
    const Tensor xt = test::transposed_layout(test::uniform({5, 9}, c.lo, c.hi, DType::f32, 4));
    CHECK_ALLCLOSE(c.op(xt), test::ref::unary(xt, c.ref), 1e-5, 1e-6);
    const Tensor xs = test::strided_layout(test::uniform({3, 33}, c.lo, c.hi, DType::f32, 5));
    CHECK_ALLCLOSE(c.op(xs), test::ref::unary(xs, c.ref), 1e-5, 1e-6);
  }
}

TEST_CASE("unary ops: gradcheck",
          "[ops][elementwise][grad][exp][log][log1p][expm1][sqrt][rsqrt][square][reciprocal][abs][sign][neg][sin][cos]"
          "[tanh][tan][asin][acos][atan][sinh][cosh][log2][log10][erf][round][floor][ceil][sigmoid][relu][leaky_relu][gelu]"
          "[gelu_tanh][silu][softplus][logsigmoid][elu][selu][mish][hardtanh][hardsigmoid][hardswish][clamp]"
          "[pow_scalar][add_scalar][sub_scalar][rsub_scalar][mul_scalar][div_scalar][rdiv_scalar]") {
  for (const UnaryCase& c : unary_cases()) {
    INFO(c.name);
    auto f = [&](const Tensors& v) { return c.op(v[0]); };
    for (const Shape& s : kOddSizes) CHECK_GRADCHECK(f, {test::uniform(s, c.lo, c.hi, DType::f64, 6)});
    CHECK_GRADCHECK(f, {test::transposed_layout(test::uniform({4, 5}, c.lo, c.hi, DType::f64, 7))});
    CHECK_GRADCHECK(f, {test::strided_layout(test::uniform({2, 9}, c.lo, c.hi, DType::f64, 8))});
  }
}

TEST_CASE("elementwise ops on large transposed inputs (read in tiles) give the same bits", "[ops][elementwise]") {
  // [201, 300]: partial 128 x 128 tiles on both edges, rows of 300 (not a multiple of the SIMD width).
  const Tensor x = test::uniform({300, 201}, 0.2, 2, DType::f32, 30), y = test::uniform({201, 300}, 0.2, 2, DType::f32, 31);
  const Tensor z = test::uniform({300, 201}, 0.2, 2, DType::f32, 32);
  const Tensor xt = x.t(), xc = xt.contiguous();  // [201, 300], transposed layout and its copy
  const Tensor zt = z.t(), zc = zt.contiguous();
  CHECK(test::same_bits(ops::exp(xt), ops::exp(xc)));
  CHECK(test::same_bits(ops::mul(xt, y), ops::mul(xc, y)));
  CHECK(test::same_bits(ops::mul(xt, zt), ops::mul(xc, zc)));  // both transposed: both read in tiles
  CHECK(test::same_bits(ops::div(xt, xt.flip({0})), ops::div(xc, xc.flip({0}))));
  CHECK(test::same_bits(ops::sub(xt.flip({1}), zt), ops::sub(xc.flip({1}), zc)));  // tiled with a negative stride
  // f64 (8-byte elements through the 8 x 8 register transposes).
  const Tensor xdt = x.to(DType::f64).t(), zdt = z.to(DType::f64).t();
  const Tensor xdc = xdt.contiguous(), zdc = zdt.contiguous();
  CHECK(test::same_bits(ops::add(xdt, 1.5), ops::add(xdc, 1.5)));
  CHECK(test::same_bits(ops::pow(xdt, zdt), ops::pow(xdc, zdc)));
  CHECK(test::same_bits(ops::mul(xdt, zdt), test::ref::binary(xdt, zdt, [](double a, double b) { return a * b; })));
  // Functions whose SIMD code branches on the whole batch (sin, cos, tan: the argument reduction),
  // on values that mix the branches within a batch; and their gradients.
  const Tensor w = ops::mul(test::uniform({300, 201}, -1, 1, DType::f32, 39),
                            ops::pow(ops::exp(test::uniform({300, 201}, 0, 3, DType::f32, 40)), 4.0));  // |w| up to e^12
  const Tensor wt = w.t(), wc = wt.contiguous();
  CHECK(test::same_bits(ops::sin(wt), ops::sin(wc)));
  CHECK(test::same_bits(ops::cos(wt), ops::cos(wc)));
  CHECK(test::same_bits(ops::tan(wt), ops::tan(wc)));
  // Beside broadcast operands (a row and a column of the output) and a strided one.
  const Tensor row = test::uniform({300}, 0.2, 2, DType::f32, 33), col = test::uniform({201, 1}, 0.2, 2, DType::f32, 34);
  CHECK(test::same_bits(ops::add(xt, row), ops::add(xc, row)));
  CHECK(test::same_bits(ops::sub(col, xt), ops::sub(col, xc)));
  const Tensor wide = test::uniform({201, 600}, 0.2, 2, DType::f32, 35);
  const Tensor ws = wide.slice(1, 0, 600, 2);  // [201, 300], column stride 2
  CHECK(test::same_bits(ops::maximum(xt, ws), ops::maximum(xc, ws)));
  // Integers (4- and 8-byte).
  for (DType dt : {DType::i32, DType::i64}) {
    const Tensor xi = ops::floor(ops::mul(x, 50.0)).to(dt), zi = ops::floor(ops::mul(z, 50.0)).to(dt);
    CHECK(test::same_bits(ops::sub(xi.t(), zi.t()), ops::sub(xi.t().contiguous(), zi.t().contiguous())));
  }
  // Batches of transposed matrices ([9, 90, 40] viewed as [9, 40, 90]), odd sizes.
  const Tensor b3 = test::uniform({9, 90, 40}, 0.2, 2, DType::f32, 36), c3 = test::uniform({9, 90, 40}, 0.2, 2, DType::f32, 37);
  const Tensor b3t = b3.permute({0, 2, 1}), c3t = c3.permute({0, 2, 1});
  CHECK(test::same_bits(ops::mul(b3t, c3t), ops::mul(b3t.contiguous(), c3t.contiguous())));
  // Two inputs contiguous along different dims of the output (both copied contiguous first).
  const Tensor e3t = test::uniform({40, 90, 9}, 0.2, 2, DType::f32, 38).permute({2, 0, 1});  // [9, 40, 90]
  CHECK(test::same_bits(ops::add(b3t, e3t), ops::add(b3t.contiguous(), e3t.contiguous())));
  // Few columns and long rows: [16, 5000] from a [5000, 16] (one tile across, 40 along the rows).
  const Tensor tall = test::uniform({5000, 16}, 0.2, 2, DType::f32, 41);
  CHECK(test::same_bits(ops::log(tall.t()), ops::log(tall.t().contiguous())));
  // Gradients: the backward's products with a transposed saved input are tiled too, and
  // binary_cross_entropy's backward takes three inputs (the cotangent, p and y; p and y tiled).
  Tensor xr = xt.detach().requires_grad_(), zr = zt.detach().requires_grad_();
  ops::sum(ops::mul(ops::div(xr, zr), y)).backward();
  Tensor xr2 = xc.detach().requires_grad_(), zr2 = zc.detach().requires_grad_();
  ops::sum(ops::mul(ops::div(xr2, zr2), y)).backward();
  CHECK(test::same_bits(xr.grad(), xr2.grad()));
  CHECK(test::same_bits(zr.grad(), zr2.grad()));
  const Tensor prob = ops::mul(x, 0.45), target = ops::mul(z, 0.5), cot = test::randn({201, 300}, DType::f32, 42);
  auto bce_grad = [&](const Tensor& p, const Tensor& t) {
    Tensor pr = p.detach().requires_grad_();
    ops::binary_cross_entropy(pr, t, {}, ops::Reduction::none).backward(cot);
    return pr.grad();
  };
  CHECK(test::same_bits(bce_grad(prob.t(), target.t()), bce_grad(prob.t().contiguous(), target.t().contiguous())));
  auto trig_grads = [&](const Tensor& v) {
    Tensor vr = v.detach().requires_grad_();
    ops::sum(ops::add(ops::sin(vr), ops::cos(vr))).backward();
    return vr.grad();
  };
  CHECK(test::same_bits(trig_grads(wt), trig_grads(wc)));
  CHECK(test::same_bits_across_threads([&] {
    return Tensors{ops::tanh(xt), ops::sub(xt, y), ops::mul(xt, zt), ops::mul(b3t, c3t), ops::add(b3t, e3t),
                   ops::add(xdt, zdt), ops::log(tall.t()), ops::sin(wt)};
  }));
}

TEST_CASE("unary ops compute each element as if alone (whatever its neighbours in a SIMD batch)", "[ops][elementwise]") {
  // A SIMD function may branch on its whole batch (xsimd's sin, cos and tan reduce a batch's
  // arguments by the method its largest |x| needs); tapegrad's results, values and gradients,
  // must not depend on which other elements share a batch, i.e. on layout or position (up to
  // the unspecified sign of a NaN).
  std::vector<double> values;
  const double scales[] = {0.3, 1.2, 10, 200, 3e4, 1e7};
  const Tensor u = test::uniform({600}, -1, 1, DType::f64, 44);
  const Tensor pick = test::uniform({600}, 0, 6, DType::f64, 45);
  for (std::int64_t i = 0; i < 600; ++i)
    values.push_back(u.data<double>()[i] * scales[std::min(5, static_cast<int>(pick.data<double>()[i]))]);
  values[5] = std::numeric_limits<double>::infinity();
  values[40] = -std::numeric_limits<double>::infinity();
  values[77] = std::numeric_limits<double>::quiet_NaN();
  values[100] = 3e-310;  // subnormal in f64 (0 in f32); log etc. rescale subnormal lanes
  values[101] = 2e-40;   // subnormal in f32
  values[102] = 0.0;
  // A batch of small arguments only (|x| <= pi/4 in f32 and f64: sin etc. skip the reduction),
  // with pi/4 and its neighbours, -0 and subnormals; and the bound of the Cody-Waite reduction
  // (64 pi in f32, 2^18 pi in f64) with its neighbours.
  const double pio4_f32 = static_cast<float>(std::numbers::pi / 4);
  const double small[] = {0.5, -0.25, pio4_f32, std::nextafter(pio4_f32, 0.0), -std::numbers::pi / 4,
                          std::nextafter(std::numbers::pi / 4, 0.0), -0.0, 1e-300, 4e-320, 1e-42, 1e-8, -0.7,
                          0.125, 0.78, -0.01, 0.3};
  for (std::size_t i = 0; i < std::size(small); ++i) values[400 + i] = small[i];
  const double medium_f32 = static_cast<float>(64 * std::numbers::pi), medium_f64 = 262144 * std::numbers::pi;
  const double bounds[] = {medium_f32, std::nextafter(static_cast<float>(medium_f32), 1e9f), medium_f64,
                           std::nextafter(medium_f64, 1e9), -medium_f64};
  for (std::size_t i = 0; i < std::size(bounds); ++i) values[450 + i] = bounds[i];
  using Op = std::function<Tensor(const Tensor&)>;
  const std::vector<std::pair<const char*, Op>> unary_ops{
      {"neg", ops::neg}, {"exp", ops::exp}, {"log", ops::log}, {"log1p", ops::log1p}, {"log2", ops::log2},
      {"log10", ops::log10}, {"expm1", ops::expm1}, {"sqrt", ops::sqrt}, {"rsqrt", ops::rsqrt},
      {"square", ops::square}, {"reciprocal", ops::reciprocal}, {"abs", ops::abs}, {"sign", ops::sign},
      {"sin", ops::sin}, {"cos", ops::cos}, {"tan", ops::tan}, {"asin", ops::asin}, {"acos", ops::acos},
      {"atan", ops::atan}, {"sinh", ops::sinh}, {"cosh", ops::cosh}, {"tanh", ops::tanh}, {"erf", ops::erf},
      {"round", ops::round}, {"floor", ops::floor}, {"ceil", ops::ceil}, {"sigmoid", ops::sigmoid},
      {"relu", ops::relu}, {"silu", ops::silu}, {"logsigmoid", ops::logsigmoid}, {"selu", ops::selu},
      {"mish", ops::mish}, {"relu6", ops::relu6}, {"hardsigmoid", ops::hardsigmoid}, {"hardswish", ops::hardswish},
      {"gelu", [](const Tensor& x) { return ops::gelu(x); }},
      {"gelu tanh", [](const Tensor& x) { return ops::gelu(x, ops::GeluApprox::tanh); }},
      {"softplus", [](const Tensor& x) { return ops::softplus(x); }},
      {"elu", [](const Tensor& x) { return ops::elu(x); }}};
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor v = from_vector(values, {600}).to(dt);
    for (const auto& [name, op] : unary_ops) {
      INFO(name << (dt == DType::f32 ? " f32" : " f64"));
      auto value_and_grad = [&op = op](const Tensor& x) {
        Tensor xr = x.detach().requires_grad_();
        const Tensor y = op(xr);
        ops::sum(y).backward();
        return std::pair{y.detach(), xr.grad()};
      };
      const auto [all, all_grad] = value_and_grad(v);
      int differing = 0, differing_grad = 0;
      for (std::int64_t i = 0; i < 600; ++i) {
        const auto [one, one_grad] = value_and_grad(v.slice(0, i, i + 1));
        differing += test::same_bits_or_nan(all.slice(0, i, i + 1), one) ? 0 : 1;
        differing_grad += test::same_bits_or_nan(all_grad.slice(0, i, i + 1), one_grad) ? 0 : 1;
      }
      CHECK(differing == 0);
      CHECK(differing_grad == 0);
    }
  }
}

TEST_CASE("unary ops: the f32 gradient matches the f64 one", "[ops][elementwise][grad]") {
  // The f64 gradients are tied to finite differences above; f32 kernels may use their own
  // approximations (GELU's gradient shares one exp between Phi and phi), which must stay accurate.
  for (const UnaryCase& c : unary_cases()) {
    INFO(c.name);
    const Tensor x64 = test::uniform({4001}, c.lo, c.hi, DType::f64, 11);
    const Tensor g64 = test::randn({4001}, DType::f64, 12);
    auto grad_of = [&](DType dt) {
      Tensor xr = x64.to(dt).detach().requires_grad_();
      c.op(xr).backward(g64.to(dt));
      return xr.grad().to(DType::f64);
    };
    CHECK_ALLCLOSE(grad_of(DType::f32), grad_of(DType::f64), 1e-5, 1e-6);
  }
}

TEST_CASE("unary ops: 1 vs N threads give identical bits", "[ops][elementwise][threads]") {
  for (const UnaryCase& c : unary_cases()) {
    INFO(c.name);
    const Tensor x = test::uniform({100003}, c.lo, c.hi, DType::f32, 9);
    const Tensor g = test::randn({100003}, DType::f32, 10);
    CHECK(test::same_bits_across_threads([&] {
      Tensor xr = x.detach().requires_grad_();
      Tensor y = c.op(xr);
      y.backward(g);
      return Tensors{y, xr.grad()};
    }));
  }
}

namespace {
struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> ref;
  double lo = -3, hi = 3;
};

std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return ops::add(a, b); }, [](double a, double b) { return a + b; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return ops::sub(a, b); }, [](double a, double b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return ops::mul(a, b); }, [](double a, double b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return ops::div(a, b); }, [](double a, double b) { return a / b; }, 0.5, 3},
      {"pow", [](const Tensor& a, const Tensor& b) { return ops::pow(a, b); }, [](double a, double b) { return std::pow(a, b); }, 0.2, 2},
      {"minimum", [](const Tensor& a, const Tensor& b) { return ops::minimum(a, b); }, [](double a, double b) { return std::min(a, b); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return ops::maximum(a, b); }, [](double a, double b) { return std::max(a, b); }},
      {"atan2", [](const Tensor& a, const Tensor& b) { return ops::atan2(a, b); }, [](double a, double b) { return std::atan2(a, b); }},
      // Positive operands away from 0 here (no jumps within the finite-difference steps); signs,
      // integers and special values are checked against torch's values below.
      {"floor_divide", [](const Tensor& a, const Tensor& b) { return ops::floor_divide(a, b); },
       [](double a, double b) { return std::floor(a / b); }, 0.5, 3},
      {"remainder", [](const Tensor& a, const Tensor& b) { return ops::remainder(a, b); },
       [](double a, double b) { return a - b * std::floor(a / b); }, 0.5, 3},
      {"fmod", [](const Tensor& a, const Tensor& b) { return ops::fmod(a, b); },
       [](double a, double b) { return std::fmod(a, b); }, 0.5, 3},
  };
}

// Broadcast shape pairs, including 0-d and odd sizes.
const std::pair<Shape, Shape> kBroadcastPairs[] = {
    {{3, 4}, {3, 4}}, {{3, 4}, {4}}, {{2, 1, 4}, {3, 1}}, {{1003}, {1}}, {{5}, {}}, {{1}, {7}}, {{17, 1}, {1, 3}}};
}  // namespace

TEST_CASE("binary ops: forward with broadcasting matches the reference", "[ops][elementwise]") {
  for (const BinaryCase& c : binary_cases()) {
    INFO(c.name);
    for (const auto& [sa, sb] : kBroadcastPairs) {
      INFO(fmt::format("{} {}", sa, sb));
      const Tensor a = test::uniform(sa, c.lo, c.hi, DType::f64, 11), b = test::uniform(sb, c.lo, c.hi, DType::f64, 12);
      CHECK_ALLCLOSE(c.op(a, b), test::ref::binary(a, b, c.ref), 1e-12, 1e-14);
      CHECK_ALLCLOSE(c.op(a.to(DType::f32), b.to(DType::f32)), test::ref::binary(a.to(DType::f32), b.to(DType::f32), c.ref), 1e-5, 1e-6);
    }
    const Tensor at = test::transposed_layout(test::uniform({6, 5}, c.lo, c.hi, DType::f32, 13));
    const Tensor bs = test::strided_layout(test::uniform({5}, c.lo, c.hi, DType::f32, 14));
    CHECK_ALLCLOSE(c.op(at, bs), test::ref::binary(at, bs, c.ref), 1e-5, 1e-6);
  }
}

TEST_CASE("binary ops: gradcheck with broadcasting and non-contiguous inputs",
          "[ops][elementwise][grad][add][sub][mul][div][pow][minimum][maximum][atan2][floor_divide][remainder][fmod]") {
  for (const BinaryCase& c : binary_cases()) {
    INFO(c.name);
    auto f = [&](const Tensors& v) { return c.op(v[0], v[1]); };
    for (const auto& [sa, sb] : kBroadcastPairs) {
      INFO(fmt::format("{} {}", sa, sb));
      CHECK_GRADCHECK(f, {test::uniform(sa, c.lo, c.hi, DType::f64, 15), test::uniform(sb, c.lo, c.hi, DType::f64, 16)});
    }
    CHECK_GRADCHECK(f, {test::transposed_layout(test::uniform({4, 3}, c.lo, c.hi, DType::f64, 17)),
                        test::strided_layout(test::uniform({3}, c.lo, c.hi, DType::f64, 18))});
    // The same tensor on both sides.
    CHECK_GRADCHECK([&](const Tensors& v) { return c.op(v[0], v[0]); }, {test::uniform({7}, c.lo, c.hi, DType::f64, 19)});
  }
}

TEST_CASE("floor_divide, remainder, fmod: signs, integers and special values as torch", "[ops][elementwise]") {
  // Values from torch 1.13.
  const Tensor a = tensor({-7, 7, -0.0, 5, -7, 7}), b = tensor({2, -2, 3, 0, -2, 2});
  const float inf = INFINITY;
  CHECK(ops::floor_divide(a, b).to_vector<float>() == std::vector<float>{-4, -4, -0.0f, inf, 3, 3});
  CHECK(std::signbit(ops::floor_divide(a, b).to_vector<float>()[2]));
  CHECK(ops::remainder(a.narrow(0, 0, 3), b.narrow(0, 0, 3)).to_vector<float>() == std::vector<float>{1, -1, 0});
  CHECK(std::isnan(ops::remainder(tensor({5}), tensor({0})).item<float>()));
  CHECK(ops::fmod(a.narrow(0, 0, 3), b.narrow(0, 0, 3)).to_vector<float>() == std::vector<float>{-1, 1, 0});
  // Exact for huge quotients: 10^20 = 1 (mod 3) (a - b trunc(a / b) in floating point gives 0 or worse).
  CHECK(ops::fmod(tensor({1e20, -1e20}, DType::f64), 3.0).to_vector<double>() == std::vector<double>{1, -1});
  CHECK(ops::remainder(tensor({1e20, -1e20}, DType::f64), 3.0).to_vector<double>() == std::vector<double>{1, 2});
  CHECK(ops::floor_divide(tensor({1e30}), tensor({1e-30})).item<float>() == inf);

  const Tensor ai = tensor({-7, 7, -7, 7, 0}, DType::i64), bi = tensor({2, -2, -2, 2, -3}, DType::i64);
  CHECK(ops::floor_divide(ai, bi).dtype() == DType::i64);
  CHECK(ops::floor_divide(ai, bi).to_vector<std::int64_t>() == std::vector<std::int64_t>{-4, -4, 3, 3, 0});
  CHECK(ops::remainder(ai, bi).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -1, -1, 1, 0});
  CHECK(ops::fmod(ai, bi).to_vector<std::int64_t>() == std::vector<std::int64_t>{-1, 1, -1, 1, 0});
  const auto lowest = std::numeric_limits<std::int64_t>::lowest();
  const Tensor low = tensor({double(lowest)}, DType::i64);
  CHECK(ops::floor_divide(low, -1.0).item<std::int64_t>() == lowest);  // wraps (torch: SIGFPE)
  CHECK(ops::remainder(low, -1.0).item<std::int64_t>() == 0);
  CHECK(ops::fmod(low, -1.0).item<std::int64_t>() == 0);
  CHECK(ops::remainder(tensor({-7, 8}, DType::i32), 3.0).to_vector<std::int32_t>() == std::vector<std::int32_t>{2, 2});
  CHECK(ops::floor_divide(tensor({5}, DType::i64), 2.0).dtype() == DType::i64);
  CHECK(ops::remainder(tensor({5}, DType::i64), 2.5).dtype() == DType::f32);  // a fractional number makes it f32
  CHECK(ops::remainder(tensor({5}, DType::i64), 2.5).item<float>() == 0);
  CHECK_THROWS_WITH(ops::remainder(ai, tensor({1, 0, 1, 1, 1}, DType::i64)),
                    Contains("remainder: integer division by zero (divisor of shape [5])"));
  CHECK_THROWS_WITH(ops::floor_divide(ai, 0.0), Contains("floor_divide: integer division by zero"));
  CHECK(ops::remainder(zeros({0}, DType::i64), 0.0).numel() == 0);  // nothing is divided: no error, as torch
  CHECK_THROWS_WITH(ops::fmod(ai.to(DType::i32), tensor({0}, DType::i32)), Contains("fmod: integer division by zero"));
  CHECK_THROWS_WITH(ops::fmod(tensor({1}, DType::boolean), tensor({1}, DType::boolean)), Contains("fmod: expected numeric tensors"));

  // Gradients across signs (torch: remainder d/db = -floor(a / b) = 4, fmod d/db = -trunc(a / b) = 3).
  Tensor x = tensor({-7.5, 7.5}, DType::f64).requires_grad_(), y = tensor({2, -2}, DType::f64).requires_grad_();
  ops::sum(ops::remainder(x, y)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{1, 1});
  CHECK(y.grad().to_vector<double>() == std::vector<double>{4, 4});
  x = x.detach().requires_grad_(), y = y.detach().requires_grad_();
  ops::sum(ops::fmod(x, y)).backward();
  CHECK(y.grad().to_vector<double>() == std::vector<double>{3, 3});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::remainder(v[0], v[1]); },
                  {tensor({-7.3, 7.3, -2.2, 2.2}, DType::f64), tensor({2, -2, -0.7, 0.7}, DType::f64)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::fmod(v[0], v[1]); },
                  {tensor({-7.3, 7.3, -2.2, 2.2}, DType::f64), tensor({2, -2, -0.7, 0.7}, DType::f64)});
}

TEST_CASE("new math ops: special values", "[ops][elementwise]") {
  CHECK(ops::log2(tensor({8, 1024, 0.5})).to_vector<float>() == std::vector<float>{3, 10, -1});  // exact on powers of 2
  CHECK(ops::log2(tensor({0x1p-1070}, DType::f64)).item<double>() == -1070);                    // subnormal
  CHECK(ops::log10(tensor({1000}, DType::f64)).item<double>() == Approx(3).epsilon(1e-15));
  CHECK(ops::log10(tensor({1e-310}, DType::f64)).item<double>() == Approx(-310).epsilon(1e-14));
  CHECK(ops::atan2(tensor({0, 1, -1}), tensor({-1, 0, 0})).to_vector<float>() ==
        std::vector<float>{float(std::numbers::pi), float(std::numbers::pi / 2), -float(std::numbers::pi / 2)});
  CHECK(ops::atan2(tensor({1}, DType::i64), tensor({1}, DType::i64)).dtype() == DType::f32);
  {  // Signed zeros and infinities as C's atan2 (and torch); xsimd's gives NaN for these.
    const double inf = INFINITY;
    const std::vector<double> ys{0.0, -0.0, 0.0, -0.0, inf, inf, -inf, -inf, 1, -1, 0.0};
    const std::vector<double> xs{0.0, 0.0, -0.0, -0.0, inf, -inf, inf, -inf, -inf, -inf, 5};
    for (DType dt : {DType::f32, DType::f64}) {
      const auto r = ops::atan2(from_vector(ys, {11}).to(dt), from_vector(xs, {11}).to(dt)).to(DType::f64).to_vector<double>();
      for (std::size_t i = 0; i < r.size(); ++i) {
        INFO(i);
        CHECK(r[i] == Approx(std::atan2(ys[i], xs[i])).epsilon(1e-7));
        CHECK(std::signbit(r[i]) == std::signbit(std::atan2(ys[i], xs[i])));
      }
    }
    CHECK(std::isnan(ops::atan2(tensor({NAN}), tensor({0})).item<float>()));
  }
  // Large arguments: no overflow in logsigmoid and mish; elu is accurate near 0 (expm1).
  CHECK(ops::logsigmoid(tensor({-100, 100}, DType::f64)).to_vector<double>()[0] == Approx(-100).epsilon(1e-15));
  CHECK(ops::logsigmoid(tensor({-1000}, DType::f32)).item<float>() == -1000);
  CHECK(ops::mish(tensor({1000, -1000})).to_vector<float>() == std::vector<float>{1000, -0.0f});
  CHECK(ops::elu(tensor({-1e-10}, DType::f64)).item<double>() == Approx(std::expm1(-1e-10)).epsilon(1e-15));
  // NaN stays NaN through the piecewise-linear ones.
  for (auto f : {+[](const Tensor& t) { return ops::hardtanh(t); }, +[](const Tensor& t) { return ops::relu6(t); },
                 +[](const Tensor& t) { return ops::hardsigmoid(t); }, +[](const Tensor& t) { return ops::hardswish(t); }})
    CHECK(std::isnan(f(tensor({NAN})).item<float>()));
  // Gradients at the kinks, as torch: hardtanh 0 at both bounds, hardswish -1/2 at -3 and 3/2 at 3.
  Tensor x = tensor({-1, 1}, DType::f64).requires_grad_();
  ops::sum(ops::hardtanh(x)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0});
  x = tensor({-3, 3}, DType::f64).requires_grad_();
  ops::sum(ops::hardswish(x)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{-0.5, 1.5});
  x = tensor({NAN}, DType::f64).requires_grad_();
  ops::sum(ops::hardswish(x)).backward();
  CHECK(std::isnan(x.grad().item()));
  CHECK_THROWS_WITH(ops::hardtanh(tensor({1}), 2, 1), Contains("hardtanh: min_val 2 must not exceed max_val 1"));
  CHECK_THROWS_WITH(ops::leaky_relu(tensor({1}), NAN), Contains("leaky_relu: negative_slope must be finite, got nan"));
  CHECK_THROWS_WITH(ops::elu(tensor({1}), INFINITY), Contains("elu: alpha must be finite, got inf"));
}

TEST_CASE("minimum/maximum split the gradient on ties", "[ops][elementwise]") {
  Tensor a = tensor({1, 2, 3}, DType::f64).requires_grad_();
  Tensor b = tensor({1, 5, 0}, DType::f64).requires_grad_();
  ops::sum(ops::maximum(a, b)).backward();
  CHECK(a.grad().to_vector<double>() == std::vector<double>{0.5, 0, 1});
  CHECK(b.grad().to_vector<double>() == std::vector<double>{0.5, 1, 0});
}

TEST_CASE("binary ops: 1 vs N threads give identical bits", "[ops][elementwise][threads]") {
  for (const BinaryCase& c : binary_cases()) {
    INFO(c.name);
    const Tensor a = test::uniform({301, 333}, c.lo, c.hi, DType::f32, 20), b = test::uniform({333}, c.lo, c.hi, DType::f32, 21);
    const Tensor col = test::uniform({301, 1}, c.lo, c.hi, DType::f32, 23);  // a column broadcast: its gradient sums rows
    const Tensor g = test::randn({301, 333}, DType::f32, 22);
    CHECK(test::same_bits_across_threads([&] {
      Tensor x = a.detach().requires_grad_(), y = b.detach().requires_grad_(), z = col.detach().requires_grad_();
      Tensor out = c.op(x, y);
      out.backward(g);
      c.op(x, z).backward(g);
      return Tensors{out, x.grad(), y.grad(), z.grad()};
    }));
  }
}

TEST_CASE("where: forward, broadcasting, gradcheck", "[ops][elementwise][grad][where]") {
  const Tensor cond = tensor({1, 0, 1, 0, 0, 1}, {2, 3}, DType::boolean);
  const Tensor a = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64), b = tensor({-1, -2, -3}, DType::f64);
  CHECK(ops::where(cond, a, b).to_vector<double>() == std::vector<double>{1, -2, 3, -1, -2, 6});
  CHECK(ops::where(cond, a, 0.0).to_vector<double>() == std::vector<double>{1, 0, 3, 0, 0, 6});
  CHECK(ops::where(cond, 7.0, b).to_vector<double>() == std::vector<double>{7, -2, 7, -1, -2, 7});
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::where(cond, v[0], v[1]); },
                  {test::transposed_layout(test::randn({2, 3}, DType::f64, 23)), test::randn({3}, DType::f64, 24)});
  const Tensor big = ops::gt(test::randn({100003}, DType::f32, 25), 0.0);
  CHECK(test::same_bits_across_threads([&] { return Tensors{ops::where(big, test::randn({100003}, DType::f32, 26), -1.0)}; }));
  CHECK_THROWS_WITH(ops::where(a, a, b), Contains("where: cond must be a bool tensor, got f64"));
}

TEST_CASE("comparisons and logic produce bool tensors", "[ops][elementwise]") {
  const Tensor a = tensor({1, 2, 3}), b = tensor({3, 2, 1});
  CHECK(ops::lt(a, b).to_vector<bool>() == std::vector<bool>{true, false, false});
  CHECK(ops::le(a, b).to_vector<bool>() == std::vector<bool>{true, true, false});
  CHECK(ops::eq(a, b).to_vector<bool>() == std::vector<bool>{false, true, false});
  CHECK(ops::ne(a, 2.0).to_vector<bool>() == std::vector<bool>{true, false, true});
  CHECK(ops::gt(a, 1.5).to_vector<bool>() == std::vector<bool>{false, true, true});
  CHECK(ops::ge(arange(3), 1.0).to_vector<bool>() == std::vector<bool>{false, true, true});
  CHECK(ops::lt(arange(3), 0.5).to_vector<bool>() == std::vector<bool>{true, false, false});  // i64 vs fractional
  // i64 against values outside its range: ordered as in torch, not an error.
  CHECK(ops::lt(arange(3), INFINITY).to_vector<bool>() == std::vector<bool>{true, true, true});
  CHECK(ops::gt(arange(3), -INFINITY).to_vector<bool>() == std::vector<bool>{true, true, true});
  CHECK(ops::ge(arange(3), 1e30).to_vector<bool>() == std::vector<bool>{false, false, false});
  CHECK(ops::eq(arange(3), NAN).to_vector<bool>() == std::vector<bool>{false, false, false});
  CHECK(ops::ne(arange(3), NAN).to_vector<bool>() == std::vector<bool>{true, true, true});
  CHECK(ops::eq(a.reshape({3, 1}), b).shape() == Shape{3, 3});
  const Tensor p = tensor({1, 1, 0, 0}, DType::boolean), q = tensor({1, 0, 1, 0}, DType::boolean);
  CHECK(ops::logical_and(p, q).to_vector<bool>() == std::vector<bool>{true, false, false, false});
  CHECK(ops::logical_or(p, q).to_vector<bool>() == std::vector<bool>{true, true, true, false});
  CHECK(ops::logical_xor(p, q).to_vector<bool>() == std::vector<bool>{false, true, true, false});
  CHECK(ops::logical_not(p).to_vector<bool>() == std::vector<bool>{false, false, true, true});
  CHECK(ops::eq(p, q).to_vector<bool>() == std::vector<bool>{true, false, false, true});
  const Tensor w = tensor({1, NAN, INFINITY, -INFINITY});
  CHECK(ops::isnan(w).to_vector<bool>() == std::vector<bool>{false, true, false, false});
  CHECK(ops::isfinite(w).to_vector<bool>() == std::vector<bool>{true, false, false, false});
  CHECK(ops::isfinite(arange(2)).to_vector<bool>() == std::vector<bool>{true, true});
  CHECK_FALSE(ops::lt(ones({2}).requires_grad_(), 0.0).requires_grad());
}

TEST_CASE("dtype rules: promotion, integer arithmetic, true division", "[ops][elementwise]") {
  const Tensor i = tensor({1, 2, 3}, DType::i64);
  CHECK((i + i).dtype() == DType::i64);
  CHECK((i * 2.0).dtype() == DType::i64);
  CHECK((i * 2.0).to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 4, 6});
  CHECK((i + INFINITY).dtype() == DType::f32);  // as i + NAN: no integer holds it
  CHECK((i + INFINITY).to_vector<float>() == std::vector<float>(3, INFINITY));
  CHECK((i * 0.5).dtype() == DType::f32);
  CHECK((i / i).dtype() == DType::f32);
  CHECK((i / 2.0).to_vector<float>() == std::vector<float>{0.5f, 1.0f, 1.5f});
  CHECK((i + tensor({0.5, 0.5, 0.5}, DType::f64)).dtype() == DType::f64);
  CHECK((tensor({1}, DType::i32) + tensor({1}, DType::i64)).dtype() == DType::i64);
  CHECK(ops::abs(tensor({-3, 4}, DType::i32)).to_vector<std::int32_t>() == std::vector<std::int32_t>{3, 4});
  CHECK(ops::clamp(tensor({-3, 4, 9}, DType::i64), 0.0, 5.0).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 4, 5});
  CHECK(ops::maximum(tensor({-3, 4}, DType::i32), tensor({0}, DType::i32)).to_vector<std::int32_t>() == std::vector<std::int32_t>{0, 4});
  CHECK(ops::pow(tensor({-2, 3}, DType::f64), 3.0).to_vector<double>() == std::vector<double>{-8, 27});
  CHECK(ops::pow(tensor({-2}, DType::f64), 2.0).to_vector<double>() == std::vector<double>{4});
  // An integer tensor to a whole number stays integral (torch with a Python int): exact, wrapping;
  // to a fractional number it is f32; a negative whole exponent is refused, as torch does.
  const Tensor ipw = ops::pow(tensor({2, -3, 0, 7}, DType::i64), 2.0);
  CHECK(ipw.dtype() == DType::i64);
  CHECK(ipw.to_vector<std::int64_t>() == std::vector<std::int64_t>{4, 9, 0, 49});
  CHECK(ops::pow(tensor({3, 5}, DType::i32), 0.0).to_vector<std::int32_t>() == std::vector<std::int32_t>{1, 1});
  CHECK(ops::pow(tensor({2}, DType::i32), 31.0).to_vector<std::int32_t>() == std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min()});
  CHECK(ops::pow(tensor({4}, DType::i64), 0.5).dtype() == DType::f32);
  CHECK(ops::pow(tensor({4}, DType::i64), 0.5).item() == 2.0);
  const Tensor bp = ops::pow(tensor({true, false}, DType::boolean), 2.0);  // bool counts as i64, as torch
  CHECK(bp.dtype() == DType::i64);
  CHECK(bp.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0});
  CHECK_THROWS_WITH(ops::pow(tensor({true}, DType::boolean), -1.0), Contains("integers to negative integer powers are not allowed"));
  // +-inf is not a whole number: f32, with std::pow's values (torch's too).
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor pinf = ops::pow(tensor({-3, 0, 2, 1, -1}, DType::i64), inf);
  CHECK(pinf.dtype() == DType::f32);
  CHECK(pinf.to_vector<float>() == std::vector<float>{INFINITY, 0, INFINITY, 1, 1});
  CHECK(ops::pow(tensor({-3, 0, 2, 1, -1}, DType::i64), -inf).to_vector<float>() == std::vector<float>{0, INFINITY, 0, 1, 1});
  CHECK_THROWS_WITH(ops::pow(tensor({2}, DType::i64), -1.0), Contains("pow_scalar: integers to negative integer powers are not allowed (i64 tensor of shape [1] to the -1)"));
  CHECK_THROWS_WITH(ops::pow(tensor({2}, DType::i32), 3e9), Contains("pow_scalar: exponent 3000000000 does not fit in the i32 tensor's type"));
  // Integer tensors to integer tensors: exact, wrapping, and torch's values for negative exponents.
  const Tensor ip = ops::pow(tensor({3, 1, -1, -1, 0, 2, -2, 5}, DType::i64), tensor({40, -1, -3, -2, -1, -1, 3, 0}, DType::i64));
  CHECK(ip.dtype() == DType::i64);
  CHECK(ip.to_vector<std::int64_t>() == std::vector<std::int64_t>{-6289078614652622815, 1, -1, 1, 0, 0, -8, 1});
  CHECK(ops::pow(tensor({2, 3}, DType::i32), tensor({31}, DType::i32)).to_vector<std::int32_t>() ==
        std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min(), 1264544299});
}

TEST_CASE("glu: a * sigmoid(b) of the halves, gradcheck, threads, errors", "[ops][elementwise][grad][glu]") {
  const Tensor x = test::randn({3, 10}, DType::f64, 70);
  const Tensor y = ops::glu(x);
  REQUIRE(y.shape() == Shape{3, 5});
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 5; ++j)
      CHECK(y.at<double>({i, j}) == Approx(x.at<double>({i, j}) / (1 + std::exp(-x.at<double>({i, j + 5})))).epsilon(1e-14));
  const Tensor z = test::randn({4, 6, 3}, DType::f64, 71);
  CHECK(ops::glu(z, 1).shape() == Shape{4, 3, 3});
  CHECK_ALLCLOSE(ops::glu(z, 1), ops::glu(z.transpose(1, 2), 2).transpose(1, 2), 0, 0);
  CHECK_GRADCHECK([](const Tensors& v) { return ops::glu(v[0], 0); }, {test::transposed_layout(test::randn({6, 7}, DType::f64, 72))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::glu(v[0], -1); }, {test::strided_layout(test::randn({3, 34}, DType::f64, 73))});
  const Tensor big = test::randn({33, 2006}, DType::f32, 74);
  CHECK(test::same_bits_across_threads([&] {
    Tensor v = big.detach().requires_grad_();
    Tensor out = ops::glu(v);
    out.backward(ops::glu(big));
    return Tensors{out, v.grad()};
  }));
  CHECK_THROWS_WITH(ops::glu(zeros({2, 3})), Contains("glu: dim 1 of x [2, 3] must have an even size to split in halves, got 3"));
  CHECK_THROWS_WITH(ops::glu(zeros({2, 4}), 2), Contains("glu: axis 2 is out of range"));
}

TEST_CASE("pow: every special base and exponent as std::pow", "[ops][elementwise]") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> bases{-inf, -3, -1, -0.5, -0.0, 0.0, 0.5, 1, 3, inf, nan};
  const std::vector<double> exps{-inf, -3, -2.5, -2, -1, -0.5, 0, 0.5, 1, 2, 2.5, 3, 70, inf, nan};
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-14 : 1e-6;
    const Tensor x = from_vector(bases, {static_cast<std::int64_t>(bases.size())}).to(dt);
    // pow's relative error grows with |p log|x|| (the exponent of exp(p log|x|)).
    auto same = [tol](double got, double want, double base, double p) {
      if (std::isnan(want)) return std::isnan(got);
      if (std::isinf(want) || want == 0) return got == want && std::signbit(got) == std::signbit(want);
      return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(p * std::log(std::fabs(base)))) * std::fabs(want);
    };
    for (double p : exps) {
      const auto scalar = ops::pow(x, p).to_vector<double>();
      const auto tensor_exp = ops::pow(x, full({1}, p, dt)).to_vector<double>();
      for (std::size_t i = 0; i < bases.size(); ++i) {
        const double want = dt == DType::f64 ? std::pow(bases[i], p)
                                             : static_cast<double>(std::pow(static_cast<float>(bases[i]), static_cast<float>(p)));
        INFO(dtype_name(dt) << ": " << bases[i] << " ^ " << p << " = " << want << ": scalar " << scalar[i] << ", tensor " << tensor_exp[i]);
        // A scalar 0.5 is sqrt, as in torch (so (-0)^0.5 = -0 there).
        CHECK(same(scalar[i], p == 0.5 ? std::sqrt(bases[i]) : want, bases[i], p));
        CHECK(same(tensor_exp[i], want, bases[i], p));
      }
    }
  }
}

TEST_CASE("pow: std::pow's special values at 0 and their PyTorch gradients", "[ops][elementwise]") {
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    // Forward: 0^0 = 1, 0^p = 0 (p > 0), 0^p = inf (p < 0), -0 keeps its sign for odd p; x^0 = 1^p = 1.
    const Tensor x = tensor({0, 0, 0, 0, -0.0, -0.0, inf, 1, 2}, dt);
    const Tensor p = tensor({0, 1, -1, -0.5, -1, 3, 0, std::nan(""), 0.5}, dt);
    const auto y = ops::pow(x, p).to(DType::f64).to_vector<double>();
    const std::vector<double> want{1, 0, inf, inf, -inf, -0.0, 1, 1, std::sqrt(2.0)};
    for (size_t i = 0; i < want.size(); ++i) {
      INFO(i);
      CHECK((std::isinf(want[i]) ? y[i] == want[i] : y[i] == Approx(want[i]).epsilon(1e-6)));
      CHECK(std::signbit(y[i]) == std::signbit(want[i]));
    }
    // Gradients (PyTorch's): d/dx = p x^(p-1), 0 where p == 0; d/dp = x^p log x, 0 at x = 0 for p >= 0.
    Tensor xr = tensor({0, 0, 0, 0, 2}, dt).requires_grad_(), pr = tensor({0, 1, -1, 0.5, 2}, dt).requires_grad_();
    ops::sum(ops::pow(xr, pr)).backward();
    const auto gx = xr.grad().to(DType::f64).to_vector<double>(), gp = pr.grad().to(DType::f64).to_vector<double>();
    CHECK(std::vector<double>(gx.begin(), gx.begin() + 4) == std::vector<double>{0, 1, -inf, inf});
    CHECK(gx[4] == Approx(4).epsilon(1e-6));
    CHECK(gp[0] == 0);
    CHECK(gp[1] == 0);
    CHECK(gp[2] == -inf);
    CHECK(gp[3] == 0);
    CHECK(gp[4] == Approx(4 * std::log(2.0)).epsilon(1e-6));
    // Scalar exponents, including the non-integer ones that go through exp/log.
    for (double e : {0.0, 0.5, -0.5, 1.5, -2.0}) {
      INFO(e);
      Tensor z = tensor({0}, dt).requires_grad_();
      const double fz = ops::pow(z, e).to(DType::f64).item();
      ops::sum(ops::pow(z, e)).backward();
      const double gz = z.grad().to(DType::f64).item();
      CHECK(fz == std::pow(0.0, e));
      CHECK(gz == (e == 0 ? 0.0 : e == 1.5 ? 0.0 : e == 0.5 ? inf : -inf));
    }
  }
}

TEST_CASE("special values: NaN propagates, subnormal and huge inputs", "[ops][elementwise]") {
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    auto values = [](const Tensor& t) { return t.to(DType::f64).to_vector<double>(); };
    // NaN in, NaN out (as in PyTorch), whichever operand it is.
    const Tensor a = tensor({nan, 1, nan, -inf, 2}, dt), b = tensor({1, nan, nan, 1, 2}, dt);
    for (const Tensor& t : {ops::minimum(a, b), ops::maximum(a, b)}) {
      const auto v = values(t);
      CHECK((std::isnan(v[0]) && std::isnan(v[1]) && std::isnan(v[2]) && v[4] == 2));
    }
    CHECK(values(ops::minimum(a, b))[3] == -inf);
    CHECK(values(ops::maximum(a, b))[3] == 1);
    CHECK(ops::ne(a, b).to_vector<bool>() == std::vector<bool>{true, true, true, true, false});  // IEEE: NaN != NaN
    CHECK(ops::ne(a, 1.0).to_vector<bool>() == std::vector<bool>{true, false, true, true, true});
    CHECK(ops::eq(a, b).to_vector<bool>() == std::vector<bool>{false, false, false, false, true});
    CHECK(std::isnan(values(ops::relu(tensor({nan}, dt)))[0]));
    CHECK(std::isnan(values(ops::clamp(tensor({nan}, dt), -1.0, 1.0))[0]));
    CHECK(values(ops::clamp(tensor({-5, 0.5, 5}, dt), -1.0, 1.0)) == std::vector<double>{-1, 0.5, 1});
    // log of subnormals (xsimd alone gets them wrong).
    const double tiny = dt == DType::f32 ? 1e-40 : 1e-310;
    const double got = values(ops::log(tensor({tiny}, dt)))[0];
    CHECK(got == Approx(std::log(dt == DType::f32 ? double(float(tiny)) : tiny)).epsilon(1e-6));
    // erf saturates at +-1 for huge inputs, so GELU's tails are x and -0.
    const double huge = dt == DType::f32 ? 1e30 : 1e300;
    CHECK(values(ops::erf(tensor({huge, -huge}, dt))) == std::vector<double>{1, -1});
    const auto g = values(ops::gelu(tensor({huge, -huge}, dt)));
    CHECK(g[0] == Approx(dt == DType::f32 ? double(float(huge)) : huge));
    CHECK(g[1] == 0);
  }
}

TEST_CASE("extreme inputs stay finite where the math is finite", "[ops][elementwise]") {
  const Tensor x = tensor({-1000, -80, 0, 80, 1000});
  CHECK(ops::softplus(x).to_vector<float>() == std::vector<float>{0, std::log1p(std::exp(-80.0f)), std::log(2.0f), 80, 1000});
  const auto s = ops::sigmoid(x).to_vector<float>();
  CHECK(s[0] == 0.0f);
  CHECK(s[4] == 1.0f);
  CHECK(ops::silu(x).to_vector<float>()[0] == -0.0f);
  CHECK(ops::tanh(x).to_vector<float>()[4] == 1.0f);
  CHECK(std::isinf(ops::exp(x).to_vector<float>()[4]));
  CHECK(ops::gelu(x).to_vector<float>()[0] == 0.0f);
  // Gradients at the extremes are finite too.
  Tensor xr = x.detach().requires_grad_();
  ops::sum(ops::softplus(xr) + ops::sigmoid(xr) + ops::silu(xr) + ops::gelu(xr) + ops::tanh(xr)).backward();
  for (float g : xr.grad().to_vector<float>()) CHECK(std::isfinite(g));
}

TEST_CASE("elementwise ops report bad input clearly", "[ops][elementwise][errors]") {
  CHECK_THROWS_WITH(ops::add(zeros({2, 3}), zeros({4})), Contains("add: shapes [2, 3] and [4] cannot be broadcast (dim -1: 3 vs 4)"));
  CHECK_THROWS_WITH(ops::mul(zeros({2, 3}), zeros({3, 3})), Contains("mul: shapes [2, 3] and [3, 3] cannot be broadcast (dim -2: 2 vs 3)"));
  CHECK_THROWS_WITH(ops::exp(arange(3)), Contains("exp: expected a floating-point tensor (f32 or f64), got i64"));
  CHECK_THROWS_WITH(ops::add(Tensor(), zeros({1})), Contains("add: argument 'a' is an undefined tensor"));
  CHECK_THROWS_WITH(ops::clamp(zeros({1}), 2.0, 1.0), Contains("clamp: low 2 is greater than high 1"));
  CHECK(std::isnan(ops::clamp(zeros({1}), NAN, 1.0).item()));  // a NaN bound with both given: NaN, as torch
  CHECK(std::isnan(ops::clamp(zeros({1}), 0.0, NAN).item()));
  CHECK_THROWS_WITH(ops::softplus(zeros({1}), 0.0), Contains("softplus: beta must be positive"));
  CHECK_THROWS_WITH(ops::add(zeros({1}, DType::boolean), zeros({1}, DType::boolean)), Contains("add: expected a numeric tensor, got bool"));
}
