// Tensor basics: factories, metadata, element access, copies, in-place writes, printing, errors.
#include <catch2/catch.hpp>

#include <cstring>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "core/tensor.hpp"
#include "ops/shape.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

TEST_CASE("factories fill shapes and dtypes", "[core][tensor]") {
  const Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::f32);
  CHECK(z.numel() == 6);
  CHECK(z.is_contiguous());
  CHECK(z.to_vector<float>() == std::vector<float>(6, 0.0f));
  CHECK(ones({4}, DType::i32).to_vector<std::int32_t>() == std::vector<std::int32_t>{1, 1, 1, 1});
  CHECK(full({2}, 2.5, DType::f64).to_vector<double>() == std::vector<double>{2.5, 2.5});
  CHECK(arange(5).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(1.0, 2.0, 0.25, DType::f64).to_vector<double>() == std::vector<double>{1.0, 1.25, 1.5, 1.75});
  CHECK(arange(3.0, 0.0, -1.0).to_vector<std::int64_t>() == std::vector<std::int64_t>{3, 2, 1});
  CHECK(arange(2.0, 2.0, -1.0).numel() == 0);
  // Integer ranges are exact past 2^53, where doubles skip odd values.
  CHECK(arange(0x1p53, 0x1p53 + 4).to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{9007199254740992, 9007199254740993, 9007199254740994, 9007199254740995});
  CHECK(arange(0x1p60, 0x1p60 - 1024, -300.0).to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{1152921504606846976, 1152921504606846676, 1152921504606846376, 1152921504606846076});
  CHECK(arange(-3.0, 4.0, 3.0, DType::i32).to_vector<std::int32_t>() == std::vector<std::int32_t>{-3, 0, 3});
  CHECK(arange(0.0, 2.5, 1.0).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2});
  CHECK_THROWS_WITH(arange(0.0, 4e9, 1e9, DType::i32), Contains("arange: value 3000000000 does not fit in i32"));
  // A step pointing away from stop is an error (as torch.arange), not a silent empty range.
  CHECK_THROWS_WITH(arange(3.0, 0.0, 1.0), Contains("arange: step 1 points away from stop"));
  CHECK_THROWS_WITH(arange(-2), Contains("arange: step 1 points away from stop: start 0, stop -2"));
  CHECK(linspace(0, 1, 5, DType::f64).to_vector<double>() == std::vector<double>{0, 0.25, 0.5, 0.75, 1.0});
  CHECK(linspace(2, 3, 1).to_vector<float>() == std::vector<float>{2.0f});
  CHECK(eye(2, 3).to_vector<float>() == std::vector<float>{1, 0, 0, 0, 1, 0});
  const Tensor t = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  CHECK(t.at<double>({1, 2}) == 6.0);
  CHECK(t.at<double>({-1, 0}) == 4.0);
  CHECK(scalar_tensor(3.5).dim() == 0);
  CHECK(scalar_tensor(3.5).item() == 3.5);
  CHECK(from_vector(std::vector<bool>{true, false, true}).dtype() == DType::boolean);
  CHECK(from_vector(std::vector<std::int64_t>{7, 8}, {2, 1}).shape() == Shape{2, 1});
  CHECK(zeros({0, 3}).numel() == 0);
  CHECK(zeros_like(t).dtype() == DType::f64);
  CHECK(full_like(t, 7).at<double>({0, 0}) == 7.0);
}

TEST_CASE("dtype conversion", "[core][tensor]") {
  const Tensor x = tensor({-1.5, 0.0, 2.7}, DType::f64);
  CHECK(x.to(DType::i32).to_vector<std::int32_t>() == std::vector<std::int32_t>{-1, 0, 2});
  CHECK(x.to(DType::boolean).to_vector<bool>() == std::vector<bool>{true, false, true});
  CHECK(x.to(DType::boolean).to(DType::f32).to_vector<float>() == std::vector<float>{1, 0, 1});
  CHECK(x.to(DType::f64).is_same(x));  // no-op conversion returns the same tensor
  CHECK(x.to(DType::f32).at<float>({0}) == -1.5f);
}

