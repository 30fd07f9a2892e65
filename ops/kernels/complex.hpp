// Kernels for complex tensors stored as real tensors with a trailing dim of 2 (re, im), and the
// fused FFT causal convolution. No autograd here; the frontends and backward rules are ops/fft.cpp.
//
// Elementwise complex kernels take tensors whose leading dims (all but the trailing 2; real
// operands: all dims) have one shape — inputs may be strided or expanded (stride 0) views — and
// whose trailing pair is contiguous (stride 1). Every element goes through the same SIMD code
// (ragged tails are padded into a full batch), so results do not depend on layout, chunking or
// thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/tensor.hpp"

namespace tg::kernels {

// out = scale * a * b, or scale * a * conj(b) when conj_b.
void complex_mul(const Tensor& out, const Tensor& a, const Tensor& b, bool conj_b, double scale = 1.0);
// out = a / b, or a / conj(b) when conj_b (Smith's algorithm: no overflow from |b|^2).
void complex_div(const Tensor& out, const Tensor& a, const Tensor& b, bool conj_b);
// out = conj(a).
void complex_conj(const Tensor& out, const Tensor& a);
// out (real, leading shape) = |a|, without overflow or underflow of re^2 + im^2.
void complex_abs(const Tensor& out, const Tensor& a);
// out (complex) = g * a / |a| with g real; 0 where a == 0. Exact for subnormal |a| and for |a|
// beyond the dtype's range; where a component is infinite, the direction is its limit (1 on it).
void complex_abs_backward(const Tensor& out, const Tensor& g, const Tensor& a);

// ---- fused FFT convolution ---------------------------------------------------------------------------
// Rows r = 0 .. rows-1 of the signal u (each L samples, rows u + r*u_stride) are convolved with
// kernel row r % ck (spectrum K: ck contiguous rows of nb = nf/2+1 interleaved bins, K = rfft(k, nf)):
//   y[r, t] = sum_{s <= t} k[r % ck, s] u[r, t - s],  t < out_len   (out_len <= L + Lk - 1 <= nf)
// computed as irfft(rfft(u_r, nf) * K_{r % ck}, nf)[:out_len], a block of rows at a time, the
// spectra staying in per-thread scratch. y is contiguous [rows, out_len]. When U_save is not null,
// rfft(u_r, nf) is also kept there for the backward pass: row r at U_save + r * saved_stride
// (fft_conv_saved_stride: 2*nb scalars rounded up to 64 bytes, written with streaming stores).
struct FftConvGeometry {
  std::int64_t rows = 0;     // rows of u / y (a multiple of ck)
  std::int64_t ck = 0;       // rows of the kernel
  std::int64_t L = 0;        // samples per row of u (and of gu)
  std::int64_t Lk = 0;       // samples per row of k (and of gk)
  std::int64_t out_len = 0;  // samples per row of y (and of gy)
  std::int64_t nf = 0;       // FFT length, >= L + Lk - 1
};
std::int64_t fft_conv_saved_stride(std::int64_t nf, std::size_t scalar_size);
void fft_conv_forward(const float* u, std::int64_t u_stride, const float* K, float* y, float* U_save,
                      const FftConvGeometry& g);
void fft_conv_forward(const double* u, std::int64_t u_stride, const double* K, double* y, double* U_save,
                      const FftConvGeometry& g);

// The adjoint: with G_r = rfft(gy_r, nf),
//   gu[r] = irfft(G_r * conj(K_{r % ck}), nf)[:L]
//   gk[c] = irfft(sum_{r % ck == c} G_r * conj(U_r), nf)[:Lk]      (sum in increasing r)
// (correlations: gu[s] = sum_t gy[t] k[t - s], gk[s] = sum_t gy[t] u[t - s]; nf >= L + Lk - 1
// keeps the circular wrap-around out of both). U_r is read from U_saved when it is not null, else
// recomputed from u. gu (contiguous [rows, L]) and gk (contiguous [ck, Lk]) may be null when not
// wanted. The kernel-row sums are accumulated in a fixed order whatever the thread count.
void fft_conv_backward(const float* u, std::int64_t u_stride, const float* U_saved, const float* gy,
                       std::int64_t gy_stride, const float* K, float* gu, float* gk, const FftConvGeometry& g);
void fft_conv_backward(const double* u, std::int64_t u_stride, const double* U_saved, const double* gy,
                       std::int64_t gy_stride, const double* K, double* gu, double* gk, const FftConvGeometry& g);

}  // namespace tg::kernels
