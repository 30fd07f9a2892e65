#include "ops/kernels/reduce.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/parallel.hpp"
#include "core/strided.hpp"
#include "ops/kernels/elementwise.hpp"  // widen
#include "ops/kernels/wrapping.hpp"

namespace tg::kernels {
namespace {

// A row is reduced in blocks of this many elements; block results are folded in order. The
// blocking depends only on the row length, so rows may be split across threads or not without
// changing a single bit.
constexpr std::int64_t kRowBlock = 1 << 14;

// f32 sums and products accumulate in f64, rows and columns alike: summed in f32, a row of 40k
// values loses ~1e-4 of its magnitude. (max/min are exact in any precision.)
template <class T>
using Wide = std::conditional_t<std::is_same_v<T, float>, double, T>;

template <class T>
T identity(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return T(0);
    case ReduceOp::prod: return T(1);
    case ReduceOp::max:
      return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
    case ReduceOp::min:
      return std::numeric_limits<T>::has_infinity ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::max();
  }
  return T(0);
}

template <class T>
T combine(ReduceOp op, T a, T b) {
  switch (op) {
    case ReduceOp::sum: return wrapping_add(a, b);  // integers wrap around (as the SIMD lanes do), as in torch
    case ReduceOp::prod: return wrapping_mul(a, b);
    case ReduceOp::max:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
      }
      return a > b ? a : b;
    case ReduceOp::min:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
      }
      return a < b ? a : b;
  }
  return a;
}

template <class B>
B combine_batch(ReduceOp op, const B& a, const B& b) {
  using T = typename B::value_type;
  switch (op) {
    case ReduceOp::sum: return a + b;
    case ReduceOp::prod: return a * b;
    case ReduceOp::max:
      if constexpr (std::is_floating_point_v<T>) return xsimd::select(xsimd::isnan(a) || a > b, a, b);
      else return xsimd::max(a, b);
    case ReduceOp::min:
      if constexpr (std::is_floating_point_v<T>) return xsimd::select(xsimd::isnan(a) || a < b, a, b);
      else return xsimd::min(a, b);
  }
  return a;
}

// The four accumulators of a block folded into one value: pairwise, then lane by lane in order.
template <class B>
typename B::value_type fold_accumulators(ReduceOp op, const B& a0, const B& a1, const B& a2, const B& a3) {
  const B acc = combine_batch(op, combine_batch(op, a0, a1), combine_batch(op, a2, a3));
  alignas(64) typename B::value_type lanes[B::size];
  acc.store_aligned(lanes);
  typename B::value_type r = lanes[0];
  for (std::size_t j = 1; j < B::size; ++j) r = combine(op, r, lanes[j]);
  return r;
}

// Reduces n contiguous elements with 4 independent batch accumulators.
template <class T>
T reduce_block(ReduceOp op, const T* p, std::int64_t n) {
  using B = xsimd::batch<T>;
  constexpr std::int64_t W = B::size;
  const B id(identity<T>(op));
  B a0 = id, a1 = id, a2 = id, a3 = id;
  std::int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 = combine_batch(op, a0, B::load_unaligned(p + i));
    a1 = combine_batch(op, a1, B::load_unaligned(p + i + W));
    a2 = combine_batch(op, a2, B::load_unaligned(p + i + 2 * W));
    a3 = combine_batch(op, a3, B::load_unaligned(p + i + 3 * W));
  }
  for (; i + W <= n; i += W) a0 = combine_batch(op, a0, B::load_unaligned(p + i));
  if (i < n) {
    alignas(64) T tail[W];
    for (std::int64_t j = 0; j < W; ++j) tail[j] = i + j < n ? p[i + j] : identity<T>(op);
    a1 = combine_batch(op, a1, B::load_aligned(tail));
  }
  return fold_accumulators(op, a0, a1, a2, a3);
}

Wide<float> reduce_block_wide(ReduceOp op, const float* p, std::int64_t n) {
  using F = xsimd::batch<float>;
  using D = xsimd::batch<double>;
  constexpr std::int64_t W = F::size;
  const D id(identity<double>(op));
  D a0 = id, a1 = id, a2 = id, a3 = id;
  std::int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    D l0, h0, l1, h1;
    widen(F::load_unaligned(p + i), l0, h0);
    widen(F::load_unaligned(p + i + W), l1, h1);
    a0 = combine_batch(op, a0, l0);
    a1 = combine_batch(op, a1, h0);
    a2 = combine_batch(op, a2, l1);
    a3 = combine_batch(op, a3, h1);
  }
  double r = fold_accumulators(op, a0, a1, a2, a3);
  for (; i < n; ++i) r = combine(op, r, static_cast<double>(p[i]));
  return r;
}

