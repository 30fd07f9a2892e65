// The diffusion model family: the EDM-style UNet and its Skip-Tuning hook, the EDM preconditioning
// and loss, the samplers (EDM Euler/Heun, DDIM, DDPM) with their NFE counts, classifier-free
// guidance, training resume, and the data mapping (spec techniques-B §1.7).
#include <catch2/catch.hpp>

#include <csignal>

#include <numbers>

#include <cmath>
#include <filesystem>

#include "core/autograd.hpp"
#include "models/classifier/classifier.hpp"
#include "models/classifier/train.hpp"
#include "models/diffusion/train.hpp"
#include "nn/checkpoint.hpp"
#include "nn/data.hpp"
#include "nn/interrupt.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using namespace tg::models::diffusion;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;

namespace {

// A tiny conditional UNet with every branch live (no zero init): 8x8, levels of 8 and 16 channels,
// attention at the bottom level, 4 skips.
UNetConfig tiny_config(DType dtype = DType::f32) {
  UNetConfig c;
  c.image_size = 8;
  c.channels = {8, 16};
  c.blocks_per_level = 1;
  c.attention_levels = {1};
  c.head_channels = 8;
  c.num_classes = 3;
  c.zero_init = false;
  c.dtype = dtype;
  return c;
}

// Every parameter's bytes, for "nothing was modified" checks.
std::vector<Tensor> snapshot(nn::Module& m) {
  std::vector<Tensor> out;
  for (auto& p : m.state()) out.push_back(p.tensor.detach().clone());
  return out;
}
bool unchanged(nn::Module& m, const std::vector<Tensor>& snap) {
  auto now = m.state();
  if (now.size() != snap.size()) return false;
  for (std::size_t i = 0; i < now.size(); ++i)
    if (!test::same_bits(now[i].tensor.detach().contiguous(), snap[i])) return false;
  return true;
}

// The analytic denoiser of data N(mu, s^2 I): D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu).
Denoiser gaussian_denoiser(double mu, double s) {
  return [mu, s](const Tensor& x, double sigma) { return (x - mu) * (s * s / (s * s + sigma * sigma)) + mu; };
}

// The UNet forward written out in the test, with rho applied to the i-th CONSUMED skip (i = 0 first
// = deepest), to pin down where and in which order Skip-Tuning acts.
Tensor manual_forward(const UNet& net, const Tensor& x, const Tensor& cn, const Tensor& y, const std::vector<double>& rho) {
  const Tensor emb = net.embed(cn, y, x.shape()[0]);
  std::vector<Tensor> skips{net.stem(x)};
  Tensor h = skips.back();
  for (const auto& b : net.enc) skips.push_back(h = b(h, emb));
  for (const auto& b : net.mid) h = b(h, emb);
  std::size_t i = 0;
  for (const auto& b : net.dec) {
    if (b.options.resample != Resample::up) {
      h = ops::cat({h, skips.back() * rho[i++]}, 1);
      skips.pop_back();
    }
    h = b(h, emb);
  }
  return net.out_conv(ops::silu(net.out_norm(h)));
}

}  // namespace

TEST_CASE("skip_tuning_scales: exact ends, constant steps, deepest skip first", "[models][diffusion]") {
  const auto rho = skip_tuning_scales(7, 0.7, 1.0);
  REQUIRE(rho.size() == 7);
  CHECK(rho.front() == 0.7);
  CHECK(rho.back() == 1.0);
  for (std::size_t i = 1; i < rho.size(); ++i) CHECK(rho[i] - rho[i - 1] == Approx(0.05).epsilon(1e-12));
  CHECK(skip_tuning_scales(1, 0.8, 1.0) == std::vector<double>{0.8});
  const auto flat = skip_tuning_scales(5, 1.0, 1.0);
  for (double r : flat) CHECK(r == 1.0);
  CHECK_THROWS_WITH(skip_tuning_scales(0, 0.8, 1.0), Contains("at least one skip"));
  CHECK_THROWS_WITH(skip_tuning_scales(3, NAN, 1.0), Contains("finite"));
  CHECK_THROWS_WITH(skip_tuning_scales(3, 0.8, -1.0), Contains("rho must be finite and >= 0, got rho_bottom 0.8 and rho_top -1"));
}

