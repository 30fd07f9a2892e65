// The settings of a resumed run, from its config.json: a setting not given on the command line is
// read from the file (checked for type and range as the command line checks it); a given one must
// equal the file's. Mismatches are reported all at once.
#pragma once

#include <fmt/core.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace tg::examples {

class ResumeSettings {
 public:
  // cfg: the run's config.json (read from `path`); given: the options on the command line.
  ResumeSettings(const nlohmann::json& cfg, std::string path, const std::set<std::string>& given)
      : cfg_(cfg), path_(std::move(path)), given_(given) {}

  void integer(const char* flag, const char* key, std::int64_t& field, std::int64_t lo, std::int64_t hi) {
    setting(flag, key, field, [&](const nlohmann::json& v) {
      return v.is_number_integer() && v.get<std::int64_t>() >= lo && v.get<std::int64_t>() <= hi &&
             !(v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi));
    }, fmt::format("a whole number in [{}, {}]", lo, hi));
  }
  void seed(const char* flag, const char* key, std::uint64_t& field) {
    setting(flag, key, field, [](const nlohmann::json& v) { return v.is_number_unsigned(); },
            "a whole number in [0, 2^64 - 1]");
  }
  void number(const char* flag, const char* key, double& field, double lo, double hi, bool open_low = false) {
    setting(flag, key, field, [&](const nlohmann::json& v) {
      if (!v.is_number()) return false;
      const double x = v.get<double>();
      return std::isfinite(x) && (open_low ? x > lo : x >= lo) && x <= hi;
    }, fmt::format("a number in {}{}, {}]", open_low ? "(" : "[", lo, hi));
  }
  void choice(const char* flag, const char* key, std::string& field, const std::vector<std::string>& allowed) {
    setting(flag, key, field, [&](const nlohmann::json& v) {
      if (!v.is_string()) return false;
      for (const std::string& a : allowed)
        if (v.get<std::string>() == a) return true;
      return false;
    }, fmt::format("one of {}", fmt::join(allowed, ", ")));
  }
  // --data / --synthetic from the "data" entry ("synthetic-shapes" or "fashion-mnist:<folder>"),
  // unless either is given (the data actually loaded is compared with it later).
  void data(std::string& folder, bool& synthetic) {
    if (given_.count("--data") || given_.count("--synthetic")) return;
    const std::string prefix = "fashion-mnist:";
    const std::string source = cfg_.contains("data") && cfg_["data"].is_string() ? cfg_["data"].get<std::string>() : "";
    if (source == "synthetic-shapes") {
      synthetic = true;
      taken_.push_back("--synthetic");
    } else if (source.rfind(prefix, 0) == 0 && source.size() > prefix.size()) {
      folder = source.substr(prefix.size());
      taken_.push_back("--data " + folder);
    } else {
      TG_FAIL("train --resume: '{}' has no data source (\"data\": \"synthetic-shapes\" or \"fashion-mnist:<folder>\"); "
              "give --data or --synthetic",
              path_);
    }
  }

  // Raises the mismatches, then prints what was taken from the file.
  void finish() const {
    TG_CHECK(differ_.empty(),
             "train --resume: '{}' records {}; resume with the same settings (or train into a new --out folder)",
             path_, fmt::join(differ_, ", "));
    if (!taken_.empty()) fmt::print("resuming with the run's settings: {}\n", fmt::join(taken_, " "));
  }

 private:
  template <class T, class Valid>
  void setting(const char* flag, const char* key, T& field, Valid valid, const std::string& expected) {
    if (given_.count(flag)) {  // must equal the file's value (when the file has one)
      if (cfg_.contains(key) && cfg_[key] != nlohmann::json(field))
        differ_.push_back(fmt::format("{} = {} (not {})", key, cfg_[key].dump(), nlohmann::json(field).dump()));
      return;
    }
    TG_CHECK(cfg_.contains(key), "train --resume: '{}' lacks the setting \"{}\"; give {}", path_, key, flag);
    const nlohmann::json& v = cfg_[key];
    TG_CHECK(valid(v), "train --resume: '{}' has \"{}\": {}, not {}", path_, key, v.dump(), expected);
    field = v.get<T>();
    taken_.push_back(fmt::format("{} {}", flag, v.is_string() ? v.get<std::string>() : v.dump()));
  }

  const nlohmann::json& cfg_;
  std::string path_;
  const std::set<std::string>& given_;
  std::vector<std::string> taken_, differ_;
};

// The data a resumed run loaded (its source, e.g. "fashion-mnist:<folder>") must be the data
// recorded in the run's config.json.
inline void check_resumed_data(const nlohmann::json& cfg, const std::string& run, const std::string& source) {
  TG_CHECK(!cfg.contains("data") || cfg["data"] == source,
           "train --resume: the run in '{}' was trained on {}, not {}; resume with the same data (or train into a new "
           "--out folder)",
           run, cfg["data"].dump(), source);
}

}  // namespace tg::examples
