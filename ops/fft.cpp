// Differentiable FFTs, complex elementwise ops and the fused FFT convolution: frontends, checks
// and backward rules on top of kernels/fft (transforms) and kernels/complex (complex arithmetic,
// fused convolution). See fft.hpp for the conventions and the adjoint formulas.
#include "ops/fft.hpp"

#include <algorithm>
#include <atomic>
#include <optional>
#include <vector>

#include "core/autograd.hpp"
#include "core/copy.hpp"
#include "ops/common.hpp"
#include "ops/kernels/complex.hpp"
#include "ops/kernels/elementwise.hpp"
#include "ops/kernels/fft.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

void check_float(const Tensor& t, const char* op, const char* arg) {
  TG_CHECK(t.is_floating_point(), "{}: argument '{}' must be a floating-point tensor (f32 or f64), got {} (shape {})",
           op, arg, t.dtype(), t.shape());
}

// A complex tensor: floating point with a trailing dim of size 2 (and at least min_dim dims).
void check_complex(const Tensor& t, const char* op, const char* arg, int min_dim = 1) {
  check_defined(t, op, arg);
  TG_CHECK(t.dim() >= min_dim && t.shape().back() == 2,
           "{}: argument '{}' must be a complex tensor [{}2] (trailing dim of size 2 holding (re, im)), got shape {}{}", op,
           arg, min_dim >= 2 ? "..., n, " : "..., ", t.shape(),
           t.dim() >= 1 ? fmt::format(" (dim -1 has size {})", t.shape().back()) : std::string());
  check_float(t, op, arg);
}

Shape leading_shape(const Shape& s, int inner) {
  return Shape(std::span<const std::int64_t>(s.begin(), s.end() - inner));
}

// A tensor viewed as `count` rows of its last `inner` dims, rows `stride` elements apart, each
// row contiguous — the layout the FFT kernels read. t itself when its layout allows, else a
// contiguous copy. Always detached (the kernels run outside the tape).
struct Rows {
  Tensor t;
  std::int64_t count = 0;
  std::int64_t stride = 0;
};

std::optional<std::int64_t> row_stride(const Tensor& t, int inner) {
  const int d = t.dim();
  std::int64_t row_len = 1;
  for (int i = d - inner; i < d; ++i) row_len *= t.shape()[i];
  if (inner >= 1 && t.shape()[d - 1] > 1 && t.strides()[d - 1] != 1) return std::nullopt;
  if (inner == 2 && t.shape()[d - 2] > 1 && t.strides()[d - 2] != t.shape()[d - 1]) return std::nullopt;
  std::optional<std::int64_t> stride;
  std::int64_t walked = 1;
  for (int i = d - inner - 1; i >= 0; --i) {
    const std::int64_t n = t.shape()[i], s = t.strides()[i];
    if (n == 1) continue;
    if (!stride) {
      stride = s;
    } else if (s != *stride * walked) {
      return std::nullopt;
    }
    walked *= n;
  }
  return stride.value_or(row_len);
}

Rows as_rows(const Tensor& t_in, int inner) {
  Tensor t = t_in.detach();
  std::int64_t row_len = 1;
  for (int i = t.dim() - inner; i < t.dim(); ++i) row_len *= t.shape()[i];
  const std::int64_t count = row_len == 0 ? leading_shape(t.shape(), inner).numel() : t.numel() / row_len;
  std::optional<std::int64_t> s = row_stride(t, inner);
  if (!s) {
    t = t.contiguous();
    s = row_len;
  }
  return {t, count, *s};
}

// t with its trailing (re, im) pair contiguous, as the complex kernels need (detached).
Tensor pair_contiguous(const Tensor& t) {
  Tensor d = t.detach();
  return d.strides().back() == 1 ? d : d.contiguous();
}

template <class T>
Tensor vector_tensor(const std::vector<T>& v, const Shape& shape) {
  return from_vector(v, shape);
}

// out = in * w elementwise, w a [m, 2] tensor broadcast over the leading dims of in [..., m, 2]
// (out may be a view; in may be strided).
void scale_bins(const Tensor& out, const Tensor& in, const Tensor& w) {
  dispatch_float(in.dtype(), "fft", [&]<class T>() {
    kernels::map<T>(out, [](auto a, auto b) { return a * b; }, in, w.expand(in.shape()));
  });
}

// ---- transform backward rules ---------------------------------------------------------------------------

