// tapegrad's one error type, and the check macro every layer uses to raise it.
//
//   TG_CHECK(a.dim() == 2, "matmul: expected a 2-D tensor, got shape {}", a.shape());
//
// Messages name the op first, then the shapes/dtypes involved and the offending dimension.
#pragma once

#include <fmt/core.h>

#include <stdexcept>
#include <string>

namespace tg {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The allocator could not provide a tensor's memory (a program can say which setting to lower).
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

}  // namespace tg

#define TG_CHECK(cond, ...)                                   \
  do {                                                        \
    if (!(cond)) [[unlikely]] {                               \
      throw ::tg::Error(::fmt::format(__VA_ARGS__));          \
    }                                                         \
  } while (false)

#define TG_FAIL(...) throw ::tg::Error(::fmt::format(__VA_ARGS__))
