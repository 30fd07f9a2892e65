// Shape and indexing ops: forward vs hand-computed/naive results, gradchecks (non-contiguous and
// odd sizes), determinism of scatters across thread counts, errors for bad indices.
#include <catch2/catch.hpp>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
Tensor i64(std::initializer_list<double> v, const Shape& s) { return tensor(v, s, DType::i64); }
Tensor i64(std::initializer_list<double> v) { return tensor(v, DType::i64); }
}  // namespace

TEST_CASE("cat, stack, split, chunk, unbind", "[ops][shape][grad][cat][split][unbind]") {
  const Tensor a = tensor({1, 2, 3, 4}, {2, 2}), b = tensor({5, 6}, {2, 1});
  CHECK(ops::cat({a, b}, 1).to_vector<float>() == std::vector<float>{1, 2, 5, 3, 4, 6});
  CHECK(ops::cat({a, a}, 0).shape() == Shape{4, 2});
  CHECK(ops::cat({a, tensor({7, 8}, {1, 2}, DType::f64)}, 0).dtype() == DType::f64);
  CHECK(ops::stack({a, a}, 0).shape() == Shape{2, 2, 2});
  CHECK(ops::stack({a, a}, 2).shape() == Shape{2, 2, 2});
  CHECK(ops::stack({a, a}, -1).at<float>({1, 0, 1}) == 3.0f);
  const Tensors parts = ops::split(arange(7), 3, 0);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].to_vector<std::int64_t>() == std::vector<std::int64_t>{6});
  CHECK(ops::split(arange(7), {2, 5}, 0)[1].numel() == 5);
  CHECK(ops::chunk(arange(10), 3, 0).size() == 3);
  CHECK(ops::chunk(arange(10), 3, 0)[0].numel() == 4);
  CHECK(ops::chunk(arange(5), 4, 0).size() == 3);  // pieces of ceil(5 / 4) = 2, as torch.chunk
  // Empty dims, as torch: split gives one empty piece, chunk gives n.
  CHECK(ops::split(zeros({0}), 2, 0).size() == 1);
  CHECK(ops::chunk(zeros({0}), 3, 0).size() == 3);
  const Tensors empty_cols = ops::chunk(zeros({4, 0}), 2, 1);
  REQUIRE(empty_cols.size() == 2);
  CHECK(empty_cols[1].shape() == Shape{4, 0});

  CHECK_GRADCHECK([](const Tensors& v) { return ops::cat({v[0], v[1], v[0]}, 1); },
                  {test::transposed_layout(test::randn({3, 4}, DType::f64, 1)), test::randn({3, 1}, DType::f64, 2)});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::stack({v[0], v[1]}, 1); },
                  {test::randn({7}, DType::f64, 3), test::strided_layout(test::randn({7}, DType::f64, 4))});
  CHECK_GRADCHECK([](const Tensors& v) {
    const Tensors p = ops::chunk(v[0], 3, 1);
    return p[2] * p[0].narrow(1, 0, p[2].shape()[1]);
  }, {test::randn({2, 17}, DType::f64, 5)});
  const Tensors rows = ops::unbind(a, 0);
  REQUIRE(rows.size() == 2);
  CHECK(rows[1].to_vector<float>() == std::vector<float>{3, 4});
  CHECK(ops::unbind(a, 1)[0].to_vector<float>() == std::vector<float>{1, 3});
  CHECK_GRADCHECK([](const Tensors& v) {
    const Tensors p = ops::unbind(v[0], 1);  // only two of three pieces used: zeros for the third
    return p[0] * p[2] + p[2];
  }, {test::transposed_layout(test::randn({4, 3, 2}, DType::f64, 30))});
  CHECK_GRADCHECK([](const Tensors& v) {
    const Tensors p = ops::split(v[0], std::vector<std::int64_t>{2, 0, 5}, 0);
    return ops::cat({p[2], p[0]}, 0);
  }, {test::strided_layout(test::randn({7, 3}, DType::f64, 31))});
  CHECK_THROWS_WITH(ops::unbind(scalar_tensor(1), 0), Contains("unbind: expected a tensor with at least one dim"));
  CHECK_THROWS_WITH(ops::cat({a, tensor({1, 2, 3}, {1, 3})}, 0),
                    Contains("cat: tensor 1 has shape [1, 3], which does not match shape [2, 2] of tensor 0 outside dim 0"));
  CHECK_THROWS_WITH(ops::stack({a, b}, 0), Contains("stack: tensor 1 has shape [2, 1] but tensor 0 has shape [2, 2]"));
  CHECK_THROWS_WITH(ops::split(arange(4), {1, 2}, 0), Contains("split: sizes add up to 3 but dim 0 has size 4"));
}