template <class T>
Wide<T> reduce_block_acc(ReduceOp op, const T* p, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>)
    if (op == ReduceOp::sum || op == ReduceOp::prod) return reduce_block_wide(op, p, n);
  return static_cast<Wide<T>>(reduce_block(op, p, n));
}

template <class T>
T reduce_row(ReduceOp op, const T* p, std::int64_t n) {
  Wide<T> r = identity<Wide<T>>(op);
  for (std::int64_t b = 0; b < n; b += kRowBlock)
    r = combine(op, r, reduce_block_acc(op, p + b, std::min(kRowBlock, n - b)));
  return static_cast<T>(r);
}

struct Split {
  Shape kept_shape, kept_strides, red_shape, red_strides;
};

Split split_axes(const Tensor& x, std::uint32_t mask) {
  Split s;
  for (int d = 0; d < x.dim(); ++d) {
    if (mask & (1u << d)) {
      s.red_shape.push_back(x.shape()[d]);
      s.red_strides.push_back(x.strides()[d]);
    } else {
      s.kept_shape.push_back(x.shape()[d]);
      s.kept_strides.push_back(x.strides()[d]);
    }
  }
  return s;
}

// The split with the kept dims of size 1 dropped and adjacent kept dims that are contiguous with
// each other merged (neither changes the elements or the output order): x [64, 256, 32, 32]
// reduced over dim 1 keeps [64, 1024].
Split merged_kept_dims(const Split& s) {
  Split r;
  r.red_shape = s.red_shape;
  r.red_strides = s.red_strides;
  for (int d = 0; d < s.kept_shape.size(); ++d) {
    if (s.kept_shape[d] == 1) continue;
    const int last = r.kept_shape.size() - 1;
    if (last >= 0 && r.kept_strides[last] == s.kept_strides[d] * s.kept_shape[d]) {
      r.kept_shape[last] *= s.kept_shape[d];
      r.kept_strides[last] = s.kept_strides[d];
      continue;
    }
    r.kept_shape.push_back(s.kept_shape[d]);
    r.kept_strides.push_back(s.kept_strides[d]);
  }
  return r;
}

// Path A: each output reduces one contiguous row of length R.
template <class T>
void reduce_rows(ReduceOp op, const Tensor& x, const Split& s, T* out) {
  const std::int64_t K = s.kept_shape.numel(), R = s.red_shape.numel();
  const StridedLoop<1> kept(s.kept_shape, {&s.kept_strides}, {sizeof(T)});
  char* base = static_cast<char*>(x.raw_data());
  auto row_ptr = [&](std::int64_t k) {
    const T* p = nullptr;
    kept.run({base}, k, k + 1, [&](const std::array<char*, 1>& q, std::int64_t, const std::array<std::int64_t, 1>&) {
      p = reinterpret_cast<const T*>(q[0]);
    });
    return p;
  };
  if (K >= 2 * num_threads() || R <= kRowBlock) {
    const std::int64_t grain = std::max<std::int64_t>(1, kRowBlock / std::max<std::int64_t>(R, 1));
    parallel_for(K, grain, [&](std::int64_t k0, std::int64_t k1) {
      kept.run({base}, k0, k1, [&](const std::array<char*, 1>& q, std::int64_t n, const std::array<std::int64_t, 1>& st) {
        for (std::int64_t i = 0; i < n; ++i, ++k0) out[k0] = reduce_row(op, reinterpret_cast<const T*>(q[0] + i * st[0]), R);
      });
    });
    return;
  }
  // Few long rows: reduce the blocks of each row in parallel, fold them in order.
  const std::int64_t blocks = (R + kRowBlock - 1) / kRowBlock;
  std::vector<Wide<T>> partial(static_cast<std::size_t>(blocks));
  for (std::int64_t k = 0; k < K; ++k) {
    const T* p = row_ptr(k);
    parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        partial[b] = reduce_block_acc(op, p + b * kRowBlock, std::min(kRowBlock, R - b * kRowBlock));
    });
    Wide<T> r = identity<Wide<T>>(op);
    for (Wide<T> v : partial) r = combine(op, r, v);
    out[k] = static_cast<T>(r);
  }
}

