// Whole training steps of the reference models, timed like ../shared/bench-reference/py/train_*.py:
// zero_grad + forward + loss + backward + optimizer step, on fixed synthetic batches.
//   bench_train mlp|cnn [--threads N] [--warmup W] [--steps S] [--batch B]
#include <fmt/core.h>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "models/classifier/classifier.hpp"
#include "nn/optim.hpp"
#include "ops/loss.hpp"
#include "tests/bench/bench_util.hpp"

using namespace tg;

namespace {

int train_classifier(const std::string& name, const bench::Args& args, std::int64_t batch) {
  namespace cls = models::classifier;
  Generator gen(0);
  cls::Classifier model({.arch = cls::parse_arch(name)}, &gen);
  nn::Adam opt(model.named_parameters(), {.lr = 1e-3});
  const int nbatches = name == "mlp" ? 16 : 8;  // as the reference scripts
  Tensors xs, ys;
  for (int i = 0; i < nbatches; ++i) {
    xs.push_back(randn({batch, 1, 28, 28}, DType::f32, gen));
    ys.push_back(randint(0, 10, {batch}, DType::i64, gen));
  }
  int it = 0;
  auto step = [&] {
    const int i = it++ % nbatches;
    opt.zero_grad();
    Tensor loss = ops::cross_entropy(model(xs[i]), ys[i]);
    loss.backward();
    opt.step();
  };
  const auto st = bench::time_steps(step, args.warmup, args.steps);
  const std::string shape = fmt::format("{} B{}", name, batch);
  bench::emit("train_" + name, shape + " step", args.threads, st, fmt::format("\"samples_per_s\": {:.1f}", batch / st.median_s));
  if (name == "cnn") {
    auto fwd = [&] {
      NoGradGuard no_grad;
      (void)model(xs[0]);
    };
    bench::emit("train_" + name, shape + " fwd (no_grad)", args.threads, bench::time_steps(fwd, 3, std::max(5, args.steps / 2)));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args = bench::parse_args(argc, argv);
  if (args.rest.empty()) {
    fmt::print(stderr, "usage: bench_train mlp|cnn [--threads N] [--warmup W] [--steps S] [batch]\n");
    return 2;
  }
  const std::string what = args.rest[0];
  const std::int64_t batch = args.rest.size() > 1 ? bench::positive_int("the batch size", args.rest[1]) : 128;
  try {
    if (what == "mlp" || what == "cnn") return train_classifier(what, args, batch);
  } catch (const tg::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  fmt::print(stderr, "unknown workload '{}'\n", what);
  return 2;
}
