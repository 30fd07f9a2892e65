// Integer sums and products wrap around modulo 2^bits, as in torch and in the SIMD lanes, instead
// of overflowing (undefined behaviour for signed types): the arithmetic goes through the unsigned
// type. Floating-point values add and multiply as usual.
#pragma once

#include <type_traits>

namespace tg::kernels {

template <class T>
constexpr T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}

template <class T>
constexpr T wrapping_mul(T a, T b) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

}  // namespace tg::kernels
