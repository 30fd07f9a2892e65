// STREAM-like bandwidth benchmark (copy, scale, add, triad) on float32 arrays. Copied from the
// reference workloads (../shared/bench-reference/peak/stream_triad.cpp) with one change: <string>
// is included. scripts/bench.sh runs it beside the norms workload (DRAM triad at 1 and 2 threads).
//
// Build: g++ -O3 -march=native -std=c++20 -pthread stream_triad.cpp -o stream_triad
// Run:   ./stream_triad [reps=9] [build_label=default]
//
// Note: GCC's -march=native on Sapphire Rapids auto-vectorizes with 256-bit ymm
// (prefer-vector-width=256). run.sh also builds stream_triad_zmm with
// -mprefer-vector-width=512 (label "zmm"): this matters for the L1 numbers only.
//
// Bytes counted as in STREAM: copy/scale 2 x 4 B per element, add/triad 3 x 4 B per element
// (write-allocate traffic NOT counted, so real DRAM traffic is higher by one stream unless
// the compiler emits non-temporal stores). Working sets: L1-, L2-resident and DRAM-sized
// (3 x 512 MiB = 1.5 GiB, well above any last-level cache the VM reports). Threads split
// the arrays in contiguous chunks, first-touch initialised by their owning thread.
// Each line of output starting with "RESULT " is one JSON record.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

using clk = std::chrono::steady_clock;

static void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1u, std::thread::hardware_concurrency()), &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

enum Op { COPY, SCALE, ADD, TRIAD };
static const char* op_name[] = {"copy", "scale", "add", "triad"};
static const int op_arrays[] = {2, 2, 3, 3};

__attribute__((noinline)) void kernel(Op op, float* __restrict a, const float* __restrict b,
                                      const float* __restrict c, size_t n, float s) {
  switch (op) {
    case COPY:
      for (size_t i = 0; i < n; i++) a[i] = b[i];
      break;
    case SCALE:
      for (size_t i = 0; i < n; i++) a[i] = s * b[i];
      break;
    case ADD:
      for (size_t i = 0; i < n; i++) a[i] = b[i] + c[i];
      break;
    case TRIAD:
      for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
      break;
  }
}

int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  const char* label = argc > 2 ? argv[2] : "default";
  int hw = (int)std::max(1u, std::thread::hardware_concurrency());
  struct Size {
    const char* level;
    size_t n;  // floats per array
    int inner; // kernel repetitions per timed sample (to make small sizes measurable)
  };
  Size sizes[] = {
      {"L1", 2 * 1024, 20000},             // 3 x 8 KiB per thread
      {"L2", 64 * 1024, 1000},             // 3 x 256 KiB per thread
      {"DRAM", 128 * 1024 * 1024, 1},      // 3 x 512 MiB total
  };
  for (auto& sz : sizes) {
    for (int nt = 1; nt <= std::min(2, hw); nt++) {
      // per-thread chunk: cache-resident sizes are per thread, DRAM size is split
      size_t chunk = std::string(sz.level) == "DRAM" ? sz.n / nt : sz.n;
      std::vector<std::thread> ts;
      // Simple generation-counted barrier with spin.
      std::atomic<int> bar_count{0}, bar_gen{0};
      auto sync = [&] {
        int g = bar_gen.load();
        if (bar_count.fetch_add(1) + 1 == nt) {
          bar_count.store(0);
          bar_gen.fetch_add(1);
        } else {
          while (bar_gen.load() == g) {
          }
        }
      };
      std::vector<std::vector<double>> per_thread(nt, std::vector<double>(4 * reps));
      for (int t = 0; t < nt; t++) {
        ts.emplace_back([&, t] {
          pin_to_cpu(t);
          float* a = (float*)std::aligned_alloc(64, chunk * sizeof(float));
          float* b = (float*)std::aligned_alloc(64, chunk * sizeof(float));
          float* c = (float*)std::aligned_alloc(64, chunk * sizeof(float));
          for (size_t i = 0; i < chunk; i++) {
            a[i] = 1.0f;
            b[i] = 2.0f;
            c[i] = 0.5f;
          }
          for (int op = 0; op < 4; op++) kernel((Op)op, a, b, c, chunk, 0.5f);  // warm-up
          for (int r = 0; r < reps; r++) {
            for (int op = 0; op < 4; op++) {
              sync();
              auto t0 = clk::now();
              for (int k = 0; k < sz.inner; k++) {
                kernel((Op)op, a, b, c, chunk, 0.5f);
                asm volatile("" ::: "memory");
              }
              per_thread[t][r * 4 + op] = std::chrono::duration<double>(clk::now() - t0).count();
            }
          }
          std::free(a);
          std::free(b);
          std::free(c);
        });
      }
      for (auto& th : ts) th.join();
      for (int op = 0; op < 4; op++) {
        std::vector<double> gbs;
        for (int r = 0; r < reps; r++) {
          double mx = 0;
          for (int t = 0; t < nt; t++) mx = std::max(mx, per_thread[t][r * 4 + op]);
          double bytes = (double)op_arrays[op] * sizeof(float) * chunk * nt * sz.inner;
          gbs.push_back(bytes / mx / 1e9);
        }
        std::sort(gbs.begin(), gbs.end());
        std::printf("RESULT {\"bench\":\"stream\",\"build\":\"%s\",\"op\":\"%s\",\"level\":\"%s\","
                    "\"bytes_per_array_per_thread\":%zu,\"threads\":%d,\"gbs_median\":%.1f,"
                    "\"gbs_min\":%.1f,\"gbs_max\":%.1f}\n",
                    label, op_name[op], sz.level, chunk * sizeof(float), nt, gbs[gbs.size() / 2],
                    gbs.front(), gbs.back());
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
