// Multimodal rotary positions (spec techniques-A §1): which position scheme lets a causal transformer
// find a patch's 2-D neighbours in images of sizes it never saw?
//
//   build/examples/rope_positions experiment --out runs/rope_positions   # the "causal neighbour" task, 4 variants
//   build/examples/rope_positions compat --out runs/rope_positions       # text-only: flat1d vs tv, bit for bit
//   build/examples/rope_positions show --scheme tv --layout text:3,image:2x3,text:2 --start 1
//
// experiment: sequences [BOS] [IMG] patches(h x w) [/IMG] [EOS]; each patch is an 8-d vector, "marked"
// (probability 0.3: pattern (1,1,1,1,0,0,0,0)) or not, plus N(0, 0.1^2) noise. The target at each patch
// is the 4-way class (is the patch above marked?, is the patch to the left marked?), which a causal
// model can answer (both neighbours precede the patch in raster order). Each variant trains the same
// model (C = 64, 2 layers, 4 heads, RoPE base 1000) from the same seed on the same data, on sizes
// h, w in {2, 3, 4}, and is evaluated per bit in distribution and on unseen sizes (w in {5, 6},
// h in {2..6}; and h in {5, 6}, w in {2..4}).
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "models/transformer/transformer.hpp"
#include "nn/checkpoint.hpp"
#include "nn/optim.hpp"
#include "nn/output.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "examples/common/cli.hpp"

using namespace tg;
namespace fs = std::filesystem;
namespace tf = tg::models::transformer;

namespace {

// A diverged run stops (before its step, and before any result file of it is written).
void check_finite_loss(double loss, const std::string& what, std::int64_t step, double lr) {
  if (!std::isfinite(loss))
    nn::training_diverged(what, "loss", loss, fmt::format("at step {} (learning rate {:g})", step, lr), "try a smaller --lr");
}

// ---- the causal-neighbour task --------------------------------------------------------------------------------

enum Token : std::int64_t { BOS = 0, EOS = 1, IMG = 2, IMG_END = 3 };
constexpr std::int64_t kPatchDim = 8;

struct ExperimentArgs {
  std::string variants = "flat1d,tie_v1,tv,mrope2d", out = "runs/rope_positions";
  std::int64_t steps = 1500, batch = 32, eval = 256, warmup = 50;
  std::int64_t dim = 64, layers = 2, heads = 4;
  double lr = 3e-3, weight_decay = 0.01, base = 1000.0, p_mark = 0.3, noise = 0.1;
  std::uint64_t seed = 0;
  bool overwrite = false;
};

// The files an experiment writes into its folder (besides model_<variant>.safetensors).
const std::vector<std::string> kExperimentFiles = {
    "config.json",          "losses.csv",         "loss.svg",           "accuracy.csv",       "accuracy.md",
    "accuracy_by_size.csv", "accuracy_by_row.csv", "accuracy_above.svg", "accuracy_left.svg"};

struct Batch {
  tf::Inputs in;  // tokens [B, T], patches [B, T, 8], is_patch [B, T], positions [B, T, A]
  Tensor target;  // [B, T] i64: class 2 * above + left at patches, -100 elsewhere
};

// B sequences of the given sizes, right-padded with [EOS] tokens to the longest (causal attention:
// padding after a sequence never changes its outputs). The random draws do not depend on the
// position scheme, so every variant sees the same data.
Batch make_batch(const std::vector<std::pair<std::int64_t, std::int64_t>>& sizes, const nn::PositionConfig& pc,
                 Generator& gen, double p_mark, double noise) {
  const std::int64_t B = static_cast<std::int64_t>(sizes.size());
  std::int64_t T = 0;
  for (const auto& [h, w] : sizes) T = std::max(T, 4 + h * w);
  const std::int64_t A = nn::PositionBuilder(pc).axes();
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(B * T), EOS), target(tokens.size(), -100);
  std::vector<float> patches(static_cast<std::size_t>(B * T * kPatchDim), 0.0f);
  std::vector<bool> is_patch(tokens.size(), false);
  std::vector<double> positions;
  positions.reserve(static_cast<std::size_t>(B * T * A));
  for (std::int64_t b = 0; b < B; ++b) {
    const auto [h, w] = sizes[static_cast<std::size_t>(b)];
    nn::PositionBuilder pb(pc);
    pb.add_text(1).add_image(h, w, /*markers=*/true).add_text(1);
    pb.add_text(T - pb.size());  // padding
    positions.insert(positions.end(), pb.data().begin(), pb.data().end());
    std::vector<bool> marked(static_cast<std::size_t>(h * w));
    for (std::size_t i = 0; i < marked.size(); ++i) marked[i] = gen.uniform() < p_mark;
    auto at = [&](std::int64_t t) { return static_cast<std::size_t>(b * T + t); };
    tokens[at(0)] = BOS;
    tokens[at(1)] = IMG;
    tokens[at(2 + h * w)] = IMG_END;
    for (std::int64_t r = 0; r < h; ++r)
      for (std::int64_t c = 0; c < w; ++c) {
        const std::int64_t t = 2 + r * w + c;
        const bool m = marked[static_cast<std::size_t>(r * w + c)];
        for (std::int64_t k = 0; k < kPatchDim; ++k)
          patches[at(t) * kPatchDim + static_cast<std::size_t>(k)] =
              static_cast<float>((m && k < 4 ? 1.0 : 0.0) + noise * gen.normal());
        const bool above = r > 0 && marked[static_cast<std::size_t>((r - 1) * w + c)];
        const bool left = c > 0 && marked[static_cast<std::size_t>(r * w + c - 1)];
        tokens[at(t)] = BOS;  // unused at patches
        is_patch[at(t)] = true;
        target[at(t)] = 2 * above + left;
      }
  }
  Batch out;
  out.in.tokens = from_vector(tokens, {B, T});
  out.in.patches = from_vector(patches, {B, T, kPatchDim});
  out.in.is_patch = from_vector(is_patch, {B, T});
  out.in.positions = from_vector(positions, {B, T, A});
  out.target = from_vector(target, {B, T});
  return out;
}

