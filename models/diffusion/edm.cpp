#include "models/diffusion/edm.hpp"

#include <cmath>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/loss.hpp"
#include "ops/shape.hpp"

namespace tg::models::diffusion {

Precond precond(double sigma, double sd) {
  TG_CHECK(sigma > 0 && std::isfinite(sigma), "EDM precond: sigma must be positive and finite, got {}", sigma);
  TG_CHECK(sd > 0, "EDM precond: sigma_data must be positive, got {}", sd);
  const double denom = sigma * sigma + sd * sd;
  return {sd * sd / denom, sigma * sd / std::sqrt(denom), 1.0 / std::sqrt(denom), std::log(sigma) / 4.0};
}

namespace {

struct PrecondTensors {
  Tensor c_skip, c_out, c_in, c_noise;  // [B, 1, 1, 1] x3, [B]
};

PrecondTensors precond_tensors(const Tensor& sigma, double sd) {
  const std::int64_t B = sigma.shape()[0];
  const Tensor s = sigma.reshape({B, 1, 1, 1});      // [B, 1, 1, 1]
  const Tensor denom = ops::square(s) + sd * sd;     // [B, 1, 1, 1]
  return {(sd * sd) / denom, s * sd * ops::rsqrt(denom), ops::rsqrt(denom), ops::log(sigma) * 0.25};
}

void check_batch(const UNet& net, const Tensor& x, const Tensor& sigma, const char* who) {
  TG_CHECK(x.dim() == 4 && x.shape()[1] == net.config.in_channels, "{}: expected x [B, {}, S, S], got {}", who,
           net.config.in_channels, x.shape());
  TG_CHECK(sigma.defined() && sigma.dim() == 1 && sigma.shape()[0] == x.shape()[0], "{}: expected sigma [{}], got {}", who,
           x.shape()[0], sigma.defined() ? sigma.shape() : Shape{});
}

// The preconditioning divides by sigma and takes its log: a sigma <= 0, inf or NaN has no meaning.
void check_sigma_values(const Tensor& sigma, const char* who) {
  const std::vector<double> s = sigma.to_vector<double>();
  for (std::size_t i = 0; i < s.size(); ++i)
    TG_CHECK(std::isfinite(s[i]) && s[i] > 0, "{}: sigma must be positive and finite, got sigma[{}] = {}", who, i, s[i]);
}

}  // namespace

Tensor denoise(const UNet& net, const Tensor& x, const Tensor& sigma, const Tensor& labels, double sd) {
  check_batch(net, x, sigma, "denoise");
  check_sigma_values(sigma, "denoise");
  const PrecondTensors p = precond_tensors(sigma, sd);
  const Tensor F = net(x * p.c_in, p.c_noise, labels);  // [B, C, S, S]
  return p.c_skip * x + p.c_out * F;                     // [B, C, S, S]
}

LossParts edm_loss(const UNet& net, const Tensor& x0, const Tensor& labels, const EDMConfig& c, Generator& gen) {
  TG_CHECK(x0.dim() == 4 && x0.shape()[0] > 0, "edm_loss: expected x0 [B, C, S, S], got {}", x0.shape());
  TG_CHECK(c.p_std >= 0 && c.label_dropout >= 0 && c.label_dropout <= 1, "edm_loss: bad p_std {} or label_dropout {}",
           c.p_std, c.label_dropout);
  const std::int64_t B = x0.shape()[0];
  TG_CHECK(!labels.defined() || (labels.dim() == 1 && labels.shape()[0] == B),
           "edm_loss: expected labels [{}] for x0 {}, got {}", B, x0.shape(), labels.shape());
  const DType dt = x0.dtype();
  const Tensor sigma = ops::exp(randn({B}, dt, gen) * c.p_std + c.p_mean);  // [B], ln sigma ~ N(P_mean, P_std^2)
  const Tensor n = randn(x0.shape(), dt, gen);                              // [B, C, S, S]
  const Tensor x = x0 + sigma.reshape({B, 1, 1, 1}) * n;                    // [B, C, S, S]
  Tensor y = labels;                                                        // [B] or undefined
  if (labels.defined() && net.config.num_classes > 0 && c.label_dropout > 0) {
    const std::vector<double> u = rand({B}, DType::f64, gen).to_vector<double>();
    std::vector<std::int64_t> v = labels.to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < B; ++i)
      if (u[static_cast<std::size_t>(i)] < c.label_dropout) v[static_cast<std::size_t>(i)] = net.config.num_classes;
    y = from_vector(v, {B});
  }
  check_batch(net, x, sigma, "edm_loss");
  const PrecondTensors p = precond_tensors(sigma, c.sigma_data);
  Tensor target;  // (x0 - c_skip x) / c_out: what F should output, [B, C, S, S]
  {
    NoGradGuard no_grad;
    target = (x0 - p.c_skip * x) / p.c_out;
  }
  const Tensor F = net(x * p.c_in, p.c_noise, y);  // [B, C, S, S]
  return {ops::mse_loss(F, target), sigma};
}

Denoiser unet_denoiser(const UNet& net, const Tensor& labels, double guidance, double sd) {
  TG_CHECK(std::isfinite(guidance), "unet_denoiser: guidance must be finite, got {}", guidance);
  const bool guided = guidance != 1.0;
  TG_CHECK(!guided || net.config.num_classes > 0, "unet_denoiser: guidance {} needs a class-conditional model", guidance);
  TG_CHECK(!guided || labels.defined(), "unet_denoiser: guidance {} needs labels", guidance);
  return [&net, labels, guidance, guided, sd](const Tensor& x, double sigma) {
    NoGradGuard no_grad;
    const std::int64_t B = x.shape()[0];
    TG_CHECK(!labels.defined() || (labels.dim() == 1 && labels.shape()[0] == B), "unet_denoiser: expected labels [{}], got {}", B,
             labels.shape());
    const Precond p = precond(sigma, sd);
    const DType dt = net.config.dtype;
    const Tensor xin = (x * p.c_in).to(dt);  // [B, C, S, S]
    Tensor F;                                // [B, C, S, S] f64
    if (!guided) {
      F = net(xin, full({B}, p.c_noise, dt), labels).to(DType::f64);
    } else {
      const Tensor y2 = ops::cat({labels, full({B}, static_cast<double>(net.config.num_classes), DType::i64)}, 0);  // [2B]
      const Tensor F2 = net(ops::cat({xin, xin}, 0), full({2 * B}, p.c_noise, dt), y2).to(DType::f64);  // [2B, C, S, S]
      const Tensor fc = F2.narrow(0, 0, B), fu = F2.narrow(0, B, B);
      F = fu + (fc - fu) * guidance;
    }
    return x * p.c_skip + F * p.c_out;  // [B, C, S, S] f64
  };
}

}  // namespace tg::models::diffusion
