// Elementwise ops: each op's forward functor, its backward rule and its frontend, side by side.
#include "ops/elementwise.hpp"

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// operands of xsimd's exp/log/pow, depending on how they are inlined here); not about this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/kernels/elementwise.hpp"
#include "ops/kernels/simd_math.hpp"
#include "ops/kernels/wrapping.hpp"
#include "ops/reduce.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using kernels::cos_of;
using kernels::erf_of;
using kernels::log_of;
using kernels::sigmoid_of;
using kernels::silu_backward_of;
using kernels::silu_of;
using kernels::sin_of;
using kernels::splat;
using kernels::tan_of;

namespace detail {

std::pair<Tensor, Tensor> broadcast_pair(const Tensor& a, const Tensor& b, const char* op, DType dtype) {
  check_defined(a, op, "a");
  check_defined(b, op, "b");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  return {a.to(dtype).expand(shape), b.to(dtype).expand(shape)};
}

std::pair<Tensor, Tensor> broadcast_pair(const Tensor& a, const Tensor& b, const char* op) {
  check_defined(a, op, "a");
  check_defined(b, op, "b");
  return broadcast_pair(a, b, op, promote(a.dtype(), b.dtype()));
}

}  // namespace detail

namespace {

using detail::broadcast_pair;
using detail::check_defined;

// out = f(ins...) for float tensors of one shape.
template <class F, class... Ins>
Tensor apply_float(const char* op, F f, const Tensor& first, const Ins&... rest) {
  return dispatch_float(first.dtype(), op, [&]<class T>() {
    Tensor out = empty(first.shape(), first.dtype());
    kernels::map<T>(out, f, first, rest...);
    return out;
  });
}

template <class F, class... Ins>
Tensor apply_numeric(const char* op, F f, const Tensor& first, const Ins&... rest) {
  return dispatch_numeric(first.dtype(), op, [&]<class T>() {
    Tensor out = empty(first.shape(), first.dtype());
    kernels::map<T>(out, f, first, rest...);
    return out;
  });
}

// y = f(x) whose gradient needs x: gx = df(x, gy).
template <class F, class DF>
Tensor unary_x(const char* op, const Tensor& x, F f, DF df) {
  check_defined(x, op, "x");
  Tensor y = apply_float(op, f, x);
  return record(op, {x}, y, [op, df, sx = SavedTensor(x)](const Tensor& g) {
    return Tensors{apply_float(op, df, sx.get(), g)};
  });
}

// y = f(x) whose gradient is cheaper from the output: gx = df(y, gy).
template <class F, class DF>
Tensor unary_y(const char* op, const Tensor& x, F f, DF df) {
  check_defined(x, op, "x");
  Tensor y = apply_float(op, f, x);
  return record(op, {x}, y, [op, df, sy = SavedTensor(y)](const Tensor& g) {
    return Tensors{apply_float(op, df, sy.get(), g)};
  });
}

// y = f(x) with zero gradient (sign, rounding): recorded so that gradients flow as zeros.
template <class F>
Tensor unary_zero_grad(const char* op, const Tensor& x, F f, bool integers_too) {
  check_defined(x, op, "x");
  Tensor y = integers_too ? apply_numeric(op, f, x) : apply_float(op, f, x);
  return record(op, {x}, y, [](const Tensor& g) { return Tensors{zeros_like(g)}; });
}

// x^p with std::pow's (and PyTorch's) special values. xsimd's pow is exp(p log|x|) with the sign
// fixed for negative x; it gives 0 for every power of 0 and NaN for inf^0 and 1^NaN.
template <class B>
B pow_ieee(const B& x, const B& p) {
  const B zero(0), one(1);
  // 0^p: 0 for p > 0, inf for p < 0, 1 for p = 0 (NaN for NaN); -0 keeps its sign for odd p.
  B at_zero = xsimd::select(p > zero, zero, xsimd::select(p < zero, B(std::numeric_limits<typename B::value_type>::infinity()), one));
  const auto odd = p - B(2) * xsimd::floor(p * B(0.5)) == one;  // odd integer (xsimd::is_odd's trunc warns on GCC 12)
  at_zero = xsimd::select(xsimd::isnan(p), p, xsimd::select(odd, xsimd::copysign(at_zero, x), at_zero));
  B r = xsimd::select(x == zero, at_zero, xsimd::pow(x, p));
  // (-inf)^p: inf for p > 0, 0 for p < 0, negative for odd integers (xsimd: NaN for non-integers).
  const B inf(std::numeric_limits<typename B::value_type>::infinity());
  B at_neg_inf = xsimd::select(p > zero, inf, zero);
  at_neg_inf = xsimd::select(xsimd::isnan(p), p, xsimd::select(odd, xsimd::copysign(at_neg_inf, x), at_neg_inf));
  r = xsimd::select(x == -inf, at_neg_inf, r);
  // x^0 = 1 and 1^p = 1 (even for NaN), and (-1)^+-inf = 1 (exp(inf * log 1) would be NaN).
  return xsimd::select(p == zero || x == one || (x == -one && xsimd::isinf(p)), one, r);
}

// Integer exponents by repeated squaring (exact for integer-valued data, fine for negative bases);
// other exponents through exp/log (NaN for negative bases, as in real arithmetic).
struct PowScalar {
  double p;
  template <class B>
  B operator()(const B& x) const {
    if (p == std::trunc(p) && std::fabs(p) <= 64) {
      auto n = static_cast<long long>(std::fabs(p));
      B result = splat<B>(1.0), base = x;
      while (n) {
        if (n & 1) result *= base;
        base *= base;
        n >>= 1;
      }
      return p < 0 ? splat<B>(1.0) / result : result;
    }
    if (p == 0.5) return xsimd::sqrt(x);
    return pow_ieee(x, splat<B>(p));
  }
};

// Whether an integer tensor combined with scalar s by an op stays integral (else it becomes f32).
DType scalar_result_dtype(const Tensor& x, double s, bool integer_op) {
  if (x.is_floating_point()) return x.dtype();
  if (integer_op && std::isfinite(s) && s == std::trunc(s) && x.dtype() != DType::boolean) return x.dtype();
  return DType::f32;
}

template <class F>
Tensor scalar_op(const char* op, const Tensor& x_in, double s, bool integer_op, F f) {
  check_defined(x_in, op, "x");
  const Tensor x = x_in.to(scalar_result_dtype(x_in, s, integer_op));
  TG_CHECK(scalar_fits(s, x.dtype()), "{}: scalar {} does not fit in the {} tensor's type (shape {})", op, s, x.dtype(),
           x.shape());
  return dispatch_numeric(x.dtype(), op, [&]<class T>() {
    Tensor out = empty(x.shape(), x.dtype());
    kernels::map<T>(out, [&](auto v) { return f(v, splat<decltype(v)>(s)); }, x);
    return out;
  });
}

}  // namespace