tf::Config experiment_config(const ExperimentArgs& a, std::int64_t axes) {
  return {.vocab = 4, .patch_dim = kPatchDim, .outputs = 4, .dim = a.dim, .layers = a.layers, .heads = a.heads,
          .axes = axes, .rope = {.base = a.base, .layout = ops::RotaryLayout::interleaved}};
}

// Correct-prediction counts at the patches of one image size.
struct Counts {
  std::int64_t patches = 0, above = 0, left = 0, both = 0;
  std::int64_t interior_above_n = 0, interior_above = 0;  // patches with a neighbour above (rows >= 2)
  std::int64_t interior_left_n = 0, interior_left = 0;    // patches with a neighbour to the left (cols >= 2)
  Counts& operator+=(const Counts& o) {
    patches += o.patches, above += o.above, left += o.left, both += o.both;
    interior_above_n += o.interior_above_n, interior_above += o.interior_above;
    interior_left_n += o.interior_left_n, interior_left += o.interior_left;
    return *this;
  }
  static double rate(std::int64_t k, std::int64_t n) { return n ? static_cast<double>(k) / static_cast<double>(n) : 0.0; }
};

// The counts of one image size, in total and per row.
struct SizeEval {
  Counts total;
  std::vector<Counts> rows;  // [h]
};

SizeEval evaluate_size(const tf::Transformer& model, const nn::PositionConfig& pc, std::int64_t h, std::int64_t w,
                       const ExperimentArgs& a) {
  NoGradGuard no_grad;
  Generator gen(a.seed + 1000 + static_cast<std::uint64_t>(h * 100 + w));  // the same sequences for every variant
  SizeEval e{{}, std::vector<Counts>(static_cast<std::size_t>(h))};
  for (std::int64_t done = 0; done < a.eval; done += 256) {
    const std::int64_t n = std::min<std::int64_t>(256, a.eval - done);
    const Batch bt = make_batch(std::vector<std::pair<std::int64_t, std::int64_t>>(static_cast<std::size_t>(n), {h, w}),
                                pc, gen, a.p_mark, a.noise);
    const auto pred = ops::argmax(model(bt.in), 2).to_vector<std::int64_t>();  // [n, T]
    const auto tgt = bt.target.to_vector<std::int64_t>();
    const std::int64_t T = bt.target.shape()[1];
    for (std::int64_t b = 0; b < n; ++b)
      for (std::int64_t r = 0; r < h; ++r)
        for (std::int64_t col = 0; col < w; ++col) {
          const auto i = static_cast<std::size_t>(b * T + 2 + r * w + col);
          const std::int64_t p = pred[i], t = tgt[i];
          const bool ok_above = (p >> 1) == (t >> 1), ok_left = (p & 1) == (t & 1);
          for (Counts* c : {&e.total, &e.rows[static_cast<std::size_t>(r)]}) {
            ++c->patches;
            c->above += ok_above, c->left += ok_left, c->both += p == t;
            if (r > 0) ++c->interior_above_n, c->interior_above += ok_above;
            if (col > 0) ++c->interior_left_n, c->interior_left += ok_left;
          }
        }
  }
  return e;
}

struct VariantResult {
  std::string name;
  std::vector<double> losses;
  std::map<std::pair<std::int64_t, std::int64_t>, Counts> by_size;  // (h, w) -> counts
  std::map<std::pair<std::int64_t, std::int64_t>, Counts> by_row;   // (h, row) -> counts over the widths 2..6
  double seconds = 0;
};

