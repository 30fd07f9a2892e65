#include "nn/optim.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <fmt/format.h>

#include "core/autograd.hpp"
#include "core/copy.hpp"
#include "ops/fused.hpp"

namespace tg::nn {

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr) : groups_(std::move(groups)), lr_(lr) {
  TG_CHECK(std::isfinite(lr) && lr >= 0, "optimizer: learning rate must be finite and >= 0, got {}", lr);
  std::unordered_map<const TensorImpl*, std::string> seen;  // a tensor listed twice would be updated twice
  // The names key the optimizer state in checkpoints: a repeated name would only fail at the first
  // save, possibly hours into training.
  std::unordered_set<std::string> names;
  for (const ParamGroup& g : groups_) {
    TG_CHECK(std::isfinite(g.lr_scale) && g.lr_scale >= 0, "optimizer: a group's lr_scale must be finite and >= 0, got {}",
             g.lr_scale);
    TG_CHECK(!std::isnan(g.weight_decay), "optimizer: a group's weight_decay is NaN");
    for (const NamedTensor& p : g.params) {
      TG_CHECK(p.tensor.defined() && p.tensor.is_leaf() && p.tensor.is_floating_point(),
               "optimizer: parameter '{}' must be a floating-point leaf tensor", p.name);
      TG_CHECK(p.tensor.is_contiguous(), "optimizer: parameter '{}' must be contiguous", p.name);
      const auto [it, fresh] = seen.emplace(&p.tensor.impl(), p.name);
      TG_CHECK(fresh, "optimizer: parameter '{}' is the same tensor as '{}'; list each tensor once (tied weights too)", p.name,
               it->second);
      TG_CHECK(names.insert(p.name).second,
               "optimizer: two different parameters are named '{}'; names must be unique (they key the saved state)",
               p.name);
    }
    updates_.emplace_back(g.params.size(), 0);
  }
}

void Optimizer::set_lr(double lr) {
  TG_CHECK(std::isfinite(lr) && lr >= 0, "optimizer: learning rate must be finite and >= 0, got {}", lr);
  lr_ = lr;
}

void Optimizer::set_step_count(std::int64_t s) {
  TG_CHECK(s >= 0, "optimizer: step count must be >= 0, got {}", s);
  step_ = s;
  for (auto& group : updates_) std::fill(group.begin(), group.end(), s);
}

std::vector<std::pair<std::string, std::int64_t>> Optimizer::lagging_params() const {
  std::vector<std::pair<std::string, std::int64_t>> out;
  for (std::size_t g = 0; g < groups_.size(); ++g)
    for (std::size_t i = 0; i < groups_[g].params.size(); ++i)
      if (updates_[g][i] != step_) out.emplace_back(groups_[g].params[i].name, updates_[g][i]);
  return out;
}

void Optimizer::set_param_updates(const std::string& name, std::int64_t updates) {
  TG_CHECK(updates >= 0 && updates <= step_, "optimizer: parameter '{}' cannot have {} updates after {} steps", name,
           updates, step_);
  for (std::size_t g = 0; g < groups_.size(); ++g)
    for (std::size_t i = 0; i < groups_[g].params.size(); ++i)
      if (groups_[g].params[i].name == name) {
        updates_[g][i] = updates;
        return;
      }
  TG_FAIL("optimizer: no parameter named '{}'", name);
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (NamedTensor& p : g.params) p.tensor.reset_grad();
}

void Optimizer::add_state(const std::string& suffix) {
  suffixes_.push_back(suffix);
  auto& per_group = state_.emplace_back();
  for (const ParamGroup& g : groups_) {
    auto& tensors = per_group.emplace_back();
    for (const NamedTensor& p : g.params) tensors.push_back(zeros_like(p.tensor));
  }
}

Tensor& Optimizer::state_of(std::size_t group, std::size_t index, const std::string& suffix) {
  for (std::size_t s = 0; s < suffixes_.size(); ++s)
    if (suffixes_[s] == suffix) return state_[s][group][index];
  TG_FAIL("optimizer: no state '{}'", suffix);
}

std::vector<NamedTensor> Optimizer::state() {
  std::vector<NamedTensor> out;
  for (std::size_t s = 0; s < suffixes_.size(); ++s)
    for (std::size_t g = 0; g < groups_.size(); ++g)
      for (std::size_t i = 0; i < groups_[g].params.size(); ++i)
        out.push_back({groups_[g].params[i].name + "." + suffixes_[s], state_[s][g][i]});
  return out;
}