// ---- arithmetic ---------------------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_pair(a, b, "add");
  Tensor out = apply_numeric("add", [](auto p, auto q) { return p + q; }, x, y);
  return record("add", {x, y}, out, [](const Tensor& g) { return Tensors{g, g}; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_pair(a, b, "sub");
  Tensor out = apply_numeric("sub", [](auto p, auto q) { return p - q; }, x, y);
  return record("sub", {x, y}, out, [](const Tensor& g) {
    return Tensors{g, input_needs_grad(1) ? neg(g) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_pair(a, b, "mul");
  Tensor out = apply_numeric("mul", [](auto p, auto q) { return p * q; }, x, y);
  return record("mul", {x, y}, out, [sx = SavedTensor(x), sy = SavedTensor(y)](const Tensor& g) {
    return Tensors{input_needs_grad(0) ? mul(g, sy.get()) : Tensor(), input_needs_grad(1) ? mul(g, sx.get()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  check_defined(a, "div", "a");
  check_defined(b, "div", "b");
  DType t = promote(a.dtype(), b.dtype());
  if (!is_floating(t)) t = DType::f32;  // true division
  auto [x, y] = broadcast_pair(a, b, "div", t);
  Tensor out = apply_float("div", [](auto p, auto q) { return p / q; }, x, y);
  return record("div", {x, y}, out, [sy = SavedTensor(y), so = SavedTensor(out)](const Tensor& g) {
    const Tensor yv = sy.get();
    Tensor ga, gb;
    if (input_needs_grad(0)) ga = apply_float("div", [](auto gg, auto q) { return gg / q; }, g, yv);
    if (input_needs_grad(1))  // d(a/b)/db = -(a/b)/b
      gb = apply_float("div", [](auto gg, auto o, auto q) { return -gg * o / q; }, g, so.get(), yv);
    return Tensors{ga, gb};
  });
}

Tensor add(const Tensor& a, double b) {
  Tensor out = scalar_op("add_scalar", a, b, true, [](auto x, auto s) { return x + s; });
  return record("add_scalar", {a}, out, [](const Tensor& g) { return Tensors{g}; });
}

Tensor sub(const Tensor& a, double b) {
  Tensor out = scalar_op("sub_scalar", a, b, true, [](auto x, auto s) { return x - s; });
  return record("sub_scalar", {a}, out, [](const Tensor& g) { return Tensors{g}; });
}

Tensor sub(double a, const Tensor& b) {
  Tensor out = scalar_op("rsub_scalar", b, a, true, [](auto x, auto s) { return s - x; });
  return record("rsub_scalar", {b}, out, [](const Tensor& g) { return Tensors{neg(g)}; });
}

Tensor mul(const Tensor& a, double b) {
  Tensor out = scalar_op("mul_scalar", a, b, true, [](auto x, auto s) { return x * s; });
  return record("mul_scalar", {a}, out, [b](const Tensor& g) { return Tensors{mul(g, b)}; });
}

Tensor div(const Tensor& a, double b) {
  Tensor out = scalar_op("div_scalar", a, b, false, [](auto x, auto s) { return x / s; });
  return record("div_scalar", {a}, out, [b](const Tensor& g) { return Tensors{div(g, b)}; });
}

Tensor div(double a, const Tensor& b) {
  Tensor out = scalar_op("rdiv_scalar", b, a, false, [](auto x, auto s) { return s / x; });
  return record("rdiv_scalar", {b}, out, [sb = SavedTensor(b.to(out.dtype())), so = SavedTensor(out)](const Tensor& g) {
    return Tensors{apply_float("rdiv_scalar", [](auto gg, auto o, auto x) { return -gg * o / x; }, g, so.get(), sb.get())};
  });
}

Tensor neg(const Tensor& x) {
  check_defined(x, "neg", "x");
  Tensor out = apply_numeric("neg", [](auto v) { return -v; }, x);
  return record("neg", {x}, out, [](const Tensor& g) { return Tensors{neg(g)}; });
}

namespace {
// b^e in integers, as torch: exact, wrapping on overflow; a negative e gives 1 / b^-e truncated
// toward zero (so 0 unless |b| = 1).
template <class T>
T integer_pow(T b, T e) {
  if (e < 0) return b == 1 ? T(1) : b == -1 ? ((e & 1) ? T(-1) : T(1)) : T(0);
  T r = 1;
  for (; e > 0; e >>= 1) {
    if (e & 1) r = kernels::wrapping_mul(r, b);
    b = kernels::wrapping_mul(b, b);
  }
  return r;
}
}  // namespace

Tensor pow(const Tensor& base, const Tensor& exponent) {
  check_defined(base, "pow", "base");
  check_defined(exponent, "pow", "exponent");
  const DType t = promote(base.dtype(), exponent.dtype());
  if (!is_floating(t)) {  // integer powers stay integers (not differentiable)
    const DType ti = t == DType::boolean ? DType::i64 : t;
    auto [x, p] = broadcast_pair(base, exponent, "pow", ti);
    Tensor out = empty(x.shape(), ti);
    dispatch(ti, "pow", [&]<class T>() {
      if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
        kernels::map_scalar<T, T, T>(out, [](T a, T b) { return integer_pow(a, b); }, x, p);
    });
    return out;
  }
  auto [x, p] = broadcast_pair(base, exponent, "pow", t);
  Tensor out = apply_float("pow", [](auto a, auto b) { return pow_ieee(a, b); }, x, p);
  return record("pow", {x, p}, out, [sx = SavedTensor(x), sp = SavedTensor(p), so = SavedTensor(out)](const Tensor& g) {
    const Tensor xv = sx.get(), pv = sp.get(), ov = so.get();
    Tensor gx, gp;
    if (input_needs_grad(0))  // p * x^(p-1); 0 where p == 0 (x^0 is constant, even at x = 0)
      gx = apply_float("pow", [](auto gg, auto a, auto b) {
        using B = decltype(a);
        return xsimd::select(b == B(0), B(0), gg * b * pow_ieee(a, b - B(1)));
      }, g, xv, pv);
    if (input_needs_grad(1))  // out * log(x); 0 where x == 0 and p >= 0 (the limit), i.e. out finite
      gp = apply_float("pow", [](auto gg, auto a, auto o) {
        using B = decltype(a);
        return xsimd::select(a == B(0) && xsimd::isfinite(o), B(0), gg * o * log_of(a));
      }, g, xv, ov);
    return Tensors{gx, gp};
  });
}

Tensor pow(const Tensor& base, double exponent) {
  check_defined(base, "pow_scalar", "base");
  // An integer tensor to a whole number stays an integer tensor (as torch with a Python int).
  // A bool tensor counts as i64 there (True ** 2 = 1 in torch).
  if (!base.is_floating_point() && std::isfinite(exponent) && exponent == std::trunc(exponent)) {
    TG_CHECK(exponent >= 0, "pow_scalar: integers to negative integer powers are not allowed ({} tensor of shape {} to the {})",
             base.dtype(), base.shape(), exponent);
    const Tensor b = base.dtype() == DType::boolean ? base.to(DType::i64) : base;
    TG_CHECK(scalar_fits(exponent, b.dtype()), "pow_scalar: exponent {} does not fit in the {} tensor's type (shape {})",
             exponent, b.dtype(), b.shape());
    Tensor out = empty(b.shape(), b.dtype());
    dispatch(b.dtype(), "pow_scalar", [&]<class T>() {
      if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        const auto e = static_cast<T>(exponent);
        kernels::map_scalar<T, T>(out, [e](T a) { return integer_pow(a, e); }, b);
      }
    });
    return out;
  }
  const Tensor x = base.is_floating_point() ? base : base.to(DType::f32);
  Tensor out = apply_float("pow_scalar", PowScalar{exponent}, x);
  return record("pow_scalar", {x}, out, [exponent, sx = SavedTensor(x)](const Tensor& g) {
    if (exponent == 0) return Tensors{zeros_like(sx.get())};  // x^0 is constant (0 * 0^-1 would be NaN)
    const PowScalar dpow{exponent - 1};
    return Tensors{apply_float("pow_scalar", [exponent, dpow](auto gg, auto a) {
      using B = decltype(a);
      return gg * splat<B>(exponent) * dpow(a);
    }, g, sx.get())};
  });
}

namespace {
// NaN propagates, as in PyTorch (p is kept when it wins or is NaN; otherwise q, NaN or not).
// Gradient share of the first operand: 0 where it loses, 1/2 on ties, 1 otherwise (where it wins,
// and where either is NaN: PyTorch's rule).
template <bool IsMin>
Tensor extremum(const char* op, const Tensor& a, const Tensor& b) {
  auto [x, y] = broadcast_pair(a, b, op);
  Tensor out = apply_numeric(op, [](auto p, auto q) {
    const auto wins = IsMin ? p < q : p > q;
    if constexpr (std::is_floating_point_v<typename decltype(p)::value_type>)
      return xsimd::select(wins || xsimd::isnan(p), p, q);  // (xsimd's p != p is false for NaN)
    else
      return xsimd::select(wins, p, q);
  }, x, y);
  return record(op, {x, y}, out, [op, sx = SavedTensor(x), sy = SavedTensor(y)](const Tensor& g) {
    const Tensor xv = sx.get(), yv = sy.get();
    auto share = [](auto gg, auto p, auto q) {
      using B = decltype(gg);
      const auto loses = IsMin ? (p > q) : (p < q);
      return gg * xsimd::select(loses, B(0), xsimd::select(p == q, B(0.5), B(1)));
    };
    return Tensors{input_needs_grad(0) ? apply_float(op, share, g, xv, yv) : Tensor(),
                   input_needs_grad(1) ? apply_float(op, share, g, yv, xv) : Tensor()};
  });
}
}  // namespace

Tensor minimum(const Tensor& a, const Tensor& b) { return extremum<true>("minimum", a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return extremum<false>("maximum", a, b); }

Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high) {
  check_defined(x, "clamp", "x");
  // As torch's type promotion: a fractional bound makes an integer tensor's result f32.
  const auto fractional = [](std::optional<double> b) { return b && std::isfinite(*b) && *b != std::trunc(*b); };
  if (!x.is_floating_point() && (fractional(low) || fractional(high))) return clamp(x.to(DType::f32), low, high);
  TG_CHECK(!(low && high) || *low <= *high || std::isnan(*low) || std::isnan(*high), "clamp: low {} is greater than high {}",
           *low, *high);
  TG_CHECK(x.is_floating_point() || !((low && std::isnan(*low)) || (high && std::isnan(*high))),
           "clamp: a NaN bound for the {} tensor of shape {}", x.dtype(), x.shape());
  const double lo = low.value_or(-INFINITY), hi = high.value_or(INFINITY);
  auto f = [lo, hi](auto v) {
    using B = decltype(v);
    using T = typename B::value_type;
    if constexpr (std::is_floating_point_v<T>) {  // selects: NaN stays NaN (min/max would drop it)
      if (std::isnan(lo) || std::isnan(hi)) return splat<B>(NAN);  // a NaN bound gives NaN, as torch
      const B r = xsimd::select(v < splat<B>(lo), splat<B>(lo), v);
      return xsimd::select(r > splat<B>(hi), splat<B>(hi), r);
    } else {  // integer tensors: bounds beyond the type's range clamp nothing
      auto bound = [](double b) {
        if (scalar_fits(b, dtype_of<T>())) return static_cast<T>(b);
        return b < 0 ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max();
      };
      return xsimd::min(xsimd::max(v, B(bound(lo))), B(bound(hi)));
    }
  };
  Tensor out = apply_numeric("clamp", f, x);
  return record("clamp", {x}, out, [lo, hi, sx = SavedTensor(x)](const Tensor& g) {
    return Tensors{apply_float("clamp", [lo, hi](auto gg, auto v) {
      using B = decltype(v);
      return xsimd::select(v >= splat<B>(lo) && v <= splat<B>(hi), gg, B(0));
    }, g, sx.get())};
  });
}

// ---- floor and truncated division -----------------------------------------------------------------------
namespace {
// Scalar kernels with torch's semantics (c10's div_floor_floating and div_floor_integer, ATen's
// remainder and fmod kernels). Floating quotients come from the exact std::fmod, so a huge a / b
// is not rounded first. Integer divisors were checked for zero by the caller; x / -1 and x % -1
// are special-cased because the minimum value divided by -1 overflows (it wraps, as torch).
template <class T>
T floor_div_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (b == 0) return a / b;
    const T mod = std::fmod(a, b);
    T div = (a - mod) / b;
    if (mod != 0 && (b < 0) != (mod < 0)) div -= T(1);
    if (div == 0) return std::copysign(T(0), a / b);
    T floored = std::floor(div);
    if (div - floored > T(0.5)) floored += T(1);  // div is a whole number up to rounding
    return floored;
  } else {
    if (b == -1) return kernels::wrapping_mul(a, T(-1));
    const T q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? T(q - 1) : q;
  }
}
template <class T>
T remainder_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    T mod = std::fmod(a, b);
    if (mod != 0 && (b < 0) != (mod < 0)) mod += b;
    return mod;
  } else {
    if (b == -1) return 0;
    T mod = a % b;
    if (mod != 0 && (b < 0) != (mod < 0)) mod += b;
    return mod;
  }
}
template <class T>
T fmod_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return std::fmod(a, b);
  else return b == -1 ? T(0) : T(a % b);
}

struct DivisionOperands {
  Tensor a, b, out;  // a and b broadcast to out's shape, in out's dtype
};

// out = f(a, b) elementwise (f a generic scalar function), after broadcasting and type promotion.
template <class F>
DivisionOperands division(const char* op, const Tensor& a_in, const Tensor& b_in, F f) {
  auto [a, b] = broadcast_pair(a_in, b_in, op);
  TG_CHECK(a.dtype() != DType::boolean, "{}: expected numeric tensors, got bool (shapes {} and {})", op, a_in.shape(),
           b_in.shape());
  if (!a.is_floating_point() && a.numel() > 0)
    TG_CHECK(sum(eq(b_in, 0.0)).item<std::int64_t>() == 0, "{}: integer division by zero (divisor of shape {})", op,
             b_in.shape());
  Tensor out = empty(a.shape(), a.dtype());
  dispatch_numeric(a.dtype(), op, [&]<class T>() { kernels::map_scalar<T, T, T>(out, [f](T p, T q) { return f(p, q); }, a, b); });
  return {a, b, out};
}

// The tensor op with a number for b, in torch's result type (an integer tensor stays integral for
// a whole number).
template <class Op>
Tensor with_scalar_divisor(const char* op, const Tensor& a, double b, Op tensor_op) {
  check_defined(a, op, "a");
  const DType t = scalar_result_dtype(a, b, true);
  check_scalar_fits(op, b, t);
  return tensor_op(a.to(t), scalar_tensor(b, t));
}
}  // namespace

Tensor floor_divide(const Tensor& a, const Tensor& b) {
  auto d = division("floor_divide", a, b, [](auto p, auto q) { return floor_div_of(p, q); });
  if (!d.out.is_floating_point()) return d.out;
  return record("floor_divide", {d.a, d.b}, d.out, [](const Tensor& g) {
    return Tensors{input_needs_grad(0) ? zeros_like(g) : Tensor(), input_needs_grad(1) ? zeros_like(g) : Tensor()};
  });
}

namespace {
// a - b quotient(a, b), computed by f: the gradients are g and -g quotient(a, b).
template <class F, class Q>
Tensor modulo(const char* op, const Tensor& a, const Tensor& b, F f, Q quotient) {
  auto d = division(op, a, b, f);
  if (!d.out.is_floating_point()) return d.out;
  return record(op, {d.a, d.b}, d.out, [op, quotient, sa = SavedTensor(d.a), sb = SavedTensor(d.b)](const Tensor& g) {
    Tensor gb;
    if (input_needs_grad(1))
      dispatch_float(g.dtype(), op, [&]<class T>() {
        gb = empty(g.shape(), g.dtype());
        kernels::map_scalar<T, T, T, T>(gb, [quotient](T gg, T p, T q) { return -gg * quotient(p, q); }, g, sa.get(), sb.get());
      });
    return Tensors{g, gb};
  });
}
}  // namespace

Tensor remainder(const Tensor& a, const Tensor& b) {
  return modulo("remainder", a, b, [](auto p, auto q) { return remainder_of(p, q); },
                [](auto p, auto q) { return floor_div_of(p, q); });
}

Tensor fmod(const Tensor& a, const Tensor& b) {
  return modulo("fmod", a, b, [](auto p, auto q) { return fmod_of(p, q); }, [](auto p, auto q) { return std::trunc(p / q); });
}

Tensor floor_divide(const Tensor& a, double b) {
  return with_scalar_divisor("floor_divide", a, b, [](const Tensor& x, const Tensor& y) { return floor_divide(x, y); });
}
Tensor remainder(const Tensor& a, double b) {
  return with_scalar_divisor("remainder", a, b, [](const Tensor& x, const Tensor& y) { return remainder(x, y); });
}
Tensor fmod(const Tensor& a, double b) {
  return with_scalar_divisor("fmod", a, b, [](const Tensor& x, const Tensor& y) { return fmod(x, y); });
}

namespace {
// xsimd 8.1's atan2 returns NaN where both arguments are zero or both infinite; C's atan2 (and
// torch) give +-0 or +-pi, and +-pi/4 or +-3pi/4, by the signs.
template <class B>
B atan2_of(const B& y, const B& x) {
  using T = typename B::value_type;
  const auto x_negative = xsimd::copysign(B(1), x) < B(0);  // -0 included
  const auto both_zero = y == B(0) && x == B(0);
  const auto both_inf = xsimd::abs(y) == B(std::numeric_limits<T>::infinity()) &&
                        xsimd::abs(x) == B(std::numeric_limits<T>::infinity());
  const B at_zero = xsimd::select(x_negative, B(T(std::numbers::pi)), B(0));
  const B at_inf = xsimd::select(x_negative, B(T(0.75 * std::numbers::pi)), B(T(0.25 * std::numbers::pi)));
  const B special = xsimd::copysign(xsimd::select(both_zero, at_zero, at_inf), y);
  return xsimd::select(both_zero || both_inf, special, xsimd::atan2(y, x));
}
}  // namespace

Tensor atan2(const Tensor& y_in, const Tensor& x_in) {
  check_defined(y_in, "atan2", "y");
  check_defined(x_in, "atan2", "x");
  DType t = promote(y_in.dtype(), x_in.dtype());
  if (!is_floating(t)) t = DType::f32;
  auto [y, x] = broadcast_pair(y_in, x_in, "atan2", t);
  Tensor out = apply_float("atan2", [](auto p, auto q) { return atan2_of(p, q); }, y, x);
  return record("atan2", {y, x}, out, [sy = SavedTensor(y), sx = SavedTensor(x)](const Tensor& g) {
    const Tensor yv = sy.get(), xv = sx.get();
    Tensor gy, gx;  // d/dy = x / r^2, d/dx = -y / r^2
    if (input_needs_grad(0))
      gy = apply_float("atan2", [](auto gg, auto p, auto q) { return gg * q / (p * p + q * q); }, g, yv, xv);
    if (input_needs_grad(1))
      gx = apply_float("atan2", [](auto gg, auto p, auto q) { return -gg * p / (p * p + q * q); }, g, yv, xv);
    return Tensors{gy, gx};
  });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined(cond, "where", "cond");
  TG_CHECK(cond.dtype() == DType::boolean, "where: cond must be a bool tensor, got {} (shape {})", cond.dtype(),
           cond.shape());
  check_defined(a, "where", "a");
  check_defined(b, "where", "b");
  const DType t = promote(a.dtype(), b.dtype());
  const Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  const Tensor c = cond.expand(shape), x = a.to(t).expand(shape), y = b.to(t).expand(shape);
  Tensor out = empty(shape, t);
  dispatch(t, "where", [&]<class T>() {
    kernels::map_scalar<T, bool, T, T>(out, [](bool k, T p, T q) { return k ? p : q; }, c, x, y);
  });
  return record("where", {x, y}, out, [sc = SavedTensor(c)](const Tensor& g) {
    const Tensor cv = sc.get();
    Tensor ga, gb;
    dispatch_float(g.dtype(), "where", [&]<class T>() {
      if (input_needs_grad(0)) {
        ga = empty(g.shape(), g.dtype());
        kernels::map_scalar<T, bool, T>(ga, [](bool k, T v) { return k ? v : T(0); }, cv, g);
      }
      if (input_needs_grad(1)) {
        gb = empty(g.shape(), g.dtype());
        kernels::map_scalar<T, bool, T>(gb, [](bool k, T v) { return k ? T(0) : v; }, cv, g);
      }
    });
    return Tensors{ga, gb};
  });
}

namespace {
// The dtype of where(cond, x, s) for a number s, as torch's type promotion: x's floating type; an
// i32/i64 x stays so for an integral s; a bool x becomes i64 for an integral s; a fractional s
// makes an integer or bool x's result f32.
DType where_scalar_dtype(const Tensor& x, double s) {
  if (x.is_floating_point()) return x.dtype();
  if (s != std::trunc(s) || !std::isfinite(s)) return DType::f32;
  return x.dtype() == DType::boolean ? DType::i64 : x.dtype();
}
}  // namespace

Tensor where(const Tensor& cond, const Tensor& a, double b) {
  check_defined(a, "where", "a");
  const DType t = where_scalar_dtype(a, b);
  check_scalar_fits("where", b, t);
  return where(cond, a, scalar_tensor(b, t));
}
Tensor where(const Tensor& cond, double a, const Tensor& b) {
  check_defined(b, "where", "b");
  const DType t = where_scalar_dtype(b, a);
  check_scalar_fits("where", a, t);
  return where(cond, scalar_tensor(a, t), b);
}

// ---- math -----------------------------------------------------------------------------------------------
Tensor exp(const Tensor& x) {
  return unary_y("exp", x, [](auto v) { return xsimd::exp(v); }, [](auto y, auto g) { return g * y; });
}
Tensor log(const Tensor& x) {
  return unary_x("log", x, [](auto v) { return log_of(v); }, [](auto v, auto g) { return g / v; });
}
Tensor log1p(const Tensor& x) {
  return unary_x("log1p", x, [](auto v) { return xsimd::log1p(v); },
                 [](auto v, auto g) { return g / (v + decltype(v)(1)); });
}
namespace {
// log in base 2 or 10 with xsimd's subnormal inputs lifted as in log_of: log2 stays exact on powers
// of two (log2(8) = 3), which log(x) / ln 2 is not.
template <class B>
B log2_of(const B& v) {
  using T = typename B::value_type;
  constexpr int k = std::numeric_limits<T>::digits + 1;
  const auto tiny = v < B(std::numeric_limits<T>::min());
  const B r = xsimd::log2(xsimd::select(tiny, v * B(T(std::ldexp(1.0, k))), v));
  return xsimd::select(tiny, r - B(T(k)), r);
}
template <class B>
B log10_of(const B& v) {
  using T = typename B::value_type;
  constexpr int k = std::numeric_limits<T>::digits + 1;
  const auto tiny = v < B(std::numeric_limits<T>::min());
  const B r = xsimd::log10(xsimd::select(tiny, v * B(T(std::ldexp(1.0, k))), v));
  return xsimd::select(tiny, r - B(T(k * std::numbers::log10e * std::numbers::ln2)), r);
}
}  // namespace
Tensor log2(const Tensor& x) {
  return unary_x("log2", x, [](auto v) { return log2_of(v); },
                 [](auto v, auto g) { return g / (v * decltype(v)(std::numbers::ln2)); });
}
Tensor log10(const Tensor& x) {
  return unary_x("log10", x, [](auto v) { return log10_of(v); },
                 [](auto v, auto g) { return g / (v * decltype(v)(std::numbers::ln10)); });
}
Tensor expm1(const Tensor& x) {
  return unary_y("expm1", x, [](auto v) { return xsimd::expm1(v); },
                 [](auto y, auto g) { return g * (y + decltype(y)(1)); });
}
Tensor sqrt(const Tensor& x) {
  return unary_y("sqrt", x, [](auto v) { return xsimd::sqrt(v); },
                 [](auto y, auto g) { return g * decltype(y)(0.5) / y; });
}
Tensor rsqrt(const Tensor& x) {  // exact 1/sqrt (hardware rsqrt estimates are too coarse)
  return unary_y("rsqrt", x, [](auto v) { return decltype(v)(1) / xsimd::sqrt(v); },
                 [](auto y, auto g) { return g * decltype(y)(-0.5) * y * y * y; });
}
Tensor square(const Tensor& x) {
  return unary_x("square", x, [](auto v) { return v * v; }, [](auto v, auto g) { return g * decltype(v)(2) * v; });
}
Tensor reciprocal(const Tensor& x) {
  return unary_y("reciprocal", x, [](auto v) { return decltype(v)(1) / v; }, [](auto y, auto g) { return -g * y * y; });
}
Tensor abs(const Tensor& x) {
  check_defined(x, "abs", "x");
  Tensor out = apply_numeric("abs", [](auto v) { return xsimd::abs(v); }, x);
  return record("abs", {x}, out, [sx = SavedTensor(x)](const Tensor& g) {
    return Tensors{apply_float("abs", [](auto v, auto gg) { return gg * xsimd::sign(v); }, sx.get(), g)};
  });
}
Tensor sign(const Tensor& x) {
  return unary_zero_grad("sign", x, [](auto v) {
    using B = decltype(v);
    if constexpr (std::is_floating_point_v<typename B::value_type>) return xsimd::select(xsimd::isnan(v), B(0), xsimd::sign(v));  // as torch
    else return xsimd::sign(v);
  }, true);
}
Tensor sin(const Tensor& x) {
  return unary_x("sin", x, [](auto v) { return sin_of(v); }, [](auto v, auto g) { return g * cos_of(v); });
}
Tensor cos(const Tensor& x) {
  return unary_x("cos", x, [](auto v) { return cos_of(v); }, [](auto v, auto g) { return -g * sin_of(v); });
}
Tensor tan(const Tensor& x) {
  return unary_y("tan", x, [](auto v) { return tan_of(v); },
                 [](auto y, auto g) { return g * (decltype(y)(1) + y * y); });
}
Tensor asin(const Tensor& x) {
  return unary_x("asin", x, [](auto v) { return xsimd::asin(v); },
                 [](auto v, auto g) { return g / xsimd::sqrt(decltype(v)(1) - v * v); });
}
Tensor acos(const Tensor& x) {
  return unary_x("acos", x, [](auto v) { return xsimd::acos(v); },
                 [](auto v, auto g) { return -g / xsimd::sqrt(decltype(v)(1) - v * v); });
}
Tensor atan(const Tensor& x) {
  return unary_x("atan", x, [](auto v) { return xsimd::atan(v); },
                 [](auto v, auto g) { return g / (decltype(v)(1) + v * v); });
}
Tensor sinh(const Tensor& x) {
  return unary_x("sinh", x, [](auto v) { return xsimd::sinh(v); }, [](auto v, auto g) { return g * xsimd::cosh(v); });
}
Tensor cosh(const Tensor& x) {
  return unary_x("cosh", x, [](auto v) { return xsimd::cosh(v); }, [](auto v, auto g) { return g * xsimd::sinh(v); });
}
Tensor tanh(const Tensor& x) {
  return unary_y("tanh", x, [](auto v) { return xsimd::tanh(v); },
                 [](auto y, auto g) { return g * (decltype(y)(1) - y * y); });
}
Tensor erf(const Tensor& x) {
  return unary_x("erf", x, [](auto v) { return erf_of(v); }, [](auto v, auto g) {
    using B = decltype(v);
    return g * B(2.0 / std::sqrt(std::numbers::pi)) * kernels::simd::exp_nonpos(-v * v);
  });
}
Tensor round(const Tensor& x) {
  return unary_zero_grad("round", x, [](auto v) { return xsimd::nearbyint(v); }, false);
}
Tensor floor(const Tensor& x) {
  return unary_zero_grad("floor", x, [](auto v) { return xsimd::floor(v); }, false);
}
Tensor ceil(const Tensor& x) {
  return unary_zero_grad("ceil", x, [](auto v) { return xsimd::ceil(v); }, false);
}

// ---- activations ------------------------------------------------------------------------------------------
namespace {
constexpr double kSqrt2OverPi = std::numbers::sqrt2 * std::numbers::inv_sqrtpi;

// erf for GELU. f64 uses xsimd's accurate erf. f32 uses a branch-free rational approximation,
// erf(x) ~ x P(x^2) / Q(x^2) on [-3.92, 3.92] (erf is +-1 to f32 precision beyond), fitted for this
// project (weighted least squares, Loeb's iteration): max abs error 3.9e-7, about the accuracy of
// PyTorch's vectorised GELU, at a fraction of the cost of xsimd::erf, which made GELU
// compute-bound instead of memory-bound.
template <class B>
B gelu_erf(const B& x) {
  if constexpr (std::is_same_v<typename B::value_type, float>) {
    const B c = xsimd::min(xsimd::max(x, B(-3.92f)), B(3.92f));
    const B z = c * c;
    B p(1.9671910456839792e-08f);
    p = xsimd::fma(p, z, B(-1.9422061671823122e-06f));
    p = xsimd::fma(p, z, B(0.00014126910968559282f));
    p = xsimd::fma(p, z, B(0.0036999883309236144f));
    p = xsimd::fma(p, z, B(0.050575539675836154f));
    p = xsimd::fma(p, z, B(0.20004692116109743f));
    p = xsimd::fma(p, z, B(1.1283791151035385f));
    B q(0.0009539593074784591f);
    q = xsimd::fma(q, z, B(0.014354360820737521f));
    q = xsimd::fma(q, z, B(0.1150359974786546f));
    q = xsimd::fma(q, z, B(0.5106187634979416f));
    q = xsimd::fma(q, z, B(1.0f));
    // Beyond |x| = 3.92, erf(x) rounds to +-1 in f32: return that exactly, so that GELU's tail
    // x (1 + erf) is exactly 0 for very negative inputs.
    return xsimd::select(xsimd::abs(x) >= B(3.92f), xsimd::select(x > B(0.0f), B(1.0f), B(-1.0f)), c * p / q);
  } else {
    return erf_of(x);
  }
}

// GELU's derivative Phi(v) + v phi(v). f64: erf and exp. f32: one exp serves both terms: with
// E = exp(-v^2 / 2), phi(v) = E / sqrt(2 pi), and Phi(v) = erfc(|v| / sqrt 2) / 2 for v < 0 (1 minus
// that for v >= 0), where erfc(z) = t P(t) E, t = 1 / (1 + p z) (Abramowitz & Stegun 7.1.26,
// |error| <= 1.5e-7, below the 3.9e-7 of the forward's erf). The rational erf and a second
// transcendental made GELU's backward compute-bound.
template <class B>
B gelu_slope(const B& v) {
  const B e = kernels::simd::exp_nonpos(B(-0.5) * v * v);
  const B pdf = e * B(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
  B cdf;
  if constexpr (std::is_same_v<typename B::value_type, float>) {
    const B t = B(1.0f) / xsimd::fma(xsimd::abs(v), B(0.3275911f * std::numbers::sqrt2_v<float> / 2), B(1.0f));
    B p(1.061405429f);
    p = xsimd::fma(p, t, B(-1.453152027f));
    p = xsimd::fma(p, t, B(1.421413741f));
    p = xsimd::fma(p, t, B(-0.284496736f));
    p = xsimd::fma(p, t, B(0.254829592f));
    const B tail = B(0.5f) * t * p * e;  // Phi(-|v|)
    cdf = xsimd::select(v < B(0.0f), tail, B(1.0f) - tail);
  } else {
    cdf = B(0.5) * (B(1) + gelu_erf(v * B(std::numbers::sqrt2 / 2)));
  }
  return xsimd::fma(v, pdf, cdf);
}
}  // namespace

Tensor sigmoid(const Tensor& x) {
  return unary_y("sigmoid", x, [](auto v) { return sigmoid_of(v); },
                 [](auto y, auto g) { return g * y * (decltype(y)(1) - y); });
}
Tensor relu(const Tensor& x) {
  // NaN propagates (as in PyTorch): a select, not max(v, 0), whose result for NaN depends on the
  // operand order. The gradient passes where v <= 0 is false, NaN included (PyTorch's rule).
  return unary_x("relu", x, [](auto v) { return xsimd::select(v < decltype(v)(0), decltype(v)(0), v); },
                 [](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v <= B(0), B(0), g);
                 });
}
Tensor leaky_relu(const Tensor& x, double negative_slope) {
  TG_CHECK(std::isfinite(negative_slope), "leaky_relu: negative_slope must be finite, got {}", negative_slope);
  return unary_x("leaky_relu", x,
                 [negative_slope](auto v) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), v, v * splat<B>(negative_slope));
                 },
                 [negative_slope](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), g, g * splat<B>(negative_slope));
                 });
}
Tensor gelu(const Tensor& x, GeluApprox approx) {
  if (approx == GeluApprox::none) {
    return unary_x("gelu", x,
                   [](auto v) {
                     using B = decltype(v);
                     return B(0.5) * v * (B(1) + gelu_erf(v * B(std::numbers::sqrt2 / 2)));
                   },
                   [](auto v, auto g) { return g * gelu_slope(v); });
  }
  // 0.5 v (1 + tanh(k (v + 0.044715 v^3))), k = sqrt(2/pi)
  constexpr double k = kSqrt2OverPi;
  return unary_x("gelu_tanh", x,
                 [k](auto v) {
                   using B = decltype(v);
                   return B(0.5) * v * (B(1) + xsimd::tanh(B(k) * (v + B(0.044715) * v * v * v)));
                 },
                 [k](auto v, auto g) {
                   using B = decltype(v);
                   const B t = xsimd::tanh(B(k) * (v + B(0.044715) * v * v * v));
                   const B dinner = B(k) * (B(1) + B(3 * 0.044715) * v * v);
                   return g * (B(0.5) * (B(1) + t) + B(0.5) * v * (B(1) - t * t) * dinner);
                 });
}
Tensor silu(const Tensor& x) {
  return unary_x("silu", x, [](auto v) { return silu_of(v); }, [](auto v, auto g) { return silu_backward_of(v, g); });
}
Tensor glu(const Tensor& x, std::int64_t axis) {
  check_defined(x, "glu", "x");
  const int a = normalize_axis(axis, x.dim(), "glu", x.shape());
  const std::int64_t n = x.shape()[a];
  TG_CHECK(n % 2 == 0, "glu: dim {} of x {} must have an even size to split in halves, got {}", a, x.shape(), n);
  return mul(x.narrow(a, 0, n / 2), sigmoid(x.narrow(a, n / 2, n / 2)));
}

