// Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016).
//
// A 2x2 block of outputs ("tile") of output channel o is
//   Y = A^T [ sum_c U[o][c] ⊙ V[c] ] A,   U[o][c] = G g[o][c] G^T,   V[c] = B^T d[c] B,
// where d[c] is the 4x4 input patch under the tile in input channel c and g[o][c] the 3x3 kernel
// (all 4x4 after the transforms). So the convolution becomes 16 independent matrix products, one
// per element xi of the transformed 4x4 tile: M[xi] (O x tiles) = U[xi] (O x C) · V[xi] (C x tiles).
// That is 16 C multiply-adds per tile and output channel instead of 36 C (2.25x fewer); the
// transforms only add, subtract and halve (exact in binary) and cost O(C + O) per tile.
//
// Work per image (one task; tasks may also split an image's output channels):
//   1. copy-in. The zero-padded input is split into its four phase planes Q[p][q] (padded rows of
//      parity p, columns of parity q), each with row width TWq = TW + 1 for TW tiles per output
//      row. With the tile index u = ty * TWq + tx, patch value d[i][j] of tile u is
//      Q[i % 2][j % 2][(i / 2) * TWq + j / 2 + u]: for a vector of consecutive tiles each of the
//      16 patch values is one plain vector load. (Tiles at tx = TW are computed and dropped.)
//   2. per strip of up to 3 vectors of tiles: the input transform into V[xi][c][strip]; then per
//      block of 8 output channels, per xi, a register-blocked product over c (8 channels x 3
//      vectors of tiles in 24 accumulators, the 16 results stay in L1) and the output transform
//      into Z[o][2a + b][u], the output at (2 ty + a, 2 tx + b), bias added.
//   3. copy-out. Z's two column phases are interleaved into y's rows.
// Each output is computed by the same operations in the same order however the work is split,
// so the bits do not depend on the thread count. Accuracy: the transforms add at most a few
// roundings on top of the direct sum (measured against f64 loops in the tests).
#include "ops/kernels/conv_winograd.hpp"

#include <algorithm>
#include <type_traits>

#include "core/parallel.hpp"
#include "ops/kernels/conv_util.hpp"

namespace tg::kernels {
namespace {

using conv_util::ceil_div;
using conv_util::kLanes;
using conv_util::Scratch;
using conv_util::Vec;

constexpr int64_t kOutBlock = 8;   // output channels per micro-tile
constexpr int64_t kStripVecs = 3;  // vectors of tiles per micro-tile (and per strip)
constexpr int64_t kXi = 16;        // elements of a transformed tile

// Sizes derived from the geometry, shared by the steps.
struct Plan {
  int64_t C, O, OB;   // input channels, output channels, blocks of kOutBlock output channels
  int64_t TH, TW;     // tiles per column and per row
  int64_t TWq;        // row width of a phase plane (TW + 1: tile tx reads columns tx and tx + 1)
  int64_t tiles;      // TH * TWq tile positions per image (the tx = TW ones are dropped)
  int64_t plane;      // elements per phase plane, with slack for the last vector's overrun
  int64_t zrow;       // elements per row of Z (tile positions rounded up, plus slack)
  template <class T>
  static Plan make(const ConvGeometry& g) {
    constexpr int64_t L = kLanes<T>;
    Plan p;
    p.C = g.c;
    p.O = g.o;
    p.OB = ceil_div(g.o, kOutBlock);
    p.TH = ceil_div(g.ho, 2);
    p.TW = ceil_div(g.wo, 2);
    p.TWq = p.TW + 1;
    p.tiles = p.TH * p.TWq;
    // The last vector reads up to lane round_up(tiles, L) - 1 at offset TWq + 1 (patch row/column 3).
    p.plane = (p.TH + 1) * p.TWq + L;
    p.zrow = ceil_div(p.tiles, L) * L + L;
    return p;
  }
};

// U[ob][xi][c][i] = (G g G^T)[xi] for output channel ob * 8 + i (zero rows past O), computed in f64
// and rounded once. G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
template <class T>
void transform_weights(const Plan& p, const T* w, T* U) {
  constexpr int64_t B = kOutBlock;
  parallel_for(p.OB, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ob = lo; ob < hi; ++ob)
      for (int64_t c = 0; c < p.C; ++c) {
        // The block's 8 output channels side by side (i innermost, so the arithmetic vectorises).
        double k[9][B] = {};
        for (int64_t i = 0; i < B && ob * B + i < p.O; ++i)
          for (int j = 0; j < 9; ++j) k[j][i] = static_cast<double>(w[((ob * B + i) * p.C + c) * 9 + j]);
        double t[4][3][B];  // G g
        for (int j = 0; j < 3; ++j)
          for (int64_t i = 0; i < B; ++i) {
            const double k0 = k[j][i], k1 = k[3 + j][i], k2 = k[6 + j][i];
            t[0][j][i] = k0;
            t[1][j][i] = 0.5 * (k0 + k1 + k2);
            t[2][j][i] = 0.5 * (k0 - k1 + k2);
            t[3][j][i] = k2;
          }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T, rounded once
          T* u = U + ((ob * kXi + r * 4) * p.C + c) * B;
          const int64_t xs = p.C * B;  // stride between xi
          for (int64_t i = 0; i < B; ++i) {
            const double a = t[r][0][i], b = t[r][1][i], d = t[r][2][i];
            u[i] = static_cast<T>(a);
            u[xs + i] = static_cast<T>(0.5 * (a + b + d));
            u[2 * xs + i] = static_cast<T>(0.5 * (a - b + d));
            u[3 * xs + i] = static_cast<T>(d);
          }
        }
      }
  });
}

