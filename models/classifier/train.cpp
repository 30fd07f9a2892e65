#include "models/classifier/train.hpp"

#include <fmt/core.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <utility>

#include "core/autograd.hpp"
#include "nn/checkpoint.hpp"
#include "nn/interrupt.hpp"
#include "nn/metrics.hpp"
#include "nn/optim.hpp"
#include "nn/output.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::models::classifier {

Evaluation evaluate(Classifier& model, const nn::data::ImageDataset& data, std::int64_t batch) {
  TG_CHECK(batch > 0, "evaluate: batch must be positive, got {}", batch);
  TG_CHECK(data.size() > 0, "evaluate: the dataset has no images");
  NoGradGuard no_grad;
  const bool was_training = model.training();
  model.eval();
  const std::int64_t n = data.size();
  double loss_sum = 0;
  Tensors predictions;
  for (std::int64_t start = 0; start < n; start += batch) {
    const std::int64_t m = std::min(batch, n - start);
    const Tensor x = preprocess(model.config, data.images.narrow(0, start, m));  // [m, 1, S, S]
    const Tensor y = data.labels.narrow(0, start, m);                             // [m]
    const Tensor logits = model(x);                                                // [m, classes]
    loss_sum += ops::cross_entropy(logits, y, {.reduction = ops::Reduction::sum}).item();
    predictions.push_back(ops::argmax(logits, 1));
  }
  model.train(was_training);
  Evaluation e;
  e.predictions = ops::cat(predictions, 0);
  e.loss = loss_sum / static_cast<double>(n);
  e.accuracy = nn::metrics::accuracy(e.predictions, data.labels);
  return e;
}

