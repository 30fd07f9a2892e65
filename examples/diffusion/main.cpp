// Diffusion on Fashion-MNIST with tapegrad: an EDM-style UNet trained with the EDM loss, sampled with
// EDM Euler/Heun, DDIM and DDPM, and Skip-Tuning (spec techniques-B §1) as a training-free sampling
// option. Every command works on a run folder.
//
//   build/examples/diffusion train --minutes 12 --out runs/diffusion        # EMA checkpoints, loss plot, grid
//   build/examples/diffusion sample --run runs/diffusion --sampler heun --nfe 9 --rho-bottom 0.8
//   build/examples/diffusion eval --run runs/diffusion --sampler heun --nfe 9 --count 2000
//   build/examples/diffusion sweep --run runs/diffusion                     # FD_clf over rho x NFE x sampler
#include <fmt/core.h>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <sstream>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "models/classifier/train.hpp"
#include "models/diffusion/train.hpp"
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
namespace diff = tg::models::diffusion;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- run folder ------------------------------------------------------------------------------------------------

nlohmann::json config_json(const diff::UNetConfig& c) {
  return {{"image_size", c.image_size}, {"in_channels", c.in_channels}, {"channels", c.channels},
          {"blocks_per_level", c.blocks_per_level}, {"attention_levels", c.attention_levels},
          {"head_channels", c.head_channels}, {"noise_channels", c.noise_channels}, {"emb_dim", c.emb_dim},
          {"num_classes", c.num_classes}, {"dropout", c.dropout}};
}

// An integer setting of config.json within [lo, hi] (a file may hold anything: 16.5, 1e30, "16").
std::int64_t int_setting(const nlohmann::json& v, const char* key, std::int64_t lo, std::int64_t hi) {
  // JSON integers >= 0 are stored unsigned: compare those as unsigned (a value past 2^63 must not wrap).
  const bool ok = v.is_number_integer() &&
                  (v.is_number_unsigned() ? v.get<std::uint64_t>() <= std::uint64_t(hi) && std::int64_t(v.get<std::uint64_t>()) >= lo
                                          : v.get<std::int64_t>() >= lo && v.get<std::int64_t>() <= hi);
  TG_CHECK(ok, "model.{} is {}: expected an integer in {}..{}", key, v.dump(), lo, hi);
  return v.get<std::int64_t>();
}
std::vector<std::int64_t> int_list_setting(const nlohmann::json& v, const char* key, std::int64_t lo, std::int64_t hi,
                                           std::size_t max_size) {
  TG_CHECK(v.is_array() && v.size() <= max_size, "model.{} is {}: expected a list of at most {} integers", key, v.dump(),
           max_size);
  std::vector<std::int64_t> out;
  for (const auto& x : v) out.push_back(int_setting(x, key, lo, hi));
  return out;
}

// The model settings of a run's config.json, range-checked before any model is built (a bad file
// must not ask for a giant network).
diff::UNetConfig config_from_json(const nlohmann::json& j) {
  TG_CHECK(j.is_object(), "model settings are {}, not an object", j.dump());
  diff::UNetConfig c;
  c.image_size = int_setting(j.at("image_size"), "image_size", 1, 4096);
  c.in_channels = int_setting(j.at("in_channels"), "in_channels", 1, 64);
  c.channels = int_list_setting(j.at("channels"), "channels", 1, 8192, 16);
  c.blocks_per_level = int_setting(j.at("blocks_per_level"), "blocks_per_level", 1, 64);
  c.attention_levels = int_list_setting(j.at("attention_levels"), "attention_levels", 0, 15, 16);
  c.head_channels = int_setting(j.at("head_channels"), "head_channels", 1, 8192);
  c.noise_channels = int_setting(j.at("noise_channels"), "noise_channels", 0, 8192);
  c.emb_dim = int_setting(j.at("emb_dim"), "emb_dim", 0, 65536);
  c.num_classes = int_setting(j.at("num_classes"), "num_classes", 0, 100000);
  TG_CHECK(j.at("dropout").is_number(), "model.dropout is {}: expected a number", j.at("dropout").dump());
  c.dropout = j.at("dropout").get<double>();
  return c;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in = nn::open_regular_file(path, "read");  // not a directory or a FIFO (which would block)
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TG_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
}

struct Run {
  diff::UNetConfig config;
  nlohmann::json json;  // the whole config.json
  bool synthetic = false;
};

Run read_run(const std::string& dir) {
  Run r;
  r.json = read_json(dir + "/config.json");
  try {
    TG_CHECK(r.json.is_object(), "not a JSON object");
    // Another example's run folder (fashion_mnist names its model with a string): say so.
    TG_CHECK(!r.json.contains("model") || r.json["model"].is_object(),
             "this is not a diffusion run (model {}: a run of another example?); pass a folder written by 'diffusion train'",
             r.json["model"].dump());
    r.config = config_from_json(r.json.at("model"));
    r.synthetic = r.json.value("synthetic", false);
  } catch (const nlohmann::json::exception& e) {
    TG_FAIL("'{}/config.json' lacks model settings: {}", dir, e.what());
  } catch (const tg::Error& e) {
    TG_FAIL("'{}/config.json': {}", dir, e.what());
  }
  return r;
}

// The model of run folder `dir` (read as `r`) with its EMA weights (or the raw weights).
diff::UNet load_model(const std::string& dir, const Run& r, bool raw) {
  diff::UNet net(r.config);
  const std::string path = dir + (raw ? "/model.safetensors" : "/model_ema.safetensors");
  TG_CHECK(fs::exists(path), "no {} in run folder '{}' (train first)", fs::path(path).filename().string(), dir);
  nn::load_module(net, path);
  net.eval();
  return net;
}

cls::Data load_data(const std::string& folder, bool synthetic, std::int64_t max_train = 0) {
  return cls::load_data(folder.empty() ? std::nullopt : std::optional<std::string>(folder), synthetic, max_train);
}

// ---- FD_clf ------------------------------------------------------------------------------------------------------

// The noise floor compares n real test images with the other N - n: both need 2 or more.
void check_fd_count(std::int64_t n, std::int64_t test_images) {
  TG_CHECK(n >= 2 && n <= test_images - 2,
           "FD: the sample count must be between 2 and {} (the test set's {} images minus 2: the noise floor compares n "
           "real test images with the other N - n), got {}",
           test_images - 2, test_images, n);
}

struct FDContext {
  cls::Classifier fd;
  Tensor real;                                  // [N_test, 128] features of the real test images
  double floor_half = 0;                        // FD between two halves of the test set
  std::map<std::int64_t, double> floor_matched; // FD between n real test images and the other N_test - n
  std::vector<std::string> class_names;

  double matched_floor(std::int64_t n) {
    auto it = floor_matched.find(n);
    if (it != floor_matched.end()) return it->second;
    const std::int64_t N = real.shape()[0];
    check_fd_count(n, N);
    Generator gen(12345);
    const Tensor shuffled = ops::index_select(real, 0, randperm(N, gen));
    const double f = nn::metrics::frechet_distance(shuffled.narrow(0, 0, n), shuffled.narrow(0, n, N - n));
    floor_matched[n] = f;
    return f;
  }
};

FDContext make_fd(const cls::Data& data, const std::string& classifier_path) {
  FDContext c{cls::load_or_train_fd_classifier(classifier_path, data), {}, 0, {}, data.test.class_names};
  c.real = cls::fd_features(c.fd, data.test.images);  // [N_test, 128]
  c.floor_half = nn::metrics::frechet_noise_floor(c.real);
  return c;
}

struct Score {
  double fd = 0;
  double accuracy = -1;  // of the FD classifier on conditional samples (-1: unconditional)
};

Score score(FDContext& c, const diff::Generated& g, std::int64_t size) {
  NoGradGuard no_grad;
  const Tensor img = diff::to_image_space(g.x, size);  // [N, 1, 28, 28] in [0, 1]
  Score s;
  s.fd = nn::metrics::frechet_distance(cls::fd_features(c.fd, img), c.real);
  if (g.labels.defined()) s.accuracy = nn::metrics::accuracy(c.fd(cls::preprocess(c.fd.config, img)), g.labels);
  return s;
}

std::string rho_str(double r) { return fmt::format("{:g}", r); }

// The layout of sample grids (checked by check_samples_grid, drawn by save_samples).
nn::output::GridOptions samples_grid(std::int64_t columns) { return {.columns = columns, .scale = 3}; }

