// Layers on the heavy ops: norms (batch norm included), convolutions, attention (self/cross, masks, rotary, KV cache),
// the transformer block, time embeddings and adaLN.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>

#include "core/autograd.hpp"
#include "nn/attention.hpp"
#include "nn/linear.hpp"
#include "nn/conv.hpp"
#include "nn/norm.hpp"
#include "nn/positional.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

TEST_CASE("norm layers normalise and list their parameters", "[nn][layers]") {
  nn::LayerNorm ln(8);
  const Tensor x = test::randn({4, 8}, DType::f32, 1) * 3.0 + 2.0;
  const Tensor y = ln(x);
  CHECK(ops::amax(ops::abs(ops::mean(y, {1}))).item() < 1e-5);
  CHECK(ln.named_parameters().size() == 2);
  nn::RMSNorm rms(8);
  CHECK(ops::amax(ops::abs(ops::mean(ops::square(rms(x)), {1}) - 1.0)).item() < 1e-4);
  CHECK(rms.named_parameters().size() == 1);
  nn::LayerNorm plain(8, {.affine = false});
  CHECK(plain.named_parameters().empty());
  nn::GroupNorm gn(2, 4);
  const Tensor xg = test::randn({2, 4, 3, 3}, DType::f32, 2);
  CHECK(gn(xg).shape() == Shape{2, 4, 3, 3});
  CHECK(test::same_bits(gn.with_silu(xg), ops::silu(gn(xg))));
  nn::Norm either(8, nn::NormKind::rms, {.eps = 1e-6});
  CHECK(test::same_bits(either(x), rms(x)));
  CHECK(either.named_parameters()[0].name == "weight");
  CHECK_THROWS_WITH(nn::GroupNorm(3, 4), Contains("GroupNorm: 3 groups do not divide 4 channels"));
}

TEST_CASE("BatchNorm: batch statistics in training, running ones in eval, buffers in the state", "[nn][layers]") {
  nn::BatchNorm bn(3, {.momentum = 0.5});
  const Tensor x = test::randn({16, 3, 4, 4}, DType::f32, 3) * 2.0 + 1.0;
  const Tensor y = bn(x);  // training: per-channel mean 0, variance 1 over N, H, W
  CHECK(ops::amax(ops::abs(ops::mean(y, {0, 2, 3}))).item() < 1e-5);
  CHECK(ops::amax(ops::abs(ops::mean(ops::square(y), {0, 2, 3}) - 1.0)).item() < 1e-3);
  // The running statistics moved halfway to the batch's (unbiased variance).
  const Tensor batch_mean = ops::mean(x, {0, 2, 3});
  CHECK_ALLCLOSE(bn.running_mean, batch_mean * 0.5, 1e-6, 1e-6);
  const Tensor centred = x - batch_mean.reshape({1, 3, 1, 1});
  CHECK_ALLCLOSE(bn.running_var, ops::sum(ops::square(centred), {0, 2, 3}) / 255.0 * 0.5 + 0.5, 1e-5, 1e-5);
  // Eval: a fixed affine map per channel, the same for any batch; the running statistics stay.
  bn.eval();
  const Tensor before = bn.running_mean.clone();
  const Tensor one = bn(x.narrow(0, 0, 1));
  CHECK_ALLCLOSE(one, bn(x).narrow(0, 0, 1), 0, 0);
  CHECK(test::same_bits(bn.running_mean, before));
  const auto names = [&] {
    std::vector<std::string> out;
    for (const auto& t : bn.state()) out.push_back(t.name);
    return out;
  }();
  CHECK(names == std::vector<std::string>{"weight", "bias", "running_mean", "running_var"});
  CHECK(bn.named_parameters().size() == 2);
  // Without running statistics, eval mode normalises by the batch's own.
  nn::BatchNorm plain(3, {.affine = false, .track_running_stats = false});
  plain.eval();
  CHECK(ops::amax(ops::abs(ops::mean(plain(x), {0, 2, 3}))).item() < 1e-5);
  CHECK(plain.state().empty());
  nn::BatchNorm seq(4);  // BatchNorm1d on [N, C, L] and [N, C]
  CHECK(seq(test::randn({5, 4, 9}, DType::f32, 4)).shape() == Shape{5, 4, 9});
  CHECK(seq(test::randn({5, 4}, DType::f32, 5)).shape() == Shape{5, 4});
  CHECK_THROWS_WITH(seq(zeros({5, 3})), Contains("BatchNorm: expected x [N, 4, *], got [5, 3]"));
  CHECK_THROWS_WITH(seq(zeros({1, 4})), Contains("training needs more than one value per channel"));
  CHECK_THROWS_WITH(nn::BatchNorm(0), Contains("BatchNorm: channels must be positive"));
}

