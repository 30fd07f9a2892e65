// Winograd convolution for 3x3 kernels (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016), in two tile sizes: F(2x2, 3x3) and F(4x4, 3x3).
//
// An M x M block of outputs ("tile", M = 2 or 4) of output channel o is
//   Y = A^T [ sum_c U[o][c] ⊙ V[c] ] A,   U[o][c] = G g[o][c] G^T,   V[c] = B^T d[c] B,
// where d[c] is the N x N input patch under the tile (N = M + 2) in input channel c and g[o][c]
// the 3x3 kernel (all N x N after the transforms). So the convolution becomes N^2 independent
// matrix products, one per element xi of the transformed tile:
//   M[xi] (O x tiles) = U[xi] (O x C) · V[xi] (C x tiles).
// Per output and channel pair that is 16/4 = 4 multiply-adds for F(2x2) and 36/16 = 2.25 for
// F(4x4), instead of 9. The transforms cost O(C + O) per tile. F(2x2)'s transforms only add,
// subtract and halve; F(4x4)'s have entries up to 8 (and 1/6, 1/24 in G), so its f32 rounding
// error is several times larger (rms ~2e-6 of the output's rms; docs/DESIGN.md).
//
// Two layouts of the tiles; the layout and the tile size are chosen from the geometry by counting
// product lanes (winograd_layout): phase planes (below) for larger planes (28 x 28 with F(4x4):
// 2304 lanes per channel pair, against 3584 with F(2x2)), and the tiles of several images side by
// side (forward_dense, further down) for small ones (7 x 7 and 14 x 14), where the phase layout
// would leave lanes empty. F(2x2) wins only on outputs about two rows high.
//
// Phase planes, work per image (one task; tasks may also split an image's output channels):
//   1. copy-in. The zero-padded input is split into its M x M phase planes Q[p][q] (padded rows
//      = p mod M, columns = q mod M), each with row width TWq = TW + 1 for TW tiles per output
//      row. With the tile index u = ty * TWq + tx, patch value d[i][j] of tile u is
//      Q[i % M][j % M][(i / M) * TWq + j / M + u]: for a vector of consecutive tiles each of
//      the N^2 patch values is one plain vector load. (Tiles at tx = TW are computed and dropped.)
//   2. per strip of up to 3 vectors of tiles: the input transform into V[xi][c][strip]; then per
//      block of 8 output channels, per xi, a register-blocked product over c (8 channels x 3
//      vectors of tiles in 24 accumulators, the results stay in cache) and the output transform
//      into Z[o][M a + b][u], the output at (M ty + a, M tx + b), bias added.
//   3. copy-out. Z's M column phases are interleaved into y's rows.
// Each output is computed by the same operations in the same order however the work is split,
// so the bits do not depend on the thread count.
#include "ops/kernels/conv_winograd.hpp"

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "core/parallel.hpp"
#include "core/simd_transpose.hpp"
#include "ops/kernels/conv_util.hpp"

