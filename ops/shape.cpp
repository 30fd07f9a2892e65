// Shape and indexing ops: frontends and backward rules (kernels in ops/kernels/index.cpp).
#include "ops/shape.hpp"

#include <algorithm>
#include <vector>

#include "core/autograd.hpp"
#include "core/copy.hpp"
#include "core/parallel.hpp"
#include "ops/common.hpp"
#include "ops/elementwise.hpp"
#include "ops/kernels/index.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using detail::check_defined;

namespace {

// An index tensor as contiguous i64, with every entry checked against [-size, size).
// Negative entries count from the end, as in Python -- unless !allow_negative (class labels and
// embedding rows, where -1 is more likely a bug than a request for the last entry: [0, size)).
Tensor checked_index(const Tensor& index, std::int64_t size, const char* op, bool allow_negative = true) {
  check_defined(index, op, "index");
  TG_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32,
           "{}: index must be an integer tensor (i64 or i32), got {} (shape {})", op, index.dtype(), index.shape());
  // A private copy: negative entries are rewritten, and the backward keeps the index, so it must
  // not change when the caller later writes to theirs. Copied, wrapped and range-checked in one
  // parallel pass (chunk minima and maxima); the first bad entry is looked up only on failure.
  const Tensor src = index.detach().contiguous();
  Tensor idx = empty(index.shape(), DType::i64, op);
  std::int64_t* out = idx.data<std::int64_t>();
  const std::int64_t n = idx.numel(), lowest = allow_negative ? -size : 0;
  constexpr std::int64_t kGrain = 1 << 16;
  std::vector<std::int64_t> lo(static_cast<std::size_t>((n + kGrain - 1) / kGrain), 0), hi(lo.size(), 0);
  auto scan = [&]<class I>(const I* in) {
    parallel_for(n, kGrain, [&](std::int64_t b, std::int64_t e) {
      std::int64_t mn = in[b], mx = in[b];
      for (std::int64_t i = b; i < e; ++i) {
        const std::int64_t v = in[i];
        mn = std::min(mn, v);
        mx = std::max(mx, v);
        out[i] = v < 0 ? v + size : v;
      }
      lo[static_cast<std::size_t>(b / kGrain)] = mn;
      hi[static_cast<std::size_t>(b / kGrain)] = mx;
    });
    const bool bad = (!lo.empty() && *std::min_element(lo.begin(), lo.end()) < lowest) ||
                     (!hi.empty() && *std::max_element(hi.begin(), hi.end()) >= size);
    if (bad)
      for (std::int64_t i = 0; i < n; ++i)
        TG_CHECK(in[i] >= lowest && in[i] < size, "{}: index {} is out of range for a dim of size {}", op,
                 static_cast<std::int64_t>(in[i]), size);
  };
  if (src.dtype() == DType::i64)
    scan(src.data<std::int64_t>());
  else
    scan(src.data<std::int32_t>());
  return idx;
}

}  // namespace

Tensor cat(const Tensors& xs, std::int64_t axis) {
  TG_CHECK(!xs.empty(), "cat: expected at least one tensor");
  for (std::size_t i = 0; i < xs.size(); ++i) TG_CHECK(xs[i].defined(), "cat: tensor {} is undefined", i);
  const Shape& first = xs[0].shape();
  TG_CHECK(first.size() > 0, "cat: cannot concatenate 0-d tensors; use stack");
  const int a = normalize_axis(axis, first.size(), "cat", first);
  DType dtype = xs[0].dtype();
  Shape out_shape = first;
  out_shape[a] = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    bool match = s.size() == first.size();
    for (int d = 0; match && d < s.size(); ++d) match = d == a || s[d] == first[d];
    TG_CHECK(match, "cat: tensor {} has shape {}, which does not match shape {} of tensor 0 outside dim {}", i, s,
             first, a);
    TG_CHECK(!__builtin_add_overflow(out_shape[a], s[a], &out_shape[a]), "cat: the sizes of dim {} overflow (shape {})",
             a, s);
    dtype = promote(dtype, xs[i].dtype());
  }
  Tensor out = empty(out_shape, dtype);
  std::vector<std::int64_t> sizes;
  std::int64_t at = 0;
  for (const Tensor& x : xs) {
    tg::detail::copy_into(out.narrow(a, at, x.shape()[a]).detach(), x);
    at += x.shape()[a];
    sizes.push_back(x.shape()[a]);
  }
  Tensors inputs;
  for (const Tensor& x : xs) inputs.push_back(x.to(dtype));
  return record("cat", inputs, out, [a, sizes](const Tensor& g) {
    Tensors grads;
    std::int64_t off = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      grads.push_back(input_needs_grad(i) ? g.narrow(a, off, sizes[i]) : Tensor());
      off += sizes[i];
    }
    return grads;
  });
}