TEST_CASE("index_select and embedding", "[ops][shape][grad][index_select]") {
  const Tensor x = arange(0.0, 12.0, 1.0, DType::f64).reshape({3, 4});
  CHECK(ops::index_select(x, 0, i64({2, 0, 2})).to_vector<double>() ==
        std::vector<double>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  CHECK(ops::index_select(x, 1, i64({-1})).to_vector<double>() == std::vector<double>{3, 7, 11});
  CHECK(ops::index_select(x.t(), 0, tensor({1}, DType::i32)).to_vector<double>() == std::vector<double>{1, 5, 9});
  const Tensor emb = ops::embedding(x, i64({1, 1, 0, 2}, {2, 2}));
  CHECK(emb.shape() == Shape{2, 2, 4});
  CHECK(emb.at<double>({1, 1, 3}) == 11.0);
  // Repeated indices accumulate in the backward.
  Tensor w = zeros({3, 2}, DType::f64).requires_grad_();
  ops::sum(ops::embedding(w, i64({1, 1, 1, 0}))).backward();
  CHECK(w.grad().to_vector<double>() == std::vector<double>{1, 1, 3, 3, 0, 0});
  for (int axis : {0, 1, 2})
    CHECK_GRADCHECK([axis](const Tensors& v) { return ops::index_select(v[0], axis, i64({2, 0, 2, 1})); },
                    {test::transposed_layout(test::randn({3, 4, 5}, DType::f64, 6))});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::embedding(v[0], i64({6, 0, 6, 3, 6}, {5})); },
                  {test::randn({7, 17}, DType::f64, 7)});
  CHECK_THROWS_WITH(ops::index_select(x, 0, i64({3})), Contains("index_select: index 3 is out of range for a dim of size 3"));
  CHECK_THROWS_WITH(ops::embedding(x, i64({-4})), Contains("out of range"));
  CHECK_THROWS_WITH(ops::index_select(x, 0, tensor({0.0})), Contains("index must be an integer tensor"));
  // Deterministic accumulation for many repeated rows.
  const Tensor idx = randint(0, 50, {20000}, DType::i64);
  CHECK(test::same_bits_across_threads([&] {
    Tensor table = test::randn({50, 300}, DType::f32, 8).requires_grad_();
    ops::embedding(table, idx).backward(test::randn({20000, 300}, DType::f32, 9));
    return Tensors{table.grad()};
  }));
}

TEST_CASE("gather and scatter_add", "[ops][shape][grad][gather][scatter_add]") {
  const Tensor x = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  CHECK(ops::gather(x, 1, i64({2, 0, 1, 1}, {2, 2})).to_vector<double>() == std::vector<double>{3, 1, 5, 5});
  CHECK(ops::gather(x, 0, i64({1, 0, 1}, {1, 3})).to_vector<double>() == std::vector<double>{4, 2, 6});
  const Tensor s = ops::scatter_add(zeros({2, 3}, DType::f64), 1, i64({0, 0, 2, 1}, {2, 2}), tensor({1, 2, 3, 4}, {2, 2}, DType::f64));
  CHECK(s.to_vector<double>() == std::vector<double>{3, 0, 0, 0, 4, 3});
  const Tensor idx = i64({2, 0, 1, 1, 0, 2, 2, 2}, {2, 4});
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::gather(v[0], 1, idx); },
                  {test::transposed_layout(test::randn({2, 3}, DType::f64, 10))});
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::scatter_add(v[0], 1, idx, v[1]); },
                  {test::randn({3, 3}, DType::f64, 11), test::strided_layout(test::randn({2, 4}, DType::f64, 12))});
  CHECK_THROWS_WITH(ops::gather(x, 1, i64({3}, {1, 1})), Contains("gather: index 3 is out of range"));
  CHECK_THROWS_WITH(ops::gather(x, 1, i64({0}, {1})), Contains("gather: index has 1 dims but x has 2"));
  CHECK_THROWS_WITH(ops::scatter_add(x, 0, i64({0}, {1, 1}), zeros({2, 1}, DType::f64)), Contains("must equal src shape"));
  const Tensor big_idx = randint(0, 40, {64, 3000}, DType::i64);
  CHECK(test::same_bits_across_threads([&] {
    return Tensors{ops::scatter_add(zeros({64, 40}), 1, big_idx, test::randn({64, 3000}, DType::f32, 13))};
  }));
}

