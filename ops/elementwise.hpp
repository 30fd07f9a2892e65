// Elementwise ops. Binary ops follow NumPy broadcasting: the frontend inserts explicit expand
// nodes (whose backward is the sum), so no backward here ever "unbroadcasts". Mixed dtypes promote
// (bool < i32 < i64 < f32 < f64). Math functions take floating-point tensors.
#pragma once

#include <optional>

#include "core/tensor.hpp"

namespace tg::ops {

// ---- arithmetic ---------------------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);  // true division: integer inputs give f32
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor sub(double a, const Tensor& b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor div(double a, const Tensor& b);
Tensor neg(const Tensor& x);
// Two integer tensors give exact integer powers (wrapping on overflow; a negative exponent gives
// 1 / b^-e truncated, as torch). An integer tensor to a finite whole number stays integral (bool
// becomes i64), as torch with a Python int -- a negative one, or one the dtype cannot hold, is
// refused, as torch does; note that 2.0 counts as whole here, where a Python float would give
// torch's f32. To a fractional number or +-inf it gives f32.
Tensor pow(const Tensor& base, const Tensor& exponent);
Tensor pow(const Tensor& base, double exponent);
Tensor minimum(const Tensor& a, const Tensor& b);  // ties send half the gradient to each input
Tensor maximum(const Tensor& a, const Tensor& b);
// Limits to [low, high] (either bound optional); the gradient passes where low <= x <= high. An
// integer x with a fractional bound gives an f32 result, as in torch.
Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high);
// Floor and truncated division, as torch (and Python's // and %). Integer tensors stay integral
// (a zero divisor is an error; the minimum value divided by -1 wraps around); floating results are
// exact (computed from std::fmod), and a zero divisor gives inf or NaN.
//   floor_divide(a, b) = floor(a / b): gradient 0, as floor (torch has none);
//   remainder(a, b)    = a - b floor(a / b), with the sign of b: gradients (g, -g floor(a / b));
//   fmod(a, b)         = a - b trunc(a / b), with the sign of a: gradients (g, -g trunc(a / b)).
Tensor floor_divide(const Tensor& a, const Tensor& b);
Tensor floor_divide(const Tensor& a, double b);
Tensor remainder(const Tensor& a, const Tensor& b);
Tensor remainder(const Tensor& a, double b);
Tensor fmod(const Tensor& a, const Tensor& b);
Tensor fmod(const Tensor& a, double b);
// The angle of the point (x, y), in [-pi, pi]; integer inputs give f32. The gradient at (0, 0) is
// NaN, as torch.
Tensor atan2(const Tensor& y, const Tensor& x);
// cond ? a : b, broadcasting all three; cond is a bool tensor. With a number for a or b the dtype
// follows torch: a floating tensor keeps its type; an integer one too for an integral number (a
// bool one becomes i64), and becomes f32 for a fractional number.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, double b);
Tensor where(const Tensor& cond, double a, const Tensor& b);

// ---- math -----------------------------------------------------------------------------------------------
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor log2(const Tensor& x);
Tensor log10(const Tensor& x);
Tensor expm1(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);  // gradient 0; sign(NaN) = 0, as torch
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tan(const Tensor& x);
Tensor asin(const Tensor& x);
Tensor acos(const Tensor& x);
Tensor atan(const Tensor& x);
Tensor sinh(const Tensor& x);
Tensor cosh(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor erf(const Tensor& x);
// Rounding (gradient 0; round is half-to-even). Use x + (round(x) - x).detach() for a straight-through estimator.
Tensor round(const Tensor& x);
Tensor floor(const Tensor& x);
Tensor ceil(const Tensor& x);

// ---- activations ------------------------------------------------------------------------------------------
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);
// none: x*Phi(x) with erf (for f32 through a rational erf accurate to 4e-7, as PyTorch's
// vectorised GELU; f64 exact); tanh: the tanh approximation.
enum class GeluApprox { none, tanh };
Tensor gelu(const Tensor& x, GeluApprox approx = GeluApprox::none);
Tensor silu(const Tensor& x);
// log(1 + exp(beta*x)) / beta, linear above `threshold` (as PyTorch), computed without overflow.
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
// log(sigmoid(x)) = -softplus(-x), without overflow.
Tensor logsigmoid(const Tensor& x);
// x for x > 0, alpha (e^x - 1) below (computed with expm1, so accurate near 0; torch 1.13 uses
// e^x - 1 there, off by up to ~1e-7 relative for |x| < 1e-9).
Tensor elu(const Tensor& x, double alpha = 1.0);
// scale * elu(x, alpha) with the self-normalising constants of Klambauer et al. (2017).
Tensor selu(const Tensor& x);
// x tanh(softplus(x)) (Misra, 2019).
Tensor mish(const Tensor& x);
// x limited to [min_val, max_val]; the gradient passes strictly inside (torch's rule). relu6 is
// hardtanh(x, 0, 6).
Tensor hardtanh(const Tensor& x, double min_val = -1.0, double max_val = 1.0);
Tensor relu6(const Tensor& x);
// Piecewise-linear sigmoid and swish (MobileNetV3): relu6(x + 3) / 6 and x relu6(x + 3) / 6.
Tensor hardsigmoid(const Tensor& x);
Tensor hardswish(const Tensor& x);
// Gated linear unit (torch.nn.functional.glu): x split in halves a, b along `axis` (even size),
// a * sigmoid(b). A composite of narrow, sigmoid and mul.
Tensor glu(const Tensor& x, std::int64_t axis = -1);

// ---- comparisons and logic (not differentiable; bool results) -----------------------------------------------
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor ne(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor le(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);
Tensor ge(const Tensor& a, double b);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor logical_xor(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);
Tensor isnan(const Tensor& x);
Tensor isfinite(const Tensor& x);

}  // namespace tg::ops

namespace tg {
// Operators, found by argument-dependent lookup: a + b, x * 2.0, -x, ...
inline Tensor operator+(const Tensor& a, const Tensor& b) { return ops::add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return ops::sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return ops::mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return ops::div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return ops::add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return ops::sub(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return ops::mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return ops::div(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return ops::add(b, a); }
inline Tensor operator-(double a, const Tensor& b) { return ops::sub(a, b); }
inline Tensor operator*(double a, const Tensor& b) { return ops::mul(b, a); }
inline Tensor operator/(double a, const Tensor& b) { return ops::div(a, b); }
inline Tensor operator-(const Tensor& x) { return ops::neg(x); }
}  // namespace tg
