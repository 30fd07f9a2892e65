// Convolution-family kernels: 2-D convolution (forward, input gradient, weight gradient), max and
// average pooling, nearest/bilinear upsampling. Pure kernels on contiguous NCHW buffers: no
// autograd, no argument checks (the frontends in ops/conv.cpp validate shapes first).
//
// Determinism: every kernel splits its work into chunks fixed by the shapes alone and combines
// partial results (weight/bias gradients) in chunk order, so results are bit-identical for any
// thread count and from run to run. Scatters (col2im, pooling and upsampling backward) give each
// image plane to one task, which adds its contributions in a fixed order.
//
// The algorithms are described at the top of conv.cpp.
#pragma once

#include <cstdint>

namespace tg::kernels {

// y = conv(x, w): x [n, c, h, w], w [o, c / groups, kh, kw], y [n, o, ho, wo] where
// y[b, oc, i, j] = sum over the channels of oc's group and the kernel window of
//   w[oc, ci, p, q] * x[b, ci, i * sh - ph + p * dh, j * sw - pw + q * dw]   (zero outside x).
// ho and wo are usually (h + 2 ph - dh (kh - 1) - 1) / sh + 1, but any ho, wo >= 0 whose windows
// stay within the padded input work (the transposed convolution uses that).
struct ConvGeometry {
  int64_t n, c, h, w;
  int64_t o, kh, kw;
  int64_t ho, wo;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t groups;
};

// y = conv(x, w) (+ bias[o] per output channel when bias != nullptr).
template <class T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y);
// gx = the adjoint of conv(., w) applied to gy: gx [n, c, h, w] is overwritten (+ bias[c] per
// channel of gx when bias != nullptr: the forward of a transposed convolution with a bias).
template <class T>
void conv2d_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, const T* bias = nullptr);
// gw [o, c / groups, kh, kw] = sum over the batch of gy ⊗ windows of x (overwritten); when gbias
// is not null, gbias[o] = sum of gy over batch and pixels (overwritten).
template <class T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, T* gbias);

// y[b, ch, :] += bias[ch] for y [n, channels, plane].
template <class T>
void add_channel_bias(int64_t n, int64_t channels, int64_t plane, const T* bias, T* y);
// out[ch] = sum over b and the plane of y[b, ch, :] (accumulated in f64, fixed order).
template <class T>
void channel_sums(int64_t n, int64_t channels, int64_t plane, const T* y, T* out);

// Pooling over `planes` independent planes of h x w (n * c of an NCHW tensor).
struct PoolGeometry {
  int64_t planes, h, w;
  int64_t ho, wo;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// y = max over each window (padding never wins); idx = the flat position (row * w + col) in the
// input plane of the first maximum in row-major window order (a NaN wins over numbers), or -1
// for a window without any input element.
template <class T>
void max_pool2d_forward(const PoolGeometry& g, const T* x, T* y, int32_t* idx);
// gx (overwritten) = zeros with gy[i] added at idx[i].
template <class T>
void max_pool2d_backward(const PoolGeometry& g, const T* gy, const int32_t* idx, T* gx);

// Average pooling with separable windows: output (i, j) averages input rows [h0[i], h1[i]) and
// columns [w0[j], w1[j]) and divides the sum by hdiv[i] * wdiv[j] (arrays of ho and wo entries).
struct AvgPoolWindows {
  const int64_t *h0, *h1, *hdiv;
  const int64_t *w0, *w1, *wdiv;
};
template <class T>
void avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const AvgPoolWindows& win,
                        const T* x, T* y);
template <class T>
void avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const AvgPoolWindows& win,
                         const T* gy, T* gx);

// Separable interpolation tables: output row i reads input rows r0[i] (weight l0[i]) and r1[i]
// (weight l1[i]); nearest neighbour has r1 = r0 and l0 = 1, l1 = 0.
template <class T>
struct InterpTable {
  const int64_t *r0, *r1;
  const T *l0, *l1;
};
template <class T>
void upsample2d_forward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const InterpTable<T>& rows,
                        const InterpTable<T>& cols, bool nearest, const T* x, T* y);
// gx (overwritten) = the adjoint: each gy element is scattered to its (up to) four sources.
template <class T>
void upsample2d_backward(int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo, const InterpTable<T>& rows,
                         const InterpTable<T>& cols, bool nearest, const T* gy, T* gx);

}  // namespace tg::kernels
