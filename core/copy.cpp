#include "core/copy.hpp"

#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel.hpp"
#include "core/simd_transpose.hpp"
#include "core/strided.hpp"

namespace tg::detail {
namespace {

constexpr std::int64_t kCopyGrain = 1 << 16;  // elements per parallel chunk

// Converts one element. A float outside an integer type's range (or NaN) has no defined
// static_cast; it becomes the type's lowest value, as x86's conversion (and so torch) gives.
template <class To, class From>
To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    return scalar_fits(static_cast<double>(v), dtype_of<To>()) ? static_cast<To>(v) : std::numeric_limits<To>::lowest();
  } else {
    return static_cast<To>(v);
  }
}

// A copy whose destination runs along one dim (d0, innermost) and whose source runs along
// another (dj): a transpose, e.g. x.t().contiguous(). Element by element along the destination,
// every source read is a new cache line (and, 4 KiB or more apart, a new page); in tiles the
// tile's source lines stay in L1 while the destination rows are written. Tiles of the dj dim
// (times the other dims) run in parallel. Same-type copies of 4- and 8-byte elements go through
// registers (16 x 16 / 8 x 8 blocks of a 64 x 64 tile): [4096, 1024] f32 transposed 11 -> 1.5 ms
// at 1 thread (PyTorch 1.13: 3.1-3.9 ms); element by element it was bound by the per-element loop.
// dst and src must not overlap (Tensor::copy_ copies through a clone when they share storage).
template <class To, class From>
void copy_tiled(const StridedLoop<2>& loop, int j, const std::array<char*, 2>& base) {
#if defined(__AVX512F__)
  constexpr bool kRegisters = std::is_same_v<To, From> && (sizeof(To) == 4 || sizeof(To) == 8);
#else
  constexpr bool kRegisters = false;
#endif
  constexpr std::int64_t kTile = kRegisters ? 64 : 32;
  const std::int64_t n0 = loop.size(0), nj = loop.size(j);
  const std::int64_t d0 = loop.stride(0, 0), s0 = loop.stride(0, 1), dj = loop.stride(j, 0), sj = loop.stride(j, 1);
  std::int64_t outer = 1;
  for (int d = 1; d < loop.ndim(); ++d)
    if (d != j) outer *= loop.size(d);
  const std::int64_t tiles_j = (nj + kTile - 1) / kTile;
  const std::int64_t grain = std::max<std::int64_t>(1, kCopyGrain / (kTile * n0));
  parallel_for(outer * tiles_j, grain, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      std::int64_t rest = t / tiles_j;
      const std::int64_t jb = (t % tiles_j) * kTile, je = std::min(nj, jb + kTile);
      char* dp = base[0];
      const char* sp = base[1];
      for (int d = 1; d < loop.ndim(); ++d) {  // the other dims, innermost first
        if (d == j) continue;
        const std::int64_t i = rest % loop.size(d);
        rest /= loop.size(d);
        dp += i * loop.stride(d, 0);
        sp += i * loop.stride(d, 1);
      }
      for (std::int64_t ib = 0; ib < n0; ib += kTile) {
        const std::int64_t ie = std::min(n0, ib + kTile);
#if defined(__AVX512F__)
        if constexpr (kRegisters) {
          // The source block is a matrix of rows i (stride s0) and contiguous columns jj; the
          // destination block its transpose (rows jj at stride dj, contiguous columns i).
          using Bits = std::conditional_t<sizeof(To) == 4, float, double>;  // bit copies
          constexpr auto size = static_cast<std::int64_t>(sizeof(To));
          kernels::simd::transpose_matrix(reinterpret_cast<const Bits*>(sp + ib * s0 + jb * sj), ie - ib, je - jb,
                                          s0 / size, reinterpret_cast<Bits*>(dp + jb * dj + ib * d0), dj / size);
          continue;
        }
#endif
        for (std::int64_t jj = jb; jj < je; ++jj) {
          char* d = dp + jj * dj + ib * d0;
          const char* q = sp + jj * sj + ib * s0;
          for (std::int64_t i = ib; i < ie; ++i, d += d0, q += s0)
            *reinterpret_cast<To*>(d) = convert<To>(*reinterpret_cast<const From*>(q));
        }
      }
    }
  });
}

// The dim along which a copy is a transpose worth tiling (tg::transposed_dim of the source, in
// copies of at least 4096 elements), or -1.
int tiled_copy_dim(const StridedLoop<2>& loop, std::int64_t dst_size, std::int64_t src_size) {
  return loop.numel() < 4096 ? -1 : transposed_dim(loop, 1, dst_size, src_size);
}

}  // namespace

