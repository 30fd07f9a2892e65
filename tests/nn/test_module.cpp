// Modules: named parameter paths, modes, printing, copies; basic layers' shapes and gradients.
#include <catch2/catch.hpp>

#include "core/autograd.hpp"
#include "nn/attention.hpp"
#include "nn/linear.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {
struct Block : nn::Module {
  nn::Linear fc;
  nn::Dropout drop{0.5};
  Tensor scale;  // a buffer
  Block() : fc(4, 3), scale(ones({3})) {}
  void visit(nn::Visitor& v) override {
    v.module("fc", fc);
    v.module("drop", drop);
    v.buffer("scale", scale);
  }
  std::string type_name() const override { return "Block"; }
};
struct Net : nn::Module {
  nn::Embedding emb{10, 4};
  std::vector<Block> blocks = std::vector<Block>(2);
  nn::Linear head{3, 2, {.bias = false}};
  void visit(nn::Visitor& v) override {
    v.module("emb", emb);
    v.modules("blocks", blocks);
    v.module("head", head);
  }
  std::string type_name() const override { return "Net"; }
};
}  // namespace

TEST_CASE("named parameters follow the visit order and nesting", "[nn][module]") {
  Net net;
  std::vector<std::string> names;
  for (const auto& p : net.named_parameters()) names.push_back(p.name + " " + fmt::format("{}", p.tensor.shape()));
  CHECK(names == std::vector<std::string>{"emb.weight [10, 4]", "blocks.0.fc.weight [3, 4]", "blocks.0.fc.bias [3]",
                                          "blocks.1.fc.weight [3, 4]", "blocks.1.fc.bias [3]", "head.weight [2, 3]"});
  CHECK(net.named_buffers().size() == 2);
  CHECK(net.named_buffers()[1].name == "blocks.1.scale");
  CHECK(net.state().size() == 8);
  CHECK(net.num_parameters() == 40 + 2 * 15 + 6);
  for (const Tensor& p : net.parameters()) CHECK(p.requires_grad());
  const std::string text = net.to_string();
  CHECK_THAT(text, Contains("Net()  [76 params]"));
  CHECK_THAT(text, Contains("(blocks.1): Block()"));
  CHECK_THAT(text, Contains("Linear(in=4, out=3, bias=true)  [15 params]"));
  CHECK_THAT(text, Contains("scale: [3] f32 (buffer)"));
}

TEST_CASE("train/eval propagate, zero_grad, freezing, clone_parameters", "[nn][module]") {
  Net net;
  CHECK(net.blocks[1].drop.training());
  net.eval();
  CHECK_FALSE(net.training());
  CHECK_FALSE(net.blocks[1].drop.training());
  net.train();
  CHECK(net.blocks[0].fc.training());

  ops::sum(net.head(net.blocks[0].fc(ones({2, 4})))).backward();
  CHECK(net.head.weight.grad().defined());
  net.zero_grad();
  CHECK_FALSE(net.head.weight.grad().defined());

  net.requires_grad_(false);
  CHECK_FALSE(net.head.weight.requires_grad());
  net.requires_grad_(true);

  Net copy = net;  // shares tensors
  CHECK(copy.head.weight.is_same(net.head.weight));
  copy.clone_parameters();
  CHECK_FALSE(copy.head.weight.storage() == net.head.weight.storage());
  CHECK(test::same_bits(copy.head.weight, net.head.weight));
  CHECK(copy.head.weight.requires_grad());
}

TEST_CASE("tied weights count once and stay tied through clone_parameters", "[nn][module]") {
  struct Tied : nn::Module {
    nn::Embedding emb{10, 4};
    nn::Linear head{4, 10, {.bias = false}};
    void visit(nn::Visitor& v) override {
      v.module("emb", emb);
      v.module("head", head);
    }
    std::string type_name() const override { return "Tied"; }
  } net;
  net.head.weight = net.emb.weight;  // [10, 4] both
  CHECK(net.num_parameters() == 40);  // torch counts a shared parameter once
  Tensor old = net.emb.weight;
  net.clone_parameters();
  CHECK(net.head.weight.is_same(net.emb.weight));
  CHECK_FALSE(net.emb.weight.is_same(old));
  CHECK(net.emb.weight.requires_grad());
}

