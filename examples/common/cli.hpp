// Command-line conventions shared by the example programs:
//   - stdout is line-buffered, so log lines and the progress bar (stderr) interleave in order
//     when the output goes to a file or a pipe;
//   - --help shows every option's default, and an option given twice takes its last value (a
//     script's defaults can be overridden by flags appended to its command line);
//   - a usage error prints "error: <what>" and exits with status 1, like every other failure;
//   - integer options are whole numbers within bounds (Integer below), never clamped;
//   - work too big for the memory fails with the options to lower, not by the kernel's OOM killer
//     (cap_memory and check_memory in memory.hpp, run below).
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "examples/common/memory.hpp"

namespace tg::examples {

inline void configure(CLI::App& app) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cap_memory();
  app.option_defaults()->always_capture_default()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

// Parses the command line. Returns the exit status when the program should stop now (after
// --help: 0; after a usage error: 1), nothing when it should run.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  // An unknown command word: name it (CLI11 would only say that a subcommand is required).
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      fmt::print(stderr, "error: unknown command '{}' (expected one of: {})\nRun with --help for more information.\n", argv[1],
                 names);
      return 1;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    fmt::print(stderr, "error: {}\nRun with --help for more information.\n", e.what());
    return 1;
  }
  return std::nullopt;
}

// Number checks with plain messages (CLI11's own print the range as 300-digit numbers).
namespace detail {
inline CLI::Validator number_check(const char* description, bool (*ok)(double)) {
  return CLI::Validator(
      [description, ok](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v) || !std::isfinite(v)) return "expected a number, got '" + text + "'";
        if (!ok(v)) return std::string("must be ") + description + ", got " + text;
        return {};
      },
      description);
}
}  // namespace detail
inline const CLI::Validator Positive = detail::number_check("positive", [](double v) { return v > 0; });
inline const CLI::Validator NonNegative = detail::number_check("non-negative", [](double v) { return v >= 0; });
// [lo, hi] with readable bounds.
inline CLI::Validator Between(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v) || std::isnan(v)) return "expected a number, got '" + text + "'";
        if (v < lo || v > hi) return fmt::format("must be in [{:g}, {:g}], got {}", lo, hi, text);
        return {};
      },
      fmt::format("in [{:g}, {:g}]", lo, hi));
}

// A whole decimal number of type T in [lo, hi]; `range` shows the bounds in messages and --help.
// Only the plain decimal form passes ("010" and "-0" do not): CLI11 converts the original text
// itself after the check (Option::check may not rewrite it) and reads a leading zero as octal,
// so "010" would silently become 8.
template <class T>
CLI::Validator whole_number(T lo, T hi, const std::string& range) {
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        T v{};
        const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (err != std::errc() || end != text.data() + text.size() || v < lo || v > hi)
          return "expected a whole number in " + range + ", got '" + text + "'";
        if (text != std::to_string(v)) return "expected a whole number in " + range + " without leading zeros, got '" + text + "'";
        return {};
      },
      "in " + range);
}

// A seed: a whole number in [0, 2^64 - 1]. (CLI11 alone would wrap -1 to 2^64 - 1 and clamp larger
// values to it, so distinct seeds on the command line would give the same run.)
inline const CLI::Validator Seed = whole_number<std::uint64_t>(0, UINT64_MAX, "[0, 2^64 - 1]");

// An integer option: a whole decimal number in [lo, hi]. (CLI11 alone clamps values past the
// type's range -- 99999999999999999999 became 2^63 - 1 -- and a check on doubles lets "1e3" and
// "2.5" through to CLI11's conversion.)
inline CLI::Validator Integer(std::int64_t lo, std::int64_t hi) {
  return whole_number<std::int64_t>(lo, hi, fmt::format("[{}, {}]", lo, hi));
}
// --threads of every example.
inline const CLI::Validator Threads = Integer(0, 1024);