TEST_CASE("gather and scatter_add along outer and middle dims match a naive loop", "[ops][shape][gather][scatter_add]") {
  // A naive loop over index positions in row-major order adds each output element's
  // contributions in the order of the indexed dim, as the kernel does: f32 results equal bit for
  // bit. Index shapes smaller than x's outside the indexed dim; many repeated targets.
  struct Case {
    Shape x_shape, index_shape;
    int axis;
  };
  const Case cases[] = {{{40, 300}, {500, 300}, 0}, {{40, 300}, {70, 250}, 0}, {{4, 50, 70}, {3, 200, 66}, 1},
                        {{6, 5, 90}, {6, 7, 90}, 1},  {{5, 9, 3}, {4, 9, 300}, 2}, {{40, 30, 1}, {40, 50, 1}, 1}};
  std::uint64_t seed = 30;
  for (const Case& c : cases) {
    INFO(fmt::format("x {} index {} axis {}", c.x_shape, c.index_shape, c.axis));
    const Tensor x = test::randn(c.x_shape, DType::f32, ++seed);
    const Tensor src = test::randn(c.index_shape, DType::f32, ++seed);
    Generator gen(++seed);
    const Tensor index = randint(-c.x_shape[c.axis], c.x_shape[c.axis], c.index_shape, DType::i64, gen);  // negatives count from the end
    std::vector<float> want = x.to_vector<float>(), gathered;
    const Strides xs = contiguous_strides(c.x_shape);
    const std::vector<std::int64_t> iv = index.to_vector<std::int64_t>();
    const std::vector<float> sv = src.to_vector<float>(), xv = x.to_vector<float>();
    std::vector<std::int64_t> pos(c.index_shape.size(), 0);
    for (std::size_t n = 0; n < iv.size(); ++n) {
      std::int64_t off = 0;
      for (int d = 0; d < c.index_shape.size(); ++d)
        off += (d == c.axis ? (iv[n] + (iv[n] < 0 ? c.x_shape[d] : 0)) : pos[d]) * xs[d];
      want[static_cast<std::size_t>(off)] += sv[n];
      gathered.push_back(xv[static_cast<std::size_t>(off)]);
      for (int d = c.index_shape.size() - 1; d >= 0 && ++pos[d] == c.index_shape[d]; --d) pos[d] = 0;
    }
    CHECK(ops::scatter_add(x, c.axis, index, src).to_vector<float>() == want);
    CHECK(ops::gather(x, c.axis, index).to_vector<float>() == gathered);
    CHECK(test::same_bits_across_threads([&] { return Tensors{ops::scatter_add(x, c.axis, index, src), ops::gather(x, c.axis, index)}; }));
  }
  // The index is copied: writing to the caller's index after the call does not change the gradient.
  Tensor index = i64({1, 0, 1}, {3, 1});
  Tensor w = test::randn({2, 1}, DType::f64, 40).requires_grad_();
  Tensor y = ops::gather(w, 0, index);
  index.fill_(0);
  y.backward(tensor({1, 2, 4}, {3, 1}, DType::f64));
  CHECK(w.grad().to_vector<double>() == std::vector<double>{2, 5});
  CHECK_THROWS_WITH(ops::gather(w, 0, i64({0, 1, -3}, {3, 1})), Contains("gather: index -3 is out of range for a dim of size 2"));
  CHECK_THROWS_WITH(ops::scatter_add(w, 0, i64({0, 2, 5}, {3, 1}), zeros({3, 1}, DType::f64)),
                    Contains("scatter_add: index 2 is out of range for a dim of size 2"));
  CHECK_THROWS_WITH(ops::embedding(w, i64({0, -1})), Contains("embedding: index -1 is out of range for a dim of size 2"));
}

