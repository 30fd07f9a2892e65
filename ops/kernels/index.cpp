#include "ops/kernels/index.hpp"

#include <cstring>
#include <vector>

#include "core/parallel.hpp"
#include "core/strided.hpp"
#include "ops/kernels/wrapping.hpp"

namespace tg::kernels {

void index_select(const Tensor& x, const Tensor& index, const Tensor& out) {
  const std::int64_t M = index.numel();
  const std::int64_t O = out.shape()[0], N = x.shape()[1], I = x.shape()[2];
  const std::int64_t* idx = index.data<std::int64_t>();
  const std::size_t row_bytes = static_cast<std::size_t>(I) * x.element_size();
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(I, 1));
  if (I == 1) {  // single elements (selecting along the last dim): typed loads, no division per element
    dispatch(x.dtype(), "index_select", [&]<class T>() {
      const T* xs = x.data<T>();
      T* os = out.data<T>();
      parallel_for(O, std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(M, 1)), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t o = b; o < e; ++o) {
          const T* row = xs + o * N;
          T* orow = os + o * M;
          for (std::int64_t i = 0; i < M; ++i) orow[i] = row[idx[i]];
        }
      });
    });
    return;
  }
  parallel_for(O * M, grain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const std::int64_t o = r / M, i = r % M;
      std::memcpy(dst + static_cast<std::size_t>(r) * row_bytes, src + static_cast<std::size_t>(o * N + idx[i]) * row_bytes,
                  row_bytes);
    }
  });
}

void index_add(const Tensor& out, const Tensor& index, const Tensor& src) {
  const std::int64_t M = index.numel();
  const std::int64_t O = out.shape()[0], N = out.shape()[1], I = out.shape()[2];
  const std::int64_t* idx = index.data<std::int64_t>();
  dispatch_numeric(out.dtype(), "index_add", [&]<class T>() {
    T* o = out.data<T>();
    const T* s = src.data<T>();
    // Parallel over (outer, column block); each task walks the indices in order: one writer per
    // element and a fixed summation order.
    constexpr std::int64_t kCols = 256;
    const std::int64_t col_blocks = (I + kCols - 1) / kCols;
    parallel_for(O * col_blocks, 1, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t t = b; t < e; ++t) {
        const std::int64_t ob = t / col_blocks, c0 = (t % col_blocks) * kCols, c1 = std::min(I, c0 + kCols);
        for (std::int64_t i = 0; i < M; ++i) {
          T* dst = o + (ob * N + idx[i]) * I;
          const T* from = s + (ob * M + i) * I;
          for (std::int64_t c = c0; c < c1; ++c) dst[c] += from[c];
        }
      }
    });
  });
}

void gather(const Tensor& x, int axis, const Tensor& index, const Tensor& out) {
  // out and index share a shape; x may be larger in every dim but `axis` is indexed. One strided
  // walk over out, index and x with x's `axis` stride set to 0 (so x's pointer sits at coordinate
  // 0 of the axis), plus index * stride.
  const Shape& is = index.shape();
  const Strides dense = contiguous_strides(is);
  Strides xs = x.strides();
  const std::int64_t step = xs[axis];
  xs[axis] = 0;
  dispatch(x.dtype(), "gather", [&]<class T>() {
    const StridedLoop<3> loop(is, {&dense, &dense, &xs}, {sizeof(T), sizeof(std::int64_t), sizeof(T)});
    const std::array<char*, 3> base{static_cast<char*>(out.raw_data()), static_cast<char*>(index.raw_data()),
                                    static_cast<char*>(x.raw_data())};
    parallel_for(loop.numel(), 1 << 14, [&](std::int64_t b, std::int64_t e) {
      loop.run(base, b, e, [&](const std::array<char*, 3>& p, std::int64_t n, const std::array<std::int64_t, 3>& st) {
        if (st[0] == sizeof(T) && st[1] == sizeof(std::int64_t) && st[2] == 0) {  // along a row of x: typed loads
          T* o = reinterpret_cast<T*>(p[0]);
          const std::int64_t* k = reinterpret_cast<const std::int64_t*>(p[1]);
          const T* row = reinterpret_cast<const T*>(p[2]);
          for (std::int64_t i = 0; i < n; ++i) o[i] = row[k[i] * step];
          return;
        }
        for (std::int64_t i = 0; i < n; ++i) {
          const std::int64_t k = *reinterpret_cast<const std::int64_t*>(p[1] + i * st[1]);
          *reinterpret_cast<T*>(p[0] + i * st[0]) = reinterpret_cast<const T*>(p[2] + i * st[2])[k * step];
        }
      });
    });
  });
}

void scatter_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) {
  // A lane is a position of index with its `axis` coordinate fixed to 0; its entries along `axis`
  // may add into the same output element, so each lane's entries are added in order, and lanes
  // go to tasks in ranges: no two tasks touch one output element, and each element sums its
  // contributions in the order of the indexed dim whatever the chunking or thread count.
  // Along the last dim a task walks each lane's row; otherwise the lanes of a range lie side by
  // side in memory, so the task takes entry j of all of them, then entry j + 1 ...: it reads src
  // and index front to back instead of down their columns ([4096, 1024] f32 along dim 0: 80-87 ->
  // 24-32 ms at 1 thread, PyTorch 1.13 24 ms).
  const Shape& is = index.shape();
  const Strides os = out.strides(), ss = contiguous_strides(is);
  Shape lanes = is;
  lanes[axis] = 1;
  const std::int64_t L = lanes.numel(), len = is[axis], step = ss[axis], ostep = os[axis];
  const bool along_rows = step == 1;  // the indexed dim is index's (and src's) innermost
  const std::int64_t* idx = index.data<std::int64_t>();
  auto offsets = [&](std::int64_t f, std::int64_t& out_off, std::int64_t& src_off) {
    std::int64_t rem = f;
    out_off = 0;
    src_off = 0;
    for (int d = lanes.size() - 1; d >= 0; --d) {
      const std::int64_t i = rem % lanes[d];
      rem /= lanes[d];
      out_off += i * os[d];
      src_off += i * ss[d];
    }
  };
  dispatch_numeric(out.dtype(), "scatter_add", [&]<class T>() {
    T* op = out.data<T>();
    const T* sp = src.data<T>();
    const std::int64_t grain = std::max<std::int64_t>(along_rows ? 1 : 64, (1 << 14) / std::max<std::int64_t>(len, 1));
    parallel_for(L, grain, [&](std::int64_t b, std::int64_t e) {
      if (along_rows) {
        for (std::int64_t f = b; f < e; ++f) {
          std::int64_t out_off, src_off;
          offsets(f, out_off, src_off);
          T* orow = op + out_off;
          for (std::int64_t j = 0; j < len; ++j) {
            T& o = orow[idx[src_off + j] * ostep];
            o = wrapping_add(o, sp[src_off + j]);
          }
        }
        return;
      }
      std::vector<std::int64_t> out_offs(static_cast<std::size_t>(e - b)), src_offs(out_offs.size());
      for (std::int64_t f = b; f < e; ++f) offsets(f, out_offs[f - b], src_offs[f - b]);
      for (std::int64_t j = 0; j < len; ++j)
        for (std::size_t l = 0; l < out_offs.size(); ++l) {
          const std::int64_t s = src_offs[l] + j * step;
          T& o = op[out_offs[l] + idx[s] * ostep];
          o = wrapping_add(o, sp[s]);
        }
    });
  });
}

}  // namespace tg::kernels