Tensor softplus(const Tensor& x, double beta, double threshold) {
  TG_CHECK(beta > 0, "softplus: beta must be positive, got {}", beta);
  return unary_x("softplus", x,
                 [beta, threshold](auto v) {
                   using B = decltype(v);
                   const B z = v * splat<B>(beta);
                   // max(z, 0) + log1p(exp(-|z|)) never overflows
                   const B sp = (xsimd::max(z, B(0)) + xsimd::log1p(xsimd::exp(-xsimd::abs(z)))) / splat<B>(beta);
                   return xsimd::select(z > splat<B>(threshold), v, sp);
                 },
                 [beta, threshold](auto v, auto g) {
                   using B = decltype(v);
                   const B z = v * splat<B>(beta);
                   return xsimd::select(z > splat<B>(threshold), g, g * sigmoid_of(z));
                 });
}

Tensor logsigmoid(const Tensor& x) {
  return unary_x("logsigmoid", x,
                 [](auto v) {
                   using B = decltype(v);
                   return xsimd::min(v, B(0)) - xsimd::log1p(xsimd::exp(-xsimd::abs(v)));
                 },
                 [](auto v, auto g) { return g * sigmoid_of(-v); });
}

Tensor elu(const Tensor& x, double alpha) {
  TG_CHECK(std::isfinite(alpha), "elu: alpha must be finite, got {}", alpha);
  return unary_x("elu", x,
                 [alpha](auto v) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), v, splat<B>(alpha) * xsimd::expm1(v));
                 },
                 [alpha](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), g, g * splat<B>(alpha) * xsimd::exp(v));
                 });
}