namespace tg::kernels {
namespace {

using conv_util::ceil_div;
using conv_util::kLanes;
using conv_util::Scratch;
using conv_util::Vec;

constexpr int64_t kOutBlock = 8;   // output channels per micro-tile
constexpr int64_t kStripVecs = 3;  // vectors of tiles per micro-tile (and per strip)

// F(M x M, 3 x 3): tile size M, patch size N, N^2 elements xi of a transformed tile, and the
// kernel transform G (N x 3).
template <int M>
struct Tile;
template <>
struct Tile<2> {
  static constexpr int N = 4, Xi = 16;
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
};
template <>
struct Tile<4> {
  static constexpr int N = 6, Xi = 36;
  static constexpr double G[6][3] = {{1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
};

// Work items (images or groups, times channel parts) per task: enough work per task, and no more
// than ~4 tasks per thread, because every task zero-fills its padded input buffer once (on the
// UNet's layers 0.2-0.7 MB). How the items are split never changes a bit of the result.
int64_t tasks_grain(int64_t items, int64_t work_per_item) {
  return std::max(conv_util::items_per_task(work_per_item), ceil_div(items, 4 * int64_t{num_threads()}));
}

// Parts into which the output channels of each image (phase layout) or group of images (dense
// layout) are split, when there are fewer of those than threads: each part repeats the input's
// copy and transform, so no more parts than threads to keep busy (at 1 thread, one: 4 parts had
// made a single image's input transform half of a [1, 64, 8, 8] layer's time).
int64_t channel_parts(int64_t items, int64_t out_blocks) {
  return std::clamp<int64_t>(ceil_div(std::min<int64_t>(4, num_threads()), std::max<int64_t>(items, 1)), 1, out_blocks);
}

// Channels and the tile grid of a geometry for tile size M, shared by both layouts' plans.
struct TileGrid {
  int64_t C, O, OB;  // input channels, output channels, blocks of kOutBlock output channels
  int64_t TH, TW;    // tiles per column and per row
  TileGrid(const ConvGeometry& g, int64_t tile)
      : C(g.c), O(g.o), OB(ceil_div(g.o, kOutBlock)), TH(ceil_div(g.ho, tile)), TW(ceil_div(g.wo, tile)) {}
};

// Sizes of the phase-plane layout, shared by its steps.
struct Plan : TileGrid {
  int64_t TWq;    // row width of a phase plane (TW + 1: tile tx reads columns tx and tx + 1)
  int64_t tiles;  // TH * TWq tile positions per image (the tx = TW ones are dropped)
  int64_t plane;  // elements per phase plane, with slack for the last vector's overrun
  int64_t zrow;   // elements per row of Z (tile positions rounded up, plus slack)
  Plan(const ConvGeometry& g, int64_t tile, int64_t lanes)
      : TileGrid(g, tile),
        TWq(TW + 1),
        tiles(TH * TWq),
        // The last vector reads up to lane round_up(tiles, L) - 1 at offset TWq + 1 (the patch's
        // last row and column sit one plane row and one column further on).
        plane((TH + 1) * TWq + lanes),
        zrow(ceil_div(tiles, lanes) * lanes + lanes) {}
};

// Tile positions of a geometry for F(M x M), in whole vectors of lanes: the products' length.
int64_t tile_lanes(const ConvGeometry& g, int64_t tile, int64_t lanes) {
  return ceil_div(ceil_div(g.ho, tile) * (ceil_div(g.wo, tile) + 1), lanes) * lanes;
}

// Images per group of the dense layout (see forward_dense): as many as fill at most kStripVecs
// vectors with their tiles.
int64_t dense_group(const ConvGeometry& g, int64_t tile, int64_t lanes) {
  const int64_t tiles = ceil_div(g.ho, tile) * ceil_div(g.wo, tile);
  return std::max<int64_t>(1, kStripVecs * lanes / tiles);
}

// Multiply-adds per image and channel pair of the dense layout with groups of `images` images:
// tile lanes rounded up per group, +15% for the gathers and the copies out.
double dense_products(const ConvGeometry& g, int64_t tile, int64_t lanes, int64_t images) {
  const int64_t group_lanes = ceil_div(images * ceil_div(g.ho, tile) * ceil_div(g.wo, tile), lanes) * lanes;
  return 1.15 * static_cast<double>((tile + 2) * (tile + 2) * group_lanes) / static_cast<double>(images);
}

// The layouts and tile sizes, with their multiply-adds per image and channel pair.
enum class Layout { phases2, phases4, dense2, dense4 };
struct LayoutCost {
  Layout layout;
  double products;
};
LayoutCost winograd_layout(const ConvGeometry& g, int64_t lanes) {
  LayoutCost best{Layout::phases2, 16.0 * static_cast<double>(tile_lanes(g, 2, lanes))};
  const double f4 = 36.0 * static_cast<double>(tile_lanes(g, 4, lanes));
  if (f4 < best.products) best = {Layout::phases4, f4};
  // Dense: a group holds at most kStripVecs vectors of tiles.
  for (const int64_t tile : {2, 4}) {
    if (ceil_div(g.ho, tile) * ceil_div(g.wo, tile) > kStripVecs * lanes) continue;
    const double dense = dense_products(g, tile, lanes, dense_group(g, tile, lanes));
    if (dense < best.products) best = {tile == 2 ? Layout::dense2 : Layout::dense4, dense};
  }
  return best;
}

// How the weights g are stored: as w[o][c][3][3] (Stored::plain), or, for an input gradient
// (the convolution of gy with the kernel flipped and the channel roles swapped), as the forward
// convolution's weights, g(o, c, j) = w[c][o][8 - j] (Stored::flipped; no flipped copy is made).
enum class Stored { plain, flipped };

// Ub[xi][c][i] = (G g G^T)[xi] for output channel ob * 8 + i (zero rows past O): the block ob of
// U[ob][xi][c][i]. Computed in f64 and rounded once.
template <class T, int M>
void transform_weight_block(const TileGrid& p, const T* w, Stored stored, int64_t ob, T* Ub) {
  constexpr int64_t B = kOutBlock;
  constexpr int64_t kChunk = 16;  // input channels per step (k and t: 27 KiB of doubles)
  constexpr int N = Tile<M>::N;
  constexpr auto& G = Tile<M>::G;
  // The block's 8 output channels side by side (i innermost, so the arithmetic vectorises), a
  // chunk of input channels at a time: stage the weights (the 8 rows' runs transposed in
  // registers), then G g, then (G g) G^T element by element of the tile, along c as Ub runs. (All 36
  // elements of one channel at once stored to 36 lines 8 KiB apart, which share an L1 set; and
  // assembling each vector of 8 from scalar stores right before reading it stalled on store
  // forwarding: 256 x 256 channels took 2.2 ms instead of 0.5.)
  const int64_t rows = std::min(B, p.O - ob * B);  // real output channels of the block
  alignas(64) T k[kChunk][9][B];                   // k[cc][j][i] = w(ob * 8 + i, c0 + cc, tap j)
  double t[kChunk][N][3][B];                       // G g
  if (rows < B) std::fill(&k[0][0][0], &k[0][0][0] + kChunk * 9 * B, T(0));
  for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, p.C - c0);
    if (stored == Stored::flipped) {
      for (int64_t cc = 0; cc < cn; ++cc) {
        const T* src = w + ((c0 + cc) * p.O + ob * B) * 9;  // the block's rows, contiguous
        for (int64_t i = 0; i < rows; ++i)
          for (int j = 0; j < 9; ++j) k[cc][8 - j][i] = src[i * 9 + j];
      }
    } else {
      const T* src = w + (ob * B * p.C + c0) * 9;  // row i: output channel ob * 8 + i, from channel c0
#if XSIMD_WITH_AVX512F
      simd::transpose_matrix(src, rows, cn * 9, p.C * 9, &k[0][0][0], B);
#else
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t e = 0; e < cn * 9; ++e) (&k[0][0][0])[e * B + i] = src[i * p.C * 9 + e];
#endif
    }
    for (int64_t cc = 0; cc < cn; ++cc)
      for (int r = 0; r < N; ++r)
        for (int j = 0; j < 3; ++j)
          for (int64_t i = 0; i < B; ++i)
            t[cc][r][j][i] = G[r][0] * static_cast<double>(k[cc][j][i]) + G[r][1] * static_cast<double>(k[cc][3 + j][i]) +
                             G[r][2] * static_cast<double>(k[cc][6 + j][i]);
    for (int r = 0; r < N; ++r)  // (G g) G^T, rounded once
      for (int s = 0; s < N; ++s) {
        T* u = Ub + ((r * N + s) * p.C + c0) * B;
        for (int64_t cc = 0; cc < cn; ++cc)
          for (int64_t i = 0; i < B; ++i)
            u[cc * B + i] = static_cast<T>(t[cc][r][0][i] * G[s][0] + t[cc][r][1][i] * G[s][1] + t[cc][r][2][i] * G[s][2]);
      }
  }
}

// All of U[ob][xi][c][i].
template <class T, int M>
void transform_weights(const TileGrid& p, const T* w, Stored stored, T* U) {
  parallel_for(p.OB, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ob = lo; ob < hi; ++ob)
      transform_weight_block<T, M>(p, w, stored, ob, U + ob * Tile<M>::Xi * p.C * kOutBlock);
  });
}