TEST_CASE("UNet: shapes, skip count, parameter names, bad input", "[models][diffusion]") {
  Generator gen(1);
  UNet net(tiny_config(), &gen);
  CHECK(net.num_skips() == 4);  // levels * (blocks_per_level + 1)
  CHECK(net.enc.size() == 3);   // block @8, down, block @4
  CHECK(net.dec.size() == 5);   // 2 blocks @4, up, 2 blocks @8
  CHECK(net.dec[0].in_channels == 16 + 16);  // deepest skip first
  CHECK(net.dec[4].in_channels == 8 + 8);    // the stem's skip last
  CHECK(net.mid[0].options.attention);
  CHECK(net.dec[0].shortcut.weight.defined());  // every decoder block has the 1x1 shortcut
  const Tensor x = randn({2, 1, 8, 8}, DType::f32, gen);
  const Tensor cn = tensor({-0.3, 0.5});
  const Tensor y = tensor({0, 2}, DType::i64);
  CHECK(net(x, cn, y).shape() == Shape{2, 1, 8, 8});
  CHECK(net(x, cn).shape() == Shape{2, 1, 8, 8});  // no labels: "no label" everywhere
  const auto names = net.named_parameters();
  CHECK(names.front().name == "map_noise0.weight");
  CHECK(names.back().name == "out_conv.bias");
  CHECK(group_count(net.config, 24) == 6);
  CHECK(group_count(net.config, 192) == 32);
  CHECK(group_count(net.config, 3) == 1);
  CHECK_THROWS_WITH(net(randn({2, 1, 6, 6}), cn), Contains("expected x [B, 1, 8, 8]"));
  CHECK_THROWS_WITH(net(x, tensor({0.1})), Contains("expected c_noise [2]"));
  UNetConfig uc = tiny_config();
  uc.num_classes = 0;
  UNet uncond(uc, &gen);
  CHECK_THROWS_WITH(uncond(x, cn, y), Contains("unconditional"));
  uc.image_size = 6;
  uc.channels = {8, 16, 16};
  CHECK_THROWS_WITH(UNet(uc), Contains("not divisible by 2^2"));
  net.skip_scales = {1.0, 1.0};
  CHECK_THROWS_WITH(net(x, cn), Contains("2 skip scales for 4 skips"));
  net.skip_scales.clear();
  // eval() reaches the blocks' dropout: sampling is deterministic.
  UNetConfig dc = tiny_config();
  dc.dropout = 0.5;
  UNet dropped(dc, &gen);
  dropped.eval();
  CHECK(test::same_bits(dropped(x, cn, y), dropped(x, cn, y)));
  dropped.train();
  CHECK_FALSE(test::same_bits(dropped(x, cn, y), dropped(x, cn, y)));
  // Sampling refuses a model left in training mode with dropout (it would sample with dropout on).
  CHECK_THROWS_WITH(generate(dropped, {.sampler = sampler_for_nfe(SamplerKind::heun, 1), .count = 1}),
                    Contains("generate: the UNet is in training mode with dropout 0.5; call eval() before sampling"));
  Generator g2(3);
  CHECK_THROWS_WITH(edm_loss(net, x, tensor({1}, DType::i64), {.label_dropout = 1.0}, g2), Contains("edm_loss: expected labels [2]"));
  CHECK_THROWS_WITH(unet_denoiser(net, y, NAN), Contains("guidance must be finite"));
  CHECK_THROWS_WITH(unet_denoiser(net, tensor({1, 2}, DType::i64).reshape({1, 2}))(x.to(DType::f64), 1.0),
                    Contains("unet_denoiser: expected labels [2], got [1, 2]"));
  CHECK_THROWS_WITH(denoise(net, x, tensor({0.5, 0.0}), y), Contains("denoise: sigma must be positive and finite, got sigma[1] = 0"));
  CHECK_THROWS_WITH(denoise(net, x, tensor({NAN, 1.0}), y), Contains("got sigma[0] = nan"));
  UNetConfig odd = tiny_config();
  odd.channels = {7, 16, 16};
  CHECK_THROWS_WITH(UNet(odd), Contains("noise_channels must be even, got 7 (derived from channels[0]"));
}

TEST_CASE("UNet: a checkpoint loads only into a UNet with the same heads and groups", "[models][diffusion]") {
  Generator gen(2);
  UNet saved(tiny_config(), &gen);
  const std::string path =
      (std::filesystem::temp_directory_path() / fmt::format("tg-unet-{}.safetensors", ::getpid())).string();
  nn::save_module(saved, path);
  UNet same(tiny_config());
  nn::load_module(same, path);
  const Tensor x = randn({1, 1, 8, 8}, DType::f32, gen);
  CHECK(test::same_bits(same(x, tensor({0.2})), saved(x, tensor({0.2}))));
  UNetConfig heads = tiny_config();
  heads.head_channels = 4;  // 16 channels: 4 heads instead of 2, the same tensors
  UNet more_heads(heads);
  CHECK_THROWS_WITH(nn::load_module(more_heads, path),
                    Contains("'enc.2' is UNetBlock(resample=none, attention_heads=2), but here it is "
                             "UNetBlock(resample=none, attention_heads=4)"));
  UNetConfig groups = tiny_config();
  groups.min_group_channels = 2;  // 8 channels: 4 groups instead of 2
  UNet more_groups(groups);
  CHECK_THROWS_WITH(nn::load_module(more_groups, path), Contains("GroupNorm(groups=2), but here it is GroupNorm(groups=4)"));
  std::filesystem::remove(path);
}

TEST_CASE("Skip-Tuning scales the consumed skips deepest first, in one place", "[models][diffusion]") {
  Generator gen(2);
  UNet net(tiny_config(), &gen);
  const Tensor x = randn({2, 1, 8, 8}, DType::f32, gen);
  const Tensor cn = tensor({0.2, -0.7});
  const Tensor y = tensor({1, 3}, DType::i64);
  net.set_skip_tuning(0.6, 1.0);
  const std::vector<double> rho = net.skip_scales;
  CHECK(rho == std::vector<double>{0.6, skip_tuning_scales(4, 0.6, 1.0)[1], skip_tuning_scales(4, 0.6, 1.0)[2], 1.0});
  const Tensor tuned = net(x, cn, y);
  CHECK(test::same_bits(tuned, manual_forward(net, x, cn, y, rho)));
  const std::vector<double> reversed(rho.rbegin(), rho.rend());
  CHECK_FALSE(test::allclose(tuned, manual_forward(net, x, cn, y, reversed), 1e-4, 1e-5));
  net.clear_skip_tuning();
  CHECK(test::same_bits(net(x, cn, y), manual_forward(net, x, cn, y, {1, 1, 1, 1})));
}

TEST_CASE("Skip-Tuning: rho = 1 reproduces every sampler bit for bit, rho != 1 changes D, weights untouched",
          "[models][diffusion]") {
  Generator gen(3);
  UNet net(tiny_config(), &gen);
  net.eval();
  const Tensor noise = randn({3, 1, 8, 8}, DType::f32, gen);
  const Tensor labels = tensor({0, 1, 2}, DType::i64);
  const auto before = snapshot(net);
  for (SamplerKind k : {SamplerKind::euler, SamplerKind::heun, SamplerKind::ddim, SamplerKind::ddpm}) {
    const SamplerConfig sc = sampler_for_nfe(k, 3);
    Generator g1(9), g2(9);
    net.clear_skip_tuning();
    const Tensor base = sample(unet_denoiser(net, labels), noise, sc, &g1).x;
    net.set_skip_tuning(1.0, 1.0);
    const Tensor ones = sample(unet_denoiser(net, labels), noise, sc, &g2).x;
    INFO(sampler_name(k));
    CHECK(test::same_bits(base, ones));
    net.set_skip_tuning(0.7, 1.0);
    Generator g3(9);
    const Tensor tuned = sample(unet_denoiser(net, labels), noise, sc, &g3).x;
    CHECK(test::max_abs_diff(base, tuned) > 1e-4);
  }
  // D itself at one noise level.
  const Tensor xs = noise.to(DType::f64) * 2.0;
  net.clear_skip_tuning();
  const Tensor d1 = unet_denoiser(net, labels)(xs, 2.0);
  net.set_skip_tuning(0.8, 1.0);
  const Tensor d2 = unet_denoiser(net, labels)(xs, 2.0);
  CHECK(test::max_abs_diff(d1, d2) > 1e-4);
  net.clear_skip_tuning();
  CHECK(unchanged(net, before));
}

