// Diffusion samplers with an exact count of denoiser evaluations (NFE), on a denoiser D(x; sigma)
// (edm.hpp). The sampler state is f64 (as the official EDM code); the network may run in f32.
//
//   EDM Euler (NFE = N) and Heun (NFE = 2N - 1) on the probability-flow ODE dx/dsigma = (x - D)/sigma
//   over the grid sigma_i = (smax^(1/r) + i/(N-1) (smin^(1/r) - smax^(1/r)))^r, sigma_N = 0; the last
//   step (to sigma = 0) is a plain Euler step. Start: x = sigma_0 n.
//
//   DDIM(eta) and DDPM ancestral (= DDIM with eta = 1) on the VP schedule abar_t = prod_{s<=t}(1 - beta_s),
//   beta linear 1e-4 -> 0.02 over T = 1000, for the sub-sequence tau_i = 1 + floor((i - 1) T / S),
//   i = 1..S (the DDIM paper's uniform spacing; S = T is the full chain; sample() needs S >= 2,
//   since tau = {1} would start from t = 1, where almost no noise is left). Start: x_T = n. With
//   t = tau_i, s = tau_{i-1} (abar_0 = 1):
//     x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
//     sig_t  = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t / abar_s)
//     x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sig_t^2) eps + sig_t z
//   where the eps-prediction comes from D in EDM coordinates: xbar = x / sqrt(abar), sigma(t) =
//   sqrt((1 - abar_t) / abar_t), eps = (xbar - D(xbar; sigma)) / sigma (so x0_hat = D). A DDIM (eta = 0)
//   step is then exactly an Euler step in (xbar, sigma) coordinates (spec §1.4.2). 0 <= eta <= 1
//   (for eta > 1 the fresh noise would exceed what x_s holds).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/random.hpp"
#include "models/diffusion/edm.hpp"

namespace tg::models::diffusion {

enum class SamplerKind { euler, heun, ddim, ddpm };
SamplerKind parse_sampler(const std::string& name);  // "euler", "heun", "ddim", "ddpm"
std::string sampler_name(SamplerKind k);

struct EDMGrid {
  double sigma_min = 0.002, sigma_max = 80.0, rho = 7.0;
};
// N + 1 noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min > sigma_N = 0 (N >= 1; N = 1 gives
// {sigma_max, 0}).
std::vector<double> edm_sigmas(std::int64_t steps, const EDMGrid& grid = {});

// The discrete VP (DDPM) schedule, 1-based: beta[t], alpha_bar[t] for t = 1..T; alpha_bar[0] = 1.
// Step t here is step t - 1 of the 0-based iDDPM/DiT/MAR code (their alphas_cumprod[t - 1]).
struct VPSchedule {
  // Linear betas from beta_start to beta_end (DDPM; T >= 2).
  explicit VPSchedule(std::int64_t T = 1000, double beta_start = 1e-4, double beta_end = 0.02);
  // The cosine schedule (Nichol & Dhariwal; MAR's diffusion head): f(u) = cos^2((u + s)/(1 + s) pi/2),
  // beta_t = min(1 - f(t/T) / f((t-1)/T), 0.999), so alpha_bar_t = f(t/T) / f(0) until the clip.
  static VPSchedule cosine(std::int64_t T = 1000, double s = 0.008);
  // Betas beta_1..beta_T in (0, 1), at most kMaxSamplerSteps of them, such that alpha_bar falls
  // strictly and stays above 0 in doubles.
  static VPSchedule from_betas(const std::vector<double>& betas);
  std::int64_t T;
  std::vector<double> beta, alpha_bar;  // [T + 1]
  // sqrt((1 - abar_t) / abar_t): the EDM noise level of step t (0 for t = 0).
  double sigma(std::int64_t t) const;
  // The DDPM posterior variance of q(x_{t-1} | x_t, x_0): beta_t (1 - abar_{t-1}) / (1 - abar_t), t >= 1
  // (0 at t = 1). Ancestral sampling at temperature tau adds tau sqrt(posterior_variance(t)) z per step.
  double posterior_variance(std::int64_t t) const;
  // The schedule of the sub-chain taus (increasing, in 1..T): step k has alpha_bar[taus[k-1]] and
  // beta_k = 1 - alpha_bar[taus[k-1]] / alpha_bar[taus[k-2]] (iDDPM's respacing), so DDPM's
  // ancestral step on it is the eta = 1 DDIM step between those steps of this schedule.
  VPSchedule respaced(const std::vector<std::int64_t>& taus) const;
  // tau_1 < ... < tau_S (see the file comment); 1 <= S <= T.
  std::vector<std::int64_t> timesteps(std::int64_t S) const;

