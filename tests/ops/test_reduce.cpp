// Reductions: forward vs naive references over many axis sets and layouts, gradchecks, NaN and
// tie handling, determinism across thread counts, errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

double ref_sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }
double ref_prod(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 1.0, std::multiplies<>()); }
double ref_max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
double ref_min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double ref_mean(const std::vector<double>& v) { return ref_sum(v) / static_cast<double>(v.size()); }
double ref_var(const std::vector<double>& v) {
  const double m = ref_mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return s / static_cast<double>(v.size() - 1);
}
double ref_lse(const std::vector<double>& v) {
  const double m = ref_max(v);
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}
double ref_l2(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

struct ReduceCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Shape&, bool)> op;
  std::function<double(const std::vector<double>&)> ref;
};

std::vector<ReduceCase> reduce_cases() {
  return {
      {"sum", [](const Tensor& x, const Shape& a, bool k) { return ops::sum(x, a, k); }, ref_sum},
      {"mean", [](const Tensor& x, const Shape& a, bool k) { return ops::mean(x, a, k); }, ref_mean},
      {"prod", [](const Tensor& x, const Shape& a, bool k) { return ops::prod(x, a, k); }, ref_prod},
      {"amax", [](const Tensor& x, const Shape& a, bool k) { return ops::amax(x, a, k); }, ref_max},
      {"amin", [](const Tensor& x, const Shape& a, bool k) { return ops::amin(x, a, k); }, ref_min},
      {"logsumexp", [](const Tensor& x, const Shape& a, bool k) { return ops::logsumexp(x, a, k); }, ref_lse},
      {"var", [](const Tensor& x, const Shape& a, bool k) { return ops::var(x, a, 1.0, k); }, ref_var},
      {"stddev", [](const Tensor& x, const Shape& a, bool k) { return ops::stddev(x, a, 1.0, k); },
       [](const std::vector<double>& v) { return std::sqrt(ref_var(v)); }},
      {"norm", [](const Tensor& x, const Shape& a, bool k) { return ops::norm(x, 2.0, a, k); }, ref_l2},
      {"norm1", [](const Tensor& x, const Shape& a, bool k) { return ops::norm(x, 1.0, a, k); },
       [](const std::vector<double>& v) { double s = 0; for (double x : v) s += std::fabs(x); return s; }},
      {"norm_inf", [](const Tensor& x, const Shape& a, bool k) { return ops::norm(x, ops::kInf, a, k); },
       [](const std::vector<double>& v) { double s = 0; for (double x : v) s = std::max(s, std::fabs(x)); return s; }},
  };
}

const Shape kAxisSets[] = {{}, {0}, {1}, {2}, {-1}, {0, 2}, {1, 2}, {0, 1}};

}  // namespace

TEST_CASE("reductions: forward matches the reference for every axis set and layout", "[ops][reduce]") {
  const Tensor x = test::uniform({3, 5, 7}, 0.5, 1.5, DType::f64, 1);
  const Tensor xt = test::transposed_layout(x);
  const Tensor xs = test::strided_layout(x);
  for (const ReduceCase& c : reduce_cases()) {
    INFO(c.name);
    for (const Shape& axes : kAxisSets) {
      for (bool keepdim : {false, true}) {
        INFO(fmt::format("axes {} keepdim {}", axes, keepdim));
        const Tensor want = test::ref::reduce(x, axes, keepdim, c.ref);
        CHECK_ALLCLOSE(c.op(x, axes, keepdim), want, 1e-12, 1e-13);
        CHECK_ALLCLOSE(c.op(xt, axes, keepdim), want, 1e-12, 1e-13);
        CHECK_ALLCLOSE(c.op(xs, axes, keepdim), want, 1e-12, 1e-13);
        CHECK_ALLCLOSE(c.op(x.to(DType::f32), axes, keepdim), want, 2e-5, 1e-6);
      }
    }
    // Odd sizes along a single axis, and long rows that span several blocks.
    for (std::int64_t n : {1, 17, 1003, 40009}) {
      const Tensor v = test::uniform({2, n}, 0.9, 1.1, DType::f64, 2);
      CHECK_ALLCLOSE(c.op(v, {1}, false), test::ref::reduce(v, {1}, false, c.ref), 1e-10, 1e-12);
      CHECK_ALLCLOSE(c.op(v.t(), {0}, false), test::ref::reduce(v, {1}, false, c.ref), 1e-10, 1e-12);
    }
  }
}

