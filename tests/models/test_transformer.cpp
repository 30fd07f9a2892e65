// The multimodal decoder-only transformer: shapes and names, KV-cache decoding equals full
// recomputation (with images and 2-D positions), causality, generation (greedy, temperature, top-k)
// and the end-to-end compatibility of text-only training under RoPE-1D and RoPE-TV.
#include <catch2/catch.hpp>

#include <limits>

#include <cstring>
#include <filesystem>

#include "core/autograd.hpp"
#include "models/transformer/transformer.hpp"
#include "nn/checkpoint.hpp"
#include "nn/optim.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
namespace tf = tg::models::transformer;
using Catch::Matchers::Contains;

namespace {

tf::Config small_config(std::int64_t axes, std::int64_t patch_dim = 0) {
  return {.vocab = 11, .patch_dim = patch_dim, .dim = 32, .layers = 2, .heads = 4, .axes = axes,
          .rope = {.base = 1000.0}};
}

// A multimodal sequence: 3 text tokens, [IMG], a 2 x 3 image, [/IMG], 2 text tokens.
struct Sample {
  nn::PositionBuilder pb;
  tf::Inputs in;
};
Sample multimodal(const std::string& scheme, std::int64_t B, std::int64_t patch_dim, std::uint64_t seed) {
  Sample s{nn::PositionBuilder(nn::parse_positions(scheme)), {}};
  s.pb.add_text(3).add_image(2, 3, true).add_text(2);
  const std::int64_t T = s.pb.size();
  Generator gen(seed);
  s.in.tokens = randint(0, 11, {B, T}, DType::i64, gen);
  s.in.patches = randn({B, T, patch_dim}, DType::f32, gen);
  s.in.is_patch = s.pb.is_patch();
  s.in.positions = s.pb.positions();
  return s;
}

// Rows first .. first + n - 1 of every input.
tf::Inputs slice(const tf::Inputs& in, std::int64_t first, std::int64_t n) {
  tf::Inputs r;
  r.tokens = in.tokens.narrow(1, first, n);
  if (in.patches.defined()) r.patches = in.patches.narrow(1, first, n);
  if (in.is_patch.defined()) r.is_patch = in.is_patch.narrow(0, first, n);
  r.positions = in.positions.narrow(in.positions.dim() - 2, first, n);
  return r;
}

std::uint64_t bits(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

}  // namespace

TEST_CASE("transformer: shapes, parameter names, tied head, errors", "[models][transformer]") {
  Generator gen(1);
  tf::Transformer m(small_config(2, 5), &gen);
  const Sample s = multimodal("tv", 2, 5, 2);
  CHECK(m(s.in).shape() == Shape{2, s.pb.size(), 11});
  CHECK(m.hidden(s.in).shape() == Shape{2, s.pb.size(), 32});
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.name);
  CHECK(names.front() == "embed.weight");
  CHECK(names[1] == "patch_in.weight");
  CHECK(names[3] == "blocks.0.norm1.weight");
  CHECK(names.back() == "head.weight");
  CHECK(m.blocks[0].attn.qkv.bias.defined() == false);  // biases off by default
  tf::Config tied = small_config(1);
  tied.tied_head = true;
  tied.norm = nn::NormKind::rms;
  tied.swiglu = true;
  tf::Transformer t(tied, &gen);
  CHECK(t.named_parameters().back().name == "norm.weight");
  nn::PositionBuilder pb;
  pb.add_text(4);
  const tf::Inputs text{.tokens = randint(0, 11, {3, 4}, DType::i64, gen), .positions = pb.positions()};
  CHECK(t(text).shape() == Shape{3, 4, 11});
  CHECK_THROWS_WITH(m(text), Contains("expected positions [T, A] = [4, 2]"));
  CHECK_THROWS_WITH(t(s.in), Contains("expected positions [T, A]"));
  tf::Inputs no_mask = s.in;
  no_mask.is_patch = Tensor();
  CHECK_THROWS_WITH(m(no_mask), Contains("patches were given without is_patch"));
  tf::Config bad = small_config(1);
  bad.tied_head = true;
  bad.outputs = 4;
  CHECK_THROWS_WITH(tf::Transformer(bad), Contains("a tied head needs outputs == vocab"));
  CHECK_THROWS_WITH(tf::Transformer(tf::Config{.dim = 30, .heads = 4}), Contains("heads dividing dim"));
}