// Path B: the innermost kept dim is contiguous (a run of I elements); for every index of the other
// kept dims, reduce over the reduced index space, vectorised across up to 512 elements of the run
// (x [A, R, I] summed over R, or x [R, K] over its rows). Each element's terms combine in the
// row-major order of the reduced dims, whatever the chunking. Float sums accumulate in f64.
template <class T>
void reduce_columns(ReduceOp op, const Tensor& x, const Split& s, T* out) {
  using Acc = Wide<T>;
  const std::int64_t R = s.red_shape.numel();
  Shape outer_shape = s.kept_shape, outer_strides = s.kept_strides;  // the kept dims but the run
  const std::int64_t I = outer_shape.back();
  outer_shape.erase(outer_shape.size() - 1);
  outer_strides.erase(outer_strides.size() - 1);
  const std::int64_t O = outer_shape.numel();
  const StridedLoop<1> outer(outer_shape, {&outer_strides}, {sizeof(T)});
  const StridedLoop<1> red(s.red_shape, {&s.red_strides}, {sizeof(T)});
  char* base = static_cast<char*>(x.raw_data());
  constexpr std::int64_t kCols = 512;
  const std::int64_t chunks = (I + kCols - 1) / kCols;
  const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(R * std::min(I, kCols), 1));
  parallel_for(O * chunks, grain, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t o = t / chunks, k0 = (t % chunks) * kCols, n = std::min(kCols, I - k0);
      char* obase = base;
      outer.run({base}, o, o + 1, [&](const std::array<char*, 1>& q, std::int64_t, const std::array<std::int64_t, 1>&) {
        obase = q[0];
      });
      Acc acc[kCols];
      const Acc id = op == ReduceOp::sum ? Acc(0) : static_cast<Acc>(identity<T>(op));
      for (std::int64_t j = 0; j < n; ++j) acc[j] = id;
      red.run({obase}, 0, R, [&](const std::array<char*, 1>& q, std::int64_t rn, const std::array<std::int64_t, 1>& st) {
        for (std::int64_t r = 0; r < rn; ++r) {
          const T* p = reinterpret_cast<const T*>(q[0] + r * st[0]) + k0;
          switch (op) {
            case ReduceOp::sum:
              for (std::int64_t j = 0; j < n; ++j) acc[j] = wrapping_add(acc[j], static_cast<Acc>(p[j]));
              break;
            case ReduceOp::prod:
              for (std::int64_t j = 0; j < n; ++j) acc[j] = wrapping_mul(acc[j], static_cast<Acc>(p[j]));
              break;
            case ReduceOp::max:  // NaN wins: a NaN accumulator stays, a NaN value replaces it
              for (std::int64_t j = 0; j < n; ++j) {
                const Acc v = static_cast<Acc>(p[j]);
                acc[j] = (acc[j] > v || acc[j] != acc[j]) ? acc[j] : v;
              }
              break;
            case ReduceOp::min:
              for (std::int64_t j = 0; j < n; ++j) {
                const Acc v = static_cast<Acc>(p[j]);
                acc[j] = (acc[j] < v || acc[j] != acc[j]) ? acc[j] : v;
              }
              break;
          }
        }
      });
      for (std::int64_t j = 0; j < n; ++j) out[o * I + k0 + j] = static_cast<T>(acc[j]);
    }
  });
}