Tensor stack(const Tensors& xs, std::int64_t axis) {
  TG_CHECK(!xs.empty(), "stack: expected at least one tensor");
  for (std::size_t i = 0; i < xs.size(); ++i) {
    TG_CHECK(xs[i].defined(), "stack: tensor {} is undefined", i);
    TG_CHECK(xs[i].shape() == xs[0].shape(), "stack: tensor {} has shape {} but tensor 0 has shape {}", i,
             xs[i].shape(), xs[0].shape());
  }
  const int a = normalize_axis(axis, xs[0].dim() + 1, "stack", xs[0].shape());
  Tensors expanded;
  for (const Tensor& x : xs) expanded.push_back(x.unsqueeze(a));
  return cat(expanded, a);
}

namespace {
// The pieces of x along `axis` (views) as ONE recorded op: its backward writes every piece's
// gradient into its slice of a single buffer, instead of one zero-filled full-size gradient per
// piece (which is what separate narrow/select views would cost).
Tensors split_views(const Tensor& x, int a, const std::vector<std::int64_t>& sizes, bool drop_axis) {
  const Tensor xd = x.detach();
  Tensors parts;
  std::int64_t at = 0;
  for (std::int64_t s : sizes) {
    parts.push_back(drop_axis ? xd.select(a, at) : xd.narrow(a, at, s));
    at += s;
  }
  return record(drop_axis ? "unbind" : "split", {x}, parts,
                [a, sizes, drop_axis, in_shape = x.shape(), dt = x.dtype()](const Tensors& grads) {
                  Tensor gx = empty(in_shape, dt);
                  std::int64_t off = 0;
                  for (std::size_t i = 0; i < sizes.size(); ++i) {  // the engine passes zeros for unused pieces
                    Tensor slot = drop_axis ? gx.select(a, off) : gx.narrow(a, off, sizes[i]);
                    tg::detail::copy_into(slot, grads[i]);
                    off += sizes[i];
                  }
                  return Tensors{gx};
                });
}

// split, chunk and unbind make one tensor per piece; more than this many is a mistake, and would
// exhaust memory on the piece list alone.
constexpr std::int64_t kMaxPieces = std::int64_t{1} << 24;

void check_pieces(const char* op, std::int64_t pieces, const Tensor& x, int axis) {
  TG_CHECK(pieces <= kMaxPieces, "{}: dim {} of shape {} would be cut into {} pieces, more than 2^24", op, axis,
           x.shape(), pieces);
}
}  // namespace

Tensors split(const Tensor& x, std::int64_t size, std::int64_t axis) {
  check_defined(x, "split", "x");
  const int a = normalize_axis(axis, x.dim(), "split", x.shape());
  TG_CHECK(size > 0, "split: size must be positive, got {}", size);
  check_pieces("split", x.shape()[a] / size + (x.shape()[a] % size != 0 ? 1 : 0), x, a);  // the last piece may be shorter
  std::vector<std::int64_t> sizes;
  for (std::int64_t at = 0; at < x.shape()[a]; at += std::min(size, x.shape()[a] - at))
    sizes.push_back(std::min(size, x.shape()[a] - at));
  if (sizes.empty()) sizes.push_back(0);  // an empty dim gives one empty piece (as torch.split)
  return split_views(x, a, sizes, false);
}

