// Driver of the model-level check against PyTorch (tests/torch/model_diff.py): builds the
// transformer of the train_transformer benchmark at a small size, perturbs every parameter (so
// that norm weights and biases are not trivially 1 and 0), runs one batch forward and backward in
// f32, and writes
//   DIR/weights.safetensors   the parameters (tapegrad names)
//   DIR/grads.safetensors     "tokens" [B, T + 1], "loss" [1], "logits" [B, T, V], "grad.<name>"
// The Python side loads the weights into the reference model of tests/bench/ref_transformer.py.
//
//   build/tests/model_diff DIR layer|rms
#include <fmt/core.h>

#include <string>

#include "core/autograd.hpp"
#include "models/transformer/transformer.hpp"
#include "nn/checkpoint.hpp"
#include "nn/positional.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"

using namespace tg;
namespace tf = tg::models::transformer;

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[2]) != "layer" && std::string(argv[2]) != "rms")) {
    fmt::print(stderr, "usage: {} DIR layer|rms\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const bool rms = std::string(argv[2]) == "rms";
  // Must match model_diff.py (the reference's --layers/--d-model/--heads/--seq/--batch).
  const std::int64_t L = 2, d = 64, H = 4, T = 24, B = 3, V = 256;
  try {
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
    const Tensor seq = randint(0, V, {B, T + 1}, DType::i64, gen);                                      // [B, T + 1]
    const Tensor logits = model({.tokens = seq.narrow(1, 0, T), .positions = pb.positions()});          // [B, T, V]
    const Tensor loss = ops::cross_entropy(logits.reshape({B * T, V}), seq.narrow(1, 1, T).reshape({B * T}));
    loss.backward();
    std::vector<nn::NamedTensor> out{{"tokens", seq.contiguous()},
                                     {"loss", loss.detach().reshape({1})},
                                     {"logits", logits.detach().contiguous()}};
    for (auto& p : model.named_parameters()) out.push_back({"grad." + p.name, p.tensor.grad()});
    nn::save_safetensors(dir + "/grads.safetensors", out);
  } catch (const tg::Error& e) {
    fmt::print(stderr, "model_diff: {}\n", e.what());
    return 1;
  }
  return 0;
}
