// Differentiable FFTs, complex elementwise arithmetic and the FFT causal convolution.
//
// Complex tensors
// ---------------
// tapegrad has no complex dtype: a complex tensor is a real tensor (f32 or f64) whose trailing
// dim has size 2 and holds (re, im) — the interleaved layout of the FFT kernels. A complex
// tensor of logical shape [B, n] is therefore a real tensor [B, n, 2]. The gradient of a complex
// tensor follows PyTorch's convention for complex numbers seen as pairs of reals: it is the pair
// (dL/dRe, dL/dIm) in the same trailing-2 layout (the complex number G = dL/dRe + i dL/dIm).
// With that convention, for an output w = f(z) holomorphic in z the backward rule is
// G_z = G_w * conj(f'(z)), and for a C-linear map w = M z it is G_z = M^H G_w.
//
// Transforms follow numpy.fft with the default ("backward") normalisation:
//   rfft:  X_k = sum_j x_j exp(-2 pi i j k / n)            k = 0 .. n/2   (unscaled)
//   irfft: x_j = (1/n) sum_{k=0}^{n-1} X_k exp(+2 pi i j k / n), X Hermitian-completed
//   fft:   forward unscaled, inverse scaled by 1/n.
// Any length n >= 1 is supported (odd, even, prime). Results are bit-identical for any number of
// threads.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace tg::ops {

// ---- transforms -------------------------------------------------------------------------------------------
// Real-to-complex DFT along the last dim: x [..., L] -> [..., n/2+1, 2]. n = -1 means n = L; for
// n > L the signal is zero-padded, for n < L truncated to its first n samples (numpy semantics).
// Backward: dL/dx = n * irfft(G', n) with G'_k = G_k / 2 except at the edge bins k = 0 and
// (even n) k = n/2, where G'_k = G_k; samples beyond n (truncation) get zero gradient.
Tensor rfft(const Tensor& x, std::int64_t n = -1);
// Complex-to-real inverse of rfft: X [..., m, 2] -> [..., n] (n = -1 means 2*(m-1)), exactly
// numpy.fft.irfft(X, n): the imaginary parts of X_0 and (even n) X_{n/2} are ignored, bins beyond
// n/2 are ignored and missing ones (m < n/2+1) are zeros.
// Backward: G_k = (c_k / n) rfft(g, n)_k for k < min(m, n/2+1), c_k = 1 at the edge bins (k = 0
// and, for even n, k = n/2; their imaginary gradient is 0) and 2 otherwise; 0 for k > n/2.
Tensor irfft(const Tensor& X, std::int64_t n = -1);
// Complex-to-complex DFT along the second-to-last dim: x [..., n, 2] -> [..., n, 2]; inverse
// uses exp(+2 pi i j k / n) and scales by 1/n. Backward (adjoint): forward G_x = n * ifft(G_y)
// (the unscaled conjugate transform), inverse G_x = fft(G_y) / n.
Tensor fft(const Tensor& x, bool inverse = false);

// ---- complex elementwise (NumPy broadcasting over the leading dims; the trailing 2 must match) ----------
// a * b.  Backward: G_a = G * conj(b), G_b = G * conj(a).
Tensor complex_mul(const Tensor& a, const Tensor& b);
// a / b (Smith's algorithm).  Backward: G_a = G / conj(b), G_b = -G_a * conj(a / b).
Tensor complex_div(const Tensor& a, const Tensor& b);
// conj(a).  Backward: G_a = conj(G).
Tensor complex_conj(const Tensor& a);
// |a| -> real tensor [...] (without the trailing 2), computed without overflow.
// Backward: G_a = g * a / |a|, 0 where a = 0, without forming 1 / |a| (which overflows for a
// subnormal |a|); at an infinite component, the direction's limit (1 on that component).
Tensor complex_abs(const Tensor& a);

// ---- FFT convolution ----------------------------------------------------------------------------------------
// Causal convolution along the last dim, as one fused op:
//   y[..., t] = sum_{s = 0}^{min(t, Lk-1)} k[..., s] u[..., t - s],   t = 0 .. L-1
// u [..., L], k [..., Lk]; the leading dims broadcast (NumPy rules), typically u [B, C, L] with a
// per-channel kernel k [C, Lk]. Computed as irfft(rfft(u, nf) * rfft(k, nf), nf)[..., :L] with
// nf = fft_conv_length(L, Lk) >= L + Lk - 1 (no circular wrap-around), the spectra of a block of
// rows staying in cache; rfft(k) is computed once per kernel row, not per broadcast copy.
// causal = false returns the full linear convolution, y [..., L + Lk - 1].
// Backward (with G = rfft(gy, nf), U = rfft(u, nf), K = rfft(k, nf)):
//   gu = irfft(G * conj(K), nf)[..., :L]   (gu[s] = sum_t gy[t] k[t - s])
//   gk = irfft(sum over the rows sharing a kernel row of G * conj(U), nf)[..., :Lk]
// (gk[s] = sum_t gy[t] u[t - s]); the broadcast sum happens on the spectra, in a fixed order.
// U is kept from the forward pass when k needs a gradient (memory: about 2x u) unless
// set_fft_conv_recompute(true), which recomputes it in the backward pass instead.
Tensor fft_conv(const Tensor& u, const Tensor& k, bool causal = true);
// The FFT length fft_conv uses: the smallest even 2^a 3^b 5^c >= L + Lk - 1.
std::int64_t fft_conv_length(std::int64_t L, std::int64_t Lk);
// Memory/speed trade-off of fft_conv's backward (process-wide; default false: keep U).
void set_fft_conv_recompute(bool recompute);
bool fft_conv_recompute();

}  // namespace tg::ops