Tensor selu(const Tensor& x) {
  constexpr double alpha = 1.6732632423543772848170429916717, scale = 1.0507009873554804934193349852946;
  return unary_x("selu", x,
                 [](auto v) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), B(scale) * v, B(scale * alpha) * xsimd::expm1(v));
                 },
                 [](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v > B(0), g * B(scale), g * B(scale * alpha) * xsimd::exp(v));
                 });
}

namespace {
template <class B>
B tanh_softplus(const B& v) {  // tanh(log(1 + e^v)), the softplus without overflow
  return xsimd::tanh(xsimd::max(v, B(0)) + xsimd::log1p(xsimd::exp(-xsimd::abs(v))));
}
}  // namespace

Tensor mish(const Tensor& x) {
  return unary_x("mish", x, [](auto v) { return v * tanh_softplus(v); },
                 [](auto v, auto g) {  // tanh(sp) + v sigmoid(v) (1 - tanh(sp)^2)
                   using B = decltype(v);
                   const B t = tanh_softplus(v);
                   return g * (t + v * sigmoid_of(v) * (B(1) - t * t));
                 });
}

Tensor hardtanh(const Tensor& x, double min_val, double max_val) {
  check_defined(x, "hardtanh", "x");
  TG_CHECK(min_val <= max_val, "hardtanh: min_val {} must not exceed max_val {} (x of shape {})", min_val, max_val,
           x.shape());
  return unary_x("hardtanh", x,
                 [min_val, max_val](auto v) {  // selects: NaN stays NaN
                   using B = decltype(v);
                   const B r = xsimd::select(v < splat<B>(min_val), splat<B>(min_val), v);
                   return xsimd::select(r > splat<B>(max_val), splat<B>(max_val), r);
                 },
                 [min_val, max_val](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v > splat<B>(min_val) && v < splat<B>(max_val), g, B(0));
                 });
}
Tensor relu6(const Tensor& x) { return hardtanh(x, 0.0, 6.0); }

