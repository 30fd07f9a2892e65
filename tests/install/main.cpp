// Fits y = 3x - 1 with one Linear layer, using an installed tapegrad.
#include <fmt/core.h>

#include "nn/linear.hpp"
#include "nn/optim.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"

int main() {
  tg::manual_seed(0);
  tg::nn::Linear line(1, 1);
  tg::nn::SGD opt(line.named_parameters(), {.lr = 0.1});
  const tg::Tensor x = tg::linspace(-1, 1, 32).reshape({32, 1});
  const tg::Tensor y = x * 3.0 - 1.0;
  for (int step = 0; step < 200; ++step) {
    tg::Tensor loss = tg::ops::mse_loss(line(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  fmt::print("w = {:.3f}, b = {:.3f}\n", line.weight.item(), line.bias.item());
  return std::abs(line.weight.item() - 3) < 1e-3 && std::abs(line.bias.item() + 1) < 1e-3 ? 0 : 1;
}
