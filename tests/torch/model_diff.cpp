// Driver of the nn/model-level checks against PyTorch (tests/torch/model_diff.py).
//
//   build/tests/model_diff transformer DIR layer|rms
//     builds the transformer of the train_transformer benchmark at a small size, perturbs every
//     parameter (so that norm weights and biases are not trivially 1 and 0), runs one batch
//     forward and backward in f32, and writes
//       DIR/weights.safetensors   the parameters (tapegrad names)
//       DIR/grads.safetensors     "tokens" [B, T + 1], "loss" [1], "logits" [B, T, V], "grad.<name>"
//     The Python side loads the weights into the reference model of tests/bench/ref_transformer.py.
//   build/tests/model_diff optim
//     runs SGD / Adam / AdamW (momentum, dampening, nesterov, weight decay, gradient clipping) for
//     25 steps on two f64 parameters with fixed gradient sequences, the second one skipping every
//     third step (no gradient), and prints "<name> <final values>" per configuration.
#include <fmt/core.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.hpp"
#include "models/transformer/transformer.hpp"
#include "nn/checkpoint.hpp"
#include "nn/optim.hpp"
#include "nn/positional.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"

using namespace tg;
namespace tf = tg::models::transformer;

namespace {

int transformer(const std::string& dir, bool rms) {
  // Must match model_diff.py (the reference's --layers/--d-model/--heads/--seq/--batch).
  const std::int64_t L = 2, d = 64, H = 4, T = 24, B = 3, V = 256;
  Generator gen(3);
  tf::Transformer model({.vocab = V, .dim = d, .layers = L, .heads = H,
                         .norm = rms ? nn::NormKind::rms : nn::NormKind::layer, .norm_eps = rms ? 1e-6 : 1e-5,
                         .activation = nn::Activation::gelu, .bias = false, .tied_head = false, .axes = 1,
                         .rope = {.base = 10000.0, .layout = ops::RotaryLayout::half_split}},
                        &gen);
  {
    NoGradGuard no_grad;
    for (auto& p : model.named_parameters()) p.tensor.copy_(p.tensor + randn(p.tensor.shape(), DType::f32, gen) * 0.2);
  }
  nn::save_module(model, dir + "/weights.safetensors");
  nn::PositionBuilder pb;  // RoPE-1D positions 0 .. T-1
  pb.add_text(T);
  const Tensor seq = randint(0, V, {B, T + 1}, DType::i64, gen);                              // [B, T + 1]
  const Tensor logits = model({.tokens = seq.narrow(1, 0, T), .positions = pb.positions()});  // [B, T, V]
  const Tensor loss = ops::cross_entropy(logits.reshape({B * T, V}), seq.narrow(1, 1, T).reshape({B * T}));
  loss.backward();
  std::vector<nn::NamedTensor> out{{"tokens", seq.contiguous()},
                                   {"loss", loss.detach().reshape({1})},
                                   {"logits", logits.detach().contiguous()}};
  for (auto& p : model.named_parameters()) out.push_back({"grad." + p.name, p.tensor.grad()});
  nn::save_safetensors(dir + "/grads.safetensors", out);
  return 0;
}

// The gradient of parameter `salt` at step t (same formula in model_diff.py).
Tensor gradient(int t, int n, int salt) {
  std::vector<double> g(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    g[i] = std::sin(0.7 * t + 1.3 * i + salt) * (1 + 0.5 * std::cos(0.3 * i * t)) + (i == 0 ? 0.0 : 0.1);
  return from_vector(g);
}

int optimizers() {
  using Make = std::function<std::unique_ptr<nn::Optimizer>(std::vector<nn::NamedTensor>)>;
  auto run = [](const char* name, const Make& make, bool clip) {
    std::vector<double> a0, b0;
    for (int i = 0; i < 7; ++i) a0.push_back(0.5 - 0.2 * i);
    for (int i = 0; i < 3; ++i) b0.push_back(1.0 + i);
    Tensor a = from_vector(a0).requires_grad_(), b = from_vector(b0).requires_grad_();
    auto opt = make({{"a", a}, {"b", b}});
    for (int t = 0; t < 25; ++t) {
      a.set_grad(gradient(t, 7, 0));
      if (t % 3 != 2) b.set_grad(gradient(t, 3, 5));
      else b.reset_grad();  // b misses every third step
      if (clip) nn::clip_grad_norm(Tensors{a, b}, 0.5);
      opt->step();
    }
    fmt::print("{}", name);
    for (const Tensor& p : {a, b})
      for (double v : p.to_vector<double>()) fmt::print(" {:.17g}", v);
    fmt::print("\n");
  };
  auto sgd = [](nn::SGDOptions o) -> Make { return [o](auto p) { return std::make_unique<nn::SGD>(p, o); }; };
  auto adam = [](nn::AdamOptions o) -> Make { return [o](auto p) { return std::make_unique<nn::Adam>(p, o); }; };
  auto adamw = [](nn::AdamWOptions o) -> Make { return [o](auto p) { return std::make_unique<nn::AdamW>(p, o); }; };
  run("sgd", sgd({.lr = 0.1}), false);
  run("sgd_momentum", sgd({.lr = 0.1, .momentum = 0.9}), false);
  run("sgd_dampening_wd", sgd({.lr = 0.1, .momentum = 0.9, .dampening = 0.3, .weight_decay = 0.05}), false);
  run("sgd_nesterov_wd", sgd({.lr = 0.1, .momentum = 0.8, .weight_decay = 0.01, .nesterov = true}), false);
  run("sgd_clip", sgd({.lr = 0.1, .momentum = 0.5}), true);
  run("adam", adam({.lr = 0.01}), false);
  run("adam_wd", adam({.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-3, .weight_decay = 0.1}), false);
  run("adamw_wd", adamw({.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-3, .weight_decay = 0.1}), false);
  run("adamw_clip", adamw({.lr = 0.05, .weight_decay = 0.01}), true);
  run("adamw_default", adamw({.lr = 0.01}), false);  // the default weight decay, as torch's
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool transformer_args = mode == "transformer" && argc == 4 &&
                                (std::string(argv[3]) == "layer" || std::string(argv[3]) == "rms");
  if (!transformer_args && !(mode == "optim" && argc == 2)) {
    fmt::print(stderr, "usage: {} transformer DIR layer|rms\n       {} optim\n", argv[0], argv[0]);
    return 2;
  }
  try {
    return mode == "optim" ? optimizers() : transformer(argv[2], std::string(argv[3]) == "rms");
  } catch (const tg::Error& e) {
    fmt::print(stderr, "model_diff: {}\n", e.what());
    return 1;
  }
}