// dL/dx for X = rfft(x [..., L], n): n * irfft(G') with the interior bins halved, zero beyond n.
Tensor rfft_backward(const Tensor& g, std::int64_t L, std::int64_t n) {
  const std::int64_t m = n / 2 + 1;
  Shape gx_shape = leading_shape(g.shape(), 2);
  gx_shape.push_back(L);
  Tensor gx = empty(gx_shape, g.dtype(), "rfft");
  dispatch_float(g.dtype(), "rfft", [&]<class T>() {
    std::vector<T> w(static_cast<std::size_t>(2 * m), static_cast<T>(n) / 2);
    w[0] = w[1] = static_cast<T>(n);
    if (n % 2 == 0) w[2 * (m - 1)] = w[2 * (m - 1) + 1] = static_cast<T>(n);
    Tensor gs = empty(g.shape(), g.dtype(), "rfft");
    scale_bins(gs, g, vector_tensor(w, {m, 2}));
    const std::int64_t rows = gx_shape.numel() / std::max<std::int64_t>(L, 1);
    if (L == 0) return;
    kernels::irfft_truncated(gs.data<T>(), 2 * m, gx.data<T>(), L, rows, n, std::min(L, n));
  });
  if (L > n) tg::detail::fill(gx.narrow(-1, n, L - n), 0.0);
  return gx;
}

// dL/dX for x = irfft(X [..., m, 2], n): (c_k / n) rfft(g)_k, Im of the edge bins 0, zero beyond n/2.
Tensor irfft_backward(const Tensor& g, std::int64_t m, std::int64_t n) {
  const std::int64_t nb = n / 2 + 1, mm = std::min(m, nb);
  const Rows gr = as_rows(g, 1);
  Tensor spec = empty({gr.count, nb, 2}, g.dtype(), "irfft");
  Tensor out = m > nb ? zeros({gr.count, m, 2}, g.dtype()) : empty({gr.count, m, 2}, g.dtype(), "irfft");
  dispatch_float(g.dtype(), "irfft", [&]<class T>() {
    kernels::rfft(gr.t.data<T>(), gr.stride, spec.data<T>(), 2 * nb, gr.count, n);
    std::vector<T> w(static_cast<std::size_t>(2 * nb), static_cast<T>(2.0L / n));
    w[0] = static_cast<T>(1.0L / n);
    w[1] = T(0);
    if (n % 2 == 0) {
      w[2 * (nb - 1)] = static_cast<T>(1.0L / n);
      w[2 * (nb - 1) + 1] = T(0);
    }
    w.resize(static_cast<std::size_t>(2 * mm));
    scale_bins(out.narrow(1, 0, mm), spec.narrow(1, 0, mm), vector_tensor(w, {mm, 2}));
  });
  Shape shape = leading_shape(g.shape(), 1);
  shape.push_back(m);
  shape.push_back(2);
  return out.reshape(shape);
}

// Raw transform (no recording): x [..., n, 2] -> [..., n, 2], optionally scaled.
Tensor cfft(const Tensor& x, bool inverse, double scale) {
  const std::int64_t n = x.shape()[x.dim() - 2];
  const Rows r = as_rows(x, 2);
  Tensor out = empty(x.shape(), x.dtype(), "fft");
  dispatch_float(x.dtype(), "fft", [&]<class T>() {
    kernels::fft(r.t.data<T>(), r.stride, out.data<T>(), 2 * n, r.count, n, inverse);
    if (scale != 1.0) {
      const T s = static_cast<T>(scale);
      kernels::map<T>(out, [s](auto a) { return a * kernels::splat<decltype(a)>(s); }, out);
    }
  });
  return out;
}

// ---- complex elementwise helpers --------------------------------------------------------------------------

// Checks two complex operands and broadcasts their leading dims with explicit expand nodes
// (the trailing 2 is not broadcast: it must match exactly, which check_complex ensures).
std::pair<Tensor, Tensor> broadcast_complex(const Tensor& a, const Tensor& b, const char* op) {
  check_complex(a, op, "a");
  check_complex(b, op, "b");
  return detail::broadcast_pair(a, b, op);
}

Tensor complex_mul_raw(const Tensor& a, const Tensor& b, bool conj_b, double scale = 1.0) {
  Tensor out = empty(a.shape(), a.dtype(), "complex_mul");
  kernels::complex_mul(out, pair_contiguous(a), pair_contiguous(b), conj_b, scale);
  return out;
}