TEST_CASE("element access checks its arguments", "[core][tensor][errors]") {
  const Tensor t = zeros({2, 3});
  CHECK_THROWS_WITH(t.at<double>({2, 0}), Contains("at: index 2 is out of range for dim 0 of size 2"));
  CHECK_THROWS_WITH(t.at<double>({0}), Contains("got 1 indices for a 2-d tensor"));
  CHECK_THROWS_WITH(t.item(), Contains("item: expected a tensor with one element, got shape [2, 3]"));
  CHECK_THROWS_WITH(t.data<double>(), Contains("expected a f64 tensor, got f32"));
  CHECK_THROWS_WITH(Tensor().shape(), Contains("undefined tensor"));
  CHECK_THROWS_WITH(t.size(2), Contains("size: axis 2 is out of range for a 2-d tensor of shape [2, 3]"));
  CHECK_THROWS_WITH(zeros({2, -1}), Contains("negative dimension"));
  CHECK_THROWS_WITH(tensor({1, 2, 3}, {2, 2}), Contains("3 values do not fill shape [2, 2]"));
  CHECK_THROWS_WITH(zeros({1, 1, 1, 1, 1, 1, 1, 1, 1}), Contains("at most 8 dims"));
}

TEST_CASE("clone and contiguous copy, copy_ broadcasts and converts", "[core][tensor]") {
  Tensor a = tensor({1, 2, 3, 4}, {2, 2});
  Tensor c = a.clone();
  c.fill_(9);
  CHECK(a.at<float>({0, 0}) == 1.0f);  // the clone owns its data
  CHECK(a.contiguous().is_same(a));
  const Tensor at = a.t();
  CHECK_FALSE(at.is_contiguous());
  CHECK(at.contiguous().to_vector<float>() == std::vector<float>{1, 3, 2, 4});

  Tensor dst = zeros({2, 3}, DType::f64);
  dst.copy_(tensor({1, 2, 3}, DType::i32));
  CHECK(dst.to_vector<double>() == std::vector<double>{1, 2, 3, 1, 2, 3});
  CHECK_THROWS_WITH(dst.copy_(zeros({2})), Contains("cannot be broadcast"));
  // Overlapping source and destination.
  Tensor v = tensor({1, 2, 3, 4});
  v.copy_(v.flip({0}));
  CHECK(v.to_vector<float>() == std::vector<float>{4, 3, 2, 1});
}