VariantResult run_variant(const std::string& name, const ExperimentArgs& a) {
  VariantResult res;
  res.name = name;
  const nn::PositionConfig pc = nn::parse_positions(name);
  const std::int64_t axes = nn::PositionBuilder(pc).axes();
  Generator init(a.seed), data(a.seed + 1);
  tf::Transformer model(experiment_config(a, axes), &init);
  nn::AdamW opt(model.named_parameters(), {.lr = a.lr, .weight_decay = a.weight_decay});
  const std::int64_t train_sizes[] = {2, 3, 4};
  nn::output::ProgressBar bar(a.steps, fmt::format("{:8s}", name));
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t step = 0; step < a.steps; ++step) {
    std::vector<std::pair<std::int64_t, std::int64_t>> sizes;
    for (std::int64_t b = 0; b < a.batch; ++b) sizes.emplace_back(train_sizes[data.randint(0, 3)], train_sizes[data.randint(0, 3)]);
    const Batch bt = make_batch(sizes, pc, data, a.p_mark, a.noise);
    const std::int64_t B = bt.target.shape()[0], T = bt.target.shape()[1];
    const Tensor logits = model(bt.in);  // [B, T, 4]
    const Tensor loss = ops::cross_entropy(logits.reshape({B * T, 4}), bt.target.reshape({B * T}));
    opt.set_lr(a.lr * nn::warmup_cosine_schedule(step, a.warmup, a.steps, 0.1));
    const double l = loss.item();
    check_finite_loss(l, fmt::format("experiment: variant {}", name), step + 1, opt.lr());
    opt.zero_grad();
    loss.backward();
    opt.step();
    res.losses.push_back(l);
    bar.update(step + 1, l);
  }
  nn::check_finite_parameters(model, fmt::format("experiment: variant {}", name),
                              fmt::format("after step {} (learning rate {:g})", a.steps, opt.lr()), "try a smaller --lr");
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bar.finish(fmt::format("{}: {} steps in {:.1f} s, final loss {:.4f}", name, a.steps, res.seconds, res.losses.back()));
  model.eval();
  for (std::int64_t h = 2; h <= 6; ++h)
    for (std::int64_t w = 2; w <= 6; ++w) {
      const SizeEval e = evaluate_size(model, pc, h, w, a);
      res.by_size[{h, w}] = e.total;
      for (std::int64_t r = 0; r < h; ++r) res.by_row[{h, r + 1}] += e.rows[static_cast<std::size_t>(r)];
    }
  nn::save_module(model, a.out + "/model_" + name + ".safetensors", {{"positions", name}});
  return res;
}

// The evaluation splits: in distribution, unseen widths (the spec's OOD set), unseen heights.
struct Split {
  std::string key, name;  // CSV key, table label
  bool (*member)(std::int64_t h, std::int64_t w);
};
const Split kSplits[] = {
    {"in_dist", "in-dist (h, w in 2..4)", [](std::int64_t h, std::int64_t w) { return h <= 4 && w <= 4; }},
    {"ood_wide", "OOD wide (w in 5..6, h in 2..6)", [](std::int64_t, std::int64_t w) { return w >= 5; }},
    {"ood_tall", "OOD tall (h in 5..6, w in 2..4)", [](std::int64_t h, std::int64_t w) { return h >= 5 && w <= 4; }},
};

// Comma-separated items, trimmed of spaces; an empty item ("tv,,flat1d", a trailing comma) is an
// error naming `what`, and so is an empty list.
std::vector<std::string> split_variants(const std::string& s, const char* what) {
  std::vector<std::string> v;
  std::stringstream ss(s + ",");
  for (std::string item; std::getline(ss, item, ',');) {
    const auto first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    TG_CHECK(first != std::string::npos, "{}: '{}' has an empty item", what, s);
    v.push_back(item.substr(first, last - first + 1));
  }
  return v;
}

// Positions `show` prints at most (each one a line).
constexpr std::int64_t kMaxShown = 1'000'000;

// A whole decimal integer in 0..kMaxShown (no sign junk, no trailing characters), else an error naming `what`.
std::int64_t parse_count(const std::string& text, const std::string& what) {
  std::int64_t v = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), v);
  TG_CHECK(err == std::errc() && end == text.data() + text.size() && v >= 0 && v <= kMaxShown,
           "{}: '{}' is not a whole number in [0, {}]", what, text, kMaxShown);
  return v;
}

std::string pct(double x) { return fmt::format("{:.1f}", 100 * x); }