TEST_CASE("Skip-Tuning acts through the decoder block's linear shortcut despite GroupNorm", "[models][diffusion]") {
  // A decoder block on concat(x_up [8 ch], skip [8 ch]) with 4 GroupNorm groups of 4: groups 2 and 3
  // hold only skip channels, so norm0 removes rho there; the 1x1 shortcut is linear in rho.
  Generator gen(4);
  UNetConfig c = tiny_config(DType::f64);
  UNetBlock blk(16, 8, 12, {}, c, &gen);
  REQUIRE(blk.norm0.groups == 4);
  const Tensor up = test::randn({2, 8, 4, 4}, DType::f64, 5), skip = test::randn({2, 8, 4, 4}, DType::f64, 6);
  const Tensor emb = test::randn({2, 12}, DType::f64, 7);
  const double rho = 0.7;
  const Tensor in1 = ops::cat({up, skip}, 1), in_rho = ops::cat({up, skip * rho}, 1);
  // Invariant 3: scaling the skip equals scaling the shortcut weight's input-channel slice.
  Tensor w = blk.shortcut.weight.detach().clone();
  w.narrow(1, 8, 8).copy_(w.narrow(1, 8, 8) * rho);
  CHECK_ALLCLOSE(blk.shortcut(in_rho), ops::conv2d(in1, w, blk.shortcut.bias), 1e-12, 1e-12);
  // The skip-only groups of norm0 are (up to eps) rho-invariant...
  const Tensor n1 = blk.norm0(in1).narrow(1, 8, 8), n2 = blk.norm0(in_rho).narrow(1, 8, 8);
  CHECK(test::max_abs_diff(n1, n2) < 1e-4);
  // ...yet the block output changes.
  CHECK(test::max_abs_diff(blk(in1, emb), blk(in_rho, emb)) > 1e-3);
}

TEST_CASE("UNet blocks: gradients (f64, tiny sizes)", "[models][diffusion][grad]") {
  Generator gen(5);
  UNetConfig c = tiny_config(DType::f64);
  const Tensor emb = test::randn({2, 6}, DType::f64, 8);
  SECTION("plain block with 1x1 shortcut, input and embedding") {
    UNetBlock blk(4, 8, 6, {}, c, &gen);
    CHECK_GRADCHECK([&](const Tensors& v) { return blk(v[0], v[1]); },
                    {test::randn({2, 4, 3, 3}, DType::f64, 9), test::randn({2, 6}, DType::f64, 10)});
  }
  SECTION("down and up blocks") {
    UNetBlock down(4, 4, 6, {.resample = Resample::down}, c, &gen);
    CHECK(down(test::randn({2, 4, 4, 4}, DType::f64, 11), emb).shape() == Shape{2, 4, 2, 2});
    CHECK_GRADCHECK([&](const Tensors& v) { return down(v[0], emb); }, {test::randn({2, 4, 4, 4}, DType::f64, 11)});
    UNetBlock up(8, 4, 6, {.resample = Resample::up}, c, &gen);
    CHECK(up(test::randn({2, 8, 2, 2}, DType::f64, 12), emb).shape() == Shape{2, 4, 4, 4});
    CHECK_GRADCHECK([&](const Tensors& v) { return up(v[0], emb); }, {test::randn({2, 8, 2, 2}, DType::f64, 12)});
  }
  SECTION("attention block, and parameter gradients") {
    UNetBlock att(8, 8, 6, {.attention = true, .heads = 2}, c, &gen);
    CHECK_GRADCHECK([&](const Tensors& v) { return att(v[0], emb); }, {test::randn({2, 8, 2, 3}, DType::f64, 13)});
    const Tensor x = test::randn({2, 8, 2, 3}, DType::f64, 14);
    CHECK_GRADCHECK(
        [&](const Tensors& v) {
          att.conv0.weight = v[0];
          att.affine.weight = v[1];
          att.norm2.weight = v[2];
          att.qkv.weight = v[3];
          return att(x, emb);
        },
        {att.conv0.weight.detach().clone(), att.affine.weight.detach().clone(), att.norm2.weight.detach().clone(),
         att.qkv.weight.detach().clone()});
  }
  SECTION("the whole UNet, through the EDM preconditioning") {
    UNetConfig small = c;
    small.image_size = 4;
    small.channels = {4, 8};
    UNet net(small, &gen);
    const Tensor sigma = tensor({0.3, 2.0}, DType::f64);
    const Tensor y = tensor({2, 3}, DType::i64);
    CHECK_GRADCHECK([&](const Tensors& v) { return denoise(net, v[0], sigma, y); }, {test::randn({2, 1, 4, 4}, DType::f64, 15)});
  }
}

TEST_CASE("UNet forward and backward are bit-identical on 1 and 4 threads", "[models][diffusion]") {
  Generator gen(6);
  UNet net(tiny_config(), &gen);
  const Tensor x = randn({4, 1, 8, 8}, DType::f32, gen);
  CHECK(test::same_bits_across_threads([&] {
    net.zero_grad();
    Generator g(3);
    const Tensor loss = edm_loss(net, x, tensor({0, 1, 2, 0}, DType::i64), {}, g).loss;
    loss.backward();
    return Tensors{loss, net.stem.weight.grad(), net.dec[0].conv0.weight.grad()};
  }));
}