TEST_CASE("reductions over middle axes (kept runs of contiguous elements) match the reference", "[ops][reduce]") {
  // Kept innermost runs of 37 and 40 x 3 (merged), and of 600 (two column chunks); reduced dims
  // outside, inside, and on both sides of kept ones.
  struct Case {
    Shape shape, axes;
  };
  // Then reduced dims ending in a contiguous run of 70 or 128 with kept dims between them.
  const Case cases[] = {{{3, 9, 37}, {1}},    {{4, 6, 5, 40}, {1}}, {{4, 6, 5, 40}, {0, 2}},  {{2, 7, 600}, {1}},
                        {{5, 3, 40}, {0, 1}}, {{6, 5, 70}, {0, 2}}, {{3, 4, 8, 16}, {0, 2, 3}}, {{2, 3, 4, 8, 16}, {1, 3, 4}},
                        {{5, 37, 3, 70}, {0, 2, 3}}};  // 37 outputs: several tasks, each walking its runs in memory order
  for (const Case& k : cases) {
    INFO(fmt::format("shape {} axes {}", k.shape, k.axes));
    const Tensor x = test::uniform(k.shape, 0.5, 1.5, DType::f64, 21);
    for (const ReduceCase& c : reduce_cases()) {
      INFO(c.name);
      const Tensor want = test::ref::reduce(x, k.axes, false, c.ref);
      CHECK_ALLCLOSE(c.op(x, k.axes, false), want, 1e-12, 1e-13);
      CHECK_ALLCLOSE(c.op(x.to(DType::f32), k.axes, false), want, 2e-5, 1e-6);
    }
  }
  // The same through a view whose kept dim is not between the reduced ones in memory.
  const Tensor base = test::uniform({37, 5, 80}, 0.5, 1.5, DType::f64, 25);
  const Tensor view = base.narrow(2, 0, 70).permute({1, 0, 2});  // [5, 37, 70]: runs of 70, kept dim outermost
  CHECK_ALLCLOSE(ops::sum(view, {0, 2}), test::ref::reduce(view, {0, 2}, false, reduce_cases()[0].ref), 1e-12, 1e-13);
  // NaN wins in max/min whichever side it is on; integers too.
  Tensor withnan = test::uniform({3, 4, 20}, -1, 1, DType::f32, 22).clone();
  withnan.narrow(0, 1, 1).narrow(1, 2, 1).narrow(2, 5, 1).fill_(NAN);
  const Tensor mx = ops::amax(withnan, {1}), mn = ops::amin(withnan, {1});
  CHECK(std::isnan(mx.at<float>({1, 5})));
  CHECK(std::isnan(mn.at<float>({1, 5})));
  CHECK(ops::sum(ops::isnan(mx)).item<std::int64_t>() == 1);
  Tensor seg = test::uniform({3, 4, 80}, -1, 1, DType::f32, 24).clone();  // reduced over dims 0 and 2 (runs of 80)
  seg.narrow(0, 2, 1).narrow(1, 1, 1).narrow(2, 70, 1).fill_(NAN);
  CHECK(ops::sum(ops::isnan(ops::amax(seg, {0, 2}))).item<std::int64_t>() == 1);
  CHECK(std::isnan(ops::amin(seg, {0, 2}).at<float>({1})));
  const Tensor xi = ops::round(test::uniform({3, 4, 20}, -50, 50, DType::f64, 23)).to(DType::i64);
  CHECK(ops::amax(xi, {1}).to(DType::f64).to_vector<double>() == ops::amax(xi.to(DType::f64), {1}).to_vector<double>());
  CHECK(ops::sum(xi, {1}).to(DType::f64).to_vector<double>() == ops::sum(xi.to(DType::f64), {1}).to_vector<double>());
}