Tensors split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t axis) {
  check_defined(x, "split", "x");
  const int a = normalize_axis(axis, x.dim(), "split", x.shape());
  std::int64_t total = 0;
  for (std::int64_t s : sizes) {
    TG_CHECK(s >= 0, "split: negative size {}", s);
    TG_CHECK(!__builtin_add_overflow(total, s, &total), "split: the {} sizes add up to more than 2^63 - 1", sizes.size());
  }
  TG_CHECK(total == x.shape()[a], "split: sizes add up to {} but dim {} has size {} (shape {})", total, a,
           x.shape()[a], x.shape());
  return split_views(x, a, sizes, false);
}

Tensors unbind(const Tensor& x, std::int64_t axis) {
  check_defined(x, "unbind", "x");
  TG_CHECK(x.dim() > 0, "unbind: expected a tensor with at least one dim, got a 0-d tensor");
  const int a = normalize_axis(axis, x.dim(), "unbind", x.shape());
  check_pieces("unbind", x.shape()[a], x, a);
  return split_views(x, a, std::vector<std::int64_t>(static_cast<std::size_t>(x.shape()[a]), 1), true);
}

Tensors chunk(const Tensor& x, std::int64_t n, std::int64_t axis) {
  check_defined(x, "chunk", "x");
  TG_CHECK(n > 0, "chunk: the number of chunks must be positive, got {}", n);
  const int a = normalize_axis(axis, x.dim(), "chunk", x.shape());
  // As torch.chunk: pieces of ceil(size / n) (so possibly fewer than n), but n empty pieces of an empty dim.
  if (x.shape()[a] == 0) {
    check_pieces("chunk", n, x, a);
    return split_views(x, a, std::vector<std::int64_t>(static_cast<std::size_t>(n), 0), false);
  }
  return split(x, (x.shape()[a] - 1) / n + 1, a);
}

Tensor index_select(const Tensor& x, std::int64_t axis, const Tensor& index) {
  check_defined(x, "index_select", "x");
  TG_CHECK(x.dim() > 0, "index_select: expected a tensor with at least one dim");
  const int a = normalize_axis(axis, x.dim(), "index_select", x.shape());
  TG_CHECK(index.defined() && index.dim() <= 1, "index_select: index must be 1-D, got shape {}",
           index.defined() ? index.shape() : Shape{});
  const Tensor idx = checked_index(index, x.shape()[a], "index_select");
  // View x as [outer, N, inner] (contiguous) and gather rows.
  std::int64_t outer = 1, inner = 1;
  for (int d = 0; d < a; ++d) outer *= x.shape()[d];
  for (int d = a + 1; d < x.dim(); ++d) inner *= x.shape()[d];
  const Tensor xc = x.detach().contiguous().reshape({outer, x.shape()[a], inner});
  Shape out_shape = x.shape();
  out_shape[a] = idx.numel();
  Tensor out = empty(out_shape, x.dtype());
  kernels::index_select(xc, idx, out.reshape({outer, idx.numel(), inner}));
  return record("index_select", {x}, out, [in_shape = x.shape(), outer, n = x.shape()[a], inner, idx](const Tensor& g) {
    Tensor gx = zeros({outer, n, inner}, g.dtype());
    kernels::index_add(gx, idx, g.contiguous().reshape({outer, idx.numel(), inner}));
    return Tensors{gx.reshape(in_shape)};
  });
}

Tensor embedding(const Tensor& weight, const Tensor& index) {
  check_defined(weight, "embedding", "weight");
  TG_CHECK(weight.dim() == 2, "embedding: weight must be [num_embeddings, dim], got shape {}", weight.shape());
  const Tensor idx = checked_index(index, weight.shape()[0], "embedding", /*allow_negative=*/false);
  Shape out_shape = index.shape();
  out_shape.push_back(weight.shape()[1]);
  return index_select(weight, 0, idx.reshape({-1})).reshape(out_shape);
}

