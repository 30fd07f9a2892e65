#include "models/diffusion/train.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <numbers>
#include <deque>
#include <filesystem>
#include <optional>

#include "core/autograd.hpp"
#include "nn/checkpoint.hpp"
#include "nn/interrupt.hpp"
#include "nn/data.hpp"
#include "nn/optim.hpp"
#include "nn/output.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::models::diffusion {

std::int64_t content_size(std::int64_t size) {
  const std::int64_t c = size >= 28 ? 28 : 14;
  TG_CHECK(size >= c && (size - c) % 2 == 0, "diffusion data: image size {} must be 14 or 28 plus an even padding", size);
  return c;
}

Tensor to_model_space(const Tensor& images, std::int64_t size) {
  TG_CHECK(images.dim() == 4 && images.shape()[1] == 1 && images.shape()[2] == 28 && images.shape()[3] == 28,
           "to_model_space: expected images [N, 1, 28, 28], got {}", images.shape());
  const std::int64_t c = content_size(size);
  Tensor x = c == 14 ? nn::data::downsample(images, 2) : images;  // [N, 1, c, c] in [0, 1]
  if (size != c) x = nn::data::pad_to(x, size);                     // [N, 1, size, size]
  return x * 2.0 - 1.0;                                             // [-1, 1]
}

Tensor to_image_space(const Tensor& x, std::int64_t size) {
  TG_CHECK(x.dim() == 4 && x.shape()[2] == size && x.shape()[3] == size, "to_image_space: expected x [N, C, {}, {}], got {}",
           size, size, x.shape());
  const std::int64_t c = content_size(size), off = (size - c) / 2;
  const Tensor crop = x.narrow(2, off, c).narrow(3, off, c);                   // [N, C, c, c]
  const Tensor img = ops::clamp((crop.to(DType::f32) + 1.0) * 0.5, 0.0, 1.0);  // [0, 1]
  return c == 14 ? ops::upsample(img, 2.0) : img.contiguous();                 // [N, C, 28, 28]
}

TrainResult fit(UNet& model, nn::EMA& ema, const Tensor& images, const Tensor& labels, const TrainOptions& o) {
  TG_CHECK(images.dim() == 4 && images.shape()[0] > 0, "diffusion fit: expected images [N, C, S, S], got {}", images.shape());
  TG_CHECK(!o.class_conditional || (labels.defined() && labels.shape()[0] == images.shape()[0] && model.config.num_classes > 0),
           "diffusion fit: class-conditional training needs labels [N] and a model with num_classes > 0");
  TG_CHECK(o.batch > 0 && o.lr > 0 && o.warmup >= 0 && o.checkpoint_every > 0, "diffusion fit: bad batch {}, lr {}, warmup {}",
           o.batch, o.lr, o.warmup);
  TG_CHECK(o.minutes > 0 || o.max_steps >= 0, "diffusion fit: give a time budget or a step limit");
  TG_CHECK(model.skip_scales.empty(), "diffusion fit: Skip-Tuning is a sampling option; clear it before training");
  // Every batch is full (drop_last): a partial one would weigh its images more.
  TG_CHECK(o.batch <= images.shape()[0], "diffusion fit: {} images do not fill one batch of {}; use a batch of at most {}",
           images.shape()[0], o.batch, images.shape()[0]);
  nn::Adam opt(model.named_parameters(), {.lr = o.lr});
  nn::data::BatchSampler sampler(images.shape()[0], o.batch, /*shuffle=*/true, o.seed, /*drop_last=*/true);
  Generator gen(o.seed + 1);
  // The dropout masks come from gen too, which the checkpoints save: a resumed run then draws the
  // masks an uninterrupted one would. Pointed back at the default generator when fit returns.
  model.set_dropout_generator(&gen);
  struct Unset {
    UNet& m;
    ~Unset() { m.set_dropout_generator(nullptr); }
  } unset{model};
  const std::int64_t per_epoch = sampler.batches_per_epoch();  // >= 1: checked above
  std::int64_t step = 0;
  double prior_seconds = 0;
  if (o.resume && !o.checkpoint.empty() && std::filesystem::exists(o.checkpoint)) {
    const nn::TrainingState st = nn::load_training_checkpoint(o.checkpoint, model, opt, gen, &ema);
    step = st.step;
    if (auto it = st.metadata.find("train_seconds"); it != st.metadata.end()) {
      const std::string& text = it->second;
      const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), prior_seconds);
      // The time budget counts from it: NaN or a negative value would never end the run.
      TG_CHECK(err == std::errc() && end == text.data() + text.size() && std::isfinite(prior_seconds) &&
                   prior_seconds >= 0,
               "diffusion fit: '{}' has a malformed train_seconds entry '{}' (expected seconds >= 0)", o.checkpoint, text);
    }
    fmt::print(stderr, "resumed from {} at step {} ({:.0f} s trained)\n", o.checkpoint, step, prior_seconds);
  }
  auto save = [&](double seconds) {
    if (!o.checkpoint.empty())
      nn::save_training_checkpoint(o.checkpoint, model, opt, step, gen, &ema,
                                   {{"train_seconds", fmt::format("{:.3f}", seconds)}});
  };
  const double budget = o.minutes > 0 ? o.minutes * 60.0 : 0.0;
  std::optional<nn::output::ProgressBar> bar;
  if (o.progress) {
    if (o.max_steps >= 0) bar.emplace(std::max<std::int64_t>(0, o.max_steps - step), "train (steps)");
    else bar.emplace(static_cast<std::int64_t>(std::max(0.0, budget - prior_seconds)), "train (seconds of budget)");
  }
  const std::string kept = o.checkpoint.empty() ? "" : " The last checkpoint ('" + o.checkpoint + "'), if any, is kept.";
  model.train();
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  std::deque<double> recent;
  const std::int64_t first = step;
  bool interrupted = false;
  while (true) {
    const double secs = prior_seconds + elapsed();
    if ((o.max_steps >= 0 && step >= o.max_steps) || (budget > 0 && secs >= budget)) break;
    if (o.stop_after >= 0 && step - first >= o.stop_after) break;
    if (nn::stop_requested()) {
      interrupted = true;
      break;
    }
    const Tensor idx = sampler.batch(step / per_epoch, step % per_epoch);            // [B] i64
    const Tensor x0 = ops::index_select(images, 0, idx);                             // [B, C, S, S]
    const Tensor y = o.class_conditional ? ops::index_select(labels, 0, idx) : Tensor();  // [B]
    const double frac = o.max_steps > 0 ? static_cast<double>(step) / static_cast<double>(o.max_steps) : secs / budget;
    const double warm = o.warmup > 0 ? std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(o.warmup)) : 1.0;
    const double lr = o.lr * warm * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + std::cos(std::numbers::pi * std::min(1.0, frac))));
    opt.set_lr(lr);
    opt.zero_grad();
    const Tensor loss = edm_loss(model, x0, y, o.edm, gen).loss;
    const double l = loss.item();
    if (!std::isfinite(l))  // stop before the step: nothing non-finite is logged or checkpointed
      nn::training_diverged("diffusion fit", "loss", l, fmt::format("at step {} (learning rate {:g})", step + 1, lr),
                            "try a smaller learning rate." + kept);
    loss.backward();
    opt.step();
    const double decay = o.ema_warmup ? std::min(ema.decay(), (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)))
                                      : ema.decay();
    ema.update(model, decay);
    ++step;
    recent.push_back(l);
    if (recent.size() > 200) recent.pop_front();
    const double now = prior_seconds + elapsed();
    if (o.on_step) o.on_step({step, l, lr, now});
    if (bar) bar->update(o.max_steps >= 0 ? step - first : static_cast<std::int64_t>(now - prior_seconds), l);
    if (step % o.checkpoint_every == 0) save(now);
  }
  const double total = prior_seconds + elapsed();
  if (bar) interrupted ? bar->stop() : bar->finish();
  if (o.on_finish) o.on_finish();
  save(total);
  model.eval();
  TrainResult r;
  r.steps = step;
  r.seconds = total;
  for (double l : recent) r.final_loss += l / static_cast<double>(recent.size());
  r.final_loss_steps = static_cast<std::int64_t>(recent.size());
  r.interrupted = interrupted;
  return r;
}