TEST_CASE("reductions: gradcheck", "[ops][reduce][grad][sum][mean][prod][amax][amin][norm][stddev]") {
  for (const ReduceCase& c : reduce_cases()) {
    INFO(c.name);
    for (const Shape& axes : kAxisSets) {
      INFO(fmt::format("axes {}", axes));
      auto f = [&](const Tensors& v) { return c.op(v[0], axes, false); };
      CHECK_GRADCHECK(f, {test::uniform({3, 4, 5}, 0.5, 1.5, DType::f64, 3)});
      CHECK_GRADCHECK(f, {test::transposed_layout(test::uniform({2, 3, 5}, 0.5, 1.5, DType::f64, 4))});
    }
    auto f = [&](const Tensors& v) { return c.op(v[0], {}, true); };
    CHECK_GRADCHECK(f, {test::strided_layout(test::uniform({1003}, 0.5, 1.5, DType::f64, 5))});
    if (std::string_view(c.name) != "var" && std::string_view(c.name) != "stddev")  // 0/0 for one element
      CHECK_GRADCHECK(f, {test::uniform({1}, 0.5, 1.5, DType::f64, 6)});
  }
}

TEST_CASE("prod gradient is exact with zeros, amax shares ties", "[ops][reduce]") {
  Tensor x = tensor({2, 0, 3, 0, 5, 4}, {2, 3}, DType::f64).requires_grad_();
  ops::sum(ops::prod(x, {1})).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 6, 0, 20, 0, 0});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::prod(v[0], {1}); }, {tensor({2, 0, 3, 0, 5, 4}, {2, 3}, DType::f64)});
  Tensor y = tensor({1, 3, 3, 2}, DType::f64).requires_grad_();
  ops::amax(y).backward();
  CHECK(y.grad().to_vector<double>() == std::vector<double>{0, 0.5, 0.5, 0});
  Tensor z = tensor({0, 0}, DType::f64).requires_grad_();
  ops::norm(z).backward();
  CHECK(z.grad().to_vector<double>() == std::vector<double>{0, 0});  // subgradient, not NaN
  // stddev of a constant slice: gradient 0 (as PyTorch), the other slice's is (x - mean) / (std (n - 1)).
  Tensor s = tensor({0.5, 0.5, 0.5, 1, 2, 3}, {2, 3}, DType::f64).requires_grad_();
  ops::sum(ops::stddev(s, {1})).backward();
  CHECK(s.grad().to_vector<double>() == std::vector<double>{0, 0, 0, -0.5, 0, 0.5});
  Tensor one = tensor({7}, DType::f64).requires_grad_();
  ops::stddev(one, {}, 0.0).backward();
  CHECK(one.grad().to_vector<double>() == std::vector<double>{0});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::stddev(v[0], {0}, 0.0, true); },
                  {test::transposed_layout(test::randn({5, 3}, DType::f64, 40))});
  // f32 values whose squares leave f32's range (torch: 3.05505e19 and 1.0149e-25, with gradients).
  for (const double scale : {1e19, 1e-25}) {
    Tensor big = tensor({3 * scale, -3 * scale, scale}, DType::f32).requires_grad_();
    const Tensor sd = ops::stddev(big);
    const double m = scale / 3, expect = std::sqrt(((3 * scale - m) * (3 * scale - m) + (3 * scale + m) * (3 * scale + m) +
                                                    (scale - m) * (scale - m)) / 2.0);
    CHECK(sd.item() == Approx(expect).epsilon(1e-6));
    sd.backward();
    const auto gr = big.grad().to_vector<float>();
    CHECK(gr[0] == Approx((3 * scale - m) / (expect * 2)).epsilon(1e-5));
    CHECK(gr[1] == Approx((-3 * scale - m) / (expect * 2)).epsilon(1e-5));
  }
}

TEST_CASE("max/min with indices, argmax/argmin", "[ops][reduce][grad][max][min]") {
  const Tensor x = tensor({1, 5, 5, 2, -1, 0, 7, 7}, {2, 4}, DType::f64);
  const auto mx = ops::max(x, 1);
  CHECK(mx.values.to_vector<double>() == std::vector<double>{5, 7});
  CHECK(mx.indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2});  // first occurrence
  CHECK(ops::min(x, 0, true).values.shape() == Shape{1, 4});
  CHECK(ops::argmin(x, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0});
  CHECK(ops::argmax(x.t(), 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2});
  CHECK(ops::argmax(tensor({1, NAN, 3}), 0).item<std::int64_t>() == 1);  // NaN is the max
  Tensor xr = x.detach().requires_grad_();
  ops::sum(ops::max(xr, 1).values).backward();
  CHECK(xr.grad().to_vector<double>() == std::vector<double>{0, 1, 0, 0, 0, 0, 1, 0});
  const Tensor distinct = test::randn({4, 5, 3}, DType::f64, 7);
  for (int axis = 0; axis < 3; ++axis) {
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::max(v[0], axis).values; }, {distinct});
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::min(v[0], axis, true).values; }, {test::transposed_layout(distinct)});
  }
}