TEST_CASE("EDM preconditioning and loss", "[models][diffusion]") {
  const Precond p = precond(0.5, 0.5);
  CHECK(p.c_skip == Approx(0.5));
  CHECK(p.c_out == Approx(0.5 / std::sqrt(2.0)));
  CHECK(p.c_in == Approx(1.0 / std::sqrt(0.5)));
  CHECK(p.c_noise == Approx(std::log(0.5) / 4));
  for (double s : {0.002, 0.3, 7.0, 80.0}) {  // c_skip + (c_out / sd)^2 = 1
    const Precond q = precond(s);
    CHECK(q.c_skip + q.c_out * q.c_out / 0.25 == Approx(1.0).epsilon(1e-14));
  }
  CHECK_THROWS_WITH(precond(0.0), Contains("sigma must be positive"));
  // The loss equals lambda(sigma) |D - x0|^2 with the same draws (f64 model, no label dropout).
  Generator gen(7);
  UNetConfig c = tiny_config(DType::f64);
  c.num_classes = 0;
  UNet net(c, &gen);
  const Tensor x0 = test::uniform({3, 1, 8, 8}, -1, 1, DType::f64, 16);
  Generator g1(11), g2(11);
  const LossParts lp = edm_loss(net, x0, {}, {.label_dropout = 0.0}, g1);
  const Tensor sigma = ops::exp(randn({3}, DType::f64, g2) * 1.2 - 1.2);
  const Tensor n = randn({3, 1, 8, 8}, DType::f64, g2);
  CHECK(test::same_bits(sigma, lp.sigma));
  const Tensor s4 = sigma.reshape({3, 1, 1, 1});
  const Tensor lambda = (ops::square(s4) + 0.25) / ops::square(s4 * 0.5);
  const Tensor D = denoise(net, x0 + s4 * n, sigma);
  const double ref = ops::mean(lambda * ops::square(D - x0)).item();
  CHECK(lp.loss.item() == Approx(ref).epsilon(1e-10));
  // Gradients reach every parameter.
  lp.loss.backward();
  for (auto& p2 : net.named_parameters()) {
    INFO(p2.name);
    CHECK(p2.tensor.grad().defined());
  }
}

TEST_CASE("schedules: EDM sigma grid and the VP schedule", "[models][diffusion]") {
  const auto s = edm_sigmas(18);
  REQUIRE(s.size() == 19);
  CHECK(s.front() == 80.0);
  CHECK(s[17] == 0.002);
  CHECK(s.back() == 0.0);
  for (std::size_t i = 0; i + 1 < s.size(); ++i) CHECK(s[i] > s[i + 1]);
  // rho = 7 spacing: sigma_i^(1/7) is linear in i.
  CHECK(std::pow(s[9], 1 / 7.0) - std::pow(s[8], 1 / 7.0) == Approx(std::pow(s[1], 1 / 7.0) - std::pow(s[0], 1 / 7.0)));
  CHECK(edm_sigmas(1) == std::vector<double>{80.0, 0.0});
  CHECK_THROWS_WITH(edm_sigmas(0), Contains("edm_sigmas: steps must be in 1..16777216, got 0"));
  CHECK_THROWS_WITH(edm_sigmas(5, {.sigma_max = INFINITY}), Contains("edm_sigmas: need 0 < sigma_min (0.002) < sigma_max (inf) < inf"));
  CHECK_THROWS_WITH(VPSchedule(std::int64_t{1} << 40), Contains("VPSchedule: need 2 <= T <= 16777216, got 1099511627776"));
  const VPSchedule vp;
  CHECK(vp.beta[1] == Approx(1e-4));
  CHECK(vp.beta[1000] == Approx(0.02));
  CHECK(vp.alpha_bar[0] == 1.0);
  for (std::int64_t t = 1; t <= 1000; ++t) CHECK(vp.alpha_bar[static_cast<std::size_t>(t)] < vp.alpha_bar[static_cast<std::size_t>(t - 1)]);
  CHECK(vp.alpha_bar[1000] == Approx(4.0358e-5).epsilon(1e-4));  // the DDPM linear schedule's abar_T
  CHECK(vp.sigma(1000) == Approx(157.407).epsilon(1e-4));
  CHECK(vp.sigma(0) == 0.0);
  CHECK(vp.timesteps(5) == std::vector<std::int64_t>{1, 201, 401, 601, 801});
  const auto all = vp.timesteps(1000);
  CHECK(all.front() == 1);
  CHECK(all.back() == 1000);
  CHECK(all.size() == 1000);
  CHECK_THROWS_WITH(vp.timesteps(1001), Contains("1001 sampling steps"));
}

TEST_CASE("samplers make exactly the advertised number of denoiser evaluations", "[models][diffusion]") {
  std::int64_t calls = 0;
  const Denoiser g = gaussian_denoiser(0.1, 0.5);
  const Denoiser counted = [&](const Tensor& x, double sigma) {
    ++calls;
    return g(x, sigma);
  };
  const Tensor noise = test::randn({2, 1, 3, 3}, DType::f64, 17);
  for (SamplerKind k : {SamplerKind::euler, SamplerKind::heun, SamplerKind::ddim, SamplerKind::ddpm})
    for (std::int64_t nfe : {1, 3, 5, 9, 19}) {
      const bool vp = k == SamplerKind::ddim || k == SamplerKind::ddpm;
      if (vp && nfe == 1) {  // tau = {1} would return the noise almost unchanged: refused
        CHECK_THROWS_WITH(sampler_for_nfe(k, 1), Contains("needs at least 2 steps"));
        CHECK_THROWS_WITH(sample(counted, noise, {.kind = k, .steps = 1}), Contains("needs at least 2 steps"));
        continue;
      }
      const SamplerConfig sc = sampler_for_nfe(k, nfe);
      CHECK(expected_nfe(sc) == nfe);
      calls = 0;
      Generator gen(1);
      const SampleResult r = sample(counted, noise, sc, &gen);
      INFO(sampler_name(k) << " NFE " << nfe);
      CHECK(calls == nfe);
      CHECK(r.nfe == nfe);
    }
  CHECK(sampler_for_nfe(SamplerKind::heun, 19).steps == 10);
  CHECK_THROWS_WITH(sampler_for_nfe(SamplerKind::heun, 4), Contains("NFE must be odd"));
  CHECK_THROWS_WITH(sampler_for_nfe(SamplerKind::ddim, 2000), Contains("sampler: ddim with NFE 2000 takes 2000 steps of a schedule of T = 1000"));
  CHECK(sampler_for_nfe(SamplerKind::ddpm, 1000).steps == 1000);
  CHECK(sampler_for_nfe(SamplerKind::ddim, 5, 0.5).eta == 0.5);
  CHECK_THROWS_WITH(sampler_for_nfe(SamplerKind::ddim, 5, 1.5), Contains("sampler: eta 1.5 must be in [0, 1]"));
  CHECK_THROWS_WITH(sampler_for_nfe(SamplerKind::heun, 5, 0.5), Contains("sampler: eta 0.5 applies to ddim only"));
  // Euler's Karras grid is not bound by the VP schedule's T steps.
  CHECK(sampler_for_nfe(SamplerKind::euler, 2000).steps == 2000);
  CHECK(sampler_for_nfe(SamplerKind::heun, 2001).steps == 1001);
  CHECK_THROWS_WITH(parse_sampler("dpm"), Contains("unknown sampler 'dpm'"));
  CHECK_THROWS_WITH(sample(g, noise, sampler_for_nfe(SamplerKind::ddpm, 3)), Contains("needs a generator"));
  Generator gen(2);
  SamplerConfig wild = sampler_for_nfe(SamplerKind::ddim, 3);
  wild.eta = 1.5;  // a config built by hand: sample() checks it too
  CHECK_THROWS_WITH(sample(g, noise, wild, &gen), Contains("eta must be in [0, 1], got 1.5"));
  CHECK_THROWS_WITH(ddim_sigma(0.5, 0.9, -0.1), Contains("eta must be in [0, 1]"));
}

