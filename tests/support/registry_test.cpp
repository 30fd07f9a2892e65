// The op registry test, compiled into each test suite with TAPEGRAD_TEST_LAYER set to the layer
// it covers: every op that records a backward must be listed in ops/registry.cpp, and every
// listed op of this layer must have a gradient test (a test case tagged [grad] and [<op name>]).
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "core/autograd.hpp"
#include "ops/registry.hpp"

namespace {

// Ops that tests define themselves through the public custom-op mechanism.
constexpr std::string_view kTestOnlyOps[] = {"cube", "bad_op", "throws"};

void check_registered(std::string_view name) {
  for (const tg::ops::OpInfo& op : tg::ops::differentiable_ops())
    if (op.name == name) return;
  for (std::string_view op : kTestOnlyOps)
    if (op == name) return;
  throw tg::Error(fmt::format("op '{}' records a backward but is not listed in ops/registry.cpp", name));
}

// Installed for the whole run of the test binary, before any test case runs.
const bool kObserverInstalled = (tg::autograd::set_record_observer(&check_registered), true);

}  // namespace

TEST_CASE("registry: every differentiable op of this layer has a gradient test", "[registry]") {
  std::set<std::string> covered;
  for (const Catch::TestCase& tc : Catch::getAllTestCasesSorted(*Catch::getCurrentContext().getConfig())) {
    const auto& tags = tc.getTestCaseInfo().tags;
    if (std::find(tags.begin(), tags.end(), "grad") == tags.end()) continue;
    covered.insert(tags.begin(), tags.end());
  }
  int checked = 0;
  for (const tg::ops::OpInfo& op : tg::ops::differentiable_ops()) {
    if (op.layer != TAPEGRAD_TEST_LAYER) continue;
    ++checked;
    INFO("op '" << op.name << "' has a backward but no test case tagged [grad][" << op.name << "]");
    CHECK(covered.count(std::string(op.name)) == 1);
  }
  const std::string_view layer = TAPEGRAD_TEST_LAYER;
  if (layer == "core" || layer == "ops") CHECK(checked > 0);
  CHECK(kObserverInstalled);
}
