#include "core/parallel.hpp"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include "core/error.hpp"

namespace tg {

void parallel_for(std::int64_t n, std::int64_t grain, FunctionRef<void(std::int64_t, std::int64_t)> body) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const std::int64_t chunks = (n + grain - 1) / grain;
  if (chunks == 1) {
    body(0, n);
    return;
  }
  // One task per chunk (simple_partitioner never merges chunks): chunk boundaries are fixed.
  oneapi::tbb::parallel_for(
      oneapi::tbb::blocked_range<std::int64_t>(0, chunks, 1),
      [&](const oneapi::tbb::blocked_range<std::int64_t>& r) {
        for (std::int64_t c = r.begin(); c != r.end(); ++c) body(c * grain, std::min(n, (c + 1) * grain));
      },
      oneapi::tbb::simple_partitioner());
}

int num_threads() {
  // The arena's size, capped by set_num_threads (a global_control limit the arena does not report).
  const auto limit = oneapi::tbb::global_control::active_value(oneapi::tbb::global_control::max_allowed_parallelism);
  return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(oneapi::tbb::this_task_arena::max_concurrency(), limit)));
}

namespace {
std::mutex g_control_mutex;
std::unique_ptr<oneapi::tbb::global_control> g_control;
}  // namespace

void set_num_threads(int n) {
  TG_CHECK(n >= 0, "set_num_threads: expected n >= 1 (or 0 for the default), got {}", n);
  std::lock_guard lock(g_control_mutex);
  g_control.reset();
  if (n > 0)
    g_control = std::make_unique<oneapi::tbb::global_control>(
        oneapi::tbb::global_control::max_allowed_parallelism, static_cast<std::size_t>(n));
}

void with_threads(int n, FunctionRef<void()> fn) {
  TG_CHECK(n >= 1, "with_threads: expected n >= 1, got {}", n);
  oneapi::tbb::task_arena arena(n);
  arena.execute([&] { fn(); });
}

}  // namespace tg