// A lower bound of what training a transformer takes (f32 bytes), for examples::check_memory: the
// attention and MLP matrices (12 dim^2 per layer) with their gradients and AdamW's two moments, and
// 8 activations of `tokens` x dim per layer saved for the backward (attention is fused: no T^2).
double training_bytes(std::int64_t dim, std::int64_t layers, std::int64_t tokens) {
  const double d = static_cast<double>(dim), l = static_cast<double>(layers);
  return 4.0 * (4 * 12 * d * d * l + 8 * static_cast<double>(tokens) * d * l);
}

int experiment(const ExperimentArgs& a) {
  examples::check_memory(training_bytes(a.dim, a.layers, a.batch * 8),  // sequences of at least 8 tokens
                         fmt::format("training a {} x {} transformer on batches of {}", a.layers, a.dim, a.batch),
                         "--dim, --layers or --batch");
  const std::vector<std::string> variants = split_variants(a.variants, "experiment: --variants");
  TG_CHECK(!variants.empty(), "experiment: no variants given");
  for (std::size_t i = 0; i < variants.size(); ++i) {
    const nn::PositionConfig pc = nn::parse_positions(variants[i]);
    TG_CHECK(pc.scheme != nn::PositionScheme::rope2d, "experiment: {} has no text positions for [BOS]/[IMG] tokens", variants[i]);
    TG_CHECK(std::find(variants.begin(), variants.begin() + static_cast<std::ptrdiff_t>(i), variants[i]) == variants.begin() + static_cast<std::ptrdiff_t>(i),
             "experiment: variant {} is listed twice", variants[i]);
    tf::Transformer probe(experiment_config(a, nn::PositionBuilder(pc).axes()));  // model settings checked before the folder is touched
  }
  // An earlier experiment's results are never replaced silently; with --overwrite, all of them go
  // (models and tables), so that no old file sits next to the new config.json.
  TG_CHECK(a.overwrite || !fs::exists(a.out + "/config.json"),
           "experiment: '{}' already holds an experiment (config.json); start it over with --overwrite, or use another --out",
           a.out);
  fs::create_directories(a.out);
  const nn::output::RunFolderLock lock(a.out);  // one writer per run folder
  if (a.overwrite) {
    for (const std::string& f : kExperimentFiles) fs::remove(a.out + "/" + f);
    for (const auto& entry : fs::directory_iterator(a.out)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name.starts_with("model_") && name.ends_with(".safetensors")) fs::remove(entry.path());
    }
  }
  {
    nlohmann::json cfg = {{"task", "causal neighbour (spec techniques-A 1.8)"}, {"variants", variants},
                          {"steps", a.steps}, {"batch", a.batch}, {"lr", a.lr}, {"weight_decay", a.weight_decay},
                          {"schedule", fmt::format("linear warmup {} steps, cosine to 0.1", a.warmup)},
                          {"dim", a.dim}, {"layers", a.layers}, {"heads", a.heads}, {"rope_base", a.base},
                          {"rope_layout", "interleaved"}, {"axis_map", "i mod A (Su's RoPE-2D) for every 2-D variant"},
                          {"p_mark", a.p_mark}, {"noise", a.noise}, {"train_sizes", "h, w in {2,3,4}"},
                          {"eval_per_size", a.eval}, {"seed", a.seed}, {"threads", num_threads()}};
    nn::write_file_atomically(a.out + "/config.json", cfg.dump(2) + "\n");
  }
  std::vector<VariantResult> results;
  for (const auto& v : variants) results.push_back(run_variant(v, a));

  // Loss curves: raw per step in the CSV, a 50-step running mean in the plot.
  {
    std::vector<std::string> header{"step"};
    for (const auto& r : results) header.push_back("loss_" + r.name);
    nn::output::CsvWriter csv(a.out + "/losses.csv", header);
    for (std::int64_t s = 0; s < a.steps; ++s) {
      std::vector<double> row{static_cast<double>(s + 1)};
      for (const auto& r : results) row.push_back(r.losses[static_cast<std::size_t>(s)]);
      csv.row(row);
    }
    std::vector<nn::output::Series> series;
    for (const auto& r : results) {
      nn::output::Series sr{r.name, {}, {}};
      double sum = 0;
      for (std::size_t s = 0; s < r.losses.size(); ++s) {
        sum += r.losses[s] - (s >= 50 ? r.losses[s - 50] : 0.0);
        sr.x.push_back(static_cast<double>(s + 1));
        sr.y.push_back(sum / static_cast<double>(std::min<std::size_t>(s + 1, 50)));
      }
      series.push_back(sr);
    }
    nn::output::plot_svg(a.out + "/loss.svg", series,
                         {.title = "causal-neighbour training loss (50-step mean)", .x_label = "step",
                          .y_label = "cross-entropy", .log_y = true});
  }
  // Per size, per split, and the plots of accuracy against the image width.
  {
    nn::output::CsvWriter csv(a.out + "/accuracy_by_size.csv",
                              {"variant", "h", "w", "patches", "above", "left", "both", "above_rows2plus", "left_cols2plus"});
    for (const auto& r : results)
      for (const auto& [hw, c] : r.by_size)
        csv.row(std::vector<std::string>{r.name, std::to_string(hw.first), std::to_string(hw.second),
                                         std::to_string(c.patches), fmt::format("{:.4f}", Counts::rate(c.above, c.patches)),
                                         fmt::format("{:.4f}", Counts::rate(c.left, c.patches)),
                                         fmt::format("{:.4f}", Counts::rate(c.both, c.patches)),
                                         fmt::format("{:.4f}", Counts::rate(c.interior_above, c.interior_above_n)),
                                         fmt::format("{:.4f}", Counts::rate(c.interior_left, c.interior_left_n))});
  }
  {
    nn::output::CsvWriter csv(a.out + "/accuracy_by_row.csv",
                              {"variant", "h", "row", "patches", "above", "left", "above_rows2plus", "left_cols2plus"});
    for (const auto& r : results)
      for (const auto& [hr, c] : r.by_row)
        csv.row(std::vector<std::string>{r.name, std::to_string(hr.first), std::to_string(hr.second),
                                         std::to_string(c.patches), fmt::format("{:.4f}", Counts::rate(c.above, c.patches)),
                                         fmt::format("{:.4f}", Counts::rate(c.left, c.patches)),
                                         fmt::format("{:.4f}", Counts::rate(c.interior_above, c.interior_above_n)),
                                         fmt::format("{:.4f}", Counts::rate(c.interior_left, c.interior_left_n))});
  }
  for (const bool above : {true, false}) {
    std::vector<nn::output::Series> series;
    for (const auto& r : results) {
      nn::output::Series sr{r.name, {}, {}};
      for (std::int64_t w = 2; w <= 6; ++w) {
        Counts c;
        for (std::int64_t h = 2; h <= 6; ++h) c += r.by_size.at({h, w});
        sr.x.push_back(static_cast<double>(w));
        sr.y.push_back(100 * (above ? Counts::rate(c.interior_above, c.interior_above_n)
                                    : Counts::rate(c.interior_left, c.interior_left_n)));
      }
      series.push_back(sr);
    }
    nn::output::plot_svg(
        a.out + (above ? "/accuracy_above.svg" : "/accuracy_left.svg"), series,
        {.title = fmt::format("'{}' bit vs image width (trained on w = 2..4)", above ? "above" : "left"),
         .x_label = fmt::format("image width w ({} with a neighbour, h = 2..6)", above ? "rows >= 2" : "cols >= 2"),
         .y_label = "accuracy %"});
  }
  nn::output::CsvWriter csv(a.out + "/accuracy.csv", {"variant", "split", "patches", "above", "left", "both",
                                                       "above_rows2plus", "left_cols2plus", "train_seconds"});
  std::string md = "| variant | split | above | left | both (4-way) | above, rows >= 2 | left, cols >= 2 |\n"
                   "|---|---|---|---|---|---|---|\n";
  for (const auto& r : results)
    for (const Split& sp : kSplits) {
      Counts c;
      for (const auto& [hw, k] : r.by_size)
        if (sp.member(hw.first, hw.second)) c += k;
      const double ab = Counts::rate(c.above, c.patches), le = Counts::rate(c.left, c.patches),
                   bo = Counts::rate(c.both, c.patches), ia = Counts::rate(c.interior_above, c.interior_above_n),
                   il = Counts::rate(c.interior_left, c.interior_left_n);
      csv.row(std::vector<std::string>{r.name, sp.key, std::to_string(c.patches), fmt::format("{:.4f}", ab),
                                       fmt::format("{:.4f}", le), fmt::format("{:.4f}", bo), fmt::format("{:.4f}", ia),
                                       fmt::format("{:.4f}", il), fmt::format("{:.1f}", r.seconds)});
      md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", r.name, sp.name, pct(ab), pct(le), pct(bo), pct(ia),
                        pct(il));
    }
  std::ofstream(a.out + "/accuracy.md") << "Per-bit accuracy (%) on the causal-neighbour task, " << a.eval
                                        << " sequences per image size.\n\n"
                                        << md;
  fmt::print("\n{}\n", md);
  fmt::print("run folder: {}\n", a.out);
  fmt::print("  config.json losses.csv loss.svg accuracy.csv accuracy.md accuracy_by_size.csv accuracy_by_row.csv "
             "accuracy_above.svg "
             "accuracy_left.svg model_<variant>.safetensors\n");
  return 0;
}

