// One training step of the reference decoder-only transformer of
// ../shared/bench-reference/py/train_transformer.py, built from tapegrad's modules: 4 layers,
// d_model 256, 4 heads, seq 128, batch 16, byte vocab 256, pre-norm LayerNorm (or RMSNorm), RoPE
// base 10000 in the rotate-half (half_split) layout, causal attention, GELU (erf) MLP 4x, biases off,
// final norm, untied head, next-token cross-entropy, AdamW(lr 3e-4, wd 0.1); random tokens (4 fixed
// batches, as the reference). Times zero_grad + forward + loss + backward + optimizer step, and a
// no-grad forward; prints bench_util JSON lines (workload "train_transformer", with tokens_per_s).
//   bench_transformer [--threads N] [--warmup W] [--steps S] [layer|rms] [layers d_model heads seq batch]
#include <fmt/core.h>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "models/transformer/transformer.hpp"
#include "nn/optim.hpp"
#include "ops/loss.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;
namespace tf = tg::models::transformer;

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(argc, argv);
  std::string norm = "layer";
  std::vector<std::int64_t> dims{4, 256, 4, 128, 16};  // layers, d_model, heads, seq, batch
  std::size_t next_dim = 0;
  for (const std::string& a : args.rest) {
    if (a == "layer" || a == "rms") {
      norm = a;
    } else if (next_dim < dims.size()) {
      dims[next_dim++] = bench::positive_int("a model size", a);
    } else {
      fmt::print(stderr, "usage: bench_transformer [--threads N] [--warmup W] [--steps S] [layer|rms] "
                         "[layers d_model heads seq batch]\n");
      return 2;
    }
  }
  const std::int64_t L = dims[0], d = dims[1], H = dims[2], T = dims[3], B = dims[4], V = 256;
  try {
    Generator gen(0);
    tf::Transformer model({.vocab = V, .dim = d, .layers = L, .heads = H,
                           .norm = norm == "rms" ? nn::NormKind::rms : nn::NormKind::layer,
                           .norm_eps = norm == "rms" ? 1e-6 : 1e-5, .activation = nn::Activation::gelu,
                           .bias = false, .tied_head = false, .axes = 1,
                           .rope = {.base = 10000.0, .layout = ops::RotaryLayout::half_split}},
                          &gen);
    nn::AdamW opt(model.named_parameters(), {.lr = 3e-4, .weight_decay = 0.1});
    nn::PositionBuilder pb;  // flat RoPE-1D positions 0 .. T-1
    pb.add_text(T);
    const Tensor positions = pb.positions();  // [T, 1]
    const int nb = 4;
    const Tensor data = randint(0, V, {nb, B, T + 1}, DType::i64, gen);
    int it = 0;
    auto step = [&] {
      const Tensor seq = data.select(0, it++ % nb);                                       // [B, T + 1]
      const Tensor logits = model({.tokens = seq.narrow(1, 0, T), .positions = positions});  // [B, T, V]
      const Tensor loss = ops::cross_entropy(logits.reshape({B * T, V}), seq.narrow(1, 1, T).reshape({B * T}));
      opt.zero_grad();
      loss.backward();
      opt.step();
    };
    const bench::Stats st = bench::time_steps(step, args.warmup, args.steps);
    const std::string shape = fmt::format("{}{} L{} d{} h{} B{} T{}", norm == "rms" ? "rms " : "", "transformer", L, d,
                                          H, B, T);
    const double tokens = static_cast<double>(B * T);
    const double flops = 3.0 * 2 * tokens * static_cast<double>(L * 12 * d * d + d * V) +
                         3.0 * 2 * static_cast<double>(L * 2 * B * T * T * d);
    bench::emit("train_transformer", shape + " step", args.threads, st,
                fmt::format("\"tokens_per_s\": {:.1f}, \"matmul_gflops_at_median\": {:.1f}, \"params\": {}",
                            tokens / st.median_s, flops / st.median_s / 1e9, model.num_parameters()));
    auto fwd = [&] {
      NoGradGuard no_grad;
      (void)model({.tokens = data.select(0, 0).narrow(1, 0, T), .positions = positions});
    };
    const bench::Stats fs = bench::time_steps(fwd, 2, std::max(5, args.steps / 2));
    bench::emit("train_transformer", shape + " fwd (no_grad)", args.threads, fs,
                fmt::format("\"tokens_per_s\": {:.1f}", tokens / fs.median_s));
  } catch (const tg::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