TEST_CASE("EDM Euler and Heun on an analytic Gaussian denoiser: orders 1 and 2", "[models][diffusion]") {
  // Data N(mu, s^2): the ODE from x = 80 at sigma = 80 ends at mu + (80 - mu) s / sqrt(s^2 + 80^2).
  const double mu = 0.3, s = 0.5;
  const Denoiser D = gaussian_denoiser(mu, s);
  const double exact = mu + (80.0 - mu) * s / std::sqrt(s * s + 6400.0);
  auto err = [&](bool heun, std::int64_t N) {
    const Tensor x = full({1}, 80.0, DType::f64);
    const SampleResult r = heun ? edm_heun(D, x, edm_sigmas(N)) : edm_euler(D, x, edm_sigmas(N));
    return std::abs(r.x.item<double>() - exact) / std::abs(exact - mu);
  };
  const double h18 = err(true, 18), h36 = err(true, 36), h72 = err(true, 72);
  const double e18 = err(false, 18), e36 = err(false, 36), e72 = err(false, 72);
  // The spec's numbers (computed independently in its research).
  CHECK(h18 == Approx(0.055).epsilon(0.02));
  CHECK(h36 == Approx(0.0122).epsilon(0.02));
  CHECK(h72 == Approx(0.0029).epsilon(0.02));
  CHECK(e18 == Approx(0.154).epsilon(0.02));
  CHECK(e36 == Approx(0.078).epsilon(0.02));
  CHECK(e72 == Approx(0.039).epsilon(0.02));
  CHECK(h18 / h36 > 3.5);
  CHECK(h36 / h72 > 3.5);
  CHECK(e18 / e36 == Approx(2.0).epsilon(0.1));
  CHECK(e36 / e72 == Approx(2.0).epsilon(0.1));
  CHECK(h72 < 5e-3);
}

TEST_CASE("DDIM: the exact noise prediction returns x0", "[models][diffusion]") {
  const VPSchedule vp;
  const Tensor x0 = test::uniform({2, 1, 4, 4}, -1, 1, DType::f64, 18);
  const Tensor eps = test::randn({2, 1, 4, 4}, DType::f64, 19);
  // eps-oracle: the denoiser whose implied noise prediction (xbar - D) / sigma is the true eps.
  const Denoiser oracle = [&](const Tensor& xbar, double sigma) { return xbar - eps * sigma; };
  for (std::int64_t S : {1, 3, 10, 1000}) {
    const auto taus = vp.timesteps(S);
    const double ab = vp.alpha_bar[static_cast<std::size_t>(taus.back())];
    const Tensor xT = x0 * std::sqrt(ab) + eps * std::sqrt(1 - ab);
    INFO("S = " << S);
    CHECK_ALLCLOSE(ddim(oracle, xT, vp, taus, 0.0).x, x0, 0, 1e-10);
  }
  // Each deterministic step stays on the forward trajectory: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps.
  const double at = vp.alpha_bar[700], as = vp.alpha_bar[300];
  const Tensor xt = x0 * std::sqrt(at) + eps * std::sqrt(1 - at);
  CHECK_ALLCLOSE(ddim_step(xt, eps, at, as, 0.0), x0 * std::sqrt(as) + eps * std::sqrt(1 - as), 0, 1e-12);
}

TEST_CASE("DDIM (eta = 0) is Euler in (x / sqrt(abar), sigma) coordinates", "[models][diffusion]") {
  const VPSchedule vp;
  const Tensor x = test::randn({2, 1, 3, 3}, DType::f64, 20) * 3.0;
  const Tensor d = test::randn({2, 1, 3, 3}, DType::f64, 21);
  for (auto [t, s] : {std::pair<std::int64_t, std::int64_t>{801, 601}, {400, 399}, {57, 1}}) {
    const double at = vp.alpha_bar[static_cast<std::size_t>(t)], as = vp.alpha_bar[static_cast<std::size_t>(s)];
    const double st = vp.sigma(t), ss = vp.sigma(s);
    const Tensor xbar = x / std::sqrt(at);
    const Tensor eps = (xbar - d) / st;
    const Tensor via_ddim = ddim_step(x, eps, at, as, 0.0) / std::sqrt(as);
    CHECK_ALLCLOSE(via_ddim, euler_step(xbar, d, st, ss), 1e-10, 1e-10);
  }
  // Whole trajectories with a non-linear denoiser: DDIM from x_T equals Euler from x_T / sqrt(abar_T)
  // over the VP sigmas (then 0).
  const Denoiser D = [](const Tensor& xb, double sigma) { return ops::tanh(xb / std::sqrt(1 + sigma * sigma)); };
  const auto taus = vp.timesteps(7);
  std::vector<double> sig;
  for (auto it = taus.rbegin(); it != taus.rend(); ++it) sig.push_back(vp.sigma(*it));
  sig.push_back(0.0);
  const double abT = vp.alpha_bar[static_cast<std::size_t>(taus.back())];
  CHECK_ALLCLOSE(ddim(D, x, vp, taus, 0.0).x, edm_euler(D, x / std::sqrt(abT), sig).x, 1e-10, 1e-10);
}

