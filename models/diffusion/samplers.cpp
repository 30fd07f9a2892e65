#include "models/diffusion/samplers.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numbers>

#include "core/autograd.hpp"
#include "ops/elementwise.hpp"
#include "ops/shape.hpp"

namespace tg::models::diffusion {

SamplerKind parse_sampler(const std::string& name) {
  if (name == "euler") return SamplerKind::euler;
  if (name == "heun") return SamplerKind::heun;
  if (name == "ddim") return SamplerKind::ddim;
  if (name == "ddpm") return SamplerKind::ddpm;
  TG_FAIL("sampler: unknown sampler '{}' (expected euler, heun, ddim or ddpm)", name);
}

std::string sampler_name(SamplerKind k) {
  switch (k) {
    case SamplerKind::euler: return "euler";
    case SamplerKind::heun: return "heun";
    case SamplerKind::ddim: return "ddim";
    case SamplerKind::ddpm: return "ddpm";
  }
  return "?";
}

std::vector<double> edm_sigmas(std::int64_t N, const EDMGrid& g) {
  TG_CHECK(N >= 1 && N <= kMaxSamplerSteps, "edm_sigmas: steps must be in 1..{}, got {}", kMaxSamplerSteps, N);
  TG_CHECK(g.sigma_min > 0 && g.sigma_max > g.sigma_min && std::isfinite(g.sigma_max) && g.rho > 0 && std::isfinite(g.rho),
           "edm_sigmas: need 0 < sigma_min ({}) < sigma_max ({}) < inf and a finite rho > 0 ({})", g.sigma_min, g.sigma_max,
           g.rho);
  std::vector<double> s(static_cast<std::size_t>(N + 1), 0.0);
  const double a = std::pow(g.sigma_max, 1.0 / g.rho), b = std::pow(g.sigma_min, 1.0 / g.rho);
  for (std::int64_t i = 0; i < N; ++i)
    s[static_cast<std::size_t>(i)] = N == 1 ? g.sigma_max : std::pow(a + static_cast<double>(i) / static_cast<double>(N - 1) * (b - a), g.rho);
  s[0] = g.sigma_max;  // exact ends
  if (N > 1) s[static_cast<std::size_t>(N - 1)] = g.sigma_min;
  return s;
}

VPSchedule::VPSchedule(std::int64_t t, double beta_start, double beta_end) : T(t) {
  TG_CHECK(T >= 2 && T <= kMaxSamplerSteps, "VPSchedule: need 2 <= T <= {}, got {}", kMaxSamplerSteps, T);
  TG_CHECK(beta_start > 0 && beta_end >= beta_start && beta_end < 1, "VPSchedule: need 0 < beta_start ({}) <= beta_end ({}) < 1",
           beta_start, beta_end);
  beta.assign(static_cast<std::size_t>(T + 1), 0.0);
  alpha_bar.assign(static_cast<std::size_t>(T + 1), 1.0);
  for (std::int64_t i = 1; i <= T; ++i) {
    const auto u = static_cast<std::size_t>(i);
    beta[u] = beta_start + (beta_end - beta_start) * static_cast<double>(i - 1) / static_cast<double>(T - 1);
    alpha_bar[u] = alpha_bar[u - 1] * (1.0 - beta[u]);
  }
}

VPSchedule VPSchedule::from_betas(const std::vector<double>& betas) {
  TG_CHECK(!betas.empty(), "VPSchedule::from_betas: no betas");
  TG_CHECK(betas.size() <= static_cast<std::size_t>(kMaxSamplerSteps), "VPSchedule::from_betas: {} betas (at most {})",
           betas.size(), kMaxSamplerSteps);
  VPSchedule sch{Unfilled{}};
  sch.T = static_cast<std::int64_t>(betas.size());
  sch.beta.assign(1, 0.0);
  sch.alpha_bar.assign(1, 1.0);
  for (std::size_t i = 0; i < betas.size(); ++i) {
    TG_CHECK(betas[i] > 0 && betas[i] < 1, "VPSchedule::from_betas: beta_{} = {} is outside (0, 1)", i + 1, betas[i]);
    const double ab = sch.alpha_bar.back() * (1.0 - betas[i]);
    // sigma(t) and the posterior variance need 0 < alpha_bar_t < alpha_bar_{t-1} in doubles.
    TG_CHECK(ab < sch.alpha_bar.back() && ab > 0, "VPSchedule::from_betas: beta_{} = {} leaves alpha_bar at {} (it must fall and stay above 0 in doubles)",
             i + 1, betas[i], ab);
    sch.beta.push_back(betas[i]);
    sch.alpha_bar.push_back(ab);
  }
  return sch;
}

VPSchedule VPSchedule::cosine(std::int64_t T, double s) {
  TG_CHECK(T >= 1 && T <= kMaxSamplerSteps, "VPSchedule::cosine: need 1 <= T <= {}, got {}", kMaxSamplerSteps, T);
  TG_CHECK(s > 0 && s <= 1, "VPSchedule::cosine: the offset s must be in (0, 1] (0.008 in iDDPM), got {}", s);
  const auto f = [&](double u) {
    const double c = std::cos((u + s) / (1 + s) * std::numbers::pi / 2);
    return c * c;
  };
  std::vector<double> betas(static_cast<std::size_t>(T));
  for (std::int64_t t = 1; t <= T; ++t) {
    const double ratio = f(static_cast<double>(t) / static_cast<double>(T)) / f(static_cast<double>(t - 1) / static_cast<double>(T));
    betas[static_cast<std::size_t>(t - 1)] = std::min(1.0 - ratio, 0.999);
  }
  return from_betas(betas);
}

double VPSchedule::posterior_variance(std::int64_t t) const {
  TG_CHECK(t >= 1 && t <= T, "VPSchedule: step {} is outside 1..{}", t, T);
  if (t == 1) return 0.0;  // x_0 given x_1 and x_0
  const auto u = static_cast<std::size_t>(t);
  return beta[u] * (1.0 - alpha_bar[u - 1]) / (1.0 - alpha_bar[u]);
}

VPSchedule VPSchedule::respaced(const std::vector<std::int64_t>& taus) const {
  TG_CHECK(!taus.empty(), "VPSchedule::respaced: no time steps");
  std::vector<double> betas;
  double previous = 1.0;  // alpha_bar_0
  for (std::size_t i = 0; i < taus.size(); ++i) {
    TG_CHECK(taus[i] >= 1 && taus[i] <= T && (i == 0 || taus[i] > taus[i - 1]),
             "VPSchedule::respaced: time steps must increase within 1..{} (tau_{} = {})", T, i + 1, taus[i]);
    const double ab = alpha_bar[static_cast<std::size_t>(taus[i])];
    betas.push_back(1.0 - ab / previous);
    previous = ab;
  }
  VPSchedule sch = from_betas(betas);
  // The products of the new betas equal the picked alpha_bars up to round-off; keep them exact.
  for (std::size_t i = 0; i < taus.size(); ++i) sch.alpha_bar[i + 1] = alpha_bar[static_cast<std::size_t>(taus[i])];
  return sch;
}

double VPSchedule::sigma(std::int64_t t) const {
  TG_CHECK(t >= 0 && t <= T, "VPSchedule: step {} is outside 0..{}", t, T);
  const double ab = alpha_bar[static_cast<std::size_t>(t)];
  return std::sqrt((1.0 - ab) / ab);
}

std::vector<std::int64_t> VPSchedule::timesteps(std::int64_t S) const {
  TG_CHECK(S >= 1 && S <= T, "VPSchedule: {} sampling steps for a schedule of {}", S, T);
  std::vector<std::int64_t> taus(static_cast<std::size_t>(S));
  for (std::int64_t i = 0; i < S; ++i) taus[static_cast<std::size_t>(i)] = 1 + i * T / S;
  return taus;
}

Tensor euler_step(const Tensor& x, const Tensor& denoised, double sigma, double sigma_next) {
  TG_CHECK(sigma > 0, "euler_step: sigma must be positive, got {}", sigma);
  return x + (x - denoised) * ((sigma_next - sigma) / sigma);
}

double ddim_sigma(double abar_t, double abar_s, double eta) {
  TG_CHECK(abar_t > 0 && abar_t < abar_s && abar_s <= 1, "ddim: need 0 < abar_t ({}) < abar_s ({}) <= 1", abar_t, abar_s);
  // eta > 1 would ask for more fresh noise than x_s holds (1 - abar_s - sig^2 < 0).
  TG_CHECK(eta >= 0 && eta <= 1, "ddim: eta must be in [0, 1], got {}", eta);
  return eta * std::sqrt((1.0 - abar_s) / (1.0 - abar_t)) * std::sqrt(1.0 - abar_t / abar_s);
}

Tensor ddim_step(const Tensor& x_t, const Tensor& eps, double abar_t, double abar_s, double eta, const Tensor& z) {
  const double sig = ddim_sigma(abar_t, abar_s, eta);
  const Tensor x0 = (x_t - eps * std::sqrt(1.0 - abar_t)) / std::sqrt(abar_t);
  Tensor x_s = x0 * std::sqrt(abar_s) + eps * std::sqrt(std::max(0.0, 1.0 - abar_s - sig * sig));
  if (sig > 0) {
    TG_CHECK(z.defined(), "ddim_step: eta = {} needs the noise z", eta);
    x_s = x_s + z * sig;
  }
  return x_s;
}

namespace {

// D with its evaluations counted, and the state checked.
struct Counted {
  const Denoiser& D;
  std::int64_t n = 0;
  Tensor operator()(const Tensor& x, double sigma) {
    ++n;
    Tensor d = D(x, sigma);
    TG_CHECK(d.defined() && d.shape() == x.shape(), "sampler: the denoiser returned {} for x {}",
             d.defined() ? d.shape() : Shape{}, x.shape());
    return d.to(DType::f64);
  }
};

// One DDIM/DDPM step on the uniform sub-sequence is tau = {1}: it would treat the pure noise as
// x_1 (sigma 0.01) and return it almost unchanged. The sub-sequence is the DDIM paper's (and the
// official code's); one-step sampling is Euler's (x = D(sigma_max n)).
void check_vp_steps(SamplerKind kind, std::int64_t steps) {
  TG_CHECK(steps >= 2 || (kind != SamplerKind::ddim && kind != SamplerKind::ddpm),
           "sampler: {} needs at least 2 steps (1 step of tau_i = 1 + (i - 1) T / S starts at t = 1, where "
           "the noise is almost gone); for one network evaluation use euler",
           sampler_name(kind));
}

void check_sigmas(const std::vector<double>& s) {
  TG_CHECK(s.size() >= 2 && s.back() == 0.0, "sampler: the noise levels must end with 0 (got {} levels)", s.size());
  for (std::size_t i = 0; i + 1 < s.size(); ++i)
    TG_CHECK(s[i] > s[i + 1], "sampler: noise levels must decrease (sigma_{} = {}, sigma_{} = {})", i, s[i], i + 1, s[i + 1]);
}

}  // namespace

SampleResult edm_euler(const Denoiser& D, const Tensor& x0, const std::vector<double>& sigmas) {
  check_sigmas(sigmas);
  NoGradGuard no_grad;
  Counted d{D};
  Tensor x = x0.to(DType::f64);  // [B, C, S, S]
  for (std::size_t i = 0; i + 1 < sigmas.size(); ++i) x = euler_step(x, d(x, sigmas[i]), sigmas[i], sigmas[i + 1]);
  return {x, d.n};
}

SampleResult edm_heun(const Denoiser& D, const Tensor& x0, const std::vector<double>& sigmas) {
  check_sigmas(sigmas);
  NoGradGuard no_grad;
  Counted d{D};
  Tensor x = x0.to(DType::f64);  // [B, C, S, S]
  for (std::size_t i = 0; i + 1 < sigmas.size(); ++i) {
    const double s = sigmas[i], s_next = sigmas[i + 1];
    const Tensor di = (x - d(x, s)) / s;  // dx/dsigma at (x, s)
    const Tensor xe = x + di * (s_next - s);
    if (s_next == 0.0) {
      x = xe;
    } else {
      const Tensor dn = (xe - d(xe, s_next)) / s_next;
      x = x + (di + dn) * (0.5 * (s_next - s));
    }
  }
  return {x, d.n};
}

NoiseSource generator_noise(Generator& gen) {
  return [&gen](const Shape& shape) { return randn(shape, DType::f64, gen); };
}

NoiseSource per_sample_noise(const std::vector<std::uint64_t>& seeds) {
  auto gens = std::make_shared<std::vector<Generator>>(seeds.begin(), seeds.end());
  return [gens](const Shape& shape) {
    TG_CHECK(shape.size() >= 1 && shape[0] == static_cast<std::int64_t>(gens->size()),
             "per_sample_noise: a draw of shape {} for {} per-sample streams", shape, gens->size());
    Shape row;  // one sample: shape without its batch dim
    for (int d = 1; d < shape.size(); ++d) row.push_back(shape[d]);
    Tensors rows;
    for (Generator& g : *gens) rows.push_back(randn(row, DType::f64, g));
    return ops::stack(rows, 0);  // [B, ...]
  };
}

SampleResult ddim(const Denoiser& D, const Tensor& x_T, const VPSchedule& sch, const std::vector<std::int64_t>& taus,
                  double eta, Generator* gen) {
  return ddim(D, x_T, sch, taus, eta, gen ? generator_noise(*gen) : NoiseSource());
}

SampleResult ddim(const Denoiser& D, const Tensor& x_T, const VPSchedule& sch, const std::vector<std::int64_t>& taus,
                  double eta, const NoiseSource& noise) {
  TG_CHECK(!taus.empty(), "ddim: no time steps");
  for (std::size_t i = 0; i < taus.size(); ++i)
    TG_CHECK(taus[i] >= 1 && taus[i] <= sch.T && (i == 0 || taus[i] > taus[i - 1]),
             "ddim: time steps must increase within 1..{} (tau_{} = {})", sch.T, i + 1, taus[i]);
  TG_CHECK(eta >= 0 && eta <= 1, "ddim: eta must be in [0, 1], got {}", eta);
  TG_CHECK(eta == 0 || noise, "ddim: eta = {} needs a generator for the noise", eta);
  NoGradGuard no_grad;
  Counted d{D};
  Tensor x = x_T.to(DType::f64);  // [B, C, S, S], VP coordinates
  for (std::size_t i = taus.size(); i-- > 0;) {
    const double abar_t = sch.alpha_bar[static_cast<std::size_t>(taus[i])];
    const double abar_s = i > 0 ? sch.alpha_bar[static_cast<std::size_t>(taus[i - 1])] : 1.0;
    const double sigma = sch.sigma(taus[i]);
    const Tensor xbar = x / std::sqrt(abar_t);         // EDM coordinates
    const Tensor eps = (xbar - d(xbar, sigma)) / sigma;  // predicted noise
    Tensor z;
    if (ddim_sigma(abar_t, abar_s, eta) > 0) {
      z = noise(x.shape());
      TG_CHECK(z.shape() == x.shape(), "ddim: the noise source gave {} for x {}", z.shape(), x.shape());
    }
    x = ddim_step(x, eps, abar_t, abar_s, eta, z);
  }
  return {x, d.n};
}

std::int64_t expected_nfe(const SamplerConfig& c) {
  TG_CHECK(c.steps >= 1 && c.steps <= kMaxSamplerSteps, "sampler: steps must be in 1..{}, got {}", kMaxSamplerSteps, c.steps);
  return c.kind == SamplerKind::heun ? 2 * c.steps - 1 : c.steps;
}

SamplerConfig sampler_for_nfe(SamplerKind kind, std::int64_t nfe, double eta) {
  TG_CHECK(nfe >= 1 && nfe <= kMaxSamplerSteps, "sampler: NFE must be in 1..{}, got {}", kMaxSamplerSteps, nfe);
  check_vp_steps(kind, nfe);
  TG_CHECK(kind == SamplerKind::ddim ? eta >= 0 && eta <= 1 : eta == 0,
           "sampler: eta {} {}", eta, kind == SamplerKind::ddim ? "must be in [0, 1]" : "applies to ddim only");
  SamplerConfig c;
  c.kind = kind;
  c.eta = kind == SamplerKind::ddpm ? 1.0 : eta;
  if (kind == SamplerKind::heun) {
    TG_CHECK(nfe % 2 == 1, "sampler: Heun makes 2N - 1 evaluations for N steps, so NFE must be odd (got {})", nfe);
    c.steps = (nfe + 1) / 2;
  } else {
    c.steps = nfe;
    // Only the VP samplers walk the T-step schedule; Euler's sigma grid has any number of steps.
    TG_CHECK(kind == SamplerKind::euler || c.steps <= c.T, "sampler: {} with NFE {} takes {} steps of a schedule of T = {} (at most T)", sampler_name(kind),
             nfe, c.steps, c.T);
  }
  return c;
}

SampleResult sample(const Denoiser& D, const Tensor& noise, const SamplerConfig& c, Generator* gen) {
  return sample(D, noise, c, gen ? generator_noise(*gen) : NoiseSource());
}

SampleResult sample(const Denoiser& D, const Tensor& noise, const SamplerConfig& c, const NoiseSource& ancestral) {
  TG_CHECK(noise.defined() && noise.is_floating_point(), "sample: the noise must be a float tensor");
  TG_CHECK(c.steps >= 1 && c.steps <= kMaxSamplerSteps, "sample: steps must be in 1..{}, got {}", kMaxSamplerSteps, c.steps);
  switch (c.kind) {
    case SamplerKind::euler:
    case SamplerKind::heun: {
      const std::vector<double> s = edm_sigmas(c.steps, c.grid);
      const Tensor x = noise.to(DType::f64) * s[0];
      return c.kind == SamplerKind::euler ? edm_euler(D, x, s) : edm_heun(D, x, s);
    }
    case SamplerKind::ddim:
    case SamplerKind::ddpm: {
      check_vp_steps(c.kind, c.steps);
      const VPSchedule sch(c.T);
      return ddim(D, noise, sch, sch.timesteps(c.steps), c.kind == SamplerKind::ddpm ? 1.0 : c.eta, ancestral);
    }
  }
  TG_FAIL("sample: unknown sampler");
}

}  // namespace tg::models::diffusion