TEST_CASE("copies of transposed layouts (tiled) equal an element-by-element copy", "[core][tensor]") {
  // contiguous() and copy_ of transposes, permutations, flips and conversions, at sizes that are
  // and are not multiples of the tiles (64 x 64 through registers for same-type copies of 4- and
  // 8-byte elements, 32 x 32 otherwise); the reference reads element by element.
  auto reference = [](const Tensor& t) {
    std::vector<double> v;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(t.dim()), 0);
    for (std::int64_t n = 0; n < t.numel(); ++n) {
      std::int64_t off = 0;
      for (int d = 0; d < t.dim(); ++d) off += idx[static_cast<std::size_t>(d)] * t.strides()[d];
      v.push_back(t.dtype() == DType::f64 ? t.data<double>()[off] : double(t.data<float>()[off]));
      for (int d = t.dim() - 1; d >= 0 && ++idx[static_cast<std::size_t>(d)] == t.shape()[d]; --d) idx[static_cast<std::size_t>(d)] = 0;
    }
    return v;
  };
  Generator gen1(1), gen2(2), gen3(3), gen4(4);
  const Tensor a = randn({97, 75}, DType::f64, gen1);  // >= 4096 elements: the tiled path
  const Tensor b = randn({5, 40, 33}, DType::f32, gen2);
  const Tensor views[] = {a.t(), a.t().flip({1}), b.permute({2, 1, 0}), b.permute({0, 2, 1}), b.permute({1, 2, 0}).flip({0}),
                          b.transpose(0, 2).narrow(1, 3, 30)};
  for (const Tensor& v : views) {
    INFO(fmt::format("shape {} strides {}", v.shape(), v.strides()));
    CHECK(v.contiguous().to(DType::f64).to_vector<double>() == reference(v));
    Tensor as_f64 = empty(v.shape(), DType::f64);
    as_f64.copy_(v);  // with a conversion
    CHECK(as_f64.to_vector<double>() == reference(v));
    CHECK(test::same_bits_across_threads([&] { return Tensors{v.contiguous()}; }));
  }
  const Tensor big = randn({300, 1000}, DType::f32, gen3);
  CHECK(test::same_bits_across_threads([&] { return Tensors{big.t().contiguous(), big.t().to(DType::i64)}; }));
  CHECK(big.t().contiguous().t().to_vector<float>() == big.to_vector<float>());
  // Integers and bools (bit copies through float registers; bools element by element), and NaN
  // payloads kept bit for bit.
  const Tensor ints = arange(97 * 75).reshape({97, 75});
  for (DType dt : {DType::i32, DType::i64, DType::boolean}) {
    const Tensor v = ints.to(dt).t();
    INFO(dtype_name(dt));
    CHECK(v.contiguous().to(DType::f64).to_vector<double>() == reference(ints.to(dt).to(DType::f64).t()));
  }
  Tensor nans = randn({70, 90}, DType::f32, gen4).clone();
  std::uint32_t payload = 0x7fc01234u;
  float odd_nan;
  std::memcpy(&odd_nan, &payload, sizeof odd_nan);
  nans.data<float>()[5 * 90 + 7] = odd_nan;
  std::uint32_t got;
  std::memcpy(&got, &nans.t().contiguous().data<float>()[7 * 70 + 5], sizeof got);
  CHECK(got == payload);
  // Into a destination that is not contiguous either (cat writes each piece into a slice of its
  // result), and a square matrix copied onto its own transpose (copy_ goes through a clone).
  const Tensor c1 = randn({97, 75}, DType::f32, gen3), c2 = randn({97, 75}, DType::f32, gen4);
  const Tensor joined = ops::cat({c1.t(), c2.t()}, 1);  // [75, 194]
  CHECK(joined.narrow(1, 0, 97).to(DType::f64).to_vector<double>() == reference(c1.t().to(DType::f64)));
  CHECK(joined.narrow(1, 97, 97).to(DType::f64).to_vector<double>() == reference(c2.t().to(DType::f64)));
  Tensor sq = randn({70, 70}, DType::f32, gen1).clone();
  const std::vector<double> want = reference(sq.t().to(DType::f64));
  sq.copy_(sq.t());
  CHECK(sq.to(DType::f64).to_vector<double>() == want);
  // An expanded source fills.
  const Tensor col = randn({50, 1}, DType::f32, gen4);
  CHECK(col.expand({50, 70}).contiguous().to(DType::f64).to_vector<double>() == reference(col.expand({50, 70})));
  CHECK(col.t().expand({70, 50}).to(DType::f64).to_vector<double>() == reference(col.t().expand({70, 50})));
}

TEST_CASE("in-place writes bump the version and are refused where unsafe", "[core][tensor][errors]") {
  Tensor a = zeros({3});
  const auto v0 = a.version();
  a.fill_(1);
  CHECK(a.version() == v0 + 1);
  Tensor view = a.slice(0, 0, 2);
  view.zero_();
  CHECK(a.version() == v0 + 2);  // views share the storage counter
  CHECK(a.to_vector<float>() == std::vector<float>{0, 0, 1});

  Tensor w = zeros({2}).requires_grad_();
  CHECK_THROWS_WITH(w.fill_(1), Contains("fill_: in-place writes to a tensor that requires grad"));
  {
    NoGradGuard no_grad;  // how optimizers update parameters
    w.fill_(1);
  }
  CHECK(w.to_vector<float>() == std::vector<float>{1, 1});
  Tensor e = zeros({1}).expand({4});
  CHECK_THROWS_WITH(e.fill_(2), Contains("cannot write into an expanded tensor"));
}