// Path C: the reduced dims end in a contiguous run of at least 64 elements, with kept dims
// between them (x [N, C, H, W] summed over N, H and W: runs of H W). Each output combines the
// blocks of its runs, as path A does within one row, in the row-major order of the reduced dims.
// A task takes a range of outputs and walks their runs in memory order -- the first run of every
// output in the range, then the second ... -- so that it reads x front to back. Output by output
// it jumped 1 MiB between runs of 4 KiB, a new stream for the hardware prefetchers each time:
// [64, 256, 32, 32] over (0, 2, 3) 3.8 -> 2.0 ms at 1 thread (PyTorch 1.13: 2.4 ms). Each output
// still sees its runs in the same order, so the bits are unchanged.
template <class T>
void reduce_segments(ReduceOp op, const Tensor& x, const Split& s, T* out) {
  const std::int64_t K = s.kept_shape.numel(), R = s.red_shape.numel();
  const StridedLoop<1> kept(s.kept_shape, {&s.kept_strides}, {sizeof(T)});
  const StridedLoop<1> red(s.red_shape, {&s.red_strides}, {sizeof(T)});
  char* base = static_cast<char*>(x.raw_data());
  const std::int64_t run = red.inner_size();
  // Ranges of outputs, about 4 per thread: each output is one task's, so neither the range sizes
  // nor the thread count change the bits.
  const std::int64_t parts = 4 * static_cast<std::int64_t>(num_threads());
  const std::int64_t grain = std::max<std::int64_t>(1, std::max(kRowBlock / R, (K + parts - 1) / parts));
  parallel_for(K, grain, [&](std::int64_t k0, std::int64_t k1) {
    std::vector<const char*> first;  // each output's first element
    first.reserve(static_cast<std::size_t>(k1 - k0));
    kept.run({base}, k0, k1, [&](const std::array<char*, 1>& q, std::int64_t n, const std::array<std::int64_t, 1>& st) {
      for (std::int64_t i = 0; i < n; ++i) first.push_back(q[0] + i * st[0]);
    });
    std::vector<Wide<T>> acc(first.size(), identity<Wide<T>>(op));
    // The runs in the reduced dims' order; `rp` is where a run starts for the output at `base`.
    red.run({base}, 0, R, [&](const std::array<char*, 1>& rp, std::int64_t, const std::array<std::int64_t, 1>&) {
      const std::ptrdiff_t offset = rp[0] - base;
      for (std::size_t i = 0; i < first.size(); ++i) {
        const T* p = reinterpret_cast<const T*>(first[i] + offset);  // a contiguous run of the innermost reduced dim
        for (std::int64_t b = 0; b < run; b += kRowBlock)
          acc[i] = combine(op, acc[i], reduce_block_acc(op, p + b, std::min(kRowBlock, run - b)));
      }
    });
    for (std::size_t i = 0; i < first.size(); ++i) out[k0 + static_cast<std::int64_t>(i)] = static_cast<T>(acc[i]);
  });
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, std::uint32_t mask, const Tensor& out) {
  dispatch_numeric(x.dtype(), "reduce", [&]<class T>() {
    T* o = out.data<T>();
    const Split s = split_axes(x, mask);
    const std::int64_t K = s.kept_shape.numel(), R = s.red_shape.numel();
    if (K == 0) return;
    if (R == 0) {
      for (std::int64_t k = 0; k < K; ++k) o[k] = identity<T>(op);
      return;
    }
    const StridedLoop<1> red(s.red_shape, {&s.red_strides}, {sizeof(T)});
    const StridedLoop<1> kept(s.kept_shape, {&s.kept_strides}, {sizeof(T)});
    if (R == 1 || (red.ndim() == 1 && red.inner_stride(0) == static_cast<std::int64_t>(sizeof(T)))) {
      reduce_rows<T>(op, x, s, o);
    } else if (const Split ks = merged_kept_dims(s);
               K > 1 && ks.kept_strides.back() == 1 && ks.kept_shape.back() >= 16) {
      reduce_columns<T>(op, x, ks, o);
    } else if (red.inner_stride(0) == static_cast<std::int64_t>(sizeof(T)) && red.inner_size() >= 64) {
      reduce_segments<T>(op, x, s, o);
    } else {  // gather the reduced dims into contiguous rows first
      Shape perm;
      for (int d = 0; d < x.dim(); ++d)
        if (!(mask & (1u << d))) perm.push_back(d);
      for (int d = 0; d < x.dim(); ++d)
        if (mask & (1u << d)) perm.push_back(d);
      const Tensor xc = x.detach().permute(perm).contiguous();
      std::uint32_t tail_mask = 0;
      for (int d = s.kept_shape.size(); d < x.dim(); ++d) tail_mask |= 1u << d;
      reduce_rows<T>(op, xc, split_axes(xc, tail_mask), o);
    }
  });
}