Tensor gather(const Tensor& x, std::int64_t axis, const Tensor& index) {
  check_defined(x, "gather", "x");
  check_defined(index, "gather", "index");
  const int a = normalize_axis(axis, x.dim(), "gather", x.shape());
  TG_CHECK(index.dim() == x.dim(), "gather: index has {} dims but x has {} (shapes {} and {})", index.dim(), x.dim(),
           index.shape(), x.shape());
  for (int d = 0; d < x.dim(); ++d)
    TG_CHECK(d == a || index.shape()[d] <= x.shape()[d],
             "gather: index shape {} exceeds x shape {} in dim {} ({} > {})", index.shape(), x.shape(), d,
             index.shape()[d], x.shape()[d]);
  const Tensor idx = checked_index(index, x.shape()[a], "gather");
  Tensor out = empty(index.shape(), x.dtype());
  kernels::gather(x.detach(), a, idx, out);
  return record("gather", {x}, out, [in_shape = x.shape(), a, idx](const Tensor& g) {
    Tensor gx = zeros(in_shape, g.dtype());
    kernels::scatter_add(gx, a, idx, g.contiguous());
    return Tensors{gx};
  });
}

Tensor scatter_add(const Tensor& x, std::int64_t axis, const Tensor& index, const Tensor& src) {
  check_defined(x, "scatter_add", "x");
  check_defined(src, "scatter_add", "src");
  check_defined(index, "scatter_add", "index");
  const int a = normalize_axis(axis, x.dim(), "scatter_add", x.shape());
  TG_CHECK(index.shape() == src.shape(), "scatter_add: index shape {} must equal src shape {}", index.shape(),
           src.shape());
  TG_CHECK(index.dim() == x.dim(), "scatter_add: index has {} dims but x has {}", index.dim(), x.dim());
  for (int d = 0; d < x.dim(); ++d)
    TG_CHECK(d == a || index.shape()[d] <= x.shape()[d],
             "scatter_add: index shape {} exceeds x shape {} in dim {}", index.shape(), x.shape(), d);
  const Tensor idx = checked_index(index, x.shape()[a], "scatter_add");
  TG_CHECK(x.is_floating_point() || !src.is_floating_point(),
           "scatter_add: a floating-point src ({} {}) cannot be added into an integer x ({} {})", src.dtype(), src.shape(),
           x.dtype(), x.shape());
  const Tensor s = src.to(x.dtype());
  Tensor out = x.detach().clone();
  kernels::scatter_add(out, a, idx, s.detach().contiguous());
  return record("scatter_add", {x, s}, out, [a, idx](const Tensor& g) {
    Tensor gs;
    if (input_needs_grad(1)) {
      gs = empty(idx.shape(), g.dtype());
      kernels::gather(g, a, idx, gs);
    }
    return Tensors{g, gs};
  });
}

Tensor one_hot(const Tensor& index, std::int64_t num_classes, DType dtype) {
  TG_CHECK(num_classes > 0, "one_hot: num_classes must be positive, got {}", num_classes);
  const Tensor idx = checked_index(index, num_classes, "one_hot", /*allow_negative=*/false);
  Shape shape = index.shape();
  shape.push_back(num_classes);
  Tensor out = zeros(shape, dtype);
  const std::int64_t* p = idx.data<std::int64_t>();
  dispatch(dtype, "one_hot", [&]<class T>() {
    T* o = out.data<T>();
    for (std::int64_t i = 0; i < idx.numel(); ++i) o[i * num_classes + p[i]] = T(1);
  });
  return out;
}

Tensor bincount(const Tensor& index, std::int64_t num_classes) {
  TG_CHECK(num_classes > 0, "bincount: num_classes must be positive, got {}", num_classes);
  check_defined(index, "bincount", "index");
  TG_CHECK(index.dim() == 1, "bincount: expected a 1-D index, got shape {}", index.shape());
  const Tensor idx = checked_index(index, num_classes, "bincount", /*allow_negative=*/false);
  Tensor out = zeros({num_classes}, DType::i64);
  std::int64_t* o = out.data<std::int64_t>();
  const std::int64_t* p = idx.data<std::int64_t>();
  for (std::int64_t i = 0; i < idx.numel(); ++i) ++o[p[i]];
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  check_defined(x, "masked_fill", "x");
  check_defined(mask, "masked_fill", "mask");
  TG_CHECK(mask.dtype() == DType::boolean, "masked_fill: mask must be a bool tensor, got {}", mask.dtype());
  TG_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(),
           "masked_fill: mask of shape {} does not broadcast to x's shape {}", mask.shape(), x.shape());
  check_scalar_fits("masked_fill", value, x.dtype());  // the result keeps x's dtype, as in torch
  return where(mask, scalar_tensor(value, x.dtype()), x);
}

