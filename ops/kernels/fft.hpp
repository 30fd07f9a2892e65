// Batched FFT kernels: real-to-complex, complex-to-real and complex-to-complex DFTs over rows.
//
// Conventions (numpy.fft "backward" normalisation):
//   forward  X_k = sum_j x_j exp(-2 pi i j k / n)          (unscaled)
//   inverse  x_j = (1/n) sum_k X_k exp(+2 pi i j k / n)
// Complex data is interleaved (re, im). Strides are in scalar elements (a row of n complex
// numbers spans 2n scalars); elements are contiguous within a row. Input and output never alias.
// Any n >= 1 is supported; rows <= 0 or n <= 0 is a no-op.
//
// Results are bit-identical for any thread count and from run to run (each row is computed by a
// fixed sequence of operations that does not depend on how rows are split among threads).
// All functions are safe to call concurrently from several threads.
#pragma once

#include <cstdint>

namespace tg::kernels {

// Real-to-complex DFT of `rows` real rows of length n. Output row r (at out + r*out_row_stride)
// holds the n/2+1 bins X_0 .. X_{n/2} as interleaved (re, im) pairs: 2*(n/2+1) scalars.
void rfft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n);
void rfft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n);

// As rfft, but each input row holds only in_len samples (0 <= in_len <= n); the samples
// in_len .. n-1 are taken as zeros (the zero padding of an FFT convolution, without a padded copy).
void rfft_padded(const float* in, int64_t in_row_stride, int64_t in_len, float* out, int64_t out_row_stride,
                 int64_t rows, int64_t n);
void rfft_padded(const double* in, int64_t in_row_stride, int64_t in_len, double* out, int64_t out_row_stride,
                 int64_t rows, int64_t n);

// Inverse of rfft, exactly numpy.fft.irfft(X, n): input rows hold n/2+1 interleaved bins, output
// rows hold n real samples of (1/n) * (inverse DFT of the Hermitian-completed spectrum). The
// imaginary parts of X_0 and (for even n) X_{n/2} are ignored.
void irfft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n);
void irfft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n);

// As irfft, but writes only the first out_len samples of each output row (0 <= out_len <= n):
// the truncation y[..., :L] of an FFT convolution, without a full-length temporary.
void irfft_truncated(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows,
                     int64_t n, int64_t out_len);
void irfft_truncated(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows,
                     int64_t n, int64_t out_len);

// Complex-to-complex DFT of rows of n interleaved complex numbers. inverse == true uses
// exp(+2 pi i j k / n) and scales by 1/n.
void fft(const float* in, int64_t in_row_stride, float* out, int64_t out_row_stride, int64_t rows, int64_t n,
         bool inverse);
void fft(const double* in, int64_t in_row_stride, double* out, int64_t out_row_stride, int64_t rows, int64_t n,
         bool inverse);

// Number of rows the kernels process together in SIMD lanes for this scalar type (16 floats /
// 8 doubles with AVX-512). Callers never need it for correctness; batches of this many rows are
// the unit of parallel work.
int fft_row_batch_float();
int fft_row_batch_double();

// Outputs of at least simd::stream_threshold bytes (rows * row length; ops/kernels/simd_partial.hpp)
// are written with non-temporal stores when AVX-512 is available. Results are bit-identical either
// way.

}  // namespace tg::kernels