// Q[c][M p + q][r * TWq + s] = padded input at row M r + p, column M s + q, for one image. Only
// the image's own positions are written: the zero padding is laid down once per buffer.
// Input column iw sits at padded column iw + pw: the input columns of residue e (mod M) go to
// phase (e + pw) % M from s = (e + pw) / M on.
template <class T, int M>
void split_phases(const ConvGeometry& g, const Plan& p, const T* x, T* Q) {
  const T* x_end = x + p.C * g.h * g.w;
  for (int64_t c = 0; c < p.C; ++c) {
    for (int64_t ih = 0; ih < g.h; ++ih) {
      const int64_t R = ih + g.ph;
      T* row = Q + (c * M * M + M * (R % M)) * p.plane + (R / M) * p.TWq;  // phase q = 0 of padded row R
      T* dst[M];
      for (int64_t e = 0; e < M; ++e) dst[e] = row + ((e + g.pw) % M) * p.plane + (e + g.pw) / M;
      const T* xr = x + (c * g.h + ih) * g.w;
      if constexpr (M == 2) {
        conv_util::split_row_columns(xr, g.w, x_end, dst[0], dst[1]);
      } else {
        conv_util::split_row_columns4(xr, g.w, x_end, dst);
      }
    }
  }
}

// The 1-D input transforms, out = B^T in, along one axis of the patch.
// F(2x2): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
template <class T>
inline void input_transform_1d(const Vec<T> (&d)[4], Vec<T> (&t)[4]) {
  t[0] = d[0] - d[2];
  t[1] = d[1] + d[2];
  t[2] = d[2] - d[1];
  t[3] = d[1] - d[3];
}
// F(4x4): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
//                0 4 0 -5 0 1].
template <class T>
inline void input_transform_1d(const Vec<T> (&d)[6], Vec<T> (&t)[6]) {
  const Vec<T> four(T(4)), minus_five(T(-5)), two(T(2));
  const Vec<T> d31 = d[3] - d[1], d42 = d[4] - d[2];
  t[0] = xsimd::fma(four, d[0], xsimd::fma(minus_five, d[2], d[4]));
  t[1] = xsimd::fnma(four, d[1] + d[2], d[3] + d[4]);
  t[2] = xsimd::fma(four, d[1] - d[2], d[4] - d[3]);
  t[3] = xsimd::fma(two, d31, d42);
  t[4] = xsimd::fnma(two, d31, d42);
  t[5] = xsimd::fma(four, d[1], xsimd::fma(minus_five, d[3], d[5]));
}