namespace {
Tensor triangle(const char* op, const Tensor& x, std::int64_t k, bool lower) {
  check_defined(x, op, "x");
  TG_CHECK(x.dim() >= 2, "{}: expected a tensor with at least 2 dims, got shape {}", op, x.shape());
  const std::int64_t n = x.shape()[x.dim() - 2], m = x.shape()[x.dim() - 1];
  Tensor keep = empty({n, m}, DType::boolean);
  bool* p = keep.data<bool>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < m; ++j) p[i * m + j] = lower ? j - i <= k : j - i >= k;
  return where(keep, x, scalar_tensor(0.0, x.dtype()));  // keeps x's dtype (also bool)
}
}  // namespace

Tensor tril(const Tensor& x, std::int64_t k) { return triangle("tril", x, k, true); }
Tensor triu(const Tensor& x, std::int64_t k) { return triangle("triu", x, k, false); }

Tensor pad(const Tensor& x, const std::vector<std::int64_t>& pads, PadMode mode, double value) {
  check_defined(x, "pad", "x");
  TG_CHECK(pads.size() % 2 == 0 && static_cast<int>(pads.size()) / 2 <= x.dim(),
           "pad: expected an even number of pad sizes for at most {} dims, got {}", x.dim(), pads.size());
  if (mode == PadMode::constant) check_scalar_fits("pad", value, x.dtype());
  Tensor out = x;
  for (std::size_t p = 0; p < pads.size() / 2; ++p) {
    const int d = x.dim() - 1 - static_cast<int>(p);
    const std::int64_t left = pads[2 * p], right = pads[2 * p + 1], n = out.shape()[d];
    if (left == 0 && right == 0) continue;
    constexpr std::int64_t kMaxPad = std::int64_t{1} << 48;  // keeps n + left + right in range
    TG_CHECK(left >= -kMaxPad && left <= kMaxPad && right >= -kMaxPad && right <= kMaxPad,
             "pad: pad sizes ({}, {}) of dim {} are beyond +-2^48", left, right, d);
    if (mode == PadMode::constant) {
      // Crop first (negative pads), then surround with constant blocks.
      const std::int64_t crop_l = std::max<std::int64_t>(0, -left), crop_r = std::max<std::int64_t>(0, -right);
      TG_CHECK(crop_l + crop_r <= n, "pad: cropping {} elements from dim {} of size {}", crop_l + crop_r, d, n);
      out = out.narrow(d, crop_l, n - crop_l - crop_r);
      Tensors parts;
      Shape side = out.shape();
      if (left > 0) {
        side[d] = left;
        parts.push_back(full(side, value, out.dtype()));
      }
      parts.push_back(out);
      if (right > 0) {
        side[d] = right;
        parts.push_back(full(side, value, out.dtype()));
      }
      out = parts.size() == 1 ? out : cat(parts, d);
      continue;
    }
    // reflect / replicate / circular: gather source positions with index_select (its backward sums
    // repeats).
    const char* name = mode == PadMode::reflect ? "reflect" : mode == PadMode::replicate ? "replicate" : "circular";
    TG_CHECK(left >= 0 && right >= 0, "pad: {} padding needs non-negative pad sizes, got {} and {}", name, left, right);
    TG_CHECK(mode != PadMode::reflect || (left < n && right < n),
             "pad: reflect padding ({}, {}) must be smaller than dim {} of size {}", left, right, d, n);
    TG_CHECK(mode != PadMode::circular || (left <= n && right <= n),
             "pad: circular padding ({}, {}) must be at most dim {} of size {}", left, right, d, n);
    TG_CHECK(n > 0, "pad: cannot pad dim {} of size 0 with {} mode", d, name);
    Tensor src = empty({n + left + right}, DType::i64);  // allocated first: an absurd size fails here
    std::int64_t* sp = src.data<std::int64_t>();
    for (std::int64_t i = -left; i < n + right; ++i) {
      std::int64_t j = i;
      if (mode == PadMode::reflect) j = i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
      else if (mode == PadMode::replicate) j = std::clamp<std::int64_t>(i, 0, n - 1);
      else j = i < 0 ? i + n : (i >= n ? i - n : i);  // circular: wraps around (|pad| <= n)
      sp[i + left] = j;
    }
    out = index_select(out, d, src);
  }
  return out.is_same(x) ? x : out;
}