TEST_CASE("MonarchLinear: the dense product of its weight, padding, init ranges, gradients", "[nn][layers][monarch]") {
  // The spec's example: 784 -> 1024 with K = 28, J = 32 has 53,760 weights (dense: 802,816).
  Generator g(7);
  nn::MonarchLinear big(784, 1024, 28, 32, {.gen = &g});
  CHECK(big.num_parameters() == 53760 + 1024);
  CHECK(ops::amax(ops::abs(big.w1)).item() <= 1.0 / std::sqrt(28.0));
  CHECK(ops::amax(ops::abs(big.w2)).item() <= 1.0 / std::sqrt(28.0));
  CHECK(big.named_parameters()[0].name == "w1");
  // Sizes the blocks divide and sizes they do not (x padded to K*I = 12, output cut from 8 to 7).
  for (const auto& [in, out, K, J] : std::vector<std::array<std::int64_t, 4>>{{12, 8, 3, 2}, {10, 7, 3, 2}, {16, 16, 4, 4}}) {
    INFO("in out K J = " << in << " " << out << " " << K << " " << J);
    nn::MonarchLinear layer(in, out, K, J, {.dtype = DType::f64, .gen = &g});
    const Tensor x = test::randn({5, in}, DType::f64, 8);
    const Tensor w = layer.dense_weight();
    REQUIRE(w.shape() == Shape{out, in});
    CHECK_ALLCLOSE(layer(x), ops::matmul(x, w.t()) + layer.bias, 1e-12, 1e-12);
    CHECK(layer(test::randn({2, 3, in}, DType::f64, 9)).shape() == Shape{2, 3, out});
    CHECK_GRADCHECK(
        [&](const Tensors& v) {
          nn::MonarchLinear m = layer;
          m.w1 = v[1];
          m.w2 = v[2];
          m.bias = v[3];
          return m(v[0]);
        },
        {test::transposed_layout(x), layer.w1.detach().clone(), layer.w2.detach().clone(), layer.bias.detach().clone()});
  }
  // Dense-to-sparse: a weight that is Monarch-structured comes back exactly; any other one moves to
  // its nearest Monarch matrix (closer than the layer's own random factors).
  nn::MonarchLinear src(10, 7, 3, 2, {.dtype = DType::f64, .gen = &g}), dst(10, 7, 3, 2, {.dtype = DType::f64, .gen = &g});
  dst.set_from_dense(src.dense_weight());
  CHECK_ALLCLOSE(dst.dense_weight(), src.dense_weight(), 1e-10, 1e-10);
  const Tensor dense = test::randn({7, 10}, DType::f64, 10);
  const double before = ops::sum(ops::square(dst.dense_weight() - dense)).item();
  dst.set_from_dense(dense);
  CHECK(ops::sum(ops::square(dst.dense_weight() - dense)).item() < before);
  CHECK(dst.w1.requires_grad());
  CHECK_THROWS_WITH(dst.set_from_dense(zeros({10, 7}, DType::f64)), Contains("expected a weight [7, 10], got [10, 7]"));
  nn::MonarchLinear plain(6, 4, 2, 2, {.bias = false});
  CHECK(plain.named_parameters().size() == 2);
  CHECK_THROWS_WITH(plain(zeros({3, 5})), Contains("MonarchLinear: expected x [..., 6], got [3, 5]"));
  CHECK_THROWS_WITH(nn::MonarchLinear(6, 4, 7, 2), Contains("MonarchLinear: need in, out > 0 and 0 < K <= in, 0 < J <= out"));
}