namespace {
// Stable sort of every row along the last axis of a [rows, n] f64 matrix: (values, indices).
std::pair<std::vector<double>, std::vector<std::int64_t>> ref_sort_rows(const std::vector<double>& v, std::int64_t n, bool descending) {
  std::vector<double> vals(v.size());
  std::vector<std::int64_t> idx(v.size());
  for (std::size_t r = 0; n > 0 && r * n < v.size(); ++r) {
    std::vector<std::int64_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    const double* row = v.data() + r * n;
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t i, std::int64_t j) {
      const bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
      if (ni || nj) return !ni && nj;  // NaN is the largest: after every number
      return descending ? row[i] > row[j] : row[i] < row[j];
    });
    if (descending)  // NaN first: move the NaN block (sorted last above) to the front, in order
      std::stable_partition(order.begin(), order.end(), [&](std::int64_t i) { return std::isnan(row[i]); });
    for (std::int64_t c = 0; c < n; ++c) {
      idx[r * n + c] = order[c];
      vals[r * n + c] = row[order[c]];
    }
  }
  return {vals, idx};
}
}  // namespace

TEST_CASE("sort, argsort, topk: stable order, NaN last (first descending), every dtype and axis", "[ops][reduce][sort]") {
  // NaN and ties.
  const Tensor a = tensor({3, NAN, 1, NAN, 2, 1}, DType::f64);
  const auto up = ops::sort(a);
  CHECK(up.indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 5, 4, 0, 1, 3});
  const auto down = ops::sort(a, 0, true);
  CHECK(down.indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 3, 0, 4, 2, 5});
  CHECK(down.values.at<double>({2}) == 3.0);
  CHECK(std::isnan(down.values.at<double>({0})));
  CHECK(ops::argsort(tensor({2, 1, 2, 1}, DType::i32)).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 3, 0, 2});
  CHECK(ops::argsort(tensor({2, 1, 2, 1}, DType::i32), 0, true).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 2, 1, 3});
  // Integers beyond 2^53 keep their exact order.
  const Tensor big = from_vector(std::vector<std::int64_t>{(std::int64_t{1} << 62) + 1, std::int64_t{1} << 62, -5}, {3});
  CHECK(ops::argsort(big).to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 1, 0});
  CHECK(ops::sort(tensor({true, false, true}, DType::boolean)).indices.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 2});
  // Against std::stable_sort, every axis and layout, odd sizes (some ties from rounding to 0.5).
  for (const Shape& shape : {Shape{7}, Shape{3, 17}, Shape{5, 1, 9}, Shape{2, 1003}}) {
    Tensor x = ops::round(test::randn(shape, DType::f64, 80) * 4.0) / 2.0;
    x = ops::where(ops::gt(x, 1.4), std::numeric_limits<double>::quiet_NaN(), x);  // some NaNs too
    for (std::int64_t axis = 0; axis < x.dim(); ++axis)
      for (bool descending : {false, true})
        for (int layout = 0; layout < 2; ++layout) {
          const Tensor in = layout ? test::transposed_layout(x) : x;
          const auto r = ops::sort(in, axis, descending);
          const Tensor moved = x.transpose(axis, x.dim() - 1).contiguous();  // the axis last
          const std::int64_t n = x.shape()[axis];
          const auto [vals, idx] = ref_sort_rows(moved.to_vector<double>(), n, descending);
          INFO("shape " << fmt::format("{}", shape) << " axis " << axis << " descending " << descending);
          CHECK(test::same_bits(r.values.transpose(axis, x.dim() - 1).contiguous(), from_vector(vals, moved.shape())));
          CHECK(r.indices.transpose(axis, x.dim() - 1).contiguous().to_vector<std::int64_t>() == idx);
          for (std::int64_t k : {std::int64_t{0}, std::int64_t{1}, n / 2, n}) {
            const auto t = ops::topk(in, k, axis, descending);
            CHECK(test::same_bits(t.indices, r.indices.narrow(axis, 0, k).contiguous()));
            CHECK(test::same_bits(t.values, r.values.narrow(axis, 0, k).contiguous()));
          }
        }
  }
  CHECK(ops::sort(tensor({5}, DType::f32).reshape({}), -1).values.item() == 5.0);  // 0-d
  CHECK(ops::topk(tensor({5}, DType::f32).reshape({}), 1).indices.item() == 0.0);
  CHECK_THROWS_WITH(ops::topk(tensor({5}, DType::f32).reshape({}), 0), Contains("topk: k = 0 for a 0-d tensor"));
  CHECK(ops::sort(zeros({3, 0}), 1).values.shape() == Shape{3, 0});
  CHECK_THROWS_WITH(ops::topk(zeros({2, 3}), 4), Contains("topk: k = 4 is out of range for dim 1 of size 3 (shape [2, 3])"));
  CHECK_THROWS_WITH(ops::topk(zeros({2, 3}), -1), Contains("topk: k = -1 is out of range"));
  CHECK_THROWS_WITH(ops::sort(zeros({2, 3}), 2), Contains("sort: axis 2 is out of range"));
}