void arg_reduce(bool is_max, const Tensor& x, int axis, const Tensor& values, const Tensor& indices) {
  // Move `axis` last and make rows contiguous.
  Shape perm;
  for (int d = 0; d < x.dim(); ++d)
    if (d != axis) perm.push_back(d);
  perm.push_back(axis);
  const Tensor xc = x.detach().permute(perm).contiguous();
  const std::int64_t R = x.shape()[axis];
  const std::int64_t K = R ? xc.numel() / R : 0;
  std::int64_t* idx = indices.data<std::int64_t>();
  dispatch_numeric(x.dtype(), "arg_reduce", [&]<class T>() {
    const T* p = xc.data<T>();
    T* val = values.data<T>();
    const std::int64_t grain = std::max<std::int64_t>(1, kRowBlock / std::max<std::int64_t>(R, 1));
    parallel_for(K, grain, [&](std::int64_t k0, std::int64_t k1) {
      for (std::int64_t k = k0; k < k1; ++k) {
        const T* row = p + k * R;
        std::int64_t best = 0;
        for (std::int64_t i = 1; i < R; ++i) {
          const T v = row[i], b = row[best];
          if constexpr (std::is_floating_point_v<T>) {
            if (std::isnan(b)) break;  // the first NaN wins
            if (std::isnan(v)) {
              best = i;
              break;
            }
          }
          if (is_max ? v > b : v < b) best = i;
        }
        idx[k] = best;
        val[k] = row[best];
      }
    });
  });
}

void cumsum(const Tensor& x, int axis, bool reverse, const Tensor& out) {
  // out has x's shape. Every position off `axis` is summed sequentially along it (in f64 for f32).
  Shape outer_shape = x.shape(), xs = x.strides(), os = out.strides();
  const std::int64_t n = x.shape()[axis], x_step = x.strides()[axis], o_step = out.strides()[axis];
  outer_shape[axis] = 1;
  std::int64_t inner = 1;
  for (int d = axis + 1; d < x.dim(); ++d) inner *= x.shape()[d];
  dispatch_numeric(x.dtype(), "cumsum", [&]<class T>() {
    using Acc = std::conditional_t<std::is_same_v<T, float>, double, T>;
    if (inner > 1 && x.numel() > 0 && x.is_contiguous() && out.is_contiguous()) {
      // Not along the last axis: x is [outer, n, inner]. Walking one position at a time along
      // the axis would read a new cache line per element ([4096, 1024] along axis 0: 67 ms);
      // instead a block of kInner positions is carried along together, rows read in order
      // (same additions per position, so the same bits).
      constexpr std::int64_t kInner = 256;
      const std::int64_t outer = x.numel() / (n * inner), blocks = (inner + kInner - 1) / kInner;
      const T* xp = static_cast<const T*>(x.raw_data());
      T* op = static_cast<T*>(out.raw_data());
      const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(n * kInner, 1));
      parallel_for(outer * blocks, grain, [&](std::int64_t b, std::int64_t e) {
        Acc acc[kInner];
        for (std::int64_t t = b; t < e; ++t) {
          const std::int64_t o = t / blocks, k0 = t % blocks * kInner, kn = std::min(kInner, inner - k0);
          std::fill(acc, acc + kn, Acc(0));
          for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t j = reverse ? n - 1 - i : i;
            const T* v = xp + (o * n + j) * inner + k0;
            T* w = op + (o * n + j) * inner + k0;
            for (std::int64_t k = 0; k < kn; ++k) {
              acc[k] = wrapping_add(acc[k], static_cast<Acc>(v[k]));
              w[k] = static_cast<T>(acc[k]);
            }
          }
        }
      });
      return;
    }
    const StridedLoop<2> loop(outer_shape, {&os, &xs}, {sizeof(T), sizeof(T)});
    const std::array<char*, 2> base{static_cast<char*>(out.raw_data()), static_cast<char*>(x.raw_data())};
    const std::int64_t grain = std::max<std::int64_t>(1, (1 << 14) / std::max<std::int64_t>(n, 1));
    parallel_for(loop.numel(), grain, [&](std::int64_t b, std::int64_t e) {
      loop.run(base, b, e, [&](const std::array<char*, 2>& p, std::int64_t cnt, const std::array<std::int64_t, 2>& st) {
        for (std::int64_t c = 0; c < cnt; ++c) {
          T* o = reinterpret_cast<T*>(p[0] + c * st[0]);
          const T* v = reinterpret_cast<const T*>(p[1] + c * st[1]);
          Acc acc(0);
          for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t j = reverse ? n - 1 - i : i;
            acc = wrapping_add(acc, static_cast<Acc>(v[j * x_step]));
            o[j * o_step] = static_cast<T>(acc);
          }
        }
      });
    });
  });
}

}  // namespace tg::kernels
