// EDM preconditioning and training loss (Karras et al. 2022, NVlabs/edm; spec techniques-B §1.4.1).
//
//   D(x; sigma) = c_skip(sigma) x + c_out(sigma) F( c_in(sigma) x ; c_noise(sigma) )
//   c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
//   c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4                  (sd = sigma_data = 0.5)
//
// Loss: ln sigma ~ N(P_mean, P_std^2), n ~ N(0, I),
//   L = mean( lambda(sigma) (D(x0 + sigma n; sigma) - x0)^2 ),  lambda = (sigma^2 + sd^2) / (sigma sd)^2,
// computed in the equivalent, better conditioned form mean( (F(...) - (x0 - c_skip x) / c_out)^2 )
// (lambda c_out^2 = 1).
#pragma once

#include <functional>

#include "core/random.hpp"
#include "models/diffusion/unet.hpp"

namespace tg::models::diffusion {

struct EDMConfig {
  double sigma_data = 0.5;
  double p_mean = -1.2;
  double p_std = 1.2;
  double label_dropout = 0.1;  // training: probability of replacing a label by "no label" (for guidance)
};

struct Precond {
  double c_skip, c_out, c_in, c_noise;
};
// The preconditioning coefficients at one noise level (sigma > 0).
Precond precond(double sigma, double sigma_data = 0.5);

// D(x; sigma) with per-sample noise levels, differentiable: x [B, C, S, S], sigma [B] (x's dtype),
// labels [B] i64 or undefined -> [B, C, S, S].
Tensor denoise(const UNet& net, const Tensor& x, const Tensor& sigma, const Tensor& labels = {},
               double sigma_data = 0.5);

struct LossParts {
  Tensor loss;    // scalar, differentiable
  Tensor sigma;   // [B] the noise levels drawn
};
// The EDM loss on clean images x0 [B, C, S, S] in [-1, 1] (labels [B] or undefined). Draws sigma,
// the noise and the label dropout from `gen`. It runs the network as it is, skip scales included:
// measuring the denoising loss of a skip-tuned model is an evaluation (Skip-Tuning raises it,
// spec techniques-B §1); training with scales set is refused by fit().
LossParts edm_loss(const UNet& net, const Tensor& x0, const Tensor& labels, const EDMConfig& config, Generator& gen);

// A denoiser for the samplers: D(x; sigma) on f64 states x [B, C, S, S] at one noise level.
using Denoiser = std::function<Tensor(const Tensor& x, double sigma)>;

// The UNet as a sampler denoiser (no grad; the network runs in its own dtype, the preconditioning
// mixes in f64). labels [B] or undefined. With guidance w != 1 and a conditional model, every call is
// one network forward on the batch [cond; uncond] of 2B and returns D_u + w (D_c - D_u) (classifier-
// free guidance). Such a call counts as one NFE in the samplers' counts, though it costs two
// B-batch forwards.
Denoiser unet_denoiser(const UNet& net, const Tensor& labels = {}, double guidance = 1.0, double sigma_data = 0.5);

}  // namespace tg::models::diffusion