TEST_CASE("sort and topk: gradients return to where the values came from, thread bit-equality", "[ops][reduce][grad][sort]") {
  const Tensor x = test::randn({4, 7}, DType::f64, 81);  // distinct values
  CHECK_GRADCHECK([](const Tensors& v) { return ops::sort(v[0], 1).values; }, {test::transposed_layout(x)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::sort(v[0], 0, true).values; }, {x});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::topk(v[0], 3, -1).values; }, {test::strided_layout(x)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::topk(v[0], 2, 0, false).values; }, {x});
  const Tensor y = test::randn({300, 517}, DType::f32, 82);
  CHECK(test::same_bits_across_threads([&] {
    Tensor v = y.detach().requires_grad_();
    const auto t = ops::topk(v, 40, 1);
    t.values.backward(t.values * 2.0);
    return Tensors{t.values, t.indices, v.grad(), ops::argsort(y, 0, true)};
  }));
}

TEST_CASE("cumsum", "[ops][reduce][grad][cumsum]") {
  const Tensor x = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  CHECK(ops::cumsum(x, 1).to_vector<double>() == std::vector<double>{1, 3, 6, 4, 9, 15});
  CHECK(ops::cumsum(x, 0).to_vector<double>() == std::vector<double>{1, 2, 3, 5, 7, 9});
  CHECK(ops::cumsum(arange(4), 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 3, 6});
  for (int axis : {0, 1, -1})
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::cumsum(v[0], axis); },
                    {test::transposed_layout(test::randn({7, 17}, DType::f64, 8))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::cumsum(v[0], 0); }, {test::randn({1003}, DType::f64, 9)});
  // Off the last axis, a contiguous input is summed a block of positions at a time (blocks of
  // 256, here 2 and a partial one); against the strided path (a transposed copy) and a naive loop.
  const Tensor c = test::randn({3, 5, 601}, DType::f32, 13);
  for (int axis : {0, 1}) {
    INFO("axis " << axis);
    const Tensor got = ops::cumsum(c, axis);
    CHECK(test::same_bits(got, ops::cumsum(test::transposed_layout(c), axis)));
    std::vector<float> want = c.to_vector<float>();
    const std::int64_t stride = axis == 0 ? 5 * 601 : 601, n = c.shape()[axis];
    for (std::int64_t pos = 0; pos < c.numel(); ++pos) {
      if ((pos / stride) % n == 0) {  // first element along the axis: sum the line in f64
        double acc = 0;
        for (std::int64_t i = 0; i < n; ++i) {
          acc += static_cast<double>(want[static_cast<std::size_t>(pos + i * stride)]);
          want[static_cast<std::size_t>(pos + i * stride)] = static_cast<float>(acc);
        }
      }
    }
    CHECK(got.to_vector<float>() == want);
  }
  CHECK_GRADCHECK([](const Tensors& v) { return ops::cumsum(v[0], 1); }, {test::randn({2, 4, 259}, DType::f64, 14)});
  // Empty axes and empty inner sizes: nothing to sum, the shape is kept.
  CHECK(ops::cumsum(zeros({0, 3}), 0).shape() == Shape{0, 3});
  CHECK(ops::cumsum(zeros({2, 0, 5}), 1).shape() == Shape{2, 0, 5});
  CHECK(ops::cumsum(zeros({3, 0}), 0).shape() == Shape{3, 0});
}