TEST_CASE("conv layers: shapes, parameter names, gradients", "[nn][layers]") {
  Generator gen(3);
  nn::Conv2d conv(3, 8, 3, {.stride = {2, 2}, .padding = {1, 1}, .dtype = DType::f64, .gen = &gen});
  CHECK(conv(test::randn({2, 3, 9, 9})).shape() == Shape{2, 8, 5, 5});
  CHECK(conv.named_parameters()[0].name == "weight");
  CHECK_GRADCHECK([&](const Tensors& v) { return conv(v[0]); }, {test::randn({1, 3, 5, 5}, DType::f64, 4)});
  nn::ConvTranspose2d up(8, 4, {4, 4}, {.stride = {2, 2}, .padding = {1, 1}, .gen = &gen});
  CHECK(up(test::randn({2, 8, 5, 5}, DType::f32)).shape() == Shape{2, 4, 10, 10});
  nn::Conv2d depthwise(4, 4, 3, {.padding = {1, 1}, .groups = 4});
  CHECK(depthwise.weight.shape() == Shape{4, 1, 3, 3});
  // One number stands for both dims (as torch's ints), never {n, 0}.
  nn::Conv2d same(3, 4, 3, {.stride = 1, .padding = 1});
  CHECK(same.conv.padding == ops::Size2{1, 1});
  CHECK(same(test::randn({1, 3, 8, 8}, DType::f32)).shape() == Shape{1, 4, 8, 8});
  CHECK(nn::ConvTranspose2d(8, 4, 4, {.stride = 2, .padding = 1})(test::randn({1, 8, 5, 5}, DType::f32)).shape() == Shape{1, 4, 10, 10});
  CHECK(ops::max_pool2d(test::randn({1, 2, 7, 7}), 3, 2, 1).shape() == Shape{1, 2, 4, 4});
  CHECK_THROWS_WITH(nn::Conv2d(3, 4, 3, {.groups = 2}), Contains("groups must divide"));
  // upsampled(x) is the convolution of the 2x nearest-upsampled x: fused (3x3 / pad 1, 1x1) or,
  // where the options do not allow it (stride 2, groups), the plain composition.
  const Tensor x = test::randn({2, 4, 5, 3}, DType::f64, 8);
  for (const nn::Conv2dOptions& o : {nn::Conv2dOptions{.padding = {1, 1}, .dtype = DType::f64, .gen = &gen},
                                     nn::Conv2dOptions{.dtype = DType::f64, .gen = &gen},
                                     nn::Conv2dOptions{.stride = {2, 2}, .padding = {1, 1}, .dtype = DType::f64, .gen = &gen},
                                     nn::Conv2dOptions{.padding = {1, 1}, .groups = 2, .dtype = DType::f64, .gen = &gen}}) {
    for (std::int64_t k : {3, 1}) {
      const nn::Conv2d c(4, 6, k, o);
      if (c.conv.padding[0] >= k) continue;
      CHECK_ALLCLOSE(c.upsampled(x), c(ops::upsample(x, 2.0)), 1e-12, 1e-12);
    }
  }
}