// V[xi][c][v * L + l] = (B^T d B)[xi] of the strip's tile v * L + l, for v < nv, with the patch
// value d[i][j] of a vector of tiles given by patch(c, v, i, j): first along the patch's rows (into
// a small buffer in L1), then along its columns. Returns whether every transformed value is finite
// (t - t is 0 for finite t, NaN otherwise; an inf or NaN input makes its tile's values non-finite).
template <class T, int M, class Patch>
bool transform_input(int64_t C, int64_t nv, Patch&& patch, T* V) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  constexpr int N = Tile<M>::N;
  const int64_t xs = C * SV;  // stride between xi
  alignas(64) T rows[N][N][L];  // rows[i][s] = (d B)[i][s]
  Vec<T> nonfinite(T(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t v = 0; v < nv; ++v) {
      for (int i = 0; i < N; ++i) {
        Vec<T> d[N], t[N];
        for (int j = 0; j < N; ++j) d[j] = patch(c, v, i, j);
        input_transform_1d(d, t);
        for (int s = 0; s < N; ++s) t[s].store_aligned(rows[i][s]);
      }
      T* out = V + c * SV + v * L;
      for (int s = 0; s < N; ++s) {
        Vec<T> d[N], t[N];
        for (int i = 0; i < N; ++i) d[i] = Vec<T>::load_aligned(rows[i][s]);
        input_transform_1d(d, t);
        for (int r = 0; r < N; ++r) {
          t[r].store_aligned(out + (r * N + s) * xs);
          nonfinite += t[r] - t[r];
        }
      }
    }
  }
  alignas(64) T lanes[L];
  nonfinite.store_aligned(lanes);
  return std::all_of(lanes, lanes + L, [](T v) { return v == T(0); });
}

// The phase-plane layout: patch value d[i][j] of tiles u0 + v * L + l is one plain vector load.
template <class T, int M>
bool transform_input(const Plan& p, const T* Q, int64_t u0, int64_t nv, T* V) {
  constexpr int64_t L = kLanes<T>;
  const auto patch = [&](int64_t c, int64_t v, int i, int j) {
    return Vec<T>::load_unaligned(Q + (c * M * M + (i % M) * M + j % M) * p.plane + (i / M) * p.TWq + j / M + u0 + v * L);
  };
  return transform_input<T, M>(p.C, nv, patch, V);
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

// Mbuf[xi] = U[ob][xi] · V[xi] for every element xi of the transformed tile, on nv vectors of
// tiles; after_product() runs after each of the products (e.g. a slice of prefetching).
template <class T, int M, class After>
void block_products(const T* V, const T* U, int64_t C, int64_t ob, int64_t nv, T* Mbuf, After&& after_product) {
  constexpr int64_t SV = kStripVecs * kLanes<T>, Xi = Tile<M>::Xi;
  for (int64_t xi = 0; xi < Xi; ++xi) {
    kTileProduct<T>[nv - 1](V + xi * C * SV, U + (ob * Xi + xi) * C * kOutBlock, C, Mbuf + xi * kOutBlock * SV);
    after_product();
  }
}

// The 1-D output transforms, y = A^T m, along one axis.
// F(2x2): A^T = [1 1 1 0; 0 1 -1 -1].
template <class T>
inline void output_transform_1d(const Vec<T> (&m)[4], Vec<T> (&y)[2]) {
  y[0] = m[0] + m[1] + m[2];
  y[1] = m[1] - m[2] - m[3];
}
// F(4x4): A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
template <class T>
inline void output_transform_1d(const Vec<T> (&m)[6], Vec<T> (&y)[4]) {
  const Vec<T> p12 = m[1] + m[2], d12 = m[1] - m[2], p34 = m[3] + m[4], d34 = m[3] - m[4];
  y[0] = m[0] + p12 + p34;
  y[1] = xsimd::fma(Vec<T>(T(2)), d34, d12);
  y[2] = xsimd::fma(Vec<T>(T(4)), p34, p12);
  y[3] = xsimd::fma(Vec<T>(T(8)), d34, d12) + m[5];
}

// The outputs (A^T m A)[a][b] (+ bias[o]) of the block's channels o = o0 + i, i < rows, for the
// strip's vectors of tiles v < nv: row a of the tiles of vector v (b = 0..M-1) is handed to
// out(o, v, a, y), and done(o) is called once a channel's vectors are all out. First along the
// columns of m (into a small buffer in L1), then along its rows.
template <class T, int M, class Out, class Done>
void transform_output(const T* Mbuf, int64_t nv, int64_t o0, int64_t rows, const T* bias, Out&& out, Done&& done) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  constexpr int N = Tile<M>::N;
  alignas(64) T cols[M][N][L];  // cols[a][s] = (A^T m)[a][s]
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = o0 + i;
    for (int64_t v = 0; v < nv; ++v) {
      for (int s = 0; s < N; ++s) {
        Vec<T> m[N], y[M];
        for (int r = 0; r < N; ++r) m[r] = Vec<T>::load_aligned(Mbuf + ((r * N + s) * kOutBlock + i) * SV + v * L);
        output_transform_1d(m, y);
        for (int a = 0; a < M; ++a) y[a].store_aligned(cols[a][s]);
      }
      for (int a = 0; a < M; ++a) {
        Vec<T> m[N], y[M];
        for (int s = 0; s < N; ++s) m[s] = Vec<T>::load_aligned(cols[a][s]);
        output_transform_1d(m, y);
        if (bias)
          for (int b = 0; b < M; ++b) y[b] += Vec<T>(bias[o]);
        out(o, v, a, y);
      }
    }
    done(o);
  }
}