TEST_CASE("reductions: NaN, integer and empty inputs", "[ops][reduce]") {
  CHECK(std::isnan(ops::amax(tensor({1, NAN, 3})).item()));
  CHECK(std::isnan(ops::amin(tensor({NAN, 1})).item()));
  CHECK(ops::sum(tensor({1, 1, 0}, DType::boolean)).item<std::int64_t>() == 2);
  CHECK(ops::sum(tensor({1, 2}, DType::i32)).dtype() == DType::i64);
  CHECK(ops::mean(arange(4)).item() == 1.5);
  CHECK(ops::sum(zeros({0, 3}), {0}).to_vector<float>() == std::vector<float>{0, 0, 0});
  CHECK(ops::prod(zeros({0})).item() == 1.0);
  CHECK(ops::logsumexp(tensor({-INFINITY, -INFINITY})).item() == -INFINITY);
  CHECK(ops::logsumexp(tensor({1000, 1000})).item<float>() == Approx(1000 + std::log(2.0)));
  CHECK(ops::var(tensor({1, 2, 3, 4}), {}, 0.0).item() == Approx(1.25));
}

TEST_CASE("f32 sums and products of long rows accumulate in f64", "[ops][reduce]") {
  // 40000 values: the f64 reference rounded once to f32 is what a contiguous row must give (summed
  // in f32 the error would be ~1e-4 of the magnitude).
  const Tensor x = test::randn({40000}, DType::f32, 41);
  const double exact = ops::sum(x.to(DType::f64)).item();
  CHECK(ops::sum(x).item() == static_cast<double>(static_cast<float>(exact)));
  const Tensor near_one = ops::add(ops::mul(test::randn({40000}, DType::f32, 42), 1e-3), 1.0);
  const double exact_prod = ops::prod(near_one.to(DType::f64)).item();
  CHECK(ops::prod(near_one).item() == Approx(exact_prod).epsilon(1e-6));
}

TEST_CASE("reductions: 1 vs N threads give identical bits", "[ops][reduce][threads]") {
  const Tensor big = test::randn({64, 3001}, DType::f32, 10);
  const Tensor longrow = test::randn({2, 200003}, DType::f32, 11);
  for (const ReduceCase& c : reduce_cases()) {
    INFO(c.name);
    CHECK(test::same_bits_across_threads([&] {
      Tensor x = big.detach().requires_grad_();
      Tensor a = c.op(x, {1}, false), b = c.op(x, {0}, false), d = c.op(longrow, {1}, false), e = c.op(longrow, {}, false);
      ops::sum(a).backward();
      return Tensors{a, b, d, e, x.grad()};
    }));
  }
  CHECK(test::same_bits_across_threads([&] { return Tensors{ops::cumsum(big, 1), ops::cumsum(big, 0), ops::argmax(big, 1)}; }));
  const Tensor mid = test::randn({6, 300, 700}, DType::f32, 12);  // middle-axis reductions, column chunks
  CHECK(test::same_bits_across_threads([&] {
    return Tensors{ops::sum(mid, {1}), ops::amax(mid, {1}), ops::mean(mid, {0, 1}), ops::logsumexp(mid, {1}),
                   ops::sum(mid, {0, 2}), ops::amin(mid, {0, 2})};
  }));
}