TEST_CASE("attention: shapes, causality, cross-attention, gradients", "[nn][attention]") {
  Generator gen(5);
  nn::MultiheadAttention attn(16, 4, {.gen = &gen});
  const Tensor x = test::randn({2, 7, 16}, DType::f32, 6);
  CHECK(attn(x).shape() == Shape{2, 7, 16});
  // Causal: changing later tokens never changes earlier outputs.
  const Tensor y = attn(x, {.causal = true});
  Tensor x2 = x.clone();
  x2.narrow(1, 4, 3).fill_(5.0);
  const Tensor y2 = attn(x2, {.causal = true});
  CHECK(test::same_bits(y.narrow(1, 0, 4), y2.narrow(1, 0, 4)));
  CHECK_FALSE(test::same_bits(y.narrow(1, 4, 3), y2.narrow(1, 4, 3)));
  // Cross-attention over a context of another length and width.
  nn::MultiheadAttention cross(16, 2, {.kv_dim = 6, .gen = &gen});
  const Tensor ctx = test::randn({2, 5, 6}, DType::f32, 7);
  CHECK(cross(x, {.context = &ctx}).shape() == Shape{2, 7, 16});
  CHECK(cross.named_parameters().size() == 6);
  CHECK_THROWS_WITH(cross(x), Contains("cross-attention needs a context"));
  const nn::RotaryTables rot7{ones({7, 4}), zeros({7, 4})};
  const Tensor ctx7 = test::randn({2, 7, 6}, DType::f32, 7);  // as long as x: the tables would fit the keys too
  CHECK_THROWS_WITH(cross(x, {.context = &ctx7, .rotary = &rot7}), Contains("rotary tables apply to self-attention only"));
  // Gradients through the whole layer (f64 parameters), with a mask and rotary tables.
  nn::MultiheadAttention a64(8, 2, {.dtype = DType::f64, .gen = &gen});
  const Tensor mask = tensor({1, 1, 0, 1, 0, 1, 1, 1, 1}, {3, 3}, DType::boolean);
  const nn::RotaryTables rot{test::uniform({3, 2}, -1, 1, DType::f64, 20), test::uniform({3, 2}, -1, 1, DType::f64, 21)};
  CHECK_GRADCHECK([&](const Tensors& v) { return a64(v[0], {.mask = mask, .rotary = &rot}); },
                  {test::randn({2, 3, 8}, DType::f64, 8)});
  nn::TransformerBlock b64(8, 2, {.dtype = DType::f64, .gen = &gen});
  CHECK_GRADCHECK([&](const Tensors& v) { return b64(v[0], {.causal = true}); }, {test::randn({1, 4, 8}, DType::f64, 9)});
  CHECK_THROWS_WITH(nn::MultiheadAttention(10, 4), Contains("4 heads must divide dim 10"));
  CHECK_THROWS_WITH(attn(test::randn({2, 7, 6}, DType::f32, 6)),
                    Contains("MultiheadAttention: x of shape [2, 7, 6] has 6 features, the layer was built for dim 16"));
}

TEST_CASE("KV-cache decoding equals full recomputation", "[nn][attention]") {
  Generator gen(9);
  nn::TransformerBlock block(16, 4, {.gen = &gen});
  const Tensor x = test::randn({2, 9, 16}, DType::f32, 10);
  // Rotary tables for positions 0..8 (head_dim 4 -> 2 frequencies).
  std::vector<double> c, s;
  for (int t = 0; t < 9; ++t)
    for (int i = 0; i < 2; ++i) {
      const double angle = t * std::pow(10000.0, -static_cast<double>(i) / 2);
      c.push_back(std::cos(angle));
      s.push_back(std::sin(angle));
    }
  const Tensor cos = from_vector(c, {9, 2}), sin = from_vector(s, {9, 2});
  NoGradGuard no_grad;
  const nn::RotaryTables all{cos, sin};
  const Tensor full = block(x, {.causal = true, .rotary = &all});
  nn::KVCache cache(9);
  Tensors steps;
  // A prompt of 4 tokens, then one token at a time.
  const nn::RotaryTables prompt{cos.narrow(0, 0, 4), sin.narrow(0, 0, 4)};
  steps.push_back(block(x.narrow(1, 0, 4), {.causal = true, .rotary = &prompt, .cache = &cache}));
  for (int t = 4; t < 9; ++t) {
    const nn::RotaryTables one{cos.narrow(0, t, 1), sin.narrow(0, t, 1)};
    steps.push_back(block(x.narrow(1, t, 1), {.causal = true, .rotary = &one, .cache = &cache}));
  }
  CHECK(cache.length == 9);
  CHECK_ALLCLOSE(ops::cat(steps, 1), full, 1e-5, 1e-5);
  const nn::RotaryTables extra{cos.narrow(0, 0, 1), sin.narrow(0, 0, 1)};
  CHECK_THROWS_WITH(block(x.narrow(1, 0, 1), {.causal = true, .rotary = &extra, .cache = &cache}), Contains("do not fit"));
}