void transpose_block(const void* src, std::int64_t rows, std::int64_t cols, std::int64_t ss, void* dst, std::int64_t ds,
                     std::size_t size, bool prefetch) {
#if defined(__AVX512F__)
  if (size == 4) {
    kernels::simd::transpose_matrix(static_cast<const float*>(src), rows, cols, ss, static_cast<float*>(dst), ds, prefetch);
    return;
  }
  if (size == 8) {
    kernels::simd::transpose_matrix(static_cast<const double*>(src), rows, cols, ss, static_cast<double*>(dst), ds, prefetch);
    return;
  }
#endif
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
  const auto bytes = static_cast<std::int64_t>(size);
  for (std::int64_t c = 0; c < cols; ++c)
    for (std::int64_t r = 0; r < rows; ++r) std::memcpy(d + (c * ds + r) * bytes, s + (r * ss + c) * bytes, size);
}

bool reads_across(const Tensor& dst, const Tensor& src) {
  const StridedLoop<2> loop(dst.shape(), {&dst.strides(), &src.strides()}, {dst.element_size(), src.element_size()});
  return tiled_copy_dim(loop, static_cast<std::int64_t>(dst.element_size()), static_cast<std::int64_t>(src.element_size())) > 0;
}

void copy_into(const Tensor& dst, const Tensor& src) {
  TG_CHECK(dst.shape() == src.shape(), "copy: shapes {} and {} differ", dst.shape(), src.shape());
  const StridedLoop<2> loop(dst.shape(), {&dst.strides(), &src.strides()}, {dst.element_size(), src.element_size()});
  const std::array<char*, 2> base{static_cast<char*>(dst.raw_data()), static_cast<char*>(src.raw_data())};
  const int transposed = tiled_copy_dim(loop, static_cast<std::int64_t>(dst.element_size()),
                                        static_cast<std::int64_t>(src.element_size()));
  dispatch(dst.dtype(), "copy", [&]<class To>() {
    dispatch(src.dtype(), "copy", [&]<class From>() {
      if (transposed > 0) {
        copy_tiled<To, From>(loop, transposed, base);
        return;
      }
      parallel_for(loop.numel(), kCopyGrain, [&](std::int64_t b, std::int64_t e) {
        loop.run(base, b, e, [](const std::array<char*, 2>& p, std::int64_t n, const std::array<std::int64_t, 2>& s) {
          if constexpr (std::is_same_v<To, From>) {
            if (s[0] == sizeof(To) && s[1] == sizeof(From)) {
              std::memcpy(p[0], p[1], static_cast<std::size_t>(n) * sizeof(To));
              return;
            }
          }
          char* d = p[0];
          const char* q = p[1];
          if (s[1] == 0) {  // an expanded source: one value, converted once
            const To v = convert<To>(*reinterpret_cast<const From*>(q));
            if (s[0] == sizeof(To)) {
              std::fill_n(reinterpret_cast<To*>(d), n, v);
            } else {
              for (std::int64_t i = 0; i < n; ++i, d += s[0]) *reinterpret_cast<To*>(d) = v;
            }
            return;
          }
          for (std::int64_t i = 0; i < n; ++i, d += s[0], q += s[1])
            *reinterpret_cast<To*>(d) = convert<To>(*reinterpret_cast<const From*>(q));
        });
      });
    });
  });
}

void fill(const Tensor& dst, double value, const char* op) {
  check_scalar_fits(op, value, dst.dtype());
  const StridedLoop<1> loop(dst.shape(), {&dst.strides()}, {dst.element_size()});
  dispatch(dst.dtype(), op, [&]<class T>() {
    const T v = convert<T>(value);
    parallel_for(loop.numel(), kCopyGrain, [&](std::int64_t b, std::int64_t e) {
      loop.run({static_cast<char*>(dst.raw_data())}, b, e,
               [&](const std::array<char*, 1>& p, std::int64_t n, const std::array<std::int64_t, 1>& s) {
                 char* d = p[0];
                 for (std::int64_t i = 0; i < n; ++i, d += s[0]) *reinterpret_cast<T*>(d) = v;
               });
    });
  });
}