// A grid of generated images (model space) with the class names on the first row.
void save_samples(const std::string& path, const diff::Generated& g, std::int64_t size, const std::vector<std::string>& names,
                  std::int64_t columns) {
  nn::output::GridOptions opt = samples_grid(columns);
  if (g.labels.defined()) {
    const auto y = g.labels.to_vector<std::int64_t>();
    for (std::size_t i = 0; i < y.size(); ++i)
      opt.captions.push_back(static_cast<std::int64_t>(i) < columns ? names[static_cast<std::size_t>(y[i])].substr(0, 9) : "");
  }
  nn::output::save_image_grid(path, diff::to_image_space(g.x, size), opt);
}

// Refuses a grid of `count` samples that save_samples could not write (checked before sampling).
void check_samples_grid(std::int64_t count, std::int64_t size, std::int64_t columns) {
  const std::int64_t shown = diff::to_image_space(zeros({1, 1, size, size}), size).shape()[2];  // the images as drawn
  try {
    nn::output::check_image_grid(count, shown, shown, samples_grid(columns), true);
  } catch (const tg::Error&) {
    TG_FAIL("sample: a grid of {} samples of {} x {} would be too large for one PNG; lower --count", count, shown, shown);
  }
}

// One image of the samples as an n x n mosaic [1, n*28, n*28].
Tensor mosaic(const Tensor& images, std::int64_t n) {
  return images.narrow(0, 0, n * n).reshape({n, n, 28, 28}).permute({0, 2, 1, 3}).reshape({1, n * 28, n * 28});
}

// ---- memory -------------------------------------------------------------------------------------------------------
// Lower bounds (f32 bytes) of what a UNet run allocates, counted from the network's structure, for
// examples::check_memory: refusing on them never refuses a run that fits. (On the default model,
// 16 x 16 with channels 32,64,64, a training batch takes about 4.5 times the activation bound.)

// The second 3 x 3 conv (C -> C) of every residual block: per level blocks_per_level in the
// encoder and blocks_per_level + 1 in the decoder, and the two middle blocks.
double unet_parameter_bytes(const diff::UNetConfig& c) {
  double n = 0;
  for (const std::int64_t ch : c.channels) n += 9.0 * static_cast<double>(2 * c.blocks_per_level + 1) * static_cast<double>(ch * ch);
  n += 2 * 9.0 * static_cast<double>(c.channels.back() * c.channels.back());
  return 4 * n;
}

// One sample's activations at the full resolution. Training: the top level's skips (the stem and
// its blocks), kept until the decoder, and 4 maps every residual block there saves for the
// backward. Sampling: the input and the output of one conv.
double unet_activation_bytes(const diff::UNetConfig& c, bool training) {
  const double map = 4.0 * static_cast<double>(c.channels.front() * c.image_size * c.image_size);
  return map * (training ? static_cast<double>(c.blocks_per_level + 1 + 4 * (2 * c.blocks_per_level + 1)) : 2.0);
}

// Sampling `count` images in batches: the weights, the initial noise, the batches' outputs and
// their concatenation (each count images), and one batch's activations.
double sampling_bytes(const diff::UNetConfig& c, std::int64_t count, std::int64_t batch) {
  const double image = 4.0 * static_cast<double>(c.in_channels * c.image_size * c.image_size);
  return unet_parameter_bytes(c) + 3 * static_cast<double>(count) * image +
         static_cast<double>(std::min(batch, count)) * unet_activation_bytes(c, false);
}

// ---- train --------------------------------------------------------------------------------------------------------

// Network evaluations per sample accepted on the command line (DDPM's classic schedule has 1000).
constexpr std::int64_t kMaxNfe = 10000;
// Skip-Tuning scales the skips down (the paper: 0.5-1); up to 4 leaves room to try amplifying them.
// Guidance weights: usual values are 1-10.
constexpr double kMaxRho = 4, kMaxGuidance = 20;
// Bounds of the sizes on the command line (the images are 28 x 28; memory is checked separately).
constexpr std::int64_t kMaxSize = 256, kMaxCount = 1'000'000;

struct TrainArgs {
  std::string out = "runs/diffusion", data;
  bool synthetic = false, resume = false, overwrite = false, unconditional = false;
  double minutes = 12, lr = 1e-3, lr_min_ratio = 0.1, ema = 0.999, label_dropout = 0.1, dropout = 0.0;
  std::int64_t steps = -1, batch = 64, warmup = 200, size = 16, blocks = 1, max_train = 0, checkpoint_every = 500,
               grid_nfe = 19, head_channels = 64;
  std::vector<std::int64_t> channels{32, 64, 64}, attention{2};
  std::uint64_t seed = 0;
  std::set<std::string> given;  // the options given on the command line ("--lr", ...)
};