Tensor complex_div_raw(const Tensor& a, const Tensor& b, bool conj_b) {
  Tensor out = empty(a.shape(), a.dtype(), "complex_div");
  kernels::complex_div(out, pair_contiguous(a), pair_contiguous(b), conj_b);
  return out;
}

Tensor complex_conj_raw(const Tensor& a) {
  Tensor out = empty(a.shape(), a.dtype(), "complex_conj");
  kernels::complex_conj(out, pair_contiguous(a));
  return out;
}

std::atomic<bool> g_fft_conv_recompute{false};

}  // namespace

// ---- transforms ---------------------------------------------------------------------------------------------

Tensor rfft(const Tensor& x, std::int64_t n) {
  check_defined(x, "rfft", "x");
  TG_CHECK(x.dim() >= 1, "rfft: expected a real tensor [..., L] with at least one dim, got shape {}", x.shape());
  check_float(x, "rfft", "x");
  const std::int64_t L = x.shape().back();
  if (n == -1) n = L;
  TG_CHECK(n >= 1, "rfft: the transform length n must be >= 1, got n = {} (x has shape {}, dim -1 of size {})", n,
           x.shape(), L);
  const std::int64_t m = n / 2 + 1;
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = m;
  out_shape.push_back(2);
  Tensor out = empty(out_shape, x.dtype(), "rfft");
  const Rows r = as_rows(x, 1);
  dispatch_float(x.dtype(), "rfft", [&]<class T>() {
    kernels::rfft_padded(r.t.data<T>(), r.stride, std::min(L, n), out.data<T>(), 2 * m, r.count, n);
  });
  return record("rfft", {x}, out, [L, n](const Tensor& g) { return Tensors{rfft_backward(g, L, n)}; });
}

Tensor irfft(const Tensor& X, std::int64_t n) {
  check_complex(X, "irfft", "X", 2);
  const std::int64_t m = X.shape()[X.dim() - 2];
  if (n == -1) {
    n = 2 * (m - 1);
    TG_CHECK(n >= 1, "irfft: the default output length 2*(m-1) is {} for X of shape {} (dim -2 of size {}); pass n >= 1",
             n, X.shape(), m);
  }
  TG_CHECK(n >= 1, "irfft: the output length n must be >= 1, got n = {} (X has shape {})", n, X.shape());
  const std::int64_t nb = n / 2 + 1;
  Shape out_shape = leading_shape(X.shape(), 2);
  out_shape.push_back(n);
  Tensor out = empty(out_shape, X.dtype(), "irfft");
  Rows r = as_rows(X, 2);
  if (m < nb && r.count > 0) {  // missing bins are zeros: pad into a full-width copy
    Tensor padded = zeros({r.count, nb, 2}, X.dtype());
    tg::detail::copy_into(padded.narrow(1, 0, m), r.t.reshape({r.count, m, 2}));
    r = {padded, r.count, 2 * nb};
  }
  dispatch_float(X.dtype(), "irfft", [&]<class T>() {
    kernels::irfft(r.t.data<T>(), r.stride, out.data<T>(), n, r.count, n);
  });
  return record("irfft", {X}, out, [m, n](const Tensor& g) { return Tensors{irfft_backward(g, m, n)}; });
}

Tensor fft(const Tensor& x, bool inverse) {
  check_complex(x, "fft", "x", 2);
  const std::int64_t n = x.shape()[x.dim() - 2];
  TG_CHECK(n >= 1, "fft: the transform dim (-2) of x must have size >= 1, got shape {}", x.shape());
  Tensor out = cfft(x, inverse, 1.0);
  return record("fft", {x}, out, [inverse, n](const Tensor& g) {
    // Forward y = F x: G_x = F^H G_y = n * ifft(G_y). Inverse y = F^H x / n: G_x = F G_y / n.
    return Tensors{inverse ? cfft(g, false, 1.0 / static_cast<double>(n)) : cfft(g, true, static_cast<double>(n))};
  });
}

// ---- complex elementwise ------------------------------------------------------------------------------------

