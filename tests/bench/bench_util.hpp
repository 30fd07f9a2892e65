// Shared helpers for tapegrad's benchmark programs: argument parsing, step timing and the JSON
// line every measurement prints (the format scripts/bench.sh collects, shared with the PyTorch
// reference scripts through bench_util.py):
//   {"workload": "conv2d", "shape": "...", "threads": 1, "impl": "tapegrad",
//    "median_s": ..., "min_s": ..., "max_s": ..., "steps": 20, ...extra fields}
#pragma once

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/parallel.hpp"

namespace tg::bench {

struct Args {
  int threads = 1;
  int warmup = 3;
  int steps = 20;
  std::vector<std::string> rest;  // positional arguments
};

// --threads N --warmup W --steps S [positional...]; sets tapegrad's thread count.
inline Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view s = argv[i];
    auto value = [&](const char* flag) {
      if (i + 1 >= argc) {
        fmt::print(stderr, "{} needs a value\n", flag);
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (s == "--threads") a.threads = value("--threads");
    else if (s == "--warmup") a.warmup = value("--warmup");
    else if (s == "--steps") a.steps = value("--steps");
    else a.rest.emplace_back(s);
  }
  if (a.threads < 1 || a.steps < 1 || a.warmup < 0) {
    fmt::print(stderr, "usage: {} [--threads N>=1] [--warmup W>=0] [--steps S>=1]\n", argv[0]);
    std::exit(2);
  }
  set_num_threads(a.threads);
  return a;
}

// A positive integer command-line value (a size or count); anything else exits with a message
// naming the argument instead of an uncaught std::stoll exception.
inline std::int64_t positive_int(std::string_view what, const std::string& s) {
  const bool digits = !s.empty() && s.size() <= 12 && s.find_first_not_of("0123456789") == std::string::npos;
  const std::int64_t v = digits ? std::stoll(s) : 0;
  if (v < 1) {
    fmt::print(stderr, "{} must be a positive integer, got '{}'\n", what, s);
    std::exit(2);
  }
  return v;
}

struct Stats {
  double median_s = 0, min_s = 0, max_s = 0;
  int steps = 0;
};

// Runs fn `warmup` times, then times `steps` single calls.
template <class F>
Stats time_steps(F&& fn, int warmup, int steps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  const std::size_t n = t.size();
  return {n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]), t.front(), t.back(), steps};
}

// Prints one measurement as a JSON line; `extra` is a JSON fragment such as "\"gflops\": 12.5".
inline void emit(std::string_view workload, std::string_view shape, int threads, const Stats& s,
                 std::string_view extra = "") {
  fmt::print("{{\"workload\": \"{}\", \"shape\": \"{}\", \"threads\": {}, \"impl\": \"tapegrad\", "
             "\"median_s\": {:.6g}, \"min_s\": {:.6g}, \"max_s\": {:.6g}, \"steps\": {}{}{}}}\n",
             workload, shape, threads, s.median_s, s.min_s, s.max_s, s.steps, extra.empty() ? "" : ", ", extra);
  std::fflush(stdout);
}

}  // namespace tg::bench