TEST_CASE("transformer: a checkpoint loads only into a model with the same heads and rotary settings", "[models][transformer]") {
  Generator gen(4);
  tf::Transformer saved(small_config(2, 5), &gen);
  const std::string path =
      (std::filesystem::temp_directory_path() / fmt::format("tg-tfm-{}.safetensors", ::getpid())).string();
  nn::save_module(saved, path);
  tf::Transformer same(small_config(2, 5));
  nn::load_module(same, path);
  const Sample s = multimodal("tv", 1, 5, 2);
  CHECK(test::same_bits(same(s.in), saved(s.in)));
  // Every variant below has the same tensors; each computes something else with them.
  auto refused = [&](tf::Config c, const std::string& message) {
    tf::Transformer other(c);
    CHECK_THROWS_WITH(nn::load_module(other, path), Contains(message));
  };
  tf::Config heads = small_config(2, 5);
  heads.heads = 2;
  refused(heads, "'blocks.0.attn' is MultiheadAttention(heads=4, scale=0.35355339059327373), but here it is "
                 "MultiheadAttention(heads=2, scale=0.25)");
  tf::Config sections = small_config(2, 5);
  sections.rope.sections = {2, 2};
  refused(sections, "here it is Transformer(axes=2, rope_base=1000, layout=interleaved, sections=[2,2])");
  tf::Config layout = small_config(2, 5);
  layout.rope.layout = ops::RotaryLayout::half_split;
  refused(layout, "layout=half_split");
  tf::Config base = small_config(2, 5);
  base.rope.base = 10000.0;
  refused(base, "rope_base=10000");
  tf::Config act = small_config(2, 5);
  act.activation = nn::Activation::gelu_tanh;
  refused(act, "'blocks.0.mlp' is MLP(activation=gelu), but here it is MLP(activation=gelu_tanh)");
  std::filesystem::remove(path);
}

TEST_CASE("transformer: KV-cache decoding equals full recomputation", "[models][transformer]") {
  // The last case is Qwen2-VL's rotary setup in small: half-split pairs, contiguous sections (t, h, w).
  for (const std::string scheme : {"flat1d", "tv", "tie_v1", "mrope", "mrope+sections"}) {
    INFO(scheme);
    const bool qwen = scheme == "mrope+sections";
    const nn::PositionConfig pc = nn::parse_positions(qwen ? "mrope" : scheme);
    Generator gen(3);
    tf::Config config = small_config(nn::PositionBuilder(pc).axes(), 5);
    if (qwen) config.rope = {.base = 1000.0, .layout = ops::RotaryLayout::half_split, .sections = {2, 1, 1}};
    tf::Transformer m(config, &gen);
    const Sample s = multimodal(qwen ? "mrope" : scheme, 2, 5, 4);
    NoGradGuard no_grad;
    const Tensor full = m(s.in);  // [B, T, V]
    const std::int64_t T = s.pb.size();
    auto caches = m.make_caches(T);
    Tensors parts{m(slice(s.in, 0, 6), &caches)};  // a prompt ending inside the image
    for (std::int64_t t = 6; t < T; ++t) parts.push_back(m(slice(s.in, t, 1), &caches));
    CHECK(caches[0].length == T);
    CHECK_ALLCLOSE(ops::cat(parts, 1), full, 1e-5, 1e-5);
  }
}

TEST_CASE("transformer: changing later tokens never changes earlier outputs", "[models][transformer]") {
  Generator gen(5);
  tf::Transformer m(small_config(2, 5), &gen);
  Sample s = multimodal("tv", 2, 5, 6);
  const Tensor y = m(s.in);
  tf::Inputs changed = s.in;
  changed.tokens = s.in.tokens.clone();
  changed.patches = s.in.patches.clone();
  changed.tokens.narrow(1, 8, 4).fill_(7.0);  // the last patch, [/IMG] and the text after
  changed.patches.narrow(1, 8, 4).fill_(3.0);
  const Tensor y2 = m(changed);
  CHECK(test::same_bits(y.narrow(1, 0, 8), y2.narrow(1, 0, 8)));
  CHECK_FALSE(test::same_bits(y.narrow(1, 8, 4), y2.narrow(1, 8, 4)));
}