Tensor complex_mul(const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_complex(a, b, "complex_mul");
  Tensor out = complex_mul_raw(x, y, false);
  return record("complex_mul", {x, y}, out, [sx = SavedTensor(x), sy = SavedTensor(y)](const Tensor& g) {
    Tensor ga, gb;
    if (input_needs_grad(0)) ga = complex_mul_raw(g, sy.get(), true);  // G conj(b)
    if (input_needs_grad(1)) gb = complex_mul_raw(g, sx.get(), true);  // G conj(a)
    return Tensors{ga, gb};
  });
}

Tensor complex_div(const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_complex(a, b, "complex_div");
  Tensor out = complex_div_raw(x, y, false);
  return record("complex_div", {x, y}, out, [sy = SavedTensor(y), so = SavedTensor(out)](const Tensor& g) {
    // q = a / b: dq/da = 1/b, dq/db = -q/b, so G_a = G / conj(b), G_b = -G conj(q) / conj(b) = -G_a conj(q).
    const Tensor ga = complex_div_raw(g, sy.get(), true);
    Tensor gb;
    if (input_needs_grad(1)) gb = complex_mul_raw(ga, so.get(), true, -1.0);
    return Tensors{input_needs_grad(0) ? ga : Tensor(), gb};
  });
}

Tensor complex_conj(const Tensor& a) {
  check_complex(a, "complex_conj", "a");
  Tensor out = complex_conj_raw(a);
  return record("complex_conj", {a}, out, [](const Tensor& g) { return Tensors{complex_conj_raw(g)}; });
}

Tensor complex_abs(const Tensor& a) {
  check_complex(a, "complex_abs", "a");
  Tensor out = empty(leading_shape(a.shape(), 1), a.dtype(), "complex_abs");
  kernels::complex_abs(out, pair_contiguous(a));
  return record("complex_abs", {a}, out, [sa = SavedTensor(a)](const Tensor& g) {
    const Tensor av = sa.get();
    Tensor ga = empty(av.shape(), av.dtype(), "complex_abs");
    kernels::complex_abs_backward(ga, g, pair_contiguous(av));
    return Tensors{ga};
  });
}

// ---- FFT convolution ----------------------------------------------------------------------------------------

std::int64_t fft_conv_length(std::int64_t L, std::int64_t Lk) {
  TG_CHECK(L >= 1 && Lk >= 1 && L <= (std::int64_t{1} << 40) && Lk <= (std::int64_t{1} << 40),
           "fft_conv_length: expected lengths in [1, 2^40], got L = {}, Lk = {}", L, Lk);
  const std::int64_t need = std::max<std::int64_t>(L + Lk - 1, 2);
  std::int64_t best = 2;
  while (best < need) best *= 2;  // a power of two is always a candidate
  for (std::int64_t p5 = 2; p5 < best; p5 *= 5)
    for (std::int64_t p3 = p5; p3 < best; p3 *= 3) {
      std::int64_t v = p3;
      while (v < need) v *= 2;
      best = std::min(best, v);
    }
  return best;
}

void set_fft_conv_recompute(bool recompute) { g_fft_conv_recompute.store(recompute); }
bool fft_conv_recompute() { return g_fft_conv_recompute.load(); }