TEST_CASE("DDIM with eta = 1 on the full chain is DDPM's ancestral step", "[models][diffusion]") {
  const VPSchedule vp;
  const Tensor x0 = test::uniform({5}, -1, 1, DType::f64, 22), xt = test::randn({5}, DType::f64, 23);
  for (std::int64_t t : {2, 10, 500, 1000}) {
    const double at = vp.alpha_bar[static_cast<std::size_t>(t)], as = vp.alpha_bar[static_cast<std::size_t>(t - 1)];
    const double beta = vp.beta[static_cast<std::size_t>(t)], alpha = 1 - beta;
    const double var = (1 - as) / (1 - at) * beta;  // beta_tilde
    CHECK(ddim_sigma(at, as, 1.0) * ddim_sigma(at, as, 1.0) == Approx(var).epsilon(1e-10));
    const Tensor eps = (xt - x0 * std::sqrt(at)) / std::sqrt(1 - at);  // the eps whose x0_hat is x0
    const Tensor mean = x0 * (std::sqrt(as) * beta / (1 - at)) + xt * (std::sqrt(alpha) * (1 - as) / (1 - at));
    INFO("t = " << t);
    CHECK_ALLCLOSE(ddim_step(xt, eps, at, as, 1.0, zeros({5}, DType::f64)), mean, 1e-9, 1e-12);
    const Tensor z = test::randn({5}, DType::f64, 24);
    CHECK_ALLCLOSE(ddim_step(xt, eps, at, as, 1.0, z), mean + z * std::sqrt(var), 1e-9, 1e-12);
    // Between the deterministic and the ancestral ends: eta scales sigma, and the step keeps
    // x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z (DDIM paper, eq. 12).
    for (const double eta : {0.3, 0.5}) {
      const double sig = ddim_sigma(at, as, eta);
      CHECK(sig == Approx(eta * std::sqrt(var)).epsilon(1e-12));
      const Tensor expected = x0 * std::sqrt(as) + eps * std::sqrt(1 - as - sig * sig) + z * sig;
      CHECK_ALLCLOSE(ddim_step(xt, eps, at, as, eta, z), expected, 1e-9, 1e-12);
    }
  }
}

TEST_CASE("VP schedules: cosine (iDDPM), respacing, posterior variance", "[models][diffusion]") {
  const VPSchedule cos = VPSchedule::cosine(1000);
  REQUIRE(cos.T == 1000);
  // Values of iDDPM's betas_for_alpha_bar (0-based step i is our step i + 1), computed with numpy.
  CHECK(cos.beta[1] == Approx(4.128422482196914e-05).epsilon(1e-12));
  CHECK(cos.beta[500] == Approx(0.0031458862304780677).epsilon(1e-12));
  CHECK(cos.alpha_bar[500] == Approx(0.4938435904406382).epsilon(1e-12));
  CHECK(cos.beta[999] == Approx(0.7499993929011166).epsilon(1e-12));
  CHECK(cos.beta[1000] == 0.999);  // clipped
  CHECK(cos.alpha_bar[1000] == Approx(2.4287669070348567e-09).epsilon(1e-9));
  // Sanity (spec §2.4.3): alpha_bar strictly decreasing, alpha_bar_1 = 1 - beta_1, beta <= 0.999,
  // alpha_bar_t = f(t/T) / f(0) before the clip.
  const auto f = [](double u) { return std::pow(std::cos((u + 0.008) / 1.008 * std::numbers::pi / 2), 2); };
  CHECK(cos.alpha_bar[1] == 1 - cos.beta[1]);
  for (std::int64_t t = 1; t <= 1000; ++t) {
    const auto u = static_cast<std::size_t>(t);
    CHECK(cos.alpha_bar[u] < cos.alpha_bar[u - 1]);
    CHECK(cos.beta[u] <= 0.999);
    if (t < 1000) CHECK(cos.alpha_bar[u] == Approx(f(t / 1000.0) / f(0)).epsilon(1e-11));
  }
  // Respacing keeps the picked alpha_bars, and its betas reproduce them.
  const auto taus = cos.timesteps(50);
  const VPSchedule sub = cos.respaced(taus);
  REQUIRE(sub.T == 50);
  double prod = 1;
  for (std::int64_t k = 1; k <= 50; ++k) {
    const auto u = static_cast<std::size_t>(k);
    CHECK(sub.alpha_bar[u] == cos.alpha_bar[static_cast<std::size_t>(taus[u - 1])]);
    prod *= 1 - sub.beta[u];
    CHECK(prod == Approx(sub.alpha_bar[u]).epsilon(1e-12));
  }
  // DDPM's ancestral step on the respaced chain is the eta = 1 DDIM step between the picked steps:
  // mean (posterior of x0_hat and x_t) plus sqrt(posterior variance) z.
  const Tensor x0 = test::uniform({6}, -1, 1, DType::f64, 40), xt = test::randn({6}, DType::f64, 41), z = test::randn({6}, DType::f64, 42);
  for (std::int64_t k : {2, 25, 50}) {
    const auto u = static_cast<std::size_t>(k);
    const double at = sub.alpha_bar[u], as = sub.alpha_bar[u - 1], beta = sub.beta[u];
    const Tensor eps = (xt - x0 * std::sqrt(at)) / std::sqrt(1 - at);
    const Tensor mean = x0 * (std::sqrt(as) * beta / (1 - at)) + xt * (std::sqrt(1 - beta) * (1 - as) / (1 - at));
    INFO("k = " << k);
    CHECK_ALLCLOSE(ddim_step(xt, eps, at, as, 1.0, z), mean + z * std::sqrt(sub.posterior_variance(k)), 1e-9, 1e-12);
  }
  CHECK(sub.posterior_variance(1) == 0.0);
  // The eps oracle returns x0 on the cosine schedule too.
  const Tensor e = test::randn({6}, DType::f64, 43);
  const Denoiser oracle = [&](const Tensor& xbar, double sigma) { return xbar - e * sigma; };
  const double abT = cos.alpha_bar[static_cast<std::size_t>(taus.back())];
  CHECK_ALLCLOSE(ddim(oracle, x0 * std::sqrt(abT) + e * std::sqrt(1 - abT), cos, taus, 0.0).x, x0, 0, 1e-9);
  // Bad input.
  CHECK_THROWS_WITH(VPSchedule::cosine(0), Contains("VPSchedule::cosine: need 1 <= T"));
  CHECK_THROWS_WITH(VPSchedule::cosine(10, -1), Contains("the offset s must be in (0, 1] (0.008 in iDDPM), got -1"));
  CHECK_THROWS_WITH(VPSchedule::from_betas({0.1, 1.0}), Contains("beta_2 = 1 is outside (0, 1)"));
  CHECK_THROWS_WITH(VPSchedule::from_betas({}), Contains("no betas"));
  // alpha_bar must fall (a beta below round-off leaves it at 1) and stay above 0 (underflow).
  CHECK_THROWS_WITH(VPSchedule::from_betas({1e-20, 0.5}), Contains("beta_1 = 1e-20 leaves alpha_bar at 1"));
  CHECK_THROWS_WITH(VPSchedule::from_betas(std::vector<double>(400, 0.9)), Contains("leaves alpha_bar at 0"));
  CHECK_THROWS_WITH(VPSchedule::cosine(10, 1e300), Contains("the offset s must be in (0, 1]"));
  CHECK_THROWS_WITH(cos.respaced({5, 5}), Contains("time steps must increase within 1..1000 (tau_2 = 5)"));
  CHECK_THROWS_WITH(cos.respaced({}), Contains("no time steps"));
  CHECK_THROWS_WITH(cos.posterior_variance(0), Contains("step 0 is outside 1..1000"));
}