// ---- compatibility: text-only training under flat1d and tv --------------------------------------------------

struct CompatArgs {
  std::string out = "runs/rope_positions";
  std::int64_t steps = 300, batch = 32, digits = 8;
  double lr = 3e-3;
  std::uint64_t seed = 0;
};

struct CompatRun {
  std::vector<double> losses;
  std::vector<nn::NamedTensor> state;
  double accuracy = 0;
};

// Reverse a digit string: [BOS] d1 .. dn [SEP] dn .. d1; the loss is on the reversed half.
CompatRun train_reverse(const std::string& scheme, const CompatArgs& a) {
  const std::int64_t n = a.digits, T = 2 * n + 1, V = 12, BOS_ = 10, SEP = 11;
  nn::PositionBuilder pb(nn::parse_positions(scheme));
  pb.add_text(T);
  const Tensor positions = pb.positions();  // [T, 1] or [T, 2] with (n, n)
  Generator init(a.seed), data(a.seed + 1);
  tf::Transformer model({.vocab = V, .dim = 64, .layers = 2, .heads = 4, .axes = pb.axes(), .rope = {.base = 1000.0}},
                        &init);
  nn::AdamW opt(model.named_parameters(), {.lr = a.lr, .weight_decay = 0.01});
  auto batch = [&](std::int64_t B, Generator& g) {
    const Tensor d = randint(0, 10, {B, n}, DType::i64, g);  // [B, n]
    const Tensor seq = ops::cat({full({B, 1}, static_cast<double>(BOS_), DType::i64), d, full({B, 1}, static_cast<double>(SEP), DType::i64), d.flip({1})}, 1);  // [B, 2n + 2]
    Tensor target = seq.narrow(1, 1, T).clone();                                                                  // [B, T]
    target.narrow(1, 0, n).fill_(-100.0);  // the digits themselves are random: no loss there
    return std::pair{seq.narrow(1, 0, T), target};
  };
  CompatRun r;
  nn::output::ProgressBar bar(a.steps, fmt::format("{:8s}", scheme));
  for (std::int64_t step = 0; step < a.steps; ++step) {
    const auto [x, y] = batch(a.batch, data);
    const Tensor logits = model({.tokens = x, .positions = positions});  // [B, T, V]
    const Tensor loss = ops::cross_entropy(logits.reshape({a.batch * T, V}), y.reshape({a.batch * T}));
    const double l = loss.item();
    check_finite_loss(l, fmt::format("compat: {} positions", scheme), step + 1, a.lr);
    opt.zero_grad();
    loss.backward();
    opt.step();
    r.losses.push_back(l);
    bar.update(step + 1, l);
  }
  bar.finish();
  nn::check_finite_parameters(model, fmt::format("compat: {} positions", scheme),
                              fmt::format("after step {} (learning rate {:g})", a.steps, a.lr), "try a smaller --lr");
  NoGradGuard no_grad;
  Generator test(a.seed + 2);
  const auto [x, y] = batch(512, test);
  const auto pred = ops::argmax(model({.tokens = x, .positions = positions}), 2).to_vector<std::int64_t>();
  const auto tgt = y.to_vector<std::int64_t>();
  std::int64_t ok = 0, total = 0;
  for (std::size_t i = 0; i < tgt.size(); ++i)
    if (tgt[i] >= 0 && tgt[i] < 10) ok += pred[i] == tgt[i], ++total;
  r.accuracy = static_cast<double>(ok) / static_cast<double>(std::max<std::int64_t>(total, 1));
  r.state = model.state();
  return r;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

int compat(const CompatArgs& a) {
  examples::check_memory(training_bytes(64, 2, a.batch * (2 * a.digits + 1)),
                         fmt::format("training on batches of {} strings of {} digits", a.batch, a.digits), "--batch or --digits");
  fs::create_directories(a.out);
  const nn::output::RunFolderLock lock(a.out);  // one writer per run folder
  const CompatRun flat = train_reverse("flat1d", a), tv = train_reverse("tv", a);
  std::int64_t equal = 0;
  double worst = 0;
  nn::output::CsvWriter csv(a.out + "/compat_losses.csv", {"step", "loss_flat1d", "loss_tv", "bit_identical"});
  for (std::size_t s = 0; s < flat.losses.size(); ++s) {
    const bool same = same_bits(flat.losses[s], tv.losses[s]);
    equal += same;
    worst = std::max(worst, std::abs(flat.losses[s] - tv.losses[s]));
    csv.row(std::vector<std::string>{std::to_string(s + 1), fmt::format("{:.9g}", flat.losses[s]),
                                     fmt::format("{:.9g}", tv.losses[s]), same ? "1" : "0"});
  }
  bool params_equal = flat.state.size() == tv.state.size();
  for (std::size_t i = 0; params_equal && i < flat.state.size(); ++i) {
    const Tensor& x = flat.state[i].tensor;
    const Tensor& y = tv.state[i].tensor;
    params_equal = x.shape() == y.shape() && x.dtype() == y.dtype() &&
                   std::memcmp(x.contiguous().data<float>(), y.contiguous().data<float>(),
                               static_cast<std::size_t>(x.numel()) * sizeof(float)) == 0;
  }
  std::vector<nn::output::Series> series{{"flat1d", {}, flat.losses}, {"tv (text at (n, n))", {}, tv.losses}};
  for (auto& s : series)
    for (std::size_t i = 0; i < s.y.size(); ++i) s.x.push_back(static_cast<double>(i + 1));
  nn::output::plot_svg(a.out + "/compat.svg", series,
                       {.title = "text-only reversal task: flat RoPE-1D vs RoPE-TV (same seed)", .x_label = "step",
                        .y_label = "cross-entropy", .log_y = true});
  const bool identical = equal == static_cast<std::int64_t>(flat.losses.size()) && params_equal;
  {
    std::ofstream md(a.out + "/compat.md");
    md << fmt::format("Text-only reversal of {} digits, {} steps, batch {}, seed {}.\n\n", a.digits, a.steps, a.batch, a.seed)
       << "| positions | final loss | reversed-digit accuracy |\n|---|---|---|\n"
       << fmt::format("| flat1d | {:.6f} | {:.2f}% |\n", flat.losses.back(), 100 * flat.accuracy)
       << fmt::format("| tv | {:.6f} | {:.2f}% |\n\n", tv.losses.back(), 100 * tv.accuracy)
       << fmt::format("Losses bit-identical at {}/{} steps (max |difference| {:g}); final parameters bit-identical: {}.\n",
                      equal, flat.losses.size(), worst, params_equal ? "yes" : "no");
  }
  fmt::print("flat1d: final loss {:.6f}, reversed-digit accuracy {:.2f}%\n", flat.losses.back(), 100 * flat.accuracy);
  fmt::print("tv:     final loss {:.6f}, reversed-digit accuracy {:.2f}%\n", tv.losses.back(), 100 * tv.accuracy);
  fmt::print("losses bit-identical at {}/{} steps (max |difference| {:g}); final parameters bit-identical: {}\n", equal,
             flat.losses.size(), worst, params_equal ? "yes" : "no");
  fmt::print("run folder: {} (compat_losses.csv compat.svg compat.md)\n", a.out);
  fmt::print("compatibility: {}\n", identical ? "IDENTICAL" : "DIFFERENT");
  return identical ? 0 : 1;
}

// ---- show: the position table of a layout ---------------------------------------------------------------------

int show(const std::string& scheme, const std::string& layout, double start) {
  nn::PositionConfig pc = nn::parse_positions(scheme);
  pc.start = start;
  nn::PositionBuilder pb(pc);
  for (const std::string& item : split_variants(layout, "show: --layout")) {
    const auto colon = item.find(':');
    TG_CHECK(colon != std::string::npos, "show: layout item '{}' is not kind:size (text:3, image:2x3, image+:2x3, video:2x2x3)", item);
    const std::string kind = item.substr(0, colon), size = item.substr(colon + 1);
    std::vector<std::int64_t> d;
    std::stringstream ss(size + "x");  // the added 'x' ends the last number: "2x2x" then leaves an empty one
    for (std::string x; std::getline(ss, x, 'x');) d.push_back(parse_count(x, fmt::format("show: layout item '{}'", item)));
    std::int64_t tokens = 1;  // saturated past kMaxShown: no overflow
    for (std::int64_t n : d) tokens = std::min(tokens * n, kMaxShown + 1);
    TG_CHECK(pb.size() + tokens <= kMaxShown, "show: the layout has more than {} positions (at item '{}')", kMaxShown, item);
    if (kind == "text" && d.size() == 1) pb.add_text(d[0]);
    else if ((kind == "image" || kind == "image+") && d.size() == 2) pb.add_image(d[0], d[1], kind == "image+");
    else if ((kind == "video" || kind == "video+") && d.size() == 3) pb.add_video(d[0], d[1], d[2], kind == "video+");
    else TG_FAIL("show: cannot read layout item '{}' (text:K, image:HxW, image+:HxW with [IMG] markers, video:TxHxW)", item);
  }
  const char* names[] = {"text", "[IMG]", "[/IMG]", "patch"};
  fmt::print("{} positions ({} axes), start {}:\n", nn::positions_name(pc), pb.axes(), start);
  for (std::int64_t t = 0; t < pb.size(); ++t) {
    std::vector<std::string> p;
    // "{}": the shortest form that reads back exactly (200002.5, 7, 2.3333333333333335); "{:g}" would
    // round large half-integer positions to 6 digits and show distinct patches alike.
    for (std::int64_t ax = 0; ax < pb.axes(); ++ax) p.push_back(fmt::format("{}", pb.at(t, ax)));
    fmt::print("  {:3d} {:7s} ({})\n", t, names[static_cast<int>(pb.kinds()[static_cast<std::size_t>(t)])],
               fmt::format("{}", fmt::join(p, ", ")));
  }
  fmt::print("next text position: {}\n", pb.next_text());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Multimodal rotary positions (RoPE-1D/2D, RoPE-Tie, RoPE-TV, M-RoPE): experiment, compatibility check, tables"};
  examples::configure(app);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  ExperimentArgs ea;
  CLI::App* ex = app.add_subcommand("experiment", "Train the causal-neighbour task for each position scheme and compare "
                                                  "per-bit accuracy in distribution and on unseen image sizes");
  ex->add_option("--variants", ea.variants, "Comma-separated position schemes (flat1d, tie_v1, tie_v1_real, tv, mrope2d, ...)");
  ex->add_option("--steps", ea.steps, "Training steps per variant")->check(examples::Integer(1, 1'000'000'000));
  ex->add_option("--batch", ea.batch, "Sequences per step")->check(examples::Integer(1, 4096));
  ex->add_option("--lr", ea.lr, "AdamW peak learning rate")->check(examples::Positive);
  ex->add_option("--weight-decay", ea.weight_decay, "AdamW decoupled weight decay")->check(examples::NonNegative);
  ex->add_option("--warmup", ea.warmup, "Linear warmup steps (then cosine decay to 10%)")->check(examples::Integer(0, 1'000'000'000));
  ex->add_option("--dim", ea.dim, "Model width C")->check(examples::Integer(1, 4096));
  ex->add_option("--layers", ea.layers, "Transformer blocks")->check(examples::Integer(1, 64));
  ex->add_option("--heads", ea.heads, "Attention heads (dividing --dim)")->check(examples::Integer(1, 4096));
  ex->add_option("--base", ea.base, "RoPE base")->check(examples::Positive);
  ex->add_option("--eval", ea.eval, "Evaluation sequences per image size (sizes 2..6 x 2..6)")->check(examples::Integer(1, 100'000));
  ex->add_option("--seed", ea.seed, "Seed for initialisation and data (the same for every variant)")->check(examples::Seed);
  ex->add_option("--out", ea.out, "Run folder");
  ex->add_flag("--overwrite", ea.overwrite, "Replace the experiment already in --out (its models and tables)");
  ex->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  CompatArgs ca;
  CLI::App* co = app.add_subcommand("compat", "Train a text-only reversal task with flat1d and with tv positions from "
                                              "the same seed and check the loss curves are bit-identical");
  co->add_option("--steps", ca.steps, "Training steps")->check(examples::Integer(1, 1'000'000'000));
  co->add_option("--batch", ca.batch, "Sequences per step")->check(examples::Integer(1, 4096));
  co->add_option("--digits", ca.digits, "Digits per string")->check(examples::Integer(1, 1024));
  co->add_option("--lr", ca.lr, "AdamW learning rate")->check(examples::Positive);
  co->add_option("--seed", ca.seed, "Seed for initialisation and data")->check(examples::Seed);
  co->add_option("--out", ca.out, "Run folder");
  co->add_option("--threads", threads, "Threads for kernels (0: all cores)")->check(examples::Threads);

  std::string scheme = "tv", layout = "text:3,image:2x3,text:2";
  double start = 0;
  CLI::App* sh = app.add_subcommand("show", "Print the positions a scheme assigns to a layout of text, images and videos");
  sh->add_option("--scheme", scheme, "flat1d, rope2d, tie_v1, tie_v1_real, tv, tv3d, mrope, mrope2d, ...");
  sh->add_option("--layout", layout, "Comma-separated items: text:K, image:HxW, image+:HxW (with [IMG]/[/IMG]), video:TxHxW");
  sh->add_option("--start", start, "Position of the first text token (1 gives Su's 1-based examples)");
  sh->add_option("--threads", threads, "Threads for kernels (0: all cores; accepted like the other subcommands)")
      ->check(examples::Threads);

  if (const auto status = examples::parse(app, argc, argv)) return *status;
  return examples::run(
      [&] {
        if (threads > 0) set_num_threads(threads);
        if (ex->parsed()) return experiment(ea);
        if (co->parsed()) return compat(ca);
        return show(scheme, layout, start);
      },
      ex->parsed() ? "--batch, --dim, --layers or --eval" : co->parsed() ? "--batch or --digits" : "the layout's sizes");
}