TEST_CASE("repeat_interleave: values, per-entry counts, gradcheck, thread bit-equality", "[ops][shape][grad][repeat_interleave]") {
  const Tensor x = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  CHECK(ops::repeat_interleave(x, 2, 0).to_vector<double>() == std::vector<double>{1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6});
  CHECK(ops::repeat_interleave(x, 2, -1).to_vector<double>() == std::vector<double>{1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6});
  CHECK(ops::repeat_interleave(x, 0, 1).shape() == Shape{2, 0});
  CHECK(ops::repeat_interleave(x, i64({0, 3, 1}), 1).to_vector<double>() == std::vector<double>{2, 2, 2, 3, 5, 5, 5, 6});
  CHECK(ops::repeat_interleave(x, tensor({2}, DType::i32), 0).shape() == Shape{4, 3});  // one count for all
  CHECK(ops::repeat_interleave(x, scalar_tensor(3, DType::i64), 1).shape() == Shape{2, 9});
  CHECK(ops::repeat_interleave(zeros({2, 0}), i64({}), 1).shape() == Shape{2, 0});
  CHECK(ops::repeat_interleave(arange(3), 2, 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0, 1, 1, 2, 2});
  // Naive reference on a larger non-contiguous input, per-entry counts along the middle dim.
  const Tensor big = test::transposed_layout(test::randn({7, 40, 9}, DType::f32, 60));
  const Tensor counts = randint(0, 4, {big.shape()[1]}, DType::i64);
  const Tensor got = ops::repeat_interleave(big, counts, 1);
  const std::vector<std::int64_t> cv = counts.to_vector<std::int64_t>();
  std::vector<Tensor> pieces;
  for (std::int64_t i = 0; i < big.shape()[1]; ++i)
    for (std::int64_t r = 0; r < cv[static_cast<std::size_t>(i)]; ++r) pieces.push_back(big.narrow(1, i, 1));
  CHECK(got.to_vector<float>() == ops::cat(pieces, 1).to_vector<float>());
  // Gradients: each entry's copies summed.
  CHECK_GRADCHECK([](const Tensors& v) { return ops::repeat_interleave(v[0], 3, 0); },
                  {test::transposed_layout(test::randn({5, 3}, DType::f64, 61))});
  const Tensor c = i64({2, 0, 1, 3, 1});
  CHECK_GRADCHECK([&](const Tensors& v) { return ops::repeat_interleave(v[0], c, -1); }, {test::strided_layout(test::randn({3, 5}, DType::f64, 62))});
  CHECK(test::same_bits_across_threads([&] {
    Tensor v = test::randn({200, 300}, DType::f32, 63).requires_grad_();
    const Tensor out = ops::repeat_interleave(v, 5, 0);
    out.backward(test::randn(out.shape(), DType::f32, 64));
    return Tensors{out, v.grad()};
  }));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, -1, 0), Contains("repeat_interleave: negative repeat count -1"));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, i64({1, -2, 1}), 1), Contains("negative repeat count -2 (entry 1)"));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, i64({1, 2}), 1),
                    Contains("repeat_interleave: repeats of shape [2] must hold one count per entry of dim 1 of x (shape [2, 3]: 3)"));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, tensor({1.0, 2.0, 1.0}), 1), Contains("repeats must be an integer tensor"));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, 2, 2), Contains("repeat_interleave: axis 2 is out of range"));
  CHECK_THROWS_WITH(ops::repeat_interleave(scalar_tensor(1.0), 2, 0), Contains("at least one dim, got a 0-d tensor"));
  CHECK_THROWS_WITH(ops::repeat_interleave(x, std::int64_t{1} << 40, 0), Contains("too many (more than 2^40)"));
}

TEST_CASE("masked_fill, tril, triu, one_hot", "[ops][shape]") {
  const Tensor x = tensor({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}, DType::f64);
  CHECK(ops::masked_fill(x, ops::gt(x, 4.0), -1).to_vector<double>() == std::vector<double>{1, 2, 3, 4, -1, -1, -1, -1, -1});
  CHECK(ops::masked_fill(x, tensor({1, 0, 0}, DType::boolean), 0).to_vector<double>() == std::vector<double>{0, 2, 3, 0, 5, 6, 0, 8, 9});
  CHECK(ops::tril(x).to_vector<double>() == std::vector<double>{1, 0, 0, 4, 5, 0, 7, 8, 9});
  CHECK(ops::triu(x, 1).to_vector<double>() == std::vector<double>{0, 2, 3, 0, 0, 6, 0, 0, 0});
  CHECK(ops::tril(x, -1).to_vector<double>() == std::vector<double>{0, 0, 0, 4, 0, 0, 7, 8, 0});
  CHECK(ops::one_hot(i64({2, 0}), 3).to_vector<float>() == std::vector<float>{0, 0, 1, 1, 0, 0});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::tril(v[0], 1) + ops::masked_fill(v[0], ops::gt(v[0], 0.0), 2.0); },
                  {test::transposed_layout(test::randn({4, 5}, DType::f64, 14))});
  CHECK_THROWS_WITH(ops::one_hot(i64({3}), 3), Contains("one_hot: index 3 is out of range for a dim of size 3"));
  CHECK_THROWS_WITH(ops::masked_fill(x, tensor({1, 0}, DType::boolean), 0), Contains("cannot be broadcast"));
  CHECK_THROWS_WITH(ops::masked_fill(zeros({3}), ones({2, 3}, DType::boolean), 0), Contains("does not broadcast to x's shape"));
}