FitResult fit(Classifier& model, const nn::data::ImageDataset& train, const nn::data::ImageDataset& test,
              const FitOptions& o) {
  TG_CHECK(o.schedule == "cosine" || o.schedule == "constant",
           "classifier fit: unknown learning-rate schedule '{}' (cosine or constant)", o.schedule);
  nn::Adam opt(model.named_parameters(), {.lr = o.lr});
  nn::data::BatchSampler sampler(train.size(), o.batch, /*shuffle=*/true, o.seed);
  Generator gen(o.seed);  // saved with checkpoints (no randomness in these models' steps today)
  const std::int64_t per_epoch = sampler.batches_per_epoch();
  std::int64_t step = 0;
  FitResult result;
  // A run stopped mid-epoch saves the epoch's loss sum, step count and seconds so far, so that the
  // resumed run reports the whole epoch (as the uninterrupted run would).
  double carried_loss = 0, carried_seconds = 0;
  std::int64_t carried_count = 0;
  if (o.resume && !o.checkpoint.empty() && std::filesystem::exists(o.checkpoint)) {
    const nn::TrainingState st = nn::load_training_checkpoint(o.checkpoint, model, opt, gen);
    step = st.step;
    fmt::print(stderr, "resumed from {} at step {}\n", o.checkpoint, step);
    // An entry as a number (T = double or std::int64_t); absent entries (older checkpoints) are 0.
    const auto number = [&]<class T>(const char* key, T) {
      const auto it = st.metadata.find(key);
      if (it == st.metadata.end()) return T(0);
      T v = 0;
      const auto [end, err] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
      TG_CHECK(err == std::errc() && end == it->second.data() + it->second.size(),
               "classifier fit: checkpoint '{}' has a malformed '{}' entry '{}'", o.checkpoint, key, it->second);
      return v;
    };
    if (step % per_epoch != 0) {
      carried_loss = number("epoch_loss_sum", 0.0);
      carried_count = number("epoch_loss_count", std::int64_t{0});
      carried_seconds = number("epoch_seconds", 0.0);
      TG_CHECK(carried_count >= 0 && carried_count <= step % per_epoch && std::isfinite(carried_seconds) && carried_seconds >= 0,
               "classifier fit: checkpoint '{}' has {} losses and {} s for an epoch it left after {} steps", o.checkpoint,
               carried_count, carried_seconds, step % per_epoch);
    }
  }
  TG_CHECK(o.epochs >= 1 && o.epochs <= std::numeric_limits<std::int64_t>::max() / per_epoch,
           "classifier fit: {} epochs of {} steps overflow the step count", o.epochs, per_epoch);
  const std::int64_t total = o.max_steps >= 0 ? std::min(o.max_steps, o.epochs * per_epoch) : o.epochs * per_epoch;
  const std::string kept = o.checkpoint.empty() ? "" : " The last checkpoint ('" + o.checkpoint + "'), if any, is kept.";
  model.train();
  while (step < total) {
    const std::int64_t epoch = step / per_epoch;
    nn::output::ProgressBar bar(std::min(per_epoch, total - epoch * per_epoch), fmt::format("epoch {}/{}", epoch + 1, o.epochs));
    double loss_sum = std::exchange(carried_loss, 0.0);
    std::int64_t count = std::exchange(carried_count, 0);
    const double earlier_seconds = std::exchange(carried_seconds, 0.0);
    const auto start = std::chrono::steady_clock::now();
    for (std::int64_t b = step % per_epoch; b < per_epoch && step < total; ++b, ++step) {
      if (nn::stop_requested()) {
        result.interrupted = true;
        break;
      }
      const auto [images, labels] = nn::data::gather_batch(train, sampler.batch(epoch, b));  // [B, 1, 28, 28], [B]
      const Tensor logits = model(preprocess(model.config, images));                         // [B, classes]
      const Tensor loss = ops::cross_entropy(logits, labels);
      if (o.schedule == "cosine") opt.set_lr(o.lr * nn::warmup_cosine_schedule(step, 0, o.epochs * per_epoch));
      const double l = loss.item();
      if (!std::isfinite(l))  // stop before the step: nothing non-finite is logged or checkpointed
        nn::training_diverged("classifier fit", "loss", l,
                              fmt::format("at step {} (epoch {}, learning rate {:g})", step + 1, epoch + 1, opt.lr()),
                              "try a smaller learning rate." + kept);
      opt.zero_grad();
      loss.backward();
      opt.step();
      loss_sum += l;
      ++count;
      if (o.on_step) o.on_step(step + 1, l);
      if (o.progress) bar.update(b + 1, l);  // the batch's place in the epoch (also when resuming mid-epoch)
    }
    const double secs = earlier_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (o.progress) result.interrupted ? bar.stop() : bar.finish();
    auto save = [&] {
      if (!o.checkpoint.empty())
        nn::save_training_checkpoint(o.checkpoint, model, opt, step, gen, nullptr,
                                     {{"epoch_loss_sum", fmt::format("{:.17g}", loss_sum)},
                                      {"epoch_loss_count", std::to_string(count)},
                                      {"epoch_seconds", fmt::format("{:.17g}", secs)}});
    };
    if (result.interrupted) {  // mid-epoch: the sums so far go into the checkpoint, the evaluation waits
      save();
      break;
    }
    const Evaluation ev = evaluate(model, test);
    // (The epoch's last step can still have made the weights non-finite.)
    if (!std::isfinite(ev.loss))
      nn::training_diverged("classifier fit", "test loss", ev.loss,
                            fmt::format("after step {} (epoch {}, learning rate {:g})", step, epoch + 1, opt.lr()),
                            "try a smaller learning rate." + kept);
    EpochStats s{epoch + 1, step, count ? loss_sum / static_cast<double>(count) : 0.0, ev.loss, ev.accuracy, secs};
    result.history.push_back(s);
    // The epoch is reported (a metrics row logged) before its checkpoint is committed: a kill in
    // between leaves a row past the last checkpoint, which a resumed run drops and logs again,
    // never a checkpoint whose row is missing.
    if (o.on_epoch) o.on_epoch(s);
    save();
  }
  result.steps = step;
  return result;
}

namespace {

// The Fashion-MNIST folder to read, or nothing for the synthetic shapes (said on stderr unless forced).
std::optional<std::string> fashion_mnist_folder(const std::optional<std::string>& folder, bool force_synthetic) {
  if (force_synthetic) return std::nullopt;
  auto found = folder ? folder : nn::data::find_fashion_mnist();
  if (!found)
    fmt::print(stderr,
               "Fashion-MNIST not found (install the Debian package dataset-fashion-mnist, or set "
               "TAPEGRAD_FASHION_MNIST); using the built-in synthetic shapes instead\n");
  return found;
}

}  // namespace