// The phase-plane layout: into Z[o][M a + b][u0 + v * L + l], whole vectors.
template <class T, int M>
void transform_output(const Plan& p, const T* Mbuf, int64_t nv, int64_t o0, int64_t rows, const T* bias, int64_t u0,
                      T* Z) {
  constexpr int64_t L = kLanes<T>;
  const auto out = [&](int64_t o, int64_t v, int a, const Vec<T> (&y)[M]) {
    for (int b = 0; b < M; ++b) y[b].store_unaligned(Z + (o * M * M + a * M + b) * p.zrow + u0 + v * L);
  };
  transform_output<T, M>(Mbuf, nv, o0, rows, bias, out, [](int64_t) {});
}

// y[o][M ty + a][M tx + b] = Z[o][M a + b][ty * TWq + tx] for channels [o_lo, o_hi) of one image.
template <class T, int M>
void interleave_out(const ConvGeometry& g, const Plan& p, const T* Z, int64_t o_lo, int64_t o_hi, T* y) {
  for (int64_t o = o_lo; o < o_hi; ++o)
    for (int64_t row = 0; row < g.ho; ++row) {
      const T* z0 = Z + (o * M * M + M * (row % M)) * p.zrow + (row / M) * p.TWq;
      T* dst = y + (o * g.ho + row) * g.wo;
      if constexpr (M == 2) {
        conv_util::merge_row_columns(z0, z0 + p.zrow, g.wo, dst);
      } else {
        const T* src[4] = {z0, z0 + p.zrow, z0 + 2 * p.zrow, z0 + 3 * p.zrow};
        conv_util::merge_row_columns4(src, g.wo, dst);
      }
    }
}