TEST_CASE("bincount", "[ops][shape]") {
  CHECK(ops::bincount(i64({2, 0, 2, 4, 2}), 6).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 3, 0, 1, 0});
  CHECK(ops::bincount(tensor({}, DType::i32), 3).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0, 0});
  CHECK_THROWS_WITH(ops::bincount(i64({1, 3}), 3), Contains("bincount: index 3 is out of range"));
  CHECK_THROWS_WITH(ops::bincount(i64({-1}), 3), Contains("bincount: index -1 is out of range"));
  CHECK_THROWS_WITH(ops::bincount(i64({1, 2}, {1, 2}), 3), Contains("bincount: expected a 1-D index"));
  CHECK_THROWS_WITH(ops::bincount(tensor({1.0}), 3), Contains("must be an integer tensor"));
}

TEST_CASE("pad, repeat, roll", "[ops][shape][grad][roll]") {
  const Tensor x = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  CHECK(ops::pad(x, {1, 2}).to_vector<double>() == std::vector<double>{0, 1, 2, 3, 0, 0, 0, 4, 5, 6, 0, 0});
  CHECK(ops::pad(x, {0, 0, 1, 0}, ops::PadMode::constant, 9).to_vector<double>() ==
        std::vector<double>{9, 9, 9, 1, 2, 3, 4, 5, 6});
  CHECK(ops::pad(x, {2, 1}, ops::PadMode::reflect).to_vector<double>() ==
        std::vector<double>{3, 2, 1, 2, 3, 2, 6, 5, 4, 5, 6, 5});
  CHECK(ops::pad(x, {1, 1}, ops::PadMode::replicate).to_vector<double>() ==
        std::vector<double>{1, 1, 2, 3, 3, 4, 4, 5, 6, 6});
  CHECK(ops::pad(x, {-1, 0}).to_vector<double>() == std::vector<double>{2, 3, 5, 6});
  CHECK(ops::pad(x, {2, 3}, ops::PadMode::circular).to_vector<double>() ==  // torch 1.13's values
        std::vector<double>{2, 3, 1, 2, 3, 1, 2, 3, 5, 6, 4, 5, 6, 4, 5, 6});
  CHECK(ops::pad(x, {0, 0, 1, 2}, ops::PadMode::circular).to_vector<double>() ==
        std::vector<double>{4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6});
  CHECK_THROWS_WITH(ops::pad(x, {4, 0}, ops::PadMode::circular), Contains("circular padding (4, 0) must be at most dim 1 of size 3"));
  CHECK(ops::repeat(tensor({1, 2}), {2, 2}).to_vector<float>() == std::vector<float>{1, 2, 1, 2, 1, 2, 1, 2});
  CHECK(ops::repeat(x, {1, 2}).shape() == Shape{2, 6});
  CHECK(ops::roll(arange(5), 2, 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 4, 0, 1, 2});
  CHECK(ops::roll(arange(5), -1, 0).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3, 4, 0});
  const Tensor in = test::transposed_layout(test::randn({3, 5}, DType::f64, 15));
  CHECK_GRADCHECK([](const Tensors& v) { return ops::pad(v[0], {1, 2, 2, 1}, ops::PadMode::reflect); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::pad(v[0], {2, 3}, ops::PadMode::replicate); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::pad(v[0], {5, 3, 1, 2}, ops::PadMode::circular); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::pad(v[0], {1, -1, 0, 2}, ops::PadMode::constant, 0.5); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::repeat(v[0], {2, 1, 3}); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::roll(v[0], 3, 1); }, {in});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::roll(v[0], -7, 0); }, {test::strided_layout(test::randn({4, 3}, DType::f64, 17))});
  // Against the definition out[i] = x[(i - shift) mod n], along a middle axis, and threads.
  const Tensor big = test::randn({3, 1001, 7}, DType::f32, 18);
  const Tensor rolled = ops::roll(big, 400, 1);
  for (std::int64_t i : {0, 399, 400, 1000})
    CHECK(test::same_bits(rolled.narrow(1, i, 1), big.narrow(1, ((i - 400) % 1001 + 1001) % 1001, 1)));
  CHECK(test::same_bits_across_threads([&] {
    Tensor xr = big.detach().requires_grad_();
    Tensor y = ops::roll(xr, -123, 1);
    y.backward(ops::roll(big, 5, 0));
    return Tensors{y, xr.grad()};
  }));
  CHECK_THROWS_WITH(ops::pad(x, {3, 0}, ops::PadMode::reflect), Contains("reflect padding (3, 0) must be smaller than dim 1 of size 3"));
  CHECK_THROWS_WITH(ops::pad(x, {1}), Contains("pad: expected an even number of pad sizes"));
  CHECK_THROWS_WITH(ops::repeat(x, {2}), Contains("repeat: got 1 repeats for a 2-d tensor"));
  // Dims repeated once need no intermediate dim: 6-d inputs work while at most 2 dims repeat.
  const Tensor six = test::randn({1, 2, 1, 2, 1, 2}, DType::f64, 16);
  const Tensor r6 = ops::repeat(six, {1, 1, 3, 1, 2, 1});
  REQUIRE(r6.shape() == Shape{1, 2, 3, 2, 2, 2});
  CHECK(r6.at<double>({0, 1, 2, 1, 1, 0}) == six.at<double>({0, 1, 0, 1, 0, 0}));
  CHECK_THROWS_WITH(ops::repeat(zeros({2, 2, 2, 2, 2}), {2, 2, 2, 2, 2}),
                    Contains("repeat: repeats [2, 2, 2, 2, 2] of a tensor of shape [2, 2, 2, 2, 2] need an intermediate of 10 dims (max 8)"));
}