TEST_CASE("attention: score scale, temperature, queries kept out of the cache", "[nn][attention]") {
  // The layer against the attention written out with ops, at a custom scale and a temperature.
  Generator g1(21), g2(21);
  const nn::MultiheadAttention plain(8, 2, {.dtype = DType::f64, .gen = &g1});
  nn::MultiheadAttention scaled(8, 2, {.scale = 0.25, .dtype = DType::f64, .gen = &g2});
  const Tensor x = test::randn({2, 5, 8}, DType::f64, 22);  // [B, T, dim]
  const Tensors p = ops::unbind(plain.qkv(x).reshape({2, 5, 3, 2, 4}), 2);  // 3 x [B, T, H, d]
  const Tensor q = p[0].permute({0, 2, 1, 3}), k = p[1].permute({0, 2, 1, 3}), v = p[2].permute({0, 2, 1, 3});
  const auto reference = [&](double s) {                                     // [B, T, dim]
    const Tensor a = ops::softmax(ops::matmul(q, k.transpose(-1, -2)) * s, -1);  // [B, H, T, T]
    return plain.out(ops::matmul(a, v).permute({0, 2, 1, 3}).reshape({2, 5, 8}));
  };
  CHECK_ALLCLOSE(scaled(x), reference(0.25), 1e-12, 1e-12);
  CHECK_ALLCLOSE(scaled(x, {.temperature = 0.5}), reference(0.5), 1e-12, 1e-12);
  CHECK_ALLCLOSE(plain(x, {.temperature = 2.0}), reference(0.5 / 2.0), 1e-12, 1e-12);
  CHECK(scaled.to_string().find("scale=0.25") != std::string::npos);
  CHECK_GRADCHECK([&](const Tensors& in) { return scaled(in[0], {.causal = true, .temperature = 0.7}); },
                  {test::randn({1, 4, 8}, DType::f64, 23)});
  CHECK_THROWS_WITH(plain(x, {.temperature = 0.0}), Contains("temperature must be positive"));
  CHECK_THROWS_WITH(plain(x, {.cache_append = false}), Contains("cache_append = false needs a cache"));
  CHECK_THROWS_WITH(nn::MultiheadAttention(8, 2, {.scale = std::numeric_limits<double>::infinity()}), Contains("must be finite"));

  // A query that is not appended sees the cache and itself, and leaves the cache as it was.
  Generator gen(24);
  nn::TransformerBlock block(16, 4, {.attention_scale = 0.3, .gen = &gen});
  const Tensor seq = test::randn({2, 6, 16}, DType::f32, 25);  // [B, T, dim]
  NoGradGuard no_grad;
  const Tensor full = block(seq, {.causal = true});            // [B, 6, dim]
  nn::KVCache cache(6);
  block(seq.narrow(1, 0, 5), {.causal = true, .cache = &cache});
  for (int repeat = 0; repeat < 2; ++repeat) {
    const Tensor last = block(seq.narrow(1, 5, 1), {.causal = true, .cache = &cache, .cache_append = false});  // [B, 1, dim]
    CHECK(cache.length == 5);
    CHECK_ALLCLOSE(last, full.narrow(1, 5, 1), 1e-5, 1e-5);
  }
  const Tensor probe = block(test::randn({2, 1, 16}, DType::f32, 26), {.causal = true, .cache = &cache, .cache_append = false});
  CHECK(probe.shape() == Shape{2, 1, 16});
  const Tensor kept = block(seq.narrow(1, 5, 1), {.causal = true, .cache = &cache});  // the probe left no trace
  CHECK(cache.length == 6);
  CHECK_ALLCLOSE(kept, full.narrow(1, 5, 1), 1e-5, 1e-5);
}

TEST_CASE("transformer block: residual structure, names, training gradients", "[nn][attention]") {
  Generator gen(11);
  nn::TransformerBlock block(8, 2, {.norm = nn::NormKind::rms, .swiglu = true, .gen = &gen});
  std::vector<std::string> names;
  for (const auto& p : block.named_parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.out.weight",
                                          "attn.out.bias", "norm2.weight", "mlp.fc1.weight", "mlp.fc1.bias",
                                          "mlp.gate.weight", "mlp.gate.bias", "mlp.fc2.weight", "mlp.fc2.bias"});
  const Tensor x = test::randn({2, 5, 8}, DType::f32, 12);
  ops::sum(ops::square(block(x, {.causal = true}))).backward();
  for (const auto& p : block.named_parameters()) {
    INFO(p.name);
    CHECK(p.tensor.grad().defined());
  }
}