 private:
  struct Unfilled {};
  explicit VPSchedule(Unfilled) : T(0) {}  // filled by from_betas
};

// ---- single steps (f64 tensors of any shape) ------------------------------------------------------------------
// x + (sigma_next - sigma) (x - denoised) / sigma.
Tensor euler_step(const Tensor& x, const Tensor& denoised, double sigma, double sigma_next);
// sig_t of a DDIM step from abar_t to abar_s.
double ddim_sigma(double abar_t, double abar_s, double eta);
// x_s from x_t and the predicted noise eps; z is the fresh noise (may be undefined when eta = 0).
Tensor ddim_step(const Tensor& x_t, const Tensor& eps, double abar_t, double abar_s, double eta, const Tensor& z = {});

// ---- samplers -------------------------------------------------------------------------------------------------
struct SampleResult {
  Tensor x;             // f64 [B, C, S, S], the sample at sigma = 0
  std::int64_t nfe = 0;  // denoiser evaluations actually made
};

// From the initial state x (f64, already at sigma_0: x = sigma_0 n for the EDM start) along `sigmas`
// (decreasing, last = 0).
SampleResult edm_euler(const Denoiser& D, const Tensor& x, const std::vector<double>& sigmas);
SampleResult edm_heun(const Denoiser& D, const Tensor& x, const std::vector<double>& sigmas);
// The fresh noise z of ancestral steps: a standard-normal f64 tensor of the given shape [B, ...].
using NoiseSource = std::function<Tensor(const Shape& shape)>;
// z from one generator (row b of a draw depends on the batch the sample runs in).
NoiseSource generator_noise(Generator& gen);
// z with one stream per sample: row b of every draw comes from a generator seeded with seeds[b],
// so a sample's noise does not depend on the batch it runs in. The draws must have B = seeds.size().
NoiseSource per_sample_noise(const std::vector<std::uint64_t>& seeds);

// From x_T (VP coordinates) over the increasing time steps taus (tau_1 .. tau_S). `noise` (or gen)
// draws z when eta > 0 (required then).
SampleResult ddim(const Denoiser& D, const Tensor& x_T, const VPSchedule& schedule, const std::vector<std::int64_t>& taus,
                  double eta, const NoiseSource& noise);
SampleResult ddim(const Denoiser& D, const Tensor& x_T, const VPSchedule& schedule, const std::vector<std::int64_t>& taus,
                  double eta, Generator* gen = nullptr);

// Steps (and evaluations) a sampler accepts: far beyond use, small enough that no count overflows.
inline constexpr std::int64_t kMaxSamplerSteps = std::int64_t{1} << 24;

struct SamplerConfig {
  SamplerKind kind = SamplerKind::heun;
  std::int64_t steps = 5;  // N for Euler/Heun, S for DDIM/DDPM
  double eta = 0.0;        // DDIM only (DDPM always uses 1)
  EDMGrid grid;
  std::int64_t T = 1000;   // VP schedule length for DDIM/DDPM
};
// The number of denoiser evaluations of a configuration: N, 2N - 1 (Heun), S.
std::int64_t expected_nfe(const SamplerConfig& c);
// The configuration with exactly `nfe` evaluations (Heun needs an odd nfe >= 1).
SamplerConfig sampler_for_nfe(SamplerKind kind, std::int64_t nfe, double eta = 0.0);

// Samples from the standard-normal noise n [B, C, S, S] (any float dtype): Euler/Heun start at
// sigma_max n, DDIM/DDPM at x_T = n. `ancestral` (or gen) draws the fresh noise of DDPM / DDIM with
// eta > 0.
SampleResult sample(const Denoiser& D, const Tensor& noise, const SamplerConfig& c, const NoiseSource& ancestral);
SampleResult sample(const Denoiser& D, const Tensor& noise, const SamplerConfig& c, Generator* gen = nullptr);

}  // namespace tg::models::diffusion
