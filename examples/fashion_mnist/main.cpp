// Fashion-MNIST classifiers: train (MLP or CNN), evaluate, predict — with a run folder holding the
// config, metrics, loss plot, confusion matrix, a grid of labelled test images and checkpoints.
//
//   build/examples/fashion_mnist train --model cnn --epochs 3 --out runs/fmnist-cnn
//   build/examples/fashion_mnist eval --run runs/fmnist-cnn
//   build/examples/fashion_mnist predict --run runs/fmnist-cnn --count 16
#include <fmt/core.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <nlohmann/json.hpp>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "models/classifier/train.hpp"
#include "nn/checkpoint.hpp"
#include "nn/interrupt.hpp"
#include "nn/metrics.hpp"
#include "nn/optim.hpp"
#include "nn/output.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "examples/common/cli.hpp"
#include "examples/common/resume.hpp"

using namespace tg;
namespace fs = std::filesystem;
namespace cls = tg::models::classifier;

namespace {

struct TrainArgs {
  std::string model = "mlp", out, data;
  std::int64_t epochs = 3, batch = 128, max_steps = -1, max_train = 0;
  double lr = 2e-3;
  std::string schedule = "cosine";
  std::uint64_t seed = 0;
  bool synthetic = false, resume = false, overwrite = false;
  std::set<std::string> given;  // the options given on the command line ("--lr", ...)
};

// Writes the labelled prediction grid and the confusion matrix of an evaluation.
void write_evaluation(const std::string& dir, const cls::Evaluation& ev, const nn::data::ImageDataset& test,
                      std::int64_t count) {
  const Tensor cm = nn::metrics::confusion_matrix(ev.predictions, test.labels, 10);
  {
    nn::output::CsvWriter csv(dir + "/confusion_matrix.csv", [&] {
      std::vector<std::string> h{"true\\predicted"};
      for (const auto& c : test.class_names) h.push_back(c);
      return h;
    }());
    const auto v = cm.to_vector<std::int64_t>();
    for (std::int64_t r = 0; r < 10; ++r) {
      std::vector<std::string> row{test.class_names[static_cast<std::size_t>(r)]};
      for (std::int64_t c = 0; c < 10; ++c) row.push_back(std::to_string(v[static_cast<std::size_t>(r * 10 + c)]));
      csv.row(row);
    }
  }
  // The confusion matrix as an image: row-normalised counts, one 24x24 cell per entry.
  {
    Tensor cells = cm.to(DType::f32);
    const Tensor rows = ops::sum(cells, {1}, true);
    cells = cells / ops::maximum(rows, ones({1}));
    nn::output::save_png(dir + "/confusion_matrix.png", ops::repeat(cells.reshape({10, 1, 10, 1}), {1, 24, 1, 24}).reshape({240, 240}));
  }
  const std::int64_t n = std::min(count, test.size());
  const auto pred = ev.predictions.narrow(0, 0, n).to_vector<std::int64_t>();
  const auto truth = test.labels.narrow(0, 0, n).to_vector<std::int64_t>();
  nn::output::GridOptions grid{.columns = 8, .scale = 3};
  for (std::int64_t i = 0; i < n; ++i) {
    std::string name = test.class_names[static_cast<std::size_t>(pred[i])];
    if (name.size() > 12) name = name.substr(0, 12);
    grid.captions.push_back(name);
    grid.caption_red.push_back(pred[i] != truth[i]);
  }
  nn::output::save_image_grid(dir + "/test_predictions.png", test.images.narrow(0, 0, n), grid);
}

nlohmann::json load_run_config(const std::string& run);

// A lower bound of one training sample's activations (f32 bytes), for examples::check_memory: the
// hidden layers' outputs and activations (mlp, fdmlp), the conv, activation and pooling maps (cnn).
// About half of what a training step was measured to take per sample.
double activation_bytes_per_sample(cls::Arch arch) {
  switch (arch) {
    case cls::Arch::cnn: return 4.0 * (2 * 32 * 28 * 28 + 32 * 14 * 14 + 2 * 64 * 14 * 14 + 64 * 7 * 7);
    case cls::Arch::fdmlp: return 4.0 * (2 * 256 + 2 * 128);
    default: return 4.0 * (4 * 512);
  }
}

// For a resume: the settings not given on the command line come from the run's config.json, the
// given ones must match it. --max-steps is never taken: it extends a run.
void take_run_settings(TrainArgs& a, const std::string& out) {
  const nlohmann::json cfg = load_run_config(out);
  examples::ResumeSettings s(cfg, out + "/config.json", a.given);
  s.choice("--model", "model", a.model, {"mlp", "cnn", "fdmlp"});
  s.integer("--epochs", "epochs", a.epochs, 1, 1'000'000);
  s.integer("--batch", "batch", a.batch, 1, 1'000'000);
  s.number("--lr", "lr", a.lr, 0, std::numeric_limits<double>::max(), /*open_low=*/true);
  s.choice("--schedule", "schedule", a.schedule, {"cosine", "constant"});
  s.seed("--seed", "seed", a.seed);
  s.integer("--max-train", "max_train", a.max_train, 0, 1'000'000'000);
  s.data(a.data, a.synthetic);
  s.finish();
}

int train(TrainArgs a) {
  const std::string out = a.out.empty() ? "runs/fashion_mnist-" + a.model : a.out;
  if (a.resume) {
    examples::check_resumable(out, {"model.safetensors"});
    take_run_settings(a, out);
  }
  const cls::Arch arch = cls::parse_arch(a.model);
  const bool start_over = examples::check_new_run_folder(out, {"checkpoint.safetensors", "model.safetensors"}, a.resume, a.overwrite);
  // The data first: a bad --data must not leave an empty run folder behind.
  const cls::Data data = cls::load_data(a.data.empty() ? std::nullopt : std::optional<std::string>(a.data), a.synthetic, a.max_train);
  fs::create_directories(out);
  const nn::output::RunFolderLock lock(out);  // one writer per run folder
  if (start_over) examples::remove_run_files(out, {"checkpoint.safetensors", "model.safetensors"}, {"predictions.png"});
  fmt::print("data: {} ({} train / {} test images)\n", data.train.source, data.train.size(), data.test.size());
  const std::int64_t batch = std::min(a.batch, data.train.size());
  examples::check_memory(static_cast<double>(batch) * activation_bytes_per_sample(arch),
                         fmt::format("training the {} model in batches of {}", a.model, batch), "--batch");

  Generator init(a.seed);
  cls::Classifier model({.arch = arch, .image_size = arch == cls::Arch::fdmlp ? 14 : 28}, &init);
  // A resumed run must be the same model with the same settings: checked before the run folder
  // is touched. (--max-steps may differ: it is how a run is continued.)
  const bool resuming = a.resume && fs::exists(out + "/checkpoint.safetensors");
  if (a.resume && !resuming)
    fmt::print("train --resume: no checkpoint in '{}' yet; starting the run over with its settings\n", out);
  if (resuming) {
    // The settings were taken from (or checked against) config.json above; the data only now that
    // it is loaded.
    examples::check_resumed_data(load_run_config(out), out, data.train.source);
    const std::string ckpt = out + "/checkpoint.safetensors";
    const nn::SafetensorsFile file = nn::load_safetensors(ckpt);  // validated whole
    for (const nn::NamedTensor& t : model.state()) {
      const Tensor* saved = file.find("model." + t.name);
      TG_CHECK(saved != nullptr && saved->shape() == t.tensor.shape(),
               "train --resume: '{}' does not hold this {} model (tensor 'model.{}' {})", ckpt, a.model, t.name,
               saved ? fmt::format("is {}, not {}", saved->shape(), t.tensor.shape()) : std::string("is missing"));
    }
    // Then a trial load of the whole training state (fit() loads it again), so that a checkpoint
    // with another optimizer or a bad tensor fails before the folder is touched.
    nn::Adam trial_opt(model.named_parameters(), {.lr = a.lr});
    Generator trial_gen(0);
    const std::int64_t ckpt_step = nn::load_training_checkpoint(ckpt, model, trial_opt, trial_gen).step;
    // A run stopped mid-epoch logged a row for the part it did; the resumed run logs that epoch
    // again when it completes it, so rows past the last complete epoch are dropped.
    const std::int64_t per_epoch = data.train.size() / a.batch + (data.train.size() % a.batch != 0);
    nn::output::keep_csv_rows_through(out + "/metrics.csv", /*column=*/1, ckpt_step / per_epoch * per_epoch);
    nn::output::keep_csv_rows_through(out + "/steps.csv", /*column=*/0, ckpt_step);
  }
  fmt::print("{}\n", model.to_string());
  {
    nlohmann::json cfg = {{"model", a.model}, {"epochs", a.epochs}, {"batch", a.batch}, {"lr", a.lr},
                          {"schedule", a.schedule}, {"seed", a.seed}, {"threads", num_threads()}, {"data", data.train.source},
                          {"max_steps", a.max_steps}, {"max_train", a.max_train}, {"parameters", model.num_parameters()}};
    nn::write_file_atomically(out + "/config.json", cfg.dump(2) + "\n");
  }
  nn::output::CsvWriter metrics(out + "/metrics.csv", {"epoch", "step", "train_loss", "test_loss", "test_accuracy", "epoch_seconds"},
                                resuming ? nn::output::CsvWriter::Mode::append : nn::output::CsvWriter::Mode::replace);
  nn::output::CsvWriter steps(out + "/steps.csv", {"step", "train_loss"},
                              resuming ? nn::output::CsvWriter::Mode::append : nn::output::CsvWriter::Mode::replace);
  // loss.svg shows the whole run: a resumed run starts from the losses logged before its checkpoint.
  nn::output::Series step_loss{"train loss (per step)", {}, {}}, test_loss{"test loss (per epoch)", {}, {}};
  if (resuming) {
    const auto logged_steps = nn::output::read_csv(out + "/steps.csv");
    step_loss.x = logged_steps.column("step");
    step_loss.y = logged_steps.column("train_loss");
    const auto logged_epochs = nn::output::read_csv(out + "/metrics.csv");
    test_loss.x = logged_epochs.column("step");
    test_loss.y = logged_epochs.column("test_loss");
  }
  cls::FitOptions fo{.epochs = a.epochs, .batch = a.batch, .lr = a.lr, .schedule = a.schedule, .seed = a.seed, .max_steps = a.max_steps,
                     .checkpoint = out + "/checkpoint.safetensors", .resume = a.resume};
  fo.on_step = [&](std::int64_t step, double loss) {
    steps.row(std::vector<double>{static_cast<double>(step), loss});
    step_loss.x.push_back(static_cast<double>(step));
    step_loss.y.push_back(loss);
  };
  fo.on_epoch = [&](const cls::EpochStats& s) {  // called before the epoch's checkpoint is committed
    metrics.row(std::vector<double>{static_cast<double>(s.epoch), static_cast<double>(s.step), s.train_loss, s.test_loss,
                                    s.test_accuracy, s.seconds});
    steps.sync();  // the epoch's rows are on disk before its checkpoint: none missing after a power loss
    metrics.sync();
    test_loss.x.push_back(static_cast<double>(s.step));
    test_loss.y.push_back(s.test_loss);
    fmt::print("epoch {}: train loss {:.5g}  test loss {:.5g}  test accuracy {:.2f}%  ({:.1f} s, {:.2f} ms/step)\n",
               s.epoch, s.train_loss, s.test_loss, 100 * s.test_accuracy, s.seconds,
               1e3 * s.seconds / static_cast<double>(std::max<std::int64_t>(1, s.step - (s.epoch - 1) * ((data.train.size() + a.batch - 1) / a.batch))));
  };
  const cls::FitResult r = [&] {
    const nn::StopOnSignal stop;  // Ctrl-C: the step ends, the checkpoint is written, the run can resume
    return cls::fit(model, data.train, data.test, fo);
  }();
  if (r.interrupted) {
    fmt::print("train: stopped by signal {} after step {}; the checkpoint holds it: continue with `train --resume --out {}`\n",
               nn::stop_signal(), r.steps, out);
    return 128 + nn::stop_signal();
  }
  nn::output::plot_svg(out + "/loss.svg", {step_loss, test_loss},
                       {.title = fmt::format("Fashion-MNIST {} ({} steps)", a.model, r.steps), .x_label = "step",
                        .y_label = "cross-entropy", .log_y = true});
  nn::save_module(model, out + "/model.safetensors", {{"model", a.model}});
  const cls::Evaluation ev = cls::evaluate(model, data.test);
  write_evaluation(out, ev, data.test, 32);
  fmt::print("run folder: {}\n", out);
  fmt::print("  loss.svg: {} steps, {} test evaluations\n", step_loss.x.size(), test_loss.x.size());
  fmt::print("  config.json metrics.csv steps.csv loss.svg confusion_matrix.csv confusion_matrix.png test_predictions.png\n");
  fmt::print("  model.safetensors (weights) checkpoint.safetensors (resumable training state)\n");
  fmt::print("test accuracy: {:.2f}%\n", 100 * ev.accuracy);
  return 0;
}

// A run folder's config.json (with at least its model name).
nlohmann::json load_run_config(const std::string& run) {
  const std::string path = run + "/config.json";
  std::error_code ec;
  TG_CHECK(fs::is_regular_file(path, ec), "no config.json in run folder '{}'", run);
  std::ifstream in(path);
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TG_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
  TG_CHECK(cfg.is_object() && cfg.contains("model"), "'{}' has no model name (a \"model\" string)", path);
  TG_CHECK(cfg["model"].is_string(),
           "'{}' is not a fashion_mnist run (its \"model\" entry is a JSON {}, not a model name: a run of another "
           "example?); pass a folder written by 'fashion_mnist train'",
           path, cfg["model"].type_name());
  return cfg;
}

// A trained run folder: its model, and whether it was trained on the synthetic shapes (then it is
// evaluated on them too).
struct TrainedRun {
  cls::Classifier model;
  bool synthetic = false;
};

TrainedRun load_run(const std::string& run) {
  const nlohmann::json cfg = load_run_config(run);
  const cls::Arch arch = cls::parse_arch(cfg["model"].get<std::string>());
  cls::Classifier model({.arch = arch, .image_size = arch == cls::Arch::fdmlp ? 14 : 28});
  nn::load_module(model, run + "/model.safetensors");
  model.eval();
  return {std::move(model), cfg.contains("data") && cfg["data"] == "synthetic-shapes"};
}

// The test set for a trained run: its own data (the synthetic shapes if it was trained on them), or
// the synthetic shapes with --synthetic. A Fashion-MNIST model whose data is missing here is an
// error, not silently scored on the shapes.
nn::data::ImageDataset test_data(const std::string& run, const TrainedRun& trained, const std::string& data_dir, bool synthetic,
                                 const char* command) {
  TG_CHECK(synthetic || trained.synthetic || !data_dir.empty() || nn::data::find_fashion_mnist(),
           "{}: the run in '{}' was trained on Fashion-MNIST, which is not found here (install dataset-fashion-mnist or pass "
           "--data FOLDER; --synthetic scores it on the synthetic shapes instead)",
           command, run);
  return cls::load_test_data(data_dir.empty() ? std::nullopt : std::optional<std::string>(data_dir), synthetic || trained.synthetic);
}

int eval(const std::string& run, const std::string& data_dir, bool synthetic) {
  TrainedRun trained = load_run(run);
  cls::Classifier& model = trained.model;
  const nn::data::ImageDataset test = test_data(run, trained, data_dir, synthetic, "eval");
  const cls::Evaluation ev = cls::evaluate(model, test);
  const Tensor cm = nn::metrics::confusion_matrix(ev.predictions, test.labels, 10);
  const auto v = cm.to_vector<std::int64_t>();
  fmt::print("{} on {} test images\n", cls::arch_name(model.config.arch), test.size());
  for (std::int64_t c = 0; c < 10; ++c) {
    std::int64_t total = 0;
    for (std::int64_t p = 0; p < 10; ++p) total += v[static_cast<std::size_t>(c * 10 + p)];
    fmt::print("  {:12s} {:6.2f}%\n", test.class_names[static_cast<std::size_t>(c)],
               100.0 * static_cast<double>(v[static_cast<std::size_t>(c * 11)]) / static_cast<double>(std::max<std::int64_t>(total, 1)));
  }
  fmt::print("test loss {:.4f}\ntest accuracy: {:.2f}%\n", ev.loss, 100 * ev.accuracy);
  return 0;
}

int predict(const std::string& run, std::int64_t count, std::int64_t first, const std::string& png, const std::string& data_dir,
            bool synthetic) {
  const std::string out = png.empty() ? run + "/predictions.png" : png;
  TrainedRun trained = load_run(run);
  nn::output::check_writable(out, "predict");  // before the work, not after it
  cls::Classifier& model = trained.model;
  nn::data::ImageDataset test = test_data(run, trained, data_dir, synthetic, "predict");
  TG_CHECK(first >= 0 && first < test.size(), "predict: --first {} is outside the {} test images", first, test.size());
  if (count > test.size() - first)
    fmt::print("predict: {} test images from --first {} (the test set ends there)\n", test.size() - first, first);
  count = std::min(count, test.size() - first);
  test.images = test.images.narrow(0, first, count);
  test.labels = test.labels.narrow(0, first, count);
  const cls::Evaluation ev = cls::evaluate(model, test);
  const auto p = ev.predictions.to_vector<std::int64_t>(), t = test.labels.to_vector<std::int64_t>();
  for (std::int64_t i = 0; i < count; ++i)
    fmt::print("test image {:5d}: predicted {:12s} true {:12s}{}\n", first + i, test.class_names[static_cast<std::size_t>(p[i])],
               test.class_names[static_cast<std::size_t>(t[i])], p[i] == t[i] ? "" : "  (wrong)");
  nn::output::GridOptions grid{.columns = 8, .scale = 3};
  for (std::int64_t i = 0; i < count; ++i) {
    grid.captions.push_back(test.class_names[static_cast<std::size_t>(p[i])].substr(0, 12));
    grid.caption_red.push_back(p[i] != t[i]);
  }
  nn::output::save_image_grid(out, test.images, grid);
  fmt::print("grid: {}\naccuracy on these images: {:.2f}%\n", out, 100 * ev.accuracy);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fashion-MNIST classifiers with tapegrad: train, evaluate and predict"};
  examples::configure(app);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  TrainArgs ta;
  CLI::App* tr = app.add_subcommand("train", "Train a classifier and write a run folder");
  tr->add_option("--model", ta.model,
                 "Architecture: mlp (784-512-512-10), cnn (2 conv + 2 linear), or fdmlp (the 196-256-128-10 feature "
                 "extractor of FD_clf, on 14 x 14 images)")
      ->check(CLI::IsMember({"mlp", "cnn", "fdmlp"}));
  tr->add_option("--epochs", ta.epochs, "Passes over the training set")->check(examples::Integer(1, 1'000'000));
  tr->add_option("--batch", ta.batch, "Batch size")->check(examples::Integer(1, 1'000'000));
  tr->add_option("--lr", ta.lr, "Adam learning rate")->check(examples::Positive);
  tr->add_option("--schedule", ta.schedule, "Learning rate over the run: cosine (decays to 0 by the last epoch) or constant")
      ->check(CLI::IsMember({"cosine", "constant"}));
  tr->add_option("--seed", ta.seed, "Seed for initialisation and batch order")->check(examples::Seed);
  tr->add_option("--out", ta.out, "Run folder (default runs/fashion_mnist-<model>)");
  tr->add_option("--data", ta.data, "Folder with the Fashion-MNIST IDX files (default: the Debian package's)");
  tr->add_flag("--synthetic", ta.synthetic, "Use the built-in synthetic shapes instead of Fashion-MNIST");
  tr->add_option("--max-steps", ta.max_steps, "Stop after this many steps (smoke runs; -1: no limit)")->check(examples::Integer(-1, 1'000'000'000'000));
  tr->add_option("--max-train", ta.max_train, "Use only the first N training images (0: all)")->check(examples::Integer(0, 1'000'000'000));
  tr->add_flag("--resume", ta.resume,
               "Continue from the run folder's checkpoint.safetensors: settings not given come from its config.json, "
               "given ones must match (--max-steps may change)");
  tr->add_flag("--overwrite", ta.overwrite, "Start a new run in a folder that holds one (else refused)");
  tr->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  std::string run, data_dir, png;
  bool synthetic = false;
  std::int64_t count = 16, first = 0;
  CLI::App* ev = app.add_subcommand("eval", "Evaluate a trained run on the test set (per-class accuracy)");
  ev->add_option("--run", run, "Run folder written by train")->required();
  ev->add_option("--data", data_dir, "Folder with the Fashion-MNIST IDX files");
  ev->add_flag("--synthetic", synthetic, "Evaluate on the synthetic shapes (always, for a run trained on them)");
  ev->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);
  CLI::App* pr = app.add_subcommand("predict", "Classify test images and write a labelled grid");
  pr->add_option("--run", run, "Run folder written by train")->required();
  pr->add_option("--count", count, "Number of test images (a grid of at most 1024)")->check(examples::Integer(1, 1024));
  pr->add_option("--first", first, "Index of the first test image")->check(examples::Integer(0, 1'000'000'000));
  pr->add_option("--png", png, "Output PNG (default <run>/predictions.png)");
  pr->add_option("--data", data_dir, "Folder with the Fashion-MNIST IDX files");
  pr->add_flag("--synthetic", synthetic, "Use the synthetic shapes (always, for a run trained on them)");
  pr->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  if (const auto status = examples::parse(app, argc, argv)) return *status;
  return examples::run(
      [&] {
        if (threads > 0) set_num_threads(threads);
        if (tr->parsed()) {
          for (const char* flag : {"--model", "--epochs", "--batch", "--lr", "--schedule", "--seed", "--data", "--synthetic",
                                   "--max-train"})
            if (tr->count(flag) > 0) ta.given.insert(flag);
          return train(ta);
        }
        if (ev->parsed()) return eval(run, data_dir, synthetic);
        return predict(run, count, first, png, data_dir, synthetic);
      },
      tr->parsed() ? "--batch or --max-train" : pr->parsed() ? "--count" : "");
}