Tensor hardsigmoid(const Tensor& x) {
  return unary_x("hardsigmoid", x,
                 [](auto v) {
                   using B = decltype(v);
                   const B r = xsimd::select(v + B(3) < B(0), B(0), v + B(3));
                   return xsimd::select(r > B(6), B(6), r) / B(6);
                 },
                 [](auto v, auto g) {
                   using B = decltype(v);
                   return xsimd::select(v > B(-3) && v < B(3), g / B(6), B(0));
                 });
}

Tensor hardswish(const Tensor& x) {
  return unary_x("hardswish", x,
                 [](auto v) {
                   using B = decltype(v);
                   const B r = xsimd::select(v + B(3) < B(0), B(0), v + B(3));
                   return v * xsimd::select(r > B(6), B(6), r) / B(6);
                 },
                 [](auto v, auto g) {  // torch's rule: 0 below -3, x / 3 + 1/2 on [-3, 3] (and NaN), 1 above
                   using B = decltype(v);
                   return xsimd::select(v > B(3), g, xsimd::select(v < B(-3), B(0), g * (v / B(3) + B(0.5))));
                 });
}

// ---- comparisons and logic ----------------------------------------------------------------------------------
namespace {
template <class P>
Tensor compare(const char* op, const Tensor& a, const Tensor& b, P pred) {
  auto [x, y] = broadcast_pair(a, b, op);
  if (x.dtype() == DType::boolean) return compare(op, x.to(DType::i32), y.to(DType::i32), pred);  // as 0/1
  Tensor out = empty(x.shape(), DType::boolean);
  dispatch_numeric(x.dtype(), op, [&]<class T>() { kernels::map_predicate<T>(out, pred, x, y); });
  return out;
}
template <class P>
Tensor compare_scalar(const char* op, const Tensor& a, double b, P pred) {
  check_defined(a, op, "a");
  // An integer tensor against a whole number in i64's range compares exactly in i64; against any
  // other value (a fraction, 1e30, +-inf, NaN) in f64, where the order of the two is still right.
  const bool whole = b == std::trunc(b) && std::fabs(b) < 0x1p63;
  const DType t = a.is_floating_point() ? a.dtype() : (whole ? DType::i64 : DType::f64);
  return compare(op, a.to(t), scalar_tensor(b, t), pred);
}
template <class F>
Tensor logical(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_defined(a, op, "a");
  check_defined(b, op, "b");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  const Tensor x = a.to(DType::boolean).expand(shape), y = b.to(DType::boolean).expand(shape);
  Tensor out = empty(shape, DType::boolean);
  kernels::map_scalar<bool, bool, bool>(out, f, x, y);
  return out;
}
}  // namespace