Generated generate(const UNet& net, const GenerateOptions& o) {
  TG_CHECK(o.count > 0 && o.batch > 0, "generate: count ({}) and batch ({}) must be positive", o.count, o.batch);
  // A model in training mode would sample with its dropout active: noisier images, silently.
  TG_CHECK(!net.training() || net.config.dropout == 0,
           "generate: the UNet is in training mode with dropout {}; call eval() before sampling", net.config.dropout);
  const std::int64_t S = net.config.image_size, C = net.config.in_channels;
  Generator noise_gen(o.noise_seed);
  const Tensor noise = randn({o.count, C, S, S}, DType::f32, noise_gen);  // [count, C, S, S]
  Generated g;
  const bool cond = o.class_conditional && net.config.num_classes > 0;
  if (cond) {  // balanced classes: i mod num_classes
    std::vector<std::int64_t> y(static_cast<std::size_t>(o.count));
    for (std::int64_t i = 0; i < o.count; ++i) y[static_cast<std::size_t>(i)] = i % net.config.num_classes;
    g.labels = from_vector(y, {o.count});
  }
  Tensors parts;
  for (std::int64_t s = 0; s < o.count; s += o.batch) {
    const std::int64_t m = std::min(o.batch, o.count - s);
    const Tensor y = cond ? g.labels.narrow(0, s, m) : Tensor();
    // Ancestral noise (DDPM, DDIM with eta > 0): one stream per sample, independent of the batching.
    std::vector<std::uint64_t> seeds;
    for (std::int64_t i = s; i < s + m; ++i)
      seeds.push_back(o.noise_seed * 1000003ULL + 7919ULL * static_cast<std::uint64_t>(i) + 1ULL);
    const SampleResult r =
        sample(unet_denoiser(net, y, o.guidance), noise.narrow(0, s, m), o.sampler, per_sample_noise(seeds));
    g.nfe = r.nfe;
    parts.push_back(r.x.to(DType::f32));  // [m, C, S, S]
    // A diverged sampler (extreme Skip-Tuning or guidance, a broken model) must not pass on as images.
    const std::int64_t bad = m * C * S * S - ops::sum(ops::isfinite(parts.back())).item<std::int64_t>();
    TG_CHECK(bad == 0,
             "generate: {} of the {} values of samples {}..{} are not finite ({} with {} NFE, guidance {}, Skip-Tuning "
             "{}): the sampling diverged",
             bad, m * C * S * S, s, s + m - 1, sampler_name(o.sampler.kind), r.nfe, o.guidance,
             net.skip_scales.empty() ? std::string("off")
                                     : fmt::format("rho {} .. {}", net.skip_scales.front(), net.skip_scales.back()));
    if (o.on_batch) o.on_batch(s + m, o.count);
  }
  g.x = ops::cat(parts, 0);
  return g;
}

}  // namespace tg::models::diffusion