TEST_CASE("transformer: generation (greedy, temperature, top-k) with KV caches", "[models][transformer]") {
  Generator gen(7);
  tf::Transformer m(small_config(2, 5), &gen);
  Sample s = multimodal("tv", 2, 5, 8);
  const std::int64_t T = s.pb.size(), n = 5;
  nn::PositionBuilder pb = s.pb;
  Generator g1(1);
  const Tensor greedy = tf::generate(m, s.in, pb, {.max_new_tokens = n}, g1);
  REQUIRE(greedy.shape() == Shape{2, n});
  CHECK(pb.size() == T + n);
  CHECK(pb.next_text() == s.pb.next_text() + n);
  // Greedy decoding = the argmax of a full recomputation over prompt + generated tokens.
  tf::Inputs all{.tokens = ops::cat({s.in.tokens, greedy}, 1),
                 .patches = ops::cat({s.in.patches, zeros({2, n, 5})}, 1),
                 .is_patch = pb.is_patch(),
                 .positions = pb.positions()};
  {
    NoGradGuard no_grad;
    const Tensor pred = ops::argmax(m(all), 2);  // [B, T + n]
    CHECK(test::same_bits(pred.narrow(1, T - 1, n).contiguous(), greedy));
  }
  // top-k = 1 is greedy; sampling is reproducible from the generator's seed.
  nn::PositionBuilder p2 = s.pb, p3 = s.pb, p4 = s.pb;
  Generator g2(9), g3(9), g4(9);
  CHECK(test::same_bits(tf::generate(m, s.in, p2, {.max_new_tokens = n, .temperature = 1.0, .top_k = 1}, g2), greedy));
  const Tensor a = tf::generate(m, s.in, p3, {.max_new_tokens = n, .temperature = 2.0, .top_k = 4}, g3);
  const Tensor b = tf::generate(m, s.in, p4, {.max_new_tokens = n, .temperature = 2.0, .top_k = 4}, g4);
  CHECK(test::same_bits(a, b));
  // eos: a finished sequence keeps emitting it.
  nn::PositionBuilder p5 = s.pb;
  const std::int64_t eos = greedy.at<std::int64_t>({0, 0});
  const Tensor stopped = tf::generate(m, s.in, p5, {.max_new_tokens = n, .eos = eos}, g1);
  for (std::int64_t i = 0; i < n; ++i) CHECK(stopped.at<std::int64_t>({0, i}) == eos);
  CHECK_THROWS_WITH(tf::generate(m, s.in, pb, {.max_new_tokens = n}, g1), Contains("holds 18 tokens but the prompt has T = 13"));
  // Prompt positions laid out by another builder would be continued from the wrong place.
  tf::Inputs shifted = s.in;
  shifted.positions = s.pb.positions() + 100.0;
  nn::PositionBuilder p6 = s.pb;
  CHECK_THROWS_WITH(tf::generate(m, shifted, p6, {.max_new_tokens = n}, g1),
                    Contains("generate: prompt.positions [13, 2] differ from the position builder's"));
  // A length past the sequence limit is refused before the KV caches are sized by it.
  nn::PositionBuilder p7 = s.pb;
  CHECK_THROWS_WITH(tf::generate(m, s.in, p7, {.max_new_tokens = std::int64_t{1} << 40}, g1),
                    Contains("generate: max_new_tokens must be at most 16777203"));
  CHECK_THROWS_WITH(tf::generate(m, s.in, p7, {.max_new_tokens = std::numeric_limits<std::int64_t>::max()}, g1),
                    Contains("max_new_tokens must be at most"));
  CHECK(p7.size() == T);  // the builder untouched
  // The ids at patch positions are not read: placeholders give the same logits.
  tf::Inputs placeholders = s.in;
  placeholders.tokens = ops::where(s.in.is_patch, full({1, T}, -1.0, DType::i64).expand({2, T}), s.in.tokens);
  {
    NoGradGuard no_grad;
    CHECK(test::same_bits(m(placeholders), m(s.in)));
  }
  // Attention dropout in training mode would make the samples depend on the model's generator.
  for (auto& b : m.blocks) b.attn.dropout = 0.5;
  m.train();
  nn::PositionBuilder p8 = s.pb;
  CHECK_THROWS_WITH(tf::generate(m, s.in, p8, {.max_new_tokens = n}, g1),
                    Contains("generate: the model is in training mode with attention dropout 0.5; call eval()"));
  m.eval();
  CHECK(tf::generate(m, s.in, p8, {.max_new_tokens = n}, g1).shape() == Shape{2, n});
}

