#include "core/copy.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel.hpp"
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

}  // namespace

void copy_into(const Tensor& dst, const Tensor& src) {
  TG_CHECK(dst.shape() == src.shape(), "copy: shapes {} and {} differ", dst.shape(), src.shape());
  const StridedLoop<2> loop(dst.shape(), {&dst.strides(), &src.strides()}, {dst.element_size(), src.element_size()});
  const std::array<char*, 2> base{static_cast<char*>(dst.raw_data()), static_cast<char*>(src.raw_data())};
  dispatch(dst.dtype(), "copy", [&]<class To>() {
    dispatch(src.dtype(), "copy", [&]<class From>() {
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