Tensor eq(const Tensor& a, const Tensor& b) { return compare("eq", a, b, [](auto p, auto q) { return p == q; }); }
// ne is !(p == q): xsimd's p != q is the ordered comparison, false when either is NaN.
Tensor ne(const Tensor& a, const Tensor& b) { return compare("ne", a, b, [](auto p, auto q) { return !(p == q); }); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare("lt", a, b, [](auto p, auto q) { return p < q; }); }
Tensor le(const Tensor& a, const Tensor& b) { return compare("le", a, b, [](auto p, auto q) { return p <= q; }); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare("gt", a, b, [](auto p, auto q) { return p > q; }); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare("ge", a, b, [](auto p, auto q) { return p >= q; }); }
Tensor eq(const Tensor& a, double b) { return compare_scalar("eq", a, b, [](auto p, auto q) { return p == q; }); }
Tensor ne(const Tensor& a, double b) { return compare_scalar("ne", a, b, [](auto p, auto q) { return !(p == q); }); }
Tensor lt(const Tensor& a, double b) { return compare_scalar("lt", a, b, [](auto p, auto q) { return p < q; }); }
Tensor le(const Tensor& a, double b) { return compare_scalar("le", a, b, [](auto p, auto q) { return p <= q; }); }
Tensor gt(const Tensor& a, double b) { return compare_scalar("gt", a, b, [](auto p, auto q) { return p > q; }); }
Tensor ge(const Tensor& a, double b) { return compare_scalar("ge", a, b, [](auto p, auto q) { return p >= q; }); }

