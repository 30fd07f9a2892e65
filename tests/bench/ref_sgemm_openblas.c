/* OpenBLAS sgemm reference for the "gemm" workload (adapted from
 * ../shared/bench-reference/gemm/sgemm_openblas.c): same methodology (warm-up, calibrated
 * repetitions per sample, median of samples), printed in bench_util's JSON line format.
 *   ref_sgemm_openblas gemm_shapes.txt [threads=1] [samples=7] [min_sample_s=0.05] [workload=gemm]
 * Build: gcc -O2 -std=c11 ref_sgemm_openblas.c -o ref_sgemm_openblas -lopenblas */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern void openblas_set_num_threads(int);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s shapes.txt [threads] [samples] [min_sample_s] [workload]\n", argv[0]);
    return 2;
  }
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  int samples = argc > 3 ? atoi(argv[3]) : 7;
  double min_s = argc > 4 ? atof(argv[4]) : 0.05;
  const char* workload = argc > 5 ? argv[5] : "gemm"; /* the name the results are filed under */
  if (threads < 1 || samples < 1) return 2;
  openblas_set_num_threads(threads);
  FILE* f = fopen(argv[1], "r");
  if (!f) {
    perror("shapes");
    return 2;
  }
  char line[256];
  srand(1234);
  while (fgets(line, sizeof line, f)) {
    char name[64], ta, tb;
    int M, N, K;
    if (line[0] == '#' || sscanf(line, "%63s %d %d %d %c %c", name, &M, &N, &K, &ta, &tb) != 6) continue;
    float* A = aligned_alloc(64, ((size_t)M * K * 4 + 63) / 64 * 64);
    float* B = aligned_alloc(64, ((size_t)K * N * 4 + 63) / 64 * 64);
    float* C = aligned_alloc(64, ((size_t)M * N * 4 + 63) / 64 * 64);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)rand() / RAND_MAX - 0.5f;
    memset(C, 0, (size_t)M * N * 4);
    enum CBLAS_TRANSPOSE TA = ta == 'T' ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE TB = tb == 'T' ? CblasTrans : CblasNoTrans;
    int lda = ta == 'T' ? M : K, ldb = tb == 'T' ? K : N;
#define CALL() cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N)
    CALL();
    double t0 = now();
    int calib = 0;
    while (now() - t0 < 0.02 || calib < 1) {
      CALL();
      calib++;
    }
    double per = (now() - t0) / calib;
    int reps = (int)(min_s / per) + 1;
    double* t = malloc(sizeof(double) * samples);
    for (int s = 0; s < samples; s++) {
      double t1 = now();
      for (int r = 0; r < reps; r++) CALL();
      t[s] = (now() - t1) / reps;
    }
    qsort(t, samples, sizeof(double), cmp);
    double med = samples % 2 ? t[samples / 2] : 0.5 * (t[samples / 2 - 1] + t[samples / 2]);
    printf("{\"workload\": \"%s\", \"shape\": \"%s\", \"threads\": %d, \"impl\": \"openblas\", \"median_s\": %.6g, "
           "\"min_s\": %.6g, \"max_s\": %.6g, \"steps\": %d, \"M\": %d, \"N\": %d, \"K\": %d, \"gflops\": %.1f}\n",
           workload, name, threads, med, t[0], t[samples - 1], samples, M, N, K, 2.0 * M * N * (double)K / med / 1e9);
    fflush(stdout);
    free(t);
    free(A);
    free(B);
    free(C);
  }
  fclose(f);
  return 0;
}
