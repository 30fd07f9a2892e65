// Copied from ../shared/bench-reference/peak/fma_peak.cpp (the reference measurement of this machine's
// fp32 FMA peak); scripts/bench.sh builds and runs it with the gemm workload.
// fp32 FMA-throughput microbenchmark + clock estimate.
//
// Build: g++ -O3 -march=native -std=c++20 -pthread fma_peak.cpp -o fma_peak
// Run:   ./fma_peak [reps=7] [seconds_per_rep=0.3]
//
// For each ISA width (AVX-512 zmm, AVX2 ymm) and each thread count (1, 2), every thread
// runs NACC independent FMA chains (acc = acc*a + b) on registers only: no memory traffic,
// so the result is the core's FMA issue throughput. flops = 2 * lanes * NACC * iters.
// The clock is estimated with a chain of dependent integer adds (1 cycle latency each),
// measured alone and concurrently on all threads.
// Each line of output starting with "RESULT " is one JSON record.
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
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

template <int NACC>
__attribute__((noinline)) float fma_zmm(long iters, float seed) {
  __m512 acc[NACC];
  for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps(seed + i * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 64
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

template <int NACC>
__attribute__((noinline)) float fma_ymm(long iters, float seed) {
  __m256 acc[NACC];
  for (int i = 0; i < NACC; i++) acc[i] = _mm256_set1_ps(seed + i * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 64
    for (int i = 0; i < NACC; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < NACC; i++) s = _mm256_add_ps(s, acc[i]);
  float t[8];
  _mm256_storeu_ps(t, s);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

// 100 dependent 1-cycle integer adds per iteration: cycles ~= 100 * iters.
// Register operand on purpose: Golden Cove-class cores fold `add reg, imm` chains at
// rename, which would make an immediate-add chain run at several adds per cycle.
__attribute__((noinline)) long add_chain(long iters) {
  long x = 0, one = 1;
  for (long it = 0; it < iters; ++it) {
    asm volatile(
        ".rept 100\n\t"
        "add %1, %0\n\t"
        ".endr\n\t"
        : "+r"(x)
        : "r"(one));
  }
  return x;
}

// 100 dependent zmm FMAs per iteration (one chain): cycles ~= 4 * 100 * iters if the
// FMA latency is 4 cycles (Golden Cove / Sapphire Rapids). Gives the clock while
// executing 512-bit FMAs (AVX-512 frequency licence), under that latency assumption.
__attribute__((noinline)) float zmm_fma_chain(long iters) {
  __m512 x = _mm512_set1_ps(0.5f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
    asm volatile(
        ".rept 100\n\t"
        "vfmadd132ps %2, %1, %0\n\t"
        ".endr\n\t"
        : "+v"(x)
        : "v"(b), "v"(a));
  }
  return _mm512_reduce_add_ps(x);
}

static volatile float g_sink;
static volatile long g_lsink;

// Runs fn(iters) on nthreads pinned threads simultaneously; returns wall seconds
// (from common start to the last thread finishing).
static double run_threads(int nthreads, const std::function<void()>& fn) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<double> secs(nthreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < nthreads; t++) {
    ts.emplace_back([&, t] {
      pin_to_cpu(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      auto t0 = clk::now();
      fn();
      secs[t] = std::chrono::duration<double>(clk::now() - t0).count();
    });
  }
  while (ready.load() < nthreads) {
  }
  go.store(true, std::memory_order_release);
  for (auto& th : ts) th.join();
  return *std::max_element(secs.begin(), secs.end());
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  double target = argc > 2 ? std::atof(argv[2]) : 0.3;
  int hw = (int)std::max(1u, std::thread::hardware_concurrency());
  std::printf("# hardware_concurrency=%d reps=%d target_s=%.2f\n", hw, reps, target);

  // ---- clock estimate -------------------------------------------------------------
  std::vector<double> ghz_by_threads(3, 0.0);
  for (int nt = 1; nt <= std::min(2, hw); nt++) {
    long iters = 1000000;
    double s = run_threads(1, [&] { g_lsink = add_chain(iters); });
    iters = std::max(1000L, (long)(iters * target / s));
    std::vector<double> ghz;
    for (int r = 0; r < reps; r++) {
      double sec = run_threads(nt, [&] { g_lsink = add_chain(iters); });
      ghz.push_back(100.0 * iters / sec / 1e9);
    }
    double med = median(ghz);
    ghz_by_threads[nt] = med;
    std::printf("RESULT {\"bench\":\"clock_int_add_chain\",\"threads\":%d,\"ghz_median\":%.3f,"
                "\"ghz_min\":%.3f,\"ghz_max\":%.3f}\n",
                nt, med, *std::min_element(ghz.begin(), ghz.end()),
                *std::max_element(ghz.begin(), ghz.end()));
  }
  {
    long iters = 100000;
    double s = run_threads(1, [&] { g_sink = zmm_fma_chain(iters); });
    iters = std::max(1000L, (long)(iters * target / s));
    std::vector<double> ghz;
    for (int r = 0; r < reps; r++) {
      double sec = run_threads(1, [&] { g_sink = zmm_fma_chain(iters); });
      ghz.push_back(4.0 * 100.0 * iters / sec / 1e9);
    }
    std::printf("RESULT {\"bench\":\"clock_zmm_fma_chain_assuming_lat4\",\"threads\":1,"
                "\"ghz_median\":%.3f,\"ghz_min\":%.3f,\"ghz_max\":%.3f}\n",
                median(ghz), *std::min_element(ghz.begin(), ghz.end()),
                *std::max_element(ghz.begin(), ghz.end()));
  }

  // ---- FMA throughput -------------------------------------------------------------
  struct Kern {
    const char* name;
    int lanes;
    int nacc;
    float (*f)(long, float);
  };
  Kern kerns[] = {
      {"avx512_zmm_fma", 16, 12, &fma_zmm<12>},
      {"avx512_zmm_fma", 16, 24, &fma_zmm<24>},
      {"avx2_ymm_fma", 8, 12, &fma_ymm<12>},
  };
  for (auto& k : kerns) {
    for (int nt = 1; nt <= std::min(2, hw); nt++) {
      long iters = 200000;
      double s = run_threads(1, [&] { g_sink = k.f(iters, 0.1f); });
      iters = std::max(1000L, (long)(iters * target / s));
      double flops_per_thread = 2.0 * k.lanes * k.nacc * (double)iters;
      std::vector<double> gf;
      for (int r = 0; r < reps; r++) {
        double sec = run_threads(nt, [&] { g_sink = k.f(iters, 0.1f + r); });
        gf.push_back(flops_per_thread * nt / sec / 1e9);
      }
      double med = median(gf);
      double ghz = ghz_by_threads[nt];
      std::printf("RESULT {\"bench\":\"fma_peak\",\"kernel\":\"%s\",\"accumulators\":%d,"
                  "\"threads\":%d,\"gflops_median\":%.1f,\"gflops_min\":%.1f,"
                  "\"gflops_max\":%.1f,\"flops_per_cycle_per_core_at_median\":%.1f,"
                  "\"flops_per_cycle_per_core_at_max\":%.1f}\n",
                  k.name, k.nacc, nt, med, *std::min_element(gf.begin(), gf.end()),
                  *std::max_element(gf.begin(), gf.end()),
                  ghz > 0 ? med / nt / ghz : 0.0,
                  ghz > 0 ? *std::max_element(gf.begin(), gf.end()) / nt / ghz : 0.0);
    }
  }
  return 0;
}