TEST_CASE("patchify and unpatchify", "[ops][shape][grad][patchify]") {
  // Against the definition, element by element: token n = (r, c) in raster order, feature (ch, a, b).
  const std::int64_t B = 2, C = 3, H = 6, W = 4, p = 2;
  const Tensor x = test::randn({B, C, H, W}, DType::f64, 40);
  const Tensor t = ops::patchify(x, p);  // [B, 6, 12]
  REQUIRE(t.shape() == Shape{B, (H / p) * (W / p), C * p * p});
  bool all_equal = true;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t r = 0; r < H / p; ++r)
      for (std::int64_t c = 0; c < W / p; ++c)
        for (std::int64_t ch = 0; ch < C; ++ch)
          for (std::int64_t i = 0; i < p; ++i)
            for (std::int64_t j = 0; j < p; ++j)
              all_equal &= t.at<double>({b, r * (W / p) + c, (ch * p + i) * p + j}) == x.at<double>({b, ch, r * p + i, c * p + j});
  CHECK(all_equal);
  CHECK(test::same_bits(ops::unpatchify(t, p, H, W), x));
  // A 1 x 1 patch is a transpose; the whole image as one patch is a flatten.
  CHECK(test::same_bits(ops::patchify(x, 1), x.reshape({B, C, H * W}).transpose(1, 2)));
  CHECK(test::same_bits(ops::patchify(x.narrow(2, 0, 4), 4), x.narrow(2, 0, 4).reshape({B, 1, C * 16})));
  // Gradients, also of a non-contiguous odd-size input; bit equality across thread counts.
  const Tensor odd = test::transposed_layout(test::randn({1, 3, 3, 3}, DType::f64, 41));
  CHECK_GRADCHECK([](const Tensors& v) { return ops::patchify(v[0], 3); }, {odd});
  CHECK_GRADCHECK([](const Tensors& v) { return ops::unpatchify(v[0], 2, 4, 6); }, {test::randn({2, 6, 8}, DType::f64, 42)});
  CHECK(test::same_bits_across_threads([&] {
    const Tensor big = test::randn({4, 3, 64, 64}, DType::f32, 43).requires_grad_();
    const Tensor y = ops::patchify(big, 4);
    y.backward(test::randn(y.shape(), DType::f32, 44));
    return Tensors{y, big.grad()};
  }));
  CHECK_THROWS_WITH(ops::patchify(x, 4), Contains("patchify: patch size 4 must divide the image size 6 x 4"));
  CHECK_THROWS_WITH(ops::patchify(x.narrow(0, 0, 1).reshape({3, 6, 4}), 2), Contains("expected images [B, C, H, W]"));
  CHECK_THROWS_WITH(ops::unpatchify(t, p, H, 2 * W), Contains("expected tokens [B, 12, C * 4]"));
  CHECK_THROWS_WITH(ops::unpatchify(t, 0, H, W), Contains("patch size 0 must divide"));
}
