// Training (EDM loss, Adam, weight EMA, resumable checkpoints, a wall-clock budget) and batched
// generation for the diffusion UNet; and the mapping between Fashion-MNIST images and the model's
// padded [-1, 1] space.
#pragma once

#include <functional>
#include <string>

#include "models/diffusion/edm.hpp"
#include "models/diffusion/samplers.hpp"
#include "nn/optim.hpp"

namespace tg::models::diffusion {

// ---- data space -----------------------------------------------------------------------------------------------
// Images [N, 1, 28, 28] in [0, 1] -> the model space [N, 1, size, size] in [-1, 1]: average-pooled to
// 14x14 when size < 28, then zero-padded (value -1) to size x size. size: 14, 16 (14 + 2 padding), 28, 32, ...
Tensor to_model_space(const Tensor& images, std::int64_t size);
// The inverse for samples x [N, 1, size, size] (any float dtype): the centre crop, mapped to [0, 1]
// and clamped, upsampled (nearest) back to 28x28 when the content is 14x14 -> [N, 1, 28, 28] f32.
// Average pooling undoes that upsampling exactly, so the 14x14 FD_clf features see the sample itself.
Tensor to_image_space(const Tensor& x, std::int64_t size);
// The content size (14 or 28) of a model size.
std::int64_t content_size(std::int64_t size);

// ---- training -------------------------------------------------------------------------------------------------
struct StepStats {
  std::int64_t step = 0;   // optimizer steps done (1-based)
  double loss = 0;         // this step's loss
  double lr = 0;
  double seconds = 0;      // training wall time so far (including resumed runs)
};

struct TrainOptions {
  std::int64_t batch = 128;
  double lr = 1e-3;
  std::int64_t warmup = 200;       // linear lr warmup steps
  double min_lr_ratio = 0.1;       // then cosine decay to lr * min_lr_ratio over the run (1: constant lr)
  bool ema_warmup = true;          // EMA decay min(decay, (1 + t) / (10 + t)) at step t, so early weights fade fast
  double minutes = 10.0;           // wall-clock budget (<= 0: none)
  std::int64_t max_steps = -1;     // stop after this many steps (-1: no limit)
  std::int64_t stop_after = -1;    // leave after this many steps of this call, as an interruption would (-1: run on)
  // Also left early, after a step, when nn::stop_requested() (Ctrl-C under an nn::StopOnSignal);
  // either way the checkpoint is written and the run resumes from it.
  std::uint64_t seed = 0;          // batch order, noise levels, noise, label dropout
  EDMConfig edm;
  bool class_conditional = true;   // pass labels (the model must have num_classes > 0)
  std::string checkpoint;          // resumable training state ("" = none), written every checkpoint_every steps
  std::int64_t checkpoint_every = 500;
  bool resume = false;             // continue from `checkpoint` if it exists
  bool progress = true;            // progress bar on stderr
  // Runs after each step, before that step's checkpoint (if any) is written: a metrics row it logs
  // is never missing for a checkpoint (a resumed run drops the rows past its checkpoint). A
  // non-finite loss stops fit with an error before the step is taken, reported or checkpointed.
  std::function<void(const StepStats&)> on_step;
  // Called once after the last step, before the final checkpoint is saved (flush partial logs here,
  // so that a log never lags behind a committed checkpoint).
  std::function<void()> on_finish;
};

struct TrainResult {
  std::int64_t steps = 0;
  double seconds = 0;
  double final_loss = 0;           // mean loss of the last final_loss_steps steps
  std::int64_t final_loss_steps = 0;  // min(200, steps run by this call): 0 for a run already finished
  bool interrupted = false;  // stopped early by a signal (nn::stop_requested); the checkpoint holds the state
};

// Trains `model` on images [N, C, S, S] in [-1, 1] (labels [N] i64) with Adam; `ema` (built on the
// same model) follows every step. The cosine decay runs over max_steps, or over the time budget when
// there is no step limit. With a step limit the run is bit-for-bit reproducible and a resumed run
// equals an uninterrupted one.
TrainResult fit(UNet& model, nn::EMA& ema, const Tensor& images, const Tensor& labels, const TrainOptions& options);

// ---- generation -----------------------------------------------------------------------------------------------
struct GenerateOptions {
  SamplerConfig sampler;
  std::int64_t count = 64;
  std::int64_t batch = 500;
  // The initial noise (all `count` images drawn at once) and the fresh noise of ancestral steps
  // (DDPM, DDIM with eta > 0; one stream per sample): samples do not depend on `batch`.
  std::uint64_t noise_seed = 0;
  double guidance = 1.0;         // classifier-free guidance weight (1: plain conditional)
  bool class_conditional = true; // labels i mod num_classes (when the model is conditional)
  // Called after each batch with the samples done so far and the count (progress output).
  std::function<void(std::int64_t done, std::int64_t count)> on_batch;
};
struct Generated {
  Tensor x;                 // [count, C, S, S] f32 in model space
  Tensor labels;            // [count] i64, or undefined
  std::int64_t nfe = 0;     // denoiser evaluations per sample
};
Generated generate(const UNet& net, const GenerateOptions& options);

}  // namespace tg::models::diffusion