Tensor logical_and(const Tensor& a, const Tensor& b) { return logical("logical_and", a, b, [](bool p, bool q) { return p && q; }); }
Tensor logical_or(const Tensor& a, const Tensor& b) { return logical("logical_or", a, b, [](bool p, bool q) { return p || q; }); }
Tensor logical_xor(const Tensor& a, const Tensor& b) { return logical("logical_xor", a, b, [](bool p, bool q) { return p != q; }); }
Tensor logical_not(const Tensor& x) {
  check_defined(x, "logical_not", "x");
  const Tensor b = x.to(DType::boolean);
  Tensor out = empty(x.shape(), DType::boolean);
  kernels::map_scalar<bool, bool>(out, [](bool p) { return !p; }, b);
  return out;
}

Tensor isnan(const Tensor& x) {
  check_defined(x, "isnan", "x");
  Tensor out = empty(x.shape(), DType::boolean);
  if (!x.is_floating_point()) return out.fill_(0.0);
  dispatch_float(x.dtype(), "isnan", [&]<class T>() { kernels::map_predicate<T>(out, [](auto v) { return xsimd::isnan(v); }, x); });
  return out;
}

Tensor isfinite(const Tensor& x) {
  check_defined(x, "isfinite", "x");
  Tensor out = empty(x.shape(), DType::boolean);
  if (!x.is_floating_point()) return out.fill_(1.0);
  dispatch_float(x.dtype(), "isfinite", [&]<class T>() {
    kernels::map_predicate<T>(out, [](auto v) { return xsimd::abs(v) <= decltype(v)(std::numeric_limits<T>::max()); }, x);
  });
  return out;
}

}  // namespace tg::ops
