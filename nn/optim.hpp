// Optimizers (SGD, Adam, AdamW), gradient clipping, learning-rate schedules and parameter EMA.
// Each step updates all parameters in one fused parallel pass (ops/fused.hpp).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nn/module.hpp"

namespace tg::nn {

// A set of parameters sharing hyper-parameters; lr_scale multiplies the optimizer's learning rate.
struct ParamGroup {
  std::vector<NamedTensor> params;
  double lr_scale = 1.0;
  double weight_decay = -1.0;  // < 0: the optimizer's default
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Applies one update from the parameters' .grad() (parameters without a gradient are skipped).
  virtual void step() = 0;
  virtual std::string type_name() const = 0;
  void zero_grad();

  double lr() const { return lr_; }
  void set_lr(double lr);  // finite, >= 0
  // Calls of step(). Each parameter also counts its own updates (steps where it had a gradient),
  // as PyTorch's state['step']: Adam's bias correction and SGD's first momentum step use that one,
  // so a parameter that joins late (frozen, or unused by early batches) starts like a fresh one.
  std::int64_t step_count() const { return step_; }
  // Sets the step count and every parameter's update count (checkpoints then restore the
  // parameters whose count differs, see set_param_updates).
  void set_step_count(std::int64_t s);
  std::int64_t param_updates(std::size_t group, std::size_t index) const { return updates_.at(group).at(index); }
  // Parameters whose update count differs from step_count(), by name (for checkpoints).
  std::vector<std::pair<std::string, std::int64_t>> lagging_params() const;
  void set_param_updates(const std::string& name, std::int64_t updates);

  // The optimizer's state tensors by name ("<param name>.exp_avg"), for checkpoints. The names
  // are stable; load fills the same tensors in place.
  std::vector<NamedTensor> state();
  const std::vector<ParamGroup>& groups() const { return groups_; }

 protected:
  Optimizer(std::vector<ParamGroup> groups, double lr);
  // Allocates a zero state tensor per parameter under `suffix` (once).
  void add_state(const std::string& suffix);
  Tensor& state_of(std::size_t group, std::size_t index, const std::string& suffix);

  std::vector<ParamGroup> groups_;
  double lr_;
  std::int64_t step_ = 0;
  std::vector<std::string> suffixes_;
  std::vector<std::vector<std::vector<Tensor>>> state_;  // [suffix][group][param]
  std::vector<std::vector<std::int64_t>> updates_;        // [group][param]: updates applied
};

struct SGDOptions {
  double lr = 1e-2, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<NamedTensor> params, const SGDOptions& options);
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options);
  void step() override;
  std::string type_name() const override { return "SGD"; }
  SGDOptions options;
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};
// Adam (L2 penalty added to the gradient) or AdamW (decoupled weight decay), as in PyTorch.
class Adam : public Optimizer {
 public:
  Adam(std::vector<NamedTensor> params, const AdamOptions& options, bool decoupled = false);
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options, bool decoupled = false);
  void step() override;
  std::string type_name() const override { return decoupled_ ? "AdamW" : "Adam"; }
  AdamOptions options;

 private:
  bool decoupled_;
};
// AdamW's own defaults, PyTorch's: weight decay 0.01 (Adam's is 0).
struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
  operator AdamOptions() const { return {lr, beta1, beta2, eps, weight_decay}; }
};
class AdamW : public Adam {
 public:
  AdamW(std::vector<NamedTensor> params, const AdamWOptions& options = {}) : Adam(std::move(params), options, true) {}
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options = {}) : Adam(std::move(groups), options, true) {}
};

// Scales all gradients so that their global L2 norm is at most max_norm; returns the norm before
// clipping (computed in f64, deterministically).
double clip_grad_norm(const Tensors& params, double max_norm);

// Learning-rate multipliers by step (0-based).
double constant_schedule(std::int64_t step);
// Linear warmup (1/warmup, 2/warmup, ..., 1 over the first `warmup` steps), then cosine decay to
// min_ratio at `total` steps.
double warmup_cosine_schedule(std::int64_t step, std::int64_t warmup, std::int64_t total, double min_ratio = 0.0);

// Stops a diverged training run: throws tg::Error("<what>: training diverged: the <quantity> is
// <value> <where>; <advice>"), NaN printed as "nan" (never fmt's "-nan"). Training loops check
// the loss before the optimizer step, so that nothing non-finite is taken, logged or checkpointed:
//   if (!std::isfinite(l))
//     nn::training_diverged("fit", "loss", l, fmt::format("at step {}", s), "try a smaller learning rate");
[[noreturn]] void training_diverged(std::string_view what, std::string_view quantity, double value, std::string_view where,
                                    std::string_view advice);
// The first NaN or infinity of a floating-point tensor (nullopt if none, or not floating-point).
std::optional<double> first_non_finite_value(const Tensor& t);
// Calls training_diverged, naming the parameter, if a parameter of `model` holds NaN or inf. For
// the end of a training loop: the loss checks before each step cannot see the last step diverge.
void check_finite_parameters(Module& model, std::string_view what, std::string_view where, std::string_view advice);

// Exponential moving average of a module's parameters and floating-point buffers (integer and
// bool buffers are copied as they are).
class EMA {
 public:
  EMA(Module& model, double decay);
  void update(Module& model);        // shadow = decay * shadow + (1 - decay) * param
  void update(Module& model, double decay);  // the same with this step's decay (e.g. a warmup ramp)
  void copy_to(Module& model) const;  // writes the averaged weights into the model
  std::vector<NamedTensor> state() const { return shadow_; }  // for checkpoints ("ema.<name>")
  double decay() const { return decay_; }

 private:
  double decay_;
  std::vector<NamedTensor> shadow_;
};

}  // namespace tg::nn