TEST_CASE("transformer: sample_next follows softmax(logits / temperature) within the top k", "[models][transformer]") {
  const std::int64_t B = 20000;
  const Tensor logits = tensor({1.0, 0.0, 2.0, -1.0}).reshape({1, 4}).expand({B, 4}).contiguous();
  Generator gen(11);
  const auto draw = tf::sample_next(logits, 0.5, 0, gen).to_vector<std::int64_t>();
  std::vector<double> freq(4, 0.0);
  for (const auto t : draw) freq[static_cast<std::size_t>(t)] += 1.0 / B;
  const std::vector<double> z{std::exp(2.0), std::exp(0.0), std::exp(4.0), std::exp(-2.0)};
  const double total = z[0] + z[1] + z[2] + z[3];
  for (std::size_t i = 0; i < 4; ++i) CHECK(freq[i] == Approx(z[i] / total).margin(0.01));
  const auto top2 = tf::sample_next(logits, 1.0, 2, gen).to_vector<std::int64_t>();
  for (const auto t : top2) CHECK((t == 0 || t == 2));
  CHECK(tf::sample_next(logits.narrow(0, 0, 2), 0.0, 0, gen).to_vector<std::int64_t>() == std::vector<std::int64_t>{2, 2});
  CHECK_THROWS_WITH(tf::sample_next(logits, -1.0, 0, gen), Contains("temperature must be >= 0"));
  // Non-finite logits are refused (an inf used to pick the least likely token, a NaN itself).
  CHECK_THROWS_WITH(tf::sample_next(tensor({0.0, INFINITY, 0.0, -1.0}).reshape({1, 4}), 1.0, 0, gen),
                    Contains("sample_next: logit [0, 1] is inf; logits must be finite"));
  CHECK_THROWS_WITH(tf::sample_next(tensor({NAN, 0.0}).reshape({1, 2}), 0.0, 0, gen), Contains("logit [0, 0] is nan"));
}

TEST_CASE("transformer: text-only training under flat1d and tv gives identical losses, bit for bit",
          "[models][transformer]") {
  auto train = [](const std::string& scheme) {
    nn::PositionBuilder pb(nn::parse_positions(scheme));
    pb.add_text(9);
    Generator init(13), data(14);
    tf::Transformer m(small_config(pb.axes()), &init);
    nn::AdamW opt(m.named_parameters(), {.lr = 3e-3, .weight_decay = 0.01});
    std::vector<std::uint64_t> losses;
    for (int step = 0; step < 6; ++step) {
      const Tensor seq = randint(0, 11, {4, 10}, DType::i64, data);  // [B, T + 1]
      const Tensor logits = m({.tokens = seq.narrow(1, 0, 9), .positions = pb.positions()});  // [B, T, V]
      const Tensor loss = ops::cross_entropy(logits.reshape({36, 11}), seq.narrow(1, 1, 9).reshape({36}));
      opt.zero_grad();
      loss.backward();
      opt.step();
      losses.push_back(bits(loss.item()));
    }
    return std::pair{losses, m.state()};
  };
  const auto [l1, s1] = train("flat1d");
  const auto [l2, s2] = train("tv");
  CHECK(l1 == l2);
  REQUIRE(s1.size() == s2.size());
  for (std::size_t i = 0; i < s1.size(); ++i) CHECK(test::same_bits(s1[i].tensor, s2[i].tensor));
}

TEST_CASE("transformer: a short training run learns to attend to the previous token", "[models][transformer]") {
  // Target at position t: the token at t - 1 (only attention to relative offset 1 can solve it).
  Generator init(15), data(16);
  tf::Transformer m(small_config(2), &init);
  nn::PositionBuilder pb(nn::parse_positions("tv"));
  pb.add_text(12);
  nn::AdamW opt(m.named_parameters(), {.lr = 1e-2});
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    const Tensor seq = randint(0, 11, {16, 12}, DType::i64, data);  // [B, T]
    const Tensor logits = m({.tokens = seq, .positions = pb.positions()});  // [B, T, V]
    const Tensor target = ops::cat({full({16, 1}, -100, DType::i64), seq.narrow(1, 0, 11)}, 1);
    const Tensor loss = ops::cross_entropy(logits.reshape({192, 11}), target.reshape({192}));
    opt.zero_grad();
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item();
  }
  CHECK(first > 2.0);
  CHECK(last < 0.5);
}