// A new training run must not silently replace an earlier one: a folder that holds a run (one of
// `markers`, e.g. its checkpoint) is refused unless the run is resumed or `overwrite` is set.
// Returns whether an old run is being started over: the caller then removes its state files
// (remove_run_files), once it holds the folder's lock, so that a later --resume cannot pick up the
// old checkpoint.
inline bool check_new_run_folder(const std::string& out, const std::vector<std::string>& markers, bool resume,
                                 bool overwrite) {
  TG_CHECK(!(resume && overwrite), "train: --resume continues the run in '{}' and --overwrite starts it over; give one", out);
  if (resume) return false;
  for (const std::string& m : markers) {
    if (!std::filesystem::exists(out + "/" + m)) continue;
    TG_CHECK(overwrite,
             "train: '{}' already holds a run ('{}'); continue it with --resume, start it over with --overwrite, or train "
             "into another --out",
             out, m);
    return true;
  }
  return false;
}

// --resume needs a run to resume: its config.json (a run killed before its first checkpoint starts
// over with the recorded settings). Without one -- a mistyped --out, or a run killed before it
// wrote anything -- resuming would silently start a new run with the default settings; and a
// checkpoint without it cannot be resumed, its settings being unknown. A run without a checkpoint
// starts over, which is right only if it never got far: a trained model in `trained_files` (written
// at the end) with its checkpoint gone would be overwritten by the restart.
inline void check_resumable(const std::string& out, const std::vector<std::string>& trained_files) {
  namespace fs = std::filesystem;
  if (fs::exists(out + "/config.json")) {
    if (fs::exists(out + "/checkpoint.safetensors")) return;
    for (const std::string& f : trained_files)
      TG_CHECK(!fs::exists(out + "/" + f),
               "train --resume: '{}' holds a trained model ('{}') but no checkpoint.safetensors to continue from, and "
               "starting the run over would replace it; start over with --overwrite, or train into another --out",
               out, f);
    return;
  }
  TG_CHECK(!std::filesystem::exists(out + "/checkpoint.safetensors"),
           "train --resume: '{}' holds a checkpoint but no config.json, so its settings are unknown; train into a new "
           "--out folder (or --overwrite)",
           out);
  TG_FAIL("train --resume: '{}' holds no run to resume (no config.json); check --out, or train without --resume", out);
}

// Removes what an old run left that a new one would otherwise inherit (--overwrite): its state
// files, and the files and folders made from its model (evaluations, samples), which would
// otherwise sit next to the new model's as if they were its own. `derived` may hold names ending
// in '*' (a prefix: "samples_*").
inline void remove_run_files(const std::string& out, const std::vector<std::string>& files,
                             const std::vector<std::string>& derived = {}) {
  namespace fs = std::filesystem;
  for (const std::string& f : files) fs::remove(out + "/" + f);
  std::vector<std::string> removed;
  for (const std::string& d : derived) {
    if (!d.empty() && d.back() == '*') {
      const std::string prefix = d.substr(0, d.size() - 1);
      for (const auto& entry : fs::directory_iterator(out))
        if (entry.path().filename().string().starts_with(prefix)) {
          removed.push_back(entry.path().filename().string());
          fs::remove_all(entry.path());
        }
    } else if (fs::exists(out + "/" + d)) {
      removed.push_back(d);
      fs::remove_all(out + "/" + d);
    }
  }
  fmt::print("train: --overwrite: the old run in '{}' is replaced{}\n", out,
             removed.empty() ? std::string() : fmt::format(" (also removed, made from its model: {})", fmt::join(removed, ", ")));
}

// Runs a command: any failure ends as "error: <what>" and status 1. When memory runs out, the
// message says which options size the work (`lower`): the allocator cannot know which asked too much.
template <class Command>
int run(Command&& command, const std::string& lower) {
  try {
    return command();
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory{}\n", lower.empty() ? "" : "; lower " + lower);
  } catch (const OutOfMemory& e) {
    fmt::print(stderr, "error: {}{}\n", e.what(), lower.empty() ? "" : "; lower " + lower);
  } catch (const std::exception& e) {  // tg::Error, or e.g. a filesystem error on --out
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}

}  // namespace tg::examples