// For a resume: the training settings not given on the command line come from the run's
// config.json, the given ones must match it. --steps and --minutes may grow (they extend a run),
// and are taken from it when neither is given, so that a plain --resume finishes the run as it
// was started.
void take_training_settings(TrainArgs& a, const nlohmann::json& cfg) {
  examples::ResumeSettings s(cfg, a.out + "/config.json", a.given);
  const bool steps_given = a.given.count("--steps") > 0, minutes_given = a.given.count("--minutes") > 0;
  // The recorded budget first (a given one is compared with it below).
  const std::int64_t steps = a.steps;
  const double minutes = a.minutes;
  {
    const std::set<std::string> none;
    examples::ResumeSettings recorded(cfg, a.out + "/config.json", none);
    recorded.integer("--steps", "steps", a.steps, -1, 1'000'000'000);
    recorded.number("--minutes", "minutes", a.minutes, 0, std::numeric_limits<double>::max(), /*open_low=*/true);
    TG_CHECK(a.steps != 0, "train --resume: '{}/config.json' has \"steps\": 0", a.out);
  }
  // A budget may grow, in the unit the run was started with: a run of N steps keeps counting
  // steps, a timed run keeps its clock (the learning-rate schedule follows that unit).
  if (a.steps > 0) {
    TG_CHECK(!minutes_given || steps_given,
             "train --resume: the run in '{}' trains a number of steps ({}); extend it with --steps (not --minutes)", a.out,
             a.steps);
    if (steps_given) {
      TG_CHECK(steps >= a.steps, "train --resume: --steps {} is below the run's {} steps; a budget may only grow", steps,
               a.steps);
      a.steps = steps;
    }
  } else {
    TG_CHECK(!steps_given || steps == -1,
             "train --resume: the run in '{}' has a time budget ({} minutes); extend it with --minutes (not --steps)", a.out,
             a.minutes);
    if (minutes_given) {
      TG_CHECK(minutes >= a.minutes, "train --resume: --minutes {} is below the run's budget of {} minutes; a budget may only grow",
               minutes, a.minutes);
      a.minutes = minutes;
    }
  }
  fmt::print("resuming with a budget of {}\n",
             a.steps > 0 ? fmt::format("{} steps", a.steps) : fmt::format("{} minutes in all", a.minutes));
  s.integer("--batch", "batch", a.batch, 1, kMaxCount);
  s.number("--lr", "lr", a.lr, 0, std::numeric_limits<double>::max(), /*open_low=*/true);
  s.number("--lr-min-ratio", "lr_min_ratio", a.lr_min_ratio, 0, 1);
  s.integer("--warmup", "warmup", a.warmup, 0, 1'000'000'000);
  s.number("--ema", "ema", a.ema, 0, 1);
  s.number("--label-dropout", "label_dropout", a.label_dropout, 0, 1);
  s.seed("--seed", "seed", a.seed);
  s.integer("--max-train", "max_train", a.max_train, 0, 1'000'000'000);
  s.data(a.data, a.synthetic);
  s.finish();
  // --grid-nfe only draws samples.png: a given one replaces the recorded one (older runs have none).
  if (!a.given.count("--grid-nfe") && cfg.contains("grid_nfe")) {
    const nlohmann::json& v = cfg["grid_nfe"];
    TG_CHECK(v.is_number_integer() && v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= kMaxNfe,
             "train --resume: '{}/config.json' has \"grid_nfe\": {}, not a whole number in [1, {}]", a.out, v.dump(), kMaxNfe);
    a.grid_nfe = v.get<std::int64_t>();
  }
}

// For a resume: model flags given on the command line must describe the run's model.
void check_model_flags(const TrainArgs& a, const diff::UNetConfig& mc) {
  std::vector<std::string> differ;
  auto check = [&](const char* flag, bool same, const std::string& run, const std::string& given) {
    if (a.given.count(flag) && !same) differ.push_back(fmt::format("{} {} (not {})", flag, run, given));
  };
  check("--size", a.size == mc.image_size, std::to_string(mc.image_size), std::to_string(a.size));
  check("--channels", a.channels == mc.channels, fmt::format("{}", fmt::join(mc.channels, ",")),
        fmt::format("{}", fmt::join(a.channels, ",")));
  check("--blocks", a.blocks == mc.blocks_per_level, std::to_string(mc.blocks_per_level), std::to_string(a.blocks));
  check("--attention", a.attention == mc.attention_levels, fmt::format("{}", fmt::join(mc.attention_levels, ",")),
        fmt::format("{}", fmt::join(a.attention, ",")));
  check("--head-channels", a.head_channels == mc.head_channels, std::to_string(mc.head_channels),
        std::to_string(a.head_channels));
  check("--unconditional", a.unconditional == (mc.num_classes == 0), mc.num_classes == 0 ? "set" : "not set",
        a.unconditional ? "set" : "not set");
  check("--dropout", a.dropout == mc.dropout, fmt::format("{}", mc.dropout), fmt::format("{}", a.dropout));
  TG_CHECK(differ.empty(),
           "train --resume: the model in '{}' has {}; resume without model flags (they come from its config.json) or "
           "train into a new --out folder",
           a.out, fmt::join(differ, ", "));
}

int train(TrainArgs a) {
  TG_CHECK(a.steps != 0, "train: --steps 0 trains nothing; give a number of steps, or -1 for the --minutes budget");
  const bool start_over =
      examples::check_new_run_folder(a.out, {"checkpoint.safetensors", "model_ema.safetensors"}, a.resume, a.overwrite);
  const std::string cfg_path = a.out + "/config.json";
  diff::UNetConfig mc;
  std::optional<Run> previous;  // the run being resumed, read once
  if (a.resume) {
    examples::check_resumable(a.out, {"model.safetensors", "model_ema.safetensors"});
    previous = read_run(a.out);
    mc = previous->config;
    check_model_flags(a, mc);
    fmt::print("resuming: model settings from {}\n", cfg_path);
    take_training_settings(a, previous->json);
  } else {
    for (std::int64_t level : a.attention)  // named by its flags here (the UNet would only name the config fields)
      TG_CHECK(level >= 0 && level < static_cast<std::int64_t>(a.channels.size()),
               "train: --attention level {} is outside 0..{} (--channels {} has {} levels); --attention '' for none", level,
               static_cast<std::int64_t>(a.channels.size()) - 1, fmt::join(a.channels, ","), a.channels.size());
    mc.image_size = a.size;
    mc.channels = a.channels;
    mc.blocks_per_level = a.blocks;
    mc.attention_levels = a.attention;
    mc.head_channels = a.head_channels;
    mc.num_classes = a.unconditional ? 0 : 10;
    mc.dropout = a.dropout;
  }
  config_from_json(config_json(mc));  // settings this program could not read back are refused now
  try {  // a bad --grid-nfe (given, or recorded by the resumed run) fails now, not after training
    diff::sampler_for_nfe(diff::SamplerKind::heun, a.grid_nfe);
  } catch (const Error& e) {
    TG_FAIL("train: --grid-nfe {}: {}", a.grid_nfe, e.what());
  }
  const cls::Data data = load_data(a.data, a.synthetic, a.max_train);
  fmt::print("data: {} ({} training images)\n", data.train.source, data.train.size());
  TG_CHECK(a.batch <= data.train.size(), "train: --batch {} is larger than the {} training images{}; lower --batch{}", a.batch,
           data.train.size(), a.max_train > 0 ? fmt::format(" (--max-train {})", a.max_train) : "",
           a.max_train > 0 ? " or raise --max-train" : "");
  {  // the weights with their gradients, Adam's two moments and the EMA; the images at the model's
     // size (twice while they are converted); one batch's activations
    const double images = 4.0 * static_cast<double>(data.train.size() * mc.in_channels * mc.image_size * mc.image_size);
    examples::check_memory(5 * unet_parameter_bytes(mc) + 2 * images +
                               static_cast<double>(std::min(a.batch, data.train.size())) * unet_activation_bytes(mc, true),
                           fmt::format("training a UNet with channels {} at {} x {} on {} images in batches of {}",
                                       fmt::join(mc.channels, ","), mc.image_size, mc.image_size, data.train.size(), a.batch),
                           previous ? "--batch or --max-train (the model settings come from the resumed run)"
                                    : "--size, --channels, --blocks, --batch or --max-train");
  }
  const Tensor images = diff::to_model_space(data.train.images, mc.image_size);  // [N, 1, S, S] in [-1, 1]
  Generator init(a.seed);
  diff::UNet model(mc, &init);
  mc = model.config;  // with the derived widths
  nn::EMA ema(model, a.ema);
  // Resuming: the checkpoint is read (and validated) before the run folder is touched, and the
  // metrics logged after it (by a run killed between checkpoints) are dropped, not repeated.
  const std::string ckpt_path = a.out + "/checkpoint.safetensors";
  const bool resuming = a.resume && fs::exists(ckpt_path);
  if (a.resume && !resuming)
    fmt::print("train --resume: no checkpoint in '{}' yet; starting the run over with its settings\n", a.out);
  // The settings were taken from (or checked against) config.json; the data only now.
  if (resuming) examples::check_resumed_data(previous->json, a.out, data.train.source);
  std::int64_t ckpt_step = 0;
  if (resuming) {  // a trial load into this model (fit() loads it again): a checkpoint of another model fails here
    nn::Adam trial_opt(model.named_parameters(), {.lr = a.lr});
    Generator trial_gen(0);
    ckpt_step = nn::load_training_checkpoint(ckpt_path, model, trial_opt, trial_gen, &ema).step;
  }
  fmt::print("{}\nparameters: {}  skips: {}\n", model.to_string(), model.num_parameters(), model.num_skips());
  fs::create_directories(a.out);  // only now that the settings are known to be good
  const nn::output::RunFolderLock lock(a.out);  // one writer per run folder; taken before anything is changed
  if (start_over)
    examples::remove_run_files(a.out, {"checkpoint.safetensors", "model.safetensors", "model_ema.safetensors", "samples.png"},
                               {"eval.csv", "sweep", "samples_*"});
  if (resuming) nn::output::keep_csv_rows_through(a.out + "/metrics.csv", /*column=*/0, ckpt_step);  // step is column 0
  {
    nlohmann::json cfg = {{"model", config_json(mc)}, {"minutes", a.minutes}, {"steps", a.steps}, {"batch", a.batch},
                          {"lr", a.lr}, {"lr_min_ratio", a.lr_min_ratio}, {"warmup", a.warmup}, {"ema", a.ema}, {"label_dropout", a.label_dropout},
                          {"seed", a.seed}, {"threads", num_threads()}, {"data", data.train.source},
                          {"synthetic", data.synthetic}, {"max_train", a.max_train}, {"grid_nfe", a.grid_nfe},
                          {"parameters", model.num_parameters()}, {"skips", model.num_skips()},
                          {"edm", {{"sigma_data", 0.5}, {"p_mean", -1.2}, {"p_std", 1.2}}}};
    nn::write_file_atomically(cfg_path, cfg.dump(2) + "\n");
  }
  // A resumed run keeps the metrics logged so far.
  nn::output::CsvWriter metrics(a.out + "/metrics.csv", {"step", "loss", "lr", "seconds"},
                                resuming ? nn::output::CsvWriter::Mode::append : nn::output::CsvWriter::Mode::replace);
  double acc = 0;
  std::int64_t n_acc = 0;
  const std::int64_t every = 20;
  double last_log = 0;
  diff::StepStats last{};  // the last step trained (for the final, partial row)
  diff::TrainOptions o{.batch = a.batch, .lr = a.lr, .warmup = a.warmup, .minutes = a.steps >= 0 ? 0.0 : a.minutes,
                       .max_steps = a.steps, .seed = a.seed};
  o.edm.label_dropout = a.label_dropout;
  o.min_lr_ratio = a.lr_min_ratio;
  o.class_conditional = mc.num_classes > 0;
  o.checkpoint = a.out + "/checkpoint.safetensors";
  o.checkpoint_every = a.checkpoint_every;
  o.resume = a.resume;
  o.on_step = [&](const diff::StepStats& s) {
    last = s;
    acc += s.loss;
    ++n_acc;
    if (s.step % every == 0) {
      metrics.row(std::vector<double>{static_cast<double>(s.step), acc / static_cast<double>(n_acc), s.lr, s.seconds});
      metrics.sync();  // on disk before a checkpoint at this step is committed (every 20 steps: cheap)
      acc = 0;
      n_acc = 0;
    }
    if (s.seconds - last_log >= 60) {
      last_log = s.seconds;
      fmt::print("step {:6d}  {:6.1f} min  loss {:.4f}\n", s.step, s.seconds / 60, s.loss);
      std::fflush(stdout);
    }
  };
  o.on_finish = [&] {
    if (n_acc == 0) return;  // the steps after the last full row of 20 (a short or time-limited run)
    metrics.row(std::vector<double>{static_cast<double>(last.step), acc / static_cast<double>(n_acc), last.lr, last.seconds});
    metrics.sync();  // before the final checkpoint, as every row
  };
  const diff::TrainResult r = [&] {
    const nn::StopOnSignal stop;  // Ctrl-C: the step ends, the checkpoint is written, the run can resume
    return diff::fit(model, ema, images, data.train.labels, o);
  }();
  if (r.interrupted) {
    fmt::print("train: stopped by signal {} after step {}; the checkpoint holds it: continue with `train --resume --out {}`\n",
               nn::stop_signal(), r.steps, a.out);
    return 128 + nn::stop_signal();
  }
  // Loss plot from the whole metrics file (resumed runs included).
  nn::output::Series loss{"EDM loss (mean of the steps since the previous row, up to 20)", {}, {}};
  {
    std::ifstream in(a.out + "/metrics.csv");
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::stringstream ss(line);
      std::string step, l;
      if (std::getline(ss, step, ',') && std::getline(ss, l, ',')) {
        loss.x.push_back(std::stod(step));
        loss.y.push_back(std::stod(l));
      }
    }
  }
  nn::output::plot_svg(a.out + "/loss.svg", {loss},
                       {.title = fmt::format("EDM UNet on {} ({} steps)", data.synthetic ? "synthetic shapes" : "Fashion-MNIST", r.steps),
                        .x_label = "step", .y_label = "loss", .log_y = true});
  nn::save_module(model, a.out + "/model.safetensors");
  diff::UNet averaged(mc);
  ema.copy_to(averaged);
  nn::save_module(averaged, a.out + "/model_ema.safetensors", {{"ema_decay", fmt::format("{}", a.ema)}, {"steps", std::to_string(r.steps)}});
  averaged.eval();
  const auto t0 = Clock::now();
  const diff::Generated g = diff::generate(
      averaged, {.sampler = diff::sampler_for_nfe(diff::SamplerKind::heun, a.grid_nfe), .count = 80, .batch = 80, .noise_seed = 1});
  save_samples(a.out + "/samples.png", g, mc.image_size, data.test.class_names, 10);
  fmt::print("trained {} steps in {:.1f} min ({:.2f} steps/s); {}\n", r.steps, r.seconds / 60,
             static_cast<double>(r.steps) / std::max(r.seconds, 1e-9),
             r.final_loss_steps > 0 ? fmt::format("final loss (mean of the last {} steps) {:.4f}", r.final_loss_steps, r.final_loss)
                                    : std::string(resuming ? "no steps left to train (the run had finished)" : "no steps were run"));
  fmt::print("run folder: {}\n  config.json metrics.csv loss.svg samples.png (Heun, {} NFE, {:.1f} s)\n", a.out, a.grid_nfe, seconds_since(t0));
  fmt::print("  model_ema.safetensors (EMA weights, used for sampling) model.safetensors checkpoint.safetensors (resumable)\n");
  return 0;
}

// ---- sample / eval ---------------------------------------------------------------------------------------------

// diff::generate with a progress bar on stderr.
diff::Generated generate_with_progress(const diff::UNet& net, diff::GenerateOptions options, const std::string& label) {
  nn::output::ProgressBar bar(options.count, label);
  options.on_batch = [&](std::int64_t done, std::int64_t) { bar.update(done); };
  diff::Generated g = diff::generate(net, options);
  bar.finish();
  return g;
}

struct SampleArgs {
  std::string run = "runs/diffusion", sampler = "heun", png, data, fd_classifier;
  std::int64_t nfe = 19, count = 0, seeds = 1, batch = 500, fd_train = 0;  // count 0: 80 (sample), 2000 (eval)
  double eta = 0, rho_bottom = 1, rho_top = 1, guidance = 1;
  std::uint64_t seed = 1;
  bool raw = false, unconditional = false, synthetic = false;
};

diff::GenerateOptions generate_options(const SampleArgs& a, std::uint64_t seed) {
  TG_CHECK(a.eta == 0 || a.sampler == "ddim", "--eta applies to the ddim sampler only (got --sampler {})", a.sampler);
  TG_CHECK(a.guidance == 1 || !a.unconditional,
           "--guidance {} mixes class-conditional and unconditional predictions; it cannot go with --unconditional", a.guidance);
  diff::GenerateOptions g;
  g.sampler = diff::sampler_for_nfe(diff::parse_sampler(a.sampler), a.nfe, a.eta);
  g.count = a.count;
  g.batch = a.batch;
  g.noise_seed = seed;
  g.guidance = a.guidance;
  g.class_conditional = !a.unconditional;
  return g;
}

int sample_cmd(SampleArgs a) {
  if (a.count == 0) a.count = 80;
  const Run run = read_run(a.run);
  examples::check_memory(sampling_bytes(run.config, a.count, a.batch), fmt::format("sampling {} images", a.count),
                         "--count or --batch");
  check_samples_grid(a.count, run.config.image_size, 10);  // before the work, not after it
  const diff::GenerateOptions options = generate_options(a, a.seed);
  // Settings away from their defaults are in the name, so that different runs do not overwrite each other.
  std::string tag = fmt::format("{}_nfe{}_rho{}", a.sampler, diff::expected_nfe(options.sampler), rho_str(a.rho_bottom));
  if (a.rho_top != 1) tag += fmt::format("-{}", rho_str(a.rho_top));
  if (a.guidance != 1) tag += fmt::format("_g{}", rho_str(a.guidance));
  if (a.eta != 0) tag += fmt::format("_eta{}", rho_str(a.eta));
  if (a.unconditional) tag += "_uncond";
  if (a.raw) tag += "_raw";
  if (a.seed != 1) tag += fmt::format("_seed{}", a.seed);
  if (a.count != 80) tag += fmt::format("_n{}", a.count);
  const std::string out = a.png.empty() ? fmt::format("{}/samples_{}.png", a.run, tag) : a.png;
  nn::output::check_writable(out, "sample");  // before the work, not after it
  diff::UNet net = load_model(a.run, run, a.raw);
  net.set_skip_tuning(a.rho_bottom, a.rho_top);
  const auto t0 = Clock::now();
  const diff::Generated g = generate_with_progress(net, options, "sampling");
  TG_CHECK(g.nfe == diff::expected_nfe(options.sampler), "sample: {} made {} evaluations instead of {}", a.sampler, g.nfe,
           diff::expected_nfe(options.sampler));
  save_samples(out, g, net.config.image_size, run.synthetic ? nn::data::synthetic_shape_classes() : nn::data::fashion_mnist_classes(), 10);
  fmt::print("{} samples, {} with {} NFE, rho_bottom {} rho_top {} ({} skips), guidance {}, {} weights, noise seed {}: "
             "{:.1f} s\ngrid: {}\n",
             a.count, a.sampler, g.nfe, a.rho_bottom, a.rho_top, net.num_skips(), a.guidance, a.raw ? "raw" : "EMA", a.seed,
             seconds_since(t0), out);
  return 0;
}

int eval_cmd(SampleArgs a) {
  if (a.count == 0) a.count = 2000;
  generate_options(a, a.seed);  // bad sampler settings fail before the FD classifier and the data are loaded
  const Run run = read_run(a.run);
  examples::check_memory(sampling_bytes(run.config, a.count, a.batch), fmt::format("sampling {} images", a.count),
                         "--count or --batch");
  diff::UNet net = load_model(a.run, run, a.raw);
  net.set_skip_tuning(a.rho_bottom, a.rho_top);
  TG_CHECK(a.guidance == 1 || (net.config.num_classes > 0 && !a.unconditional),
           "eval: guidance {} needs a class-conditional model and class-conditional sampling", a.guidance);
  const cls::Data data = load_data(a.data, a.synthetic || run.synthetic, a.fd_train);
  check_fd_count(a.count, data.test.size());
  // Opened before the work: a run folder eval cannot write to fails now. One line per evaluation.
  nn::output::CsvWriter csv(a.run + "/eval.csv", {"sampler", "nfe", "eta", "rho_bottom", "rho_top", "guidance", "weights", "conditional",
                                                  "seed", "count", "seeds", "fd_clf", "class_accuracy", "noise_floor_halves",
                                                  "noise_floor_matched"},
                            nn::output::CsvWriter::Mode::append);
  const std::string classifier = a.fd_classifier.empty() ? cls::default_fd_classifier_path() : a.fd_classifier;
  FDContext fd = make_fd(data, classifier);
  std::vector<double> fds;
  double acc = 0;
  const auto t0 = Clock::now();
  for (std::int64_t s = 0; s < a.seeds; ++s) {
    const std::uint64_t seed = a.seed + static_cast<std::uint64_t>(s);
    const diff::Generated g = generate_with_progress(net, generate_options(a, seed), fmt::format("sampling, noise seed {}", seed));
    const Score sc = score(fd, g, net.config.image_size);
    fds.push_back(sc.fd);
    acc += sc.accuracy / static_cast<double>(a.seeds);
    fmt::print("noise seed {}: FD_clf {:.3f}{}\n", seed, sc.fd, sc.accuracy >= 0 ? fmt::format("  class accuracy {:.1f}%", 100 * sc.accuracy) : "");
  }
  const double mean = std::accumulate(fds.begin(), fds.end(), 0.0) / static_cast<double>(fds.size());
  const double floor_n = fd.matched_floor(a.count);
  fmt::print("{} NFE {} rho_bottom {} rho_top {}: FD_clf {:.3f} on {} samples x {} seeds ({:.1f} s)\n", a.sampler, a.nfe,
             a.rho_bottom, a.rho_top, mean, a.count, a.seeds, seconds_since(t0));
  fmt::print("noise floor: {:.3f} (test halves, 5000 vs 5000), {:.3f} ({} real test images vs the other {})\n", fd.floor_half,
             floor_n, a.count, fd.real.shape()[0] - a.count);
  csv.row(std::vector<std::string>{a.sampler, std::to_string(a.nfe), rho_str(a.eta), rho_str(a.rho_bottom), rho_str(a.rho_top),
                                   rho_str(a.guidance), a.raw ? "raw" : "ema", a.unconditional ? "no" : "yes", std::to_string(a.seed),
                                   std::to_string(a.count), std::to_string(a.seeds), fmt::format("{:.4f}", mean),
                                   acc >= 0 ? fmt::format("{:.4f}", acc) : std::string("n/a"), fmt::format("{:.4f}", fd.floor_half),
                                   fmt::format("{:.4f}", floor_n)});
  return 0;
}

// ---- sweep ----------------------------------------------------------------------------------------------------

struct SweepArgs {
  std::string run = "runs/diffusion", data, fd_classifier, out;
  std::vector<double> rhos{1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5};
  double rho_top = 1.0;
  std::vector<std::int64_t> heun{3, 5, 9, 19}, ddim{5, 10}, euler{4, 6, 10, 20}, ddpm;  // spec techniques-B §1.8
  std::int64_t count = 1000, seeds = 2, batch = 500, denoise_count = 1000, fd_train = 0;
  std::vector<double> denoise_sigmas{0.05, 0.2, 0.5, 1.0, 2.0, 5.0};
  bool synthetic = false, resume = false;
};

struct Cell {
  std::string sampler;
  std::int64_t nfe = 0;
  double rho = 1;
  std::vector<double> fd, acc;  // per noise seed
  double mean() const { return std::accumulate(fd.begin(), fd.end(), 0.0) / static_cast<double>(fd.size()); }
  double accuracy() const { return std::accumulate(acc.begin(), acc.end(), 0.0) / static_cast<double>(acc.size()); }
};

// FNV-1a: a fixed, portable 64-bit hash of bytes (continuing from h).
std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t h = 14695981039346656037ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// A hash of every weight's bytes: sweep results are reused only for the models that made them.
std::string weights_fingerprint(nn::Module& net) {
  std::uint64_t h = fnv1a(nullptr, 0);
  for (const nn::NamedTensor& t : net.state()) {
    const Tensor c = t.tensor.contiguous();
    h = fnv1a(c.raw_data(), static_cast<std::size_t>(c.numel()) * c.element_size(), h);
  }
  return fmt::format("{:016x}", h);
}

// Mean and sample standard deviation.
std::pair<double, double> mean_std(const std::vector<double>& v) {
  const double m = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1)) : 0.0};
}