Data load_data(const std::optional<std::string>& folder, bool force_synthetic, std::int64_t max_train) {
  Data d;
  if (const auto found = fashion_mnist_folder(folder, force_synthetic)) {
    d.train = nn::data::load_fashion_mnist(*found, true);
    d.test = nn::data::load_fashion_mnist(*found, false);
  } else {
    d.train = nn::data::synthetic_shapes(max_train > 0 ? std::min<std::int64_t>(max_train, 60000) : 60000, 1);
    d.test = nn::data::synthetic_shapes(10000, 2);
    d.synthetic = true;
  }
  if (max_train > 0 && max_train < d.train.size()) {
    d.train.images = d.train.images.narrow(0, 0, max_train);
    d.train.labels = d.train.labels.narrow(0, 0, max_train);
  }
  return d;
}

nn::data::ImageDataset load_test_data(const std::optional<std::string>& folder, bool force_synthetic) {
  if (const auto found = fashion_mnist_folder(folder, force_synthetic)) return nn::data::load_fashion_mnist(*found, false);
  return nn::data::synthetic_shapes(10000, 2);
}

std::string default_fd_classifier_path() {
  if (const char* env = std::getenv("TAPEGRAD_FD_CLASSIFIER")) return env;
  return "runs/fd_classifier/fdmlp.safetensors";
}

Classifier load_or_train_fd_classifier(const std::string& path, const Data& data) {
  Generator gen(1234);
  Classifier fd({.arch = Arch::fdmlp, .image_size = 14}, &gen);
  if (std::filesystem::exists(path)) {
    const nn::Metadata meta = nn::load_module(fd, path);
    auto it = meta.find("data");
    const std::string want = data.synthetic ? "synthetic" : "fashion-mnist";
    TG_CHECK(it != meta.end() && it->second == want,
             "FD classifier '{}' was trained on '{}' data but this run uses '{}'; delete it to retrain", path,
             it == meta.end() ? "unknown" : it->second, want);
    // FD values are comparable only under one feature extractor: one trained on another number
    // of images (e.g. a smoke run's few) is refused, not silently reused.
    const std::string images = std::to_string(data.train.size());
    if (auto n = meta.find("train_images"); n == meta.end())
      fmt::print(stderr, "note: FD classifier '{}' does not record its training-set size (an older file); delete it to retrain\n",
                 path);
    else
      TG_CHECK(n->second == images,
               "FD classifier '{}' was trained on {} training images but this run has {}; use another path (--fd-classifier) "
               "or delete it to retrain",
               path, n->second, images);
    fd.eval();
    return fd;
  }
  fmt::print(stderr, "training the FD_clf feature extractor (fdmlp on 14x14, 3 epochs) -> {}\n", path);
  const FitResult r = fit(fd, data.train, data.test, {.epochs = 3, .batch = 128, .lr = 1e-3, .schedule = "constant", .seed = 1234});
  const double acc = r.history.back().test_accuracy;
  fmt::print(stderr, "FD classifier test accuracy {:.2f}%\n", 100 * acc);
  if (const auto folder = std::filesystem::path(path).parent_path(); !folder.empty()) std::filesystem::create_directories(folder);
  nn::save_module(fd, path, {{"data", data.synthetic ? "synthetic" : "fashion-mnist"},
                             {"train_images", std::to_string(data.train.size())},
                             {"test_accuracy", fmt::format("{:.4f}", acc)}});
  fd.eval();
  return fd;
}

Tensor fd_features(Classifier& fd, const Tensor& images) {
  TG_CHECK(images.defined() && images.dim() == 4 && images.shape()[0] > 0, "fd_features: expected images [N >= 1, 1, S, S], got {}",
           images.defined() ? images.shape() : Shape{});
  NoGradGuard no_grad;
  Tensors parts;
  for (std::int64_t s = 0; s < images.shape()[0]; s += 1000) {
    const Tensor x = images.narrow(0, s, std::min<std::int64_t>(1000, images.shape()[0] - s));
    parts.push_back(fd.features(preprocess(fd.config, x)));  // [b, F]
  }
  return ops::cat(parts, 0);
}

}  // namespace tg::models::classifier
