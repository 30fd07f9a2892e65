// How much memory an example may use, so that work too big for it fails with a message naming the
// options to lower instead of being ended by the kernel's OOM killer part-way:
//   - memory_limit(): what the process can still count on (the kernel's available memory, a
//     cgroup's limit -- a container's -- and ulimit -v, whichever is lowest);
//   - cap_memory(): caps the address space there, so that an allocation past it fails cleanly;
//   - check_memory(): refuses work whose estimated size exceeds it before anything starts.
#pragma once

#include <fmt/core.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <thread>

#include "core/error.hpp"

namespace tg::examples {

// A "Key: <n>" entry of a /proc or cgroup file (`scale` bytes per unit; 0 when missing).
inline double file_entry(const std::string& file, const char* key, double scale) {
  std::FILE* f = std::fopen(file.c_str(), "r");
  if (!f) return 0;
  double value = 0;
  char line[256];
  const std::size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, n) == 0 && (line[n] == ':' || line[n] == ' ')) {
      value = scale * std::strtod(line + n + 1, nullptr);
      break;
    }
  std::fclose(f);
  return value;
}

// The first number in a file ("max" and missing files: infinity).
inline double file_number(const std::string& file) {
  std::ifstream in(file);
  double v = 0;
  return in >> v ? v : std::numeric_limits<double>::infinity();
}

// Memory left under this process's cgroup limits (a container's, a systemd slice's), in bytes: per
// group that has a limit, the limit minus what the group uses, not counting the page cache it can
// drop (inactive files); the least of these, from the process's group up through its parents;
// infinity without a limit. cgroup v2 ("0::<path>" in /proc/self/cgroup) or v1 (the "memory"
// controller), under the mount point; inside a container's namespace the group's path may not
// exist there and the mount's root is the container's group.
inline double cgroup_memory_left() {
  std::ifstream in("/proc/self/cgroup");
  double left = std::numeric_limits<double>::infinity();
  for (std::string line; std::getline(in, line);) {
    const auto c1 = line.find(':'), c2 = line.find(':', c1 + 1);
    if (c1 == std::string::npos || c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1);
    const bool v2 = line.compare(0, c1, "0") == 0 && controllers.empty(), v1 = controllers == "memory";
    if (!v1 && !v2) continue;
    const std::string mount = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    for (std::string path = line.substr(c2 + 1);;) {
      const std::string dir = mount + path;
      const double limit = file_number(dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
      const double used = file_number(dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes"));
      if (limit < 1e18 && used < 1e18) {  // else no limit here ("max", v1's 2^63 - 4096) or no such group
        const double cache = file_entry(dir + "/memory.stat", v2 ? "inactive_file" : "total_inactive_file", 1.0);
        left = std::min(left, std::max(0.0, limit - std::max(0.0, used - cache)));
      }
      const auto slash = path.rfind('/');
      if (path.empty() || slash == std::string::npos) break;  // the mount's root is done
      path.resize(slash);                                     // the parent group ("": the root)
    }
  }
  return left;
}

// Memory this process can still count on, in bytes: what the kernel reports available now (free
// memory and the caches it can drop, plus free swap) -- not the machine's total, part of which
// other processes hold -- or less under a cgroup limit or an address-space limit (ulimit -v); 0
// when unknown.
inline double memory_limit() {
  const double available = file_entry("/proc/meminfo", "MemAvailable", 1024);
  double bytes = available > 0 ? available + file_entry("/proc/meminfo", "SwapFree", 1024) : 0;
  if (const double group = cgroup_memory_left(); group < std::numeric_limits<double>::infinity())
    bytes = bytes > 0 ? std::min(bytes, group) : group;
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    const double left = std::max(0.0, static_cast<double>(rl.rlim_cur) - file_entry("/proc/self/status", "VmSize", 1024));
    bytes = bytes > 0 ? std::min(bytes, left) : left;
  }
  return bytes;
}

// Caps this process's address space at what it maps now plus the memory available (memory_limit)
// and the worker threads' stacks.
// Linux overcommits: uncapped, a run that needs more than there is gets its allocations granted and
// is then killed by the kernel part-way (no message, no checkpoint; even a cap at the machine's RAM
// + swap let a --size 256 diffusion run be killed beside a compiler); capped, an allocation fails
// and `run` in cli.hpp says which options to lower. A lower limit already set is kept. Not under
// AddressSanitizer or ThreadSanitizer, which reserve terabytes of address space for their shadow.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TG_EXAMPLES_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define TG_EXAMPLES_SANITIZER 1
#endif
#endif
inline void cap_memory() {
#ifndef TG_EXAMPLES_SANITIZER
  const double available = memory_limit(), mapped = file_entry("/proc/self/status", "VmSize", 1024);
  struct rlimit rl {};
  if (available <= 0 || mapped <= 0 || ::getrlimit(RLIMIT_AS, &rl) != 0) return;
  // Plus address space that holds little memory: the stacks of the worker threads started later
  // (reserved whole, 4-8 MiB each). (glibc's per-thread malloc arenas reserve 64 MiB each as well;
  // when one cannot be reserved, malloc maps the thread's allocations directly instead of failing.)
  const double stacks = 8.0 * (1 << 20) * std::max(1u, std::thread::hardware_concurrency());
  const double cap = mapped + available + stacks;
  if (rl.rlim_cur == RLIM_INFINITY || static_cast<double>(rl.rlim_cur) > cap) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? static_cast<rlim_t>(cap) : std::min(static_cast<rlim_t>(cap), rl.rlim_max);
    ::setrlimit(RLIMIT_AS, &rl);  // best effort: without it the run is merely uncapped
  }
#endif
}

// Refuses work whose memory, estimated from below by the caller, exceeds memory_limit(): failing
// before anything is loaded or written beats failing part-way. `what` names the work, `lower` the
// options that size it.
inline void check_memory(double bytes, const std::string& what, const std::string& lower) {
  const double limit = memory_limit();
  TG_CHECK(limit <= 0 || bytes <= limit, "{} needs at least {:.1f} GB of memory, more than the {:.1f} GB available; lower {}", what,
           bytes / 1e9, limit / 1e9, lower);
}

}  // namespace tg::examples