Tensor add_same_shape(const Tensor& a, const Tensor& b) {
  TG_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype(), "add: expected equal shapes and dtypes, got {} {} and {} {}",
           a.shape(), a.dtype(), b.shape(), b.dtype());
  Tensor out = empty(a.shape(), a.dtype());
  const StridedLoop<3> loop(a.shape(), {&out.strides(), &a.strides(), &b.strides()},
                            {out.element_size(), a.element_size(), b.element_size()});
  const std::array<char*, 3> base{static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data()),
                                  static_cast<char*>(b.raw_data())};
  dispatch_numeric(a.dtype(), "add", [&]<class T>() {
    parallel_for(loop.numel(), kCopyGrain, [&](std::int64_t lo, std::int64_t hi) {
      loop.run(base, lo, hi, [](const std::array<char*, 3>& p, std::int64_t n, const std::array<std::int64_t, 3>& s) {
        if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == sizeof(T)) {
          T* o = reinterpret_cast<T*>(p[0]);
          const T* x = reinterpret_cast<const T*>(p[1]);
          const T* y = reinterpret_cast<const T*>(p[2]);
          for (std::int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
          return;
        }
        for (std::int64_t i = 0; i < n; ++i)
          *reinterpret_cast<T*>(p[0] + i * s[0]) =
              *reinterpret_cast<const T*>(p[1] + i * s[1]) + *reinterpret_cast<const T*>(p[2] + i * s[2]);
      });
    });
  });
  return out;
}

void accumulate(Tensor& acc, const Tensor& g) {
  const bool owned = acc.impl_ptr().use_count() == 1 && acc.storage().use_count() == 1 && acc.is_contiguous() &&
                     static_cast<std::size_t>(acc.numel()) * acc.element_size() == acc.storage()->nbytes();
  if (!owned || g.storage() == acc.storage()) {
    acc = add_same_shape(acc, g);
    return;
  }
  TG_CHECK(acc.shape() == g.shape() && acc.dtype() == g.dtype(), "accumulate: {} {} += {} {}", acc.shape(), acc.dtype(),
           g.shape(), g.dtype());
  const StridedLoop<2> loop(acc.shape(), {&acc.strides(), &g.strides()}, {acc.element_size(), g.element_size()});
  const std::array<char*, 2> base{static_cast<char*>(acc.raw_data()), static_cast<char*>(g.raw_data())};
  dispatch_numeric(acc.dtype(), "accumulate", [&]<class T>() {
    parallel_for(loop.numel(), kCopyGrain, [&](std::int64_t lo, std::int64_t hi) {
      loop.run(base, lo, hi, [](const std::array<char*, 2>& p, std::int64_t n, const std::array<std::int64_t, 2>& s) {
        T* o = reinterpret_cast<T*>(p[0]);  // contiguous
        if (s[1] == sizeof(T)) {
          const T* x = reinterpret_cast<const T*>(p[1]);
          for (std::int64_t i = 0; i < n; ++i) o[i] += x[i];
          return;
        }
        for (std::int64_t i = 0; i < n; ++i) o[i] += *reinterpret_cast<const T*>(p[1] + i * s[1]);
      });
    });
  });
  acc.storage()->bump_version();
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int nd = g.dim();
  TG_CHECK(shape.size() <= nd, "sum_to: cannot sum shape {} down to {}", g.shape(), shape);
  // Split g's dims into kept (present in `shape` with the same size) and reduced ones.
  Shape kept_shape, kept_strides, red_shape, red_strides;
  const int lead = nd - shape.size();
  for (int d = 0; d < nd; ++d) {
    const std::int64_t want = d < lead ? 1 : shape[d - lead];
    const bool reduce = d < lead || (want == 1 && g.shape()[d] != 1);
    TG_CHECK(reduce || want == g.shape()[d], "sum_to: cannot sum shape {} down to {} (dim {}: {} vs {})", g.shape(),
             shape, d, g.shape()[d], want);
    if (reduce) {
      red_shape.push_back(g.shape()[d]);
      red_strides.push_back(g.strides()[d]);
    } else {
      kept_shape.push_back(g.shape()[d]);
      kept_strides.push_back(g.strides()[d]);
    }
  }
  const std::int64_t K = kept_shape.numel();
  const std::int64_t R = red_shape.numel();
  Tensor out = zeros(shape, g.dtype());
  if (K == 0 || R == 0) return out;
  dispatch_numeric(g.dtype(), "sum_to", [&]<class T>() {
    using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
    const StridedLoop<1> kept(kept_shape, {&kept_strides}, {sizeof(T)});
    const StridedLoop<1> red(red_shape, {&red_strides}, {sizeof(T)});
    char* gbase = static_cast<char*>(g.raw_data());
    T* o = out.data<T>();
    if (K == 1) {  // a full reduction: one running sum over the reduced dims
      Acc sum(0);
      red.run({gbase}, 0, R, [&](const std::array<char*, 1>& p, std::int64_t n, const std::array<std::int64_t, 1>& s) {
        for (std::int64_t i = 0; i < n; ++i) sum += static_cast<Acc>(*reinterpret_cast<const T*>(p[0] + i * s[0]));
      });
      o[0] = static_cast<T>(sum);
      return;
    }
    // Each output element is owned by one chunk of the kept index space, and its terms are added
    // in the row-major order of the reduced dims: the same sum for any thread count.
    const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(R, 1));
    if (std::llabs(red.inner_stride(0)) < std::llabs(kept.inner_stride(0))) {
      // The reduced dims run faster through memory (g [N, C] summed to [N, 1], the backward of a
      // column broadcast): sum each element's terms from its own pointer, the reduced loop inside.
      // The terms and their order are the same as below, so are the bits.
      parallel_for(K, grain, [&](std::int64_t k0, std::int64_t k1) {
        kept.run({gbase}, k0, k1, [&](const std::array<char*, 1>& kp, std::int64_t kn, const std::array<std::int64_t, 1>& ks) {
          for (std::int64_t i = 0; i < kn; ++i, ++k0) {
            Acc a(0);
            red.run({kp[0] + i * ks[0]}, 0, R, [&](const std::array<char*, 1>& rp, std::int64_t rn,
                                                  const std::array<std::int64_t, 1>& rs) {
              if (rs[0] == sizeof(T)) {
                const T* x = reinterpret_cast<const T*>(rp[0]);
                for (std::int64_t r = 0; r < rn; ++r) a += static_cast<Acc>(x[r]);
              } else {
                for (std::int64_t r = 0; r < rn; ++r) a += static_cast<Acc>(*reinterpret_cast<const T*>(rp[0] + r * rs[0]));
              }
            });
            o[k0] = static_cast<T>(a);
          }
        });
      });
      return;
    }
    parallel_for(K, grain, [&](std::int64_t k0, std::int64_t k1) {
      std::vector<Acc> acc(static_cast<std::size_t>(k1 - k0), Acc(0));
      red.run({gbase}, 0, R, [&](const std::array<char*, 1>& rp, std::int64_t rn, const std::array<std::int64_t, 1>& rs) {
        for (std::int64_t r = 0; r < rn; ++r) {
          Acc* a = acc.data();
          kept.run({rp[0] + r * rs[0]}, k0, k1,
                   [&](const std::array<char*, 1>& kp, std::int64_t kn, const std::array<std::int64_t, 1>& ks) {
                     if (ks[0] == sizeof(T)) {
                       const T* x = reinterpret_cast<const T*>(kp[0]);
                       for (std::int64_t i = 0; i < kn; ++i) a[i] += static_cast<Acc>(x[i]);
                     } else {
                       for (std::int64_t i = 0; i < kn; ++i) a[i] += static_cast<Acc>(*reinterpret_cast<const T*>(kp[0] + i * ks[0]));
                     }
                     a += kn;
                   });
        }
      });
      for (std::int64_t k = k0; k < k1; ++k) o[k] = static_cast<T>(acc[static_cast<std::size_t>(k - k0)]);
    });
  });
  return out;
}