// Rows of a CSV file with a header, as name -> value maps.
std::vector<std::map<std::string, std::string>> read_csv(const std::string& path) {
  std::vector<std::map<std::string, std::string>> rows;
  std::ifstream in(path);
  std::string line;
  std::vector<std::string> header;
  auto split = [](const std::string& l) {
    std::vector<std::string> f;
    std::stringstream ss(l);
    std::string x;
    while (std::getline(ss, x, ',')) f.push_back(x);
    return f;
  };
  if (!std::getline(in, line)) return rows;
  header = split(line);
  for (std::size_t number = 2; std::getline(in, line); ++number) {
    const auto f = split(line);
    TG_CHECK(f.size() == header.size(), "'{}' line {} has {} fields for {} columns", path, number, f.size(), header.size());
    std::map<std::string, std::string> r;
    for (std::size_t i = 0; i < f.size(); ++i) r[header[i]] = f[i];
    rows.push_back(r);
  }
  return rows;
}

int sweep_cmd(const SweepArgs& a) {
  // The plan is checked whole before anything is loaded or computed.
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> plan;
  if (!a.heun.empty()) plan.push_back({"heun", a.heun});
  if (!a.ddim.empty()) plan.push_back({"ddim", a.ddim});
  if (!a.euler.empty()) plan.push_back({"euler", a.euler});
  if (!a.ddpm.empty()) plan.push_back({"ddpm", a.ddpm});
  TG_CHECK(!plan.empty() && !a.rhos.empty(), "sweep: nothing to do (no samplers or no rho values)");
  TG_CHECK(std::find(a.rhos.begin(), a.rhos.end(), 1.0) != a.rhos.end(), "sweep: the rho values must include the baseline 1");
  for (const auto& [sname, nfes] : plan)
    for (std::int64_t nfe : nfes) {
      TG_CHECK(nfe >= 1 && nfe <= kMaxNfe, "sweep: {} NFE {} is outside 1..{}", sname, nfe, kMaxNfe);
      diff::sampler_for_nfe(diff::parse_sampler(sname), nfe);
    }
  for (const double rho : a.rhos)
    TG_CHECK(rho >= 0 && rho <= kMaxRho, "sweep: --rhos values must be in [0, {}], got {}", kMaxRho, rho);
  for (const double sigma : a.denoise_sigmas)
    TG_CHECK(std::isfinite(sigma) && sigma > 0, "sweep: --denoise-sigmas must be positive, got {}", sigma);
  const Run run = read_run(a.run);
  {  // a cell's samples, or the denoising table's images (f64: clean, noise, denoised, batches)
    const double denoise = 4 * 8.0 * static_cast<double>(a.denoise_count * run.config.image_size * run.config.image_size);
    examples::check_memory(sampling_bytes(run.config, a.count, a.batch) + denoise,
                           fmt::format("sweeping with {} samples per cell and {} denoising images", a.count, a.denoise_count),
                           "--count, --batch or --denoise-count");
  }
  diff::UNet net = load_model(a.run, run, false);
  const std::string out = a.out.empty() ? a.run + "/sweep" : a.out;
  const cls::Data data = load_data(a.data, a.synthetic || run.synthetic, a.fd_train);
  check_fd_count(a.count, data.test.size());
  fs::create_directories(out);
  const nn::output::RunFolderLock lock(out);  // one sweep per folder
  FDContext fd = make_fd(data, a.fd_classifier.empty() ? cls::default_fd_classifier_path() : a.fd_classifier);
  const double floor_n = fd.matched_floor(a.count);
  const std::int64_t S = net.config.image_size;
  std::int64_t total_nfe = 0, pairs = 0;
  for (auto& [s, nfes] : plan)
    for (auto n : nfes) {
      total_nfe += n;
      ++pairs;
    }
  fmt::print("sweep: {} rho values x {} (sampler, NFE) cells x {} seeds x {} samples = {} image-evaluations; {} skips\n",
             a.rhos.size(), pairs, a.seeds, a.count, total_nfe * static_cast<std::int64_t>(a.rhos.size()) * a.seeds * a.count,
             net.num_skips());
  fmt::print("noise floor: {:.3f} (test halves), {:.3f} ({} real vs the other {})\n", fd.floor_half, floor_n, a.count,
             fd.real.shape()[0] - a.count);

  // Per-seed results: reused from an earlier (interrupted) sweep with --resume, else computed.
  const std::string runs_csv = out + "/sweep_runs.csv";
  using Key = std::tuple<std::string, std::int64_t, std::string, std::string, std::string, std::int64_t>;
  std::map<Key, std::pair<double, double>> done;  // (sampler, nfe, rho, rho_top, seed, count) -> (fd, accuracy)
  // The UNet, the FD classifier and the data: any of them changes every FD value.
  const std::string model_id = weights_fingerprint(net) + "-" + weights_fingerprint(fd.fd) + "-" +
                               fmt::format("{:016x}", fnv1a(data.test.source.data(), data.test.source.size()));
  // Resuming appends to the per-seed results (they are kept); a new sweep starts the file over.
  // Opened before the earlier results are read: appending drops a last row cut off by an interruption.
  nn::output::CsvWriter raw(runs_csv, {"sampler", "nfe", "rho_bottom", "rho_top", "seed", "count", "fd_clf", "class_accuracy", "seconds", "model"},
                            a.resume ? nn::output::CsvWriter::Mode::append : nn::output::CsvWriter::Mode::replace);
  if (a.resume) {
    std::size_t line = 1;  // read_csv refuses rows with a wrong field count, so row i is line i + 1
    for (auto& r : read_csv(runs_csv)) {
      ++line;
      TG_CHECK(r.count("model") && r.at("model") == model_id,
               "sweep --resume: '{}' holds results of another model (line {}: weights {}, this run's are {}); sweep into "
               "another --out folder",
               runs_csv, line, r.count("model") ? r.at("model") : std::string("not recorded"), model_id);
      try {
        done[{r.at("sampler"), std::stoll(r.at("nfe")), r.at("rho_bottom"), r.at("rho_top"), r.at("seed"),
              std::stoll(r.at("count"))}] = {std::stod(r.at("fd_clf")), std::stod(r.at("class_accuracy"))};
      } catch (const std::exception& e) {  // std::out_of_range / invalid_argument from at() and sto*
        TG_FAIL("sweep --resume: line {} of '{}' is malformed ({})", line, runs_csv, e.what());
      }
    }
    fmt::print("resume: {} earlier results in {}\n", done.size(), runs_csv);
  }
  for (const char* f : {"/sweep.csv", "/denoise_error.csv"}) fs::remove(out + f);
  std::vector<Cell> cells;
  const auto t_all = Clock::now();
  auto options = [&](const std::string& sname, std::int64_t nfe, std::int64_t count, std::uint64_t seed) {
    diff::GenerateOptions go;
    go.sampler = diff::sampler_for_nfe(diff::parse_sampler(sname), nfe);
    go.count = count;
    go.batch = a.batch;
    go.noise_seed = seed;
    return go;
  };
  for (auto& [sname, nfes] : plan)
    for (std::int64_t nfe : nfes)
      for (double rho : a.rhos) {
        Cell c{sname, nfe, rho, {}, {}};
        net.set_skip_tuning(rho, a.rho_top);
        for (std::int64_t s = 0; s < a.seeds; ++s) {
          const std::uint64_t seed = 1000 + static_cast<std::uint64_t>(s);  // the same noise for every rho
          const Key key{sname, nfe, rho_str(rho), rho_str(a.rho_top), std::to_string(seed), a.count};
          if (auto it = done.find(key); it != done.end()) {
            c.fd.push_back(it->second.first);
            c.acc.push_back(it->second.second);
            continue;
          }
          const auto t0 = Clock::now();
          const diff::Generated g = diff::generate(net, options(sname, nfe, a.count, seed));
          TG_CHECK(g.nfe == nfe, "sweep: {} made {} evaluations instead of {}", sname, g.nfe, nfe);
          const Score sc = score(fd, g, S);
          c.fd.push_back(sc.fd);
          c.acc.push_back(sc.accuracy);
          raw.row(std::vector<std::string>{sname, std::to_string(nfe), rho_str(rho), rho_str(a.rho_top), std::to_string(seed),
                                           std::to_string(a.count), fmt::format("{}", sc.fd), fmt::format("{}", sc.accuracy),
                                           fmt::format("{:.1f}", seconds_since(t0)), model_id});
        }
        const auto [m, sd] = mean_std(c.fd);
        fmt::print("{:5s} NFE {:3d} rho_bottom {:4}: FD_clf {:8.3f} +- {:6.3f}{}   [{:.0f} s elapsed]\n", sname, nfe, rho_str(rho), m,
                   sd, c.accuracy() >= 0 ? fmt::format("  acc {:5.1f}%", 100 * c.accuracy()) : std::string(), seconds_since(t_all));
        std::fflush(stdout);
        cells.push_back(c);
      }
  net.clear_skip_tuning();

  // Tables: FD per cell (mean +- std over the noise seeds), and the best rho's gain over rho = 1,
  // paired over the seeds (same initial noise), so that seed-to-seed variation cancels.
  nn::output::CsvWriter summary(out + "/sweep.csv", {"sampler", "nfe", "rho_bottom", "rho_top", "fd_mean", "fd_std_over_seeds",
                                                      "gain_vs_rho1_paired_mean", "gain_vs_rho1_paired_std", "class_accuracy",
                                                      "seeds", "count", "noise_floor_halves", "noise_floor_matched"});
  auto cell = [&](const std::string& sname, std::int64_t nfe, double rho) -> const Cell& {
    for (const Cell& c : cells)
      if (c.sampler == sname && c.nfe == nfe && c.rho == rho) return c;
    TG_FAIL("sweep: no cell {} {} {}", sname, nfe, rho);
  };
  auto paired_gain = [](const Cell& base, const Cell& c) {
    std::vector<double> d;
    for (std::size_t i = 0; i < c.fd.size(); ++i) d.push_back(base.fd[i] - c.fd[i]);
    return mean_std(d);
  };
  for (const Cell& c : cells) {
    const auto [m, sd] = mean_std(c.fd);
    const auto [g, gs] = paired_gain(cell(c.sampler, c.nfe, 1.0), c);
    summary.row(std::vector<std::string>{c.sampler, std::to_string(c.nfe), rho_str(c.rho), rho_str(a.rho_top), fmt::format("{:.4f}", m),
                                         fmt::format("{:.4f}", sd), fmt::format("{:.4f}", g), fmt::format("{:.4f}", gs),
                                         c.accuracy() >= 0 ? fmt::format("{:.4f}", c.accuracy()) : std::string("n/a"),
                                         std::to_string(a.seeds), std::to_string(a.count),
                                         fmt::format("{:.4f}", fd.floor_half), fmt::format("{:.4f}", floor_n)});
  }
  std::string md = fmt::format("FD_clf (lower is better; mean ± std over {} noise seeds of {} samples each, the same noise for every "
                               "rho; rho_top = {}). Noise floor: {:.3f} (two halves of the test set), {:.3f} ({} real test images "
                               "vs the other {}). Gain: FD(rho = 1) - FD(best rho), paired over the seeds.\n\n",
                               a.seeds, a.count, rho_str(a.rho_top), fd.floor_half, floor_n, a.count, fd.real.shape()[0] - a.count);
  if (a.rho_top != 1)
    md += fmt::format("The rho = 1 column is rho_bottom = 1 with rho_top = {}: already a tuned model, not the untuned baseline.\n\n",
                      rho_str(a.rho_top));
  md += "| sampler | NFE |";
  for (double r : a.rhos) md += fmt::format(" rho={} |", rho_str(r));
  md += " best rho | gain (paired) |\n|---|---|";
  for (std::size_t i = 0; i < a.rhos.size() + 2; ++i) md += "---|";
  md += "\n";
  std::map<std::string, nn::output::Series> base_series, best_series;
  std::vector<std::tuple<std::string, std::int64_t, double>> bests;
  for (auto& [sname, nfes] : plan)
    for (std::int64_t nfe : nfes) {
      const Cell& base = cell(sname, nfe, 1.0);
      const Cell* best = &base;
      for (double r : a.rhos)
        if (cell(sname, nfe, r).mean() < best->mean()) best = &cell(sname, nfe, r);
      md += fmt::format("| {} | {} |", sname, nfe);
      for (double r : a.rhos) {
        const auto [m, sd] = mean_std(cell(sname, nfe, r).fd);
        md += &cell(sname, nfe, r) == best ? fmt::format(" **{:.2f}** ±{:.2f} |", m, sd) : fmt::format(" {:.2f} ±{:.2f} |", m, sd);
      }
      const auto [g, gs] = paired_gain(base, *best);
      md += fmt::format(" {} | {:.2f} ±{:.2f} ({:.1f}%) |\n", rho_str(best->rho), g, gs, 100 * g / base.mean());
      bests.emplace_back(sname, nfe, best->rho);
      base_series[sname].name = sname + " rho=1";
      base_series[sname].x.push_back(static_cast<double>(nfe));
      base_series[sname].y.push_back(base.mean());
      best_series[sname].name = sname + " best rho";
      best_series[sname].x.push_back(static_cast<double>(nfe));
      best_series[sname].y.push_back(best->mean());
    }
  if (net.config.num_classes > 0) {  // (an unconditional model has no requested class)
    md += "\nClass accuracy (%) of the FD classifier on the conditional samples (does the sample show the requested class?):\n\n"
          "| sampler | NFE |";
    for (double r : a.rhos) md += fmt::format(" rho={} |", rho_str(r));
    md += "\n|---|---|";
    for (std::size_t i = 0; i < a.rhos.size(); ++i) md += "---|";
    md += "\n";
    for (auto& [sname, nfes] : plan)
      for (std::int64_t nfe : nfes) {
        md += fmt::format("| {} | {} |", sname, nfe);
        for (double r : a.rhos) md += fmt::format(" {:.1f} |", 100 * cell(sname, nfe, r).accuracy());
        md += "\n";
      }
  }

  // Pixel vs feature denoising error with and without Skip-Tuning (the paper: pixel error rises,
  // feature error falls at intermediate sigma).
  if (a.denoise_count > 0 && !a.denoise_sigmas.empty()) {
    NoGradGuard no_grad;
    const std::int64_t n = std::min(a.denoise_count, data.test.size());
    const Tensor x0 = diff::to_model_space(data.test.images.narrow(0, 0, n), S).to(DType::f64);  // [n, 1, S, S]
    const Tensor y = data.test.labels.narrow(0, 0, n);
    const Tensor f0 = cls::fd_features(fd.fd, diff::to_image_space(x0, S));  // [n, 128]
    Generator g(777);
    const Tensor noise = randn(x0.shape(), DType::f64, g);
    nn::output::CsvWriter dcsv(out + "/denoise_error.csv", {"sigma", "rho_bottom", "pixel_mse", "feature_mse"});
    md += fmt::format("\nDenoising error of D(x0 + sigma n; sigma) on {} test images: pixel MSE (model space, [-1, 1]) / "
                      "feature MSE (FD classifier features), by rho_bottom:\n\n| sigma |", n);
    for (double r : a.rhos) md += fmt::format(" rho={} |", rho_str(r));
    md += "\n|---|";
    for (std::size_t i = 0; i < a.rhos.size(); ++i) md += "---|";
    md += "\n";
    for (double sigma : a.denoise_sigmas) {
      md += fmt::format("| {} |", sigma);
      for (double rho : a.rhos) {
        net.set_skip_tuning(rho, a.rho_top);
        Tensors parts;
        for (std::int64_t s = 0; s < n; s += a.batch) {
          const std::int64_t m = std::min(a.batch, n - s);
          const diff::Denoiser D = diff::unet_denoiser(net, net.config.num_classes > 0 ? y.narrow(0, s, m) : Tensor());
          parts.push_back(D(x0.narrow(0, s, m) + noise.narrow(0, s, m) * sigma, sigma));
        }
        const Tensor d = ops::cat(parts, 0);
        const double pix = ops::mean(ops::square(d - x0)).item();
        const double feat = ops::mean(ops::square(cls::fd_features(fd.fd, diff::to_image_space(d, S)) - f0)).item();
        dcsv.row(std::vector<double>{sigma, rho, pix, feat});
        md += fmt::format(" {:.4f} / {:.3f} |", pix, feat);
      }
      md += "\n";
    }
    net.clear_skip_tuning();
  }
  std::ofstream(out + "/sweep.md") << md;
  std::vector<nn::output::Series> series;
  for (auto& [sname, nfes] : plan) {
    series.push_back(base_series[sname]);
    series.push_back(best_series[sname]);
  }
  nn::output::plot_svg(out + "/fd_vs_nfe.svg", series,
                       {.title = fmt::format("FD_clf vs NFE, with and without Skip-Tuning (noise floor {:.2f})", floor_n),
                        .x_label = "NFE", .y_label = "FD_clf", .log_y = true});
  // Side-by-side grids: rho = 1 | best rho, from the same 64 initial noises (seed 1000).
  for (const auto& [sname, nfe, rho] : bests) {
    Tensors halves;
    for (double r : {1.0, rho}) {
      net.set_skip_tuning(r, a.rho_top);
      halves.push_back(mosaic(diff::to_image_space(diff::generate(net, options(sname, nfe, 64, 1000)).x, S), 8));  // [1, 224, 224]
    }
    net.clear_skip_tuning();
    nn::output::GridOptions go;
    go.columns = 2;
    go.scale = 2;
    go.padding = 8;
    go.captions = {a.rho_top == 1 ? std::string("rho_bottom = 1 (baseline)") : fmt::format("rho_bottom = 1, rho_top = {}", rho_str(a.rho_top)),
                   fmt::format("rho_bottom = {} (best)", rho_str(rho))};
    nn::output::save_image_grid(fmt::format("{}/compare_{}_nfe{}.png", out, sname, nfe), ops::stack(halves, 0), go);
  }
  fmt::print("\n{}\n", md);
  const bool denoise = a.denoise_count > 0 && !a.denoise_sigmas.empty();
  fmt::print("sweep folder: {}\n  sweep.md sweep.csv sweep_runs.csv{} fd_vs_nfe.svg compare_<sampler>_nfe<N>.png\n"
             "total {:.1f} min\n", out, denoise ? " denoise_error.csv" : "", seconds_since(t_all) / 60);
  return 0;
}