namespace {
std::vector<ParamGroup> one_group(std::vector<NamedTensor> params) { return {ParamGroup{std::move(params)}}; }

// The parameters of a group that have a gradient, with their index in the group.
struct Live {
  Tensors params, grads;
  std::vector<std::size_t> index;
};
Live live(const ParamGroup& g) {
  Live l;
  for (std::size_t i = 0; i < g.params.size(); ++i) {
    const Tensor grad = g.params[i].tensor.grad();
    if (!grad.defined()) continue;
    l.params.push_back(g.params[i].tensor);
    l.grads.push_back(grad.is_contiguous() ? grad : grad.contiguous());
    l.index.push_back(i);
  }
  return l;
}
}  // namespace

SGD::SGD(std::vector<NamedTensor> params, const SGDOptions& o) : SGD(one_group(std::move(params)), o) {}
SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& o) : Optimizer(std::move(groups), o.lr), options(o) {
  TG_CHECK(std::isfinite(o.momentum) && o.momentum >= 0, "SGD: momentum must be finite and >= 0, got {}", o.momentum);
  TG_CHECK(std::isfinite(o.dampening), "SGD: dampening must be finite, got {}", o.dampening);
  TG_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "SGD: weight_decay must be finite and >= 0, got {}",
           o.weight_decay);
  TG_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: nesterov needs momentum > 0 and dampening 0");
  if (o.momentum != 0) add_state("momentum_buffer");
}

void SGD::step() {
  NoGradGuard no_grad;
  ++step_;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    const Live l = live(g);
    // A parameter's first update starts its momentum buffer from the gradient: one fused call for
    // the parameters at their first update, one for the others.
    for (const bool first : {true, false}) {
      Tensors params, grads, bufs;
      for (std::size_t k = 0; k < l.index.size(); ++k) {
        const std::size_t i = l.index[k];
        if ((updates_[gi][i] == 0) != first) continue;
        params.push_back(l.params[k]);
        grads.push_back(l.grads[k]);
        if (options.momentum != 0) bufs.push_back(state_of(gi, i, "momentum_buffer"));
      }
      if (params.empty()) continue;
      ops::SGDHyper h{lr_ * g.lr_scale, options.momentum, options.dampening,
                      g.weight_decay >= 0 ? g.weight_decay : options.weight_decay, options.nesterov, first};
      ops::sgd_step(params, grads, bufs, h);
    }
    for (std::size_t i : l.index) ++updates_[gi][i];
  }
}

Adam::Adam(std::vector<NamedTensor> params, const AdamOptions& o, bool decoupled)
    : Adam(one_group(std::move(params)), o, decoupled) {}
Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& o, bool decoupled)
    : Optimizer(std::move(groups), o.lr), options(o), decoupled_(decoupled) {
  TG_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, "{}: betas must be in [0, 1), got ({}, {})",
           type_name(), o.beta1, o.beta2);
  TG_CHECK(o.eps >= 0, "{}: eps must be >= 0", type_name());
  TG_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "{}: weight_decay must be finite and >= 0, got {}", type_name(),
           o.weight_decay);
  add_state("exp_avg");
  add_state("exp_avg_sq");
}

void Adam::step() {
  NoGradGuard no_grad;
  ++step_;
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    const Live l = live(g);
    for (std::size_t i : l.index) ++updates_[gi][i];
    // Bias correction uses each parameter's own update count: one fused call per distinct count
    // (a single one when every parameter always has a gradient).
    std::vector<bool> done(l.index.size(), false);
    for (std::size_t k0 = 0; k0 < l.index.size(); ++k0) {
      if (done[k0]) continue;
      const std::int64_t t = updates_[gi][l.index[k0]];
      Tensors params, grads, m, v;
      for (std::size_t k = k0; k < l.index.size(); ++k) {
        const std::size_t i = l.index[k];
        if (done[k] || updates_[gi][i] != t) continue;
        done[k] = true;
        params.push_back(l.params[k]);
        grads.push_back(l.grads[k]);
        m.push_back(state_of(gi, i, "exp_avg"));
        v.push_back(state_of(gi, i, "exp_avg_sq"));
      }
      ops::AdamHyper h{lr_ * g.lr_scale, options.beta1, options.beta2, options.eps,
                       g.weight_decay >= 0 ? g.weight_decay : options.weight_decay, decoupled_, t};
      ops::adam_step(params, grads, m, v, h);
    }
  }
}