TEST_CASE("classifier-free guidance: one batched forward per evaluation, D_u + w (D_c - D_u)", "[models][diffusion]") {
  Generator gen(8);
  UNet net(tiny_config(), &gen);
  net.eval();
  const Tensor x = randn({2, 1, 8, 8}, DType::f64, gen), y = tensor({0, 2}, DType::i64);
  const Tensor dc = unet_denoiser(net, y)(x, 1.5);
  const Tensor du = unet_denoiser(net)(x, 1.5);
  CHECK_ALLCLOSE(unet_denoiser(net, y, 0.0)(x, 1.5), du, 1e-5, 1e-6);
  CHECK_ALLCLOSE(unet_denoiser(net, y, 3.0)(x, 1.5), du + (dc - du) * 3.0, 1e-5, 1e-5);
  std::int64_t calls = 0;
  const Denoiser guided = unet_denoiser(net, y, 2.0);
  const Denoiser counted = [&](const Tensor& xx, double s) {
    ++calls;
    return guided(xx, s);
  };
  CHECK(sample(counted, x, sampler_for_nfe(SamplerKind::heun, 5)).nfe == 5);
  CHECK(calls == 5);
  UNetConfig uc = tiny_config();
  uc.num_classes = 0;
  UNet uncond(uc, &gen);
  CHECK_THROWS_WITH(unet_denoiser(uncond, {}, 2.0), Contains("class-conditional"));
}

TEST_CASE("data mapping: padded [-1, 1] model space and back", "[models][diffusion]") {
  const Tensor img = rand({3, 1, 28, 28}, DType::f32);
  const Tensor m16 = to_model_space(img, 16);
  CHECK(m16.shape() == Shape{3, 1, 16, 16});
  CHECK(m16.at<double>({0, 0, 0, 0}) == -1.0);  // padding is black
  CHECK(ops::amax(m16).item<double>() <= 1.0);
  const Tensor back16 = to_image_space(m16, 16);
  CHECK(back16.shape() == Shape{3, 1, 28, 28});
  // The 14x14 FD_clf view is unchanged by the round trip.
  CHECK_ALLCLOSE(nn::data::downsample(back16, 2), nn::data::downsample(img, 2), 1e-6, 1e-6);
  const Tensor m32 = to_model_space(img, 32);
  CHECK(m32.shape() == Shape{3, 1, 32, 32});
  CHECK_ALLCLOSE(to_image_space(m32, 32), img, 1e-6, 1e-6);
  CHECK(ops::amax(to_image_space(full({1, 1, 16, 16}, 5.0), 16)).item<double>() == 1.0);  // clamped
  CHECK_THROWS_WITH(to_model_space(img, 17), Contains("even padding"));
}

