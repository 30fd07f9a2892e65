// The registry of differentiable ops: every name passed to autograd::record by tapegrad itself.
// The test suites check both directions: an op that records a backward must be listed here, and
// every listed op must have a gradient-check test case tagged with its name.
#pragma once

#include <span>
#include <string_view>

namespace tg::ops {

struct OpInfo {
  std::string_view name;
  std::string_view layer;  // "core" (views, copies) or "ops"
};

std::span<const OpInfo> differentiable_ops();

}  // namespace tg::ops