Tensor fft_conv(const Tensor& u_in, const Tensor& k_in, bool causal) {
  check_defined(u_in, "fft_conv", "u");
  check_defined(k_in, "fft_conv", "k");
  TG_CHECK(u_in.dim() >= 1 && k_in.dim() >= 1, "fft_conv: u [..., L] and k [..., Lk] need at least one dim, got shapes {} and {}",
           u_in.shape(), k_in.shape());
  check_float(u_in, "fft_conv", "u");
  check_float(k_in, "fft_conv", "k");
  const std::int64_t L = u_in.shape().back(), Lk = k_in.shape().back();
  TG_CHECK(L >= 1 && Lk >= 1, "fft_conv: the signal u (shape {}) and the kernel k (shape {}) must have length >= 1 along dim -1",
           u_in.shape(), k_in.shape());
  // Leading dims: NumPy broadcasting, reported with the full shapes.
  const Shape su = leading_shape(u_in.shape(), 1), sk = leading_shape(k_in.shape(), 1);
  const int nd = std::max(su.size(), sk.size());
  Shape S = Shape::filled(nd, 1);
  for (int i = 1; i <= nd; ++i) {
    const std::int64_t a = i <= su.size() ? su[su.size() - i] : 1, b = i <= sk.size() ? sk[sk.size() - i] : 1;
    TG_CHECK(a == b || a == 1 || b == 1,
             "fft_conv: the leading dims of u (shape {}) and k (shape {}) cannot be broadcast (dim {} of the leading dims: {} vs {})",
             u_in.shape(), k_in.shape(), -i, a, b);
    S[nd - i] = a == 1 ? b : a;
  }
  const DType dt = promote(u_in.dtype(), k_in.dtype());
  Tensor u = u_in.to(dt), k = k_in.to(dt);
  Shape su_full = S, sk_full = S;
  su_full.push_back(L);
  sk_full.push_back(Lk);
  if (!(su == S)) u = u.expand(su_full);
  // Fast path: k's leading dims (without leading 1s) are the trailing dims of S, so output row r
  // uses kernel row r % ck. Otherwise k is expanded to S (an expand node sums its gradient).
  int lead1 = 0;
  while (lead1 < sk.size() && sk[lead1] == 1) ++lead1;
  const Shape sk_core(std::span<const std::int64_t>(sk.begin() + lead1, sk.end()));
  bool suffix = sk_core.size() <= S.size();
  for (int i = 1; suffix && i <= sk_core.size(); ++i) suffix = sk_core[sk_core.size() - i] == S[S.size() - i];
  if (!suffix) k = k.expand(sk_full);
  const std::int64_t rows = S.numel();
  const std::int64_t ck = suffix ? sk_core.numel() : rows;
  const std::int64_t nf = fft_conv_length(L, Lk), nb = nf / 2 + 1;
  const std::int64_t out_len = causal ? L : L + Lk - 1;
  const kernels::FftConvGeometry geom{rows, ck, L, Lk, out_len, nf};

  Shape y_shape = S;
  y_shape.push_back(out_len);
  Tensor y = empty(y_shape, dt, "fft_conv");
  const bool recording = autograd::any_requires_grad({u, k});
  const bool keep_U = recording && k.requires_grad() && !fft_conv_recompute();
  Tensor Kspec = empty({ck, nb, 2}, dt, "fft_conv");
  Tensor Uspec = keep_U ? empty({rows, kernels::fft_conv_saved_stride(nf, dtype_size(dt))}, dt, "fft_conv") : Tensor();
  const Rows ur = as_rows(u, 1), kr = as_rows(k, 1);
  dispatch_float(dt, "fft_conv", [&]<class T>() {
    if (rows == 0) return;
    kernels::rfft_padded(kr.t.data<T>(), kr.stride, Lk, Kspec.data<T>(), 2 * nb, ck, nf);
    kernels::fft_conv_forward(ur.t.data<T>(), ur.stride, Kspec.data<T>(), y.data<T>(),
                              keep_U ? Uspec.data<T>() : static_cast<T*>(nullptr), geom);
  });
  if (!recording) return y;
  // The spectra are internal (nobody else can modify them): kept as plain tensors.
  const bool need_u = k.requires_grad() && !keep_U;
  return record("fft_conv", {u, k}, y,
                [geom, Kspec, Uspec, su_full, sk_shape = k.shape(), dt,
                 sv = need_u ? SavedTensor(u) : SavedTensor()](const Tensor& g) {
                  const bool want_u = input_needs_grad(0), want_k = input_needs_grad(1);
                  Tensor gu = want_u ? empty({geom.rows, geom.L}, dt, "fft_conv") : Tensor();
                  Tensor gk = want_k ? empty({geom.ck, geom.Lk}, dt, "fft_conv") : Tensor();
                  const Rows gr = as_rows(g, 1);
                  Rows ur;
                  if (want_k && !Uspec.defined()) ur = as_rows(sv.get(), 1);
                  dispatch_float(dt, "fft_conv", [&]<class T>() {
                    if (geom.rows == 0) return;
                    kernels::fft_conv_backward(ur.t.defined() ? ur.t.data<T>() : static_cast<const T*>(nullptr), ur.stride,
                                               Uspec.defined() ? Uspec.data<T>() : static_cast<const T*>(nullptr),
                                               gr.t.data<T>(), gr.stride, Kspec.data<T>(),
                                               want_u ? gu.data<T>() : static_cast<T*>(nullptr),
                                               want_k ? gk.data<T>() : static_cast<T*>(nullptr), geom);
                  });
                  if (want_k && geom.rows == 0) gk.zero_();
                  return Tensors{want_u ? gu.reshape(su_full) : Tensor(), want_k ? gk.reshape(sk_shape) : Tensor()};
                });
}

}  // namespace tg::ops