TEST_CASE("fixed 2-D sin-cos position embedding", "[nn][layers]") {
  // Rows 1 (patch row 0, column 1) and 5 (row 1, column 2) of MAE's get_2d_sincos_pos_embed(8, ...)
  // generalised to a 2 x 3 grid (numpy, meshgrid(grid_w, grid_h)): the column half comes first.
  const Tensor e = nn::sincos_2d_embedding(2, 3, 8, DType::f64);  // [6, 8]
  REQUIRE(e.shape() == Shape{6, 8});
  const std::vector<double> row1{0.8414709848078965, 0.009999833334166664, 0.5403023058681397, 0.9999500004166654, 0, 0, 1, 1};
  const std::vector<double> row5{0.9092974268256816,  0.01999866669333308,  -0.4161468365471424, 0.999800006666578,
                                 0.8414709848078965,  0.009999833334166664, 0.5403023058681397,  0.9999500004166654};
  for (std::int64_t k = 0; k < 8; ++k) {
    CHECK(e.at<double>({1, k}) == Approx(row1[static_cast<std::size_t>(k)]).margin(1e-15));
    CHECK(e.at<double>({5, k}) == Approx(row5[static_cast<std::size_t>(k)]).margin(1e-15));
  }
  // Each half is the 1-D sin-cos table of its coordinate at dim / 2.
  const Tensor big = nn::sincos_2d_embedding(4, 5, 32, DType::f64);  // [20, 32]
  bool ok = true;
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 5; ++j)
      for (std::int64_t k = 0; k < 8; ++k) {
        const double omega = std::pow(10000.0, -static_cast<double>(k) / 8);
        ok &= std::abs(big.at<double>({i * 5 + j, k}) - std::sin(static_cast<double>(j) * omega)) < 1e-14;
        ok &= std::abs(big.at<double>({i * 5 + j, 24 + k}) - std::cos(static_cast<double>(i) * omega)) < 1e-14;
      }
  CHECK(ok);
  CHECK(nn::sincos_2d_embedding(2, 2, 4).dtype() == DType::f32);
  CHECK_THROWS_WITH(nn::sincos_2d_embedding(2, 2, 6), Contains("dim divisible by 4"));
  CHECK_THROWS_WITH(nn::sincos_2d_embedding(0, 2, 8), Contains("h = 0"));
  CHECK_THROWS_WITH(nn::sincos_2d_embedding(1 << 20, 1 << 20, 1 << 20), Contains("is too large"));
  CHECK_THROWS_WITH(nn::sinusoidal_embedding(tensor({1.0}), 8, 0.0), Contains("max_period must be positive"));
}

TEST_CASE("timestep embeddings and adaLN", "[nn][layers]") {
  const Tensor e = nn::sinusoidal_embedding(tensor({0.0, 1.0, 500.0}), 8);
  CHECK(e.shape() == Shape{3, 8});
  CHECK(e.at<float>({0, 0}) == 1.0f);  // cos(0)
  CHECK(e.at<float>({0, 4}) == 0.0f);  // sin(0)
  CHECK(e.at<float>({1, 4}) == Approx(std::sin(1.0)));
  Generator gen(13);
  nn::TimestepEmbedder te(16, 32, &gen);
  CHECK(te(tensor({0.1, 0.5})).shape() == Shape{2, 16});
  nn::AdaLNModulation ada(16, 8, 3, &gen);
  const Tensors mods = ada(test::randn({2, 16}, DType::f32, 14));
  REQUIRE(mods.size() == 3);
  CHECK(mods[1].shape() == Shape{2, 8});
  CHECK(ops::amax(ops::abs(mods[0])).item() == 0.0);  // zero-initialised: identity at start
  const Tensor x = test::randn({2, 5, 8}, DType::f32, 15);
  CHECK(test::same_bits(nn::modulate(x, mods[0], mods[1]), x));
  CHECK_THROWS_WITH(nn::modulate(x, zeros({2, 7}), zeros({2, 7})), Contains("modulate: shift/scale [B, C] must match"));
}