std::optional<std::int64_t> first_non_finite(const Tensor& t) {
  if (!t.is_floating_point()) return std::nullopt;
  std::optional<std::int64_t> found;
  dispatch_float(t.dtype(), "anomaly check", [&]<class T>() {
    const StridedLoop<1> loop(t.shape(), {&t.strides()}, {sizeof(T)});
    std::int64_t pos = 0;
    loop.run({static_cast<char*>(t.raw_data())}, 0, loop.numel(),
             [&](const std::array<char*, 1>& p, std::int64_t n, const std::array<std::int64_t, 1>& s) {
               for (std::int64_t i = 0; i < n && !found; ++i)
                 if (!std::isfinite(*reinterpret_cast<const T*>(p[0] + i * s[0]))) found = pos + i;
               pos += n;
             });
  });
  return found;
}

std::string describe_non_finite(const Tensor& t, std::int64_t linear_index) {
  // Read the element directly: this runs inside the anomaly check, so it must not call ops.
  std::int64_t off = 0;
  for (int d = t.dim() - 1; d >= 0; --d) {
    off += (linear_index % t.shape()[d]) * t.strides()[d];
    linear_index /= t.shape()[d];
  }
  const double v = dispatch_float(t.dtype(), "anomaly check",
                                  [&]<class T>() { return static_cast<double>(t.data<T>()[off]); });
  return std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
}

}  // namespace tg::detail