TEST_CASE("training: loss is finite, EMA follows, resume is bit for bit, generation is deterministic",
          "[models][diffusion]") {
  const auto data = nn::data::synthetic_shapes(64, 3);
  const Tensor images = to_model_space(data.images, 14);  // [64, 1, 14, 14], no padding
  UNetConfig c = tiny_config();
  c.image_size = 14;
  c.channels = {8, 8};
  c.num_classes = 10;
  c.dropout = 0.2;  // its masks must come from the checkpointed generator for the resume to be exact
  const std::string ckpt = (std::filesystem::temp_directory_path() / fmt::format("tg-diff-{}.safetensors", ::getpid())).string();
  TrainOptions o{.batch = 16, .warmup = 2, .minutes = 0, .max_steps = 4, .seed = 3, .progress = false};
  Generator g1(1), g2(1), g3(77);
  UNet a(c, &g1), b(c, &g2), fresh(c, &g3);
  nn::EMA ea(a, 0.9), eb(b, 0.9), ef(fresh, 0.9);
  const auto init_a = snapshot(a);
  const TrainResult ra = fit(a, ea, images, data.labels, o);
  CHECK(ra.steps == 4);
  CHECK(std::isfinite(ra.final_loss));
  CHECK_FALSE(unchanged(a, init_a));
  {  // EMA warm-up: after one step the decay is (1 + 0) / (10 + 0) = 0.1.
    Generator g4(1);
    UNet one(c, &g4);
    nn::EMA e1(one, 0.999);
    const auto init = snapshot(one);
    TrainOptions o1 = o;
    o1.max_steps = 1;
    fit(one, e1, images, data.labels, o1);
    const auto now = one.state();
    const auto sh = e1.state();
    for (std::size_t i = 0; i < now.size(); ++i) CHECK_ALLCLOSE(sh[i].tensor, init[i] * 0.1 + now[i].tensor.detach() * 0.9, 1e-6, 1e-7);
  }
  TrainOptions half = o;
  half.stop_after = 2;  // interrupted half-way (the lr schedule still spans 4 steps)
  half.checkpoint = ckpt;
  fit(b, eb, images, data.labels, half);
  TrainOptions rest = o;
  rest.checkpoint = ckpt;
  rest.resume = true;
  fit(fresh, ef, images, data.labels, rest);  // another init: everything comes from the checkpoint
  auto pa = a.state(), pf = fresh.state();
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(test::same_bits(pa[i].tensor, pf[i].tensor));
  auto sa = ea.state(), sf = ef.state();
  for (std::size_t i = 0; i < sa.size(); ++i) CHECK(test::same_bits(sa[i].tensor, sf[i].tensor));
  std::filesystem::remove(ckpt);
  {  // The same through a real SIGINT under StopOnSignal: the step ends, the checkpoint is written.
    Generator g5(1), g6(77);
    UNet c1(c, &g5), c2(c, &g6);
    nn::EMA e1(c1, 0.9), e2(c2, 0.9);
    TrainResult first;
    {
      const nn::StopOnSignal stop;
      TrainOptions sig = o;
      sig.checkpoint = ckpt;
      sig.on_step = [](const StepStats& s) {
        if (s.step == 2) std::raise(SIGINT);
      };
      first = fit(c1, e1, images, data.labels, sig);
    }
    CHECK(first.interrupted);
    CHECK(first.steps == 2);
    const nn::StopOnSignal fresh_handlers;  // lowers the flag for the resumed run
    const TrainResult second = fit(c2, e2, images, data.labels, rest);
    CHECK_FALSE(second.interrupted);
    CHECK(second.steps == 4);
    auto p2 = c2.state();
    for (std::size_t i = 0; i < pa.size(); ++i) CHECK(test::same_bits(pa[i].tensor, p2[i].tensor));
    std::filesystem::remove(ckpt);
  }
  // Generation: reproducible, balanced labels, NFE reported, noise independent of the batch size.
  a.eval();
  GenerateOptions go{.sampler = sampler_for_nfe(SamplerKind::heun, 3), .count = 5, .batch = 5, .noise_seed = 4};
  const Generated g = generate(a, go);
  CHECK(g.x.shape() == Shape{5, 1, 14, 14});
  CHECK(g.nfe == 3);
  CHECK(g.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3, 4});
  CHECK(test::same_bits(g.x, generate(a, go).x));
  go.batch = 2;
  CHECK_ALLCLOSE(generate(a, go).x, g.x, 1e-5, 1e-5);
  // The ancestral noise of DDPM too: one stream per sample.
  go.sampler = sampler_for_nfe(SamplerKind::ddpm, 3);
  go.batch = 5;
  const Generated gd = generate(a, go);  // [5, 1, 14, 14]
  go.batch = 2;
  CHECK_ALLCLOSE(generate(a, go).x, gd.x, 1e-5, 1e-5);
  CHECK_THROWS_WITH(per_sample_noise({1, 2})(Shape{3, 4}), Contains("a draw of shape [3, 4] for 2 per-sample streams"));
  // A diverged sampling run (here an absurd Skip-Tuning scale) is an error, not a grid of NaN images.
  go.sampler = sampler_for_nfe(SamplerKind::heun, 3);
  a.set_skip_tuning(1e300, 1e300);
  CHECK_THROWS_WITH(generate(a, go), Contains("are not finite (heun with 3 NFE, guidance 1, Skip-Tuning rho 1e+300"));
  a.set_skip_tuning(0.8, 1.0);
  CHECK_THROWS_WITH(fit(a, ea, images, data.labels, o), Contains("Skip-Tuning is a sampling option"));
  a.clear_skip_tuning();
  TrainOptions too_big = o;
  too_big.batch = images.shape()[0] + 1;
  CHECK_THROWS_WITH(fit(a, ea, images, data.labels, too_big),
                    Equals(fmt::format("diffusion fit: {0} images do not fill one batch of {1}; use a batch of at most {0}",
                                       images.shape()[0], too_big.batch)));
}

TEST_CASE("training: a step is reported before its checkpoint, and a diverged run keeps the last good one", "[models][diffusion]") {
  const auto data = nn::data::synthetic_shapes(64, 3);
  const Tensor images = to_model_space(data.images, 14);  // [64, 1, 14, 14]
  UNetConfig c = tiny_config();
  c.image_size = 14;
  c.channels = {8, 8};
  c.num_classes = 10;
  const std::string ckpt = (std::filesystem::temp_directory_path() / fmt::format("tg-diff-div-{}.safetensors", ::getpid())).string();
  std::filesystem::remove(ckpt);
  Generator g1(1);
  UNet net(c, &g1);
  nn::EMA ema(net, 0.9);
  TrainOptions o{.batch = 16, .warmup = 0, .minutes = 0, .max_steps = 4, .seed = 3, .checkpoint = ckpt, .checkpoint_every = 2,
                 .progress = false};
  // on_step (where the example logs its metrics) runs while the checkpoint on disk is the previous one.
  std::vector<std::int64_t> on_disk;  // at steps 2 and 4 (-1: none yet)
  o.on_step = [&](const StepStats& s) {
    if (s.step % 2 == 0)
      on_disk.push_back(std::filesystem::exists(ckpt) ? nn::training_checkpoint_step(nn::load_safetensors(ckpt), ckpt) : -1);
  };
  fit(net, ema, images, data.labels, o);
  CHECK(on_disk == std::vector<std::int64_t>{-1, 2});
  const std::string good = test::read_file(ckpt);
  // Resumed with a learning rate that overflows the f32 weights in one step: the loss is NaN on the
  // next step, and the run stops there with an error naming it.
  TrainOptions wild = o;
  wild.on_step = nullptr;
  wild.lr = 1e30;
  wild.max_steps = 8;
  wild.checkpoint_every = 100;
  wild.resume = true;
  CHECK_THROWS_WITH(fit(net, ema, images, data.labels, wild),
                    Contains("diffusion fit: training diverged: the loss is nan at step 6") && Contains("try a smaller learning rate"));
  CHECK(test::read_file(ckpt) == good);
  // With a checkpoint due right after a step that overflows the weights to inf, the save itself
  // refuses the state.
  wild.lr = 1e300;
  wild.checkpoint_every = 1;
  CHECK_THROWS_WITH(fit(net, ema, images, data.labels, wild), Contains("save: not writing '" + ckpt + "' at step 5"));
  CHECK(test::read_file(ckpt) == good);
  std::filesystem::remove(ckpt);
}