TEST_CASE("printing", "[core][tensor][format]") {
  const Tensor t = tensor({1, 2.5, -3, 4}, {2, 2});
  CHECK(t.to_string(2) == "tensor([[ 1.00,  2.50],\n        [-3.00,  4.00]], shape=[2, 2], dtype=f32)");
  CHECK(fmt::format("{:.1}", t) == "tensor([[ 1.0,  2.5],\n        [-3.0,  4.0]], shape=[2, 2], dtype=f32)");
  CHECK(t.summary() == "Tensor[2, 2] f32");
  CHECK(tensor({1, 0}, DType::boolean).to_string() == "tensor([ true, false], shape=[2], dtype=bool)");
  CHECK(arange(3).to_string() == "tensor([0, 1, 2], shape=[3], dtype=i64)");
  CHECK(scalar_tensor(2).to_string(1) == "tensor(2.0, shape=[], dtype=f32)");
  const std::string big = arange(10000).reshape({100, 100}).to_string();
  CHECK_THAT(big, Contains("..."));
  CHECK(big.size() < 1000);  // summarised
  // Printing reads through the strides: a permuted view prints its own element order, and a huge
  // expanded view (2^40 elements of one stored value) is summarised without being materialised.
  const Tensor tt = tensor({1, 2, 3, 4, 5, 6}, {2, 3}, DType::i32).t();  // [3, 2] view
  CHECK(tt.to_string() == "tensor([[1, 4],\n        [2, 5],\n        [3, 6]], shape=[3, 2], dtype=i32)");
  const Tensor huge = full({1, 1}, 0.5).expand({1 << 20, 1 << 20});
  CHECK(huge.to_string(1) ==
        "tensor([[0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5],\n        [0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5],\n"
        "        [0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5],\n        ...,\n"
        "        [0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5],\n        [0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5],\n"
        "        [0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5]], shape=[1048576, 1048576], dtype=f32)");
  // One dim of 2^40 (the summarised middle is skipped, not walked).
  CHECK(full({1}, 0.5).expand({std::int64_t{1} << 40}).to_string(1) ==
        "tensor([0.5, 0.5, 0.5, ..., 0.5, 0.5, 0.5], shape=[1099511627776], dtype=f32)");
  CHECK_THROWS_WITH(arange(3).to_string(-1), Contains("to_string: precision must be in 0..30 digits, got -1"));
  // Scientific notation (torch's rule) when fixed-point would hide small values or spell out huge ones.
  CHECK(tensor({1e-8}).to_string() == "tensor([1.0000e-08], shape=[1], dtype=f32)");
  CHECK(tensor({1e-5, 2e-5, 1}).to_string(2) == "tensor([1.00e-05, 2.00e-05, 1.00e+00], shape=[3], dtype=f32)");
  CHECK(tensor({1e200, -1}, DType::f64).to_string(1) == "tensor([1.0e+200, -1.0e+00], shape=[2], dtype=f64)");
  CHECK(tensor({0.5, 600}).to_string(1) == "tensor([5.0e-01, 6.0e+02], shape=[2], dtype=f32)");  // spans > 1000x
  CHECK(tensor({0, 2, 3000}).to_string(1) == "tensor([   0.0,    2.0, 3000.0], shape=[3], dtype=f32)");  // whole
  CHECK(tensor({0, 0.5, 100, NAN, INFINITY}).to_string(1) ==
        "tensor([  0.0,   0.5, 100.0,   nan,   inf], shape=[5], dtype=f32)");  // zeros, nan, inf ignored
  CHECK(scalar_tensor(3e-7).to_string(2) == "tensor(3.00e-07, shape=[], dtype=f32)");
  Tensor x = ones({2}).requires_grad_();
  CHECK(x.summary() == "Tensor[2] f32 requires_grad");
  CHECK((x.reshape({1, 2})).summary() == "Tensor[1, 2] f32 grad_fn=view");
  CHECK(fmt::format("{}", Tensor()) == "Tensor(undefined)");
  CHECK(fmt::format("{}", Shape{2, 3}) == "[2, 3]");
}

TEST_CASE("caching allocator reuses freed blocks", "[core][storage]") {
  empty_allocator_cache();
  const auto before = allocator_stats();
  { Tensor a = empty({1 << 20}); }
  { Tensor b = empty({1 << 20}); }
  const auto after = allocator_stats();
  CHECK(after.allocations - before.allocations == 2);
#ifndef __SANITIZE_ADDRESS__
  if (!std::getenv("TAPEGRAD_NO_ALLOC_CACHE")) CHECK(after.cache_hits - before.cache_hits == 1);
#endif
  CHECK(after.bytes_in_use == before.bytes_in_use);
  empty_allocator_cache();
  CHECK(allocator_stats().bytes_cached == 0);
  // 64-byte alignment for SIMD loads.
  CHECK(reinterpret_cast<std::uintptr_t>(empty({3}).raw_data()) % 64 == 0);
}