TEST_CASE("normalize: unit vectors along an axis, eps floor, gradcheck, thread bit-equality", "[ops][reduce][grad][normalize]") {
  // Naive: each slice along `axis` divided by max(its p-norm, eps).
  const Tensor x = test::randn({3, 5, 4}, DType::f64, 50);
  const std::vector<double> xv = x.to_vector<double>();
  for (double p : {1.0, 2.0, ops::kInf}) {
    const std::vector<double> got = ops::normalize(x, p, 1).to_vector<double>();
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 4; ++k) {
        double n = 0;
        for (int j = 0; j < 5; ++j) {
          const double v = std::abs(xv[(i * 5 + j) * 4 + k]);
          n = p == 1.0 ? n + v : p == 2.0 ? n + v * v : std::max(n, v);
        }
        if (p == 2.0) n = std::sqrt(n);
        for (int j = 0; j < 5; ++j) CHECK(got[(i * 5 + j) * 4 + k] == Approx(xv[(i * 5 + j) * 4 + k] / n).epsilon(1e-14));
      }
  }
  // A zero slice stays zero, with gradient 1 / eps (the norm's and the clamp's gradients are 0 there).
  Tensor z = zeros({2, 3}, DType::f64);
  z.narrow(0, 1, 1).copy_(tensor({3, 0, 4}, {1, 3}, DType::f64));
  z.requires_grad_();
  const Tensor y = ops::normalize(z, 2.0, -1, 0.5);
  CHECK(y.to_vector<double>() == std::vector<double>{0, 0, 0, 0.6, 0, 0.8});
  y.backward(tensor({1, 2, 3, 0, 0, 0}, {2, 3}, DType::f64));
  CHECK(z.grad().narrow(0, 0, 1).to_vector<double>() == std::vector<double>{2, 4, 6});
  // Gradients: odd sizes, non-contiguous layouts, each p; eps above some slices' norms.
  for (double p : {1.0, 2.0, ops::kInf}) {
    INFO(p);
    CHECK_GRADCHECK([p](const Tensors& v) { return ops::normalize(v[0], p, 0); },
                    {test::transposed_layout(test::randn({7, 3}, DType::f64, 51))});
    CHECK_GRADCHECK([p](const Tensors& v) { return ops::normalize(v[0], p, -1); }, {test::strided_layout(test::randn({5, 9}, DType::f64, 52))});
    CHECK_GRADCHECK([p](const Tensors& v) { return ops::normalize(v[0], p, 1, 1.5); }, {test::randn({4, 3, 2}, DType::f64, 53)});
  }
  const Tensor big = test::randn({300, 517}, DType::f32, 54);
  CHECK(test::same_bits_across_threads([&] {
    Tensor v = big.detach().requires_grad_();
    const Tensor out = ops::normalize(v, 2.0, 0);
    out.backward(ops::mul(big, 0.5));
    return Tensors{out, v.grad(), ops::normalize(big, 1.0, 1)};
  }));
  for (double p : {1.0, 2.0, ops::kInf}) CHECK(ops::normalize(zeros({3, 0}), p, 1).shape() == Shape{3, 0});
  CHECK_THROWS_WITH(ops::normalize(x, 3.0), Contains("normalize: p must be 1, 2 or infinity, got 3 (x [3, 5, 4])"));
  CHECK_THROWS_WITH(ops::normalize(x, 2.0, 3), Contains("normalize: axis 3 is out of range"));
  CHECK_THROWS_WITH(ops::normalize(x, 2.0, 0, -1.0), Contains("normalize: eps must be finite and >= 0"));
  CHECK_THROWS_WITH(ops::normalize(arange(3)), Contains("normalize: expected a floating-point tensor, got i64"));
  CHECK_THROWS_WITH(ops::normalize(scalar_tensor(1.0)), Contains("normalize: expected a tensor with at least one dim"));
}

TEST_CASE("reductions report bad axes", "[ops][reduce][errors]") {
  const Tensor x = zeros({2, 3});
  CHECK_THROWS_WITH(ops::sum(x, {2}), Contains("sum: axis 2 is out of range for a 2-d tensor of shape [2, 3]"));
  CHECK_THROWS_WITH(ops::sum(x, {1, -1}), Contains("sum: axis 1 appears twice"));
  CHECK_THROWS_WITH(ops::max(zeros({0}), 0), Contains("max: cannot reduce dim 0 of size 0"));
  CHECK_THROWS_WITH(ops::amax(zeros({0})), Contains("amax: cannot reduce an empty"));
  CHECK_THROWS_WITH(ops::norm(x, 3.0), Contains("norm: p must be 1, 2 or infinity, got 3"));
  CHECK_THROWS_WITH(ops::cumsum(scalar_tensor(1), 1), Contains("cumsum: axis 1 is out of range for a 0-d tensor"));
}