template <class T, int M>
bool forward(const ConvGeometry& g, const T* x, const T* w, Stored stored, const T* bias, T* y) {
  constexpr int64_t L = kLanes<T>, SV = kStripVecs * L;
  constexpr int64_t Xi = Tile<M>::Xi;
  const Plan p(g, M, L);
  Scratch<T> U(p.OB * Xi * p.C * kOutBlock);
  transform_weights<T, M>(p, w, stored, U.get());
  // Few images: split each image's output channels too (the input transform is then repeated
  // per part, which is cheap next to the products).
  const int64_t parts = channel_parts(g.n, p.OB);
  const int64_t ob_per_part = ceil_div(p.OB, parts);
  const int64_t xs = g.c * g.h * g.w, ys = g.o * g.ho * g.wo;
  const int64_t work_per_task = Xi * ob_per_part * kOutBlock * p.C * p.tiles;
  std::atomic<bool> finite{true};
  parallel_for(g.n * parts, tasks_grain(g.n * parts, work_per_task), [&](int64_t lo, int64_t hi) {
    const int64_t q_size = p.C * M * M * p.plane;
    Scratch<T> Q(q_size), V(Xi * p.C * SV), Mbuf(Xi * kOutBlock * SV), Z(p.O * M * M * p.zrow);
    std::fill(Q.get(), Q.get() + q_size, T(0));  // the padding; split_phases writes the rest
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / parts, part = task % parts;
      const int64_t ob_lo = part * ob_per_part, ob_hi = std::min(p.OB, ob_lo + ob_per_part);
      if (ob_lo >= ob_hi) continue;
      split_phases<T, M>(g, p, x + b * xs, Q.get());
      // The next image's input and output, a slice per product while this one is computed.
      conv_util::SpreadPrefetch next_x, next_y;
      if (part == parts - 1 && task + 1 < hi) {
        const int64_t steps = ceil_div(ceil_div(p.tiles, L), kStripVecs) * (ob_hi - ob_lo) * Xi;
        next_x = conv_util::SpreadPrefetch(x + (b + 1) * xs, xs * int64_t(sizeof(T)), steps, false);
        next_y = conv_util::SpreadPrefetch(y + (b + 1) * ys, ys * int64_t(sizeof(T)), steps, true);
      }
      for (int64_t u0 = 0, nv = 0; u0 < p.tiles; u0 += nv * L) {
        // Up to 3 vectors per strip; a remainder of 4 runs as 2 + 2 (a 1-vector product is load-bound).
        const int64_t left = ceil_div(p.tiles - u0, L);
        nv = left % kStripVecs == 1 && left > kStripVecs ? 2 : std::min(kStripVecs, left);
        if (!transform_input<T, M>(p, Q.get(), u0, nv, V.get())) finite.store(false, std::memory_order_relaxed);
        for (int64_t ob = ob_lo; ob < ob_hi; ++ob) {
          block_products<T, M>(V.get(), U.get(), p.C, ob, nv, Mbuf.get(), [&] {
            next_x.step();
            next_y.step();
          });
          const int64_t o0 = ob * kOutBlock;
          transform_output<T, M>(p, Mbuf.get(), nv, o0, std::min(kOutBlock, p.O - o0), bias, u0, Z.get());
        }
      }
      next_x.finish();
      next_y.finish();
      interleave_out<T, M>(g, p, Z.get(), ob_lo * kOutBlock, std::min(p.O, ob_hi * kOutBlock), y + b * ys);
    }
  });
  return finite.load();
}

// ---- Small planes: the tiles of several images side by side -------------------------------------
// On a small plane the phase layout wastes lanes: a 7 x 7 output has 16 tiles of F(2x2) in 20
// positions (two float vectors) and 4 tiles of F(4x4) in 6. Here the tiles of a group of G images
// are numbered densely, t = image * T + ty * TW + tx (T = TH * TW tiles per image), so the group's
// vectors are full but for the last one (7 x 7 with F(4x4): 12 images, 48 tiles, three full
// vectors). The patch values are gathered from the group's zero-padded images (a gather per patch
// value and vector of tiles: O(C) per tile, against the products' O(C O)). On the way out, the M
// outputs of every tile in a row of the tile are put side by side, so that the TW tiles of a tile
// row form M TW consecutive values of an image row, copied into y a row at a time (cut at wo).

struct DensePlan : TileGrid {
  int64_t T;       // tiles per image
  int64_t G;       // images per group
  int64_t nv;      // vectors of tiles per group
  int64_t PH, PW;  // rows and columns of a padded image plane (M TH + 2 >= h + 2 ph, M TW + 2)
  DensePlan(const ConvGeometry& g, int64_t tile, int64_t lanes)
      : TileGrid(g, tile),
        T(TH * TW),
        // A batch smaller than a group fills only its own lanes (each lane's arithmetic is the
        // same wherever it sits, so this changes no bit; the layout was chosen without n).
        G(std::min(dense_group(g, tile, lanes), std::max<int64_t>(g.n, 1))),
        nv(ceil_div(G * T, lanes)),
        PH(tile * TH + 2),
        PW(tile * TW + 2) {}
};

// Lanes at 32-bit offsets from a base (the offsets of one vector of lanes in idx[0, L)).
template <class T>
inline Vec<T> gather_lanes(const T* base, const int32_t* idx) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float>) {
    return Vec<T>(_mm512_i32gather_ps(_mm512_load_si512(idx), base, 4));
  } else {
    return Vec<T>(_mm512_i32gather_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(idx)), base, 8));
  }
#else
  constexpr int64_t L = kLanes<T>;
  alignas(64) T v[L];
  for (int64_t l = 0; l < L; ++l) v[l] = base[idx[l]];
  return Vec<T>::load_aligned(v);
#endif
}

// Where the lanes of a group read: the padded-image offset of each tile's patch corner.
template <class T, int M>
struct DenseLanes {
  static constexpr int64_t L = kLanes<T>;
  alignas(64) int32_t patch[kStripVecs][L];
  DenseLanes(const DensePlan& p) {
    for (int64_t v = 0; v < p.nv; ++v)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t t = v * L + l, img = t / p.T, ty = t % p.T / p.TW, tx = t % p.TW;
        patch[v][l] = img < p.G ? static_cast<int32_t>((img * p.PH + M * ty) * p.PW + M * tx) : 0;
      }
  }
};