// Q[c][2 p + q][r * TWq + s] = padded input at row 2 r + p, column 2 s + q, for one image. Only
// the image's own positions are written: the zero padding is laid down once per buffer.
// Input column iw sits at padded column iw + pw: the even input columns go to phase pw % 2 from
// s = pw / 2 on, the odd ones to the other phase from s = (pw + 1) / 2 on.
template <class T>
void split_phases(const ConvGeometry& g, const Plan& p, const T* x, T* Q) {
  const int64_t q_even = g.pw & 1, s_even = g.pw >> 1, s_odd = (g.pw + 1) >> 1;
  const T* x_end = x + p.C * g.h * g.w;
  for (int64_t c = 0; c < p.C; ++c) {
    for (int64_t ih = 0; ih < g.h; ++ih) {
      const int64_t R = ih + g.ph;
      T* qe = Q + (c * 4 + 2 * (R & 1) + q_even) * p.plane + (R >> 1) * p.TWq + s_even;
      T* qo = Q + (c * 4 + 2 * (R & 1) + 1 - q_even) * p.plane + (R >> 1) * p.TWq + s_odd;
      conv_util::split_row_columns(x + (c * g.h + ih) * g.w, g.w, x_end, qe, qo);
    }
  }
}

// V[xi][c][v * L + l] = (B^T d B)[xi] of tile u0 + v * L + l, for v < nv.
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
template <class T>
void transform_input(const Plan& p, const T* Q, int64_t u0, int64_t nv, T* V) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  for (int64_t c = 0; c < p.C; ++c) {
    const T* qc = Q + c * 4 * p.plane + u0;
    for (int64_t v = 0; v < nv; ++v) {
      Vec<T> d[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          d[i][j] = Vec<T>::load_unaligned(qc + ((i & 1) * 2 + (j & 1)) * p.plane + (i >> 1) * p.TWq + (j >> 1) + v * L);
      Vec<T> t[4][4];  // B^T d
      for (int j = 0; j < 4; ++j) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
      }
      T* out = V + c * SV + v * L;
      const int64_t xs = p.C * SV;  // stride between xi
      for (int i = 0; i < 4; ++i) {  // (B^T d) B
        (t[i][0] - t[i][2]).store_aligned(out + (i * 4 + 0) * xs);
        (t[i][1] + t[i][2]).store_aligned(out + (i * 4 + 1) * xs);
        (t[i][2] - t[i][1]).store_aligned(out + (i * 4 + 2) * xs);
        (t[i][1] - t[i][3]).store_aligned(out + (i * 4 + 3) * xs);
      }
    }
  }
}

