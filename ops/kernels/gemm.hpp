#pragma once
// Dense matrix products (GEMM) on strided fp32 / fp64 matrices.
//
// Pure kernels: no autograd, no shape checks beyond what the signatures imply. Results are
// bit-identical for any TBB thread count and from run to run (the k-summation order of every
// output element depends only on k), and a product computed inside gemm_batched has the same
// bits as the same product computed alone by gemm. The implementation (blocking scheme, micro-
// kernel) is described at the top of gemm.cpp.
#include <cstdint>

namespace tg::kernels {

// A read-only strided matrix: element (i, j) is data[i * rs + j * cs]. Either stride may be any
// value (transposed views have rs == 1); strides are in elements.
template <class T>
struct ConstMatrix {
  const T* data;
  int64_t rs;
  int64_t cs;
};

// A writable strided matrix (the output). Usually cs == 1, but any strides are handled as long as
// distinct (i, j) address distinct elements.
template <class T>
struct Matrix {
  T* data;
  int64_t rs;
  int64_t cs;
};

// C[m, n]  = A[m, k] · B[k, n]   (accumulate == false: C's old contents, possibly NaN, are never read)
// C[m, n] += A[m, k] · B[k, n]   (accumulate == true)
// k == 0 gives zeros (or leaves C unchanged when accumulating); m == 0 or n == 0 is a no-op.
// C must not overlap A or B.
void gemm(int64_t m, int64_t n, int64_t k, ConstMatrix<float> a, ConstMatrix<float> b,
          Matrix<float> c, bool accumulate);
void gemm(int64_t m, int64_t n, int64_t k, ConstMatrix<double> a, ConstMatrix<double> b,
          Matrix<double> c, bool accumulate);

// `batch` products of the same shape; operand p of product i starts at p.data + i * p_batch_stride
// (a batch stride of 0 broadcasts one operand over the batch). If c_batch_stride == 0 the products
// are applied to the one C in batch order (with accumulate == true this sums them
// deterministically); otherwise the C matrices of different products must not overlap.
void gemm_batched(int64_t batch, int64_t m, int64_t n, int64_t k, ConstMatrix<float> a,
                  int64_t a_batch_stride, ConstMatrix<float> b, int64_t b_batch_stride,
                  Matrix<float> c, int64_t c_batch_stride, bool accumulate);
void gemm_batched(int64_t batch, int64_t m, int64_t n, int64_t k, ConstMatrix<double> a,
                  int64_t a_batch_stride, ConstMatrix<double> b, int64_t b_batch_stride,
                  Matrix<double> c, int64_t c_batch_stride, bool accumulate);

}  // namespace tg::kernels
