// fp32 GEMM throughput of tg::kernels::gemm, side by side with the OpenBLAS reference program
// (/work/shared/bench-reference/gemm/sgemm_openblas.c), whose methodology it mirrors: same shapes
// file, same random data, one warm-up + calibration, then `samples` timed samples that each repeat
// the call until it lasts >= min_sample_s.
//
// Usage: gemm_bench shapes.txt [threads=1] [samples=7] [min_sample_s=0.05]
// Output: one line per shape,
//   RESULT {"workload":"gemm","shape":...,"impl":"tapegrad","median_s":...,"gflops":...}
// with per-call seconds; gflops = 2*M*N*K / median_s.
#include <oneapi/tbb/global_control.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/kernels/gemm.hpp"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

float* alloc_floats(size_t n) {
  return static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s shapes.txt [threads=1] [samples=7] [min_sample_s=0.05] [workload=gemm]\n", argv[0]);
    return 2;
  }
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  const int samples = std::max(1, argc > 3 ? std::atoi(argv[3]) : 7);
  const double min_s = argc > 4 ? std::atof(argv[4]) : 0.05;
  const char* workload = argc > 5 ? argv[5] : "gemm";  // the name the results are filed under
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, static_cast<size_t>(std::max(1, threads)));

  FILE* f = std::fopen(argv[1], "r");
  if (!f) {
    std::perror("shapes");
    return 2;
  }
  std::printf("# tapegrad gemm | threads: %d\n", threads);
  char line[256];
  std::srand(1234);
  while (std::fgets(line, sizeof line, f)) {
    char name[64], ta, tb;
    int M, N, K;
    if (line[0] == '#' || std::sscanf(line, "%63s %d %d %d %c %c", name, &M, &N, &K, &ta, &tb) != 6) continue;
    float* A = alloc_floats(size_t(M) * K);
    float* B = alloc_floats(size_t(K) * N);
    float* C = alloc_floats(size_t(M) * N);
    for (size_t i = 0; i < size_t(M) * K; i++) A[i] = float(std::rand()) / RAND_MAX - 0.5f;
    for (size_t i = 0; i < size_t(K) * N; i++) B[i] = float(std::rand()) / RAND_MAX - 0.5f;
    std::memset(C, 0, size_t(M) * N * sizeof(float));
    // op(A)[i, p]: stored M x K (row stride K) or, transposed, K x M (element (i, p) at p * M + i).
    const tg::kernels::ConstMatrix<float> a = ta == 'T' ? tg::kernels::ConstMatrix<float>{A, 1, M}
                                                        : tg::kernels::ConstMatrix<float>{A, K, 1};
    const tg::kernels::ConstMatrix<float> b = tb == 'T' ? tg::kernels::ConstMatrix<float>{B, 1, K}
                                                        : tg::kernels::ConstMatrix<float>{B, N, 1};
    const tg::kernels::Matrix<float> c{C, N, 1};
    auto call = [&] { tg::kernels::gemm(M, N, K, a, b, c, false); };

    call();  // warm-up + calibration
    double t0 = now();
    int calib = 0;
    while (now() - t0 < 0.02 || calib < 1) {
      call();
      calib++;
    }
    const double per = (now() - t0) / calib;
    const int reps = int(min_s / per) + 1;
    std::vector<double> secs(samples);
    for (int s = 0; s < samples; s++) {
      const double t1 = now();
      for (int r = 0; r < reps; r++) call();
      secs[s] = (now() - t1) / reps;
    }
    std::sort(secs.begin(), secs.end());
    const double med = secs[samples / 2];
    std::printf(
        "RESULT {\"workload\":\"%s\",\"shape\":\"%s\",\"M\":%d,\"N\":%d,\"K\":%d,\"tA\":\"%c\",\"tB\":\"%c\","
        "\"threads\":%d,\"impl\":\"tapegrad\",\"median_s\":%.9g,\"min_s\":%.9g,\"max_s\":%.9g,\"gflops\":%.1f}\n",
        workload, name, M, N, K, ta, tb, threads, med, secs[0], secs[samples - 1], 2.0 * M * N * double(K) / med / 1e9);
    std::fflush(stdout);
    std::free(A);
    std::free(B);
    std::free(C);
  }
  std::fclose(f);
  return 0;
}