// M[i][v * L + l] = sum over c of U[c][i] * V[c][v * L + l]: 8 output channels x NV vectors of
// tiles in registers, one multiply-add chain per output in channel order.
template <class T, int NV>
void tile_product(const T* V, const T* U, int64_t C, T* M) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  Vec<T> acc[kOutBlock][NV];
  for (auto& row : acc)
    for (auto& a : row) a = Vec<T>(T(0));
  for (int64_t c = 0; c < C; ++c) {
    Vec<T> b[NV];
    for (int j = 0; j < NV; ++j) b[j] = Vec<T>::load_aligned(V + c * SV + j * L);
    for (int64_t i = 0; i < kOutBlock; ++i) {
      const Vec<T> a(U[c * kOutBlock + i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = xsimd::fma(a, b[j], acc[i][j]);
    }
  }
  for (int64_t i = 0; i < kOutBlock; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j].store_aligned(M + i * SV + j * L);
}

template <class T>
using TileProductFn = void (*)(const T*, const T*, int64_t, T*);
template <class T>
constexpr TileProductFn<T> kTileProduct[kStripVecs] = {&tile_product<T, 1>, &tile_product<T, 2>, &tile_product<T, 3>};

// Z[o][2 a + b][u0 + l] = (A^T M A)[a][b] (+ bias[o]) for the block's channels o0 + i, i < rows.
// A^T = [1 1 1 0; 0 1 -1 -1].
template <class T>
void transform_output(const Plan& p, const T* M, int64_t nv, int64_t o0, int64_t rows, const T* bias, int64_t u0,
                      T* Z) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = o0 + i;
    T* z = Z + o * 4 * p.zrow + u0;
    for (int64_t v = 0; v < nv; ++v) {
      Vec<T> m[kXi];
      for (int64_t xi = 0; xi < kXi; ++xi) m[xi] = Vec<T>::load_aligned(M + (xi * kOutBlock + i) * SV + v * L);
      Vec<T> s0[4], s1[4];  // A^T m
      for (int j = 0; j < 4; ++j) {
        s0[j] = m[j] + m[4 + j] + m[8 + j];
        s1[j] = m[4 + j] - m[8 + j] - m[12 + j];
      }
      Vec<T> y00 = s0[0] + s0[1] + s0[2], y01 = s0[1] - s0[2] - s0[3];
      Vec<T> y10 = s1[0] + s1[1] + s1[2], y11 = s1[1] - s1[2] - s1[3];
      if (bias) {
        const Vec<T> bv(bias[o]);
        y00 += bv;
        y01 += bv;
        y10 += bv;
        y11 += bv;
      }
      y00.store_unaligned(z + v * L);
      y01.store_unaligned(z + p.zrow + v * L);
      y10.store_unaligned(z + 2 * p.zrow + v * L);
      y11.store_unaligned(z + 3 * p.zrow + v * L);
    }
  }
}

// y[o][2 ty + a][2 tx + b] = Z[o][2 a + b][ty * TWq + tx] for channels [o_lo, o_hi) of one image.
template <class T>
void interleave_out(const ConvGeometry& g, const Plan& p, const T* Z, int64_t o_lo, int64_t o_hi, T* y) {
  for (int64_t o = o_lo; o < o_hi; ++o)
    for (int64_t row = 0; row < g.ho; ++row) {
      const T* z0 = Z + (o * 4 + 2 * (row & 1)) * p.zrow + (row >> 1) * p.TWq;
      conv_util::merge_row_columns(z0, z0 + p.zrow, g.wo, y + (o * g.ho + row) * g.wo);
    }
}

}  // namespace