Tensor repeat(const Tensor& x, const Shape& repeats) {
  check_defined(x, "repeat", "x");
  TG_CHECK(repeats.size() >= x.dim(), "repeat: got {} repeats for a {}-d tensor; need at least one per dim",
           repeats.size(), x.dim());
  const int lead = repeats.size() - x.dim();
  // x viewed with a size-1 dim before every repeated dim ([1, s] -> expand -> [r, s] -> merge);
  // dims repeated once and new leading dims need no extra dim.
  int dims = 0;
  for (int d = 0; d < repeats.size(); ++d) {
    TG_CHECK(repeats[d] >= 0, "repeat: negative repeat count {}", repeats[d]);
    dims += d >= lead && repeats[d] != 1 ? 2 : 1;
  }
  TG_CHECK(dims <= kMaxDims, "repeat: repeats {} of a tensor of shape {} need an intermediate of {} dims (max {})",
           repeats, x.shape(), dims, kMaxDims);
  Shape viewed, expanded, out_shape;
  for (int d = 0; d < repeats.size(); ++d) {
    const std::int64_t s = d < lead ? 1 : x.shape()[d - lead];
    if (d >= lead && repeats[d] != 1) {
      viewed.push_back(1);
      expanded.push_back(repeats[d]);
    }
    viewed.push_back(s);
    expanded.push_back(d < lead ? repeats[d] : s);
    std::int64_t size = 0;
    TG_CHECK(!__builtin_mul_overflow(repeats[d], s, &size), "repeat: repeats {} of a tensor of shape {} overflow dim {}",
             repeats, x.shape(), d);
    out_shape.push_back(size);
  }
  return x.reshape(viewed).expand(expanded).reshape(out_shape);
}

namespace {

// repeat_interleave through index_select: entry i of `axis` is selected counts[i] times.
Tensor repeat_entries(const Tensor& x, const std::vector<std::int64_t>& counts, int axis) {
  std::int64_t total = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    TG_CHECK(counts[i] >= 0, "repeat_interleave: negative repeat count {} (entry {})", counts[i], i);
    TG_CHECK(!__builtin_add_overflow(total, counts[i], &total) && total <= (std::int64_t{1} << 40),
             "repeat_interleave: the repeats of x of shape {} along dim {} are too many (more than 2^40)", x.shape(), axis);
  }
  Tensor index = empty({total}, DType::i64, "repeat_interleave");
  std::int64_t* p = index.data<std::int64_t>();
  for (std::size_t i = 0; i < counts.size(); ++i) p = std::fill_n(p, counts[i], static_cast<std::int64_t>(i));
  return index_select(x, axis, index);
}

}  // namespace

Tensor repeat_interleave(const Tensor& x, std::int64_t repeats, std::int64_t axis) {
  check_defined(x, "repeat_interleave", "x");
  TG_CHECK(x.dim() > 0, "repeat_interleave: expected a tensor with at least one dim, got a 0-d tensor");
  const int a = normalize_axis(axis, x.dim(), "repeat_interleave", x.shape());
  TG_CHECK(repeats >= 0, "repeat_interleave: negative repeat count {}", repeats);
  return repeat_entries(x, std::vector<std::int64_t>(static_cast<std::size_t>(x.shape()[a]), repeats), a);
}