TEST_CASE("set_dropout_generator reaches every dropout in the tree", "[nn][module]") {
  Net net;
  Generator g(5);
  net.set_dropout_generator(&g);
  CHECK(net.blocks[0].drop.gen == &g);
  CHECK(net.blocks[1].drop.gen == &g);
  // The masks now follow g: the same seed gives the same mask.
  const Tensor x = ones({64});
  const Tensor m1 = net.blocks[0].drop(x);
  g = Generator(5);
  CHECK(test::same_bits(net.blocks[0].drop(x), m1));
  net.set_dropout_generator(nullptr);
  CHECK(net.blocks[1].drop.gen == nullptr);
  nn::TransformerBlock block(8, 2, {.dropout = 0.1});
  block.set_dropout_generator(&g);
  CHECK(block.attn.gen == &g);  // attention dropout
  CHECK(block.drop.gen == &g);
}

TEST_CASE("Linear, Embedding, MLP, Dropout: shapes, init, gradients", "[nn][layers]") {
  Generator gen(3);
  nn::Linear lin(5, 7, {.dtype = DType::f64, .gen = &gen});
  const auto w = lin.weight.to_vector<double>();
  for (double v : w) CHECK(std::fabs(v) <= 1 / std::sqrt(5.0));  // PyTorch's default bound
  CHECK(lin(test::randn({2, 3, 5})).shape() == Shape{2, 3, 7});
  CHECK_GRADCHECK([&](const Tensors& v) { return lin(v[0]); }, {test::randn({3, 5}, DType::f64, 4)});
  nn::Linear zero(4, 2, {.init = nn::init::zeros(), .bias_init = nn::init::zeros()});
  CHECK(ops::sum(ops::abs(zero(ones({1, 4})))).item() == 0.0);

  nn::Embedding emb(11, 3, {.gen = &gen});
  CHECK(emb(tensor({1, 10, 0, 3}, {2, 2}, DType::i64)).shape() == Shape{2, 2, 3});
  CHECK_THROWS_WITH(emb(tensor({11}, DType::i64)), Contains("out of range"));

  for (bool swiglu : {false, true}) {
    nn::MLP mlp(6, 16, 4, {.swiglu = swiglu, .gen = &gen});
    CHECK(mlp(ones({3, 6})).shape() == Shape{3, 4});
    CHECK(mlp.named_parameters().size() == (swiglu ? 6u : 4u));
  }
  nn::MLP zero_out(4, 8, -1, {.out_init = nn::init::zeros()});
  CHECK(ops::sum(ops::abs(zero_out(test::randn({2, 4}, DType::f32, 5)))).item() == 0.0);

  nn::Dropout drop(0.5, &gen);
  const Tensor x = ones({1000});
  const Tensor y = drop(x);
  const double kept = ops::mean(ops::ne(y, 0.0)).item();
  CHECK(kept == Approx(0.5).margin(0.06));
  CHECK(ops::amax(y).item() == 2.0);  // inverted dropout scales by 1/(1-p)
  drop.eval();
  CHECK(drop(x).is_same(x));
  CHECK_THROWS_WITH(nn::Dropout(1.0), Contains("Dropout: p must be in [0, 1)"));
  CHECK_THROWS_WITH(nn::Linear(0, 3), Contains("Linear: feature sizes must be positive"));
}

TEST_CASE("initialisers have the documented scales", "[nn][init]") {
  Generator gen(9);
  Tensor w = empty({256, 512});
  nn::init::apply(w, nn::init::xavier_uniform(), gen);
  const double bound = std::sqrt(6.0 / (256 + 512));
  CHECK(ops::amax(ops::abs(w)).item() <= bound);
  nn::init::apply(w, nn::init::kaiming_normal(), gen);
  CHECK(ops::stddev(w).item() == Approx(std::sqrt(2.0 / 512)).epsilon(0.03));
  nn::init::apply(w, nn::init::trunc_normal(0.02), gen);
  CHECK(ops::amax(ops::abs(w)).item() <= 0.04 + 1e-7);
  nn::init::apply(w, nn::init::constant(0.25), gen);
  CHECK(ops::amin(w).item() == 0.25f);
  CHECK(nn::init::fans({8, 3, 5, 5}) == std::pair<std::int64_t, std::int64_t>{75, 200});
  Tensor none = empty({5, 0});  // no elements: left alone, as torch (its fan_in is 0)
  CHECK_NOTHROW(nn::init::apply(none, nn::init::kaiming_uniform(), gen));
}
