// Winograd convolution, F(4x4, 3x3) or F(2x2, 3x3): the fast path of conv2d_forward and of the
// input gradient for 3x3 kernels with unit stride and dilation (internal to the convolution
// kernels; see conv_winograd.cpp for the algorithm and the tile layouts).
#pragma once
#include "ops/kernels/conv.hpp"

namespace tg::kernels {

// True when g is a 3x3, unit-stride, undilated convolution with one group, an output no larger
// than the natural one, and enough channels on both sides for the transforms to pay off.
bool winograd_applies(const ConvGeometry& g);

// y = conv(x, w) (+ bias[o]) for a geometry where winograd_applies(g); same contract as
// conv2d_forward (y overwritten, bits independent of the thread count). Returns false, leaving y
// unspecified, when an input tile holds an inf or NaN (or transforms to one): the transforms mix
// every value of a tile into every product, so it would reach outputs that cannot see it
// (inf * 0 = NaN); the caller then computes y on another path.
template <class T>
bool winograd_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y);

// The same with the kernel flipped and the channel roles swapped, read from w_swapped
// [g.c][g.o][3][3]: weight (o, c, p, q) is w_swapped[c][o][2 - p][2 - q]. The input gradient of
// a convolution with weights w_swapped is this convolution of gy (padded by 2 - p); no flipped
// copy of the weights is made.
template <class T>
bool winograd_flipped(const ConvGeometry& g, const T* x, const T* w_swapped, T* y);

}  // namespace tg::kernels
