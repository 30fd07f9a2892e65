// Element types. f32 is the default; f64 exists everywhere for gradient checks and reference math;
// i32/i64 hold indices; boolean holds masks (one byte per element, 0 or 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "core/error.hpp"

namespace tg {

enum class DType : std::uint8_t { f32, f64, i32, i64, boolean };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::boolean: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::boolean: return "bool";
  }
  return "?";
}

constexpr bool is_floating(DType t) { return t == DType::f32 || t == DType::f64; }
constexpr bool is_integral(DType t) { return t == DType::i32 || t == DType::i64; }

// Whether the number v can be stored in dtype t: always for floating types (f32 rounds, and may
// overflow to inf, as in torch) and bool (nonzero is true); for i32/i64 v must be a number in the
// type's range (a fraction is truncated toward zero, as static_cast does).
constexpr bool scalar_fits(double v, DType t) {
  if (!is_integral(t)) return true;
  // Both ends as doubles: -2^(bits-1) exactly, and 2^(bits-1), which the int64 maximum rounds to.
  const double lo = t == DType::i32 ? -2147483648.0 : -9223372036854775808.0;
  return v >= lo && v < -lo;  // false for NaN
}
// Raises "<op>: value v does not fit in <t>" unless scalar_fits(v, t).
void check_scalar_fits(std::string_view op, double v, DType t);

// The C++ type stored for each dtype, and back.
template <class T> inline constexpr bool is_element_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, std::int64_t> || std::is_same_v<T, bool>;

template <class T>
constexpr DType dtype_of() {
  static_assert(is_element_type_v<T>, "tapegrad tensors hold float, double, int32_t, int64_t or bool");
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::i32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::i64;
  else return DType::boolean;
}

// The "larger" of two dtypes for mixed arithmetic: bool < i32 < i64 < f32 < f64.
constexpr DType promote(DType a, DType b) {
  auto rank = [](DType t) {
    switch (t) {
      case DType::boolean: return 0;
      case DType::i32: return 1;
      case DType::i64: return 2;
      case DType::f32: return 3;
      case DType::f64: return 4;
    }
    return 0;
  };
  return rank(a) >= rank(b) ? a : b;
}

// Calls fn.template operator()<T>() with T the C++ type of `t`:
//   dispatch(x.dtype(), "sum", [&]<class T>() { ... });
// `op` names the caller in the error raised for dtypes the caller does not accept.
template <class F>
decltype(auto) dispatch(DType t, std::string_view op, F&& fn) {
  switch (t) {
    case DType::f32: return fn.template operator()<float>();
    case DType::f64: return fn.template operator()<double>();
    case DType::i32: return fn.template operator()<std::int32_t>();
    case DType::i64: return fn.template operator()<std::int64_t>();
    case DType::boolean: return fn.template operator()<bool>();
  }
  TG_FAIL("{}: unknown dtype", op);
}

// Same, for ops defined on floating-point tensors only.
template <class F>
decltype(auto) dispatch_float(DType t, std::string_view op, F&& fn) {
  switch (t) {
    case DType::f32: return fn.template operator()<float>();
    case DType::f64: return fn.template operator()<double>();
    default: TG_FAIL("{}: expected a floating-point tensor (f32 or f64), got {}", op, dtype_name(t));
  }
}

// Same, for numeric (non-bool) tensors.
template <class F>
decltype(auto) dispatch_numeric(DType t, std::string_view op, F&& fn) {
  switch (t) {
    case DType::f32: return fn.template operator()<float>();
    case DType::f64: return fn.template operator()<double>();
    case DType::i32: return fn.template operator()<std::int32_t>();
    case DType::i64: return fn.template operator()<std::int64_t>();
    default: TG_FAIL("{}: expected a numeric tensor, got {}", op, dtype_name(t));
  }
}

}  // namespace tg

template <>
struct fmt::formatter<tg::DType> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(tg::DType t, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "{}", tg::dtype_name(t));
  }
};