TEST_CASE("eval() reaches every dropout, and a refused KV cache call leaves the cache intact", "[nn][attention]") {
  Generator gen(31);
  nn::TransformerBlock block(8, 2, {.dropout = 0.5, .gen = &gen});
  const Tensor x = test::randn({2, 5, 8}, DType::f32, 32);  // [B, T, dim]
  block.eval();
  CHECK_FALSE(block.drop.training());
  CHECK(test::same_bits(block(x), block(x)));  // no dropout left in eval mode
  block.train();
  CHECK_FALSE(test::same_bits(block(x), block(x)));
  CHECK_THROWS_WITH(nn::TransformerBlock(8, 2, {.mlp_ratio = NAN}), Contains("mlp_ratio nan with dim 8"));
  CHECK_THROWS_WITH(nn::MultiheadAttention(8, 2, {.kv_dim = 0}), Contains("kv_dim must be -1 (self-attention) or positive"));

  block.eval();
  NoGradGuard no_grad;
  nn::KVCache cache(8);
  block(x.narrow(1, 0, 3), {.causal = true, .cache = &cache});  // batch 2, 3 positions
  CHECK_THROWS_WITH(block(x.narrow(0, 0, 1).narrow(1, 3, 1), {.causal = true, .cache = &cache}),
                    Contains("the KV cache holds 3 positions of f32 [2, 2, 8, 4] (batch, heads, capacity, head size), not "
                             "f32 [1, 2, 8, 4]; reset() it first"));
  CHECK(cache.length == 3);
  // A mask the attention op refuses (it sees the 4 keys only after the cache has been written).
  CHECK_THROWS_WITH(block(x.narrow(1, 3, 1), {.mask = ones({7, 7}, DType::boolean), .cache = &cache}),
                    Contains("mask"));
  CHECK(cache.length == 3);
  const Tensor next = block(x.narrow(1, 3, 1), {.causal = true, .cache = &cache});  // the cache still holds the batch-2 keys
  CHECK_ALLCLOSE(next, block(x.narrow(1, 0, 4), {.causal = true}).narrow(1, 3, 1), 1e-5, 1e-5);
}

TEST_CASE("a KV cache reset and reused by a layer of other heads or dtype is laid out for it", "[nn][attention]") {
  NoGradGuard no_grad;
  nn::MultiheadAttention narrow_heads(8, 2), wide_heads(8, 4), in_f64(8, 2, {.dtype = DType::f64});
  for (nn::MultiheadAttention* m : {&narrow_heads, &wide_heads, &in_f64}) m->eval();
  const Tensor x = test::randn({1, 5, 8}, DType::f32, 33);  // [B, T, dim]
  nn::KVCache cache(8);
  narrow_heads(x.narrow(1, 0, 2), {.causal = true, .cache = &cache});
  CHECK_THROWS_WITH(wide_heads(x.narrow(1, 2, 1), {.causal = true, .cache = &cache}),
                    Contains("holds 2 positions of f32 [1, 2, 8, 4] (batch, heads, capacity, head size), not f32 [1, 4, 8, 2]"));
  // After reset() the cache serves the other layers as a fresh one would: decoding step by step
  // equals the causal forward over the whole prefix, in the layer's own dtype.
  for (nn::MultiheadAttention* m : {&wide_heads, &in_f64}) {
    cache.reset();
    const Tensor xm = x.to(m->qkv.weight.dtype());
    Tensor last;
    for (std::int64_t t = 0; t < 5; ++t) last = (*m)(xm.narrow(1, t, 1), {.causal = true, .cache = &cache});  // [1, 1, 8]
    CHECK(cache.k.dtype() == xm.dtype());
    CHECK_ALLCLOSE(last, (*m)(xm, {.causal = true}).narrow(1, 4, 1), 1e-5, 1e-5);
  }
}