// rows[v * L * M + l * M + b] = y[b] lane l: the M outputs of each tile side by side, so that the
// TW tiles of one tile row give M TW consecutive outputs of an image row.
template <class T, int M>
inline void interleave_tile_row(const Vec<T> (&y)[M], T* rows) {
  constexpr int64_t L = kLanes<T>;
  if constexpr (M == 2) {
    Vec<T> lo, hi;
    conv_util::interleave(y[0], y[1], lo, hi);
    lo.store_aligned(rows);
    hi.store_aligned(rows + L);
  } else {
    Vec<T> e_lo, e_hi, o_lo, o_hi, v0, v1, v2, v3;
    conv_util::interleave(y[0], y[2], e_lo, e_hi);  // b = 0, 2 side by side
    conv_util::interleave(y[1], y[3], o_lo, o_hi);  // b = 1, 3
    conv_util::interleave(e_lo, o_lo, v0, v1);
    conv_util::interleave(e_hi, o_hi, v2, v3);
    v0.store_aligned(rows);
    v1.store_aligned(rows + L);
    v2.store_aligned(rows + 2 * L);
    v3.store_aligned(rows + 3 * L);
  }
}

template <class T, int M>
bool forward_dense(const ConvGeometry& g, const T* x, const T* w, Stored stored, const T* bias, T* y) {
  constexpr int64_t SV = kStripVecs * kLanes<T>, Xi = Tile<M>::Xi;
  const DensePlan p(g, M, kLanes<T>);
  const int64_t groups = ceil_div(g.n, p.G);
  // A single group (a batch of at most G images) uses each block of U once: the task that uses
  // it transforms it right before its products, into a buffer that stays in cache. (The whole
  // U, 4x the weights with F(4x4), went to memory and came back: [1, 256, 7, 7] x 256 forward
  // 1.27 -> 1.17 ms at 1 thread.) Same values either way.
  const bool fused = groups == 1;
  Scratch<T> U(fused ? 0 : p.OB * Xi * p.C * kOutBlock);
  if (!fused) transform_weights<T, M>(p, w, stored, U.get());
  const int64_t parts = channel_parts(groups, p.OB);  // few groups: split the channels too
  const int64_t ob_per_part = ceil_div(p.OB, parts);
  const int64_t xs = g.c * g.h * g.w, plane = p.PH * p.PW;
  const int64_t work_per_task = Xi * ob_per_part * kOutBlock * p.C * p.nv * kLanes<T>;
  const DenseLanes<T, M> lanes(p);
  std::atomic<bool> finite{true};
  parallel_for(groups * parts, tasks_grain(groups * parts, work_per_task), [&](int64_t lo, int64_t hi) {
    const int64_t p_size = p.C * p.G * plane;
    Scratch<T> P(p_size), V(Xi * p.C * SV), Mbuf(Xi * kOutBlock * SV), rows(M * M * SV);
    Scratch<T> Ub(fused ? Xi * p.C * kOutBlock : 0);
    std::fill(P.get(), P.get() + p_size, T(0));  // the padding; the copy-in writes the rest
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t q = task / parts, part = task % parts;
      const int64_t ob_lo = part * ob_per_part, ob_hi = std::min(p.OB, ob_lo + ob_per_part);
      if (ob_lo >= ob_hi) continue;
      const int64_t img0 = q * p.G, images = std::min(p.G, g.n - img0);
      // P[c][k][ph + ih][pw + iw] = x[img0 + k][c][ih][iw]. (Slots past `images` keep an earlier
      // group's values: their lanes are never stored.)
      for (int64_t c = 0; c < p.C; ++c)
        for (int64_t k = 0; k < images; ++k)
          for (int64_t ih = 0; ih < g.h; ++ih)
            conv_util::copy_row(P.get() + ((c * p.G + k) * p.PH + g.ph + ih) * p.PW + g.pw,
                                x + (img0 + k) * xs + (c * g.h + ih) * g.w, g.w);
      const auto patch = [&](int64_t c, int64_t v, int i, int j) {
        return gather_lanes(P.get() + c * p.G * plane + i * p.PW + j, lanes.patch[v]);
      };
      if (!transform_input<T, M>(p.C, p.nv, patch, V.get())) finite.store(false, std::memory_order_relaxed);
      // Row a of the tiles goes to rows[a] (tile outputs side by side); once a channel is done,
      // each image row is one copy out of it: tile row ty of image k, row a, covers image row
      // M ty + a, columns [0, M TW) at rows[a] + (k T + ty TW) M.
      const auto out = [&](int64_t, int64_t v, int a, const Vec<T> (&yv)[M]) {
        interleave_tile_row<T, M>(yv, rows.get() + a * M * SV + v * kLanes<T> * M);
      };
      const auto done = [&](int64_t o) {
        for (int64_t k = 0; k < images; ++k)
          for (int64_t ty = 0; ty < p.TH; ++ty)
            for (int64_t a = 0; a < M && M * ty + a < g.ho; ++a)
              conv_util::copy_row(y + ((img0 + k) * g.o + o) * g.ho * g.wo + (M * ty + a) * g.wo,
                                  rows.get() + a * M * SV + (k * p.T + ty * p.TW) * M, g.wo);
      };
      for (int64_t ob = ob_lo; ob < ob_hi; ++ob) {
        if (fused) {
          transform_weight_block<T, M>(p, w, stored, ob, Ub.get());
          block_products<T, M>(V.get(), Ub.get(), p.C, 0, p.nv, Mbuf.get(), [] {});
        } else {
          block_products<T, M>(V.get(), U.get(), p.C, ob, p.nv, Mbuf.get(), [] {});
        }
        const int64_t o0 = ob * kOutBlock;
        transform_output<T, M>(Mbuf.get(), p.nv, o0, std::min(kOutBlock, p.O - o0), bias, out, done);
      }
    }
  });
  return finite.load();
}

}  // namespace