// A comma-separated list of numbers ("" or "none": empty). Every item must be a whole number of
// the type (no trailing junk); with `distinct`, no value may repeat.
template <class T>
std::vector<T> parse_list(const std::string& s, const char* what, bool distinct = true) {
  std::vector<T> v;
  if (s == "none" || s.find_first_not_of(" \t") == std::string::npos) return v;  // an empty list
  // An empty item ("8,,16", "8,16,") is refused: a typo, not a shorter list.
  std::stringstream ss(s + ",");
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    TG_CHECK(first != std::string::npos, "{}: '{}' has an empty item", what, s);
    item = item.substr(first, last - first + 1);
    T value{};
    const auto [end, err] = std::from_chars(item.data(), item.data() + item.size(), value);
    TG_CHECK(err == std::errc() && end == item.data() + item.size() && (!std::is_floating_point_v<T> || std::isfinite(static_cast<double>(value))),
             "{}: '{}' is not a{} number", what, item, std::is_floating_point_v<T> ? " finite" : "n integer");
    TG_CHECK(!distinct || std::find(v.begin(), v.end(), value) == v.end(), "{}: {} is listed twice", what, item);
    v.push_back(value);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Diffusion (EDM UNet) on Fashion-MNIST with tapegrad: train, sample, evaluate FD_clf, Skip-Tuning sweep"};
  examples::configure(app);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  TrainArgs ta;
  std::string channels = "32,64,64", attention = "2";
  CLI::App* tr = app.add_subcommand("train", "Train the UNet (EDM loss, EMA) for a time budget and write a run folder");
  tr->add_option("--minutes", ta.minutes, "Wall-clock training budget in minutes")->check(examples::Positive);
  tr->add_option("--steps", ta.steps, "Train exactly this many steps instead of a time budget (reproducible; -1: use --minutes)")
      ->check(examples::Integer(-1, 1'000'000'000));
  tr->add_option("--out", ta.out, "Run folder");
  tr->add_option("--size", ta.size, "Model image size: 16 (28->14 pooled, padded; the spec's setting) or 32 (28 padded)")
      ->check(examples::Integer(14, kMaxSize));
  tr->add_option("--channels", channels, "Channels per resolution level, comma separated");
  tr->add_option("--blocks", ta.blocks, "Residual blocks per level (the decoder has one more)")->check(examples::Integer(1, 64));
  tr->add_option("--attention", attention, "Levels with self-attention (0 = top), comma separated; empty for none");
  tr->add_option("--head-channels", ta.head_channels, "Channels per attention head")->check(examples::Integer(1, 8192));
  tr->add_flag("--unconditional", ta.unconditional, "No class conditioning (default: class-conditional with label dropout)");
  tr->add_option("--label-dropout", ta.label_dropout, "Probability of dropping the label (classifier-free guidance)")->check(examples::Between(0.0, 1.0));
  tr->add_option("--dropout", ta.dropout, "Dropout inside the residual blocks")->check(examples::Between(0.0, 0.9));
  tr->add_option("--batch", ta.batch, "Batch size")->check(examples::Integer(1, kMaxCount));
  tr->add_option("--lr", ta.lr, "Adam learning rate (after the warmup)")->check(examples::Positive);
  tr->add_option("--warmup", ta.warmup, "Linear learning-rate warmup steps")->check(examples::Integer(0, 1'000'000'000));
  tr->add_option("--lr-min-ratio", ta.lr_min_ratio, "Cosine decay (over --steps, or over the time budget) to lr * this; 1: constant")
      ->check(examples::Between(0.0, 1.0));
  tr->add_option("--ema", ta.ema, "Decay of the weight EMA used for sampling (ramped up as min(decay, (1+t)/(10+t)))")->check(examples::Between(0.0, 1.0));
  tr->add_option("--checkpoint-every", ta.checkpoint_every, "Steps between checkpoints")->check(examples::Integer(1, 1'000'000'000));
  tr->add_option("--grid-nfe", ta.grid_nfe, "NFE of the Heun samples drawn into samples.png at the end (odd)")
      ->check(examples::Integer(1, kMaxNfe));
  tr->add_option("--seed", ta.seed, "Seed for the initialisation, batch order and noise")->check(examples::Seed);
  tr->add_option("--data", ta.data, "Folder with the Fashion-MNIST IDX files (default: the Debian package's)");
  tr->add_flag("--synthetic", ta.synthetic, "Use the built-in synthetic shapes instead of Fashion-MNIST");
  tr->add_option("--max-train", ta.max_train, "Use only the first N training images (0: all)")->check(examples::Integer(0, 1'000'000'000));
  tr->add_flag("--resume", ta.resume,
               "Continue from the run folder's checkpoint.safetensors: settings not given come from its config.json, "
               "given ones must match (--steps, or --minutes for a timed run, may grow; a longer --steps also stretches "
               "the cosine decay)");
  tr->add_flag("--overwrite", ta.overwrite,
               "Start a new run in a folder that holds one (else refused); the old run's eval.csv, sweep/ and samples_*.png go too");
  tr->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  SampleArgs sa;
  auto add_sampling = [&](CLI::App* c, bool for_eval) {
    c->add_option("--run", sa.run, "Run folder written by train");
    c->add_option("--sampler", sa.sampler, "heun | euler (EDM ODE), ddim (eta), ddpm (ancestral)")
        ->check(CLI::IsMember({"heun", "euler", "ddim", "ddpm"}));
    c->add_option("--nfe", sa.nfe, "Network evaluations per sample (Heun: odd, N steps = (NFE + 1) / 2)")
        ->check(examples::Integer(1, kMaxNfe));
    c->add_option("--eta", sa.eta, "DDIM eta (0: deterministic; other samplers take none)")->check(examples::Between(0, 1));
    c->add_option("--rho-bottom", sa.rho_bottom, "Skip-Tuning: scale of the deepest skip (off when both rhos are 1)")
        ->check(examples::Between(0, kMaxRho));
    c->add_option("--rho-top", sa.rho_top, "Skip-Tuning: scale of the skip next to the output (linear in between)")
        ->check(examples::Between(0, kMaxRho));
    c->add_option("--guidance", sa.guidance, "Classifier-free guidance weight (1: plain conditional, 0: unconditional)")
        ->check(examples::Between(0, kMaxGuidance));
    c->add_flag("--unconditional", sa.unconditional, "Sample without labels (the 'no label' embedding)");
    c->add_option("--count", sa.count,
                  for_eval ? "Samples per seed (at most the test images - 2; >= 1000 for a meaningful FD)"
                           : "Samples in the grid (up to what one PNG holds: ~30000 at 16 x 16)")
        ->check(examples::Integer(for_eval ? 2 : 1, kMaxCount))
        ->default_str(for_eval ? "2000" : "80");
    c->add_option("--batch", sa.batch, "Samples per network batch")->check(examples::Integer(1, kMaxCount));
    c->add_option("--seed", sa.seed, "Seed of the initial noise")->check(examples::Seed);
    c->add_flag("--raw", sa.raw, "Use the raw weights instead of the EMA");
    c->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);
  };
  CLI::App* sm = app.add_subcommand("sample", "Draw samples into a PNG grid (one class per column)");
  add_sampling(sm, false);
  sm->add_option("--png", sa.png,
                 "Output PNG (default <run>/samples_<sampler>_nfe<N>_rho<r>[...].png, with every non-default setting in the name)");
  CLI::App* ev = app.add_subcommand("eval", "FD_clf of generated samples against the test set, with its noise floor");
  add_sampling(ev, true);
  ev->add_option("--seeds", sa.seeds, "Independent noise sets (seed, seed + 1, ...)")->check(examples::Integer(1, 1'000'000));
  ev->add_option("--data", sa.data, "Folder with the Fashion-MNIST IDX files");
  ev->add_flag("--synthetic", sa.synthetic, "Evaluate against the synthetic shapes");
  ev->add_option("--fd-classifier", sa.fd_classifier, "FD_clf feature extractor file (default $TAPEGRAD_FD_CLASSIFIER or runs/fd_classifier/fdmlp.safetensors; trained if missing)");
  ev->add_option("--fd-train", sa.fd_train, "Training images for the FD classifier when it must be trained (0: all)")
      ->check(examples::Integer(0, 1'000'000'000));

  SweepArgs wa;
  std::string rhos = "1,0.95,0.9,0.85,0.8,0.7,0.6,0.5", heun = "3,5,9,19", ddim = "5,10", euler = "4,6,10,20", ddpm, sigmas = "0.05,0.2,0.5,1,2,5";
  CLI::App* sw = app.add_subcommand("sweep", "Skip-Tuning experiment: FD_clf over rho_bottom x NFE x sampler from one model");
  sw->add_option("--run", wa.run, "Run folder written by train");
  sw->add_option("--out", wa.out, "Output folder (default <run>/sweep)");
  sw->add_option("--rhos", rhos, "rho_bottom values, comma separated");
  sw->add_option("--rho-top", wa.rho_top, "rho_top for every cell")->check(examples::Between(0, kMaxRho));
  sw->add_option("--heun-nfe", heun, "Heun NFE values (odd), comma separated; none to skip");
  sw->add_option("--ddim-nfe", ddim, "DDIM (eta = 0) NFE values; none to skip");
  sw->add_option("--euler-nfe", euler, "EDM Euler NFE values; none to skip");
  sw->add_option("--ddpm-nfe", ddpm, "DDPM ancestral NFE values; none to skip");
  sw->add_option("--count", wa.count, "Samples per cell and seed (at most the test images - 2)")->check(examples::Integer(2, kMaxCount));
  sw->add_option("--seeds", wa.seeds, "Noise sets per cell (the same for every rho)")->check(examples::Integer(1, 1'000'000));
  sw->add_option("--batch", wa.batch, "Samples per network batch")->check(examples::Integer(1, kMaxCount));
  sw->add_option("--denoise-count", wa.denoise_count, "Test images for the pixel/feature denoising-error table (0: skip)")
      ->check(examples::Integer(0, kMaxCount));
  sw->add_option("--denoise-sigmas", sigmas, "Noise levels of the denoising-error table");
  sw->add_option("--data", wa.data, "Folder with the Fashion-MNIST IDX files");
  sw->add_flag("--synthetic", wa.synthetic, "Evaluate against the synthetic shapes");
  sw->add_flag("--resume", wa.resume, "Reuse the per-seed results already in <out>/sweep_runs.csv (an interrupted sweep)");
  sw->add_option("--fd-classifier", wa.fd_classifier, "FD_clf feature extractor file (default as eval)");
  sw->add_option("--fd-train", wa.fd_train, "Training images for the FD classifier when it must be trained (0: all)")
      ->check(examples::Integer(0, 1'000'000'000));
  sw->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  if (const auto status = examples::parse(app, argc, argv)) return *status;
  const char* lower = tr->parsed()   ? "--batch, --size, --channels or --max-train"
                      : sw->parsed() ? "--batch, --count or --denoise-count"
                                     : "--batch or --count";
  return examples::run(
      [&] {
        if (threads > 0) set_num_threads(threads);
        if (tr->parsed()) {
          for (const char* flag : {"--batch", "--lr", "--lr-min-ratio", "--warmup", "--ema", "--label-dropout", "--seed",
                                   "--data", "--synthetic", "--max-train", "--steps", "--minutes", "--size", "--channels",
                                   "--blocks", "--attention", "--head-channels", "--unconditional", "--dropout"})
            if (tr->count(flag) > 0) ta.given.insert(flag);
          ta.channels = parse_list<std::int64_t>(channels, "--channels", /*distinct=*/false);
          ta.attention = parse_list<std::int64_t>(attention, "--attention");
          return train(ta);
        }
        if (sm->parsed()) return sample_cmd(sa);
        if (ev->parsed()) return eval_cmd(sa);
        wa.rhos = parse_list<double>(rhos, "--rhos");
        wa.heun = parse_list<std::int64_t>(heun, "--heun-nfe");
        wa.ddim = parse_list<std::int64_t>(ddim, "--ddim-nfe");
        wa.euler = parse_list<std::int64_t>(euler, "--euler-nfe");
        wa.ddpm = parse_list<std::int64_t>(ddpm, "--ddpm-nfe");
        wa.denoise_sigmas = parse_list<double>(sigmas, "--denoise-sigmas");
        return sweep_cmd(wa);
      },
      lower);
}