Tensor repeat_interleave(const Tensor& x, const Tensor& repeats, std::int64_t axis) {
  check_defined(x, "repeat_interleave", "x");
  check_defined(repeats, "repeat_interleave", "repeats");
  TG_CHECK(x.dim() > 0, "repeat_interleave: expected a tensor with at least one dim, got a 0-d tensor");
  const int a = normalize_axis(axis, x.dim(), "repeat_interleave", x.shape());
  TG_CHECK(repeats.dtype() == DType::i64 || repeats.dtype() == DType::i32,
           "repeat_interleave: repeats must be an integer tensor (i64 or i32), got {} (shape {})", repeats.dtype(),
           repeats.shape());
  const std::int64_t n = x.shape()[a];
  TG_CHECK(repeats.dim() <= 1 && (repeats.numel() == n || repeats.numel() == 1),
           "repeat_interleave: repeats of shape {} must hold one count per entry of dim {} of x (shape {}: {}) or one "
           "count",
           repeats.shape(), a, x.shape(), n);
  std::vector<std::int64_t> counts = repeats.to(DType::i64).contiguous().to_vector<std::int64_t>();
  if (counts.size() == 1) counts.assign(static_cast<std::size_t>(n), counts[0]);
  return repeat_entries(x, counts, a);
}

Tensor roll(const Tensor& x, std::int64_t shift, std::int64_t axis) {
  check_defined(x, "roll", "x");
  const int a = normalize_axis(axis, x.dim(), "roll", x.shape());
  const std::int64_t n = x.shape()[a];
  if (n == 0) return x;
  const std::int64_t s = ((shift % n) + n) % n;
  if (s == 0) return x;
  // Two block copies into the output; the backward rolls the other way (one pass each way, where
  // cat of two narrows took five).
  Tensor out = empty(x.shape(), x.dtype());
  {
    NoGradGuard no_grad;
    out.narrow(a, 0, s).copy_(x.detach().narrow(a, n - s, s));
    out.narrow(a, s, n - s).copy_(x.detach().narrow(a, 0, n - s));
  }
  return record("roll", {x}, out, [a, s, n](const Tensor& g) { return Tensors{roll(g, n - s, a)}; });
}

Tensor patchify(const Tensor& x, std::int64_t p) {
  check_defined(x, "patchify", "x");
  TG_CHECK(x.dim() == 4, "patchify: expected images [B, C, H, W], got {}", x.shape());
  const std::int64_t B = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  TG_CHECK(p > 0 && H % p == 0 && W % p == 0, "patchify: patch size {} must divide the image size {} x {} (x {})", p, H, W,
           x.shape());
  return x.reshape({B, C, H / p, p, W / p, p})  // [B, C, h, p, w, p]
      .permute({0, 2, 4, 1, 3, 5})              // [B, h, w, C, p, p]
      .reshape({B, (H / p) * (W / p), C * p * p});
}

Tensor unpatchify(const Tensor& tokens, std::int64_t p, std::int64_t height, std::int64_t width) {
  check_defined(tokens, "unpatchify", "tokens");
  TG_CHECK(p > 0 && height > 0 && width > 0 && height % p == 0 && width % p == 0,
           "unpatchify: patch size {} must divide the image size {} x {}", p, height, width);
  const std::int64_t h = height / p, w = width / p;
  TG_CHECK(tokens.dim() == 3 && tokens.shape()[1] == h * w && tokens.shape()[2] % (p * p) == 0,
           "unpatchify: expected tokens [B, {}, C * {}] for {} x {} images in {} x {} patches, got {}", h * w, p * p, height,
           width, p, p, tokens.shape());
  const std::int64_t B = tokens.shape()[0], C = tokens.shape()[2] / (p * p);
  return tokens.reshape({B, h, w, C, p, p})  // [B, h, w, C, p, p]
      .permute({0, 3, 1, 4, 2, 5})           // [B, C, h, p, w, p]
      .reshape({B, C, height, width});
}

}  // namespace tg::ops