bool winograd_applies(const ConvGeometry& g) {
  if (!(g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.groups == 1 &&
        g.ho == g.h + 2 * g.ph - 2 && g.wo == g.w + 2 * g.pw - 2 && g.c >= 8 && g.o >= 8)) {
    return false;
  }
  // Multiply-adds per image and channel pair: 16 per tile position, vectors rounded up, plus ~25%
  // for the transforms, against 9 per position of the implicit GEMM (about ho rows of wo + 1).
  // Small planes lose: a 7x7 output fills 20 tile positions (two float vectors) for 16 tiles.
  const int64_t lanes = kLanes<float>;
  const int64_t tiles = ceil_div(g.ho, 2) * (ceil_div(g.wo, 2) + 1);
  return 20 * (ceil_div(tiles, lanes) * lanes) < 9 * g.ho * (g.wo + 1);
}

template <class T>
void winograd_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  const Plan p = Plan::make<T>(g);
  Scratch<T> U(p.OB * kXi * p.C * kOutBlock);
  transform_weights(p, w, U.get());
  // Few images: split each image's output channels too (the input transform is then repeated
  // per part, which is cheap next to the products).
  const int64_t parts = std::min<int64_t>(p.OB, g.n >= 4 ? 1 : 4);
  const int64_t ob_per_part = ceil_div(p.OB, parts);
  const int64_t xs = g.c * g.h * g.w, ys = g.o * g.ho * g.wo;
  const int64_t work_per_task = kXi * ob_per_part * kOutBlock * p.C * p.tiles;
  parallel_for(g.n * parts, conv_util::images_per_task(g.n * parts, work_per_task), [&](int64_t lo, int64_t hi) {
    Scratch<T> Q(p.C * 4 * p.plane), V(kXi * p.C * SV), M(kXi * kOutBlock * SV), Z(p.O * 4 * p.zrow);
    std::fill(Q.get(), Q.get() + p.C * 4 * p.plane, T(0));  // the padding; split_phases writes the rest
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / parts, part = task % parts;
      const int64_t ob_lo = part * ob_per_part, ob_hi = std::min(p.OB, ob_lo + ob_per_part);
      if (ob_lo >= ob_hi) continue;
      split_phases(g, p, x + b * xs, Q.get());
      if (part == parts - 1 && task + 1 < hi) {  // the next image's input and output, while this one is computed
        conv_util::prefetch_range(x + (b + 1) * xs, xs * int64_t(sizeof(T)));
        conv_util::prefetch_range_for_write(y + (b + 1) * ys, ys * int64_t(sizeof(T)));
      }
      for (int64_t u0 = 0, nv = 0; u0 < p.tiles; u0 += nv * L) {
        // Up to 3 vectors per strip; a remainder of 4 runs as 2 + 2 (a 1-vector product is load-bound).
        const int64_t left = ceil_div(p.tiles - u0, L);
        nv = left % kStripVecs == 1 && left > kStripVecs ? 2 : std::min(kStripVecs, left);
        transform_input(p, Q.get(), u0, nv, V.get());
        for (int64_t ob = ob_lo; ob < ob_hi; ++ob) {
          for (int64_t xi = 0; xi < kXi; ++xi)
            kTileProduct<T>[nv - 1](V.get() + xi * p.C * SV, U.get() + (ob * kXi + xi) * p.C * kOutBlock, p.C,
                                    M.get() + xi * kOutBlock * SV);
          const int64_t o0 = ob * kOutBlock;
          transform_output(p, M.get(), nv, o0, std::min(kOutBlock, p.O - o0), bias, u0, Z.get());
        }
      }
      interleave_out(g, p, Z.get(), ob_lo * kOutBlock, std::min(p.O, ob_hi * kOutBlock), y + b * ys);
    }
  });
}

template void winograd_forward<float>(const ConvGeometry&, const float*, const float*, const float*, float*);
template void winograd_forward<double>(const ConvGeometry&, const double*, const double*, const double*, double*);

}  // namespace tg::kernels
