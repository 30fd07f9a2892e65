// Training and evaluation of the classifiers (Adam, cross-entropy, deterministic batches), with
// resumable checkpoints; and the FD_clf feature extractor, trained on demand and cached on disk.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/classifier/classifier.hpp"
#include "nn/data.hpp"

namespace tg::models::classifier {

struct EpochStats {
  std::int64_t epoch = 0;       // 1-based
  std::int64_t step = 0;        // optimizer steps so far
  double train_loss = 0;        // mean over the epoch's steps
  double test_loss = 0;
  double test_accuracy = 0;
  double seconds = 0;           // wall time of the epoch's training steps
};

struct FitOptions {
  std::int64_t epochs = 3;
  std::int64_t batch = 128;
  double lr = 2e-3;
  // "cosine": the learning rate decays from lr to 0 over the epochs (a function of the step only,
  // so resuming stays exact); "constant": lr throughout.
  std::string schedule = "cosine";
  std::uint64_t seed = 0;
  std::int64_t max_steps = -1;        // stop early (smoke runs); -1: all epochs
  std::string checkpoint;             // training checkpoint written after every epoch ("" = none)
  bool resume = false;                // continue from `checkpoint` if it exists
  bool progress = true;               // progress bar on stderr
  // on_epoch runs before the epoch's checkpoint is written (a row it logs is never missing for a
  // checkpoint; a resumed run drops rows past its checkpoint). A non-finite training or test loss
  // stops fit with an error, before anything is reported or checkpointed.
  std::function<void(const EpochStats&)> on_epoch;
  std::function<void(std::int64_t step, double loss)> on_step;
};

struct FitResult {
  std::vector<EpochStats> history;
  std::int64_t steps = 0;
  // Stopped early, after a step, by a signal (nn::stop_requested: Ctrl-C under an nn::StopOnSignal):
  // the checkpoint then holds the state mid-epoch, without that epoch's evaluation.
  bool interrupted = false;
};

// Trains with Adam on `train`, evaluating on `test` after every epoch.
FitResult fit(Classifier& model, const nn::data::ImageDataset& train, const nn::data::ImageDataset& test,
              const FitOptions& options);

struct Evaluation {
  double loss = 0;
  double accuracy = 0;
  Tensor predictions;  // [N] i64
};
Evaluation evaluate(Classifier& model, const nn::data::ImageDataset& data, std::int64_t batch = 1000);

// Train and test data: Fashion-MNIST when installed (or at `folder`), else the synthetic shapes
// (with a clear message on stderr). max_train limits the training set (0: all).
struct Data {
  nn::data::ImageDataset train, test;
  bool synthetic = false;
};
Data load_data(const std::optional<std::string>& folder, bool force_synthetic, std::int64_t max_train = 0);
// The test split alone (the same source load_data would pick), for evaluation without training data.
nn::data::ImageDataset load_test_data(const std::optional<std::string>& folder, bool force_synthetic);

// The FD_clf feature extractor (fdmlp on 14x14): loaded from `path`, or trained (3 epochs, about a
// minute on 2 cores) and saved there when the file is missing. A file trained on other data (or on
// another number of training images) is refused.
Classifier load_or_train_fd_classifier(const std::string& path, const Data& data);
// Default location: $TAPEGRAD_FD_CLASSIFIER, else runs/fd_classifier/fdmlp.safetensors.
std::string default_fd_classifier_path();
// FD_clf features [N, F] of images [N, 1, S, S] in [0, 1] (batched, no grad): F = 128 for fdmlp on
// Fashion-MNIST, 64 for the digits model.
Tensor fd_features(Classifier& fd, const Tensor& images);

}  // namespace tg::models::classifier