bool winograd_applies(const ConvGeometry& g) {
  if (!(g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.groups == 1 &&
        g.ho == g.h + 2 * g.ph - 2 && g.wo == g.w + 2 * g.pw - 2 && g.c >= 8 && g.o >= 8)) {
    return false;
  }
  // Cost per image and channel pair, in multiply-adds of the products, at kReferenceBatch images:
  // the best layout's products (a dense group holding only that many images), plus ~25% for the
  // input and output transforms, plus the weight transform shared by those images, against 9 per
  // position of the implicit GEMM (about ho rows of wo + 1). The choice must not depend on n (an
  // image's bits would then depend on the batch it runs in; see DESIGN.md), so it is made for a
  // small batch: there the per-call weight transform decides, and on 7 x 7 and smaller planes
  // Winograd cost 2-8x the implicit GEMM on one image (1 thread: [1, 256, 4, 4] x 256 1.0 ms
  // against 0.24), while from 8 images on it is up to 2x faster where it is still chosen.
  constexpr int64_t kReferenceBatch = 4;
  constexpr double kWeightTransformCost = 20;  // per transformed weight (measured on 256 x 256 channels)
  constexpr int64_t lanes = kLanes<float>;     // f32's, for both types: f32 and f64 take the same path
  const LayoutCost best = winograd_layout(g, lanes);
  const bool dense = best.layout == Layout::dense2 || best.layout == Layout::dense4;
  const int64_t tile = best.layout == Layout::phases2 || best.layout == Layout::dense2 ? 2 : 4;
  const double xi = static_cast<double>((tile + 2) * (tile + 2));
  const double products =
      dense ? dense_products(g, tile, lanes, std::min(dense_group(g, tile, lanes), kReferenceBatch)) : best.products;
  const double winograd = 1.25 * products + kWeightTransformCost * xi / kReferenceBatch;
  return winograd < 9.0 * static_cast<double>(g.ho * (g.wo + 1));
}

namespace {
template <class T>
bool run_winograd(const ConvGeometry& g, const T* x, const T* w, Stored stored, const T* bias, T* y) {
  switch (winograd_layout(g, kLanes<T>).layout) {
    case Layout::phases2: return forward<T, 2>(g, x, w, stored, bias, y);
    case Layout::phases4: return forward<T, 4>(g, x, w, stored, bias, y);
    case Layout::dense2: return forward_dense<T, 2>(g, x, w, stored, bias, y);
    case Layout::dense4: return forward_dense<T, 4>(g, x, w, stored, bias, y);
  }
  return false;
}
}  // namespace

template <class T>
bool winograd_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  return run_winograd(g, x, w, Stored::plain, bias, y);
}
template <class T>
bool winograd_flipped(const ConvGeometry& g, const T* x, const T* w_swapped, T* y) {
  return run_winograd(g, x, w_swapped, Stored::flipped, static_cast<const T*>(nullptr), y);
}

template bool winograd_forward<float>(const ConvGeometry&, const float*, const float*, const float*, float*);
template bool winograd_forward<double>(const ConvGeometry&, const double*, const double*, const double*, double*);
template bool winograd_flipped<float>(const ConvGeometry&, const float*, const float*, float*);
template bool winograd_flipped<double>(const ConvGeometry&, const double*, const double*, double*);

}  // namespace tg::kernels