double clip_grad_norm(const Tensors& params, double max_norm) {
  TG_CHECK(max_norm >= 0, "clip_grad_norm: max_norm must be >= 0, got {}", max_norm);
  NoGradGuard no_grad;
  Tensors grads;
  for (const Tensor& p : params) {
    if (!p.grad().defined()) continue;
    // The fused kernels take contiguous buffers; a gradient set as a view (set_grad) is replaced by a copy.
    if (!p.grad().is_contiguous()) Tensor(p).set_grad(p.grad().contiguous());  // (a handle to the same parameter)
    grads.push_back(p.grad());
  }
  const double norm = std::sqrt(ops::sum_of_squares(grads));
  const double scale = max_norm / (norm + 1e-6);
  // As torch: the factor is min(scale, 1), and a NaN norm makes every gradient NaN (not unclipped).
  if (!(scale >= 1)) ops::scale_(grads, scale);
  return norm;
}

double constant_schedule(std::int64_t) { return 1.0; }

double warmup_cosine_schedule(std::int64_t step, std::int64_t warmup, std::int64_t total, double min_ratio) {
  TG_CHECK(step >= 0 && warmup >= 0 && total >= 0 && std::isfinite(min_ratio),
           "warmup_cosine_schedule: expected step, warmup, total >= 0 and a finite min_ratio, got {}, {}, {}, {}", step, warmup,
           total, min_ratio);
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (step >= total) return min_ratio;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, total - warmup));
  return min_ratio + (1 - min_ratio) * 0.5 * (1 + std::cos(std::numbers::pi * progress));
}

void training_diverged(std::string_view what, std::string_view quantity, double value, std::string_view where,
                       std::string_view advice) {
  TG_FAIL("{}: training diverged: the {} is {} {}; {}", what, quantity, std::isnan(value) ? std::fabs(value) : value, where, advice);
}

std::optional<double> first_non_finite_value(const Tensor& t) {
  const std::optional<std::int64_t> i = detail::first_non_finite(t);
  if (!i) return std::nullopt;
  NoGradGuard no_grad;
  return t.detach().contiguous().reshape({-1}).narrow(0, *i, 1).item();
}

void check_finite_parameters(Module& model, std::string_view what, std::string_view where, std::string_view advice) {
  for (const NamedTensor& p : model.named_parameters())
    if (const std::optional<double> bad = first_non_finite_value(p.tensor))
      training_diverged(what, fmt::format("parameter '{}'", p.name), *bad, where, advice);
}

EMA::EMA(Module& model, double decay) : decay_(decay) {
  TG_CHECK(decay >= 0 && decay <= 1, "EMA: decay must be in [0, 1], got {}", decay);
  NoGradGuard no_grad;
  for (const NamedTensor& t : model.state()) shadow_.push_back({t.name, t.tensor.detach().clone()});
}

void EMA::update(Module& model) { update(model, decay_); }

void EMA::update(Module& model, double decay) {
  TG_CHECK(decay >= 0 && decay <= 1, "EMA: decay must be in [0, 1], got {}", decay);
  NoGradGuard no_grad;
  const auto current = model.state();
  TG_CHECK(current.size() == shadow_.size(), "EMA: the model has {} tensors, the average {}", current.size(), shadow_.size());
  Tensors params, shadow;
  for (std::size_t i = 0; i < current.size(); ++i) {
    TG_CHECK(current[i].name == shadow_[i].name, "EMA: tensor {} is '{}' in the model but '{}' in the average", i,
             current[i].name, shadow_[i].name);
    if (current[i].tensor.is_floating_point()) {
      params.push_back(current[i].tensor.contiguous());
      shadow.push_back(shadow_[i].tensor);
    } else {
      shadow_[i].tensor.copy_(current[i].tensor);
    }
  }
  ops::ema_update(shadow, params, decay);
}

void EMA::copy_to(Module& model) const {
  NoGradGuard no_grad;
  auto current = model.state();
  TG_CHECK(current.size() == shadow_.size(), "EMA: the model has {} tensors, the average {}", current.size(), shadow_.size());
  // All checked before the first copy: a mismatch (another model) leaves the model untouched
  // instead of broadcasting or converting the average into the wrong tensors.
  for (std::size_t i = 0; i < current.size(); ++i) {
    const Tensor &to = current[i].tensor, &from = shadow_[i].tensor;
    TG_CHECK(current[i].name == shadow_[i].name, "EMA copy_to: tensor {} is '{}' in the model but '{}' in the average", i,
             current[i].name, shadow_[i].name);
    TG_CHECK(to.shape() == from.shape() && to.dtype() == from.dtype(),
             "EMA copy_to: '{}' is {} {} in the model but {} {} in the average", current[i].name, to.shape(), to.dtype(),
             from.shape(), from.dtype());
  }
  for (std::size_t i = 0; i < current.size(); ++i) current[i].tensor.copy_(shadow_[i].tensor);
}

}  // namespace tg::nn
